//! Wire types of the `iter/tcp` program that reads each socket's sequence numbers for `kill
//! --method rst` (TCP's expected sequence numbers are not in sock_diag or tcp_info).

use core::mem::size_of;

/// Name of the global holding [`IterOffsets`] (set with `EbpfLoader::override_global`).
pub const OFFSETS_GLOBAL: &str = "ITER_OFFSETS";

/// Kernel struct member offsets from the running kernel's BTF (aya-ebpf has no CO-RE).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IterOffsets {
    /// `sock_common.skc_daddr`, `skc_rcv_saddr`, `skc_dport` (big-endian), `skc_num`.
    pub daddr: u32,
    pub rcv_saddr: u32,
    pub dport: u32,
    pub num: u32,
    /// `sock_common.skc_family` (u16), `skc_state` (u8).
    pub family: u32,
    pub state: u32,
    /// `sock_common.skc_v6_daddr`, `skc_v6_rcv_saddr`.
    pub v6_daddr: u32,
    pub v6_rcv_saddr: u32,
    /// `sock_common.skc_tw_rcv_nxt`, `skc_tw_snd_nxt` (TIME_WAIT sockets).
    pub tw_rcv_nxt: u32,
    pub tw_snd_nxt: u32,
    /// `tcp_sock.rcv_nxt`, `tcp_sock.snd_nxt` (full sockets).
    pub rcv_nxt: u32,
    pub snd_nxt: u32,
}
const _: () = assert!(size_of::<IterOffsets>() == 48);

/// One socket, written with `bpf_seq_write` to the iterator's file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqRecord {
    /// Local and remote address; IPv4 in the first 4 bytes, rest zero.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub family: u16,
    /// Local port, host order.
    pub sport: u16,
    /// Remote port, host order.
    pub dport: u16,
    /// `skc_state` (TIME_WAIT for tw sockets, whatever the substate).
    pub state: u16,
    pub rcv_nxt: u32,
    pub snd_nxt: u32,
}
const _: () = assert!(size_of::<SeqRecord>() == 48);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` integers with no padding, no invalid bit patterns.
    unsafe impl aya::Pod for super::IterOffsets {}
}
