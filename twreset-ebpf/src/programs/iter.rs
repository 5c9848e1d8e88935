//! `iter/tcp`: for every TCP socket of the namespace the iterator was opened in, write one
//! [`SeqRecord`] with its addresses and the sequence numbers the kernel expects (`kill --method
//! rst` needs `rcv_nxt` exactly; sock_diag and tcp_info do not report it).
//!
//! aya-ebpf 0.3 has no `#[iter]` macro, so the section is set by hand. Offsets come from the
//! running kernel's BTF through the [`ITER_OFFSETS`] global. No maps: output is the seq file.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::seq_file,
    helpers::{bpf_probe_read_kernel, generated::bpf_seq_write},
};
use twreset_common::{
    AF_INET, AF_INET6,
    iter::{IterOffsets, SeqRecord},
    tcp_state,
};

/// Set by userspace from BTF; the defaults are Linux 6.18's, for reference only.
#[unsafe(no_mangle)]
static ITER_OFFSETS: IterOffsets = IterOffsets {
    daddr: 0,
    rcv_saddr: 4,
    dport: 12,
    num: 14,
    family: 16,
    state: 18,
    v6_daddr: 56,
    v6_rcv_saddr: 72,
    tw_rcv_nxt: 124,
    tw_snd_nxt: 132,
    rcv_nxt: 1688,
    snd_nxt: 1760,
};

/// `struct bpf_iter_meta`.
#[repr(C)]
pub(crate) struct IterMeta {
    pub(crate) seq: *mut seq_file,
    session_id: u64,
    seq_num: u64,
}

/// `struct bpf_iter__tcp`.
#[repr(C)]
pub(crate) struct IterTcp {
    pub(crate) meta: *const IterMeta,
    pub(crate) sk_common: *const c_void,
    uid: u32,
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub fn iter_tcp(ctx: *mut c_void) -> i32 {
    match try_iter_tcp(ctx) {
        Ok(()) => 0,
        Err(()) => 0,
    }
}

#[inline(always)]
fn read<T>(base: u64, off: u32) -> Result<T, ()> {
    // SAFETY: fault-safe kernel read.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.map_err(|_| ())
}

fn try_iter_tcp(ctx: *mut c_void) -> Result<(), ()> {
    // SAFETY: the kernel passes a `bpf_iter__tcp`; the verifier checks these loads against BTF.
    let (meta, sk) = unsafe {
        let c = &*(ctx as *const IterTcp);
        (c.meta, c.sk_common)
    };
    if sk.is_null() {
        return Ok(()); // end of iteration
    }
    // SAFETY: volatile read of the loader-set constant.
    let off = unsafe { core::ptr::read_volatile(&ITER_OFFSETS) };
    let sk = sk as u64;
    let family: u16 = read(sk, off.family)?;
    let state: u8 = read(sk, off.state)?;
    let state = state as u32;
    if state == tcp_state::LISTEN || state == tcp_state::NEW_SYN_RECV {
        return Ok(());
    }
    let mut rec = SeqRecord { family, state: state as u16, ..SeqRecord::default() };
    if family == AF_INET {
        let s: [u8; 4] = read(sk, off.rcv_saddr)?;
        let d: [u8; 4] = read(sk, off.daddr)?;
        rec.saddr[..4].copy_from_slice(&s);
        rec.daddr[..4].copy_from_slice(&d);
    } else if family == AF_INET6 {
        rec.saddr = read(sk, off.v6_rcv_saddr)?;
        rec.daddr = read(sk, off.v6_daddr)?;
    } else {
        return Ok(());
    }
    rec.sport = read(sk, off.num)?;
    rec.dport = u16::from_be(read(sk, off.dport)?);
    let (rcv, snd) =
        if state == tcp_state::TIME_WAIT { (off.tw_rcv_nxt, off.tw_snd_nxt) } else { (off.rcv_nxt, off.snd_nxt) };
    rec.rcv_nxt = read(sk, rcv)?;
    rec.snd_nxt = read(sk, snd)?;
    // SAFETY: meta->seq is the iterator's seq_file; rec lives on the stack for the call.
    unsafe {
        let seq = (*meta).seq;
        bpf_seq_write(seq, (&raw const rec).cast(), size_of::<SeqRecord>() as u32);
    }
    Ok(())
}
