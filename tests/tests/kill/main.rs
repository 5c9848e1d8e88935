//! Integration tests of `twreset kill`: real namespaces with bystanders (other peers, other ports,
//! established connections, a second namespace with the same sockets), checked against `ss`
//! before and after: exactly the selected sockets die.

mod rst;
mod world;

use std::{
    collections::BTreeSet,
    io::{ErrorKind, Read},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use twreset_tests::{Closer, NetNs, SsSocket, connections, ndjson, privileged, slowdown, twreset};

use world::*;

#[test]
fn kill_by_ips_cutter_form() {
    if !privileged("kill_by_ips_cutter_form") {
        return;
    }
    let w = world("kip");
    let killed = check_kill(&w, &[S1, S2], |s| tw(s) && [sa(S1, 0).ip(), sa(S2, 0).ip()].contains(&s.remote.ip()));
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
    check_kill(&w, &["10.77.0.64/26"], |s| tw(s) && in_net(&s.remote, "10.77.0.64/26"));
}

#[test]
fn kill_by_ip_port() {
    if !privileged("kill_by_ip_port") {
        return;
    }
    let w = world("kipp");
    check_kill(&w, &[&format!("{S1}:443")], |s| tw(s) && s.remote == sa(S1, 443));
}

#[test]
fn kill_by_port() {
    if !privileged("kill_by_port") {
        return;
    }
    let w = world("kport");
    let k = check_kill(&w, &["--port", "443"], |s| tw(s) && s.remote.port() == 443);
    assert!(k.iter().any(|s| s.remote.is_ipv6()) && k.iter().any(|s| s.remote.is_ipv4()), "both families");
}

#[test]
fn kill_by_local() {
    if !privileged("kill_by_local") {
        return;
    }
    let w = world("klocal");
    check_kill(&w, &["--local", &format!("{S1}:8080")], |s| tw(s) && s.local == sa(S1, 8080));
    check_kill(&w, &["--local", C2], |s| tw(s) && s.local.ip() == sa(C2, 0).ip());
}

#[test]
fn kill_ipv6() {
    if !privileged("kill_ipv6") {
        return;
    }
    let w = world("kv6");
    check_kill(&w, &[&format!("[{S6}]:443")], |s| tw(s) && s.remote == sa(S6, 443));
    check_kill(&w, &["fd77::/64"], |s| tw(s) && in_net(&s.remote, "fd77::/64"));
}

#[test]
fn kill_all_keeps_established_and_other_namespace() {
    if !privileged("kill_all_keeps_established_and_other_namespace") {
        return;
    }
    let w = world("kall");
    check_kill(&w, &["--all"], tw);
    assert_eq!(snapshot(&w.a).iter().filter(|s| s.state == "ESTAB").count(), 8, "established connections survive");
}

#[test]
fn older_than_picks_the_old() {
    if !privileged("older_than_picks_the_old") {
        return;
    }
    let w = world("kage");
    // World sockets are old by now; three fresh ones to another port are young. The margins
    // are wide on both sides (world sockets 5 s old or more, fresh ones under 2.5 s when the
    // kill reads their timers), so a slow or loaded machine does not move a socket across. Under
    // qemu's TCG (`slowdown` 5) the fresh ones are read about 4 s after they were made: the
    // threshold and the world's head start grow with the slowdown (8.5 s and 11 s there), while
    // the world's sockets stay well inside their 60 s.
    let threshold_ms = 2500 + 1500 * u64::from(slowdown() - 1);
    std::thread::sleep(Duration::from_millis(threshold_ms + 2500));
    w.a.run(|| connections(sa(S2, 9999), ip(C), 3, Closer::Client));
    let fresh = |s: &SsSocket| s.remote == sa(S2, 9999);
    let older = format!("{threshold_ms}ms");
    check_kill(&w, &["--older-than", &older, S2], |s| tw(s) && s.remote.ip() == sa(S2, 0).ip() && !fresh(s));
}

#[test]
fn limit_picks_the_oldest() {
    if !privileged("limit_picks_the_oldest") {
        return;
    }
    let w = world("klim");
    // --limit takes the oldest first: of 2 old (C2 -> S1:80) and 3 young ones, the old ones go.
    // (Age order needs no margin: the old ones are seconds older.)
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
        server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 8];
        let e = server.read(&mut buf).expect_err("peer must see a reset, not data or EOF");
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
            .map(|v| (v["local"].as_str().unwrap().to_owned(), v["remote"].as_str().unwrap().to_owned()))
            .collect()
    };
    let listed = pick(&out, "would_kill");
    assert_eq!(listed.len(), 4 + 3 + 2);
    // The human form lists them too.
    let (_, human, _) = kill_in(&w, &["--dry-run", S1]);
    assert_eq!(human.lines().filter(|l| l.contains("TIME_WAIT")).count(), listed.len(), "{human}");
    assert!(!w.audit.exists(), "dry runs are not audited");
    let (code, out, err) = kill_in(&w, &["--json", S1]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(pick(&out, "killed"), listed);
    let gone: Set = before.difference(&snapshot(&w.a)).cloned().collect();
    let gone: BTreeSet<_> = gone.iter().map(|s| (s.local.to_string(), s.remote.to_string())).collect();
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
        (vec!["--state", "established", "--older-than", "5s", S1], "TIME_WAIT sockets only"),
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
    // (`ss` with a state filter drops the state column, so filter the full listing.) A dump
    // can skip entries while other sockets of the namespace are being freed, so let the server
    // side settle before counting.
    let count = || ns.ss(&[]).iter().filter(|s| tw(s) && s.remote == target).count();
    ns.wait_quiescent();
    let mut n = count();
    twreset_tests::poll_until("20000 TIME_WAIT sockets in the dump", || {
        n = count();
        n == 20_000
    });
    assert_eq!(n, 20_000, "tw overflow {}", ns.tcp_ext("TCPTimeWaitOverflow"));
    let held = ns.run(|| established(target, clients[0], 3));
    // Churn to another peer during the kill: a fixed number of connections at most (it stops
    // earlier when the kill is done); the kill starts once some exist.
    const CHURN_MAX: usize = 20_000;
    let stop = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let churn = {
        let (stop, path) = (stop.clone(), ns.path());
        std::thread::spawn(move || {
            let f = std::fs::File::open(path).unwrap();
            nix::sched::setns(std::os::fd::AsFd::as_fd(&f), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = TcpListener::bind(other).unwrap();
            let mut made = Vec::new();
            let mut live = Vec::new();
            while !stop.load(Ordering::Relaxed) && made.len() < CHURN_MAX {
                if made.len() == 50 {
                    started_tx.send(()).unwrap();
                }
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
    started_rx.recv().expect("churn started");
    let (code, out, err) =
        twreset(&["kill", "--netns", ns.path().to_str().unwrap(), "--audit-log", "/dev/null", "--json", "10.78.1.1"]);
    stop.store(true, Ordering::Relaxed);
    let (made, live) = churn.join().unwrap();
    assert_eq!(code, Some(0), "{err}");
    let mut lines = ndjson(&out);
    let summary = lines.pop().unwrap();
    let killed: BTreeSet<SocketAddr> = lines
        .iter()
        .filter(|v| v["result"] == "killed")
        .map(|v| v["local"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(summary["killed"], killed.len() as u64, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    let doomed: BTreeSet<SocketAddr> = doomed.into_iter().collect();
    assert!(killed.is_subset(&doomed), "only selected sockets were killed");
    // The snapshot is one dump taken while churn frees sockets next to the doomed ones, and a
    // sock_diag dump can skip a few entries then (as `ss` can): those are left alone, not lost.
    assert!(killed.len() >= 19_000, "the snapshot saw {} of 20000", killed.len());
    assert!(made.len() >= 50, "the kill started after 50 churn connections ({} made)", made.len());
    ns.wait_quiescent(); // the churn's last closes
    let after: Vec<SsSocket> = ns.ss(&[]);
    let left: BTreeSet<SocketAddr> = after.iter().filter(|s| tw(s) && s.remote == target).map(|s| s.local).collect();
    assert!(left.is_disjoint(&killed), "every killed socket is gone");
    assert_eq!(
        left,
        doomed.difference(&killed).copied().collect(),
        "selected sockets the snapshot did not see are untouched"
    );
    let to_other: BTreeSet<SocketAddr> = after.iter().filter(|s| s.remote == other).map(|s| s.local).collect();
    let missing: Vec<_> = made.iter().filter(|a| !to_other.contains(a)).collect();
    assert!(missing.is_empty(), "churn sockets outside the selector died: {missing:?}");
    assert_eq!(after.iter().filter(|s| s.state == "ESTAB" && s.remote == target).count(), 3);
    drop((held, live));
}

#[test]
fn all_netns_covers_every_namespace() {
    if !privileged("all_netns_covers_every_namespace") {
        return;
    }
    // --all-netns sees every namespace on the host, those of other tests and of other runs
    // included: addresses made of this process's id, which nothing else uses at the same time.
    let net = twreset_tests::private_net();
    let (client, server) = (format!("{net}.1"), format!("{net}.2"));
    let (a, b) = (NetNs::new("kalla"), NetNs::new("kallb"));
    for ns in [&a, &b] {
        ns.add_lo_addr(&format!("{client}/24"));
        ns.add_lo_addr(&format!("{server}/24"));
        ns.run(|| connections(sa(&server, 80), ip(&client), 3, Closer::Client));
        assert_eq!(ns.ss(&[]).iter().filter(|s| tw(s)).count(), 3);
    }
    let target = format!("{server}:80");
    let (code, out, err) = twreset(&["kill", "--all-netns", "--dry-run", "--json", &target]);
    assert_eq!(code, Some(0), "{err}");
    let names: BTreeSet<String> = ndjson(&out)
        .iter()
        .filter(|v| v["type"] == "socket")
        .map(|v| v["netns"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, BTreeSet::from([a.name.clone(), b.name.clone()]), "exactly the two namespaces");
    let (code, _, err) = twreset(&["kill", "--all-netns", "--audit-log", "/dev/null", &target]);
    assert_eq!(code, Some(0), "{err}");
    for ns in [&a, &b] {
        assert!(!ns.ss(&[]).iter().any(tw), "{}: TIME_WAIT left", ns.name);
    }
}

#[test]
fn preflight_refuses_without_cap_net_admin() {
    if !privileged("preflight_refuses_without_cap_net_admin") {
        return;
    }
    let w = world("kcap");
    let before = snapshot(&w.a);
    let bin = twreset_tests::bin();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &w.a.name, "setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"])
        .arg(&bin)
        .args(["kill", "--all", "--audit-log", w.audit.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("CAP_NET_ADMIN"), "{err}");
    assert_eq!(snapshot(&w.a), before, "nothing was touched");
}

#[test]
fn default_state_includes_fin_wait2_timewait_sockets() {
    if !privileged("default_state_includes_fin_wait2_timewait_sockets") {
        return;
    }
    let w = world("kfw2");
    // The client closes, the server application never does: the orphaned client socket becomes a
    // TIME_WAIT socket in substate FIN_WAIT2 (`ss`: FIN-WAIT-2), the server one sits in CLOSE_WAIT.
    let _servers: Vec<TcpStream> = w.a.run(|| {
        established(sa(S1, 7002), C, 2)
            .into_iter()
            .map(|(c, s)| {
                drop(c);
                s
            })
            .collect()
    });
    settle(&w.a);
    let fw2 = |s: &SsSocket| s.state == "FIN-WAIT-2" && s.remote == sa(S1, 7002);
    assert_eq!(snapshot(&w.a).iter().filter(|s| fw2(s)).count(), 2);
    // `--state fin-wait-2` means full FIN_WAIT2 sockets: these are not.
    let before = snapshot(&w.a);
    let (code, out, err) = kill_in(&w, &["--state", "fin-wait-2", &format!("{S1}:7002")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("selected 0"), "{out}");
    assert_eq!(snapshot(&w.a), before);
    check_kill(&w, &[&format!("{S1}:7002")], fw2);
}
