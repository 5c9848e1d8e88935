//! Views of the table: rows per peer, prefix, remote port, local address or destination, each
//! with count, oldest/newest age and early kills by cause; destinations add port pressure.

use std::{collections::HashMap, fmt, net::IpAddr};

use ipnet::IpNet;

use super::{
    Counters, Table,
    key::{DestKey, Key},
    pressure::{Connected, Dest, PortRanges, Pressure},
};

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

#[derive(Default)]
struct Acc {
    count: u64,
    fin_wait2: u64,
    first_ns: u64,
    last_ns: u64,
    recent: u64,
    kills: [u64; 6],
}

impl Table {
    fn dest_of(&self, ns: u32, laddr: u32, raddr: [u8; 16], rport: u16) -> Dest {
        Dest { netns: self.keys.netns(ns), laddr: self.keys.local(laddr), raddr: self.keys.remote(laddr, raddr), rport }
    }

    fn group_of_dest(&self, by: By, d: &DestKey, cfg: &ViewConfig) -> Group {
        let remote = || self.keys.remote(d.laddr, d.raddr);
        match by {
            By::Peer => Group::Peer(remote()),
            By::Prefix => {
                let ip = remote();
                let len = if ip.is_ipv4() { cfg.prefix_v4.min(32) } else { cfg.prefix_v6.min(128) };
                Group::Prefix(IpNet::new(ip, len).expect("length clamped").trunc())
            }
            By::Port => Group::Port(d.rport),
            By::Local => Group::Local(self.keys.local(d.laddr)),
            By::Dest => Group::Dest(self.dest_of(d.ns, d.laddr, d.raddr, d.rport)),
        }
    }

    /// The group of a tracked socket; `None` when a destination view leaves it out (its local
    /// port is not ephemeral: server-side TIME_WAIT holds no port `connect()` could want).
    fn group_of(&self, by: By, k: &Key, cfg: &ViewConfig, ranges: &PortRanges) -> Option<Group> {
        if by == By::Dest && !ranges.of(self.keys.netns(k.ns)).contains(k.lport) {
            return None;
        }
        Some(self.group_of_dest(by, &k.dest(), cfg))
    }

    /// Rows grouped `by`, sorted. `connected` and `ranges` (from the latest dump and sysctls)
    /// feed the destination view's pressure; other views ignore them.
    pub fn snapshot(
        &self,
        now_ns: u64,
        by: By,
        sort: Sort,
        cfg: &ViewConfig,
        connected: &Connected,
        ranges: &PortRanges,
    ) -> Snapshot {
        let mut acc: HashMap<Group, Acc> = HashMap::new();
        let mut fin_wait2 = 0;
        let window_start = now_ns.saturating_sub(cfg.rate_window_ns);
        for (k, s) in &self.map {
            fin_wait2 += u64::from(s.fin_wait2);
            let Some(g) = self.group_of(by, k, cfg, ranges) else { continue };
            let a = acc.entry(g).or_insert_with(|| Acc { first_ns: u64::MAX, ..Acc::default() });
            a.count += 1;
            a.fin_wait2 += u64::from(s.fin_wait2);
            a.first_ns = a.first_ns.min(s.created_ns);
            a.last_ns = a.last_ns.max(s.created_ns);
            a.recent += u64::from(s.created_ns > window_start && s.created_ns <= now_ns);
        }
        if by == By::Dest {
            for d in connected.0.keys() {
                acc.entry(Group::Dest(*d)).or_insert_with(|| Acc { first_ns: u64::MAX, ..Acc::default() });
            }
        }
        for (d, kills) in &self.kills {
            let g = self.group_of_dest(by, d, cfg);
            // A destination row needs a port holder; kills alone do not make one.
            let a = match (by, acc.get_mut(&g)) {
                (_, Some(a)) => a,
                (By::Dest, None) => continue,
                (_, None) => acc.entry(g).or_insert_with(|| Acc { first_ns: u64::MAX, ..Acc::default() }),
            };
            for (total, n) in a.kills.iter_mut().zip(kills.by_cause) {
                *total += u64::from(n);
            }
        }
        let age = |ns: u64| now_ns.saturating_sub(ns) as f64 / 1e9;
        let window_s = cfg.rate_window_ns.max(1) as f64 / 1e9;
        let mut rows: Vec<Row> = acc
            .into_iter()
            .map(|(group, a)| {
                let pressure = match group {
                    Group::Dest(d) => Some(Pressure::compute(
                        a.count,
                        connected.get(&d),
                        ranges.of(d.netns).size(),
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
        let totals = Totals { count: self.map.len() as u64, fin_wait2, counters: self.counters };
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
