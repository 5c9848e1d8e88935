//! `twreset agent`: a real Prometheus server scrapes it and its PromQL answers equal `ss` per peer
//! and per namespace (IPv4 and IPv6), before and after a kill, for a namespace created after the
//! agent started and until one is deleted; reloads, clean exit, bad configs, and scrapers that
//! must not stall the table. The harness (agent, Prometheus, HTTP) is in `harness.rs`.

mod harness;

use std::{
    collections::BTreeMap,
    io::Write,
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use harness::{Agent, Prometheus, TempDir, eventually, free_port, get, series};
use nix::sys::signal::Signal;
use twreset_tests::{
    Closer, NetNs, Running, assert_programs_freed, connections, kernel_at_least, privileged, programs_of, twreset,
};

/// TIME_WAIT sockets of a namespace per remote IP, as `ss` lists them.
fn ss_by_peer(ns: &NetNs) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for s in ns.time_wait() {
        *m.entry(s.remote.ip().to_string()).or_default() += 1;
    }
    m
}

/// `n` client-closed connections from `client` to each server address in `ns` (the client ends
/// stay in TIME_WAIT, their peer the server address).
fn churn(ns: &NetNs, servers: &[SocketAddr], client: IpAddr, n: usize) {
    ns.run(|| {
        for s in servers {
            connections(*s, Some(client), n, Closer::Client);
        }
    });
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn agent_prometheus_answers_equal_ss_per_peer_and_namespace() {
    if !privileged("agent_prometheus_answers_equal_ss_per_peer_and_namespace") {
        return;
    }
    let v4 = NetNs::new("agent4");
    v4.add_lo_addr("10.211.0.1/24");
    v4.add_lo_addr("10.211.0.2/24");
    v4.add_lo_addr("10.211.0.3/24");
    let v6 = NetNs::new("agent6");
    v6.add_lo_addr("fd00:211::1/64");
    v6.add_lo_addr("fd00:211::2/64");
    churn(&v4, &[addr("10.211.0.2:8080")], "10.211.0.1".parse().unwrap(), 3);
    churn(&v4, &[addr("10.211.0.3:8080")], "10.211.0.1".parse().unwrap(), 5);
    churn(&v6, &[addr("[fd00:211::2]:8080")], "fd00:211::1".parse().unwrap(), 4);

    let agent = Agent::start("prom", "top_n = 200\nnetns_scan = \"500ms\"\n");
    let prom = Prometheus::start("prom", agent.port);
    eventually("the scrape is up", DEADLINE, || prom.scrape_ok());

    let matches = |ns: &NetNs| -> Result<(), String> {
        let want = ss_by_peer(ns);
        let q = format!("twreset_timewait_peer_sockets{{netns=\"{}\"}}", ns.name);
        let got = prom.by(&q, "peer");
        let total = prom.query(&format!("sum(twreset_timewait_sockets{{netns=\"{}\"}})", ns.name));
        let total = total.first().map_or(0, |(_, v)| *v as u64);
        let want_total: u64 = want.values().sum();
        if got == want && total == want_total {
            Ok(())
        } else {
            Err(format!("{}: ss {want:?}, prometheus {got:?} (total {total})", ns.name))
        }
    };
    eventually("IPv4 counts equal ss", DEADLINE, || matches(&v4));
    eventually("IPv6 counts equal ss", DEADLINE, || matches(&v6));
    assert_eq!(ss_by_peer(&v4).values().sum::<u64>(), 8, "8 IPv4 TIME_WAIT sockets made");
    assert_eq!(ss_by_peer(&v6).values().sum::<u64>(), 4, "4 IPv6 TIME_WAIT sockets made");

    // A kill through the CLI: the killed peer's series goes, the rest still equals ss.
    let netns_arg = v4.path();
    let (code, _, err) = twreset(&["kill", "--netns", netns_arg.to_str().unwrap(), "10.211.0.3"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!ss_by_peer(&v4).contains_key("10.211.0.3"));
    eventually("counts equal ss after the kill", DEADLINE, || matches(&v4));
    // Before 6.0 `kill` resets TIME_WAIT sockets with the exact-sequence RST (SOCK_DESTROY cannot
    // take them): the kernel ends them as it ends any reset by the peer.
    let cause = if kernel_at_least(6, 0) { "sock_destroy" } else { "peer_rst" };
    let killed = format!("twreset_timewait_killed_total{{netns=\"{}\",cause=\"{cause}\"}}", v4.name);
    eventually("the kills are counted by cause", DEADLINE, || match prom.query(&killed).first() {
        Some((_, v)) if *v == 5.0 => Ok(()),
        other => Err(format!("{other:?}")),
    });

    // A namespace made after the agent started appears, seeded and followed...
    let late = NetNs::new("agentlate");
    for a in ["10.212.0.1/24", "10.212.0.2/24", "fd00:212::1/64", "fd00:212::2/64"] {
        late.add_lo_addr(a);
    }
    churn(&late, &[addr("10.212.0.2:8080")], "10.212.0.1".parse().unwrap(), 2);
    churn(&late, &[addr("[fd00:212::2]:8080")], "fd00:212::1".parse().unwrap(), 3);
    eventually("a new namespace's counts equal ss", DEADLINE, || matches(&late));
    // ...and once deleted, every series of it is gone.
    let name = late.name.clone();
    drop(late);
    eventually("a deleted namespace's series are gone", DEADLINE, || {
        let left = prom.query(&format!("{{netns=\"{name}\"}}"));
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    });
    eventually("the others still equal ss", DEADLINE, || matches(&v6));

    let (code, _, err) = { agent }.run.stop();
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn agent_sighup_applies_a_good_config_and_refuses_a_bad_one() {
    if !privileged("agent_sighup_applies_a_good_config_and_refuses_a_bad_one") {
        return;
    }
    let ns = NetNs::new("agenthup");
    for i in 1..=5 {
        ns.add_lo_addr(&format!("10.213.0.{i}/24"));
    }
    let servers: Vec<SocketAddr> = (2..=5).map(|i| addr(&format!("10.213.0.{i}:8080"))).collect();
    churn(&ns, &servers, "10.213.0.1".parse().unwrap(), 2);
    let mut agent = Agent::start("hup", "top_n = 100\n");
    let peers_of = |text: &str| series(text, "twreset_timewait_peer_sockets").len();
    eventually("the namespace's 4 peers are listed", DEADLINE, || {
        let m = agent.metrics();
        let mine = series(&m, "twreset_timewait_peer_sockets").iter().filter(|(l, _)| l["netns"] == ns.name).count();
        if mine == 4 { Ok(()) } else { Err(m) }
    });

    // top_n = 1: one row, one per-namespace other row, one overall other row at most.
    std::fs::write(&agent.config, "top_n = 1\n").unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.run.pid()), Signal::SIGHUP).unwrap();
    agent.run.wait_for_stderr("configuration reloaded", DEADLINE);
    let m = agent.metrics();
    assert!(peers_of(&m) <= 3, "top_n = 1 bounds the peer rows:\n{m}");
    assert_eq!(series(&m, "twreset_timewait_sockets").len(), 2 * 2, "one namespace shown and other, 2 substates:\n{m}");

    // A bad config: refused, logged, the old one kept, still serving.
    std::fs::write(&agent.config, "top_n = \"many\"\n").unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.run.pid()), Signal::SIGHUP).unwrap();
    let line = agent.run.wait_for_stderr("configuration reload refused", DEADLINE);
    assert!(line.contains(&format!("{}:1: key `top_n`", agent.config.display())), "{line}");
    let m = agent.metrics();
    assert!(peers_of(&m) <= 3, "the old top_n still applies:\n{m}");
    assert_eq!(get(&agent.url("/healthz")).0, 200);
    let (code, _, err) = agent.run.stop();
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn agent_sigterm_exits_0_and_leaves_nothing_behind() {
    if !privileged("agent_sigterm_exits_0_and_leaves_nothing_behind") {
        return;
    }
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut agent = Agent::start("term", "");
        assert_eq!(get(&agent.url("/readyz")), (200, "ready\n".to_owned()));
        assert_eq!(get(&agent.url("/healthz")).0, 200);
        assert_eq!(get(&agent.url("/nope")).0, 404);
        let ours = programs_of(agent.run.pid() as u32);
        assert!(!ours.is_empty(), "the agent holds its programs");
        let (code, _, err) = agent.run.signal(sig);
        assert_eq!(code, Some(0), "{sig}: {err}");
        assert!(err.contains("programs detached"), "{err}");
        assert_programs_freed(&ours, sig.as_ref());
        assert!(!agent.socket.exists(), "no socket file left");
        assert!(TcpStream::connect(("127.0.0.1", agent.port)).is_err(), "the listener is closed");
    }
}

#[test]
fn agent_malformed_config_exits_2_naming_file_line_and_key() {
    let dir = TempDir::new("bad");
    let path = dir.0.join("agent.toml");
    std::fs::write(&path, "top_n = 3\n\nbogus_key = 1\n").unwrap();
    let (code, _, err) = twreset(&["agent", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("{}:3: key `bogus_key`", path.display())), "{err}");
    std::fs::write(&path, "reconcile = \"often\"\n").unwrap();
    let (code, _, err) = twreset(&["agent", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("{}:1: key `reconcile`", path.display())), "{err}");
    // Named explicitly and missing: an error too (only the default path may be missing).
    let missing = dir.0.join("missing.toml");
    let (code, _, err) = twreset(&["agent", "--config", missing.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("missing.toml"), "{err}");
}

#[test]
fn agent_silent_and_concurrent_scrapers_never_stall_the_table() {
    if !privileged("agent_silent_and_concurrent_scrapers_never_stall_the_table") {
        return;
    }
    let ns = NetNs::new("agentload");
    ns.add_lo_addr("10.214.0.1/24");
    ns.add_lo_addr("10.214.0.2/24");
    let agent = Agent::start("load", "top_n = 200\n");
    let peers = |m: &str| -> BTreeMap<String, u64> {
        series(m, "twreset_timewait_peer_sockets")
            .into_iter()
            .filter(|(l, _)| l["netns"] == ns.name)
            .map(|(l, v)| (l["peer"].clone(), v as u64))
            .collect()
    };
    // A scraper that connects and never sends anything.
    let silent: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(("127.0.0.1", agent.port)).unwrap()).collect();
    // 200 scrapes at once while the namespace churns: a fixed count of each.
    let url = agent.url("/metrics");
    let started = Instant::now();
    let (sizes, times) = std::thread::scope(|s| {
        let scrapes: Vec<_> = (0..200)
            .map(|_| {
                let url = url.clone();
                s.spawn(move || {
                    let t = Instant::now();
                    let (status, body) = get(&url);
                    assert_eq!(status, 200);
                    (body.len(), t.elapsed())
                })
            })
            .collect();
        churn(&ns, &[addr("10.214.0.2:8080")], "10.214.0.1".parse().unwrap(), 50);
        let out: Vec<(usize, Duration)> = scrapes.into_iter().map(|h| h.join().unwrap()).collect();
        (out.iter().map(|o| o.0).collect::<Vec<_>>(), out.iter().map(|o| o.1).collect::<Vec<_>>())
    });
    let slowest = times.iter().max().unwrap();
    eprintln!(
        "200 concurrent scrapes in {:?}: slowest {slowest:?}, exposition {} bytes",
        started.elapsed(),
        sizes.iter().max().unwrap()
    );
    // The table kept applying events: it equals ss, with the silent scraper still connected.
    eventually("counts equal ss after the scrapes", DEADLINE, || {
        let want = ss_by_peer(&ns);
        let got = peers(&agent.metrics());
        if got == want && want.values().sum::<u64>() == 50 {
            Ok(())
        } else {
            Err(format!("ss {want:?}, agent {got:?}"))
        }
    });
    let t = Instant::now();
    let one = agent.metrics();
    eprintln!("one scrape: {:?}, {} bytes, {} lines", t.elapsed(), one.len(), one.lines().count());
    // The silent scrapers were never answered nor allowed to hold anything up; close them.
    for mut c in silent {
        let _ = c.write_all(b"");
    }
    let (code, _, err) = { agent }.run.stop();
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn agent_notifies_systemd_ready_watchdog_and_stopping() {
    if !privileged("agent_notifies_systemd_ready_watchdog_and_stopping") {
        return;
    }
    let dir = TempDir::new("notify");
    let path = dir.0.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let config = dir.0.join("none.toml");
    std::fs::write(&config, "").unwrap();
    // WatchdogSec=1s: a ping every 500 ms.
    let mut run = Running::start_with_env(
        &["agent", "--config", config.to_str().unwrap(), "--metrics-listen", &listen],
        &[("NOTIFY_SOCKET", path.to_str().unwrap()), ("WATCHDOG_USEC", "1000000"), ("TWRESET_LOG", "info")],
        "agent ready",
    );
    let recv = || {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("a notification within the deadline");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut seen = Vec::new();
    // READY=1 first (after the seed), then watchdog pings; a fixed number of them.
    while seen.iter().filter(|m: &&String| m.as_str() == "WATCHDOG=1").count() < 2 {
        seen.push(recv());
    }
    assert_eq!(seen[0], "READY=1", "{seen:?}");
    let (code, _, err) = run.signal(Signal::SIGTERM);
    assert_eq!(code, Some(0), "{err}");
    let mut last = recv();
    while last == "WATCHDOG=1" {
        last = recv();
    }
    assert_eq!(last, "STOPPING=1");
}

#[test]
fn agent_expiry_clears_series_and_counts_expired() {
    if !privileged("agent_expiry_clears_series_and_counts_expired") {
        return;
    }
    let ns = NetNs::new("agentexp");
    ns.add_lo_addr("10.215.0.1/24");
    ns.add_lo_addr("fd00:215::1/64");
    let agent = Agent::start("exp", "top_n = 200\n");
    let prom = Prometheus::start("exp", agent.port);
    // Made after the agent started: their creations and expiries are all events it sees.
    churn(&ns, &[addr("10.215.0.1:8080")], "10.215.0.1".parse().unwrap(), 2);
    churn(&ns, &[addr("[fd00:215::1]:8080")], "fd00:215::1".parse().unwrap(), 2);
    let peers = format!("twreset_timewait_peer_sockets{{netns=\"{}\"}}", ns.name);
    eventually("4 TIME_WAIT sockets listed", DEADLINE, || {
        let got = prom.by(&peers, "peer");
        if got == ss_by_peer(&ns) && got.values().sum::<u64>() == 4 { Ok(()) } else { Err(format!("{got:?}")) }
    });
    // TIME_WAIT lasts 60 s (TCP_TIMEWAIT_LEN); kernel timers may fire a little late.
    let expired = format!("twreset_timewait_expired_total{{netns=\"{}\"}}", ns.name);
    eventually("expired sockets leave, counted as expired", Duration::from_secs(90), || {
        let left = prom.query(&peers);
        let n = prom.query(&expired).first().map_or(0.0, |(_, v)| *v);
        let ss = ns.time_wait().len();
        if left.is_empty() && n == 4.0 && ss == 0 { Ok(()) } else { Err(format!("{left:?}, expired {n}, ss {ss}")) }
    });
    let (code, _, err) = { agent }.run.stop();
    assert_eq!(code, Some(0), "{err}");
}
