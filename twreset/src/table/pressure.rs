//! Ephemeral-port pressure per destination (local IP, remote IP, remote port): the tuple whose
//! local ports run out together and make `connect()` fail with EADDRNOTAVAIL.

use std::{collections::HashMap, net::IpAddr};

use super::TW_LEN_NS;
use crate::{sock::DiagSocket, state::TcpState};

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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PressureError {
    #[error("ip_local_port_range {text:?}: expected two port numbers, low then high")]
    RangeSyntax { text: String },
}

impl PortRange {
    pub fn size(&self) -> u32 {
        u32::from(self.hi.saturating_sub(self.lo)) + 1
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }

    /// Parse `/proc/sys/net/ipv4/ip_local_port_range` ("32768\t60999\n").
    pub fn parse(text: &str) -> Result<Self, PressureError> {
        let err = || PressureError::RangeSyntax { text: text.to_owned() };
        let mut it = text.split_whitespace().map(str::parse::<u16>);
        match (it.next(), it.next(), it.next()) {
            (Some(Ok(lo)), Some(Ok(hi)), None) if lo <= hi => Ok(Self { lo, hi }),
            _ => Err(err()),
        }
    }
}

/// Port ranges by namespace cookie, with a default for namespaces not listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRanges {
    pub default: PortRange,
    pub per_ns: HashMap<u64, PortRange>,
}

impl PortRanges {
    pub fn of(&self, netns_cookie: u64) -> PortRange {
        self.per_ns.get(&netns_cookie).copied().unwrap_or(self.default)
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

/// Non-TIME_WAIT sockets holding an ephemeral local port, per destination, from the latest dump.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Connected(pub HashMap<Dest, u64>);

impl Connected {
    /// Count the dump's full sockets (not tw, not listening or unbound) whose local port lies in
    /// their namespace's ephemeral range: those are the ports `connect()` competes for.
    pub fn from_dump(dump: &[DiagSocket], ranges: &PortRanges) -> Self {
        let mut c = Self::default();
        dump.iter().for_each(|d| c.add(d, ranges));
        c
    }

    /// Count one socket of a dump (tw sockets, listeners and closed ones do not count).
    pub fn add(&mut self, d: &DiagSocket, ranges: &PortRanges) {
        if d.timewait || matches!(d.state, TcpState::Listen | TcpState::Close) {
            return;
        }
        let k = &d.key;
        if !ranges.of(k.netns_cookie).contains(k.lport) {
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
    /// Size of the ephemeral port range.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sock::SockKey;

    #[test]
    fn parses_proc_range() {
        assert_eq!(PortRange::parse("32768\t60999\n"), Ok(PortRange { lo: 32768, hi: 60999 }));
        assert_eq!(PortRange::parse("1024 1024"), Ok(PortRange { lo: 1024, hi: 1024 }));
        for bad in ["", "1", "2 1", "1 2 3", "a b", "1 70000"] {
            assert!(PortRange::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(PortRange::default().size(), 28232);
        assert_eq!(PortRange { lo: 1, hi: 1 }.size(), 1);
        assert_eq!(PortRange { lo: 0, hi: 65535 }.size(), 65536);
    }

    #[test]
    fn ranges_per_namespace() {
        let mut r = PortRanges::default();
        r.per_ns.insert(7, PortRange { lo: 40000, hi: 40009 });
        assert_eq!(r.of(7).size(), 10);
        assert_eq!(r.of(8), PortRange::default());
    }

    fn d(ns: u64, lport: u16, state: TcpState, timewait: bool) -> DiagSocket {
        DiagSocket {
            key: SockKey {
                netns_cookie: ns,
                laddr: "10.0.0.1".parse().unwrap(),
                lport,
                raddr: "10.0.0.2".parse().unwrap(),
                rport: 443,
            },
            state,
            timewait,
            expires_ms: 0,
            cookie: 0,
            inode: 0,
            uid: 0,
        }
    }

    #[test]
    fn connected_counts_only_full_sockets_on_ephemeral_ports() {
        let ranges = PortRanges::default();
        let dump = vec![
            d(1, 40000, TcpState::Established, false),
            d(1, 40001, TcpState::SynSent, false),
            d(1, 40002, TcpState::TimeWait, true), // tw: counted by the table instead
            d(1, 443, TcpState::Established, false), // server side: not an ephemeral port
            d(1, 40003, TcpState::Listen, false),
            d(2, 40004, TcpState::CloseWait, false),
        ];
        let c = Connected::from_dump(&dump, &ranges);
        let dest =
            |ns| Dest { netns: ns, laddr: "10.0.0.1".parse().unwrap(), raddr: "10.0.0.2".parse().unwrap(), rport: 443 };
        assert_eq!(c.get(&dest(1)), 2);
        assert_eq!(c.get(&dest(2)), 1);
        assert_eq!(c.get(&dest(3)), 0);
    }

    #[test]
    fn pressure_math() {
        // Idle destination: no rate, no exhaustion.
        let p = Pressure::compute(100, 10, 1000, 0.0);
        assert_eq!((p.holding, p.ratio, p.exhaustion_s), (110, 0.11, None));
        // 10/s piles up 600 in steady state: fits in 1000, never exhausts.
        assert_eq!(Pressure::compute(100, 10, 1000, 10.0).exhaustion_s, None);
        // 20/s needs 1200 + 10 > 1000: 890 free ports last 44.5 s.
        assert_eq!(Pressure::compute(100, 10, 1000, 20.0).exhaustion_s, Some(44.5));
        // Already full (or over, counting a range shrunk at runtime).
        assert_eq!(Pressure::compute(990, 10, 1000, 0.0).exhaustion_s, Some(0.0));
        assert_eq!(Pressure::compute(2000, 0, 1000, 0.0).ratio, 2.0);
        // Connected sockets alone can exceed the range at any rate.
        assert_eq!(Pressure::compute(0, 1000, 1000, 0.0).exhaustion_s, Some(0.0));
        assert_eq!(Pressure::compute(0, 999, 1000, 1.0).exhaustion_s, Some(1.0));
    }
}
