//! Table behaviour: events, seeding, reconcile, overdue expiry and every view.

use super::*;
use crate::{
    ports::{Connected, PortSpaces},
    sock::{DiagSocket, SockKey},
    state::TcpState,
};

const S: u64 = 1_000_000_000;
const NS: u64 = 4242;

fn key(l: &str, lport: u16, r: &str, rport: u16) -> SockKey {
    SockKey { netns_cookie: NS, laddr: l.parse().unwrap(), lport, raddr: r.parse().unwrap(), rport }
}

fn client(n: u16, r: &str) -> SockKey {
    key("10.0.0.1", 40000 + n, r, 443)
}

fn ev(ts_s: u64, key: SockKey, kind: TwEventKind) -> TwEvent {
    TwEvent { ts_ns: ts_s * S, key, kind }
}

fn created(ts_s: u64, key: SockKey) -> TwEvent {
    ev(ts_s, key, TwEventKind::Created { substate: TcpState::TimeWait, timeout_ms: 60_000 })
}

fn diag(key: SockKey, state: TcpState, timewait: bool, expires_ms: u32) -> DiagSocket {
    DiagSocket { key, state, timewait, expires_ms, cookie: 0, inode: 0, uid: 0 }
}

fn tw(key: SockKey, expires_ms: u32) -> DiagSocket {
    diag(key, TcpState::TimeWait, true, expires_ms)
}

fn snap(t: &Table, now_s: u64, by: By) -> Snapshot {
    t.snapshot(now_s * S, by, Sort::Count, &ViewConfig::default(), &Connected::default(), &PortSpaces::default())
}

#[test]
fn created_then_expired() {
    let mut t = Table::new();
    t.apply(&created(10, client(1, "10.0.0.2")));
    t.apply(&created(11, client(2, "10.0.0.2")));
    assert_eq!(t.len(), 2);
    t.apply(&ev(70, client(1, "10.0.0.2"), TwEventKind::Expired));
    assert_eq!(t.len(), 1);
    let c = t.counters();
    assert_eq!((c.created, c.expired, c.stray), (2, 1, 0));
}

#[test]
fn killed_records_cause_per_destination() {
    let mut t = Table::new();
    for n in 0..3 {
        t.apply(&created(1, client(n, "10.0.0.2")));
    }
    t.apply(&ev(2, client(0, "10.0.0.2"), TwEventKind::Killed { cause: TwCause::SockDestroy }));
    t.apply(&ev(2, client(1, "10.0.0.2"), TwEventKind::Killed { cause: TwCause::PeerRst }));
    assert_eq!(t.len(), 1);
    assert_eq!(t.killed(TwCause::SockDestroy), 1);
    assert_eq!(t.killed(TwCause::PeerRst), 1);
    let s = snap(&t, 3, By::Peer);
    assert_eq!(s.rows.len(), 1);
    assert_eq!(s.rows[0].count, 1);
    assert_eq!(s.rows[0].kills[TwCause::SockDestroy.index()], 1);
    assert_eq!(s.rows[0].kills[TwCause::PeerRst.index()], 1);
    assert_eq!(s.rows[0].kills_total(), 2);
}

#[test]
fn kills_alone_still_make_a_peer_row_until_forgotten() {
    let mut t = Table::new();
    t.apply(&created(1, client(0, "10.0.0.9")));
    t.apply(&ev(2, client(0, "10.0.0.9"), TwEventKind::Killed { cause: TwCause::NetnsGone }));
    let s = snap(&t, 3, By::Peer);
    assert_eq!(s.rows.len(), 1);
    assert_eq!((s.rows[0].count, s.rows[0].oldest_s, s.rows[0].kills_total()), (0, None, 1));
    t.expire_overdue(2 * S + KILL_MEMORY_NS + 1);
    assert!(snap(&t, 2000, By::Peer).rows.is_empty());
    // The cumulative total stays.
    assert_eq!(t.killed(TwCause::NetnsGone), 1);
}

#[test]
fn kill_of_unknown_socket_is_counted_and_stray() {
    let mut t = Table::new();
    t.apply(&ev(1, client(0, "10.0.0.2"), TwEventKind::Killed { cause: TwCause::Reuse }));
    assert_eq!(t.killed(TwCause::Reuse), 1);
    assert_eq!(t.counters().stray, 1);
    assert!(t.is_empty());
}

#[test]
fn stray_expiry_and_unknown_namespace() {
    let mut t = Table::new();
    t.apply(&ev(1, client(0, "10.0.0.2"), TwEventKind::Expired));
    t.apply(&created(1, client(0, "10.0.0.2")));
    let mut other = client(0, "10.0.0.2");
    other.netns_cookie = 1;
    t.apply(&ev(2, other, TwEventKind::Expired));
    assert_eq!(t.counters().stray, 2);
    assert_eq!(t.len(), 1, "an expiry in another namespace must not remove this one");
}

#[test]
fn rearm_switches_substate_and_moves_expiry() {
    let mut t = Table::new();
    let k = client(0, "10.0.0.2");
    t.apply(&ev(10, k, TwEventKind::Created { substate: TcpState::FinWait2, timeout_ms: 5_000 }));
    let s = snap(&t, 11, By::Peer);
    assert_eq!((s.rows[0].fin_wait2, s.rows[0].time_wait(), s.totals.fin_wait2), (1, 0, 1));
    // Not overdue at 10 + 5 + grace.
    assert_eq!(t.expire_overdue(15 * S + OVERDUE_GRACE_NS), 0);
    t.apply(&ev(12, k, TwEventKind::Rearmed { substate: TcpState::TimeWait, timeout_ms: 60_000 }));
    assert_eq!(t.expire_overdue(30 * S), 0, "re-armed to 72 s");
    let s = snap(&t, 30, By::Peer);
    assert_eq!((s.rows[0].fin_wait2, s.totals.time_wait()), (0, 1));
    assert_eq!(s.rows[0].oldest_s, Some(20.0), "age counts from creation, not re-arm");
    assert_eq!(t.counters().rearmed, 1);
    assert_eq!(t.expire_overdue(72 * S + OVERDUE_GRACE_NS + 1), 1);
    assert_eq!(t.counters().overdue, 1);
}

#[test]
fn rearm_of_unknown_socket_tracks_it() {
    let mut t = Table::new();
    t.apply(&ev(5, client(0, "10.0.0.2"), TwEventKind::Rearmed { substate: TcpState::TimeWait, timeout_ms: 60_000 }));
    assert_eq!(t.len(), 1);
    assert_eq!(t.counters().stray, 1);
}

#[test]
fn duplicate_create_restarts_the_entry() {
    let mut t = Table::new();
    let k = client(0, "10.0.0.2");
    t.apply(&created(1, k));
    t.apply(&created(50, k));
    assert_eq!(t.len(), 1);
    assert_eq!(snap(&t, 60, By::Peer).rows[0].oldest_s, Some(10.0));
}

#[test]
fn overflow_and_lost_are_totals() {
    let mut t = Table::new();
    // Overflows are the kernel's counter; an overflow event (trace's) changes nothing here.
    assert!(!t.apply(&ev(1, client(0, "10.0.0.2"), TwEventKind::Overflow)));
    t.set_overflow(2);
    t.set_overflow(1);
    assert!(t.is_empty());
    assert!(t.set_lost(3));
    assert!(!t.set_lost(3));
    assert!(!t.set_lost(2), "cumulative: never goes back");
    let s = snap(&t, 2, By::Peer);
    assert_eq!((s.totals.counters.overflow, s.totals.counters.lost), (2, 3));
}

#[test]
fn born_adds_what_no_timer_event_reported_and_never_repeats_a_creation() {
    let mut t = Table::new();
    let (a, b) = (client(0, "10.0.0.2"), client(1, "10.0.0.2"));
    // `a`: its timer event came first, so its sock_ops report is void.
    assert!(t.apply(&created(1, a)));
    assert!(!t.apply(&ev(1, a, TwEventKind::Born { substate: TcpState::TimeWait })));
    // `b`: no timer event; the sock_ops report creates it, with the kernel's 60 s timer.
    assert!(t.apply(&ev(2, b, TwEventKind::Born { substate: TcpState::FinWait2 })));
    assert!(!t.apply(&ev(2, b, TwEventKind::Born { substate: TcpState::FinWait2 })));
    assert_eq!(t.len(), 2);
    let c = t.counters();
    assert_eq!((c.created, c.born, c.stray), (2, 1, 0));
    let s = snap(&t, 3, By::Peer);
    assert_eq!((s.totals.count, s.totals.fin_wait2), (2, 1));
    // It expires like any other: the expiry removes it, and it is overdue only after 60 s.
    assert_eq!(t.expire_overdue((2 + 60) * S), 0);
    assert!(!t.apply(&ev(62, b, TwEventKind::Expired)));
    assert_eq!(t.len(), 1);
}

#[test]
fn timeout_saturates_instead_of_wrapping() {
    let mut t = Table::new();
    t.apply(&ev(1, client(0, "10.0.0.2"), TwEventKind::Created { substate: TcpState::TimeWait, timeout_ms: u32::MAX }));
    assert_eq!(t.expire_overdue(u64::MAX / 2), 1);
    let mut t = Table::new();
    t.apply(&TwEvent {
        ts_ns: u64::MAX - 1,
        key: client(0, "10.0.0.2"),
        kind: TwEventKind::Created { substate: TcpState::TimeWait, timeout_ms: 60_000 },
    });
    assert_eq!(t.expire_overdue(u64::MAX), 0);
}

#[test]
fn seed_takes_only_tw_sockets_and_estimates_age() {
    let mut t = Table::new();
    let dump = vec![
        tw(client(0, "10.0.0.2"), 50_000),
        diag(client(1, "10.0.0.2"), TcpState::FinWait2, true, 3_000),
        diag(client(2, "10.0.0.2"), TcpState::Established, false, 0),
        diag(client(3, "10.0.0.2"), TcpState::FinWait2, false, 0), // a full FIN_WAIT2 socket
    ];
    assert_eq!(t.seed(100 * S, &dump), 2);
    let s = snap(&t, 100, By::Peer);
    assert_eq!((s.rows[0].count, s.rows[0].fin_wait2), (2, 1));
    assert_eq!(s.rows[0].newest_s, Some(10.0), "60 s timer with 50 s left: entered 10 s ago");
    assert_eq!(s.rows[0].oldest_s, Some(57.0));
    // Seeding again adds nothing and keeps the entry times.
    assert_eq!(t.seed(101 * S, &dump), 0);
    assert_eq!(t.len(), 2);
}

#[test]
fn seeded_entries_never_claim_a_future_entry_time() {
    let mut t = Table::new();
    t.seed(100 * S, &[tw(client(0, "10.0.0.2"), 90_000)]); // re-armed socket: 90 s left
    assert_eq!(snap(&t, 100, By::Peer).rows[0].oldest_s, Some(0.0));
}

#[test]
fn reconcile_counts_and_fixes_drift() {
    let mut t = Table::new();
    t.apply(&created(1, client(0, "10.0.0.2"))); // kernel has it
    t.apply(&created(1, client(1, "10.0.0.2"))); // kernel lost it (missed expiry)
    let dump = vec![tw(client(0, "10.0.0.2"), 55_000), tw(client(2, "10.0.0.2"), 40_000)];
    let d = t.reconcile(6 * S, &dump);
    assert_eq!(d, Drift { missing: 1, extra: 1 });
    assert_eq!(d.total(), 2);
    assert_eq!(t.counters().drift, 2);
    assert_eq!(t.counters().reconciles, 1);
    assert_eq!(t.counters().resyncs, 0);
    // Now identical: a second pass finds nothing.
    assert_eq!(t.reconcile(7 * S, &dump), Drift::default());
    assert_eq!(t.resync(7 * S, &dump), Drift::default());
    assert_eq!(t.counters().resyncs, 1);
    assert_eq!(t.counters().reconciles, 3);
    assert_eq!(t.len(), 2);
}

#[test]
fn reconcile_ignores_entries_newer_than_the_dump() {
    let mut t = Table::new();
    t.apply(&created(20, client(0, "10.0.0.2")));
    assert_eq!(t.reconcile(10 * S, &[]), Drift::default());
    assert_eq!(t.len(), 1);
}

#[test]
fn events_during_the_dump_win() {
    let mut t = Table::new();
    t.apply(&created(1, client(0, "10.0.0.2")));
    t.apply(&created(1, client(1, "10.0.0.2")));
    t.begin_reconcile(10 * S);
    // While the dump runs: one socket expires after the dump saw it, one is created before the
    // dump reached its slot but the event is older than the dump's start.
    let dump = vec![tw(client(0, "10.0.0.2"), 1), tw(client(1, "10.0.0.2"), 1), tw(client(2, "10.0.0.2"), 60_000)];
    t.apply(&ev(10, client(0, "10.0.0.2"), TwEventKind::Expired));
    t.apply(&ev(10, client(2, "10.0.0.2"), TwEventKind::Created { substate: TcpState::TimeWait, timeout_ms: 60_000 }));
    t.apply(&ev(10, client(1, "10.0.0.2"), TwEventKind::Killed { cause: TwCause::PeerRst }));
    assert_eq!(t.reconcile(10 * S, &dump), Drift::default());
    assert_eq!(t.len(), 1);
    // The watch ends with the reconcile: a later reconcile judges every key.
    t.apply(&ev(11, client(2, "10.0.0.2"), TwEventKind::Expired));
    assert_eq!(t.reconcile(12 * S, &dump), Drift { missing: 3, extra: 0 });
}

#[test]
fn reconcile_refreshes_timers_from_the_kernel() {
    let mut t = Table::new();
    t.apply(&created(1, client(0, "10.0.0.2")));
    // The kernel says 100 s left at t=10 (an ACK re-armed it and we missed the event).
    t.reconcile(10 * S, &[diag(client(0, "10.0.0.2"), TcpState::TimeWait, true, 100_000)]);
    assert_eq!(t.expire_overdue(100 * S), 0);
    assert_eq!(t.expire_overdue(110 * S + OVERDUE_GRACE_NS + 1), 1);
}

#[test]
fn namespaces_are_separate_sockets() {
    let mut t = Table::new();
    let a = client(0, "10.0.0.2");
    let mut b = a;
    b.netns_cookie = 7;
    t.apply(&created(1, a));
    t.apply(&created(1, b));
    assert_eq!(t.len(), 2);
    assert_eq!(snap(&t, 2, By::Peer).rows[0].count, 2, "peer rows add up across namespaces");
    assert_eq!(snap(&t, 2, By::Dest).rows.len(), 2, "destinations are per namespace");
}

#[test]
fn aborted_reconcile_stops_watching() {
    let mut t = Table::new();
    t.begin_reconcile(10 * S);
    t.apply(&created(11, client(0, "10.0.0.2")));
    t.abort_reconcile();
    // Without the watch, the next reconcile judges the entry on its own: created after the dump.
    assert_eq!(t.reconcile(12 * S, &[]), Drift { missing: 0, extra: 1 });
}

/// The kernel feed's order: the dump is observed as it is read, the events older than it land
/// during the settle afterwards. The verdict must be the one drawn with those events applied
/// first and the whole dump compared after (the order `reconcile` takes).
#[test]
fn streamed_dump_then_late_events_reach_the_same_verdict() {
    let k = |n| client(n, "10.0.0.2");
    let setup = || {
        let mut t = Table::new();
        for n in [0, 1, 3, 4, 6, 7] {
            t.apply(&created(1, k(n)));
        }
        t
    };
    let dump =
        vec![tw(k(0), 50_000), tw(k(1), 50_000), tw(k(2), 50_000), tw(k(4), 50_000), tw(k(5), 50_000), tw(k(7), 1)];
    let late = [
        created(9, k(0)),                   // 0: listed, its (older) creation lands again
        ev(9, k(1), TwEventKind::Expired),  // 1: listed, a new instance of the tuple...
        created(9, k(1)),                   // ...created before the dump
        created(9, k(2)),                   // 2: listed, creation in flight
        ev(9, k(3), TwEventKind::Expired),  // 3: not listed, expiry in flight
        ev(11, k(4), TwEventKind::Expired), // 4: listed, expired after the dump started
        ev(9, k(7), TwEventKind::Expired),  // 7: listed, yet an older expiry lands
    ];
    // 5: listed, never seen (missing); 6: tracked, not listed (extra); 7: listed (missing again).
    let mut streamed = setup();
    streamed.begin_reconcile(10 * S);
    dump.iter().for_each(|d| streamed.observe(d));
    for e in &late {
        streamed.apply(e);
    }
    let d1 = streamed.end_reconcile(false);

    let mut whole = setup();
    whole.begin_reconcile(10 * S);
    for e in &late {
        whole.apply(e);
    }
    let d2 = whole.reconcile(10 * S, &dump);

    assert_eq!(d1, Drift { missing: 2, extra: 1 });
    assert_eq!(d1, d2);
    let keys = |t: &Table| {
        let mut v: Vec<_> = t.map.iter().map(|(c, _)| t.keys.sock_key(&c).lport - 40000).collect();
        v.sort();
        v
    };
    assert_eq!(keys(&streamed), vec![0, 1, 2, 5, 7]);
    assert_eq!(keys(&streamed), keys(&whole));
    assert!(streamed.map.iter().all(|(_, s)| !s.seen()), "marks end with the reconcile");
}

#[test]
fn aborted_reconcile_forgets_its_marks() {
    let mut t = Table::new();
    t.apply(&created(1, client(0, "10.0.0.2")));
    t.begin_reconcile(10 * S);
    t.observe(&tw(client(0, "10.0.0.2"), 50_000));
    t.abort_reconcile();
    assert_eq!(t.reconcile(12 * S, &[]), Drift { missing: 0, extra: 1 }, "the failed dump's listing does not count");
}

#[test]
fn observe_without_a_reconcile_is_ignored() {
    let mut t = Table::new();
    t.observe(&tw(client(0, "10.0.0.2"), 50_000));
    assert!(t.is_empty());
}

#[test]
fn an_oversized_reserve_is_given_back() {
    let mut t = Table::new();
    t.reserve(100_000);
    t.seed(100 * S, &[tw(client(0, "10.0.0.2"), 50_000)]);
    let big = t.approx_bytes();
    t.shrink_if_sparse();
    assert!(t.approx_bytes() * 10 < big, "{} -> {}", big, t.approx_bytes());
    assert_eq!(t.len(), 1);
    // A well-sized map is left alone.
    let mut t = Table::new();
    t.reserve(10_000);
    t.seed(100 * S, &(0..9_000).map(|n| tw(client(n, "10.0.0.2"), 50_000)).collect::<Vec<_>>());
    let before = t.approx_bytes();
    t.shrink_if_sparse();
    assert_eq!(t.approx_bytes(), before);
}
