//! `twreset trace` against the real kernel: exact per-socket transitions in a test namespace,
//! nothing from a churning bystander namespace, kernel-side filters, the NDJSON schema.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
};

use serde_json::Value;
use twreset_tests::{
    Closer, NetNs, Running, assert_from_sock_ops, assert_no_unexpected_warnings, connections, ndjson, privileged,
};

const READY: &str = "Ctrl-C to stop";

/// Sets the flag when dropped, on panic too.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The identity fields a line of a named, pod or container namespace adds (docs/guide/namespaces.md).
const IDENTITY: [&str; 7] = ["netns", "pod_namespace", "pod", "pod_uid", "container", "container_id", "runtime"];

/// Every key of a transition object, with its type checked.
fn check_schema(v: &Value) {
    let obj = v.as_object().unwrap_or_else(|| panic!("not an object: {v}"));
    for k in IDENTITY.iter().filter(|k| obj.contains_key(**k)) {
        assert!(obj[*k].is_string(), "{k} of {v}");
    }
    let keys: BTreeSet<&str> = obj.keys().map(String::as_str).filter(|k| !IDENTITY.contains(k)).collect();
    let want: BTreeSet<&str> =
        ["ts_ns", "netns_cookie", "family", "laddr", "lport", "raddr", "rport", "old", "new", "time_wait", "sk"]
            .into_iter()
            .collect();
    assert_eq!(keys, want, "key set of {v}");
    assert!(v["ts_ns"].as_u64().unwrap() > 0);
    assert!(v["netns_cookie"].as_u64().is_some());
    let fam = v["family"].as_str().unwrap();
    let laddr: IpAddr = v["laddr"].as_str().unwrap().parse().unwrap();
    let raddr: IpAddr = v["raddr"].as_str().unwrap().parse().unwrap();
    match fam {
        "inet" => assert!(laddr.is_ipv4() && raddr.is_ipv4(), "{v}"),
        "inet6" => assert!(laddr.is_ipv6() && raddr.is_ipv6(), "{v}"),
        other => panic!("family {other}"),
    }
    assert!(v["lport"].as_u64().unwrap() <= 65535);
    assert!(v["rport"].as_u64().unwrap() <= 65535);
    const STATES: [&str; 13] = [
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
        "BOUND_INACTIVE",
    ];
    assert!(STATES.contains(&v["old"].as_str().unwrap()), "{v}");
    assert!(STATES.contains(&v["new"].as_str().unwrap()), "{v}");
    let tw = v["time_wait"].as_bool().unwrap();
    assert_eq!(tw, v["new"] == "CLOSE" && (v["old"] == "FIN_WAIT2" || v["old"] == "CLOSING"), "{v}");
    assert!(v["sk"].as_str().unwrap().starts_with("0x"));
}

fn ep(v: &Value, side: &str) -> SocketAddr {
    let ip: IpAddr = v[format!("{side}addr")].as_str().unwrap().parse().unwrap();
    SocketAddr::new(ip, v[format!("{side}port")].as_u64().unwrap() as u16)
}

/// Split events into socket lifetimes: same kernel socket, ended by a move to CLOSE.
fn lifetimes(events: &[Value]) -> Vec<Vec<&Value>> {
    let mut open: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    let mut done = Vec::new();
    for e in events {
        let sk = e["sk"].as_str().unwrap().to_owned();
        let life = open.entry(sk.clone()).or_default();
        life.push(e);
        if e["new"] == "CLOSE" {
            done.push(open.remove(&sk).unwrap());
        }
    }
    done.extend(open.into_values());
    done
}

fn transitions(life: &[&Value]) -> Vec<String> {
    life.iter().map(|e| format!("{}>{}", e["old"].as_str().unwrap(), e["new"].as_str().unwrap())).collect()
}

const ACTIVE: [&str; 5] =
    ["CLOSE>SYN_SENT", "SYN_SENT>ESTABLISHED", "ESTABLISHED>FIN_WAIT1", "FIN_WAIT1>FIN_WAIT2", "FIN_WAIT2>CLOSE"];
const PASSIVE_CLIENT: [&str; 5] =
    ["CLOSE>SYN_SENT", "SYN_SENT>ESTABLISHED", "ESTABLISHED>CLOSE_WAIT", "CLOSE_WAIT>LAST_ACK", "LAST_ACK>CLOSE"];
const ACTIVE_SERVER: [&str; 5] =
    ["LISTEN>SYN_RECV", "SYN_RECV>ESTABLISHED", "ESTABLISHED>FIN_WAIT1", "FIN_WAIT1>FIN_WAIT2", "FIN_WAIT2>CLOSE"];
const PASSIVE_SERVER: [&str; 5] =
    ["LISTEN>SYN_RECV", "SYN_RECV>ESTABLISHED", "ESTABLISHED>CLOSE_WAIT", "CLOSE_WAIT>LAST_ACK", "LAST_ACK>CLOSE"];

/// Churn connections in `ns` until `stop` is set.
fn churn(ns: &NetNs, stop: &AtomicBool) {
    ns.run(|| {
        while !stop.load(Ordering::Relaxed) {
            connections("127.0.0.1:0".parse().unwrap(), None, 20, Closer::Client);
            connections("[::1]:0".parse().unwrap(), None, 20, Closer::Server);
        }
    });
}

/// The transitions of the one lifetime between `local` and `remote`.
fn life_of(lives: &[Vec<&Value>], local: SocketAddr, remote: SocketAddr) -> Vec<String> {
    let found: Vec<_> =
        lives.iter().filter(|l| l.iter().any(|e| ep(e, "l") == local && ep(e, "r") == remote)).collect();
    assert_eq!(found.len(), 1, "lifetimes of {local} - {remote}: {lives:#?}");
    transitions(found[0])
}

#[test]
fn sockets_older_than_the_trace_are_handed_to_sock_ops_and_reported_once() {
    if !privileged("older_sockets") {
        return;
    }
    let err = older_sockets_traced(false);
    // Every one of the 17 from sock_ops: the tracepoint programs were detached (Linux >= 6.12).
    assert_from_sock_ops(&err, 17);
}

/// With `--all-netns` the tracepoint programs stay attached and the older listener is not
/// handed over: its new child's `LISTEN -> SYN_RECV` comes from the tracepoint, and `sock_ops`
/// (which takes the child at establishment) must not make it up a second time, even when
/// another tool's `sock_ops`, called before ours, has turned the child's flag on by then: here
/// a second `twreset trace`, attached first, on a namespace of its own.
#[test]
fn all_netns_reports_an_older_listeners_child_once() {
    if !privileged("older_sockets_all_netns") {
        return;
    }
    let err = older_sockets_traced(true);
    // From 6.12 (sockets given to sock_ops at connect()), the hand-over is skipped with a
    // message; before, there is no hand-over at all.
    if twreset_tests::kernel_at_least(6, 12) {
        assert!(err.contains("--all-netns"), "the hand-over is skipped with a message: {err}");
    }
}

/// Trace a namespace (or all, `all_netns`) while sockets older than the trace close and an
/// older listener takes one new connection; check each socket's exact transitions (17 in all).
/// Returns the tracer's stderr.
fn older_sockets_traced(all_netns: bool) -> String {
    let ns = NetNs::new(if all_netns { "olderall" } else { "older" });
    // A listener and an established pair that exist before the tracer starts.
    let (listener, client, server) = ns.run(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (l, c, s)
    });
    let (listen_at, client_at, server_at) =
        (listener.local_addr().unwrap(), client.local_addr().unwrap(), server.local_addr().unwrap());
    // With `--all-netns`, the other tool: attached after the sockets were made (its hand-over
    // covers only its own namespace) and before ours, so its `sock_ops` runs first.
    let elsewhere = all_netns.then(|| NetNs::new("elsewhere"));
    let first = elsewhere
        .as_ref()
        .map(|other| Running::start(&["trace", "--json", "--netns", other.path().to_str().unwrap()], READY));
    let path = ns.path();
    let scope = if all_netns { vec!["--all-netns"] } else { vec!["--netns", path.to_str().unwrap()] };
    let tracer = Running::start(&[&["trace", "--json"][..], &scope].concat(), READY);
    // Each close is done (its FINs and ACKs processed) before the next starts: the order of the
    // transitions below is then the kernel's, whatever the machine's speed.
    let pause = || ns.wait_quiescent();
    // The older pair closes from the client's side.
    drop(client);
    pause();
    drop(server);
    // A new connection through the older listener (its child inherits the flag when the
    // listener was handed over), closed by the server; then the listener goes.
    let (client2, server2) = ns.run(|| {
        let c = TcpStream::connect(listen_at).unwrap();
        let (s, _) = listener.accept().unwrap();
        (c, s)
    });
    let client2_at = client2.local_addr().unwrap();
    drop(server2);
    pause();
    drop(client2);
    pause();
    drop(listener);
    ns.wait_quiescent();
    let (code, out, err) = tracer.stop();
    assert_eq!(code, Some(0), "stderr: {err}");
    if let Some(first) = first {
        let (code, _, first_err) = first.stop();
        assert_eq!(code, Some(0), "stderr: {first_err}");
    }
    assert!(err.contains("events seen, 0 lost"), "{err}");
    assert_no_unexpected_warnings(&err);
    let all = ndjson(&out);
    all.iter().for_each(check_schema);
    // Other tests' namespaces show up with --all-netns; a socket address may recur across them.
    let cookie = ns.cookie();
    let events: Vec<Value> = all.into_iter().filter(|e| e["netns_cookie"] == cookie).collect();
    let lives = lifetimes(&events);
    assert_eq!(
        life_of(&lives, client_at, server_at),
        ["ESTABLISHED>FIN_WAIT1", "FIN_WAIT1>FIN_WAIT2", "FIN_WAIT2>CLOSE"]
    );
    assert_eq!(
        life_of(&lives, server_at, client_at),
        ["ESTABLISHED>CLOSE_WAIT", "CLOSE_WAIT>LAST_ACK", "LAST_ACK>CLOSE"]
    );
    assert_eq!(life_of(&lives, client2_at, listen_at), PASSIVE_CLIENT);
    assert_eq!(life_of(&lives, listen_at, client2_at), ACTIVE_SERVER);
    let listener_life: Vec<_> =
        lives.iter().filter(|l| l[0]["old"] == "LISTEN" && l[0]["new"] == "CLOSE").map(|l| transitions(l)).collect();
    assert_eq!(listener_life, [["LISTEN>CLOSE"]]);
    assert_eq!(lives.len(), 5, "{lives:#?}");
    assert_eq!(events.len(), 3 + 3 + 5 + 5 + 1);
    err
}

#[test]
fn reports_exact_transitions_of_own_sockets_and_nothing_from_bystanders() {
    if !privileged("reports_exact_transitions") {
        return;
    }
    let ns = NetNs::new("trace");
    let bystander = NetNs::new("bystander");
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| churn(&bystander, &stop));
        // A failed assertion below must still stop the churn, or the scope waits for it forever.
        let _stop = StopOnDrop(&stop);
        let path = ns.path();
        let tracer = Running::start(&["trace", "--json", "--netns", path.to_str().unwrap()], READY);
        let mut conns: Vec<(Closer, SocketAddr, SocketAddr)> = Vec::new();
        ns.run(|| {
            for server in ["127.0.0.1:0", "[::1]:0"] {
                for closer in [Closer::Client, Closer::Server] {
                    for (c, srv) in connections(server.parse().unwrap(), None, 3, closer) {
                        conns.push((closer, c, srv));
                    }
                }
            }
        });
        ns.wait_quiescent();
        let (code, out, err) = tracer.stop();
        stop.store(true, Ordering::Relaxed);
        assert_eq!(code, Some(0), "stderr: {err}");
        assert!(err.contains("events seen, 0 lost"), "summary line missing: {err}");
        // Sockets born while tracing are sock_ops' from their first transition (10 per
        // connection, 12 connections, and 2 per listener, 4 listeners), each reported once: the
        // exact lifetimes below would show a transition reported by both sources.
        assert_no_unexpected_warnings(&err);
        assert_from_sock_ops(&err, 128);

        let events = ndjson(&out);
        events.iter().for_each(check_schema);
        let cookie = ns.cookie();
        let foreign: Vec<&Value> = events.iter().filter(|e| e["netns_cookie"] != cookie).collect();
        assert!(foreign.is_empty(), "events from other namespaces: {foreign:?}");

        let lives = lifetimes(&events);
        // 12 connections x 2 sockets + 4 listeners (CLOSE>LISTEN, LISTEN>CLOSE), nothing else.
        let listeners: Vec<_> = lives.iter().filter(|l| l[0]["new"] == "LISTEN").collect();
        assert_eq!(listeners.len(), 4, "listener lifetimes");
        for l in &listeners {
            assert_eq!(transitions(l), ["CLOSE>LISTEN", "LISTEN>CLOSE"]);
        }
        assert_eq!(lives.len(), conns.len() * 2 + 4, "socket lifetimes: {lives:#?}");
        for (closer, client, server) in &conns {
            // The client socket: every event after SYN_SENT carries the full 4-tuple.
            let cl = lives
                .iter()
                .find(|l| l.len() > 1 && ep(l[1], "l") == *client && ep(l[1], "r") == *server)
                .unwrap_or_else(|| panic!("no client socket {client} -> {server}"));
            let sv = lives
                .iter()
                .find(|l| ep(l[0], "l") == *server && ep(l[0], "r") == *client)
                .unwrap_or_else(|| panic!("no server socket {server} <- {client}"));
            let (want_c, want_s) = match closer {
                Closer::Client => (ACTIVE, PASSIVE_SERVER),
                Closer::Server => (PASSIVE_CLIENT, ACTIVE_SERVER),
            };
            // Ports as the kernel's own record gives them, the last transition included (the
            // client's local port passes to its TIME_WAIT socket before FIN_WAIT2 -> CLOSE).
            assert!(cl[1..].iter().all(|e| ep(e, "l") == *client && ep(e, "r") == *server), "{cl:#?}");
            assert!(sv.iter().all(|e| ep(e, "l") == *server), "{sv:#?}");
            assert_eq!(transitions(cl), want_c, "client {client} ({closer:?} closes)");
            assert_eq!(transitions(sv), want_s, "server side of {client} ({closer:?} closes)");
            // Timestamps never go backwards within a socket.
            for life in [cl, sv] {
                assert!(life.windows(2).all(|w| w[0]["ts_ns"].as_u64() <= w[1]["ts_ns"].as_u64()));
            }
            // The active closer's last transition is the one marked as entering TIME_WAIT.
            let closer_life = if *closer == Closer::Client { cl } else { sv };
            assert_eq!(closer_life.last().unwrap()["time_wait"], true);
            let fam = if client.is_ipv4() { "inet" } else { "inet6" };
            assert!(cl.iter().chain(sv.iter()).all(|e| e["family"] == fam));
        }
    });
}

/// Runs one short trace session with `filter` args while making connections in `ns`.
fn trace_with(ns: &NetNs, filter: &[&str], work: impl FnOnce() + Send) -> Vec<Value> {
    let path = ns.path();
    let mut args = vec!["trace", "--json", "--netns", path.to_str().unwrap()];
    args.extend_from_slice(filter);
    let tracer = Running::start(&args, READY);
    ns.run(work);
    ns.wait_quiescent();
    let (code, out, err) = tracer.stop();
    assert_eq!(code, Some(0), "stderr: {err}");
    let events = ndjson(&out);
    events.iter().for_each(check_schema);
    events
}

#[test]
fn kernel_side_filters_peer_port_and_state() {
    if !privileged("kernel_side_filters") {
        return;
    }
    let ns = NetNs::new("filters");
    ns.add_lo_addr("fd00:1::2/128");
    ns.add_lo_addr("fd00:2::2/128");
    let work = || {
        connections("127.0.0.2:7002".parse().unwrap(), None, 2, Closer::Client);
        connections("127.0.0.3:7003".parse().unwrap(), None, 2, Closer::Client);
        connections("[fd00:1::2]:7004".parse().unwrap(), Some("::1".parse().unwrap()), 2, Closer::Server);
        connections("[fd00:2::2]:7005".parse().unwrap(), Some("::1".parse().unwrap()), 2, Closer::Server);
    };

    // --peer IP: only sockets whose remote address is 127.0.0.2 (the two client sockets).
    let ev = trace_with(&ns, &["--peer", "127.0.0.2"], work);
    assert_eq!(ev.len(), 2 * 5, "{ev:#?}");
    assert!(ev.iter().all(|e| e["raddr"] == "127.0.0.2"));

    // --peer CIDR (IPv6): fd00:1::/64 keeps the client sockets to fd00:1::2 only.
    let ev = trace_with(&ns, &["--peer", "fd00:1::/64"], work);
    assert_eq!(ev.len(), 2 * 5, "{ev:#?}");
    assert!(ev.iter().all(|e| e["raddr"] == "fd00:1::2"));

    // --port: local or remote port 7003: client and server sockets plus the listener.
    let ev = trace_with(&ns, &["--port", "7003"], work);
    assert_eq!(ev.len(), 2 * 10 + 2, "{ev:#?}");
    assert!(ev.iter().all(|e| e["lport"] == 7003 || e["rport"] == 7003));

    // --state time-wait: exactly one active close per connection.
    let ev = trace_with(&ns, &["--state", "time-wait"], work);
    assert_eq!(ev.len(), 8, "{ev:#?}");
    assert!(ev.iter().all(|e| e["time_wait"] == true));

    // Combined: peer prefix AND state: the IPv4 server-side children (LISTEN>SYN_RECV>ESTABLISHED).
    let ev = trace_with(&ns, &["--peer", "127.0.0.0/8", "--state", "syn-recv"], work);
    assert_eq!(ev.len(), 4 * 2, "{ev:#?}");
    assert!(ev.iter().all(|e| e["raddr"] == "127.0.0.1" && (e["lport"] == 7002 || e["lport"] == 7003)));
    assert!(ev.iter().all(|e| e["old"] == "SYN_RECV" || e["new"] == "SYN_RECV"));
}

#[test]
fn human_output_is_aligned_and_marks_time_wait() {
    if !privileged("human_output") {
        return;
    }
    let ns = NetNs::new("human");
    let path = ns.path();
    let tracer = Running::start(&["trace", "--netns", path.to_str().unwrap()], READY);
    ns.run(|| connections("127.0.0.1:7100".parse().unwrap(), None, 1, Closer::Client));
    ns.wait_quiescent();
    let (code, out, err) = tracer.stop();
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("TIME(UTC)"), "header: {out}");
    assert_eq!(lines.len(), 1 + 12, "{out}");
    let tw: Vec<&&str> = lines.iter().filter(|l| l.ends_with("(TIME_WAIT)")).collect();
    assert_eq!(tw.len(), 1, "{out}");
    assert!(tw[0].contains("FIN_WAIT2 -> CLOSE") && tw[0].contains(":7100"), "{out}");
    // Columns line up: every transition starts under the TRANSITION header.
    let at = lines[0].find("TRANSITION").unwrap();
    for l in &lines[1..] {
        assert!(l.as_bytes()[at - 1] == b' ' && l.as_bytes()[at].is_ascii_uppercase(), "misaligned: {l:?}\n{out}");
    }
    assert!(lines[1..].iter().all(|l| l.contains(&ns.name)), "namespace label by name: {out}");
}
