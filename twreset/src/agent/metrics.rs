//! `GET /metrics`: the exposition built from [`Figures`], a snapshot the owner takes from the
//! live table at scrape time. [`exposition`] is pure; it bounds cardinality whatever the table
//! holds: per family the `top_n` largest rows, then one `other` row per namespace shown, then a
//! single all-`other` row, so every sum (per namespace and overall) stays right.
//!
//! Namespaces themselves are ranked first (by tw sockets): the `top_n` largest keep their label,
//! the rest are summed as `netns="other"` in every family.

use std::collections::{BTreeMap, HashMap};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::tw_event::TwCause;

/// The label value of rows summed together.
pub const OTHER: &str = "other";

/// `Content-Type` of the exposition (OpenMetrics text; Prometheus negotiates it).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One namespace's figures (labels resolved by the owner).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NsFigures {
    pub netns: String,
    pub time_wait: u64,
    pub fin_wait2: u64,
    pub created: u64,
    pub expired: u64,
    /// Early kills by [`TwCause::index`].
    pub killed: [u64; 6],
    pub overflow: u64,
}

impl NsFigures {
    fn add(&mut self, o: &NsFigures) {
        self.time_wait += o.time_wait;
        self.fin_wait2 += o.fin_wait2;
        self.created += o.created;
        self.expired += o.expired;
        self.overflow += o.overflow;
        self.killed.iter_mut().zip(o.killed).for_each(|(a, b)| *a += b);
    }
}

/// Tw sockets of one peer in one namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerFigure {
    pub netns: String,
    pub peer: String,
    pub sockets: u64,
}

/// Ports held towards one destination, and the share of the ephemeral range that is.
#[derive(Clone, Debug, PartialEq)]
pub struct DestFigure {
    pub netns: String,
    pub laddr: String,
    pub raddr: String,
    pub rport: String,
    pub held: u64,
    pub ratio: f64,
}

/// Everything one scrape shows, taken from the owner at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    pub version: String,
    pub kernel: String,
    pub top_n: usize,
    pub namespaces: Vec<NsFigures>,
    pub peers: Vec<PeerFigure>,
    pub dests: Vec<DestFigure>,
    /// Lost events by reason.
    pub lost: Vec<(&'static str, u64)>,
    pub drift: u64,
    pub resyncs: u64,
    /// What the table has interned now: namespaces, local addresses, (namespace, local address)
    /// pairs. Flat over time when what goes is forgotten.
    pub interned: [(&'static str, u64); 3],
    /// Kills by (trigger, result).
    pub kills: Vec<(&'static str, &'static str, u64)>,
    /// Relief decisions by (rule, decision).
    pub relief: Vec<(String, String, u64)>,
    /// Namespaces that belong to a pod or a container: their identity fields (`netns`,
    /// `pod_namespace`, `pod`, `container`, `container_id`, ...), one series each.
    pub owners: Vec<Vec<(String, String)>>,
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Keep the `n` largest rows by `rank` (ties by key); fold the rest into one row per namespace
/// (`fold`), keep the `n` largest of those, and fold what remains into one all-`other` row.
fn bound<T: Clone>(
    mut rows: Vec<T>,
    n: usize,
    rank: impl Fn(&T) -> f64,
    key: impl Fn(&T) -> String,
    netns: impl Fn(&T) -> &str,
    fold: impl Fn(Option<&str>, &[T]) -> T,
) -> Vec<T> {
    let order = |a: &T, b: &T| rank(b).total_cmp(&rank(a)).then_with(|| key(a).cmp(&key(b)));
    rows.sort_by(order);
    let rest = rows.split_off(n.min(rows.len()));
    let mut per_ns: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for r in rest {
        per_ns.entry(netns(&r).to_owned()).or_default().push(r);
    }
    let mut folded: Vec<T> = per_ns.iter().map(|(ns, group)| fold(Some(ns), group)).collect();
    folded.sort_by(order);
    let rest = folded.split_off(n.min(folded.len()));
    rows.extend(folded);
    if !rest.is_empty() {
        rows.push(fold(None, &rest));
    }
    rows
}

/// The namespaces shown by label (the `top_n` largest by tw sockets) and the rest summed as
/// `other`.
fn bound_namespaces(f: &Figures) -> (Vec<NsFigures>, HashMap<String, String>) {
    let mut ns = f.namespaces.clone();
    ns.sort_by(|a, b| (b.time_wait + b.fin_wait2).cmp(&(a.time_wait + a.fin_wait2)).then(a.netns.cmp(&b.netns)));
    let rest = ns.split_off(f.top_n.min(ns.len()));
    let shown = ns.iter().map(|n| (n.netns.clone(), n.netns.clone())).collect();
    if !rest.is_empty() {
        let mut other = NsFigures { netns: OTHER.into(), ..NsFigures::default() };
        rest.iter().for_each(|r| other.add(r));
        ns.push(other);
    }
    (ns, shown)
}

fn gauge(reg: &mut Registry, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, i64)>) {
    let family = Family::<Labels, Gauge>::default();
    rows.into_iter().for_each(|(l, v)| {
        family.get_or_create(&l).set(v);
    });
    reg.register(name, help, family);
}

fn ratio_gauge(reg: &mut Registry, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, f64)>) {
    let family = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    rows.into_iter().for_each(|(l, v)| {
        family.get_or_create(&l).set(v);
    });
    reg.register(name, help, family);
}

/// `name` without `_total`: the encoder appends it to counters.
fn counter(reg: &mut Registry, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, u64)>) {
    let family = Family::<Labels, Counter>::default();
    rows.into_iter().for_each(|(l, v)| {
        family.get_or_create(&l).inc_by(v);
    });
    reg.register(name, help, family);
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The OpenMetrics text of `f` (ends with `# EOF`).
pub fn exposition(f: &Figures) -> String {
    let n = f.top_n.max(1);
    let (namespaces, shown) = bound_namespaces(f);
    let ns_of = |label: &str| shown.get(label).map_or(OTHER, String::as_str).to_owned();
    let mut reg = Registry::default();

    gauge(
        &mut reg,
        "twreset_timewait_sockets",
        "Tw sockets per namespace now, by substate (time_wait, fin_wait2)",
        namespaces.iter().flat_map(|s| {
            [
                (labels(&[("netns", s.netns.as_str()), ("substate", "time_wait")]), i(s.time_wait)),
                (labels(&[("netns", s.netns.as_str()), ("substate", "fin_wait2")]), i(s.fin_wait2)),
            ]
        }),
    );

    let mut peers: HashMap<(String, String), u64> = HashMap::new();
    for p in &f.peers {
        *peers.entry((ns_of(&p.netns), p.peer.clone())).or_default() += p.sockets;
    }
    let peers: Vec<PeerFigure> =
        peers.into_iter().map(|((netns, peer), sockets)| PeerFigure { netns, peer, sockets }).collect();
    let peers = bound(
        peers,
        n,
        |p| p.sockets as f64,
        |p| format!("{}\0{}", p.netns, p.peer),
        |p| p.netns.as_str(),
        |ns, group| PeerFigure {
            netns: ns.unwrap_or(OTHER).to_owned(),
            peer: OTHER.into(),
            sockets: group.iter().map(|p| p.sockets).sum(),
        },
    );
    gauge(
        &mut reg,
        "twreset_timewait_peer_sockets",
        "Tw sockets per remote peer: the top_n largest, then rows of peer other",
        peers.iter().map(|p| (labels(&[("netns", p.netns.as_str()), ("peer", p.peer.as_str())]), i(p.sockets))),
    );

    let dests: Vec<DestFigure> = f.dests.iter().map(|d| DestFigure { netns: ns_of(&d.netns), ..d.clone() }).collect();
    let dests = bound(
        dests,
        n,
        |d| d.ratio,
        |d| format!("{}\0{}\0{}\0{}", d.netns, d.laddr, d.raddr, d.rport),
        |d| d.netns.as_str(),
        |ns, group| DestFigure {
            netns: ns.unwrap_or(OTHER).to_owned(),
            laddr: OTHER.into(),
            raddr: OTHER.into(),
            rport: OTHER.into(),
            held: group.iter().map(|d| d.held).sum(),
            ratio: group.iter().map(|d| d.ratio).fold(0.0, f64::max),
        },
    );
    let dest_labels = |d: &DestFigure| {
        labels(&[
            ("netns", d.netns.as_str()),
            ("laddr", d.laddr.as_str()),
            ("raddr", d.raddr.as_str()),
            ("rport", d.rport.as_str()),
        ])
    };
    ratio_gauge(
        &mut reg,
        "twreset_destination_port_pressure_ratio",
        "Ephemeral ports held towards a destination over the namespace's port range (1 = exhausted); other rows: the highest of the rest",
        dests.iter().map(|d| (dest_labels(d), d.ratio)),
    );
    gauge(
        &mut reg,
        "twreset_destination_ports_held",
        "Ephemeral ports held towards a destination (tw sockets plus connected ones)",
        dests.iter().map(|d| (dest_labels(d), i(d.held))),
    );

    let per_ns =
        |get: fn(&NsFigures) -> u64| namespaces.iter().map(move |s| (labels(&[("netns", s.netns.as_str())]), get(s)));
    counter(&mut reg, "twreset_timewait_created", "Tw sockets created", per_ns(|s| s.created));
    counter(&mut reg, "twreset_timewait_expired", "Tw sockets whose timer expired", per_ns(|s| s.expired));
    counter(
        &mut reg,
        "twreset_timewait_killed",
        "Tw sockets removed before their timer, by cause",
        namespaces.iter().flat_map(|s| {
            TwCause::ALL
                .iter()
                .map(|c| (labels(&[("netns", s.netns.as_str()), ("cause", c.name())]), s.killed[c.index()]))
        }),
    );
    counter(
        &mut reg,
        "twreset_timewait_overflow",
        "Active closes that found tcp_max_tw_buckets full (no tw socket made)",
        per_ns(|s| s.overflow),
    );
    counter(
        &mut reg,
        "twreset_events_lost",
        "Kernel events that never reached the table, by reason",
        f.lost.iter().map(|(r, v)| (labels(&[("reason", *r)]), *v)),
    );
    counter(
        &mut reg,
        "twreset_table_drift_sockets",
        "Sockets a reconcile found wrong in the table",
        [(Labels::new(), f.drift)],
    );
    counter(&mut reg, "twreset_table_resyncs", "Reconciles forced by lost events", [(Labels::new(), f.resyncs)]);
    gauge(
        &mut reg,
        "twreset_table_interned",
        "Namespaces, local addresses and (namespace, local address) pairs the table holds ids for",
        f.interned.iter().map(|(k, v)| (labels(&[("kind", *k)]), i64::try_from(*v).unwrap_or(i64::MAX))),
    );
    counter(
        &mut reg,
        "twreset_kills",
        "Socket kills by trigger (cli, api, policy) and result (killed, failed, skipped)",
        f.kills.iter().map(|(t, r, v)| (labels(&[("trigger", *t), ("result", *r)]), *v)),
    );
    counter(
        &mut reg,
        "twreset_relief_decisions",
        "Auto-relief decisions by rule and decision",
        f.relief.iter().map(|(rule, d, v)| (labels(&[("rule", rule.as_str()), ("decision", d.as_str())]), *v)),
    );
    gauge(
        &mut reg,
        "twreset_netns_info",
        "Always 1: the pod or container a namespace label stands for",
        f.owners.iter().map(|fields| {
            let wanted = ["netns", "pod_namespace", "pod", "container", "container_id"];
            (fields.iter().filter(|(k, _)| wanted.contains(&k.as_str())).cloned().collect::<Labels>(), 1)
        }),
    );
    gauge(
        &mut reg,
        "twreset_build_info",
        "Always 1: the agent's version and the kernel it runs on",
        [(labels(&[("version", f.version.as_str()), ("kernel", f.kernel.as_str())]), 1)],
    );
    let mut out = String::with_capacity(16 * 1024);
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
