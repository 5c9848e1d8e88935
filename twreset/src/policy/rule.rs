//! One `[[relief.rule]]` once validated: what it covers (AND across kinds, OR within one), and
//! the exact ratio type its thresholds use.

use std::net::IpAddr;

use ipnet::IpNet;

/// A port-pressure ratio kept both as written (for messages) and in parts per million (for exact
/// integer comparisons: `holding / range >= 0.9` without float rounding at the boundary).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ratio {
    pub value: f64,
    pub ppm: u64,
}

impl Ratio {
    pub const PER: u64 = 1_000_000;

    pub fn new(value: f64) -> Self {
        Self { value, ppm: (value.clamp(0.0, 1.0) * Self::PER as f64).round() as u64 }
    }

    /// `holding / range >= self` (a range of 0 counts as 1, like [`crate::ports::Pressure`]).
    pub fn reached_by(&self, holding: u64, range: u32) -> bool {
        u128::from(holding) * u128::from(Self::PER) >= u128::from(self.ppm) * u128::from(range.max(1))
    }

    /// `floor(self * range)`: the most ports a destination may hold at this ratio.
    pub fn ports_of(&self, range: u32) -> u64 {
        let p = u128::from(self.ppm) * u128::from(range.max(1)) / u128::from(Self::PER);
        u64::try_from(p).unwrap_or(u64::MAX)
    }
}

/// A namespace label (`host`, an `ip netns` name, `pod:<ns>/<pod>`, `container:<name>`,
/// `netns:<cookie>`), matched exactly, or by prefix when it ends with `*` (`pod:prod/*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsPattern(pub String);

impl NetnsPattern {
    pub fn matches(&self, label: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => label.starts_with(prefix),
            None => label == self.0,
        }
    }
}

/// One validated `[[relief.rule]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    /// Remote CIDRs (empty = any remote).
    pub remote: Vec<IpNet>,
    /// Remote ports (empty = any port).
    pub remote_port: Vec<u16>,
    /// Local addresses or CIDRs (empty = any local address).
    pub local: Vec<IpNet>,
    /// Namespace labels (empty = any namespace).
    pub netns: Vec<NetnsPattern>,
    /// Act when a destination's pressure is at or above this (`None`: only the peer trigger).
    pub trigger_pressure: Option<Ratio>,
    /// Act when the peer holds at least this many TIME_WAIT sockets (`None`: unused).
    pub trigger_peer_sockets: Option<u64>,
    /// Kill down to this pressure.
    pub target_pressure: Ratio,
    /// Never kill a TIME_WAIT socket younger than this.
    pub min_age_ns: u64,
    /// Per-rule budgets (`None`: only the overall ones apply).
    pub max_kills_per_minute: Option<u64>,
    pub max_kills_per_cycle: Option<u64>,
}

impl Rule {
    /// True when the rule covers this destination: every kind given must match (AND), one value
    /// of a kind is enough (OR). IPv4-mapped IPv6 addresses match as IPv4.
    pub fn covers(&self, netns: &str, laddr: IpAddr, raddr: IpAddr, rport: u16) -> bool {
        let (laddr, raddr) = (laddr.to_canonical(), raddr.to_canonical());
        (self.remote.is_empty() || self.remote.iter().any(|n| n.contains(&raddr)))
            && (self.remote_port.is_empty() || self.remote_port.contains(&rport))
            && (self.local.is_empty() || self.local.iter().any(|n| n.contains(&laddr)))
            && (self.netns.is_empty() || self.netns.iter().any(|p| p.matches(netns)))
    }

    pub(crate) fn match_is_empty(&self) -> bool {
        self.remote.is_empty() && self.remote_port.is_empty() && self.local.is_empty() && self.netns.is_empty()
    }
}
