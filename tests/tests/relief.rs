//! Auto-relief, the real problem solved (issue 22): in a namespace with 1,000 ephemeral ports and
//! `tcp_tw_reuse=0`, a client making short connections to one destination (closing first) runs
//! out of ports after about 1,000 connections; with the agent and one enforce rule it completes
//! more than 10x that with zero `EADDRNOTAVAIL`; in dry run it fails as before while the log and
//! metrics show `would_kill`. Bystander and deny-listed destinations keep every TIME_WAIT socket
//! (checked with `ss`); budgets and cool-downs hold under load (counted from the audit log); pause
//! stops kills within one cycle and resume restarts them (through the control API).

use std::{
    collections::BTreeMap,
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use twreset_tests::{NetNs, Running, listen, poll_until, privileged};

/// One agent at a time: each runs a kernel session over every namespace, and the churn is timed.
static SERIAL: Mutex<()> = Mutex::new(());

/// The port range of the test namespaces: 1,000 ports.
const RANGE: (u16, u16) = (40000, 40999);
const RANGE_SIZE: usize = 1000;

/// A port for the agent's metrics listener (host namespace).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Server ports in the test namespaces: below their ephemeral range, so that no client socket
/// (or its TIME_WAIT) ever holds them.
const PORT: u16 = 8080;
const BYSTANDER_PORT: u16 = 8081;

/// The pause between two connections of the client (load shaping), `TWRESET_RELIEF_PAUSE_US`.
fn client_pause() -> Duration {
    let us = std::env::var("TWRESET_RELIEF_PAUSE_US").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    Duration::from_micros(us)
}

/// A namespace with a 1,000-port range and `tcp_tw_reuse=0` (the harness sets the latter).
fn small_range_ns(tag: &str) -> NetNs {
    let ns = NetNs::new(tag);
    ns.sysctl("net.ipv4.ip_local_port_range", &format!("{} {}", RANGE.0, RANGE.1));
    assert_eq!(ns.read_sysctl("net.ipv4.tcp_tw_reuse").trim(), "0");
    ns
}

/// What the client saw.
#[derive(Debug, Default)]
struct Churn {
    ok: usize,
    eaddrnotavail: usize,
    first_failure: Option<usize>,
    elapsed: Duration,
}

impl Churn {
    fn rate(&self) -> f64 {
        (self.ok + self.eaddrnotavail) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// `n` short connections to `server`, one after the other, the client closing first (so it holds
/// the TIME_WAIT socket and its port), `pause` after each. `EADDRNOTAVAIL` is counted, and the
/// client goes on with the next connection; any other error fails the test.
fn churn_here(listener: &TcpListener, n: usize, pause: Duration) -> Churn {
    let server = listener.local_addr().unwrap();
    let mut c = Churn::default();
    let start = Instant::now();
    let mut buf = [0u8; 1];
    for i in 0..n {
        let client = match TcpStream::connect(server) {
            Ok(s) => s,
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                c.eaddrnotavail += 1;
                c.first_failure.get_or_insert(i);
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
                continue;
            }
            Err(e) => panic!("connect {server}: {e}"),
        };
        let (mut accepted, _) = listener.accept().unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(accepted.read(&mut buf).unwrap(), 0);
        drop(accepted);
        // Read the server's FIN before closing: the client ends in TIME_WAIT, not FIN_WAIT2.
        assert_eq!((&client).read(&mut buf).unwrap(), 0);
        drop(client);
        c.ok += 1;
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    c.elapsed = start.elapsed();
    c
}

/// [`churn_here`] in `ns` against a listener of its own on `server`.
fn churn(ns: &NetNs, server: SocketAddr, n: usize, pause: Duration) -> Churn {
    ns.run(|| {
        let l = listen(server).unwrap_or_else(|e| panic!("bind {server}: {e}"));
        churn_here(&l, n, pause)
    })
}

/// TIME_WAIT sockets of `ns` to `dst` (`ss`, the kernel's view).
fn tw_to(ns: &NetNs, dst: SocketAddr) -> usize {
    ns.time_wait().iter().filter(|s| s.remote == dst).count()
}

/// A temp dir removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("twreset-relief-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running agent with its own config, metrics port, control socket and audit log.
struct Agent {
    run: Running,
    h: Handle,
    _dir: TempDir,
}

/// How to reach an agent (shareable with threads inside a namespace).
struct Handle {
    port: u16,
    socket: PathBuf,
    audit: PathBuf,
}

impl Agent {
    /// `relief` is the `[relief]` part of the config; the audit log is the agent's own.
    fn start(tag: &str, relief: &str) -> Self {
        let dir = TempDir::new(tag);
        let audit = dir.0.join("audit.log");
        let config = dir.0.join("agent.toml");
        std::fs::write(&config, format!("audit_log = {:?}\n{relief}", audit.display().to_string())).unwrap();
        let (port, socket) = (free_port(), dir.0.join("agent.sock"));
        let listen = format!("127.0.0.1:{port}");
        let run = Running::start_with_env(
            &[
                "agent",
                "--config",
                config.to_str().unwrap(),
                "--metrics-listen",
                &listen,
                "--socket",
                socket.to_str().unwrap(),
            ],
            &[("TWRESET_LOG", "info")],
            "agent ready",
        );
        Self { run, h: Handle { port, socket, audit }, _dir: dir }
    }
}

impl std::ops::Deref for Agent {
    type Target = Handle;
    fn deref(&self) -> &Handle {
        &self.h
    }
}

impl Handle {
    fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let mut r = ureq::get(&url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        r.body_mut().read_to_string().unwrap()
    }

    /// `twreset_relief_decisions_total{rule,decision}` summed per decision.
    fn decisions(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (labels, v) in series(&self.metrics(), "twreset_relief_decisions_total") {
            *out.entry(labels["decision"].clone()).or_insert(0.0) += v;
        }
        out
    }

    /// `twreset_kills_total{trigger="policy",result}`.
    fn policy_kills(&self) -> BTreeMap<String, f64> {
        series(&self.metrics(), "twreset_kills_total")
            .into_iter()
            .filter(|(l, _)| l["trigger"] == "policy")
            .map(|(l, v)| (l["result"].clone(), v))
            .collect()
    }

    /// A request to the control API (curl over the unix socket): the JSON answer.
    fn api(&self, method: &str, path: &str) -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "-X", method, "--unix-socket", self.socket.to_str().unwrap()])
            .arg(format!("http://agent{path}"))
            .output()
            .expect("curl");
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{method} {path}: {body} {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body}"))
    }

    /// The policy's audit lines so far.
    fn audit_lines(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.audit).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

/// `name{labels} value` series of one family, labels parsed.
fn series(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter_map(|l| {
            let (labels, value) = l.strip_prefix(name)?.strip_prefix('{')?.split_once("} ")?;
            let labels = labels
                .split("\",")
                .filter_map(|kv| kv.split_once("=\"").map(|(k, v)| (k.to_owned(), v.trim_end_matches('"').to_owned())))
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// Milliseconds of an audit line's `time` (RFC 3339, UTC, ms) within its month: enough to measure
/// the gaps of one test run.
fn audit_ms(line: &serde_json::Value) -> u64 {
    let t = line["time"].as_str().unwrap();
    let n = |r: std::ops::Range<usize>| t[r].parse::<u64>().unwrap();
    ((n(8..10) * 24 + n(11..13)) * 60 + n(14..16)) * 60_000 + n(17..19) * 1000 + n(20..23)
}

/// Now, as [`audit_ms`] counts.
fn now_ms_in_month() -> u64 {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let day_ms = ms % 86_400_000;
    // Day of the month from the civil date (the audit's own formula, as `date` would print it).
    let out = Command::new("date").args(["-u", "-d", &format!("@{}", ms / 1000), "+%d"]).output().unwrap();
    let day: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    day * 86_400_000 + day_ms
}

/// The `[relief]` table of one enforce or dry-run rule for `dst`'s port in `ns`, everything in
/// 127.0.0.3 denied.
fn relief_config(mode: &str, ns: &NetNs, rport: u16, extra: &str, rule_extra: &str) -> String {
    format!(
        r#"
[relief]
mode = "{mode}"
interval = "20ms"
deny_remote = ["127.0.0.3/32"]
{extra}

[[relief.rule]]
name = "backend"
netns = ["{ns}"]
remote = ["127.0.0.0/8"]
remote_port = [{rport}]
trigger_pressure = 0.3
target_pressure = 0.1
min_age = "0s"
{rule_extra}
"#,
        ns = ns.name
    )
}

const GENEROUS: &str = "cooldown = \"0s\"\nmax_kills_per_minute = 1000000\nmax_kills_per_cycle = 100000";

#[test]
fn relief_without_the_agent_the_client_runs_out_of_ports() {
    if !privileged("relief_without_the_agent_the_client_runs_out_of_ports") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = small_range_ns("rl-none");
    let dst: SocketAddr = format!("127.0.0.1:{PORT}").parse().unwrap();
    let c = churn(&ns, dst, 2 * RANGE_SIZE, client_pause());
    eprintln!("no agent: {c:?}, {:.0} conn/s", c.rate());
    assert!(c.eaddrnotavail > 0, "{c:?}");
    let first = c.first_failure.unwrap();
    assert!((RANGE_SIZE * 9 / 10..=RANGE_SIZE).contains(&first), "first EADDRNOTAVAIL at {first}: {c:?}");
}

#[test]
fn relief_enforce_rule_keeps_the_client_going_and_spares_bystanders_and_denied() {
    if !privileged("relief_enforce_rule_keeps_the_client_going_and_spares_bystanders_and_denied") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = small_range_ns("rl-enf");
    let port = PORT;
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let bystander: SocketAddr = format!("127.0.0.1:{BYSTANDER_PORT}").parse().unwrap();
    let denied: SocketAddr = format!("127.0.0.3:{port}").parse().unwrap();
    let agent = Agent::start("enforce", &relief_config("enforce", &ns, port, GENEROUS, ""));
    // Above the trigger: the rule does not cover the bystander; the denied one it covers.
    let held = RANGE_SIZE * 6 / 10;
    for d in [bystander, denied] {
        let c = churn(&ns, d, held, Duration::ZERO);
        assert_eq!((c.ok, c.eaddrnotavail), (held, 0));
    }
    let n = 10 * RANGE_SIZE + RANGE_SIZE / 2;
    let c = churn(&ns, dst, n, client_pause());
    eprintln!("enforce: {c:?}, {:.0} conn/s", c.rate());
    assert_eq!(c.eaddrnotavail, 0, "{c:?}");
    assert_eq!(c.ok, n);
    // The kernel's view: bystander and denied destinations kept every socket.
    assert_eq!(tw_to(&ns, bystander), held, "bystander lost TIME_WAIT sockets");
    assert_eq!(tw_to(&ns, denied), held, "deny-listed destination lost TIME_WAIT sockets");
    let decisions = agent.decisions();
    let kills = agent.policy_kills();
    eprintln!("decisions {decisions:?}, kills {kills:?}");
    assert!(decisions.get("killed").copied().unwrap_or(0.0) > 0.0, "{decisions:?}");
    assert!(decisions.get("denied").copied().unwrap_or(0.0) > 0.0, "{decisions:?}");
    assert!(kills.get("killed").copied().unwrap_or(0.0) >= (n - RANGE_SIZE) as f64, "{kills:?}");
    let lines = agent.audit_lines();
    assert!(!lines.is_empty());
    for l in &lines {
        assert_eq!(l["trigger"], "policy", "{l}");
        assert_eq!(l["rule"], "backend", "{l}");
        assert_eq!(l["raddr"], "127.0.0.1", "{l}");
        assert_eq!(l["rport"], port, "{l}");
        assert!(l["pressure_before"].as_f64().unwrap() >= 0.3, "{l}");
        assert!(l["pressure_after"].as_f64().unwrap() < l["pressure_before"].as_f64().unwrap(), "{l}");
        assert!(l["selector"].as_str().unwrap().contains("time-wait"), "{l}");
    }
    let killed: u64 = lines.iter().map(|l| l["killed"].as_u64().unwrap()).sum();
    eprintln!("enforce: {} audit lines, {killed} sockets killed; the first: {}", lines.len(), lines[0]);
    let (_, _, stderr) = agent.run.stop();
    assert!(stderr.contains("relief decision killed"), "{stderr}");
}

#[test]
fn relief_dry_run_rule_fails_as_before_and_shows_would_kill() {
    if !privileged("relief_dry_run_rule_fails_as_before_and_shows_would_kill") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = small_range_ns("rl-dry");
    let port = PORT;
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let agent = Agent::start("dry", &relief_config("dry-run", &ns, port, "cooldown = \"1s\"", ""));
    let c = churn(&ns, dst, 2 * RANGE_SIZE, client_pause());
    eprintln!("dry run: {c:?}, {:.0} conn/s", c.rate());
    assert!(c.eaddrnotavail > 0, "{c:?}");
    assert!(c.first_failure.unwrap() <= RANGE_SIZE, "{c:?}");
    let decisions = agent.decisions();
    eprintln!("dry run decisions {decisions:?}");
    assert!(decisions.get("would_kill").copied().unwrap_or(0.0) > 0.0, "{decisions:?}");
    assert_eq!(decisions.get("killed"), None, "{decisions:?}");
    assert_eq!(agent.policy_kills().get("killed").copied().unwrap_or(0.0), 0.0);
    assert!(agent.audit_lines().is_empty(), "a dry run killed: {:?}", agent.audit_lines());
    let (_, _, stderr) = agent.run.stop();
    assert!(stderr.contains("relief decision would_kill"), "{stderr}");
}

#[test]
fn relief_budgets_and_cooldowns_hold_under_load() {
    if !privileged("relief_budgets_and_cooldowns_hold_under_load") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = small_range_ns("rl-rate");
    let port = PORT;
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (per_minute, per_cycle, cooldown_ms) = (1000u64, 250u64, 1000u64);
    let overall = format!("cooldown = \"{cooldown_ms}ms\"\nmax_kills_per_minute = {per_minute}");
    let rule = format!("max_kills_per_cycle = {per_cycle}");
    let agent = Agent::start("rate", &relief_config("enforce", &ns, port, &overall, &rule));
    // Far more than the budget allows, for several cool-downs: the client fails once it is spent.
    let c = churn(&ns, dst, 12 * RANGE_SIZE, client_pause());
    eprintln!("rate limited: {c:?}, {:.0} conn/s", c.rate());
    let lines = agent.audit_lines();
    let killed: Vec<u64> = lines.iter().map(|l| l["killed"].as_u64().unwrap()).collect();
    let times: Vec<u64> = lines.iter().map(audit_ms).collect();
    let gaps: Vec<u64> = times.windows(2).map(|w| w[1].saturating_sub(w[0])).collect();
    eprintln!("rate limited: kills per audit line {killed:?}, gaps (ms) {gaps:?}");
    let t0 = times.first().copied().unwrap_or(0);
    let mut per_window: BTreeMap<u64, u64> = BTreeMap::new();
    for (t, k) in times.iter().zip(&killed) {
        *per_window.entry((t - t0) / cooldown_ms).or_default() += k;
    }
    eprintln!("rate limited: kills per {cooldown_ms} ms window from the first kill: {per_window:?}");
    assert!(per_window.values().all(|&k| k <= per_cycle), "{per_window:?}");
    assert!(lines.len() >= 2, "{lines:?}");
    assert!(killed.iter().all(|&k| k <= per_cycle), "a cycle killed more than {per_cycle}: {killed:?}");
    // The whole run lasts less than the minute window: every kill counts against one budget.
    assert!(killed.iter().sum::<u64>() <= per_minute, "{killed:?}");
    // Decisions are at least the cool-down apart; the audit lines are written after the kill, so
    // allow one relief interval of jitter.
    assert!(gaps.iter().all(|&g| g + 50 >= cooldown_ms), "cool-down broken: {gaps:?}");
    let decisions = agent.decisions();
    eprintln!("rate limited decisions {decisions:?}");
    assert!(decisions.get("rate_limited").copied().unwrap_or(0.0) > 0.0, "{decisions:?}");
    assert!(decisions.get("cooling_down").copied().unwrap_or(0.0) > 0.0, "{decisions:?}");
    assert!(c.eaddrnotavail > 0, "the budget should have run out: {c:?}");
}

#[test]
fn relief_pause_stops_kills_within_a_cycle_and_resume_restarts_them() {
    if !privileged("relief_pause_stops_kills_within_a_cycle_and_resume_restarts_them") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = small_range_ns("rl-pause");
    let port = PORT;
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let agent = Agent::start("pause", &relief_config("enforce", &ns, port, GENEROUS, ""));
    let status = agent.api("GET", "/v1/relief");
    assert_eq!((status["mode"].as_str(), status["paused"].as_bool()), (Some("enforce"), Some(false)), "{status}");
    // The listener lives in the namespace; each phase of the client runs there too.
    let l = ns.run(|| listen(dst).unwrap());
    let phase = |n: usize| ns.run(|| churn_here(&l, n, client_pause()));
    // Kills happen.
    let c = phase(2 * RANGE_SIZE);
    assert_eq!(c.eaddrnotavail, 0, "{c:?}");
    poll_until("a policy kill in the audit log", || !agent.audit_lines().is_empty());
    let asked = Instant::now();
    let asked_ms = now_ms_in_month();
    let paused = agent.api("POST", "/v1/relief/pause");
    let answered = asked.elapsed();
    assert_eq!(paused["paused"], true, "{paused}");
    let at_pause = agent.audit_lines().len();
    // Paused: the client fills the range; nothing is killed past the one kill in flight.
    let c = phase(2 * RANGE_SIZE);
    eprintln!("paused: {c:?}");
    assert!(c.eaddrnotavail > 0, "{c:?}");
    let after = agent.audit_lines().len();
    let last_kill = agent.audit_lines().last().map(audit_ms).unwrap();
    eprintln!(
        "pause answered in {answered:?}; audit lines at pause {at_pause}, after {after}; last kill {} ms after the pause was asked",
        last_kill as i64 - asked_ms as i64
    );
    assert!(after <= at_pause + 1, "kills went on after the pause: {at_pause} -> {after}");
    let d = agent.decisions();
    eprintln!("decisions while paused {d:?}");
    assert!(d.get("paused").copied().unwrap_or(0.0) > 0.0, "{d:?}");
    // Resumed: kills restart, the client gets ports again.
    let resumed_at = Instant::now();
    let resumed = agent.api("POST", "/v1/relief/resume");
    assert_eq!(resumed["paused"], false, "{resumed}");
    poll_until("a policy kill after resume", || agent.audit_lines().len() > after);
    eprintln!("first kill {:?} after resume", resumed_at.elapsed());
    let c = phase(RANGE_SIZE);
    assert_eq!(c.eaddrnotavail, 0, "{c:?}");
    let status = agent.api("GET", "/v1/relief");
    eprintln!("status {status}");
    assert_eq!(status["rules"][0]["rule"], "backend");
    assert!(status["rules"][0]["last_decision"].is_object(), "{status}");
}

#[test]
fn relief_sighup_applies_good_relief_rules_and_keeps_the_old_on_a_bad_file() {
    if !privileged("relief_sighup_applies_good_relief_rules_and_keeps_the_old_on_a_bad_file") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = small_range_ns("rl-hup");
    let mut agent = Agent::start("hup", &relief_config("enforce", &ns, PORT, GENEROUS, ""));
    let config = agent._dir.0.join("agent.toml");
    let audit = format!("audit_log = {:?}\n", agent.audit.display().to_string());
    let hup =
        |pid: i32| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP).unwrap();
    // Good: the same rule in dry run.
    std::fs::write(&config, format!("{audit}{}", relief_config("dry-run", &ns, PORT, GENEROUS, ""))).unwrap();
    hup(agent.run.pid());
    agent.run.wait_for_stderr("configuration reloaded", Duration::from_secs(30));
    poll_until("the reloaded mode", || agent.api("GET", "/v1/relief")["mode"] == "dry-run");
    // Bad: a target above its trigger, on the line that says so. The dry run stays.
    let bad =
        relief_config("enforce", &ns, PORT, GENEROUS, "").replace("target_pressure = 0.1", "target_pressure = 0.95");
    let text = format!("{audit}{bad}");
    let line = text.lines().position(|l| l.starts_with("target_pressure")).unwrap() + 1;
    std::fs::write(&config, text).unwrap();
    hup(agent.run.pid());
    let refused = agent.run.wait_for_stderr("reload refused", Duration::from_secs(30));
    assert!(refused.contains(&format!("agent.toml:{line}:")), "{refused}");
    assert!(refused.contains("target_pressure"), "{refused}");
    let status = agent.api("GET", "/v1/relief");
    assert_eq!(status["mode"], "dry-run", "{status}");
    assert_eq!(status["rules"][0]["rule"], "backend", "{status}");
}
