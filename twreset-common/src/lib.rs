//! Wire types and constants shared by the eBPF programs and userspace: the only contract between them.
#![no_std]

use core::mem::size_of;

pub mod handled;
pub mod iter;

/// Kinds of [`Event`]. Integers on the wire, converted with `TryFrom` in userspace.
pub mod kind {
    /// A TCP socket changed state (`sock:inet_sock_set_state`). `aux`: [`super::state_aux`] flags.
    pub const STATE: u16 = 1;
    /// A TIME_WAIT socket's timer was armed: created or re-armed (`timer:timer_start`).
    /// `newstate`: substate (TIME_WAIT or FIN_WAIT2); `aux`: timeout in jiffies.
    pub const TW_START: u16 = 2;
    /// A TIME_WAIT socket's timer fired: it expires now (`timer:timer_expire_entry`).
    pub const TW_EXPIRE: u16 = 3;
    /// A TIME_WAIT socket was removed early (`timer:timer_cancel` from
    /// `inet_twsk_deschedule_put`). `aux`: return address in the function that removed it.
    pub const TW_KILL: u16 = 4;
    /// A TIME_WAIT socket's pending timer was moved (`timer_cancel` then `timer_start` on one CPU,
    /// not from a kill): FIN_WAIT2 substate becoming TIME_WAIT, or a segment restarting the timer.
    /// Fields as [`TW_START`].
    pub const TW_REARM: u16 = 5;
    /// A TIME_WAIT socket was created that no `timer_start` reported: the `sock_ops` program saw
    /// the active close hand its socket over (`filter::TW_TABLE`). `skaddr`: the full socket
    /// (the TIME_WAIT socket is not reachable from it); `newstate`: substate; `aux`: 0 (timeout
    /// unknown; the kernel's own are 60 s for TIME_WAIT).
    pub const TW_BORN: u16 = 6;
}

/// Flags in `Event::aux` of a `STATE` event.
pub mod state_aux {
    /// This active close handed over to a TIME_WAIT socket (its timer started on this CPU).
    pub const TW_CREATED: u64 = 1;
    /// This active close created no TIME_WAIT socket and carried no error:
    /// `tcp_max_tw_buckets` was full (the kernel's `TCPTimeWaitOverflow`).
    pub const OVERFLOW: u64 = 2;
    /// With [`TW_CREATED`]: no timer event reported that TIME_WAIT socket; the `sock_ops` program
    /// saw the full socket leave the established hash for it, and a `kind::TW_BORN` follows.
    pub const TW_UNTIMED: u64 = 4;
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
    /// Kind-specific value, see [`kind`].
    pub aux: u64,
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
    /// A TIME_WAIT table's probe: the timer programs report the TIME_WAIT sockets, and the
    /// `sock_ops` program only the creations they did not see (`kind::TW_BORN`).
    pub const TW_TABLE: u32 = 1 << 4;
    /// The `sock_ops` program is attached: it reports the transitions of the sockets it turned
    /// `BPF_SOCK_OPS_STATE_CB` on for, and the tracepoint programs leave those to it.
    pub const SOCK_OPS: u32 = 1 << 5;
    /// The timer programs are attached: active closes are told apart by the CPU's last
    /// TIME_WAIT timer (`state_aux`).
    pub const TIMERS: u32 = 1 << 6;
    /// Sockets are `sock_ops`' from birth: the `connect4`/`connect6` programs turn
    /// `BPF_SOCK_OPS_STATE_CB` on for every connecting TCP socket, `sock_ops` itself for every
    /// listener (`iter/tcp` for the older sockets), listeners pass it to their children, and
    /// `sock_ops` reports every transition of a socket with the flag, including the two
    /// `tcp_set_state()` does not make (`CLOSE -> LISTEN` and a child's `LISTEN -> SYN_RECV`),
    /// which it synthesises unless the tracepoint reported them. The tracepoint programs report
    /// only sockets without the flag.
    pub const OWN: u32 = 1 << 7;
    /// The tracepoint's state programs are detached (`trace` after the hand-over): `sock_ops`
    /// leaves them no per-CPU note of what it reports.
    pub const STATE_DETACHED: u32 = 1 << 8;
}

/// Runtime filter, element 0 of the `CONFIG` array. Userspace may rewrite it while attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterConfig {
    pub flags: u32,
    /// Bit `1 << state`; bit `TIME_WAIT` matches the active close into TIME_WAIT
    /// (`FIN_WAIT2 -> CLOSE`, `CLOSING -> CLOSE`), which is how the tracepoint shows it.
    pub state_mask: u32,
    /// With `filter::NETNS`: the one namespace kept, compared directly; 0 when several are kept
    /// (then `NETNS_FILTER` is looked up).
    pub netns_cookie: u64,
}
const _: () = assert!(size_of::<FilterConfig>() == 16);

impl FilterConfig {
    /// Does the namespace filter keep `cookie`? `lookup` consults `NETNS_FILTER` (kernel side).
    #[inline(always)]
    pub fn keeps_netns(&self, cookie: u64, lookup: impl FnOnce(u64) -> bool) -> bool {
        if self.flags & filter::NETNS == 0 {
            return true;
        }
        if self.netns_cookie != 0 {
            return cookie == self.netns_cookie;
        }
        lookup(cookie)
    }
}

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
    /// State transitions the backup state program handled because the kernel skipped the
    /// primary for them (recursion): subtracted from the primary's `recursion_misses`.
    pub const RECOVERED: u32 = 3;
    /// Events the `sock_ops` program sent (`filter::SOCK_OPS`).
    pub const SOCK_OPS: u32 = 4;
    /// TIME_WAIT creations no `timer_start` reported, sent by the `sock_ops` program
    /// (`kind::TW_BORN`).
    pub const TW_BORN: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = 6;
}

/// Kernel facts the programs need, read by userspace from the running kernel's BTF and
/// /proc/kallsyms and set as the global `OFFSETS` at load time (aya-ebpf emits no CO-RE
/// relocations). Values measured on 6.18 are in docs/internals/kernel-abi.md.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// Address of `tw_timer_handler` (0: TIME_WAIT tracking disabled).
    pub tw_timer_fn: u64,
    /// `[start, end)` of `inet_twsk_deschedule_put`.
    pub desched_start: u64,
    pub desched_end: u64,
    /// `[start, end)` of the timer function under the cancel (fallback if deschedule is
    /// inlined; userspace's `probe::SHUTDOWN_SYMBOLS` says which).
    pub shutdown_start: u64,
    pub shutdown_end: u64,
    /// `struct sock_common` members.
    pub skc_net: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// Offset in `struct net` of the namespace identity: `net_cookie` (u64) where the kernel has
    /// `SO_NETNS_COOKIE`, else `ns.inum` (u32, see [`Self::net_id_u32`]).
    pub net_cookie: u32,
    /// `struct inet_timewait_sock` members.
    pub tw_substate: u32,
    pub tw_timer: u32,
    /// `struct timer_list.function`.
    pub timer_function: u32,
    /// `struct sock.sk_err`.
    pub sk_err: u32,
    /// `struct timer_list.expires` (raw tracepoints get the timer, not the record).
    pub timer_expires: u32,
    /// `struct sock.sk_protocol` (u16).
    pub sk_protocol: u32,
    /// `struct inet_sock.inet_sport` (big-endian u16): the local port the tracepoint reports.
    pub inet_sport: u32,
    /// `struct tcp_sock.bpf_sock_ops_cb_flags` (u8; 0: unknown, no `sock_ops` source).
    pub tcp_cb_flags: u32,
    /// `struct sock_common.skc_node.pprev` (NULL once the socket left the established hash).
    pub skc_pprev: u32,
    /// `struct sock.sk_flags` (bit `SOCK_DONE`: the peer's FIN arrived).
    pub sk_flags: u32,
    /// `struct sock.sk_socket` (NULL until a listener's child is accepted).
    pub sk_socket: u32,
    /// 1: the identity at `net_cookie` is the 32-bit `ns.inum` (kernels without
    /// `SO_NETNS_COOKIE`); 0: the 64-bit `net_cookie`.
    pub net_id_u32: u32,
    /// 1: sockets can be given to `sock_ops` at `connect()` (Linux >= 6.12, `filter::OWN`); 0:
    /// the code for it is dead to the verifier, so older kernels never see its helpers
    /// (`bpf_get_socket_cookie` is not callable from tracing programs before 5.12).
    pub own_possible: u32,
}
const _: () = assert!(size_of::<KernelOffsets>() == 128);

/// Name of the [`KernelOffsets`] global.
pub const OFFSETS_GLOBAL: &str = "OFFSETS";

/// Last TIME_WAIT timer started on a CPU: lets the state program tell an active close that
/// created a TIME_WAIT socket from one that overflowed `tcp_max_tw_buckets` (same CPU, same call).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastTw {
    pub netns_cookie: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub _pad: u32,
}
const _: () = assert!(size_of::<LastTw>() == 48);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` integers and byte arrays with explicit padding, no invalid bit patterns.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::FilterConfig {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::LastTw {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_filter_one_direct_several_looked_up() {
        let none = FilterConfig::default();
        assert!(none.keeps_netns(7, |_| panic!("no lookup without the filter")));
        let one = FilterConfig { flags: filter::NETNS, netns_cookie: 7, ..FilterConfig::default() };
        assert!(one.keeps_netns(7, |_| panic!("one namespace: direct compare")));
        assert!(!one.keeps_netns(8, |_| true));
        let several = FilterConfig { flags: filter::NETNS, ..FilterConfig::default() };
        assert!(several.keeps_netns(8, |c| c == 8));
        assert!(!several.keeps_netns(9, |c| c == 8));
    }
}
