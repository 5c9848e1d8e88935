//! The relief tests' harness: a namespace with 1,000 ports, the client, an agent with its own
//! config, metrics, control socket and audit log, and readers of what it reports.

use std::{
    collections::BTreeMap,
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use twreset_tests::{NetNs, Running, listen};

/// One agent at a time: each runs a kernel session over every namespace, and the churn is timed.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// The port range of the test namespaces: 1,000 ports.
pub const RANGE: (u16, u16) = (40000, 40999);
pub const RANGE_SIZE: usize = 1000;

/// A port for the agent's metrics listener (host namespace).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Server ports in the test namespaces: below their ephemeral range, so that no client socket
/// (or its TIME_WAIT) ever holds them.
pub const PORT: u16 = 8080;
pub const BYSTANDER_PORT: u16 = 8081;

/// The pause between two connections of the client (load shaping), `TWRESET_RELIEF_PAUSE_US`;
/// by default 200 us times the harness's slowdown (a VM under TCG runs the agent's kills five
/// times slower, not the client's pauses).
pub fn client_pause() -> Duration {
    let default = 200 * u64::from(twreset_tests::slowdown());
    let us = std::env::var("TWRESET_RELIEF_PAUSE_US").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    Duration::from_micros(us)
}

/// A namespace with a 1,000-port range and `tcp_tw_reuse=0` (the harness sets the latter).
pub fn small_range_ns(tag: &str) -> NetNs {
    let ns = NetNs::new(tag);
    ns.sysctl("net.ipv4.ip_local_port_range", &format!("{} {}", RANGE.0, RANGE.1));
    assert_eq!(ns.read_sysctl("net.ipv4.tcp_tw_reuse").trim(), "0");
    ns
}

/// What the client saw.
#[derive(Debug, Default)]
pub struct Churn {
    pub ok: usize,
    pub eaddrnotavail: usize,
    pub first_failure: Option<usize>,
    pub elapsed: Duration,
}

impl Churn {
    pub fn rate(&self) -> f64 {
        (self.ok + self.eaddrnotavail) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// `n` short connections to `server`, one after the other, the client closing first (so it holds
/// the TIME_WAIT socket and its port), `pause` after each. `EADDRNOTAVAIL` is counted, and the
/// client goes on with the next connection; any other error fails the test.
pub fn churn_here(listener: &TcpListener, n: usize, pause: Duration) -> Churn {
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
pub fn churn(ns: &NetNs, server: SocketAddr, n: usize, pause: Duration) -> Churn {
    ns.run(|| {
        let l = listen(server).unwrap_or_else(|e| panic!("bind {server}: {e}"));
        churn_here(&l, n, pause)
    })
}

/// TIME_WAIT sockets of `ns` to `dst` (`ss`, the kernel's view).
pub fn tw_to(ns: &NetNs, dst: SocketAddr) -> usize {
    ns.time_wait().iter().filter(|s| s.remote == dst).count()
}

pub use twreset_tests::TempDir;

/// A running agent with its own config, metrics port, control socket and audit log.
pub struct Agent {
    pub run: Running,
    pub h: Handle,
    pub dir: TempDir,
}

/// How to reach an agent (shareable with threads inside a namespace).
pub struct Handle {
    pub port: u16,
    pub socket: PathBuf,
    pub audit: PathBuf,
}

impl Agent {
    /// `relief` is the `[relief]` part of the config; the audit log is the agent's own.
    pub fn start(tag: &str, relief: &str) -> Self {
        let dir = TempDir::new(tag);
        let audit = dir.0.join("audit.log");
        let config = dir.0.join("agent.toml");
        std::fs::write(&config, format!("audit_log = {:?}\n{relief}", audit.display().to_string())).unwrap();
        let (port, socket) = (free_port(), dir.0.join("agent.sock"));
        let listen = format!("127.0.0.1:{port}");
        let run = twreset_tests::run_agent(&config, &listen, &socket);
        Self { run, h: Handle { port, socket, audit }, dir }
    }
}

impl std::ops::Deref for Agent {
    type Target = Handle;
    fn deref(&self) -> &Handle {
        &self.h
    }
}

impl Handle {
    pub fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let mut r = ureq::get(&url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        r.body_mut().read_to_string().unwrap()
    }

    /// `twreset_relief_decisions_total{rule,decision}` summed per decision.
    pub fn decisions(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (labels, v) in series(&self.metrics(), "twreset_relief_decisions_total") {
            *out.entry(labels["decision"].clone()).or_insert(0.0) += v;
        }
        out
    }

    /// `twreset_kills_total{trigger="policy",result}`.
    pub fn policy_kills(&self) -> BTreeMap<String, f64> {
        series(&self.metrics(), "twreset_kills_total")
            .into_iter()
            .filter(|(l, _)| l["trigger"] == "policy")
            .map(|(l, v)| (l["result"].clone(), v))
            .collect()
    }

    /// A request to the control API (curl over the unix socket): the JSON answer.
    pub fn api(&self, method: &str, path: &str) -> serde_json::Value {
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
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.audit).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

/// `name{labels} value` series of one family, labels parsed.
pub fn series(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
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
pub fn audit_ms(line: &serde_json::Value) -> u64 {
    let t = line["time"].as_str().unwrap();
    let n = |r: std::ops::Range<usize>| t[r].parse::<u64>().unwrap();
    ((n(8..10) * 24 + n(11..13)) * 60 + n(14..16)) * 60_000 + n(17..19) * 1000 + n(20..23)
}

/// Now, as [`audit_ms`] counts.
pub fn now_ms_in_month() -> u64 {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let day_ms = ms % 86_400_000;
    // Day of the month from the civil date (the audit's own formula, as `date` would print it).
    let out = Command::new("date").args(["-u", "-d", &format!("@{}", ms / 1000), "+%d"]).output().unwrap();
    let day: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    day * 86_400_000 + day_ms
}

/// The `[relief]` table of one enforce or dry-run rule for `dst`'s port in `ns`, everything in
/// 127.0.0.3 denied.
pub fn relief_config(mode: &str, ns: &NetNs, rport: u16, extra: &str, rule_extra: &str) -> String {
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

pub const GENEROUS: &str = "cooldown = \"0s\"\nmax_kills_per_minute = 1000000\nmax_kills_per_cycle = 100000";
