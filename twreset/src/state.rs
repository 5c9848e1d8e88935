//! TCP states as the kernel numbers and names them, plus the "active close into TIME_WAIT" rule.

use std::{fmt, str::FromStr};

use twreset_common::tcp_state as k;

/// TCP_TIMEWAIT_LEN: how long a TIME_WAIT socket lives (no sysctl changes it), in ns.
pub const TW_LEN_NS: u64 = 60_000_000_000;

/// A TCP state. Converted from the kernel's integer with `TryFrom`; never transmuted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    BoundInactive,
}

pub const ALL: [TcpState; 13] = [
    TcpState::Established,
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::TimeWait,
    TcpState::Close,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::Listen,
    TcpState::Closing,
    TcpState::NewSynRecv,
    TcpState::BoundInactive,
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("unknown TCP state number {value} from the kernel")]
    UnknownNumber { value: u32 },
    #[error("unknown TCP state {name:?} (expected one of: {})", names().join(", "))]
    UnknownName { name: String },
}

fn names() -> Vec<&'static str> {
    ALL.iter().map(|s| s.name()).collect()
}

impl TcpState {
    /// The kernel's number (`include/net/tcp_states.h`).
    pub fn number(self) -> u32 {
        match self {
            Self::Established => k::ESTABLISHED,
            Self::SynSent => k::SYN_SENT,
            Self::SynRecv => k::SYN_RECV,
            Self::FinWait1 => k::FIN_WAIT1,
            Self::FinWait2 => k::FIN_WAIT2,
            Self::TimeWait => k::TIME_WAIT,
            Self::Close => k::CLOSE,
            Self::CloseWait => k::CLOSE_WAIT,
            Self::LastAck => k::LAST_ACK,
            Self::Listen => k::LISTEN,
            Self::Closing => k::CLOSING,
            Self::NewSynRecv => k::NEW_SYN_RECV,
            Self::BoundInactive => k::BOUND_INACTIVE,
        }
    }

    /// The kernel's name without `TCP_` (`"FIN_WAIT2"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
            Self::BoundInactive => "BOUND_INACTIVE",
        }
    }
}

/// True for the transitions through which a full socket hands over to a TIME_WAIT socket
/// (`tcp_time_wait()`): the tracepoint never shows `-> TIME_WAIT` itself.
pub fn is_active_close(old: TcpState, new: TcpState) -> bool {
    new == TcpState::Close && matches!(old, TcpState::FinWait2 | TcpState::Closing)
}

impl TryFrom<u32> for TcpState {
    type Error = StateError;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        ALL.iter().copied().find(|s| s.number() == value).ok_or(StateError::UnknownNumber { value })
    }
}

impl FromStr for TcpState {
    type Err = StateError;
    /// Accepts the kernel spelling and `ss` spelling, any case: `TIME_WAIT`, `time-wait`, `timewait`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s.chars().filter(|c| *c != '_' && *c != '-').flat_map(char::to_uppercase).collect();
        ALL.iter()
            .copied()
            .find(|st| st.name().replace('_', "") == norm)
            .ok_or_else(|| StateError::UnknownName { name: s.to_owned() })
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for s in ALL {
            assert_eq!(TcpState::try_from(s.number()), Ok(s));
        }
        assert_eq!(TcpState::try_from(0), Err(StateError::UnknownNumber { value: 0 }));
        assert_eq!(TcpState::try_from(14), Err(StateError::UnknownNumber { value: 14 }));
    }

    #[test]
    fn parses_kernel_and_ss_spellings() {
        assert_eq!("TIME_WAIT".parse(), Ok(TcpState::TimeWait));
        assert_eq!("time-wait".parse(), Ok(TcpState::TimeWait));
        assert_eq!("timewait".parse(), Ok(TcpState::TimeWait));
        assert_eq!("fin-wait-2".parse(), Ok(TcpState::FinWait2));
        assert_eq!("established".parse(), Ok(TcpState::Established));
        assert!(matches!("bogus".parse::<TcpState>(), Err(StateError::UnknownName { .. })));
    }

    #[test]
    fn active_close_rule() {
        assert!(is_active_close(TcpState::FinWait2, TcpState::Close));
        assert!(is_active_close(TcpState::Closing, TcpState::Close));
        assert!(!is_active_close(TcpState::LastAck, TcpState::Close));
        assert!(!is_active_close(TcpState::FinWait1, TcpState::FinWait2));
    }
}
