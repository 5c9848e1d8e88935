//! The live table of `twreset tw` while the kernel changes under it: churn then zero drift against
//! `ss`, expiry, early removal by cause, overflow against TCPTimeWaitOverflow, namespace deletion.
//! `tw` seeds, follows kernel events until interrupted, then prints: actions happen while it
//! follows ([`TwFollowing`]), and each test waits for the kernel to finish its part (polling the
//! kernel's own view) before it interrupts.

use std::{collections::BTreeMap, net::SocketAddr, sync::mpsc, time::Duration};

use serde_json::Value;
use twreset_tests::{
    Closer, NetNs, Running, TwFollowing, assert_lossless_or_resynced, connections, poll_until, privileged,
};

/// `tw --json` following events in scope `args`, seeded.
fn spawn_tw(args: &[&str]) -> TwFollowing {
    TwFollowing::start(args, &[])
}

/// Interrupt it and return its JSON document, checking it exited 0.
fn finish(tw: TwFollowing) -> Value {
    let (status, v, log) = tw.finish();
    assert_eq!(status.code(), Some(0), "{log}");
    v
}

fn ns_args(ns: &NetNs) -> Vec<String> {
    vec!["--netns".into(), ns.path().display().to_string()]
}

fn rows_by(v: &Value, key: &str) -> BTreeMap<String, Value> {
    v["rows"].as_array().unwrap().iter().map(|r| (r[key].as_str().unwrap().to_owned(), r.clone())).collect()
}

/// TIME_WAIT + FIN_WAIT2-substate sockets per remote IP as `ss` shows them.
fn ss_per_peer(ns: &NetNs) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for s in ns.ss(&["state", "time-wait"]).into_iter().chain(ns.ss(&["state", "fin-wait-2"])) {
        *m.entry(s.remote.ip().to_string()).or_insert(0) += 1;
    }
    m
}

#[test]
fn churn_while_running_then_table_equals_ss() {
    if !privileged("tw_churn_zero_drift") {
        return;
    }
    let ns = NetNs::new("twl-churn");
    for a in ["10.81.0.1/32", "10.81.0.2/32", "10.81.0.3/32", "fd81::1/128", "fd81::2/128"] {
        ns.add_lo_addr(a);
    }
    let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
    // A fixed amount of churn: ROUNDS rounds of 30 connections, the first SEEDED of them before
    // `tw` starts (its seed must count them), the rest while it follows events.
    const ROUNDS: usize = 40;
    const SEEDED: usize = 5;
    let (seeded_tx, seeded_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let v = std::thread::scope(|s| {
        let churn = {
            let ns = &ns;
            s.spawn(move || {
                ns.run(move || {
                    let mut n = 0;
                    for round in 0..ROUNDS {
                        if round == SEEDED {
                            seeded_tx.send(()).unwrap();
                            go_rx.recv().unwrap();
                        }
                        n += connections(sa("10.81.0.2:0"), Some("10.81.0.1".parse().unwrap()), 10, Closer::Client)
                            .len();
                        n += connections(sa("10.81.0.3:0"), Some("10.81.0.1".parse().unwrap()), 10, Closer::Server)
                            .len();
                        n += connections(sa("[fd81::2]:0"), Some("fd81::1".parse().unwrap()), 10, Closer::Client).len();
                    }
                    n
                })
            })
        };
        seeded_rx.recv().unwrap();
        let tw = spawn_tw(&ns_args(&ns).iter().map(String::as_str).collect::<Vec<_>>());
        go_tx.send(()).unwrap();
        let made = churn.join().unwrap();
        assert_eq!(made, ROUNDS * 30);
        ns.wait_quiescent();
        finish(tw)
    });
    let want = ss_per_peer(&ns);
    let got: BTreeMap<String, u64> =
        rows_by(&v, "raddr").into_iter().map(|(k, r)| (k, r["count"].as_u64().unwrap())).collect();
    assert_eq!(got, want, "live table vs ss");
    assert_eq!(v["totals"]["count"].as_u64().unwrap(), want.values().sum::<u64>());
    assert_lossless_or_resynced(&v["totals"]);
    assert!(v["totals"]["created"].as_u64().unwrap() > 0, "events followed after the seed: {}", v["totals"]);
}

#[test]
fn entries_leave_when_the_kernel_timer_fires() {
    if !privileged("tw_expiry") {
        return;
    }
    let ns = NetNs::new("twl-exp");
    // Orphaned FIN_WAIT2 tw sockets live tcp_fin_timeout: short, so the test waits little.
    ns.sysctl("net.ipv4.tcp_fin_timeout", "3");
    // Made while `tw` follows events (however long its start-up took): two orphaned FIN_WAIT2
    // sockets (tw substate FIN_WAIT2) whose peers never close.
    let tw = spawn_tw(&ns_args(&ns).iter().map(String::as_str).collect::<Vec<_>>());
    let peers = ns.run(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:7301").unwrap();
        (0..2)
            .map(|_| {
                let c = std::net::TcpStream::connect("127.0.0.1:7301").unwrap();
                let (a, _) = l.accept().unwrap();
                drop(c);
                a
            })
            .collect::<Vec<_>>()
    });
    // The kernel's timer fires the expiry event before the socket leaves `ss`.
    poll_until("the FIN_WAIT2 timers to fire", || ns.ss(&["state", "fin-wait-2"]).is_empty());
    let v = finish(tw);
    drop(peers);
    assert_eq!(v["totals"]["count"], 0, "{v}");
    assert_eq!(v["totals"]["expired"], 2, "{}", v["totals"]);
    assert!(ns.ss(&["state", "fin-wait-2"]).is_empty());
}

#[test]
fn early_removals_are_recorded_by_cause() {
    if !privileged("tw_causes_table") {
        return;
    }
    let ns = NetNs::new("twl-kill");
    let tw = spawn_tw(&ns_args(&ns).iter().map(String::as_str).collect::<Vec<_>>());
    ns.run(|| {
        for port in [7310, 7311] {
            let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into()).unwrap();
            s.connect(&format!("127.0.0.1:{port}").parse::<SocketAddr>().unwrap().into()).unwrap();
            let c = std::net::TcpStream::from(s);
            let (a, _) = l.accept().unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut b = [0u8; 1];
            let _ = std::io::Read::read(&mut { a }, &mut b);
            drop(c);
        }
    });
    ns.wait_quiescent();
    // SOCK_DESTROY kills TIME_WAIT sockets from Linux 6.0; before, `twreset kill` sends the
    // exact RST, which the table records as the peer's.
    let destroy_cause = if twreset_tests::kernel_at_least(6, 0) {
        ns.exec(&["ss", "-K", "state", "time-wait", "dport", "=", ":7310"]);
        "sock_destroy"
    } else {
        let path = ns.path();
        let args = ["kill", "--netns", path.to_str().unwrap(), "--audit-log", "/dev/null", "127.0.0.1:7310"];
        let (code, _, err) = twreset_tests::twreset(&args);
        assert_eq!(code, Some(0), "{err}");
        "peer_rst"
    };
    // tcp_tw_reuse: the only ephemeral port is held by a TIME_WAIT socket to :7312.
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
    ns.sysctl("net.ipv4.ip_local_port_range", "47400 47400");
    ns.run(|| {
        connections("127.0.0.1:7312".parse().unwrap(), None, 1, Closer::Client);
        // tcp_tw_reuse takes a TIME_WAIT socket whose last timestamp is at least a second old.
        std::thread::sleep(Duration::from_millis(1100));
        let l = std::net::TcpListener::bind("127.0.0.1:7312").unwrap();
        let _c = std::net::TcpStream::connect("127.0.0.1:7312").expect("connect reusing TIME_WAIT");
        drop(l);
    });
    ns.wait_quiescent();
    let v = finish(tw);
    let k = &v["totals"]["killed"];
    assert_eq!(k[destroy_cause], 1, "{}", v["totals"]);
    assert_eq!(k["reuse"], 1, "{}", v["totals"]);
    assert_eq!(k["new_syn"], 0);
    let rows = rows_by(&v, "raddr");
    assert_eq!(rows["127.0.0.1"]["kills"][destroy_cause], 1, "{v}");
    // Left: the TIME_WAIT to :7311 (never killed); the reused and the destroyed ones are gone.
    assert_eq!(v["totals"]["count"].as_u64().unwrap(), ss_per_peer(&ns).values().sum::<u64>(), "{v}");
}

#[test]
fn overflow_equals_time_wait_overflow_counter() {
    if !privileged("tw_overflow_table") {
        return;
    }
    let ns = NetNs::new("twl-ovf");
    ns.sysctl("net.ipv4.tcp_max_tw_buckets", "4");
    let before = ns.tcp_ext("TCPTimeWaitOverflow");
    let tw = spawn_tw(&ns_args(&ns).iter().map(String::as_str).collect::<Vec<_>>());
    ns.run(|| connections("127.0.0.1:7320".parse().unwrap(), None, 10, Closer::Client));
    ns.wait_quiescent();
    // The overflow count is the kernel's counter, read by the cross-check once a second.
    std::thread::sleep(Duration::from_millis(1100));
    let v = finish(tw);
    let delta = ns.tcp_ext("TCPTimeWaitOverflow") - before;
    assert_eq!(delta, 6);
    assert_eq!(v["totals"]["overflow"].as_u64().unwrap(), delta, "{}", v["totals"]);
    assert_eq!(v["totals"]["count"], 4);
}

#[test]
fn namespace_deletion_is_recorded() {
    if !privileged("tw_netns_gone_table") {
        return;
    }
    let ns = NetNs::new("twl-gone");
    // --all-netns: addresses of this process's own, so another run's namespaces cannot match.
    let (client, server) =
        (format!("{}.21", twreset_tests::private_net()), format!("{}.22", twreset_tests::private_net()));
    ns.add_lo_addr(&format!("{client}/32"));
    ns.add_lo_addr(&format!("{server}/32"));
    ns.run(|| {
        connections(SocketAddr::new(server.parse().unwrap(), 7330), Some(client.parse().unwrap()), 3, Closer::Client)
    });
    let cookie = ns.cookie();
    let tw = spawn_tw(&["--all-netns"]);
    // The kernel purges a deleted namespace's TIME_WAIT sockets later, from a work queue: a
    // trace of the lifecycle says when (it saw the three kills), then `tw` is interrupted.
    let mut trace = Running::start(&["trace", "--json", "--timewait", "--all-netns"], "Ctrl-C to stop");
    drop(ns);
    let mut gone = 0;
    while gone < 3 {
        trace.wait_stdout("the namespace's TIME_WAIT sockets purged", |l| {
            serde_json::from_str::<Value>(l)
                .is_ok_and(|e| e["event"] == "tw_kill" && e["cause"] == "netns_gone" && e["netns_cookie"] == cookie)
        });
        gone += 1;
    }
    drop(trace);
    let v = finish(tw);
    let rows = rows_by(&v, "raddr");
    let row = rows.get(&server);
    // Gone from the table, and the kills recorded under the peer's row if it is still listed.
    if let Some(r) = row {
        assert_eq!(r["count"], 0, "{r}");
        assert_eq!(r["kills"]["netns_gone"], 3, "{r}");
    }
    assert!(v["totals"]["killed"]["netns_gone"].as_u64().unwrap() >= 3, "{}", v["totals"]);
}
