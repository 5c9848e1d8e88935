//! `cgroup/connect4` and `cgroup/connect6` on the cgroup v2 root (`filter::OWN`): a TCP socket
//! that connects gets `BPF_SOCK_OPS_STATE_CB` before its first transition (`CLOSE -> SYN_SENT`),
//! so the `sock_ops` program reports all of them and the tracepoint programs leave them.
//! Listeners get the flag from `sock_ops` itself (`TCP_LISTEN_CB`), and pass it to their children.
//! `iter_own` (`iter/tcp`) gives the sockets that existed before to `sock_ops` the same way, one
//! namespace per run; then userspace detaches the tracepoint programs.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_SOCK_OPS_STATE_CB_FLAG,
    helpers::generated::{bpf_getsockopt, bpf_seq_write, bpf_setsockopt, bpf_skc_to_tcp_sock},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use twreset_common::{IPPROTO_TCP, stat};

use super::iter::IterTcp;
use crate::{
    maps::count,
    offsets::{load, off},
};

/// `SOL_TCP`.
const SOL_TCP: i32 = 6;
/// `TCP_BPF_SOCK_OPS_CB_FLAGS` (Linux 6.12): a socket's `sock_ops` callback flags.
const TCP_BPF_SOCK_OPS_CB_FLAGS: i32 = 1008;

#[cgroup_sock_addr(connect4)]
pub fn connect_own4(ctx: SockAddrContext) -> i32 {
    own(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn connect_own6(ctx: SockAddrContext) -> i32 {
    own(&ctx)
}

/// Always 1: the connect goes on whatever happens here.
#[inline(always)]
fn own(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the context's `bpf_sock_addr`, read-only.
    let (protocol, sk) = unsafe { ((*ctx.sock_addr).protocol, (*ctx.sock_addr).__bindgen_anon_1.sk) };
    if protocol == IPPROTO_TCP as u32 && add_state_cb(ctx.sock_addr.cast(), sk.cast()).is_err() {
        // This socket's transitions stay unreported once the tracepoint programs are detached:
        // a loss, counted as one.
        count(stat::READ_ERROR);
    }
    1
}

/// Turn `BPF_SOCK_OPS_STATE_CB` on for the socket `sk` of `ctx`, keeping its other flags. The
/// flags are read by a typed load from the socket's `tcp_sock` (no helper call); only a change
/// goes through `bpf_setsockopt`.
#[inline(always)]
fn add_state_cb(ctx: *mut c_void, sk: *mut c_void) -> Result<(), ()> {
    if sk.is_null() {
        return Err(());
    }
    // SAFETY: helper on the context's non-null socket; it returns null for a non-TCP one.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk) };
    if tp.is_null() {
        return Err(());
    }
    let mut flags = i32::from(load::<u8>(tp as u64, off!(tcp_cb_flags)));
    if flags & BPF_SOCK_OPS_STATE_CB_FLAG as i32 != 0 {
        return Ok(());
    }
    flags |= BPF_SOCK_OPS_STATE_CB_FLAG as i32;
    let len = size_of::<i32>() as i32;
    // SAFETY: `flags` lives on the stack for the call; the helper checks the option.
    if unsafe { bpf_setsockopt(ctx, SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS, (&raw mut flags).cast(), len) } != 0 {
        return Err(());
    }
    Ok(())
}

/// For each full TCP socket of the namespace (the kernel holds its lock meanwhile), turn
/// `BPF_SOCK_OPS_STATE_CB` on and write one byte: 1 done, 0 failed. TIME_WAIT and request
/// sockets are skipped: they make no `tcp_set_state()` transitions.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub fn iter_own(ctx: *mut c_void) -> i32 {
    // SAFETY: the kernel passes a `bpf_iter__tcp`; the verifier checks these loads against BTF.
    let (meta, sk) = unsafe {
        let c = &*(ctx as *const IterTcp);
        (c.meta, c.sk_common.cast_mut())
    };
    if sk.is_null() {
        return 0;
    }
    let mut flags: i32 = 0;
    let len = size_of::<i32>() as i32;
    // SAFETY: `flags` lives on the stack for the call; the helper refuses non-full sockets.
    if unsafe { bpf_getsockopt(sk, SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS, (&raw mut flags).cast(), len) } != 0 {
        return 0;
    }
    let mut done: u8 = 1;
    if flags & BPF_SOCK_OPS_STATE_CB_FLAG as i32 == 0 {
        flags |= BPF_SOCK_OPS_STATE_CB_FLAG as i32;
        // SAFETY: as above.
        if unsafe { bpf_setsockopt(sk, SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS, (&raw mut flags).cast(), len) } != 0 {
            done = 0;
        }
    }
    // SAFETY: meta->seq is the iterator's seq_file; `done` lives on the stack for the call.
    unsafe { bpf_seq_write((*meta).seq, (&raw const done).cast(), 1) };
    0
}
