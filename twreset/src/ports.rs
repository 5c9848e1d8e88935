//! The one port-pressure model of `tw --by dest`, `top`, `doctor` and the relief policy: a
//! namespace's ephemeral ports, the sockets holding them per destination, pressure, `tcp_tw_reuse`;
//! pure.
//!
//! `connect()` runs out of local ports per destination (local IP, remote IP, remote port), not
//! per host. The model, decided once for every reader:
//!
//! - **Ports of a destination**: the namespace's own `ip_local_port_range` minus the
//!   `ip_local_reserved_ports` inside it ([`PortSpace::ports`]), read in that namespace.
//! - **Sockets holding one** ([`holds_port`]): any socket but a listener or a closed one, with a
//!   remote address and port, whose local port is ephemeral ([`PortSpace::is_ephemeral`]: in
//!   the range and not reserved; ports outside were bound explicitly, like the server side of
//!   accepted connections, and do not use up the range). TIME_WAIT sockets of both substates
//!   count.
//! - **Pressure** = sockets holding a port / ports ([`Pressure`]; 1.0 = exhausted). It counts
//!   TIME_WAIT sockets **whatever `tcp_tw_reuse` says**: the kernel still holds their ports, and
//!   reuse is conditional on things the host cannot see ahead (the peer's timestamps, the
//!   `tcp_tw_reuse_delay` since the socket entered TIME_WAIT). `tw`, `top`, the metrics and the
//!   relief policy use pressure as is.
//! - **`tcp_tw_reuse`** is reported beside it: [`reuse_applies`] (1, or 2 with a loopback
//!   source or destination, and `tcp_timestamps` on) says `connect()` may take the TIME_WAIT ports
//!   of that destination back, and [`held`] is what it cannot take back. `doctor` judges its
//!   severities on [`held`] and prints both.
//!
//! Time and facts are passed in: no I/O (the sysctls are read by the callers, in each namespace).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
};

use crate::{
    kernel::procfs::{self, ParseError},
    sock::DiagSocket,
    state::{TW_LEN_NS, TcpState},
};

/// `net.ipv4.ip_local_port_range` of one namespace (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl Default for PortRange {
    /// The kernel's default.
    fn default() -> Self {
        Self { lo: 32768, hi: 60999 }
    }
}

impl PortRange {
    /// Ports in the range (0 for a range written high to low).
    pub fn size(&self) -> u32 {
        if self.hi < self.lo { 0 } else { u32::from(self.hi - self.lo) + 1 }
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }

    /// `/proc/sys/net/ipv4/ip_local_port_range` ("32768\t60999\n", [`procfs::port_range`]), low
    /// not above high.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        match procfs::port_range(text)? {
            (lo, hi) if lo <= hi => Ok(Self { lo, hi }),
            _ => Err(ParseError::Format {
                what: "ip_local_port_range",
                expected: "the low port, then a high one",
                text: text.trim().to_owned(),
            }),
        }
    }
}

/// The ephemeral ports of one namespace: its range and its reserved ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSpace {
    pub range: PortRange,
    /// `net.ipv4.ip_local_reserved_ports` as inclusive ranges: never handed out by `connect()`.
    pub reserved: Vec<(u16, u16)>,
}

impl PortSpace {
    /// Ephemeral ports one destination can use: the range minus the reserved ports inside it.
    pub fn ports(&self) -> u32 {
        let PortRange { lo, hi } = self.range;
        let reserved: u32 = self
            .reserved
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (a.max(lo), b.min(hi));
                if b >= a { u32::from(b) - u32::from(a) + 1 } else { 0 }
            })
            .sum();
        self.range.size().saturating_sub(reserved)
    }

    /// True when `connect()` can hand out `port` as an ephemeral port.
    pub fn is_ephemeral(&self, port: u16) -> bool {
        self.range.contains(port) && !self.reserved.iter().any(|&(a, b)| (a..=b).contains(&port))
    }
}

/// Port spaces by namespace cookie, with a default for namespaces not listed (one created after
/// they were read: the reader's own namespace's).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSpaces {
    pub default: PortSpace,
    pub per_ns: HashMap<u64, PortSpace>,
}

impl PortSpaces {
    pub fn of(&self, netns_cookie: u64) -> &PortSpace {
        self.per_ns.get(&netns_cookie).unwrap_or(&self.default)
    }
}

/// A destination as shown to users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dest {
    pub netns: u64,
    pub laddr: IpAddr,
    pub raddr: IpAddr,
    pub rport: u16,
}

fn unspecified(ip: IpAddr) -> bool {
    ip.is_unspecified() || ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
}

/// Does this socket of a dump hold one of its destination's ephemeral ports? The model's one
/// counting rule (see the module's comment); TIME_WAIT sockets included.
pub fn holds_port(d: &DiagSocket, space: &PortSpace) -> bool {
    let k = &d.key;
    !matches!(d.state, TcpState::Listen | TcpState::Close)
        && !unspecified(k.raddr)
        && k.rport != 0
        && space.is_ephemeral(k.lport)
}

/// An IPv4-mapped IPv6 address names the same endpoint as the IPv4 one.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Full (non-TIME_WAIT) sockets holding an ephemeral port, per destination, from the latest
/// dump (the live table counts the TIME_WAIT ones itself).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Connected(pub HashMap<Dest, u64>);

impl Connected {
    pub fn from_dump(dump: &[DiagSocket], spaces: &PortSpaces) -> Self {
        let mut c = Self::default();
        dump.iter().for_each(|d| c.add(d, spaces));
        c
    }

    /// Count one socket of a dump if it is a full socket holding a port ([`holds_port`]).
    pub fn add(&mut self, d: &DiagSocket, spaces: &PortSpaces) {
        let k = &d.key;
        if d.timewait || !holds_port(d, spaces.of(k.netns_cookie)) {
            return;
        }
        let dest = Dest { netns: k.netns_cookie, laddr: k.laddr, raddr: k.raddr, rport: k.rport };
        *self.0.entry(dest).or_insert(0) += 1;
    }

    pub fn get(&self, d: &Dest) -> u64 {
        self.0.get(d).copied().unwrap_or(0)
    }
}

/// Port pressure of one destination.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pressure {
    /// Full (non-tw) sockets holding a port to it.
    pub connected: u64,
    /// All sockets holding a port to it: tw sockets plus `connected`.
    pub holding: u64,
    /// Ports of the destination ([`PortSpace::ports`]).
    pub range: u32,
    /// `holding / range` (1.0 = exhausted).
    pub ratio: f64,
    /// New tw sockets per second over the rate window.
    pub rate_per_s: f64,
    /// Seconds until every port is held at that rate; `None` when the rate never gets there.
    pub exhaustion_s: Option<f64>,
}

impl Pressure {
    /// At entry rate `r`, tw sockets pile up for 60 s before the first ones expire, so the
    /// steady state holds `connected + r * 60` ports. If that fits in the range the ports recycle
    /// and never run out (`None`); otherwise the free ports last `free / r` seconds.
    pub fn compute(tw: u64, connected: u64, range: u32, rate_per_s: f64) -> Self {
        let holding = tw + connected;
        let ratio = holding as f64 / f64::from(range.max(1));
        let free = u64::from(range).saturating_sub(holding);
        let steady = connected as f64 + rate_per_s * (TW_LEN_NS as f64 / 1e9);
        let exhaustion_s = if free == 0 {
            Some(0.0)
        } else if rate_per_s > 0.0 && steady >= f64::from(range) {
            Some(free as f64 / rate_per_s)
        } else {
            None
        };
        Self { connected, holding, range, ratio, rate_per_s, exhaustion_s }
    }
}

/// Whether `connect()` from `local` to `remote` may take over a TIME_WAIT socket's port, given
/// the namespace's `tcp_tw_reuse` and `tcp_timestamps`: reuse 1, or 2 when either address is
/// loopback (`tcp_twsk_unique`), and timestamps on (the kernel refuses reuse without them).
pub fn reuse_applies(tcp_tw_reuse: Option<u32>, tcp_timestamps: Option<u32>, local: IpAddr, remote: IpAddr) -> bool {
    let ts = tcp_timestamps.is_some_and(|t| t != 0);
    ts && match tcp_tw_reuse {
        Some(1) => true,
        Some(2) => local.is_loopback() || remote.is_loopback(),
        _ => false,
    }
}

/// Ports of a destination that `connect()` cannot take back: all of them, less the TIME_WAIT
/// ones when tcp_tw_reuse applies.
pub fn held(holding: u64, time_wait: u64, reuse_applies: bool) -> u64 {
    if reuse_applies { holding.saturating_sub(time_wait) } else { holding }
}

/// `part / whole` in percent, one decimal; 100 when `whole` is 0 and `part` is not.
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return if part == 0 { 0.0 } else { 100.0 };
    }
    (part as f64 * 1000.0 / whole as f64).round() / 10.0
}

#[cfg(test)]
#[path = "ports_tests.rs"]
mod tests;
