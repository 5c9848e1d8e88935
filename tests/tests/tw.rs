//! `twreset tw`: usage errors, and the table against `ss` in a namespace of its own.

use std::{collections::BTreeMap, net::SocketAddr};

use twreset_tests::{Closer, NetNs, SsSocket, connections, privileged, twreset};

/// TIME_WAIT sockets per `ss` (unfiltered: with a state filter `ss` drops the State column that
/// `SsSocket::parse` expects, so `NetNs::time_wait` finds nothing).
fn time_wait(ns: &NetNs) -> Vec<SsSocket> {
    ns.ss(&[]).into_iter().filter(|s| s.state == "TIME-WAIT").collect()
}

#[test]
fn tw_usage_errors_exit_2() {
    for args in [
        &["tw", "--by", "host"][..],
        &["tw", "--prefix-v4", "33"],
        &["tw", "--prefix-v6", "129"],
        &["tw", "--settle", "soon"],
        &["tw", "--netns", "/etc/hostname"],
        &["tw", "--netns", "/run/netns/x", "--all-netns"],
        &["top", "--interval", "0"],
        &["top", "--by", "nothing"],
    ] {
        let (code, _, stderr) = twreset(args);
        assert_eq!(code, Some(2), "twreset {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn top_without_a_terminal_says_so() {
    let (code, stdout, stderr) = twreset(&["top"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stdout.is_empty());
    assert_eq!(stderr.trim(), "twreset: top needs a terminal on stdout (for a one-shot table use `twreset tw`)");
}

/// Per-peer TIME_WAIT counts as `ss` shows them.
fn ss_per_peer(ns: &NetNs) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for s in time_wait(ns) {
        *m.entry(s.remote.ip().to_string()).or_insert(0) += 1;
    }
    m
}

#[test]
#[ignore = "needs the kernel TIME_WAIT feed (live::kernel_feed) wired"]
fn tw_json_equals_ss_per_peer() {
    if !privileged("tw_json_equals_ss_per_peer") {
        return;
    }
    let ns = NetNs::new("tw-json");
    for a in ["10.78.0.1/32", "10.78.0.2/32", "10.78.0.3/32", "fd78::1/128", "fd78::2/128"] {
        ns.add_lo_addr(a);
    }
    let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
    // Client-side closes: TIME_WAIT on the client, peer = the server.
    ns.run(|| connections(sa("10.78.0.2:7001"), Some("10.78.0.1".parse().unwrap()), 5, Closer::Client));
    ns.run(|| connections(sa("[fd78::2]:7002"), Some("fd78::1".parse().unwrap()), 4, Closer::Client));
    // Server-side closes: TIME_WAIT on the server, peer = the client.
    ns.run(|| connections(sa("10.78.0.3:7003"), Some("10.78.0.1".parse().unwrap()), 3, Closer::Server));
    let want = ss_per_peer(&ns);
    assert_eq!(want.values().sum::<u64>(), 12, "setup: {want:?}");

    let path = ns.path();
    let (code, stdout, stderr) = twreset(&["tw", "--json", "--netns", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert_eq!(v["by"], "peer");
    let got: BTreeMap<String, u64> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["time_wait"].as_u64().unwrap() > 0)
        .map(|r| (r["raddr"].as_str().unwrap().to_owned(), r["time_wait"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, want, "twreset tw vs ss");
    assert_eq!(v["totals"]["time_wait"], 12);
    assert_eq!(v["totals"]["drift"], 0);
    assert_eq!(v["totals"]["lost"], 0);
    for r in v["rows"].as_array().unwrap() {
        assert!(r["oldest_s"].as_f64().unwrap() >= r["newest_s"].as_f64().unwrap(), "{r}");
    }
}
