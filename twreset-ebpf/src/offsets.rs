//! The `OFFSETS` global (kernel struct offsets and function addresses, set by userspace at load
//! time) and fault-safe readers of kernel memory built on it.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use twreset_common::{AF_INET, AF_INET6, KernelOffsets};

#[unsafe(no_mangle)]
pub(crate) static OFFSETS: KernelOffsets = KernelOffsets {
    tw_timer_fn: 0,
    desched_start: 0,
    desched_end: 0,
    shutdown_start: 0,
    shutdown_end: 0,
    skc_net: 48,
    skc_daddr: 0,
    skc_rcv_saddr: 4,
    skc_dport: 12,
    skc_num: 14,
    skc_family: 16,
    skc_v6_daddr: 56,
    skc_v6_rcv_saddr: 72,
    net_cookie: 4160,
    tw_substate: 140,
    tw_timer: 160,
    timer_function: 24,
    sk_err: 0,
    timer_expires: 16,
    sk_protocol: 0,
    inet_sport: 0,
    tcp_cb_flags: 0,
    skc_pprev: 0,
    sk_flags: 0,
    sk_socket: 0,
    net_id_u32: 0,
    own_possible: 1,
};

/// The loader-set offsets (volatile: the compiler must not fold the defaults in).
#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: reading a static the loader patched before the program was loaded.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

/// One field of `OFFSETS`, read on its own so the verifier sees a known constant (a load from
/// the frozen read-only `OFFSETS`), as a direct BTF-checked load needs ([`load`]).
macro_rules! off {
    ($field:ident) => {
        // SAFETY: reading a field of a static the loader patched before the program was loaded.
        unsafe { core::ptr::read_volatile(&$crate::offsets::OFFSETS.$field) }
    };
}
pub(crate) use off;

/// Load a `T` at `ptr + off` where `ptr` is a BTF-typed pointer (a `tp_btf` argument, or a
/// pointer loaded through one) and `off` a known constant ([`off!`]): the verifier checks the
/// access against the kernel's BTF and turns it into a fault-safe load, with no helper call.
/// Only members of `ptr`'s own type are reachable this way.
#[inline(always)]
pub fn load<T>(ptr: u64, off: u32) -> T {
    // SAFETY: see above; a fault reads zeros instead of crashing.
    unsafe { core::ptr::read((ptr + off as u64) as *const T) }
}

/// Read a `T` at `base + off` from kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Result<T, u32> {
    // SAFETY: bpf_probe_read_kernel is fault-safe.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.map_err(|_| 0u32)
}

/// Namespace identity of the socket (full or TIME_WAIT) at `sk`: `skc_net.net->net_cookie`, or
/// `skc_net.net->ns.inum` on kernels without `SO_NETNS_COOKIE` (`net_id_u32`).
#[inline(always)]
pub fn netns_cookie(o: &KernelOffsets, sk: u64) -> Result<u64, u32> {
    let net: u64 = read(sk, o.skc_net)?;
    net_cookie(o, net)
}

/// `net->net_cookie` (or `net->ns.inum`, see [`netns_cookie`]).
#[inline(always)]
pub fn net_cookie(o: &KernelOffsets, net: u64) -> Result<u64, u32> {
    if o.net_id_u32 != 0 { read::<u32>(net, o.net_cookie).map(u64::from) } else { read(net, o.net_cookie) }
}

/// IPv4 addresses in the IPv4-mapped IPv6 form every event uses (`::ffff:a.b.c.d`).
#[inline(always)]
pub fn mapped4(v4: [u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[10] = 0xff;
    a[11] = 0xff;
    a[12..16].copy_from_slice(&v4);
    a
}

/// The leading `struct sock_common` members every event needs, from a full or a TIME_WAIT socket.
pub struct Common {
    pub family: u16,
    /// Local and remote address, IPv4-mapped for IPv4.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// `skc_num`: local port, host order.
    pub num: u16,
    /// `skc_dport`: remote port, host order.
    pub dport: u16,
    /// `skc_net.net`.
    pub net: u64,
}

/// `struct sock_common` up to `skc_net`, as x86_64 Linux has laid it out since 4.x (6.18: see
/// docs/internals/kernel-abi.md). Used only when the BTF offsets say so ([`head_layout`]): one read instead of six.
#[repr(C)]
struct Head {
    daddr: [u8; 4],
    rcv_saddr: [u8; 4],
    _hash: u32,
    dport_be: u16,
    num: u16,
    family: u16,
    _between: [u8; 30],
    net: u64,
}
const _: () = assert!(core::mem::size_of::<Head>() == 56);

/// Do the running kernel's offsets match [`Head`]? (Known constants to the verifier.)
#[inline(always)]
fn head_layout(o: &KernelOffsets) -> bool {
    o.skc_daddr == 0
        && o.skc_rcv_saddr == 4
        && o.skc_dport == 12
        && o.skc_num == 14
        && o.skc_family == 16
        && o.skc_net == 48
}

/// Read [`Common`] of the socket at `sk`; `Err` for a failed read or a family other than
/// IPv4/IPv6.
#[inline(always)]
pub fn common(o: &KernelOffsets, sk: u64) -> Result<Common, u32> {
    let (family, v4, num, dport_be, net) = if head_layout(o) {
        let h: Head = read(sk, 0)?;
        (h.family, (h.rcv_saddr, h.daddr), h.num, h.dport_be, h.net)
    } else {
        let family: u16 = read(sk, o.skc_family)?;
        let v4 =
            if family == AF_INET { (read(sk, o.skc_rcv_saddr)?, read(sk, o.skc_daddr)?) } else { ([0; 4], [0; 4]) };
        (family, v4, read(sk, o.skc_num)?, read(sk, o.skc_dport)?, read(sk, o.skc_net)?)
    };
    let (saddr, daddr) = if family == AF_INET {
        (mapped4(v4.0), mapped4(v4.1))
    } else if family == AF_INET6 {
        if o.skc_v6_daddr + 16 == o.skc_v6_rcv_saddr {
            let both: [[u8; 16]; 2] = read(sk, o.skc_v6_daddr)?;
            (both[1], both[0])
        } else {
            (read(sk, o.skc_v6_rcv_saddr)?, read(sk, o.skc_v6_daddr)?)
        }
    } else {
        return Err(0);
    };
    Ok(Common { family, saddr, daddr, num, dport: u16::from_be(dport_be), net })
}

/// [`Common`] of a full socket through its BTF-typed pointer (`tp_btf`): direct loads only.
/// `Err` for a family other than IPv4/IPv6.
#[inline(always)]
pub fn common_direct(sk: u64) -> Result<Common, u32> {
    let family: u16 = load(sk, off!(skc_family));
    // Whole words, not byte arrays: a `[u8; N]` load is N byte loads (alignment 1), each
    // fault-checked by the JIT. Both fields are word-aligned in `struct sock_common`.
    let (saddr, daddr) = if family == AF_INET {
        let (s, d): (u32, u32) = (load(sk, off!(skc_rcv_saddr)), load(sk, off!(skc_daddr)));
        (mapped4(s.to_ne_bytes()), mapped4(d.to_ne_bytes()))
    } else if family == AF_INET6 {
        (v6_bytes(load(sk, off!(skc_v6_rcv_saddr))), v6_bytes(load(sk, off!(skc_v6_daddr))))
    } else {
        return Err(0);
    };
    let num: u16 = load(sk, off!(skc_num));
    let dport_be: u16 = load(sk, off!(skc_dport));
    Ok(Common { family, saddr, daddr, num, dport: u16::from_be(dport_be), net: load(sk, off!(skc_net)) })
}

/// An IPv6 address loaded as four 32-bit words (`struct in6_addr` is 4-byte aligned), in memory
/// order.
#[inline(always)]
fn v6_bytes(w: [u32; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    for (i, w) in w.into_iter().enumerate() {
        a[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    a
}

/// `net->net_cookie` (or the u32 `net->ns.inum`) through a BTF-typed `struct net *` (loaded from
/// a BTF-typed socket). The verifier knows `net_id_u32` and checks only the load it will run: a
/// u64 load at a u32 member would be refused.
#[inline(always)]
pub fn net_cookie_direct(net: u64) -> u64 {
    if off!(net_id_u32) != 0 { u64::from(load::<u32>(net, off!(net_cookie))) } else { load(net, off!(net_cookie)) }
}
