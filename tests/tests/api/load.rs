//! Clients that could cost the others: silent ones, a thousand at once, and an event stream hung
//! up midway. Each time a request is still answered and the table still follows the kernel.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;
use twreset_tests::{NetNs, Running, privileged};

use crate::{agent::Agent, time_wait};

/// Let this test process hold `n` descriptors.
fn raise_nofile(n: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < n {
            lim.rlim_cur = n.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
}

fn netns_ns(name: &str, base: u8) -> NetNs {
    let ns = NetNs::new(name);
    ns.add_lo_addr(&format!("10.{base}.0.1/32"));
    ns.add_lo_addr(&format!("10.{base}.0.2/32"));
    ns
}

#[test]
fn api_silent_and_thousand_clients_do_not_stall_others() {
    if !privileged("api_silent_and_thousand_clients_do_not_stall_others") {
        return;
    }
    raise_nofile(4096);
    let agent = Agent::start("load", None, None);
    let ns = netns_ns("apiload", 75);
    let path = ns.path().display().to_string();
    // One client connects and says nothing; a thousand more each send a request and do not read.
    let _silent = UnixStream::connect(&agent.sock).unwrap();
    let mut many: Vec<UnixStream> = (0..1000)
        .map(|i| {
            let mut c = UnixStream::connect(&agent.sock).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            c.write_all(b"GET /v1/tw?all_netns=1 HTTP/1.1\r\nHost: agent\r\n\r\n").unwrap();
            c
        })
        .collect();
    // Meanwhile: a request is answered and the table follows new sockets.
    assert_eq!(agent.get("/healthz").status, 200);
    time_wait(&ns, "10.75.0.1", "10.75.0.2", 443, 7);
    agent.wait_json(&format!("/v1/tw?netns={path}"), "the table follows during the flood", |v| {
        v["totals"]["count"] == 7
    });
    // Every one of the thousand got its answer.
    for (i, c) in many.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut head = [0u8; 12];
        c.read_exact(&mut head).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(&head, b"HTTP/1.1 200", "connection {i}");
    }
    assert!(agent.log_text().lines().all(|l| !l.contains("panicked")), "{}", agent.log_text());
}

/// The identity of a lifecycle line (ts_ns differs: two programs stamp the same event).
fn ident(v: &Value) -> String {
    let mut v = v.clone();
    v.as_object_mut().unwrap().remove("ts_ns");
    v.to_string()
}

#[test]
fn api_events_match_trace_and_a_hang_up_costs_nothing() {
    if !privileged("api_events_match_trace_and_a_hang_up_costs_nothing") {
        return;
    }
    let agent = Agent::start("events", None, None);
    let ns = netns_ns("apiev", 76);
    let cookie = ns.cookie();
    let trace =
        Running::start(&["trace", "--timewait", "--json", "--netns", ns.path().to_str().unwrap()], "Ctrl-C to stop");
    let mut curl = Command::new("curl")
        .args(["-sS", "-N", "--unix-socket"])
        .arg(&agent.sock)
        .arg("http://agent/v1/events")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = curl.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    // Make TIME_WAIT sockets until the stream shows ours (its subscription starts unobserved).
    let mut seen: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.iter().any(|v| v["event"] == "tw_start") {
        assert!(Instant::now() < deadline, "no tw_start of our namespace on /v1/events");
        time_wait(&ns, "10.76.0.1", "10.76.0.2", 443, 2);
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
            let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("bad NDJSON {l:?}: {e}"));
            if v["netns_cookie"] == cookie {
                seen.push(v);
            }
        }
    }
    // Hang up mid-stream, then more events: the agent goes on serving.
    curl.kill().unwrap();
    curl.wait().unwrap();
    time_wait(&ns, "10.76.0.1", "10.76.0.2", 8443, 2);
    assert_eq!(agent.get("/healthz").status, 200);
    let (_, stdout, _) = trace.stop();
    let traced: BTreeSet<String> =
        twreset_tests::ndjson(&stdout).iter().filter(|v| v["netns_cookie"] == cookie).map(ident).collect();
    for v in &seen {
        assert!(traced.contains(&ident(v)), "{v} is not a line trace --timewait --json wrote:\n{stdout}");
    }
    agent.wait_json(&format!("/v1/tw?netns={}", ns.path().display()), "the table after the hang-up", |v| {
        v["totals"]["count"].as_u64() == Some(ns.time_wait().len() as u64)
    });
}
