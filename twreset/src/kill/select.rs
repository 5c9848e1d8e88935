//! Pure selectors of `twreset kill`: which sockets a kill may touch. Parsing of the positional
//! peer forms (`IP`, `CIDR`, `IP:PORT`, `[IPv6]:PORT`), durations, states, and matching.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;

use crate::{
    scope::{parse_peer, parse_port},
    sock::DiagSocket,
    state::TcpState,
};

/// `TCP_TIMEWAIT_LEN`: hard-coded 60 s; a TIME_WAIT socket's age is this minus its timer.
pub const TIMEWAIT_LEN_MS: u32 = 60_000;

/// An address or prefix with an optional port; `net: None` means any address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub net: Option<IpNet>,
    pub port: Option<u16>,
}

impl Endpoint {
    pub fn matches(&self, ip: IpAddr, port: u16) -> bool {
        self.net.is_none_or(|n| n.contains(&ip)) && self.port.is_none_or(|p| p == port)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let net =
            self.net.map(|n| if n.prefix_len() == n.max_prefix_len() { n.addr().to_string() } else { n.to_string() });
        match (net, self.port) {
            (Some(n), Some(p)) if n.contains(':') => write!(f, "[{n}]:{p}"),
            (Some(n), Some(p)) => write!(f, "{n}:{p}"),
            (Some(n), None) => f.write_str(&n),
            (None, Some(p)) => write!(f, ":{p}"),
            (None, None) => f.write_str("*"),
        }
    }
}

/// Parse `IP`, `CIDR`, `IP:PORT`, `[IPv6]:PORT`, `[IPv6]` (and `:PORT` when `allow_bare_port`).
pub fn parse_endpoint(s: &str, allow_bare_port: bool) -> Result<Endpoint, String> {
    let port = |p: &str| parse_port(p).map(Some);
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, tail) = rest.split_once(']').ok_or_else(|| format!("{s:?}: missing ']'"))?;
        if !addr.contains(':') {
            return Err(format!("{s:?}: brackets are for IPv6 addresses"));
        }
        let net = Some(parse_peer(addr)?);
        return match tail {
            "" => Ok(Endpoint { net, port: None }),
            t => match t.strip_prefix(':') {
                Some(p) => Ok(Endpoint { net, port: port(p)? }),
                None => Err(format!("{s:?}: expected [IPv6]:PORT")),
            },
        };
    }
    if let Some(p) = s.strip_prefix(':').filter(|p| !p.contains(':')) {
        return if allow_bare_port {
            Ok(Endpoint { net: None, port: port(p)? })
        } else {
            Err(format!("{s:?}: a peer needs an address (use --port {p} for any peer on that port)"))
        };
    }
    if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
        return Err(format!("{s:?} is not an IP address (for a port use --port {s} or IP:{s})"));
    }
    match s.matches(':').count() {
        // One colon: IPv4 (or IPv4 prefix) with a port; IPv6 always has at least two.
        1 => {
            let (addr, p) = s.split_once(':').expect("one colon");
            Ok(Endpoint { net: Some(parse_peer(addr)?), port: port(p)? })
        }
        _ => Ok(Endpoint { net: Some(parse_peer(s)?), port: None }),
    }
}

/// Which states a kill covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum States {
    /// TIME_WAIT sockets, whatever their substate (TIME_WAIT or FIN_WAIT2): the default.
    TimeWait,
    /// These states. `TimeWait` in the list means every tw socket; other states mean full sockets.
    List(Vec<TcpState>),
    /// Every connection: tw sockets and full sockets in any state except LISTEN and
    /// BOUND_INACTIVE (listeners are only killed when `--state listen` names them).
    Any,
}

/// A `--state` word: a TCP state or `any`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateWord {
    State(TcpState),
    Any,
}

pub fn parse_state_word(s: &str) -> Result<StateWord, String> {
    if s.eq_ignore_ascii_case("any") || s.eq_ignore_ascii_case("all") {
        return Ok(StateWord::Any);
    }
    s.parse::<TcpState>().map(StateWord::State).map_err(|e| format!("{e}, or any"))
}

impl States {
    pub fn from_words(words: &[StateWord]) -> Self {
        if words.is_empty() {
            return Self::TimeWait;
        }
        if words.contains(&StateWord::Any) {
            return Self::Any;
        }
        let mut v: Vec<TcpState> = words
            .iter()
            .map(|w| match w {
                StateWord::State(s) => *s,
                StateWord::Any => unreachable!("handled above"),
            })
            .collect();
        v.sort();
        v.dedup();
        if v == [TcpState::TimeWait] { Self::TimeWait } else { Self::List(v) }
    }

    pub fn matches(&self, s: &DiagSocket) -> bool {
        match self {
            Self::TimeWait => s.timewait,
            Self::List(l) => {
                l.iter().any(|st| if *st == TcpState::TimeWait { s.timewait } else { !s.timewait && s.state == *st })
            }
            Self::Any => s.timewait || !matches!(s.state, TcpState::Listen | TcpState::BoundInactive),
        }
    }

    /// Kernel dump filter covering [`Self::matches`] (tw sockets are filtered by substate).
    pub fn dump_states(&self) -> Vec<TcpState> {
        let tw = [TcpState::TimeWait, TcpState::FinWait2];
        match self {
            Self::TimeWait => tw.to_vec(),
            Self::List(l) => {
                let mut v = l.clone();
                if l.contains(&TcpState::TimeWait) {
                    v.push(TcpState::FinWait2);
                }
                v
            }
            Self::Any => Vec::new(),
        }
    }

    /// True when only tw sockets can match (ages are defined only for them).
    pub fn only_timewait(&self) -> bool {
        *self == Self::TimeWait
    }

    pub fn label(&self) -> String {
        match self {
            Self::TimeWait => "time-wait".into(),
            Self::List(l) => {
                l.iter().map(|s| s.name().to_ascii_lowercase().replace('_', "-")).collect::<Vec<_>>().join(",")
            }
            Self::Any => "any".into(),
        }
    }
}

/// A validated selection rule. Kinds combine with AND; several values of one kind with OR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub peers: Vec<Endpoint>,
    pub ports: Vec<u16>,
    pub locals: Vec<Endpoint>,
    pub states: States,
    pub older_than: Option<Duration>,
    /// `--all`: explicitly every socket in `states`.
    pub all: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error(
        "no selector: name peers (IP, CIDR, IP:PORT, [IPv6]:PORT), --port or --local, or pass --all to select every socket in the state"
    )]
    Empty,
    #[error("--all cannot be combined with peers, --port or --local (it means every socket)")]
    AllWithFilters,
    #[error(
        "--older-than applies to TIME_WAIT sockets only (age = 60 s minus the remaining TIME_WAIT timer); the kernel reports no age for {states} sockets"
    )]
    AgeNeedsTimeWait { states: String },
}

impl Selector {
    pub fn new(
        peers: Vec<Endpoint>,
        ports: Vec<u16>,
        locals: Vec<Endpoint>,
        states: States,
        older_than: Option<Duration>,
        all: bool,
    ) -> Result<Self, SelectorError> {
        let filtered = !(peers.is_empty() && ports.is_empty() && locals.is_empty());
        if all && filtered {
            return Err(SelectorError::AllWithFilters);
        }
        if !all && !filtered {
            return Err(SelectorError::Empty);
        }
        if older_than.is_some() && !states.only_timewait() {
            return Err(SelectorError::AgeNeedsTimeWait { states: states.label() });
        }
        Ok(Self { peers, ports, locals, states, older_than, all })
    }

    pub fn matches(&self, s: &DiagSocket) -> bool {
        let k = &s.key;
        self.states.matches(s)
            && (self.peers.is_empty() || self.peers.iter().any(|e| e.matches(k.raddr, k.rport)))
            && (self.ports.is_empty() || self.ports.contains(&k.rport))
            && (self.locals.is_empty() || self.locals.iter().any(|e| e.matches(k.laddr, k.lport)))
            && self.older_than.is_none_or(|min| age(s).is_some_and(|a| a >= min))
    }

    /// The selector in `ss`-like words, for the audit log and messages.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("state {}", self.states.label())];
        if self.all {
            parts.push("all".into());
        }
        if !self.peers.is_empty() {
            parts.push(format!("peer {}", self.peers.iter().map(ToString::to_string).collect::<Vec<_>>().join("|")));
        }
        if !self.ports.is_empty() {
            parts.push(format!("dport {}", self.ports.iter().map(ToString::to_string).collect::<Vec<_>>().join("|")));
        }
        if !self.locals.is_empty() {
            parts.push(format!("local {}", self.locals.iter().map(ToString::to_string).collect::<Vec<_>>().join("|")));
        }
        if let Some(d) = self.older_than {
            parts.push(format!("older-than {}ms", d.as_millis()));
        }
        parts.join(" ")
    }
}

/// Age of a tw socket: time since its TIME_WAIT timer was (re)armed. None for full sockets.
pub fn age(s: &DiagSocket) -> Option<Duration> {
    s.timewait.then(|| Duration::from_millis(u64::from(TIMEWAIT_LEN_MS.saturating_sub(s.expires_ms))))
}

#[cfg(test)]
#[path = "select_tests.rs"]
pub(crate) mod tests;
