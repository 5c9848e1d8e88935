//! The soak (`--soak DURATION`): `twreset agent` under steady churn for a long time, sampled every
//! minute, to tell whether the process grows beyond what its table holds.
//!
//! A fixed total rate (`--soak-rate`, paced by the churn generator) is split over a few namespace
//! slots; each slot's namespace lives a few minutes, then it is deleted with its TIME_WAIT sockets
//! and a new one takes its place (the slots are staggered), and each new namespace's churn comes
//! from a new range of source addresses, so peers and local addresses keep changing. Every minute
//! the bench reads the agent's VmRSS and RssAnon, its `/metrics` (table size, lost events,
//! drift, resyncs) and the kernel's own tw count of each live bench namespace.

mod analysis;

use std::{
    path::Path,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    Caps,
    agent::Agent,
    daemon::status_kib,
    loadavg,
    ns::Ns,
    scrape::{self, sum},
    sys,
};
pub use analysis::Sample;

pub struct Cfg {
    pub duration: Duration,
    /// Connections per second over all slots.
    pub rate: u64,
    /// Namespaces churning at once.
    pub slots: usize,
    /// How long each namespace lives before it is deleted and replaced.
    pub ns_life: Duration,
    pub every: Duration,
    /// Samples before this are left out of the slopes: the table fills for 60 s (the TIME_WAIT
    /// life), and the allocator settles.
    pub warmup: Duration,
    /// Source addresses (peers) of each namespace.
    pub peers_per_ns: u32,
}

impl Cfg {
    pub fn new(duration: Duration, rate: u64) -> Self {
        Self {
            duration,
            rate: rate.max(1),
            slots: 3,
            ns_life: Duration::from_secs(360),
            every: Duration::from_secs(60),
            warmup: Duration::from_secs(300).min(duration / 3),
            peers_per_ns: 1000,
        }
    }
}

/// `30m`, `24h`, `1h30m`, `90s`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let mut total = 0u64;
    let mut num = String::new();
    for ch in s.trim().chars() {
        if ch.is_ascii_digit() {
            num.push(ch);
            continue;
        }
        let unit = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => bail!("duration {s:?}: unknown unit {ch:?} (use s, m, h, d)"),
        };
        let n: u64 = num.parse().with_context(|| format!("duration {s:?}: a number must precede {ch:?}"))?;
        total += n * unit;
        num.clear();
    }
    if !num.is_empty() {
        total += num.parse::<u64>().with_context(|| format!("duration {s:?}"))?;
    }
    if total == 0 {
        bail!("duration {s:?} is zero");
    }
    Ok(Duration::from_secs(total))
}

/// One namespace slot: its namespace, the churn in it, and when it is replaced.
struct Slot {
    ns: Ns,
    churn: Option<Child>,
    until: Instant,
}

impl Drop for Slot {
    /// On an early end (Ctrl-C, an error): no churn outlives the bench in a deleted namespace.
    fn drop(&mut self) {
        if let Some(mut c) = self.churn.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Totals of the churns that have ended.
#[derive(Default)]
struct Done {
    connections: u64,
    errors: u64,
    namespaces_deleted: u64,
}

impl Done {
    /// Wait for a slot's churn (it ends at the slot's end), add its counts, delete its namespace.
    fn retire(&mut self, mut slot: Slot) -> Result<()> {
        let churn = slot.churn.take().context("a slot without its churn")?;
        let out = churn.wait_with_output().context("waiting for a soak churn")?;
        let line = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(line.lines().last().unwrap_or("").trim())
            .with_context(|| format!("soak churn printed {line:?}: {}", String::from_utf8_lossy(&out.stderr)))?;
        self.connections += v["connections"].as_u64().unwrap_or(0);
        self.errors += v["errors"].as_u64().unwrap_or(0);
        self.namespaces_deleted += 1;
        drop(slot); // deletes the namespace
        Ok(())
    }
}

/// A new namespace for slot `i` (its `generation`-th) with a churn paced at `rate` for `secs`.
fn start_slot(cfg: &Cfg, churn_bin: &Path, generation: u64, secs: f64) -> Result<Slot> {
    let ns = Ns::new("soak")?;
    // Each generation its own /22 or so of 127/8 (127.2.0.0 on): new peers and local addresses.
    let first = u32::from(std::net::Ipv4Addr::new(127, 2, 0, 1)) + (generation as u32 % 16_000) * 1024;
    let src = format!("{}:{}", std::net::Ipv4Addr::from(first), cfg.peers_per_ns);
    let rate = (cfg.rate as f64 / cfg.slots as f64).to_string();
    let bin = churn_bin.to_str().context("churn path is not UTF-8")?;
    let mut cmd = ns.cmd(&[bin, "--threads", "2", "--rate", &rate, "--seconds", &format!("{secs:.1}")]);
    cmd.args(["--mode", "mixed", "--ports", "900:8", "--src", &src]);
    let churn = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    Ok(Slot { ns, churn: Some(churn), until: Instant::now() + Duration::from_secs_f64(secs) })
}

/// One look at the agent and the kernel.
fn sample(agent: &Agent, slots: &[Slot], start: Instant, done: &Done, created: u64) -> Sample {
    let pid = agent.daemon.pid();
    let mut s = Sample {
        t_s: start.elapsed().as_secs_f64(),
        rss_kib: status_kib(pid, "VmRSS:"),
        anon_kib: status_kib(pid, "RssAnon:"),
        loadavg: loadavg(),
        namespaces_created: created,
        namespaces_deleted: done.namespaces_deleted,
        connections_done: done.connections,
        ..Sample::default()
    };
    s.kernel_tw = slots.iter().map(|sl| sl.ns.sockstat_tw().ok()).sum();
    match scrape::fetch(None, &agent.metrics_url()) {
        Ok((sc, text)) => {
            s.scrape_ms = Some(sc.ms);
            s.series = Some(sc.series);
            s.table = sum(&text, "twreset_timewait_sockets", &[]);
            s.lost = sum(&text, "twreset_events_lost", &[]);
            s.drift = sum(&text, "twreset_table_drift_sockets", &[]);
            s.resyncs = sum(&text, "twreset_table_resyncs", &[]);
            let interned = |k: &str| sum(&text, "twreset_table_interned", &[&format!("kind=\"{k}\"")]);
            s.interned = [interned("namespaces"), interned("addresses"), interned("pairs")];
            let of = |sl: &Slot| sum(&text, "twreset_timewait_sockets", &[&format!("netns=\"{}\"", sl.ns.name)]);
            s.agent_tw = slots.iter().map(of).sum();
        }
        Err(e) => s.error = Some(format!("{e:#}")),
    }
    s
}

pub fn run(cfg: &Cfg, churn_bin: &Path, twreset: &Path, caps: &Caps) -> Result<()> {
    if !caps.agent_cmd {
        bail!("this twreset has no `agent`: nothing to soak");
    }
    let load_start = loadavg();
    eprintln!(
        "bench: soak for {} s at {} conn/s over {} namespaces at a time (each {} s), sampled every {} s",
        cfg.duration.as_secs(),
        cfg.rate,
        cfg.slots,
        cfg.ns_life.as_secs(),
        cfg.every.as_secs()
    );
    let mut agent = match Agent::start(twreset, caps, "soak-agent")? {
        Ok(a) => a,
        Err(why) => bail!("{why}"),
    };
    let start = Instant::now();
    let end = start + cfg.duration;
    let mut done = Done::default();
    let (mut created, mut slots) = (0u64, Vec::new());
    for i in 0..cfg.slots {
        // Staggered: slot i's first namespace lives (i+1)/slots of a life, so one is replaced
        // every life/slots.
        let life = cfg.ns_life.mul_f64((i + 1) as f64 / cfg.slots as f64).min(cfg.duration);
        slots.push(start_slot(cfg, churn_bin, created, life.as_secs_f64())?);
        created += 1;
    }
    let mut samples = vec![sample(&agent, &slots, start, &done, created)];
    // Half a period off the namespace changes (every life/slots, a whole number of minutes), so
    // no sample falls on a namespace the agent has not found yet.
    let mut next = start + cfg.every / 2;
    let mut died = None;
    while Instant::now() < end {
        thread::sleep(Duration::from_millis(500));
        sys::check_interrupted()?;
        for slot in &mut slots {
            if Instant::now() >= slot.until {
                let left = end.saturating_duration_since(Instant::now());
                if left < Duration::from_secs(5) {
                    continue;
                }
                let new = start_slot(cfg, churn_bin, created, cfg.ns_life.min(left).as_secs_f64())?;
                created += 1;
                done.retire(std::mem::replace(slot, new))?;
            }
        }
        if Instant::now() >= next {
            next += cfg.every;
            if !agent.daemon.alive() {
                died = Some(agent.daemon.stop());
                break;
            }
            let s = sample(&agent, &slots, start, &done, created);
            eprintln!("bench: soak {}", s.line());
            samples.push(s);
        }
    }
    for s in slots {
        done.retire(s)?;
    }
    let (exit, stderr) = died.unwrap_or_else(|| agent.daemon.stop());
    let result = analysis::Soak {
        cfg,
        samples,
        connections: done.connections,
        connect_errors: done.errors,
        namespaces_created: created,
        agent_exit: exit,
        agent_stderr: stderr,
        load_start,
        load_end: loadavg(),
    };
    print!("{}", result.text());
    super::write_json("soak.json", &result.json())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("m").is_err());
    }
}
