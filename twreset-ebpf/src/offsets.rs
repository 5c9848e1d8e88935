//! The `OFFSETS` global (kernel struct offsets and function addresses, set by userspace at load
//! time) and fault-safe readers of kernel memory built on it.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use twreset_common::KernelOffsets;

#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
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
};

/// The loader-set offsets (volatile: the compiler must not fold the defaults in).
#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: reading a static the loader patched before the program was loaded.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

/// Read a `T` at `base + off` from kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Result<T, u32> {
    // SAFETY: bpf_probe_read_kernel is fault-safe.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.map_err(|_| 0u32)
}

/// Namespace cookie of the socket (full or TIME_WAIT) at `sk`: `skc_net.net->net_cookie`.
#[inline(always)]
pub fn netns_cookie(o: &KernelOffsets, sk: u64) -> Result<u64, u32> {
    let net: u64 = read(sk, o.skc_net)?;
    read(net, o.net_cookie)
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
