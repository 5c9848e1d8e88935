//! TIME_WAIT lifecycle straight from the kernel (`trace --timewait`), checked against `ss` and
//! /proc/net/netstat: creation (both close sides, IPv4/IPv6, FIN_WAIT2 substate), expiry, every
//! early-removal cause, and overflow of tcp_max_tw_buckets.

use std::{
    collections::BTreeMap,
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use serde_json::Value;
use twreset_tests::{Closer, NetNs, Running, connections, ndjson, privileged};

const READY: &str = "Ctrl-C to stop";

fn tw_events(out: &str, event: &str) -> Vec<Value> {
    ndjson(out).into_iter().filter(|v| v["event"] == event).collect()
}

fn tuple(v: &Value) -> (SocketAddr, SocketAddr) {
    let a = |p: &str| -> SocketAddr {
        SocketAddr::new(
            v[format!("{p}addr")].as_str().unwrap().parse().unwrap(),
            v[format!("{p}port")].as_u64().unwrap() as u16,
        )
    };
    (a("l"), a("r"))
}

/// A fresh TIME_WAIT timer: 60 s, measured at the tracepoint as `expires - jiffies`, so a jiffy
/// that ticks between the kernel arming the timer and the tracepoint (seen under qemu's TCG)
/// shows as one jiffy less (at most 10 ms for HZ >= 100).
fn full_timeout(v: &Value) -> bool {
    v["timeout_ms"].as_u64().is_some_and(|ms| (59_990..=60_000).contains(&ms))
}

fn start(ns: &NetNs) -> Running {
    let path = ns.path();
    Running::start(&["trace", "--json", "--timewait", "--netns", path.to_str().unwrap()], READY)
}

#[test]
fn creation_matches_ss_per_peer_both_sides_both_families() {
    if !privileged("tw_creation") {
        return;
    }
    let ns = NetNs::new("twc");
    ns.add_lo_addr("127.0.0.2/8");
    ns.add_lo_addr("fd00::2/128");
    let t = start(&ns);
    ns.run(|| {
        connections("127.0.0.1:7201".parse().unwrap(), None, 4, Closer::Client);
        connections("127.0.0.2:7202".parse().unwrap(), Some("127.0.0.1".parse().unwrap()), 3, Closer::Server);
        connections("[::1]:7203".parse().unwrap(), None, 2, Closer::Client);
        connections("[fd00::2]:7204".parse().unwrap(), Some("::1".parse().unwrap()), 5, Closer::Server);
    });
    ns.wait_quiescent();
    let (code, out, err) = t.stop();
    assert_eq!(code, Some(0), "{err}");
    let starts = tw_events(&out, "tw_start");
    assert!(starts.iter().all(|v| v["substate"] == "TIME_WAIT" && full_timeout(v)), "{starts:#?}");
    assert!(starts.iter().all(|v| v["rearm"] == false), "new sockets, not re-arms: {starts:#?}");
    let mut ours: Vec<(SocketAddr, SocketAddr)> = starts.iter().map(tuple).collect();
    ours.sort();
    let mut kernel: Vec<(SocketAddr, SocketAddr)> = ns.time_wait().into_iter().map(|s| (s.local, s.remote)).collect();
    kernel.sort();
    assert_eq!(ours, kernel, "TIME_WAIT sockets created vs `ss state time-wait`");
    // Per peer, as an operator counts them.
    let mut per_peer: BTreeMap<String, usize> = BTreeMap::new();
    for (_, r) in &ours {
        *per_peer.entry(r.ip().to_string()).or_default() += 1;
    }
    assert_eq!(ours.len(), 14);
    assert_eq!(per_peer.get("127.0.0.1"), Some(&(4 + 3)), "{per_peer:?}");
}

/// An orphaned close: the closer's socket is closed while the peer has not closed yet.
fn orphan_fin_wait2(server: SocketAddr) -> (TcpStream, SocketAddr) {
    let l = TcpListener::bind(server).unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (a, _) = l.accept().unwrap();
    let local = c.local_addr().unwrap();
    drop(c); // FIN sent, ACKed: orphaned FIN_WAIT2 -> tw socket with substate FIN_WAIT2
    (a, local)
}

#[test]
fn fin_wait2_substate_then_expiry_after_tcp_fin_timeout() {
    if !privileged("tw_fin_wait2_expiry") {
        return;
    }
    let ns = NetNs::new("twf");
    ns.sysctl("net.ipv4.tcp_fin_timeout", "2");
    let t = start(&ns);
    let local = ns.run(|| {
        let (peer, local) = orphan_fin_wait2("127.0.0.1:7210".parse().unwrap());
        std::mem::forget(peer); // the peer never closes: the closer stays in FIN_WAIT2
        local
    });
    ns.wait_quiescent();
    let fw2 = ns.ss(&["state", "fin-wait-2"]);
    assert_eq!(fw2.len(), 1, "ss must show one FIN-WAIT-2 tw socket: {fw2:?}");
    // tcp_fin_timeout=2: the kernel's timer fires ~2 s later; the entry must leave. The expiry
    // event is written when the timer fires, before the socket leaves `ss`.
    twreset_tests::poll_until("the FIN_WAIT2 tw socket to expire", || ns.ss(&["state", "fin-wait-2"]).is_empty());
    let (code, out, err) = t.stop();
    assert_eq!(code, Some(0), "{err}");
    let starts = tw_events(&out, "tw_start");
    assert_eq!(starts.len(), 1, "{out}");
    assert_eq!(starts[0]["substate"], "FIN_WAIT2");
    assert_eq!(tuple(&starts[0]).0, local);
    let ms = starts[0]["timeout_ms"].as_u64().unwrap();
    assert!((1000..=2000).contains(&ms), "FIN_WAIT2 timeout follows tcp_fin_timeout: {ms} ms");
    let expired = tw_events(&out, "tw_expire");
    assert_eq!(expired.len(), 1, "{out}");
    assert_eq!(tuple(&expired[0]), tuple(&starts[0]));
    assert!(tw_events(&out, "tw_kill").is_empty(), "{out}");
}

#[test]
fn fin_wait2_becomes_time_wait_with_a_rearm() {
    if !privileged("tw_rearm") {
        return;
    }
    let ns = NetNs::new("twr");
    // With the default 60 s, the re-arm to TCP_TIMEWAIT_LEN lands in the same timer-wheel bucket
    // and the kernel updates the expiry without a timer_start event; 5 s makes it visible.
    ns.sysctl("net.ipv4.tcp_fin_timeout", "5");
    let t = start(&ns);
    ns.run(|| {
        let (mut peer, _) = orphan_fin_wait2("127.0.0.1:7211".parse().unwrap());
        // The orphan has become a tw socket of substate FIN_WAIT2 before its peer closes.
        twreset_tests::poll_until("the orphan in FIN_WAIT2", || ns.ss(&["state", "fin-wait-2"]).len() == 1);
        let mut b = [0u8; 1];
        assert_eq!(peer.read(&mut b).unwrap(), 0);
        drop(peer); // FIN arrives at the FIN_WAIT2 tw socket: it becomes TIME_WAIT, timer re-armed
    });
    ns.wait_quiescent();
    let (code, out, err) = t.stop();
    assert_eq!(code, Some(0), "{err}");
    let starts = tw_events(&out, "tw_start");
    let subs: Vec<&str> = starts.iter().map(|v| v["substate"].as_str().unwrap()).collect();
    assert_eq!(subs, ["FIN_WAIT2", "TIME_WAIT"], "{out}");
    // One socket: created, then its timer moved.
    assert_eq!((&starts[0]["rearm"], &starts[1]["rearm"]), (&Value::Bool(false), &Value::Bool(true)), "{out}");
    assert_eq!(tuple(&starts[0]), tuple(&starts[1]));
    assert!(full_timeout(&starts[1]), "{:#?}", starts[1]);
    assert_eq!(ns.ss(&["state", "time-wait"]).len(), 1);
}

fn kills(out: &str) -> Vec<(String, (SocketAddr, SocketAddr))> {
    tw_events(out, "tw_kill").iter().map(|v| (v["cause"].as_str().unwrap().to_owned(), tuple(v))).collect()
}

#[test]
fn early_removal_causes_sock_destroy_new_syn_and_reuse() {
    if !privileged("tw_causes") {
        return;
    }
    let ns = NetNs::new("twk");
    let t = start(&ns);
    // 1. SOCK_DESTROY via `ss -K` (Linux >= 6.0); before, the kernel cannot destroy TIME_WAIT
    // sockets, and `twreset kill` sends them the exact RST instead: cause `peer_rst`.
    let killed = ns.run(|| connections("127.0.0.1:7220".parse().unwrap(), None, 2, Closer::Client));
    let destroy_cause = if twreset_tests::kernel_at_least(6, 0) {
        ns.exec(&["ss", "-K", "state", "time-wait", "dport", "=", ":7220"]);
        "sock_destroy"
    } else {
        let path = ns.path();
        let (code, _, err) = twreset_tests::twreset(&[
            "kill",
            "--netns",
            path.to_str().unwrap(),
            "--audit-log",
            "/dev/null",
            "127.0.0.1:7220",
        ]);
        assert_eq!(code, Some(0), "{err}");
        "peer_rst"
    };
    assert!(ns.ss(&["state", "time-wait", "dport", "=", ":7220"]).is_empty());
    // 2. A new SYN on the 4-tuple of a server-side TIME_WAIT socket.
    let syn_tuple = ns.run(|| {
        let l = TcpListener::bind("127.0.0.1:7221").unwrap();
        let bind = |s: &socket2::Socket| {
            s.set_reuse_address(true).unwrap();
            s.bind(&"127.0.0.1:47221".parse::<SocketAddr>().unwrap().into()).unwrap();
        };
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        bind(&s);
        s.connect(&"127.0.0.1:7221".parse::<SocketAddr>().unwrap().into()).unwrap();
        let mut c = TcpStream::from(s);
        let (a, _) = l.accept().unwrap();
        a.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(c.read(&mut [0u8; 1]).unwrap(), 0);
        drop(c);
        drop(a); // server side now in TIME_WAIT
        twreset_tests::poll_until("the server side in TIME_WAIT", || {
            ns.ss(&["state", "time-wait", "sport", "=", ":7221"]).len() == 1
        });
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        bind(&s);
        s.connect(&"127.0.0.1:7221".parse::<SocketAddr>().unwrap().into()).expect("SYN reuses the 4-tuple");
        let (_a2, _) = l.accept().unwrap();
        ("127.0.0.1:7221".parse::<SocketAddr>().unwrap(), "127.0.0.1:47221".parse::<SocketAddr>().unwrap())
    });
    // 3. tcp_tw_reuse: one ephemeral port, so the second connect must take over the TIME_WAIT.
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
    ns.sysctl("net.ipv4.ip_local_port_range", "47300 47300");
    let reuse = ns.run(|| {
        let first = connections("127.0.0.1:7222".parse().unwrap(), None, 1, Closer::Client)[0];
        std::thread::sleep(Duration::from_millis(1200)); // tcp_tw_reuse_delay = 1 s
        let l = TcpListener::bind("127.0.0.1:7222").unwrap();
        let c = TcpStream::connect("127.0.0.1:7222").expect("connect reusing the TIME_WAIT port");
        assert_eq!(c.local_addr().unwrap(), first.0);
        drop(l);
        first
    });
    ns.wait_quiescent();
    let (code, out, err) = t.stop();
    assert_eq!(code, Some(0), "{err}");
    let k = kills(&out);
    let mut want: Vec<(String, (SocketAddr, SocketAddr))> =
        killed.iter().map(|(c, s)| (destroy_cause.to_owned(), (*c, *s))).collect();
    want.push(("new_syn".into(), syn_tuple));
    want.push(("reuse".into(), reuse));
    let mut got = k.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{out}");
}

#[test]
fn namespace_deletion_purges_with_cause() {
    if !privileged("tw_netns_gone") {
        return;
    }
    let ns = NetNs::new("twp");
    let cookie = ns.cookie();
    ns.run(|| connections("127.0.0.1:7230".parse().unwrap(), None, 3, Closer::Client));
    // --all-netns: holding the namespace open would keep it (and its sockets) alive.
    let mut t = Running::start(&["trace", "--json", "--timewait", "--all-netns", "--state", "time-wait"], READY);
    drop(ns);
    // cleanup_net runs asynchronously in a kernel worker: wait for its third kill of ours (a
    // fourth would show below).
    let ours = format!("\"netns_cookie\":{cookie},");
    for _ in 0..3 {
        t.wait_stdout("a kill of the deleted namespace's sockets", |l| l.contains(&ours) && l.contains("tw_kill"));
    }
    let (code, mut out, err) = t.stop();
    assert_eq!(code, Some(0), "{err}");
    out = out.lines().filter(|l| l.contains(&format!("\"netns_cookie\":{cookie},"))).collect::<Vec<_>>().join("\n");
    let k = kills(&out);
    assert_eq!(k.len(), 3, "{out}");
    assert!(k.iter().all(|(c, (_, r))| c == "netns_gone" && r.port() == 7230), "{k:?}");
}

#[test]
fn overflow_count_equals_kernel_counter() {
    if !privileged("tw_overflow") {
        return;
    }
    let ns = NetNs::new("two");
    ns.sysctl("net.ipv4.tcp_max_tw_buckets", "3");
    let before = ns.tcp_ext("TCPTimeWaitOverflow");
    let t = start(&ns);
    ns.run(|| connections("127.0.0.1:7240".parse().unwrap(), None, 8, Closer::Client));
    ns.wait_quiescent();
    let (code, out, err) = t.stop();
    assert_eq!(code, Some(0), "{err}");
    let delta = ns.tcp_ext("TCPTimeWaitOverflow") - before;
    assert_eq!(delta, 5, "kernel counter");
    assert_eq!(tw_events(&out, "tw_overflow").len() as u64, delta, "{out}");
    assert_eq!(tw_events(&out, "tw_start").len(), 3);
    assert_eq!(ns.time_wait().len(), 3);
}

#[test]
fn rst_from_the_peer_is_recorded_as_peer_rst() {
    if !privileged("tw_peer_rst") {
        return;
    }
    let ns = NetNs::new("twrst");
    ns.sysctl("net.ipv4.tcp_rfc1337", "0");
    let t = start(&ns);
    let conns = ns.run(|| connections("127.0.0.1:7250".parse().unwrap(), None, 2, Closer::Client));
    // `twreset kill --method rst` sends the RST the peer would send, with the exact sequence
    // number the TIME_WAIT socket expects: the kernel takes it as a RST from the peer.
    let path = ns.path();
    let (code, _, err) =
        twreset_tests::twreset(&["kill", "--method", "rst", "--netns", path.to_str().unwrap(), "127.0.0.1:7250"]);
    assert_eq!(code, Some(0), "{err}");
    ns.wait_quiescent();
    let (code, out, err) = t.stop();
    assert_eq!(code, Some(0), "{err}");
    let mut got = kills(&out);
    got.sort();
    let mut want: Vec<(String, (SocketAddr, SocketAddr))> =
        conns.iter().map(|(c, s)| ("peer_rst".to_owned(), (*c, *s))).collect();
    want.sort();
    assert_eq!(got, want, "{out}");
    assert!(ns.ss(&["state", "time-wait", "dport", "=", ":7250"]).is_empty());
}

/// With `timer_start` left out (fault injection), no timer event reports a creation: each one
/// must come from `sock_ops` as a `tw_born` with the socket's tuple and substate, its close
/// marked `time_wait`, and none taken for an overflow. The same path reports the few creations
/// the timer tracepoint leaves undelivered.
#[test]
fn creations_without_a_timer_event_come_from_sock_ops() {
    if !privileged("tw_born_trace") {
        return;
    }
    let ns = NetNs::new("twb");
    ns.add_lo_addr("fd00::2/128");
    let path = ns.path();
    let t = Running::start_with_env(
        &["trace", "--json", "--timewait", "--netns", path.to_str().unwrap()],
        &[("TWRESET_FAULT_NO_TIMER_START", "1")],
        READY,
    );
    let fw2 = ns.run(|| {
        connections("127.0.0.1:7261".parse().unwrap(), None, 4, Closer::Client);
        connections("[fd00::2]:7262".parse().unwrap(), Some("::1".parse().unwrap()), 3, Closer::Server);
        orphan_fin_wait2("127.0.0.1:7263".parse().unwrap())
    });
    ns.wait_quiescent();
    let (code, out, err) = t.stop();
    assert_eq!(code, Some(0), "{err}");
    assert!(tw_events(&out, "tw_start").is_empty(), "timer_start was left out: {out}");
    assert!(tw_events(&out, "tw_overflow").is_empty(), "{out}");
    let born = tw_events(&out, "tw_born");
    let mut ours: Vec<(SocketAddr, SocketAddr)> =
        born.iter().filter(|v| v["substate"] == "TIME_WAIT").map(tuple).collect();
    ours.sort();
    let mut kernel: Vec<(SocketAddr, SocketAddr)> = ns.time_wait().iter().map(|s| (s.local, s.remote)).collect();
    kernel.sort();
    assert_eq!(ours, kernel, "tw_born vs `ss state time-wait`");
    assert_eq!(ours.len(), 7);
    let orphans: Vec<&Value> = born.iter().filter(|v| v["substate"] == "FIN_WAIT2").collect();
    assert_eq!(orphans.len(), 1, "{born:#?}");
    assert_eq!(tuple(orphans[0]).0, fw2.1);
    // Each active close into a TIME_WAIT socket says so.
    let closes: Vec<Value> =
        ndjson(&out).into_iter().filter(|v| v["event"].is_null() && v["time_wait"] == true).collect();
    assert_eq!(closes.len(), 8, "{out}");
    assert!(err.contains("twreset: 8 TIME_WAIT creations no timer event reported came from sock_ops"), "{err}");
    drop(fw2.0);
}
