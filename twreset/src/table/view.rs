//! Views of the table: rows per peer, prefix, remote port, local address or destination, each
//! with count, oldest/newest age and early kills by cause; destinations add port pressure.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::IpAddr,
};

use ipnet::IpNet;

use super::{
    Counters, Table,
    key::{DestKey, unpack},
};
use crate::ports::{Connected, Dest, PortSpaces, Pressure};

/// How rows are grouped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum By {
    /// Remote IP address.
    #[default]
    Peer,
    /// Remote prefix (default /24 for IPv4, /64 for IPv6).
    Prefix,
    /// Remote port.
    Port,
    /// Local IP address.
    Local,
    /// Destination (namespace, local IP, remote IP, remote port) with ephemeral-port pressure.
    Dest,
}

impl By {
    pub const ALL: [By; 5] = [By::Peer, By::Prefix, By::Port, By::Local, By::Dest];

    pub fn name(self) -> &'static str {
        match self {
            Self::Peer => "peer",
            Self::Prefix => "prefix",
            Self::Port => "port",
            Self::Local => "local",
            Self::Dest => "dest",
        }
    }

    /// The next grouping in the order `top` cycles through (local is for `tw` only).
    pub fn next_in_top(self) -> Self {
        match self {
            Self::Peer => Self::Prefix,
            Self::Prefix => Self::Port,
            Self::Port => Self::Dest,
            Self::Dest | Self::Local => Self::Peer,
        }
    }
}

/// Row order; ties are broken by the group key so output is stable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Sort {
    /// Most tw sockets first.
    #[default]
    Count,
    /// Oldest socket first.
    Oldest,
    /// Most recent entry first.
    Newest,
    /// Most early kills first.
    Kills,
    /// Highest port pressure first (destinations; other views fall back to count).
    Pressure,
}

impl Sort {
    pub fn name(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Oldest => "oldest",
            Self::Newest => "newest",
            Self::Kills => "kills",
            Self::Pressure => "pressure",
        }
    }

    pub fn next(self) -> Self {
        match self {
            Self::Count => Self::Oldest,
            Self::Oldest => Self::Newest,
            Self::Newest => Self::Kills,
            Self::Kills => Self::Pressure,
            Self::Pressure => Self::Count,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewConfig {
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    /// Window of the per-destination entry rate.
    pub rate_window_ns: u64,
}

impl Default for ViewConfig {
    fn default() -> Self {
        Self { prefix_v4: 24, prefix_v6: 64, rate_window_ns: 10_000_000_000 }
    }
}

/// A row's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Peer(IpAddr),
    Prefix(IpNet),
    Port(u16),
    Local(IpAddr),
    Dest(Dest),
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Peer(ip) | Self::Local(ip) => write!(f, "{ip}"),
            Self::Prefix(net) => write!(f, "{net}"),
            Self::Port(p) => write!(f, "{p}"),
            Self::Dest(d) => match d.raddr {
                IpAddr::V4(r) => write!(f, "{} -> {r}:{}", d.laddr, d.rport),
                IpAddr::V6(r) => write!(f, "{} -> [{r}]:{}", d.laddr, d.rport),
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub group: Group,
    /// tw sockets: TIME_WAIT plus FIN_WAIT2 substate.
    pub count: u64,
    pub fin_wait2: u64,
    /// Age of the oldest and newest tw socket, seconds (`None` without sockets).
    pub oldest_s: Option<f64>,
    pub newest_s: Option<f64>,
    /// Early kills by [`crate::tw_event::TwCause::index`].
    pub kills: [u64; 6],
    /// Destinations only.
    pub pressure: Option<Pressure>,
}

impl Row {
    pub fn time_wait(&self) -> u64 {
        self.count - self.fin_wait2
    }

    pub fn kills_total(&self) -> u64 {
        self.kills.iter().sum()
    }
}

/// Whole-table figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub count: u64,
    pub fin_wait2: u64,
    pub counters: Counters,
}

impl Totals {
    pub fn time_wait(&self) -> u64 {
        self.count - self.fin_wait2
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub by: By,
    pub rows: Vec<Row>,
    pub totals: Totals,
}

#[derive(Clone, Copy, Default)]
struct Acc {
    count: u64,
    fin_wait2: u64,
    first_ns: u64,
    last_ns: u64,
    recent: u64,
    kills: [u64; 6],
}

/// A group in the table's own form: cheap to derive and hash for every tracked socket; turned
/// into a [`Group`] once per row.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Compact {
    /// Remote address (masked to the prefix for `By::Prefix`), packed as in the table.
    Remote {
        v4: bool,
        raddr: [u8; 16],
    },
    Port(u16),
    Local(u32),
    Dest(DestKey),
}

/// Keep the first `bits` bits of a packed address.
fn mask(mut raddr: [u8; 16], bits: u32) -> [u8; 16] {
    for (i, b) in raddr.iter_mut().enumerate() {
        let keep = bits.saturating_sub(i as u32 * 8).min(8);
        *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    raddr
}

impl Table {
    fn compact(&self, by: By, d: &DestKey, cfg: &ViewConfig) -> Compact {
        let v4 = self.keys.local(d.laddr).is_ipv4();
        match by {
            By::Peer => Compact::Remote { v4, raddr: d.raddr },
            // IPv4 is packed IPv4-mapped: its prefix starts after the 96-bit ::ffff:0:0/96.
            By::Prefix if v4 => Compact::Remote { v4, raddr: mask(d.raddr, 96 + u32::from(cfg.prefix_v4.min(32))) },
            By::Prefix => Compact::Remote { v4, raddr: mask(d.raddr, u32::from(cfg.prefix_v6.min(128))) },
            By::Port => Compact::Port(d.rport),
            By::Local => Compact::Local(d.laddr),
            By::Dest => Compact::Dest(*d),
        }
    }

    fn expand(&self, by: By, c: Compact, cfg: &ViewConfig) -> Group {
        match c {
            Compact::Remote { v4, raddr } if by == By::Prefix => {
                let len = if v4 { cfg.prefix_v4.min(32) } else { cfg.prefix_v6.min(128) };
                Group::Prefix(IpNet::new(unpack(raddr, v4), len).expect("length clamped").trunc())
            }
            Compact::Remote { v4, raddr } => Group::Peer(unpack(raddr, v4)),
            Compact::Port(p) => Group::Port(p),
            Compact::Local(id) => Group::Local(self.keys.local(id)),
            Compact::Dest(d) => Group::Dest(Dest {
                netns: self.keys.netns(d.ns),
                laddr: self.keys.local(d.laddr),
                raddr: self.keys.remote(d.laddr, d.raddr),
                rport: d.rport,
            }),
        }
    }

    /// Rows grouped `by`, sorted. `connected` and `ranges` (from the latest dump and sysctls)
    /// feed the destination view's pressure; other views ignore them.
    ///
    /// The destination view leaves out sockets whose local port is not ephemeral: server-side
    /// TIME_WAIT holds no port `connect()` could want.
    pub fn snapshot(
        &self,
        now_ns: u64,
        by: By,
        sort: Sort,
        cfg: &ViewConfig,
        connected: &Connected,
        ranges: &PortSpaces,
    ) -> Snapshot {
        self.snapshot_in(now_ns, by, sort, cfg, connected, ranges, None)
    }

    /// [`Self::snapshot`] of the namespaces whose cookies are in `netns` (None: every one):
    /// rows and the socket totals cover those only; the history counters stay table-wide.
    #[allow(clippy::too_many_arguments)]
    pub fn snapshot_in(
        &self,
        now_ns: u64,
        by: By,
        sort: Sort,
        cfg: &ViewConfig,
        connected: &Connected,
        ranges: &PortSpaces,
        netns: Option<&[u64]>,
    ) -> Snapshot {
        let wanted = |cookie: u64| netns.is_none_or(|l| l.contains(&cookie));
        let keep: Vec<bool> = (0..self.keys.ns_count()).map(|id| wanted(self.keys.netns(id))).collect();
        let mut count = 0;
        let fresh = || Acc { first_ns: u64::MAX, ..Acc::default() };
        // Ranges by interned namespace id: one lookup per namespace, not per socket.
        let ns_ranges: Vec<_> = (0..self.keys.ns_count()).map(|id| ranges.of(self.keys.netns(id))).collect();
        let mut acc: HashMap<Compact, Acc> = HashMap::new();
        let mut fin_wait2 = 0;
        let window_start = now_ns.saturating_sub(cfg.rate_window_ns);
        let epoch = self.map.epoch();
        for (k, s) in self.map.iter() {
            if !keep[k.ns as usize] {
                continue;
            }
            count += 1;
            fin_wait2 += u64::from(s.fin_wait2());
            if by == By::Dest && !ns_ranges[k.ns as usize].is_ephemeral(k.lport) {
                continue;
            }
            let a = acc.entry(self.compact(by, &k.dest(), cfg)).or_insert_with(fresh);
            a.count += 1;
            a.fin_wait2 += u64::from(s.fin_wait2());
            let created = s.created_ns(epoch);
            a.first_ns = a.first_ns.min(created);
            a.last_ns = a.last_ns.max(created);
            a.recent += u64::from(created > window_start && created <= now_ns);
        }
        for (d, kills) in &self.kills {
            if !keep[d.ns as usize] {
                continue;
            }
            let c = self.compact(by, d, cfg);
            // A destination row needs a port holder; kills alone do not make one.
            let a = match (by, acc.get_mut(&c)) {
                (_, Some(a)) => a,
                (By::Dest, None) => continue,
                (_, None) => acc.entry(c).or_insert_with(fresh),
            };
            for (total, n) in a.kills.iter_mut().zip(kills.by_cause) {
                *total += u64::from(n);
            }
        }
        let mut groups: Vec<(Group, Acc)> = acc.into_iter().map(|(c, a)| (self.expand(by, c, cfg), a)).collect();
        if by == By::Dest {
            let seen: HashSet<Dest> =
                groups.iter().filter_map(|(g, _)| if let Group::Dest(d) = g { Some(*d) } else { None }).collect();
            groups.extend(
                connected.0.keys().filter(|d| !seen.contains(d) && wanted(d.netns)).map(|d| (Group::Dest(*d), fresh())),
            );
        }
        let age = |ns: u64| now_ns.saturating_sub(ns) as f64 / 1e9;
        let window_s = cfg.rate_window_ns.max(1) as f64 / 1e9;
        let mut rows: Vec<Row> = groups
            .into_iter()
            .map(|(group, a)| {
                let pressure = match group {
                    Group::Dest(d) => Some(Pressure::compute(
                        a.count,
                        connected.get(&d),
                        ranges.of(d.netns).ports(),
                        a.recent as f64 / window_s,
                    )),
                    _ => None,
                };
                Row {
                    group,
                    count: a.count,
                    fin_wait2: a.fin_wait2,
                    oldest_s: (a.count > 0).then(|| age(a.first_ns)),
                    newest_s: (a.count > 0).then(|| age(a.last_ns)),
                    kills: a.kills,
                    pressure,
                }
            })
            .collect();
        sort_rows(&mut rows, sort);
        let totals = Totals { count, fin_wait2, counters: self.counters };
        Snapshot { by, rows, totals }
    }
}

/// Sort rows in place by `sort`, largest first, ties by group key.
pub fn sort_rows(rows: &mut [Row], sort: Sort) {
    let f = |o: Option<f64>| o.unwrap_or(-1.0);
    rows.sort_by(|a, b| {
        let primary = match sort {
            Sort::Count => b.count.cmp(&a.count),
            Sort::Oldest => f(b.oldest_s).total_cmp(&f(a.oldest_s)),
            // Freshest first; rows without sockets last.
            Sort::Newest => a.newest_s.unwrap_or(f64::INFINITY).total_cmp(&b.newest_s.unwrap_or(f64::INFINITY)),
            Sort::Kills => b.kills_total().cmp(&a.kills_total()),
            Sort::Pressure => {
                let p = |r: &Row| r.pressure.map_or(-1.0, |p| p.ratio);
                p(b).total_cmp(&p(a)).then(b.count.cmp(&a.count))
            }
        };
        primary.then_with(|| a.group.cmp(&b.group))
    });
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn masks_bits() {
        let all = [0xff; 16];
        assert_eq!(mask(all, 128), all);
        assert_eq!(mask(all, 0), [0; 16]);
        let m = mask(all, 100);
        assert_eq!(&m[..12], &[0xff; 12]);
        assert_eq!(m[12], 0xf0);
        assert_eq!(&m[13..], &[0; 3]);
        assert_eq!(mask(all, 7)[0], 0xfe);
    }
}
