//! TIME_WAIT lifecycle events as the table consumes them (produced by `twfeed` from the kernel).

use crate::{sock::SockKey, state::TcpState};

/// Why a TIME_WAIT socket left before its timer fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TwCause {
    /// `SOCK_DESTROY` (`ss -K`, `twreset kill`): `tcp_abort`.
    SockDestroy,
    /// A RST from the peer: `tcp_timewait_state_process`.
    PeerRst,
    /// A new SYN took over the 4-tuple: `tcp_v4_rcv` / `tcp_v6_rcv`.
    NewSyn,
    /// An outgoing connect reused it (`tcp_tw_reuse`): `__inet_hash_connect`.
    Reuse,
    /// Its namespace was deleted: `inet_twsk_purge`.
    NetnsGone,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TwEventKind {
    Created {
        substate: TcpState,
        timeout_ms: u32,
    },
    Rearmed {
        substate: TcpState,
        timeout_ms: u32,
    },
    Expired,
    Killed {
        cause: TwCause,
    },
    /// A close found tcp_max_tw_buckets full: no TIME_WAIT socket was created.
    Overflow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwEvent {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub key: SockKey,
    pub kind: TwEventKind,
}
