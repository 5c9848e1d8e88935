//! Wire types and constants shared by the eBPF programs and userspace: the only contract between them.
#![no_std]

use core::mem::size_of;

pub mod iter;

/// Kinds of [`Event`]. Integers on the wire, converted with `TryFrom` in userspace.
pub mod kind {
    /// A TCP socket changed state (`sock:inet_sock_set_state`).
    pub const STATE: u16 = 1;
}

/// TCP states exactly as the kernel numbers them (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: u32 = 1;
    pub const SYN_SENT: u32 = 2;
    pub const SYN_RECV: u32 = 3;
    pub const FIN_WAIT1: u32 = 4;
    pub const FIN_WAIT2: u32 = 5;
    pub const TIME_WAIT: u32 = 6;
    pub const CLOSE: u32 = 7;
    pub const CLOSE_WAIT: u32 = 8;
    pub const LAST_ACK: u32 = 9;
    pub const LISTEN: u32 = 10;
    pub const CLOSING: u32 = 11;
    pub const NEW_SYN_RECV: u32 = 12;
    pub const BOUND_INACTIVE: u32 = 13;
    /// Highest state number we accept from the kernel.
    pub const MAX: u32 = 13;
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// Field offsets of `sock:inet_sock_set_state` (see
/// `/sys/kernel/tracing/events/sock/inet_sock_set_state/format`). The eBPF program reads these;
/// a test compares them with the running kernel's format file.
pub mod tp_state {
    pub const SKADDR: usize = 8;
    pub const OLDSTATE: usize = 16;
    pub const NEWSTATE: usize = 20;
    pub const SPORT: usize = 24;
    pub const DPORT: usize = 26;
    pub const FAMILY: usize = 28;
    pub const PROTOCOL: usize = 30;
    pub const SADDR: usize = 32;
    pub const DADDR: usize = 36;
    pub const SADDR_V6: usize = 40;
    pub const DADDR_V6: usize = 56;
}

/// One event from kernel to userspace, sent through the `EVENTS` ring buffer.
///
/// Addresses are 16 bytes; IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`) so one
/// LPM trie filters both families. Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub netns_cookie: u64,
    /// Kernel address of the socket (identity while it lives; never dereferenced in userspace).
    pub skaddr: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    /// One of [`kind`].
    pub kind: u16,
    pub oldstate: u32,
    pub newstate: u32,
    /// Kind-specific extra value (unused by `STATE`: 0).
    pub aux: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Event>() == 80);

/// Filter flags in [`FilterConfig::flags`].
pub mod filter {
    /// Only sockets whose namespace cookie is in `NETNS_FILTER`.
    pub const NETNS: u32 = 1 << 0;
    /// Only sockets whose remote address matches `PEER_FILTER`.
    pub const PEER: u32 = 1 << 1;
    /// Only sockets whose local or remote port is in `PORT_FILTER`.
    pub const PORT: u32 = 1 << 2;
    /// Only transitions whose old or new state bit is in `state_mask`.
    pub const STATE: u32 = 1 << 3;
}

/// Runtime filter, element 0 of the `CONFIG` array. Userspace may rewrite it while attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterConfig {
    pub flags: u32,
    /// Bit `1 << state`; bit `TIME_WAIT` matches the active close into TIME_WAIT
    /// (`FIN_WAIT2 -> CLOSE`, `CLOSING -> CLOSE`), which is how the tracepoint shows it.
    pub state_mask: u32,
}
const _: () = assert!(size_of::<FilterConfig>() == 8);

/// Key of the `PEER_FILTER` LPM trie data: 16 address bytes, IPv4 mapped.
pub type PeerKey = [u8; 16];

/// Indexes of the per-CPU `STATS` counters.
pub mod stat {
    /// Events that matched but found the ring buffer full: lost.
    pub const RINGBUF_FULL: u32 = 0;
    /// `bpf_probe_read_kernel` failures (event still sent, with a zero netns cookie).
    pub const READ_ERROR: u32 = 1;
    /// Events written to the ring buffer.
    pub const SENT: u32 = 2;
    /// Number of counters.
    pub const COUNT: u32 = 3;
}

/// Names of the globals userspace sets with `EbpfLoader::override_global` (kernel struct offsets
/// read from the running kernel's BTF at load time; aya-ebpf emits no CO-RE relocations).
pub mod globals {
    /// `offsetof(struct sock_common, skc_net)`.
    pub const OFF_SKC_NET: &str = "OFF_SKC_NET";
    /// `offsetof(struct net, net_cookie)`.
    pub const OFF_NET_COOKIE: &str = "OFF_NET_COOKIE";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` integers and byte arrays with explicit padding, no invalid bit patterns.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::FilterConfig {}
}
