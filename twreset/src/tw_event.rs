//! TIME_WAIT lifecycle events: the contract between the kernel feed (probe/decode) and the table.

use crate::{sock::SockKey, state::TcpState};

/// Why a TIME_WAIT socket left before its timer fired (the caller of `inet_twsk_deschedule_put`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TwCause {
    /// netlink SOCK_DESTROY (`ss -K`, `twreset kill`): `tcp_abort`.
    SockDestroy,
    /// A RST from the peer: `tcp_timewait_state_process`.
    PeerRst,
    /// A new SYN reused the 4-tuple: `tcp_v4_rcv` / `tcp_v6_rcv`.
    NewSyn,
    /// An outgoing connect took the port over (`tcp_tw_reuse`): `__inet_hash_connect`.
    Reuse,
    /// The namespace was deleted: `inet_twsk_purge`.
    NetnsGone,
    /// Any other caller.
    Other,
}

impl TwCause {
    pub const ALL: [TwCause; 6] =
        [Self::SockDestroy, Self::PeerRst, Self::NewSyn, Self::Reuse, Self::NetnsGone, Self::Other];

    /// Position in [`TwCause::ALL`] (index of per-cause counter arrays).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The JSON / column name.
    pub fn name(self) -> &'static str {
        match self {
            Self::SockDestroy => "sock_destroy",
            Self::PeerRst => "peer_rst",
            Self::NewSyn => "new_syn",
            Self::Reuse => "reuse",
            Self::NetnsGone => "netns_gone",
            Self::Other => "other",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TwEventKind {
    /// A tw socket was created; `substate` is TimeWait or FinWait2 (orphaned FIN_WAIT2).
    Created { substate: TcpState, timeout_ms: u32 },
    /// Its timer was restarted (FIN_WAIT2 -> TIME_WAIT, or an ACK restarting the 60 s).
    Rearmed { substate: TcpState, timeout_ms: u32 },
    /// Its timer fired: the socket is gone.
    Expired,
    /// Removed before its timer fired.
    Killed { cause: TwCause },
    /// A tw socket was created that no timer event reported: the `sock_ops` program saw the
    /// active close hand over to it (the timer tracepoint leaves a few per million undelivered).
    /// Its timer is unknown: the kernel's are 60 s for TIME_WAIT. May repeat a `Created` of the
    /// same socket when a nested close on that CPU hid the timer from the check; then it is void.
    Born { substate: TcpState },
    /// A close found `tcp_max_tw_buckets` full: no TIME_WAIT socket was created.
    Overflow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwEvent {
    /// CLOCK_MONOTONIC (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    pub key: SockKey,
    pub kind: TwEventKind,
}
