//! Integration tests of `twreset kill`: real namespaces with bystanders (other peers, other ports,
//! established connections, a second namespace with the same sockets), checked against `ss`
//! before and after: exactly the selected sockets die.

use std::{
    collections::BTreeSet,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use twreset_tests::{Closer, NetNs, SsSocket, connections, ndjson, privileged, twreset};

type Set = BTreeSet<SsSocket>;

const C: &str = "10.77.0.10";
const C2: &str = "10.77.0.11";
const S1: &str = "10.77.0.100";
const S2: &str = "10.77.0.200";
const C6: &str = "fd77::2";
const S6: &str = "fd77::1";

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

/// `n` established connections to `server`; both ends are returned and stay open.
fn established(server: SocketAddr, client: &str, n: usize) -> Vec<(TcpStream, TcpStream)> {
    let l =
        TcpListener::bind(server).unwrap_or_else(|e| panic!("listen {server}: {e}; {}", ss_here()));
    (0..n)
        .map(|_| {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(server),
                socket2::Type::STREAM,
                None,
            )
            .unwrap();
            s.bind(&sa(client, 0).into()).unwrap();
            s.connect(&server.into()).unwrap();
            (TcpStream::from(s), l.accept().unwrap().0)
        })
        .collect()
}

/// `ss -tan` of the calling thread's namespace, for failure messages.
fn ss_here() -> String {
    let out = std::process::Command::new("ss")
        .args(["-tanp"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Client-closed connections from explicit client ports (no ephemeral-port search, so tens of
/// thousands are quick): every client socket ends in TIME_WAIT. Returns the client addresses.
fn fast_time_wait(
    server: SocketAddr,
    clients: &[&str],
    n: usize,
    first_port: u16,
) -> Vec<SocketAddr> {
    let l = TcpListener::bind(server).unwrap();
    (0..n)
        .map(|i| {
            let local = sa(
                clients[i % clients.len()],
                first_port + (i / clients.len()) as u16,
            );
            let s = socket2::Socket::new(
                socket2::Domain::for_address(server),
                socket2::Type::STREAM,
                None,
            )
            .unwrap();
            s.bind(&local.into())
                .unwrap_or_else(|e| panic!("bind {local}: {e}"));
            s.connect(&server.into()).unwrap();
            let (mut a, _) = l.accept().unwrap();
            // The client closes first and the server waits for its FIN, so the client (and only
            // it) ends in TIME_WAIT even when softirq processing lags under load.
            s.shutdown(std::net::Shutdown::Write).unwrap();
            assert_eq!(a.read(&mut [0u8; 1]).unwrap(), 0);
            drop(a);
            drop(s);
            local
        })
        .collect()
}

/// A namespace with addresses on `lo`, TIME_WAIT sockets to several peers and ports (IPv4 and
/// IPv6, client- and server-side), and established connections held open by the returned value.
fn populate(ns: &NetNs) -> Vec<(TcpStream, TcpStream)> {
    for a in [C, C2, S1, S2] {
        ns.add_lo_addr(&format!("{a}/24"));
    }
    ns.add_lo_addr(&format!("{S6}/64"));
    ns.add_lo_addr(&format!("{C6}/64"));
    wait_v6_local(ns, &[S6, C6]);
    ns.run(|| {
        connections(sa(S1, 80), ip(C), 4, Closer::Client);
        connections(sa(S1, 443), ip(C), 3, Closer::Client);
        connections(sa(S2, 80), ip(C), 3, Closer::Client);
        connections(sa(S1, 80), ip(C2), 2, Closer::Client);
        // Server side in TIME_WAIT: local S1:8080, remote C:ephemeral.
        connections(sa(S1, 8080), ip(C), 3, Closer::Server);
        connections(sa(S6, 80), ip(C6), 3, Closer::Client);
        connections(sa(S6, 443), ip(C6), 2, Closer::Client);
        let mut held = established(sa(S1, 80), C, 2);
        held.extend(established(sa(S1, 443), C, 1));
        held.extend(established(sa(S6, 80), C6, 1));
        held
    })
}

/// IPv6 addresses become usable when addrconf's work queue installs their local routes, which
/// lags behind `ip addr add` on a loaded machine: wait for them.
fn wait_v6_local(ns: &NetNs, addrs: &[&str]) {
    for _ in 0..500 {
        let routes = ns.exec(&["ip", "-6", "route", "show", "table", "local"]);
        if addrs.iter().all(|a| {
            routes
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(a))
        }) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{}: IPv6 addresses {addrs:?} never became usable", ns.name);
}

struct World {
    a: NetNs,
    b: NetNs,
    _held: Vec<(TcpStream, TcpStream)>,
    audit: std::path::PathBuf,
}

fn world(tag: &str) -> World {
    let (a, b) = (NetNs::new(tag), NetNs::new(&format!("{tag}b")));
    let mut held = populate(&a);
    held.extend(populate(&b));
    let audit = std::env::temp_dir().join(format!("twreset-audit-{}.log", a.name));
    World {
        a,
        b,
        _held: held,
        audit,
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.audit);
    }
}

fn snapshot(ns: &NetNs) -> Set {
    ns.ss(&[]).into_iter().collect()
}

fn tw(s: &SsSocket) -> bool {
    s.state == "TIME-WAIT"
}

fn in_net(addr: &SocketAddr, cidr: &str) -> bool {
    let net: ipnet::IpNet = cidr.parse().unwrap();
    net.contains(&addr.ip())
}

fn kill_in(w: &World, args: &[&str]) -> (Option<i32>, String, String) {
    let path = w.a.path();
    let mut full = vec![
        "kill",
        "--netns",
        path.to_str().unwrap(),
        "--audit-log",
        w.audit.to_str().unwrap(),
    ];
    full.extend_from_slice(args);
    twreset(&full)
}

/// Run `kill args` in namespace A; exactly the sockets `selected` picks from `ss` must die, in A
/// only, and the JSON summary must agree.
fn check_kill(w: &World, args: &[&str], selected: impl Fn(&SsSocket) -> bool) -> Set {
    let (before_a, before_b) = (snapshot(&w.a), snapshot(&w.b));
    let expect: Set = before_a.iter().filter(|s| selected(s)).cloned().collect();
    assert!(!expect.is_empty(), "scenario selects nothing for {args:?}");
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let (code, out, err) = kill_in(w, &json_args);
    assert_eq!(code, Some(0), "kill {args:?}: {err}");
    let lines = ndjson(&out);
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["killed"], expect.len() as u64, "{out}");
    assert_eq!(summary["failed"], 0);
    let after_a = snapshot(&w.a);
    let want: Set = before_a.difference(&expect).cloned().collect();
    assert_eq!(
        after_a, want,
        "kill {args:?}: namespace A must lose exactly {expect:#?}"
    );
    assert_eq!(
        snapshot(&w.b),
        before_b,
        "the second namespace must be untouched"
    );
    expect
}

#[test]
fn kill_by_ips_cutter_form() {
    if !privileged("kill_by_ips_cutter_form") {
        return;
    }
    let w = world("kip");
    let killed = check_kill(&w, &[S1, S2], |s| {
        tw(s) && [sa(S1, 0).ip(), sa(S2, 0).ip()].contains(&s.remote.ip())
    });
    assert_eq!(killed.len(), 4 + 3 + 3 + 2);
    // The audit log got one line for the batch.
    let audit = std::fs::read_to_string(&w.audit).unwrap();
    let lines = ndjson(&audit);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["killed"], 12);
    assert_eq!(lines[0]["uid"], 0);
    assert!(lines[0]["selector"].as_str().unwrap().contains(S2));
}

#[test]
fn kill_by_cidr() {
    if !privileged("kill_by_cidr") {
        return;
    }
    let w = world("kcidr");
    check_kill(&w, &["10.77.0.64/26"], |s| {
        tw(s) && in_net(&s.remote, "10.77.0.64/26")
    });
}

#[test]
fn kill_by_ip_port() {
    if !privileged("kill_by_ip_port") {
        return;
    }
    let w = world("kipp");
    check_kill(&w, &[&format!("{S1}:443")], |s| {
        tw(s) && s.remote == sa(S1, 443)
    });
}

#[test]
fn kill_by_port() {
    if !privileged("kill_by_port") {
        return;
    }
    let w = world("kport");
    let k = check_kill(&w, &["--port", "443"], |s| tw(s) && s.remote.port() == 443);
    assert!(
        k.iter().any(|s| s.remote.is_ipv6()) && k.iter().any(|s| s.remote.is_ipv4()),
        "both families"
    );
}

#[test]
fn kill_by_local() {
    if !privileged("kill_by_local") {
        return;
    }
    let w = world("klocal");
    check_kill(&w, &["--local", &format!("{S1}:8080")], |s| {
        tw(s) && s.local == sa(S1, 8080)
    });
    check_kill(&w, &["--local", C2], |s| {
        tw(s) && s.local.ip() == sa(C2, 0).ip()
    });
}

#[test]
fn kill_ipv6() {
    if !privileged("kill_ipv6") {
        return;
    }
    let w = world("kv6");
    check_kill(&w, &[&format!("[{S6}]:443")], |s| {
        tw(s) && s.remote == sa(S6, 443)
    });
    check_kill(&w, &["fd77::/64"], |s| {
        tw(s) && in_net(&s.remote, "fd77::/64")
    });
}

#[test]
fn kill_all_keeps_established_and_other_namespace() {
    if !privileged("kill_all_keeps_established_and_other_namespace") {
        return;
    }
    let w = world("kall");
    check_kill(&w, &["--all"], tw);
    assert_eq!(
        snapshot(&w.a).iter().filter(|s| s.state == "ESTAB").count(),
        8,
        "established connections survive"
    );
}

#[test]
fn older_than_and_limit_pick_the_oldest() {
    if !privileged("older_than_and_limit_pick_the_oldest") {
        return;
    }
    let w = world("kage");
    // World sockets are old by now; three fresh ones to another port are young.
    std::thread::sleep(Duration::from_millis(2500));
    w.a.run(|| connections(sa(S2, 9999), ip(C), 3, Closer::Client));
    let fresh = |s: &SsSocket| s.remote == sa(S2, 9999);
    check_kill(&w, &["--older-than", "1500ms", S2], |s| {
        tw(s) && s.remote.ip() == sa(S2, 0).ip() && !fresh(s)
    });
    // --limit takes the oldest first: of 2 old (C2 -> S1:80) and 3 young ones, the old ones go.
    std::thread::sleep(Duration::from_millis(1500));
    w.a.run(|| connections(sa(S1, 9998), ip(C2), 3, Closer::Client));
    check_kill(&w, &["--limit", "2", "--local", C2], |s| {
        tw(s) && s.local.ip() == sa(C2, 0).ip() && s.remote.port() != 9998
    });
}

#[test]
fn established_survive_default_and_die_with_state_established() {
    if !privileged("established_survive_default_and_die_with_state_established") {
        return;
    }
    let w = world("kest");
    let mut pairs = w.a.run(|| established(sa(S1, 7000), C, 2));
    // Default state (TIME_WAIT): nothing to kill on that port, the connections live on.
    let before = snapshot(&w.a);
    let (code, out, err) = kill_in(&w, &["--port", "7000"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("selected 0"), "{out}");
    assert_eq!(snapshot(&w.a), before);
    // --state established: the client sockets (remote port 7000) die, their peers get the
    // kernel's RST (so they vanish from `ss` too) and the server application sees a reset.
    let (code, out, err) = kill_in(&w, &["--state", "established", "--port", "7000", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(ndjson(&out).pop().unwrap()["killed"], 2, "{out}");
    let gone: Set = before.difference(&snapshot(&w.a)).cloned().collect();
    let want: Set = before
        .iter()
        .filter(|s| s.state == "ESTAB" && (s.remote.port() == 7000 || s.local.port() == 7000))
        .cloned()
        .collect();
    assert_eq!(want.len(), 4);
    assert_eq!(gone, want);
    assert!(snapshot(&w.a).is_subset(&before));
    for (_client, server) in &mut pairs {
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 8];
        let e = server
            .read(&mut buf)
            .expect_err("peer must see a reset, not data or EOF");
        assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    }
}

#[test]
fn dry_run_lists_exactly_what_a_real_run_kills() {
    if !privileged("dry_run_lists_exactly_what_a_real_run_kills") {
        return;
    }
    let w = world("kdry");
    let before = snapshot(&w.a);
    let (code, out, err) = kill_in(&w, &["--dry-run", "--json", S1]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(snapshot(&w.a), before, "dry run kills nothing");
    let pick = |text: &str, result: &str| -> BTreeSet<(String, String)> {
        ndjson(text)
            .iter()
            .filter(|v| v["type"] == "socket")
            .inspect(|v| assert_eq!(v["result"], result))
            .map(|v| {
                (
                    v["local"].as_str().unwrap().to_owned(),
                    v["remote"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let listed = pick(&out, "would_kill");
    assert_eq!(listed.len(), 4 + 3 + 2);
    // The human form lists them too.
    let (_, human, _) = kill_in(&w, &["--dry-run", S1]);
    assert_eq!(
        human.lines().filter(|l| l.contains("TIME_WAIT")).count(),
        listed.len(),
        "{human}"
    );
    assert!(!w.audit.exists(), "dry runs are not audited");
    let (code, out, err) = kill_in(&w, &["--json", S1]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(pick(&out, "killed"), listed);
    let gone: Set = before.difference(&snapshot(&w.a)).cloned().collect();
    let gone: BTreeSet<_> = gone
        .iter()
        .map(|s| (s.local.to_string(), s.remote.to_string()))
        .collect();
    assert_eq!(gone, listed);
}

#[test]
fn bad_selectors_exit_2_and_touch_nothing() {
    if !privileged("bad_selectors_exit_2_and_touch_nothing") {
        return;
    }
    let w = world("kbad");
    let before = snapshot(&w.a);
    for (args, needle) in [
        (vec!["300.1.1.1"], "not an IP"),
        (vec!["10.77.0.0/33"], "/33"),
        (vec!["--port", "70000"], "out of range"),
        (vec!["10.77.0.100:70000"], "out of range"),
        (vec!["--state", "bogus", S1], "unknown TCP state"),
        (vec![], "no selector"),
        (vec!["--state", "established"], "no selector"),
        (vec!["--all", S1], "--all cannot be combined"),
        (
            vec!["--state", "established", "--older-than", "5s", S1],
            "TIME_WAIT sockets only",
        ),
        (vec!["--older-than", "5 parsecs", S1], "not a duration"),
    ] {
        let (code, _, err) = kill_in(&w, &args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let (code, _, err) = twreset(&["kill", "--netns", "/etc/hostname", S1]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a network namespace"), "{err}");
    assert_eq!(snapshot(&w.a), before);
    assert!(!w.audit.exists());
}

#[test]
fn churn_to_other_peers_during_a_large_kill() {
    if !privileged("churn_to_other_peers_during_a_large_kill") {
        return;
    }
    let ns = NetNs::new("kchurn");
    let clients = ["10.78.0.1", "10.78.0.2", "10.78.0.3", "10.78.0.4"];
    for a in clients.iter().chain(&["10.78.1.1", "10.78.2.1"]) {
        ns.add_lo_addr(&format!("{a}/16"));
    }
    let target = sa("10.78.1.1", 80);
    let other = sa("10.78.2.1", 80);
    let doomed = ns.run(|| fast_time_wait(target, &clients, 20_000, 20_000));
    // (`ss` with a state filter drops the state column, so filter the full listing.)
    let listing = ns.ss(&[]);
    let n = listing
        .iter()
        .filter(|s| tw(s) && s.remote == target)
        .count();
    let states: std::collections::BTreeMap<&str, usize> =
        listing.iter().fold(Default::default(), |mut m, s| {
            *m.entry(s.state.as_str()).or_default() += 1;
            m
        });
    assert_eq!(
        n,
        20_000,
        "states {states:?}, tw overflow {}",
        ns.tcp_ext("TCPTimeWaitOverflow")
    );
    let held = ns.run(|| established(target, clients[0], 3));
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (stop, path) = (stop.clone(), ns.path());
        std::thread::spawn(move || {
            let f = std::fs::File::open(path).unwrap();
            nix::sched::setns(
                std::os::fd::AsFd::as_fd(&f),
                nix::sched::CloneFlags::CLONE_NEWNET,
            )
            .unwrap();
            let l = TcpListener::bind(other).unwrap();
            let mut made = Vec::new();
            let mut live = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let c = TcpStream::connect(other).unwrap();
                let (mut a, _) = l.accept().unwrap();
                made.push(c.local_addr().unwrap());
                if made.len() % 10 == 0 {
                    live.push((c, a)); // stays established
                } else {
                    // Client side ends in TIME_WAIT (close order as in fast_time_wait).
                    c.shutdown(std::net::Shutdown::Write).unwrap();
                    assert_eq!(a.read(&mut [0u8; 1]).unwrap(), 0);
                    drop(a);
                    drop(c);
                }
            }
            (made, live)
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let (code, out, err) = twreset(&[
        "kill",
        "--netns",
        ns.path().to_str().unwrap(),
        "--audit-log",
        "/dev/null",
        "--json",
        "10.78.1.1",
    ]);
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let (made, live) = churn.join().unwrap();
    assert_eq!(code, Some(0), "{err}");
    let summary = ndjson(&out).pop().unwrap();
    assert_eq!(summary["killed"], 20_000, "{summary}");
    assert!(
        made.len() > 10,
        "churn ran during the kill ({} connections)",
        made.len()
    );
    let after: Vec<SsSocket> = ns.ss(&[]);
    assert!(
        !after.iter().any(|s| tw(s) && doomed.contains(&s.local)),
        "every selected socket died"
    );
    let to_other: BTreeSet<SocketAddr> = after
        .iter()
        .filter(|s| s.remote == other)
        .map(|s| s.local)
        .collect();
    let missing: Vec<_> = made.iter().filter(|a| !to_other.contains(a)).collect();
    assert!(
        missing.is_empty(),
        "churn sockets outside the selector died: {missing:?}"
    );
    assert_eq!(
        after
            .iter()
            .filter(|s| s.state == "ESTAB" && s.remote == target)
            .count(),
        3
    );
    drop((held, live));
}

#[test]
fn rst_refuses_with_rfc1337() {
    if !privileged("rst_refuses_with_rfc1337") {
        return;
    }
    let w = world("krfc");
    w.a.sysctl("net.ipv4.tcp_rfc1337", "1");
    let before = snapshot(&w.a);
    let (code, _, err) = kill_in(&w, &["--method", "rst", S1]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("tcp_rfc1337=1"), "{err}");
    assert_eq!(snapshot(&w.a), before);
}

#[test]
fn all_netns_covers_every_namespace() {
    if !privileged("all_netns_covers_every_namespace") {
        return;
    }
    // Addresses no other test uses: --all-netns sees every namespace on the host.
    let (a, b) = (NetNs::new("kalla"), NetNs::new("kallb"));
    for ns in [&a, &b] {
        ns.add_lo_addr("10.79.0.1/24");
        ns.add_lo_addr("10.79.0.2/24");
        ns.run(|| connections(sa("10.79.0.2", 80), ip("10.79.0.1"), 3, Closer::Client));
        assert_eq!(ns.ss(&[]).iter().filter(|s| tw(s)).count(), 3);
    }
    let (code, out, err) = twreset(&["kill", "--all-netns", "--dry-run", "--json", "10.79.0.2:80"]);
    assert_eq!(code, Some(0), "{err}");
    let names: BTreeSet<String> = ndjson(&out)
        .iter()
        .filter(|v| v["type"] == "socket")
        .map(|v| v["netns"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        names.contains(&a.name) && names.contains(&b.name),
        "{names:?}"
    );
    let (code, _, err) = twreset(&[
        "kill",
        "--all-netns",
        "--audit-log",
        "/dev/null",
        "10.79.0.2:80",
    ]);
    assert_eq!(code, Some(0), "{err}");
    for ns in [&a, &b] {
        assert!(!ns.ss(&[]).iter().any(tw), "{}: TIME_WAIT left", ns.name);
    }
}

/// `Tcp: InSegs` of a namespace (/proc/net/snmp): SOCK_DESTROY sends no packet to a TIME_WAIT
/// socket, a RST kill delivers exactly one segment per socket.
fn tcp_in_segs(ns: &NetNs) -> u64 {
    let text = ns.exec(&["cat", "/proc/net/snmp"]);
    let mut lines = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "InSegs")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

#[test]
fn rst_kills_time_wait_with_exact_sequence() {
    if !privileged("rst_kills_time_wait_with_exact_sequence") {
        return;
    }
    let w = world("krst");
    let segs = tcp_in_segs(&w.a);
    let killed = check_kill(&w, &["--method", "rst", &format!("{S1}:80")], |s| {
        tw(s) && s.remote == sa(S1, 80)
    });
    assert_eq!(
        tcp_in_segs(&w.a) - segs,
        killed.len() as u64,
        "one RST segment per socket, no SOCK_DESTROY"
    );
    let v6 = check_kill(&w, &["--method", "rst", "fd77::/64"], |s| {
        tw(s) && in_net(&s.remote, "fd77::/64")
    });
    assert_eq!(v6.len(), 5);
    let audit = ndjson(&std::fs::read_to_string(&w.audit).unwrap());
    assert!(audit.iter().all(|l| l["method"] == "rst"));
}

#[test]
fn rst_resets_both_ends_of_established() {
    if !privileged("rst_resets_both_ends_of_established") {
        return;
    }
    let w = world("krste");
    let mut pairs = w.a.run(|| {
        let p = established(sa(S1, 7001), C, 2);
        for (c, s) in &p {
            // Traffic first, so the sequence numbers are not the initial ones.
            (&*c).write_all(b"ping").unwrap();
            let mut b = [0u8; 4];
            (&*s).read_exact(&mut b).unwrap();
            (&*s).write_all(b"pong!").unwrap();
            let mut b = [0u8; 5];
            (&*c).read_exact(&mut b).unwrap();
        }
        p
    });
    let before = snapshot(&w.a);
    let (code, out, err) = kill_in(
        &w,
        &[
            "--method",
            "rst",
            "--state",
            "established",
            "--port",
            "7001",
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(ndjson(&out).pop().unwrap()["killed"], 2, "{out}");
    let gone: Set = before.difference(&snapshot(&w.a)).cloned().collect();
    let want: Set = before
        .iter()
        .filter(|s| s.remote.port() == 7001 || s.local.port() == 7001)
        .cloned()
        .collect();
    assert_eq!((gone.len(), &gone), (4, &want));
    for (client, server) in &mut pairs {
        for s in [client, server] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let e = s
                .read(&mut [0u8; 8])
                .expect_err("both ends must see a reset");
            assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
        }
    }
}
