//! Agent: `twreset agent`'s `/metrics` with N TIME_WAIT sockets over N/20 peers, scraped side by side
//! with Debian's `prometheus-node-exporter` (its `tcpstat` collector only, which dumps every socket
//! per scrape) on the same sockets, and the agent's RSS at that size against its own base.
//!
//! One namespace: node-exporter runs inside it (it only sees its own namespace). The agent starts
//! once on the empty namespace for its base RSS, then the sockets are made by the churn generator
//! in server-close mode (the server ends in TIME_WAIT and its peer is the client's source address,
//! one of N/20 on `lo`'s 127/8), then the agent starts again in the host namespace (it covers
//! every namespace and seeds its table from a dump). Scrapes alternate between the two, each timed
//! by `curl` (`time_total`, process start not included), without compression. TIME_WAIT lasts
//! 60 s: every scrape also reports the TIME_WAIT count it saw, and the churn's own duration is
//! kept (at 1M it is most of those 60 s).

mod report;

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    Caps, churn,
    daemon::{Daemon, status_kib, wait_for},
    ns::Ns,
    scrape::{self, Scrape, free_port, sample},
    sys,
};

/// Scrapes per side, alternating.
const SCRAPES: usize = 5;
/// The exporter's port inside the bench namespace (nothing else listens there).
const EXPORTER_PORT: u16 = 9100;
const EXPORTER: &str = "prometheus-node-exporter";
/// Sockets per peer.
const PER_PEER: u64 = 20;

/// One side's scrapes, or why it could not run.
pub type Side = Result<Vec<Scrape>, String>;

#[derive(Debug)]
pub struct Outcome {
    pub n: u64,
    pub peers: u64,
    pub na: Option<String>,
    /// The namespace's tw sockets (sockstat) before the agent started, and after the last scrape.
    pub sockets: u64,
    pub sockets_after: u64,
    /// Distinct peers of the TIME_WAIT sockets (`ss`), counted after the last scrape.
    pub distinct_peers: u64,
    /// Seconds the churn took to make the sockets (the first ones expire 60 s after its start).
    pub churn_s: f64,
    /// Seconds from the end of the churn to the last scrape.
    pub window_s: f64,
    pub agent: Side,
    pub exporter: Side,
    /// Spawn to `/readyz` 200.
    pub agent_ready_s: Option<f64>,
    /// VmRSS 1 s after ready with the bench namespace empty: the base.
    pub rss_base_kib: Option<u64>,
    /// RssAnon (heap, stacks: no file pages) at the base, seeded and after the scrapes.
    pub anon_kib: [Option<u64>; 3],
    /// VmRSS 1 s after ready (seeded), after the scrapes, and VmHWM at the end.
    pub rss_seeded_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub hwm_kib: Option<u64>,
    pub agent_exit: Option<i32>,
    pub agent_stderr: String,
}

impl Outcome {
    fn new(n: u64) -> Self {
        Self {
            n,
            peers: (n / PER_PEER).max(1),
            na: None,
            sockets: 0,
            sockets_after: 0,
            distinct_peers: 0,
            churn_s: 0.0,
            window_s: 0.0,
            agent: Err("skipped".into()),
            exporter: Err("skipped".into()),
            agent_ready_s: None,
            rss_base_kib: None,
            anon_kib: [None; 3],
            rss_seeded_kib: None,
            rss_after_kib: None,
            hwm_kib: None,
            agent_exit: None,
            agent_stderr: String::new(),
        }
    }
}

/// The outcome of a bench run without the agent section.
pub fn skipped(n: u64) -> Outcome {
    Outcome { na: Some("skipped".into()), ..Outcome::new(n) }
}

/// A running `twreset agent` on a port of its own, ready (seeded, attached).
pub struct Agent {
    pub daemon: Daemon,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub ready_s: f64,
}

impl Agent {
    /// Start the agent and wait up to 60 s for `/readyz`; `Ok(Err(why))` when it never got ready.
    pub fn start(twreset: &Path, caps: &Caps, tag: &str) -> Result<Result<Self, String>> {
        let port = free_port()?;
        let socket = std::env::temp_dir().join(format!("twbench-{}-{tag}.sock", std::process::id()));
        let mut cmd = Command::new(twreset);
        cmd.args(caps.agent_args(port, &socket)).env("TWRESET_LOG", "twreset=info").env("NO_COLOR", "1");
        let start = Instant::now();
        let mut d = Daemon::spawn(&mut cmd)?;
        let base = format!("http://127.0.0.1:{port}");
        let ready = wait_for(Duration::from_secs(60), || {
            !d.alive()
                || sys::output(Command::new("curl").args(["-sf", "-o", "/dev/null", &format!("{base}/readyz")])).is_ok()
        }) && d.alive();
        sys::check_interrupted()?;
        if !ready {
            let (code, err) = d.stop();
            return Ok(Err(format!("agent not ready (exit {code:?}): {}", err.lines().last().unwrap_or(""))));
        }
        Ok(Ok(Self { daemon: d, base, ready_s: start.elapsed().as_secs_f64() }))
    }

    pub fn metrics_url(&self) -> String {
        format!("{}/metrics", self.base)
    }
}

/// TIME_WAIT sockets' distinct remote addresses in `ns`.
fn distinct_peers(ns: &Ns) -> Result<u64> {
    let out = ns.output(&["ss", "-Htan", "state", "time-wait"])?;
    let mut peers = std::collections::HashSet::new();
    for l in out.lines() {
        // Recv-Q Send-Q Local:Port Peer:Port (no State column with a state filter).
        if let Some(p) = l.split_whitespace().nth(3).and_then(|p| p.rsplit_once(':')) {
            peers.insert(p.0.to_owned());
        }
    }
    Ok(peers.len() as u64)
}

fn exporter_bin() -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/usr/local/bin"].iter().map(|d| Path::new(d).join(EXPORTER)).find(|p| p.exists())
}

/// node-exporter's tcpstat inside `ns`, answering; `Err(why)` when it is not installed or silent.
fn start_exporter(ns: &Ns, url: &str) -> Result<Result<Daemon, String>> {
    let Some(bin) = exporter_bin() else { return Ok(Err(format!("n/a: {EXPORTER} is not installed"))) };
    let listen = format!("--web.listen-address=127.0.0.1:{EXPORTER_PORT}");
    let bin = bin.to_str().context("exporter path is not UTF-8")?.to_owned();
    let mut d = Daemon::spawn(&mut ns.cmd(&[&bin, "--collector.disable-defaults", "--collector.tcpstat", &listen]))?;
    if wait_for(Duration::from_secs(20), || scrape::fetch(Some(ns), url).is_ok()) {
        Ok(Ok(d))
    } else {
        let (_, err) = d.stop();
        Ok(Err(format!("{EXPORTER} did not answer: {}", err.lines().last().unwrap_or(""))))
    }
}

/// The agent's base: its VmRSS and RssAnon 1 s after ready while the bench namespace is empty.
fn base_rss(twreset: &Path, caps: &Caps) -> Result<(Option<u64>, Option<u64>)> {
    let Ok(mut a) = Agent::start(twreset, caps, "agent-base")? else { return Ok((None, None)) };
    thread::sleep(Duration::from_secs(1));
    let rss = (status_kib(a.daemon.pid(), "VmRSS:"), status_kib(a.daemon.pid(), "RssAnon:"));
    a.daemon.stop();
    Ok(rss)
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
    let mut exporter = match start_exporter(&ns, &ex_url)? {
        Ok(d) => Some(d),
        Err(why) => {
            o.exporter = Err(why);
            None
        }
    };
    if caps.agent_cmd {
        (o.rss_base_kib, o.anon_kib[0]) = base_rss(twreset, caps)?;
    }
    // Server-close: the server's TIME_WAIT socket has the client's source address as its remote
    // address. A client thread moves to the next source after each round of the server ports, so
    // THREADS x PORTS = 20 (sockets per peer) makes each thread walk every peer exactly once:
    // 20 sockets per peer. Ten threads over two server ports: a million sockets must be made well
    // within the 60 s TIME_WAIT lasts.
    let started = Instant::now();
    let c = churn::run(
        churn_bin,
        &ns,
        &[
            "--threads",
            "10",
            "--mode",
            "server",
            "--count",
            &n.to_string(),
            "--src",
            &format!("127.1.0.1:{peers}"),
            "--ports",
            "900:2",
        ],
    )?;
    o.churn_s = started.elapsed().as_secs_f64();
    eprintln!("bench: {} connections in {:.1} s ({:.0} conn/s)", c.connections, o.churn_s, c.conn_per_s);
    let made = Instant::now();
    o.sockets = ns.sockstat_tw()?;
    let mut agent = None;
    if caps.agent_cmd {
        match Agent::start(twreset, caps, "agent")? {
            Ok(a) => {
                o.agent_ready_s = Some(a.ready_s);
                thread::sleep(Duration::from_secs(1));
                o.rss_seeded_kib = status_kib(a.daemon.pid(), "VmRSS:");
                o.anon_kib[1] = status_kib(a.daemon.pid(), "RssAnon:");
                o.agent = Ok(Vec::new());
                agent = Some(a);
            }
            Err(why) => o.agent = Err(why),
        }
    }
    if exporter.is_some() {
        o.exporter = Ok(Vec::new());
    }
    let netns_label = format!("netns=\"{}\"", ns.name);
    let agent_tw = |t: &str| sample(t, "twreset_timewait_sockets", &[&netns_label, "substate=\"time_wait\""]);
    let ex_tw = |t: &str| sample(t, "node_tcp_connection_states", &["state=\"time_wait\""]);
    for _ in 0..SCRAPES {
        if let (Some(a), Ok(v)) = (&agent, &mut o.agent) {
            match scrape::scrape(None, &a.metrics_url(), &agent_tw) {
                Ok(s) => v.push(s),
                Err(e) => o.agent = Err(format!("scrape failed: {e:#}")),
            }
        }
        if let (Some(_), Ok(v)) = (&exporter, &mut o.exporter) {
            match scrape::scrape(Some(&ns), &ex_url, &ex_tw) {
                Ok(s) => v.push(s),
                Err(e) => o.exporter = Err(format!("scrape failed: {e:#}")),
            }
        }
        sys::check_interrupted()?;
    }
    o.window_s = made.elapsed().as_secs_f64();
    o.sockets_after = ns.sockstat_tw()?;
    if let Some(mut a) = agent {
        o.rss_after_kib = status_kib(a.daemon.pid(), "VmRSS:");
        o.anon_kib[2] = status_kib(a.daemon.pid(), "RssAnon:");
        o.hwm_kib = status_kib(a.daemon.pid(), "VmHWM:");
        (o.agent_exit, o.agent_stderr) = a.daemon.stop();
        if o.agent_exit != Some(0) && o.agent.is_ok() {
            bail!("twreset agent exited with {:?} on SIGTERM: {}", o.agent_exit, o.agent_stderr);
        }
    }
    if let Some(d) = exporter.as_mut() {
        d.stop();
    }
    o.distinct_peers = distinct_peers(&ns)?;
    Ok(o)
}
