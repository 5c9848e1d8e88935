//! The owner over a replayed feed: every command of the channel answered from the table, new and
//! deleted namespaces, and a dry-run kill through the same path as the CLI's.

use std::sync::{Arc, atomic::AtomicBool};

use tokio::sync::{mpsc, oneshot, watch};

use super::*;
use crate::{
    agent::{
        command::{Commands, KillRequest},
        netns_watch::Found,
    },
    kill::{
        Method, Options,
        select::{Selector, StateWord, States, parse_endpoint},
    },
    live::{monotonic_ns, replay},
    ports::PortSpaces,
    scope::NetnsScope,
    session::SessionStats,
    sock::{DiagSocket, SockKey},
    state::TcpState,
    tw_event::{TwEvent, TwEventKind},
};

fn key(lport: u16, raddr: &str) -> SockKey {
    SockKey { netns_cookie: 7, laddr: "10.0.0.1".parse().unwrap(), lport, raddr: raddr.parse().unwrap(), rport: 443 }
}

fn created(lport: u16, raddr: &str) -> TwEvent {
    TwEvent {
        ts_ns: monotonic_ns(),
        key: key(lport, raddr),
        kind: TwEventKind::Created { substate: TcpState::TimeWait, timeout_ms: 60_000 },
    }
}

struct Harness {
    commands: Commands,
    events: mpsc::Sender<Vec<TwEvent>>,
    netns: mpsc::Sender<Vec<Change>>,
    settings: watch::Sender<Settings>,
    stop: oneshot::Sender<()>,
    owner: tokio::task::JoinHandle<Result<(), LiveError>>,
}

fn start() -> Harness {
    let (events, rx) = mpsc::channel(16);
    let seed = vec![DiagSocket {
        key: key(40000, "10.0.0.2"),
        state: TcpState::TimeWait,
        timewait: true,
        expires_ms: 30_000,
        cookie: 0,
        inode: 0,
        uid: 0,
    }];
    let feed = Feed {
        events: rx,
        dump: Box::new(move |sink| {
            replay(&seed, sink);
            Ok(())
        }),
        lost: Box::new(|| 0),
        tw_counts: Box::new(Vec::new),
        attached_counts: Vec::new(),
        ranges: PortSpaces::default(),
        clock: monotonic_ns,
    };
    let (commands, command_rx) = Commands::channel();
    let (netns, netns_rx) = mpsc::channel(4);
    let settings_value = Settings {
        top_n: 20,
        reconcile: Duration::from_secs(3600),
        audit_log: "/nonexistent/audit.log".into(),
        relief: crate::policy::ReliefConfig::default(),
    };
    let (settings, settings_rx) = watch::channel(settings_value);
    let (_stats_tx, stats) = watch::channel(SessionStats::default());
    let inputs = Inputs {
        commands: command_rx,
        netns: netns_rx,
        settings: settings_rx,
        stats,
        ready: Arc::new(AtomicBool::new(false)),
        kernel: "6.18.0-test".into(),
    };
    let (stop, stop_rx) = oneshot::channel::<()>();
    let owner = tokio::spawn(run(feed, inputs, async {
        let _ = stop_rx.await;
    }));
    Harness { commands, events, netns, settings, stop, owner }
}

#[tokio::test]
async fn every_command_is_answered_from_the_table() {
    let h = start();
    let status = h.commands.status().await.unwrap();
    assert_eq!((status.ready, status.sockets), (true, 1), "seeded from the dump");

    let mut sub = h.commands.subscribe().await.unwrap();
    h.events.send(vec![created(40001, "10.0.0.2"), created(40002, "fd00::2")]).await.unwrap();
    let batch = sub.recv().await.unwrap();
    assert_eq!(batch.len(), 2, "subscribers get each applied batch");

    let snap = h.commands.tw(By::Peer, Sort::Count).await.unwrap();
    assert_eq!(snap.totals.count, 3);
    assert_eq!(snap.rows[0].count, 2);

    // Unnamed until the scan names it; then its ip netns name.
    let f = h.commands.ask(|reply| Command::Metrics { reply }).await.unwrap();
    assert_eq!(f.namespaces.len(), 1);
    assert_eq!((f.namespaces[0].netns.as_str(), f.namespaces[0].time_wait), ("netns:7", 3));
    assert_eq!(f.namespaces[0].created, 2, "events count as creations; the seed does not");
    let identity = NsIdentity { cookie: 7, host: false, ip_netns: Some("blue".into()), owner: None };
    h.netns.send(vec![Change::Added(Found { identity, range: None, dump: None })]).await.unwrap();
    let f = eventually_metrics(&h.commands, |f| f.namespaces.iter().any(|n| n.netns == "blue")).await;
    assert_eq!(f.peers.iter().filter(|p| p.netns == "blue").map(|p| p.sockets).sum::<u64>(), 3);
    assert_eq!(f.kernel, "6.18.0-test");

    // A reload's top_n reaches the figures.
    h.settings.send_modify(|s| s.top_n = 3);
    let f = eventually_metrics(&h.commands, |f| f.top_n == 3).await;
    assert_eq!(f.top_n, 3);

    // Deleted: its sockets and its series go.
    h.netns.send(vec![Change::Gone { cookie: 7 }]).await.unwrap();
    let f = eventually_metrics(&h.commands, |f| f.namespaces.is_empty()).await;
    assert!(f.peers.is_empty() && f.dests.is_empty(), "{f:?}");
    assert_eq!(h.commands.status().await.unwrap().sockets, 0);

    h.stop.send(()).unwrap();
    h.owner.await.unwrap().unwrap();
    assert!(h.commands.status().await.is_err(), "a stopped owner answers nothing");
}

#[tokio::test]
async fn a_kill_goes_through_the_cli_path() {
    let h = start();
    let selector = Selector::new(
        vec![parse_endpoint("192.0.2.254", false).unwrap()],
        Vec::new(),
        Vec::new(),
        States::from_words(&[StateWord::Any]),
        None,
        false,
    )
    .unwrap();
    let opts = Options { selector, limit: None, method: Method::Destroy, dry_run: true, progress: false };
    let caller = Caller { uid: 0, gid: 0, pid: 1 };
    let reply = h.commands.kill(KillRequest { opts, scope: NetnsScope::Current }, caller).await.unwrap();
    let summary = reply.lines.last().expect("a summary line");
    assert_eq!((summary["type"].as_str(), summary["selected"].as_u64()), (Some("summary"), Some(0)), "{summary}");
    assert!(reply.ok);
    h.stop.send(()).unwrap();
    h.owner.await.unwrap().unwrap();
}

/// Ask for figures until `ok` holds (the owner applies the namespace channel between commands).
async fn eventually_metrics(c: &Commands, ok: impl Fn(&Figures) -> bool) -> Arc<Figures> {
    for _ in 0..200 {
        let f = c.ask(|reply| Command::Metrics { reply }).await.unwrap();
        if ok(&f) {
            return f;
        }
        tokio::task::yield_now().await;
    }
    panic!("the figures never got there");
}
