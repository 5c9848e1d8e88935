//! Integration tests of the agent's control API: the real `twreset agent`, Debian's curl over its
//! unix socket, TIME_WAIT sockets in test namespaces, and the CLI through the agent compared with
//! `--direct` on the same state.

mod agent;
mod load;

use std::net::{IpAddr, SocketAddr};

use agent::{Agent, As, kill_lines, test_gid, timeless};
use serde_json::Value;
use twreset_tests::{Closer, NetNs, connections, privileged};

/// `n` TIME_WAIT sockets (client side) from `client` to `server:port` inside `ns`.
fn time_wait(ns: &NetNs, client: &str, server: &str, port: u16, n: usize) {
    let (c, s): (IpAddr, IpAddr) = (client.parse().unwrap(), server.parse().unwrap());
    ns.run(|| connections(SocketAddr::new(s, port), Some(c), n, Closer::Client));
}

/// A namespace with TIME_WAIT sockets to two IPv4 peers and one IPv6 peer.
fn world(tag: &str, base: u8) -> NetNs {
    let ns = NetNs::new(tag);
    let a = |last: u8| format!("10.{base}.0.{last}");
    for addr in [a(1), a(2), a(3)] {
        ns.add_lo_addr(&format!("{addr}/32"));
    }
    let v6 = |last: u8| format!("fd00:{base}::{last}");
    ns.add_lo_addr(&format!("{}/128", v6(1)));
    ns.add_lo_addr(&format!("{}/128", v6(2)));
    time_wait(&ns, &a(1), &a(2), 443, 5);
    time_wait(&ns, &a(1), &a(3), 80, 3);
    time_wait(&ns, &v6(1), &v6(2), 8443, 2);
    ns
}

fn stdout(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn api_tw_endpoint_equals_cli_direct() {
    if !privileged("api_tw_endpoint_equals_cli_direct") {
        return;
    }
    let agent = Agent::start("tw", None, None);
    let ns = world("apitw", 71);
    let path = ns.path().display().to_string();
    let sock = agent.sock.display().to_string();
    agent.wait_json(&format!("/v1/tw?netns={path}"), "the agent sees the 10 sockets", |v| v["totals"]["count"] == 10);
    for by in ["peer", "prefix", "port", "local", "dest"] {
        let api = agent.get(&format!("/v1/tw?by={by}&netns={path}"));
        assert_eq!(api.status, 200, "{api:?}");
        let (direct, _) = agent.twreset(None, &["tw", "--direct", "--json", "--by", by, "--netns", &path]);
        let (via, _) = agent.twreset(None, &["tw", "--json", "--by", by, "--netns", &path, "--agent-socket", &sock]);
        let direct = timeless(&json(&stdout(&direct)));
        assert_eq!(timeless(&api.json()), direct, "GET /v1/tw?by={by} against tw --direct --json");
        assert_eq!(timeless(&json(&stdout(&via))), direct, "tw --json through the agent, by {by}");
    }
    // The human table: the same header and rows either way (ages aside).
    let cols = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with("tw sockets") && !l.starts_with("early kills"))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                format!("{} {} {}", f[0], f[1], f[2])
            })
            .collect()
    };
    let (direct, _) = agent.twreset(None, &["tw", "--direct", "--netns", &path]);
    let (via, _) = agent.twreset(None, &["tw", "--netns", &path, "--agent-socket", &sock]);
    assert_eq!(cols(&stdout(&via)), cols(&stdout(&direct)));
    assert!(stdout(&via).starts_with("PEER "), "{}", stdout(&via));
    // By default the caller's own namespace: a curl run inside the test namespace sees its sockets.
    let inside = ns.exec(&["curl", "-sS", "--unix-socket", &sock, "http://agent/v1/tw"]);
    assert_eq!(json(&inside)["totals"]["count"], 10, "{inside}");
    assert!(agent.get("/v1/tw?all_netns=1").json()["totals"]["count"].as_u64().unwrap() >= 10);
    // The names that label destinations, for a client that cannot enter namespaces itself.
    assert_eq!(agent.get("/v1/netns").json()[ns.cookie().to_string()], ns.name.as_str());
}

#[test]
fn api_kill_through_agent_and_direct_agree() {
    if !privileged("api_kill_through_agent_and_direct_agree") {
        return;
    }
    let agent = Agent::start("kill", None, None);
    let (one, two) = (world("apik1", 72), world("apik2", 72));
    let sock = agent.sock.display().to_string();
    let (p1, p2) = (one.path().display().to_string(), two.path().display().to_string());
    agent.wait_json(&format!("/v1/tw?netns={p1}&netns={p2}"), "20 sockets seen", |v| v["totals"]["count"] == 20);
    // The same dry run three ways: direct, through the agent, and the API itself.
    let dry = ["kill", "--dry-run", "--json", "10.72.0.2", "--port", "443", "--netns", &p1];
    let (direct, _) = agent.twreset(None, &[&dry[..], &["--direct"]].concat());
    let (via, _) = agent.twreset(None, &[&dry[..], &["--agent-socket", &sock]].concat());
    let body = format!("{{\"peers\":[\"10.72.0.2\"],\"port\":[443],\"netns\":[\"{p1}\"],\"dry_run\":true}}");
    let api = agent.curl(None, "/v1/kill", Some(&body));
    assert_eq!(api.status, 200, "{api:?}");
    let want = kill_lines(&stdout(&direct));
    assert_eq!(want.0.len(), 5);
    assert_eq!(kill_lines(&stdout(&via)), want, "kill --dry-run --json through the agent");
    assert_eq!(kill_lines(&api.body), want, "POST /v1/kill");
    // Human dry run: the same table.
    let (d, _) = agent.twreset(None, &["kill", "--dry-run", "10.72.0.3", "--netns", &p1, "--direct"]);
    let (v, _) = agent.twreset(None, &["kill", "--dry-run", "10.72.0.3", "--netns", &p1, "--agent-socket", &sock]);
    // Each run lists what its own dump saw, oldest first: a TIME_WAIT socket re-armed between the
    // two dumps (a FIN retransmitted to it, as under a slow VM's TCG on 6.12) moves, so the rows
    // are compared as a set, header and summary in place.
    let strip = |s: String| {
        let mut l: Vec<String> =
            s.lines().map(|l| l.rsplit_once(' ').map_or(l, |x| x.0).trim_end().to_owned()).collect();
        let summary = l.pop();
        l[1..].sort();
        l.extend(summary);
        l
    };
    assert_eq!(strip(stdout(&v)), strip(stdout(&d)));
    // A real kill through the agent in one namespace and directly in the other: same answers.
    let audit = agent.dir.join("direct-audit.log").display().to_string();
    let (via, via_pid) = agent.twreset(None, &["kill", "--json", "10.72.0.2", "--netns", &p1, "--agent-socket", &sock]);
    let (direct, _) =
        agent.twreset(None, &["kill", "--json", "10.72.0.2", "--netns", &p2, "--direct", "--audit-log", &audit]);
    let (mut v, vs) = kill_lines(&stdout(&via));
    let (mut d, ds) = kill_lines(&stdout(&direct));
    assert_eq!((vs["killed"].as_u64(), ds["killed"].as_u64()), (Some(5), Some(5)));
    assert_eq!(vs, ds);
    // Two namespaces: the same sockets but for their local ports.
    for l in v.iter_mut().chain(d.iter_mut()).filter_map(Value::as_object_mut) {
        l.remove("netns");
        l.remove("netns_cookie");
        let ip = l["local"].as_str().unwrap().parse::<SocketAddr>().unwrap().ip().to_string();
        l.insert("local".into(), ip.into());
    }
    assert_eq!(v, d);
    assert!(one.time_wait().iter().all(|s| s.remote.ip().to_string() != "10.72.0.2"));
    assert_eq!(one.time_wait().len(), 5, "the bystanders live");
    // The agent's audit log names this caller.
    let lines = agent.audit_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!((lines[0]["uid"].as_u64(), lines[0]["pid"].as_u64()), (Some(0), Some(u64::from(via_pid))));
    assert_eq!((lines[0]["killed"].as_u64(), lines[0]["trigger"].as_str()), (Some(5), Some("api")));
    agent.wait_json(&format!("/v1/tw?netns={p1}"), "the table follows the kill", |v| v["totals"]["count"] == 5);
}

#[test]
fn api_group_member_lists_and_kills_without_root() {
    if !privileged("api_group_member_lists_and_kills_without_root") {
        return;
    }
    let (rw, ro) = (test_gid(0), test_gid(1));
    let agent = Agent::start("grp", Some(rw), Some(ro));
    let ns = world("apigrp", 73);
    let path = ns.path().display().to_string();
    let sock = agent.sock.display().to_string();
    agent.wait_json(&format!("/v1/tw?netns={path}"), "10 sockets seen", |v| v["totals"]["count"] == 10);
    let member = As::member(0, &[rw]);
    let r = agent.curl(Some(&member), &format!("/v1/tw?netns={path}"), None);
    assert_eq!((r.status, r.json()["totals"]["count"].as_u64()), (200, Some(10)), "{r:?}");
    let (tw, _) = agent.twreset(Some(&member), &["tw", "--json", "--netns", &path, "--agent-socket", &sock]);
    assert_eq!(json(&stdout(&tw))["totals"]["count"], 10);
    // A kill over curl, then one through `twreset kill`, both without root.
    let body = format!("{{\"peers\":[\"10.73.0.3\"],\"netns\":[\"{path}\"]}}");
    let r = agent.curl(Some(&member), "/v1/kill", Some(&body));
    let (_, summary) = kill_lines(&r.body);
    assert_eq!((r.status, summary["killed"].as_u64()), (200, Some(3)), "{r:?}");
    let (k, kill_pid) =
        agent.twreset(Some(&member), &["kill", "fd00:73::2", "--netns", &path, "--agent-socket", &sock]);
    assert!(stdout(&k).contains("killed 2"), "{k:?}");
    assert_eq!(ns.time_wait().len(), 5);
    let lines = agent.audit_lines();
    let who: Vec<(u64, u64, u64)> = lines
        .iter()
        .map(|l| (l["uid"].as_u64().unwrap(), l["pid"].as_u64().unwrap(), l["killed"].as_u64().unwrap()))
        .collect();
    let uid = u64::from(member.uid);
    assert_eq!(who, [(uid, u64::from(r.pid), 3), (uid, u64::from(kill_pid), 2)], "{lines:?}");
    // Read-only member: GET yes, POST 403 JSON, and `twreset kill` fails with the agent's reason.
    let reader = As::member(1, &[ro]);
    assert_eq!(agent.curl(Some(&reader), "/healthz", None).status, 200);
    let r = agent.curl(Some(&reader), "/v1/kill", Some("{\"all\":true,\"dry_run\":true}"));
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.json()["error"].as_str().unwrap().contains("read-only"));
    // Outside both groups: refused (the socket's mode stops it before the agent even sees it).
    let r = agent.curl(Some(&As::nobody()), "/healthz", None);
    assert_eq!(r.status, 0, "{r:?}");
    let (t, _) = agent.twreset(Some(&As::nobody()), &["tw", "--agent-socket", &sock]);
    assert!(!t.status.success());
    assert!(String::from_utf8_lossy(&t.stderr).contains("refused this user"), "{t:?}");
}

#[test]
fn api_outsider_refused_by_credentials_before_reading() {
    if !privileged("api_outsider_refused_by_credentials_before_reading") {
        return;
    }
    let agent = Agent::start("cred", Some(test_gid(2)), None);
    // Open the file to everyone: the peer check alone must refuse the outsider.
    std::fs::set_permissions(&agent.sock, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let r = agent.curl(Some(&As::nobody()), "/v1/tw", None);
    assert_eq!(r.status, 0, "closed without an answer: {r:?}");
    // Connected, then closed: curl says so as a failed connect (7, when it sees the close before
    // sending), a send failure (55), an empty reply (52) or a reset (56); never a refused file.
    assert!([7, 52, 55, 56].contains(&r.curl_exit), "closed unanswered: {r:?}");
    assert!(!r.curl_err.contains("Permission denied"), "the file let it in: {r:?}");
    assert!(agent.log_text().contains("API connection refused"), "{}", agent.log_text());
    assert_eq!(agent.get("/healthz").status, 200, "root still served");
}

#[test]
fn api_bad_requests_get_400_json() {
    if !privileged("api_bad_requests_get_400_json") {
        return;
    }
    let agent = Agent::start("bad", None, None);
    let sock = agent.sock.display().to_string();
    for (path, body, needle) in [
        ("/v1/tw?by=host", None, "by: "),
        ("/v1/tw?bogus=1", None, "unknown query parameter"),
        ("/v1/tw?netns=/nonexistent/ns", None, "/nonexistent/ns"),
        ("/v1/kill", Some("{not json"), "invalid JSON body"),
        ("/v1/kill", Some("{\"peers\":[\"300.1.1.1\"]}"), "is not an IP address"),
        ("/v1/kill", Some("{}"), "no selector"),
        ("/v1/kill", Some("{\"all\":true,\"state\":[\"established\"],\"older_than\":\"5s\"}"), "--older-than"),
    ] {
        let r = agent.curl(None, path, body);
        assert_eq!(r.status, 400, "{path} {body:?}: {r:?}");
        assert!(r.json()["error"].as_str().unwrap().contains(needle), "{path}: {r:?}");
    }
    let r = agent.get("/v1/nothing");
    assert_eq!((r.status, r.json()["error"].as_str().is_some()), (404, true));
    // The CLI through the agent: a usage error (exit 2), the same message as a direct run.
    let args = ["kill", "--all", "--state", "established", "--older-than", "5s"];
    let (via, _) = agent.twreset(None, &[&args[..], &["--agent-socket", &sock]].concat());
    let (direct, _) = agent.twreset(None, &[&args[..], &["--direct"]].concat());
    assert_eq!((via.status.code(), direct.status.code()), (Some(2), Some(2)));
    assert_eq!(String::from_utf8_lossy(&via.stderr), String::from_utf8_lossy(&direct.stderr));
}

#[test]
fn api_dead_socket_falls_back_to_direct_with_one_warning() {
    if !privileged("api_dead_socket_falls_back_to_direct_with_one_warning") {
        return;
    }
    let ns = world("apidead", 74);
    let dir = std::env::temp_dir().join(format!("twr-api-dead-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("agent.sock");
    // A socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let out = std::process::Command::new(twreset_tests::bin())
        .args(["tw", "--json", "--netns", ns.path().to_str().unwrap()])
        .env("TWRESET_AGENT_SOCKET", &sock)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(err.lines().filter(|l| l.contains("running directly")).count(), 1, "{err}");
    assert_eq!(json(&String::from_utf8_lossy(&out.stdout))["totals"]["count"], 10);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn api_sighup_changes_who_may_connect_and_the_audit_log() {
    if !privileged("api_sighup_changes_who_may_connect_and_the_audit_log") {
        return;
    }
    let agent = Agent::start("hup", None, None);
    let ns = world("apihup", 77);
    let member = As::member(2, &[test_gid(3)]);
    assert_eq!(agent.curl(Some(&member), "/healthz", None).status, 0, "root only at first");
    let audit = agent.dir.join("after-hup.log");
    agent.reload(Some(test_gid(3)), None, &audit);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while agent.curl(Some(&member), "/healthz", None).status != 200 {
        assert!(std::time::Instant::now() < deadline, "the new group never got in:\n{}", agent.log_text());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let body = format!("{{\"peers\":[\"10.77.0.3\"],\"netns\":[\"{}\"]}}", ns.path().display());
    let r = agent.curl(Some(&member), "/v1/kill", Some(&body));
    assert_eq!((r.status, kill_lines(&r.body).1["killed"].as_u64()), (200, Some(3)), "{r:?}");
    let lines = twreset_tests::ndjson(&std::fs::read_to_string(&audit).unwrap());
    assert_eq!((lines.len(), lines[0]["uid"].as_u64()), (1, Some(u64::from(member.uid))));
    assert!(agent.audit_lines().is_empty(), "the old audit log is no longer written");
}
