//! `Live` against scripted feeds: seeding, resyncs on loss, in-flight events at a reconcile, and
//! the cross-checks with the kernel's counts. Time is tokio's, paused: sleeps cost nothing.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use super::*;
use crate::{sock::SockKey, state::TcpState, tw_event::TwEventKind};

thread_local! {
    /// Each test runs on a thread of its own, with a runtime whose time is paused.
    static EPOCH: tokio::time::Instant = tokio::time::Instant::now();
}

/// The tests' clock: tokio's paused time (sleeps advance it at once), from a start far from 0
/// as `CLOCK_MONOTONIC`'s is. No test waits in real time.
fn now_ns() -> u64 {
    1_000_000_000_000 + EPOCH.with(|e| e.elapsed().as_nanos() as u64)
}

fn key(n: u16) -> SockKey {
    SockKey {
        netns_cookie: 1,
        laddr: "10.0.0.1".parse().unwrap(),
        lport: 40000 + n,
        raddr: "10.0.0.2".parse().unwrap(),
        rport: 443,
    }
}

fn tw(n: u16) -> DiagSocket {
    DiagSocket {
        key: key(n),
        state: TcpState::TimeWait,
        timewait: true,
        expires_ms: 50_000,
        cookie: 0,
        inode: 0,
        uid: 0,
    }
}

fn feed(dumps: Vec<Vec<DiagSocket>>, lost: Arc<AtomicU64>) -> (mpsc::Sender<Vec<TwEvent>>, Feed) {
    let (tx, rx) = mpsc::channel(1024);
    let mut dumps = dumps.into_iter();
    let feed = Feed {
        events: rx,
        dump: Box::new(move |sink| {
            replay(&dumps.next().unwrap_or_default(), sink);
            Ok(())
        }),
        lost: Box::new(move || lost.load(Ordering::Relaxed)),
        attached_counts: Vec::new(),
        tw_counts: Box::new(Vec::new),
        ranges: PortSpaces::default(),
        clock: now_ns,
    };
    (tx, feed)
}

fn created(n: u16) -> TwEvent {
    TwEvent {
        ts_ns: now_ns(),
        key: key(n),
        kind: TwEventKind::Created { substate: TcpState::TimeWait, timeout_ms: 60_000 },
    }
}

#[tokio::test(start_paused = true)]
async fn seeds_then_follows_events() {
    let lost = Arc::new(AtomicU64::new(0));
    let (tx, feed) = feed(vec![vec![tw(0), tw(1)]], lost.clone());
    tx.send(vec![created(2)]).await.unwrap();
    let mut live = Live::start(feed, ViewConfig::default(), Duration::from_millis(10)).await.unwrap();
    assert_eq!(live.table.len(), 3);
    tx.send(vec![created(3)]).await.unwrap();
    assert_eq!(live.next_events().await, 1);
    assert_eq!(live.snapshot(By::Peer, Sort::Count).rows[0].count, 4);
    drop(tx);
    assert_eq!(live.next_events().await, 0);
    assert!(live.closed());
}

#[tokio::test(start_paused = true)]
async fn loss_forces_a_resync_against_the_kernel() {
    let lost = Arc::new(AtomicU64::new(0));
    let (_tx, feed) = feed(vec![vec![tw(0)], vec![tw(0), tw(5)]], lost.clone());
    let mut live = Live::start(feed, ViewConfig::default(), Duration::ZERO).await.unwrap();
    assert_eq!(live.tick().await.unwrap(), None);
    lost.store(2, Ordering::Relaxed);
    let drift = live.tick().await.unwrap().unwrap();
    assert_eq!(drift, Drift { missing: 1, extra: 0 });
    let c = live.table.counters();
    assert_eq!((c.lost, c.resyncs, c.drift), (2, 1, 1));
    assert_eq!(live.table.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn every_namespace_of_a_batch_counts_as_busy() {
    let (_tx, feed) = feed(vec![], Arc::new(AtomicU64::new(0)));
    let mut live = Live::start(feed, ViewConfig::default(), Duration::ZERO).await.unwrap();
    let at = |ns: u64, ts_ns: u64| TwEvent { ts_ns, key: SockKey { netns_cookie: ns, ..key(ns as u16) }, ..created(0) };
    live.apply(&[at(1, 5), at(1, 3), at(2, 7), at(1, 9), at(3, 2)]);
    let newest = |ns: u64| (0..20).find(|&t| live.last_events.quiet_since(ns, t + 1)).unwrap();
    assert_eq!((newest(1), newest(2), newest(3)), (9, 7, 2));
}

#[tokio::test(start_paused = true)]
async fn creations_the_events_missed_are_unseen_loss_even_when_busy() {
    let (tx, mut feed) = feed(vec![vec![], vec![tw(0), tw(1)]], Arc::new(AtomicU64::new(0)));
    let made = Arc::new(AtomicU64::new(100));
    let kernel = made.clone();
    feed.tw_counts = Box::new(move || {
        vec![NsCount { netns: 1, tw: 0, created: Some(kernel.load(Ordering::Relaxed)), overflow: None }]
    });
    // Baseline at the start: the kernel had made 100 before.
    let mut live = Live::start(feed, ViewConfig::default(), Duration::ZERO).await.unwrap();
    // Two made, one event: the namespace is busy, so only the creation count can tell.
    made.store(102, Ordering::Relaxed);
    tx.send(vec![created(0)]).await.unwrap();
    let drift = live.tick().await.unwrap().expect("a resync");
    assert_eq!(drift, Drift { missing: 1, extra: 0 });
    let c = live.table.counters();
    assert_eq!((c.created, c.unseen, c.lost, c.resyncs), (1, 1, 1, 1));
    // Counted once.
    live.next_check_ns = 0;
    assert_eq!(live.tick().await.unwrap(), None);
    assert_eq!(live.table.counters().unseen, 1);
}

#[tokio::test(start_paused = true)]
async fn overflows_are_the_kernels_counter_since_the_probe_attached() {
    let lost = Arc::new(AtomicU64::new(0));
    let (_tx, mut feed) = feed(vec![], lost);
    let c = |netns, overflow| NsCount { netns, tw: 0, created: None, overflow };
    // Before attach: namespace 1 had overflowed 10 times; 2 was not readable then.
    feed.attached_counts = vec![c(1, Some(10)), c(2, None)];
    let now = Arc::new(AtomicU64::new(13));
    let kernel = now.clone();
    feed.tw_counts = Box::new(move || vec![c(1, Some(kernel.load(Ordering::Relaxed))), c(2, Some(4))]);
    let mut live = Live::start(feed, ViewConfig::default(), Duration::ZERO).await.unwrap();
    // 3 since the attach; 2's first reading is its baseline.
    assert_eq!(live.table.counters().overflow, 3);
    now.store(20, Ordering::Relaxed);
    live.tick().await.unwrap();
    assert_eq!(live.table.counters().overflow, 10);
    // Not an event loss.
    assert_eq!(live.table.counters().lost, 0);
}

#[tokio::test(start_paused = true)]
async fn quiet_namespace_off_the_kernel_count_is_unseen_loss() {
    // The kernel holds 0 and 5 in namespace 1, but only 0's events came: no loss counter moved.
    let lost = Arc::new(AtomicU64::new(0));
    let (tx, mut feed) = feed(vec![vec![], vec![tw(0), tw(5)]], lost);
    let counts = Arc::new(AtomicU64::new(2));
    let kernel = counts.clone();
    feed.tw_counts = Box::new(move || {
        let c = |netns, tw| NsCount { netns, tw, created: None, overflow: None };
        vec![c(1, kernel.load(Ordering::Relaxed) as usize), c(9, 0)]
    });
    let mut live = Live::start(feed, ViewConfig::default(), Duration::ZERO).await.unwrap();
    // Busy: an event of namespace 1 just now. Not compared, whatever the counts.
    tx.send(vec![created(0)]).await.unwrap();
    assert_eq!(live.tick().await.unwrap(), None);
    assert_eq!(live.table.counters().unseen, 0);
    // Quiet for a second: compared, one socket unseen, resynced to the kernel's dump.
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let drift = live.tick().await.unwrap().expect("a resync");
    assert_eq!(drift, Drift { missing: 1, extra: 0 });
    let c = live.table.counters();
    assert_eq!((c.unseen, c.lost, c.resyncs), (1, 1, 1));
    assert_eq!(live.table.len(), 2);
    // Matching counts later: nothing more is counted (and no wait for a second check yet).
    live.next_check_ns = 0;
    assert_eq!(live.tick().await.unwrap(), None);
    assert_eq!(live.table.counters().unseen, 1);
}

#[tokio::test(start_paused = true)]
async fn reconcile_lets_in_flight_events_land() {
    // The kernel at the dump: 0 (its creation event still in flight) and 1 (which expires
    // right after the dump saw it). A naive compare would call both drift.
    let lost = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel(16);
    let mut dumps = vec![vec![], vec![tw(0), tw(1)]].into_iter();
    let sender = tx.clone();
    let feed = Feed {
        events: rx,
        dump: Box::new(move |sink| {
            let d = dumps.next().unwrap_or_default();
            if d.len() == 2 {
                // Events the ring buffer delivers while the dump runs.
                let old = TwEvent { ts_ns: 1, ..created(0) };
                let gone = TwEvent { ts_ns: now_ns(), key: key(1), kind: TwEventKind::Expired };
                sender.try_send(vec![old]).unwrap();
                sender.try_send(vec![gone]).unwrap();
            }
            replay(&d, sink);
            Ok(())
        }),
        lost: Box::new(move || lost.load(Ordering::Relaxed)),
        attached_counts: Vec::new(),
        tw_counts: Box::new(Vec::new),
        ranges: PortSpaces::default(),
        clock: now_ns,
    };
    let mut live = Live::start(feed, ViewConfig::default(), Duration::from_millis(20)).await.unwrap();
    tx.send(vec![created(1)]).await.unwrap();
    live.pump();
    assert_eq!(live.table.len(), 1);
    assert_eq!(live.reconcile(false).await.unwrap(), Drift::default());
    assert_eq!(live.table.len(), 1, "0 stays (created before the dump), 1 is gone (expired after it)");
    assert_eq!(live.table.counters().drift, 0);
    assert_eq!(live.table.counters().reconciles, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_dump_leaves_the_table_alone() {
    let (_tx, rx) = mpsc::channel(1);
    let mut calls = 0;
    let feed = Feed {
        events: rx,
        dump: Box::new(move |sink| {
            calls += 1;
            if calls > 1 {
                // A dump that fails part-way, after handing over some sockets.
                replay(&[tw(0), tw(7)], sink);
                return Err("gone".into());
            }
            replay(&[tw(0)], sink);
            Ok(())
        }),
        lost: Box::new(|| 0),
        attached_counts: Vec::new(),
        tw_counts: Box::new(Vec::new),
        ranges: PortSpaces::default(),
        clock: now_ns,
    };
    let mut live = Live::start(feed, ViewConfig::default(), Duration::ZERO).await.unwrap();
    assert!(matches!(live.reconcile(false).await, Err(LiveError::Dump { .. })));
    assert_eq!(live.table.len(), 1);
    assert_eq!(live.table.counters().reconciles, 0);
}

#[tokio::test(start_paused = true)]
async fn loss_during_the_settle_is_not_absorbed_by_the_seed() {
    let lost = Arc::new(AtomicU64::new(3));
    let (tx, feed) = feed(vec![vec![tw(0)], vec![tw(0)]], lost.clone());
    let bump = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        lost.store(4, Ordering::Relaxed);
        drop(tx);
    });
    let mut live = Live::start(feed, ViewConfig::default(), Duration::from_millis(50)).await.unwrap();
    bump.await.unwrap();
    assert_eq!(live.table.counters().lost, 3, "the seed covers losses before it");
    assert!(live.tick().await.unwrap().is_some(), "a loss after the seed forces a resync");
    assert_eq!((live.table.counters().lost, live.table.counters().resyncs), (4, 1));
}

#[tokio::test(start_paused = true)]
async fn dump_errors_surface() {
    let (_tx, rx) = mpsc::channel(1);
    let feed = Feed {
        events: rx,
        dump: Box::new(|_| Err("netlink says no".into())),
        lost: Box::new(|| 0),
        attached_counts: Vec::new(),
        tw_counts: Box::new(Vec::new),
        ranges: PortSpaces::default(),
        clock: now_ns,
    };
    let e = Live::start(feed, ViewConfig::default(), Duration::ZERO).await.err().unwrap();
    assert!(matches!(e, LiveError::Dump { .. }));
    assert_eq!(e.source().unwrap().to_string(), "netlink says no");
}

#[test]
fn port_ranges_of_the_current_namespace() {
    let want = PortRange::parse(&std::fs::read_to_string(PORT_RANGE).unwrap()).unwrap();
    let reserved = procfs::reserved_ports(&std::fs::read_to_string(RESERVED_PORTS).unwrap()).unwrap();
    let proc = Path::new("/proc");
    let r = port_spaces(&NetnsScope::Current, proc).unwrap();
    assert_eq!(r.default.range, want);
    assert_eq!(r.default.reserved, reserved);
    assert_eq!(r.of(netns::current_cookie().unwrap()).range, want);
    let me = Netns::open(Path::new("/proc/self/ns/net")).unwrap();
    let r = port_spaces(&NetnsScope::Paths(vec![me]), proc).unwrap();
    assert_eq!(r.per_ns.len(), 1);
    assert_eq!(r.of(netns::current_cookie().unwrap()).range, want);
}
