//! Views: grouping, ages, sorting, destination pressure and rate.

use std::net::IpAddr;

use super::*;
use crate::{
    ports::{Connected, PortRange, PortSpace, PortSpaces},
    sock::{DiagSocket, SockKey},
    state::TcpState,
};

const S: u64 = 1_000_000_000;
const NS: u64 = 4242;

fn key(l: &str, lport: u16, r: &str, rport: u16) -> SockKey {
    SockKey { netns_cookie: NS, laddr: l.parse().unwrap(), lport, raddr: r.parse().unwrap(), rport }
}

fn created(t: &mut Table, ts_s: u64, k: SockKey) {
    t.apply(&TwEvent {
        ts_ns: ts_s * S,
        key: k,
        kind: TwEventKind::Created { substate: TcpState::TimeWait, timeout_ms: 60_000 },
    });
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn view(t: &Table, now_s: u64, by: By, sort: Sort, cfg: &ViewConfig) -> Vec<Row> {
    t.snapshot(now_s * S, by, sort, cfg, &Connected::default(), &PortSpaces::default()).rows
}

fn groups(rows: &[Row]) -> Vec<(String, u64)> {
    rows.iter().map(|r| (r.group.to_string(), r.count)).collect()
}

/// 3 to 10.0.0.2:443, 2 to 10.0.0.3:80, 1 to fd00::2:443 (client side), 1 server side from 10.0.1.7.
fn mixed() -> Table {
    let mut t = Table::new();
    for n in 0..3 {
        created(&mut t, 10 + n, key("10.0.0.1", 40000 + n as u16, "10.0.0.2", 443));
    }
    created(&mut t, 20, key("10.0.0.1", 41000, "10.0.0.3", 80));
    created(&mut t, 21, key("10.0.0.1", 41001, "10.0.0.3", 80));
    created(&mut t, 22, key("fd00::1", 42000, "fd00::2", 443));
    created(&mut t, 23, key("10.0.0.1", 80, "10.0.1.7", 50123));
    t
}

#[test]
fn by_peer_with_ages() {
    let rows = view(&mixed(), 30, By::Peer, Sort::Count, &ViewConfig::default());
    assert_eq!(
        groups(&rows),
        [("10.0.0.2".into(), 3), ("10.0.0.3".into(), 2), ("10.0.1.7".into(), 1), ("fd00::2".into(), 1)]
    );
    assert_eq!((rows[0].oldest_s, rows[0].newest_s), (Some(20.0), Some(18.0)));
    assert!(rows.iter().all(|r| r.pressure.is_none()));
}

#[test]
fn by_prefix_default_and_configured() {
    let mut t = mixed();
    created(&mut t, 24, key("fd00::1", 42001, "fd00:0:0:1::2", 443));
    let rows = view(&t, 30, By::Prefix, Sort::Count, &ViewConfig::default());
    assert_eq!(
        groups(&rows),
        [("10.0.0.0/24".into(), 5), ("10.0.1.0/24".into(), 1), ("fd00::/64".into(), 1), ("fd00:0:0:1::/64".into(), 1)]
    );
    let cfg = ViewConfig { prefix_v4: 16, prefix_v6: 32, ..ViewConfig::default() };
    let rows = view(&t, 30, By::Prefix, Sort::Count, &cfg);
    assert_eq!(groups(&rows), [("10.0.0.0/16".into(), 6), ("fd00::/32".into(), 2)]);
    // /0 and /32 / /128 are valid edges.
    let cfg = ViewConfig { prefix_v4: 0, prefix_v6: 128, ..ViewConfig::default() };
    assert_eq!(view(&t, 30, By::Prefix, Sort::Count, &cfg)[0].group.to_string(), "0.0.0.0/0");
}

#[test]
fn by_port_and_local() {
    let t = mixed();
    let rows = view(&t, 30, By::Port, Sort::Count, &ViewConfig::default());
    assert_eq!(groups(&rows), [("443".into(), 4), ("80".into(), 2), ("50123".into(), 1)]);
    let rows = view(&t, 30, By::Local, Sort::Count, &ViewConfig::default());
    assert_eq!(groups(&rows), [("10.0.0.1".into(), 6), ("fd00::1".into(), 1)]);
}

#[test]
fn by_dest_leaves_out_server_side_sockets() {
    let rows = view(&mixed(), 30, By::Dest, Sort::Count, &ViewConfig::default());
    assert_eq!(
        groups(&rows),
        [
            ("10.0.0.1 -> 10.0.0.2:443".into(), 3),
            ("10.0.0.1 -> 10.0.0.3:80".into(), 2),
            ("fd00::1 -> [fd00::2]:443".into(), 1)
        ]
    );
    match rows[0].group {
        Group::Dest(d) => assert_eq!((d.netns, d.laddr, d.raddr, d.rport), (NS, ip("10.0.0.1"), ip("10.0.0.2"), 443)),
        g => panic!("{g:?}"),
    }
}

#[test]
fn dest_pressure_counts_connected_and_rate() {
    let mut t = Table::new();
    // 30 entries over the last 10 s (3/s) and 10 older ones, to one destination.
    for n in 0..40u16 {
        let ts = if n < 10 { 1 } else { 91 + u64::from(n - 10) / 3 };
        created(&mut t, ts, key("10.0.0.1", 40000 + n, "10.0.0.2", 443));
    }
    let dest = Dest { netns: NS, laddr: ip("10.0.0.1"), raddr: ip("10.0.0.2"), rport: 443 };
    let other = Dest { rport: 8443, ..dest };
    let connected = Connected([(dest, 60), (other, 5)].into_iter().collect());
    let mut ranges = PortSpaces::default();
    ranges.per_ns.insert(NS, PortSpace { range: PortRange { lo: 40000, hi: 40199 }, reserved: vec![] }); // 200 ports
    let s = t.snapshot(100 * S, By::Dest, Sort::Count, &ViewConfig::default(), &connected, &ranges);
    assert_eq!(s.rows.len(), 2, "a destination with only connected sockets has a row too");
    let p = s.rows[0].pressure.unwrap();
    assert_eq!((p.connected, p.holding, p.range), (60, 100, 200));
    assert_eq!(p.ratio, 0.5);
    assert_eq!(p.rate_per_s, 3.0);
    // 3/s * 60 + 60 = 240 > 200: the 100 free ports last 33.3 s.
    assert!((p.exhaustion_s.unwrap() - 100.0 / 3.0).abs() < 1e-9);
    let r = &s.rows[1];
    assert_eq!((r.count, r.oldest_s, r.pressure.unwrap().holding), (0, None, 5));
    // Sorted by pressure the same order; an 8-port range turns the small one red-hot.
    ranges.per_ns.insert(NS, PortSpace { range: PortRange { lo: 40000, hi: 40007 }, reserved: vec![] });
    let s = t.snapshot(100 * S, By::Dest, Sort::Pressure, &ViewConfig::default(), &connected, &ranges);
    assert_eq!(s.rows.len(), 2, "only ports 40000-40007 are ephemeral now: 8 tw sockets count");
    assert_eq!(s.rows[0].count, 8);
}

#[test]
fn dest_kills_attach_to_existing_rows_only() {
    let mut t = Table::new();
    created(&mut t, 1, key("10.0.0.1", 40000, "10.0.0.2", 443));
    created(&mut t, 1, key("10.0.0.1", 40001, "10.0.0.2", 443));
    created(&mut t, 1, key("10.0.0.1", 80, "10.0.0.5", 50000));
    for (k, cause) in [
        (key("10.0.0.1", 40000, "10.0.0.2", 443), TwCause::SockDestroy),
        (key("10.0.0.1", 80, "10.0.0.5", 50000), TwCause::PeerRst),
    ] {
        t.apply(&TwEvent { ts_ns: 2 * S, key: k, kind: TwEventKind::Killed { cause } });
    }
    let rows = view(&t, 3, By::Dest, Sort::Count, &ViewConfig::default());
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].kills[TwCause::SockDestroy.index()], 1);
    let rows = view(&t, 3, By::Peer, Sort::Kills, &ViewConfig::default());
    assert_eq!(groups(&rows), [("10.0.0.2".into(), 1), ("10.0.0.5".into(), 0)]);
}

#[test]
fn sorts() {
    let t = mixed();
    let cfg = ViewConfig::default();
    let order = |sort| groups(&view(&t, 30, By::Peer, sort, &cfg)).into_iter().map(|(g, _)| g).collect::<Vec<_>>();
    assert_eq!(order(Sort::Oldest), ["10.0.0.2", "10.0.0.3", "fd00::2", "10.0.1.7"]);
    assert_eq!(order(Sort::Newest), ["10.0.1.7", "fd00::2", "10.0.0.3", "10.0.0.2"]);
    // No kills anywhere: ties fall back to the group order.
    assert_eq!(order(Sort::Kills), ["10.0.0.2", "10.0.0.3", "10.0.1.7", "fd00::2"]);
    assert_eq!(order(Sort::Pressure), order(Sort::Count));
    let mut s = Sort::Count;
    for _ in 0..5 {
        s = s.next();
    }
    assert_eq!(s, Sort::Count);
}

#[test]
fn grouping_cycle_in_top() {
    let mut b = By::Peer;
    let mut seen = vec![];
    for _ in 0..4 {
        seen.push(b);
        b = b.next_in_top();
    }
    assert_eq!(seen, [By::Peer, By::Prefix, By::Port, By::Dest]);
    assert_eq!(b, By::Peer);
    assert_eq!(By::Local.next_in_top(), By::Peer);
}

#[test]
fn totals_match_table() {
    let mut t = mixed();
    t.apply(&TwEvent {
        ts_ns: 25 * S,
        key: key("10.0.0.1", 43000, "10.0.0.4", 1),
        kind: TwEventKind::Created { substate: TcpState::FinWait2, timeout_ms: 5_000 },
    });
    let s = t.snapshot(
        30 * S,
        By::Port,
        Sort::Count,
        &ViewConfig::default(),
        &Connected::default(),
        &PortSpaces::default(),
    );
    assert_eq!((s.totals.count, s.totals.fin_wait2, s.totals.time_wait()), (8, 1, 7));
    assert_eq!(s.rows.iter().map(|r| r.count).sum::<u64>(), 8);
    assert_eq!(s.totals.counters.created, 8);
}

#[test]
fn empty_table() {
    let s = Table::new().snapshot(
        0,
        By::Dest,
        Sort::Pressure,
        &ViewConfig::default(),
        &Connected::default(),
        &PortSpaces::default(),
    );
    assert!(s.rows.is_empty());
    assert_eq!(s.totals, Totals::default());
}

#[test]
fn seed_feeds_views() {
    let mut t = Table::new();
    let d = DiagSocket {
        key: key("10.0.0.1", 40000, "10.0.0.2", 443),
        state: TcpState::TimeWait,
        timewait: true,
        expires_ms: 30_000,
        cookie: 0,
        inode: 0,
        uid: 0,
    };
    t.seed(100 * S, &[d]);
    let rows = view(&t, 100, By::Dest, Sort::Count, &ViewConfig::default());
    assert_eq!(rows[0].oldest_s, Some(30.0));
    assert_eq!(rows[0].pressure.unwrap().rate_per_s, 0.0, "entered 30 s ago: outside the 10 s window");
}

#[test]
fn restricted_to_namespaces() {
    let mut t = mixed();
    let other = SockKey { netns_cookie: NS + 1, ..key("10.0.0.1", 43000, "10.0.0.2", 443) };
    created(&mut t, 24, other);
    let snap = |netns: Option<&[u64]>| {
        t.snapshot_in(
            30 * S,
            By::Peer,
            Sort::Count,
            &ViewConfig::default(),
            &Connected::default(),
            &PortSpaces::default(),
            netns,
        )
    };
    let all = snap(None);
    assert_eq!((all.totals.count, all.rows[0].count), (8, 4));
    let mine = snap(Some(&[NS]));
    assert_eq!((mine.totals.count, mine.rows[0].count), (7, 3));
    let theirs = snap(Some(&[NS + 1]));
    assert_eq!(groups(&theirs.rows), [("10.0.0.2".into(), 1)]);
    assert_eq!(theirs.totals.count, 1);
    assert!(snap(Some(&[])).rows.is_empty());
}
