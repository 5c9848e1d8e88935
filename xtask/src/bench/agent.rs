//! Agent: `twreset agent`'s `/metrics` with N TIME_WAIT sockets over N/20 peers, scraped side by side
//! with Debian's `prometheus-node-exporter` (its `tcpstat` collector only, which dumps every socket
//! per scrape) on the same sockets, and the agent's RSS at that size.
//!
//! One namespace: node-exporter runs inside it (it only sees its own namespace), the sockets are
//! made by the churn generator in server-close mode (the server ends in TIME_WAIT and its peer is
//! the client's source address, one of N/20 on `lo`'s 127/8), then the agent starts in the host
//! namespace (it covers every namespace and seeds its table from a dump). Scrapes alternate
//! between the two, each timed by `curl` (`time_total`, process start not included), without
//! compression. TIME_WAIT lasts 60 s: every scrape also reports the TIME_WAIT count it saw.

use std::{
    io::Read,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{Caps, churn, median, ns::Ns, sys};

/// Scrapes per side, alternating.
const SCRAPES: usize = 5;
/// The exporter's port inside the bench namespace (nothing else listens there).
const EXPORTER_PORT: u16 = 9100;
const EXPORTER: &str = "prometheus-node-exporter";
/// What Prometheus 2.x asks for (OpenMetrics first); no `Accept-Encoding`: sizes are uncompressed.
const ACCEPT: &str = "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;\
q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
/// Sockets per peer.
const PER_PEER: u64 = 20;

/// One timed scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub ms: f64,
    pub bytes: u64,
    /// Sample lines (not `#` comments).
    pub series: u64,
    /// TIME_WAIT sockets of the bench namespace in this exposition.
    pub time_wait: Option<u64>,
}

impl Scrape {
    fn json(&self) -> Value {
        json!({ "ms": self.ms, "bytes": self.bytes, "series": self.series, "time_wait": self.time_wait })
    }
}

/// One side's scrapes, or why it could not run.
pub type Side = Result<Vec<Scrape>, String>;

#[derive(Debug)]
pub struct Outcome {
    pub n: u64,
    pub peers: u64,
    pub na: Option<String>,
    /// TIME_WAIT sockets and distinct peers in the namespace (`ss`) before the agent started.
    pub sockets: u64,
    pub distinct_peers: u64,
    /// `ss`'s count after the last scrape.
    pub sockets_after: u64,
    /// Seconds from the end of the churn to the last scrape (sockets made first expire at 60 s).
    pub window_s: f64,
    pub agent: Side,
    pub exporter: Side,
    /// Spawn to `/readyz` 200.
    pub agent_ready_s: Option<f64>,
    /// VmRSS 1 s after ready (seeded), after the scrapes, and VmHWM at the end.
    pub rss_seeded_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub hwm_kib: Option<u64>,
    pub agent_exit: Option<i32>,
    pub agent_stderr: String,
}

fn med(side: &Side, f: impl Fn(&Scrape) -> f64) -> Option<f64> {
    side.as_ref().ok().and_then(|v| median(v.iter().map(f).collect()))
}

impl Outcome {
    fn new(n: u64) -> Self {
        Self {
            n,
            peers: (n / PER_PEER).max(1),
            na: None,
            sockets: 0,
            distinct_peers: 0,
            sockets_after: 0,
            window_s: 0.0,
            agent: Err("skipped".into()),
            exporter: Err("skipped".into()),
            agent_ready_s: None,
            rss_seeded_kib: None,
            rss_after_kib: None,
            hwm_kib: None,
            agent_exit: None,
            agent_stderr: String::new(),
        }
    }

    pub fn ms(side: &Side) -> Option<f64> {
        med(side, |s| s.ms)
    }
    pub fn bytes(side: &Side) -> Option<f64> {
        med(side, |s| s.bytes as f64)
    }
    pub fn series(side: &Side) -> Option<f64> {
        med(side, |s| s.series as f64)
    }
    pub fn time_wait(side: &Side) -> Option<f64> {
        side.as_ref().ok().and_then(|v| median(v.iter().filter_map(|s| s.time_wait.map(|t| t as f64)).collect()))
    }

    pub fn json(&self) -> Value {
        let side = |s: &Side| match s {
            Ok(v) => json!({ "scrapes": v.iter().map(Scrape::json).collect::<Vec<_>>(),
                             "median_ms": Self::ms(s), "median_bytes": Self::bytes(s),
                             "median_series": Self::series(s), "median_time_wait": Self::time_wait(s) }),
            Err(e) => json!({ "na": e }),
        };
        json!({ "n": self.n, "peers": self.peers, "na": self.na, "time_wait_sockets": self.sockets,
                "distinct_peers": self.distinct_peers, "time_wait_sockets_after": self.sockets_after,
                "window_s": self.window_s, "agent": side(&self.agent), "node_exporter_tcpstat": side(&self.exporter),
                "agent_ready_s": self.agent_ready_s, "agent_rss_seeded_kib": self.rss_seeded_kib,
                "agent_rss_after_scrapes_kib": self.rss_after_kib, "agent_peak_rss_kib": self.hwm_kib,
                "agent_exit_status": self.agent_exit, "agent_stderr": self.agent_stderr.trim() })
    }

    pub const DETAILS_HEADER: [&'static str; 7] = [
        "N (peers)",
        "side",
        "scrape ms (median, min-max)",
        "bytes",
        "series",
        "TIME_WAIT seen",
        "ss: before -> after",
    ];

    /// Rows of the details table.
    pub fn details(&self) -> Vec<Vec<String>> {
        let n = format!("{} ({})", self.n, self.peers);
        let ss = format!("{} ({} peers) -> {}", self.sockets, self.distinct_peers, self.sockets_after);
        [("twreset agent", &self.agent), ("node-exporter tcpstat", &self.exporter)]
            .into_iter()
            .map(|(name, s)| match s {
                Ok(v) => {
                    let ms: Vec<f64> = v.iter().map(|s| s.ms).collect();
                    let (lo, hi) =
                        (ms.iter().copied().fold(f64::INFINITY, f64::min), ms.iter().copied().fold(0.0, f64::max));
                    vec![
                        n.clone(),
                        name.into(),
                        format!("{} ({lo:.1}-{hi:.1})", opt(Self::ms(s), 1)),
                        opt(Self::bytes(s), 0),
                        opt(Self::series(s), 0),
                        opt(Self::time_wait(s), 0),
                        ss.clone(),
                    ]
                }
                Err(e) => {
                    let mut r = vec![n.clone(), name.into(), e.chars().take(60).collect()];
                    r.resize(7, String::new());
                    r
                }
            })
            .collect()
    }

    /// Summary rows: figure, twreset, peer, ratio, target, verdict.
    pub fn summary(&self) -> Vec<[String; 6]> {
        let at = format!("{}k TIME_WAIT over {} peers", self.n / 1000, self.peers);
        let na = |s: &Side| s.as_ref().err().map(|e| e.chars().take(60).collect::<String>());
        let tw = |v: Option<f64>, d: usize| na(&self.agent).unwrap_or_else(|| opt(v, d));
        let pe = |v: Option<f64>, d: usize| {
            format!("{} (node-exporter tcpstat)", na(&self.exporter).unwrap_or_else(|| opt(v, d)))
        };
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.3}x", a / b),
            _ => "n/a".into(),
        };
        let (ms, ems) = (Self::ms(&self.agent), Self::ms(&self.exporter));
        let (by, eby) = (Self::bytes(&self.agent), Self::bytes(&self.exporter));
        let mib = |k: Option<u64>| opt(k.map(|k| k as f64 / 1024.0), 1);
        vec![
            [
                format!("agent: scrape ms, median of {SCRAPES} ({at})"),
                tw(ms, 1),
                pe(ems, 1),
                ratio(ms, ems),
                "-".into(),
                "-".into(),
            ],
            [
                format!("agent: exposition bytes (series) ({at})"),
                na(&self.agent).unwrap_or_else(|| format!("{} ({})", opt(by, 0), opt(Self::series(&self.agent), 0))),
                format!(
                    "{} (node-exporter tcpstat)",
                    na(&self.exporter).unwrap_or_else(|| format!(
                        "{} ({})",
                        opt(eby, 0),
                        opt(Self::series(&self.exporter), 0)
                    ))
                ),
                ratio(by, eby),
                "hundreds of series".into(),
                "-".into(),
            ],
            [
                "agent: TIME_WAIT of the bench namespace in the exposition".into(),
                tw(Self::time_wait(&self.agent), 0),
                pe(Self::time_wait(&self.exporter), 0),
                "-".into(),
                format!("ss: {} -> {}", self.sockets, self.sockets_after),
                "-".into(),
            ],
            [
                format!("agent: RSS MiB seeded / after scrapes / peak ({at})"),
                na(&self.agent).unwrap_or_else(|| {
                    format!("{} / {} / {}", mib(self.rss_seeded_kib), mib(self.rss_after_kib), mib(self.hwm_kib))
                }),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
        ]
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.digits$}"))
}

/// The outcome of a bench run without the agent section.
pub fn skipped(n: u64) -> Outcome {
    Outcome { na: Some("skipped".into()), ..Outcome::new(n) }
}

/// A port free on the host's loopback now (the agent binds it a moment later).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?.local_addr()?.port())
}

/// `curl` one URL (inside `ns` if given): time, size, and the body's figures.
fn scrape(ns: Option<&Ns>, url: &str, tw: &dyn Fn(&str) -> Option<u64>) -> Result<Scrape> {
    let body = std::env::temp_dir().join(format!("twbench-{}-scrape", std::process::id()));
    let body_s = body.to_str().context("temp path is not UTF-8")?;
    let args = ["curl", "-sS", "-f", "-H", ACCEPT, "-o", body_s, "-w", "%{time_total} %{size_download}", url];
    let mut cmd = match ns {
        Some(ns) => ns.cmd(&args),
        None => {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c
        }
    };
    let out = sys::output(&mut cmd)?;
    let text = std::fs::read_to_string(&body).unwrap_or_default();
    let _ = std::fs::remove_file(&body);
    let mut it = out.split_whitespace();
    let secs: f64 = it.next().and_then(|s| s.parse().ok()).context("curl time_total")?;
    let bytes: u64 = it.next().and_then(|s| s.parse().ok()).context("curl size_download")?;
    let series = text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count() as u64;
    Ok(Scrape { ms: secs * 1000.0, bytes, series, time_wait: tw(&text) })
}

/// The value of the first sample of `family` carrying every label in `labels`.
fn sample(text: &str, family: &str, labels: &[&str]) -> Option<u64> {
    text.lines().filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{')).find_map(|l| {
        let (lbl, val) = l.rsplit_once('}')?;
        labels
            .iter()
            .all(|x| lbl.contains(x))
            .then(|| val.split_whitespace().next()?.parse::<f64>().ok())?
            .map(|v| v as u64)
    })
}

/// Poll `f` until it is true or `timeout` passes.
fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A long-running child, stopped (SIGTERM, then SIGKILL after 20 s) on drop or by [`Daemon::stop`].
struct Daemon {
    child: Option<Child>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Daemon {
    fn spawn(cmd: &mut Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        let mut err = child.stderr.take().context("stderr")?;
        let stderr = Some(thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }));
        Ok(Self { child: Some(child), stderr })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Exit status (`None`: killed by a signal) and the last lines of stderr.
    fn stop(&mut self) -> (Option<i32>, String) {
        let Some(mut c) = self.child.take() else { return (None, String::new()) };
        sys::send_signal(c.id(), libc::SIGTERM);
        let start = Instant::now();
        let status = loop {
            match c.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if start.elapsed() < Duration::from_secs(20) => thread::sleep(Duration::from_millis(50)),
                _ => {
                    let _ = c.kill();
                    break c.wait().ok();
                }
            }
        };
        let err = self.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        let tail: Vec<&str> = err.lines().rev().take(10).collect();
        (status.and_then(|s| s.code()), tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// TIME_WAIT sockets and their distinct remote addresses in `ns`.
fn time_wait_peers(ns: &Ns) -> Result<(u64, u64)> {
    let out = ns.output(&["ss", "-Htan", "state", "time-wait"])?;
    let mut peers = std::collections::HashSet::new();
    let mut n = 0;
    for l in out.lines() {
        n += 1;
        // Recv-Q Send-Q Local:Port Peer:Port (no State column with a state filter).
        if let Some(p) = l.split_whitespace().nth(3).and_then(|p| p.rsplit_once(':')) {
            peers.insert(p.0.to_owned());
        }
    }
    Ok((n, peers.len() as u64))
}

fn exporter_bin() -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/usr/local/bin"].iter().map(|d| Path::new(d).join(EXPORTER)).find(|p| p.exists())
}

pub fn bench(n: u64, churn_bin: &Path, twreset: &Path, caps: &Caps) -> Result<Outcome> {
    let mut o = Outcome::new(n);
    let peers = o.peers;
    if !caps.agent_cmd {
        o.na = Some("n/a (not built): this twreset has no `agent`".into());
        o.agent = Err(o.na.clone().unwrap_or_default());
    }
    eprintln!("bench: agent and node-exporter scrapes of {n} TIME_WAIT sockets over {peers} peers");
    let ns = Ns::new("agent")?;
    let ex_url = format!("http://127.0.0.1:{EXPORTER_PORT}/metrics");
    let mut exporter = match exporter_bin() {
        None => {
            o.exporter = Err(format!("n/a: {EXPORTER} is not installed"));
            None
        }
        Some(bin) => {
            let listen = format!("--web.listen-address=127.0.0.1:{EXPORTER_PORT}");
            let bin = bin.to_str().context("exporter path is not UTF-8")?.to_owned();
            let mut d =
                Daemon::spawn(&mut ns.cmd(&[&bin, "--collector.disable-defaults", "--collector.tcpstat", &listen]))?;
            if wait_for(Duration::from_secs(20), || scrape(Some(&ns), &ex_url, &|_| None).is_ok()) {
                Some(d)
            } else {
                let (_, err) = d.stop();
                o.exporter = Err(format!("{EXPORTER} did not answer: {}", err.lines().last().unwrap_or("")));
                None
            }
        }
    };
    // Server-close over one port: each connection's source address is the next of `peers`
    // (round robin), and the server's TIME_WAIT socket has it as its remote address.
    churn::run(
        churn_bin,
        &ns,
        &[
            "--threads",
            "4",
            "--mode",
            "server",
            "--count",
            &n.to_string(),
            "--src",
            &format!("127.1.0.1:{peers}"),
            "--ports",
            "900:1",
        ],
    )?;
    let made = Instant::now();
    (o.sockets, o.distinct_peers) = time_wait_peers(&ns)?;
    let mut agent = None;
    if caps.agent_cmd {
        let port = free_port()?;
        let socket = std::env::temp_dir().join(format!("twbench-{}-agent.sock", std::process::id()));
        let mut cmd = Command::new(twreset);
        cmd.args(["agent", "--config", "/dev/null", "--metrics-listen", &format!("127.0.0.1:{port}"), "--socket"])
            .arg(&socket)
            .env("TWRESET_LOG", "twreset=info")
            .env("NO_COLOR", "1");
        let start = Instant::now();
        let mut d = Daemon::spawn(&mut cmd)?;
        let base = format!("http://127.0.0.1:{port}");
        let ready = wait_for(Duration::from_secs(60), || {
            !d.alive()
                || sys::output(Command::new("curl").args(["-sf", "-o", "/dev/null", &format!("{base}/readyz")])).is_ok()
        }) && d.alive();
        sys::check_interrupted()?;
        if ready {
            o.agent_ready_s = Some(start.elapsed().as_secs_f64());
            thread::sleep(Duration::from_secs(1));
            o.rss_seeded_kib = status_kib(d.pid(), "VmRSS:");
            o.agent = Ok(Vec::new());
            agent = Some((d, format!("{base}/metrics")));
        } else {
            let (code, err) = d.stop();
            (o.agent_exit, o.agent_stderr) = (code, err.clone());
            o.agent = Err(format!("agent not ready: {}", err.lines().last().unwrap_or("")));
        }
    }
    if exporter.is_some() {
        o.exporter = Ok(Vec::new());
    }
    let netns_label = format!("netns=\"{}\"", ns.name);
    let agent_tw = |t: &str| sample(t, "twreset_timewait_sockets", &[&netns_label, "substate=\"time_wait\""]);
    let ex_tw = |t: &str| sample(t, "node_tcp_connection_states", &["state=\"time_wait\""]);
    for _ in 0..SCRAPES {
        if let (Some((_, url)), Ok(v)) = (&agent, &mut o.agent) {
            match scrape(None, url, &agent_tw) {
                Ok(s) => v.push(s),
                Err(e) => o.agent = Err(format!("scrape failed: {e:#}")),
            }
        }
        if let (Some(_), Ok(v)) = (&exporter, &mut o.exporter) {
            match scrape(Some(&ns), &ex_url, &ex_tw) {
                Ok(s) => v.push(s),
                Err(e) => o.exporter = Err(format!("scrape failed: {e:#}")),
            }
        }
        sys::check_interrupted()?;
    }
    o.window_s = made.elapsed().as_secs_f64();
    o.sockets_after = ns.time_wait_all()?;
    if let Some((mut d, _)) = agent {
        o.rss_after_kib = status_kib(d.pid(), "VmRSS:");
        o.hwm_kib = status_kib(d.pid(), "VmHWM:");
        (o.agent_exit, o.agent_stderr) = d.stop();
        if o.agent_exit != Some(0) && o.agent.is_ok() {
            bail!("twreset agent exited with {:?} on SIGTERM: {}", o.agent_exit, o.agent_stderr);
        }
    }
    if let Some(d) = exporter.as_mut() {
        d.stop();
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_by_labels() {
        let t = "# TYPE twreset_timewait_sockets gauge\n\
                 twreset_timewait_sockets{netns=\"host\",substate=\"time_wait\"} 3\n\
                 twreset_timewait_sockets{netns=\"b\",substate=\"fin_wait2\"} 1\n\
                 twreset_timewait_sockets{substate=\"time_wait\",netns=\"b\"} 20000\n\
                 node_tcp_connection_states{state=\"time_wait\"} 1e+06\n";
        assert_eq!(sample(t, "twreset_timewait_sockets", &["netns=\"b\"", "substate=\"time_wait\""]), Some(20000));
        assert_eq!(sample(t, "node_tcp_connection_states", &["state=\"time_wait\""]), Some(1_000_000));
        assert_eq!(sample(t, "twreset_timewait", &["netns=\"b\""]), None);
    }
}
