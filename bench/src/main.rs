//! `twreset-bench`: twreset against its peers (bpftrace, `ss -K`, node-exporter) on this machine,
//! inside namespaces of its own; prints one side-by-side table and writes
//! `target/bench/latest.json`. `cargo xtask bench [ARGS]` builds it, the twreset binary and the
//! churn generator, then runs it with ARGS.
//!
//! Benchmarks, not tests: nothing here fails on a number; the table says how far each figure is
//! from its target.

mod agent;
mod caps;
mod chains;
mod churn;
mod daemon;
mod kill;
mod mounts;
mod ns;
mod parse;
mod profile;
mod report;
mod scrape;
mod soak;
mod sys;
mod table;
mod trace;
mod tracer;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::Parser;

use caps::Caps;

#[derive(Parser)]
#[command(
    name = "twreset-bench",
    about = "twreset against its peers in namespaces of its own (run it through `cargo xtask bench`)"
)]
struct Args {
    /// One short run per figure (1 round of 3 s, 10k sockets for kill, table and agent) instead of
    /// 11 rounds of 5 s, kill at 10k/50k/200k, table at 200k and agent at 200k and 1M.
    #[arg(long)]
    quick: bool,
    /// TIME_WAIT sockets of the agent section (comma-separated sizes; each over a twentieth as
    /// many peers). Default: 200000,1000000 (--quick: 10000).
    #[arg(long, value_name = "N", value_delimiter = ',')]
    agent_sockets: Vec<u64>,
    /// Run the soak instead of the sections: `twreset agent` under steady churn for DURATION
    /// (e.g. 30m, 24h, 1h30m), sampled every minute; writes target/bench/soak.json.
    #[arg(long, value_name = "DURATION")]
    soak: Option<String>,
    /// Connections per second of the soak's churn.
    #[arg(long, value_name = "CONN_PER_S", default_value_t = 2000)]
    soak_rate: u64,
    /// The twreset binary to measure. Default: $TWRESET_BENCH_BIN, else `twreset` next to this
    /// binary (what `cargo xtask bench` builds).
    #[arg(long, value_name = "PATH")]
    twreset: Option<PathBuf>,
}

/// Sizes and repetitions of one bench run.
pub struct Plan {
    pub quick: bool,
    pub trace: trace::Cfg,
    pub kill_sizes: Vec<u64>,
    pub table_n: u64,
    /// Sizes of the agent section: TIME_WAIT sockets, over a twentieth as many peers.
    pub agent_sizes: Vec<u64>,
}

impl Plan {
    pub fn new(quick: bool, agent_sizes: Vec<u64>) -> Self {
        // The churn's thread count is measured on the machine (`churn::fastest`); 4 is the
        // fallback. Short runs, many rounds: the rate of a shared VM drifts by +-10% between runs,
        // and each round's tracers are compared with the no-tracer runs that bracket them.
        let candidates = vec![4, 8, 16];
        let trace = if quick {
            trace::Cfg {
                runs: 1,
                timed_runs: 1,
                print_runs: 1,
                seconds: 3.0,
                threads: 4,
                candidates,
                picked_from: Vec::new(),
            }
        } else {
            // 11 rounds: a run's rate against its neighbours scatters by about 8% (SD) on this
            // VM, so the median's own error is about 3 points with 11, against 4 with 7.
            trace::Cfg {
                runs: 11,
                timed_runs: 3,
                print_runs: 3,
                seconds: 5.0,
                threads: 4,
                candidates,
                picked_from: Vec::new(),
            }
        };
        let agent_sizes = match agent_sizes {
            v if !v.is_empty() => v,
            _ if quick => vec![10_000],
            _ => vec![200_000, 1_000_000],
        };
        Self {
            quick,
            trace,
            kill_sizes: if quick { vec![10_000] } else { vec![10_000, 50_000, 200_000] },
            table_n: if quick { 10_000 } else { 200_000 },
            agent_sizes,
        }
    }
}

/// The mean; 0 for none.
pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

pub fn median(v: Vec<f64>) -> Option<f64> {
    quantile(v, 0.5)
}

/// The `q` quantile (0..=1), interpolated between the two nearest values; `None` for none.
pub fn quantile(mut v: Vec<f64>, q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let at = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (at - lo as f64))
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The directory this binary sits in: `target/release`, where `cargo xtask bench` also built
/// `twreset` and `churn`.
fn exe_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    Ok(exe.parent().context("the bench binary has no directory")?.to_owned())
}

/// Where results go: `target/bench` (the `target` above `release`).
/// `target/bench/`, or `TWRESET_BENCH_OUT` (a VM's shared directory: `cargo xtask bench --kernel`).
fn out_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TWRESET_BENCH_OUT") {
        return Ok(PathBuf::from(dir));
    }
    let dir = exe_dir()?;
    Ok(dir.parent().unwrap_or(&dir).join("bench"))
}

/// `git` in the current directory (`cargo xtask` runs from the work tree), trimmed stdout.
fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// What every recorded run carries (docs/benchmarks.md, "Recorded runs"): the day, the commit of
/// the work tree (that of the binary when `cargo xtask bench` built it; `-dirty` when the
/// binary's crates have uncommitted changes) and the mode.
pub fn provenance(mode: &str) -> serde_json::Value {
    let date = std::process::Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .ok();
    let dirty = git(&["status", "--porcelain", "--", "twreset", "twreset-common", "twreset-ebpf"])
        .is_some_and(|s| !s.is_empty());
    let commit = git(&["rev-parse", "--short", "HEAD"]).map(|c| if dirty { format!("{c}-dirty") } else { c });
    serde_json::json!({ "date": date, "commit": commit, "mode": mode })
}

/// Write `doc` to `out_dir()/name`, pretty-printed; the path written.
pub fn write_json(name: &str, doc: &serde_json::Value) -> Result<PathBuf> {
    let dir = out_dir()?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(doc)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("bench: figures written to {}", path.display());
    Ok(path)
}

fn twreset_bin(args: &Args) -> Result<PathBuf> {
    // TWRESET_BENCH_BIN measures a binary built elsewhere (e.g. a merge candidate) as it is.
    let bin = match (&args.twreset, std::env::var_os("TWRESET_BENCH_BIN")) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => PathBuf::from(p),
        (None, None) => exe_dir()?.join("twreset"),
    };
    anyhow::ensure!(bin.exists(), "no twreset binary at {} (run the bench through `cargo xtask bench`)", bin.display());
    Ok(bin)
}

fn run(args: Args) -> Result<()> {
    ns::remove_stale();
    // Before any thread: a new mount namespace needs a single-threaded process.
    mounts::with_tracefs()?;
    sys::install_signal_handlers();
    let twreset = twreset_bin(&args)?;
    let churn_bin = exe_dir()?.join("churn");
    let caps = Caps::detect(&twreset);
    if let Some(d) = &args.soak {
        let cfg = soak::Cfg::new(soak::parse_duration(d)?, args.soak_rate);
        return soak::run(&cfg, &churn_bin, &twreset, &caps);
    }
    let mut plan = Plan::new(args.quick, args.agent_sockets.clone());
    let quick = args.quick;
    let load_start = loadavg();
    let stats = sys::BpfStats::take(); // restored on drop, also on error and Ctrl-C
    if stats.is_none() {
        eprintln!("bench: cannot set kernel.bpf_stats_enabled; in-kernel BPF time will be n/a");
    }

    // TWRESET_BENCH_ONLY=kill,table (any of trace, kill, table, agent) runs only those sections.
    let only = std::env::var("TWRESET_BENCH_ONLY").ok();
    let want = |s: &str| only.as_deref().is_none_or(|o| o.split(',').any(|x| x.trim() == s));
    let (per, traces) = if want("trace") {
        eprintln!("bench: measuring transitions per connection (bpftrace count, 2000 connections per close side)");
        let per = trace::calibrate(&churn_bin)?;
        let (secs, reps) = if quick { (2.0, 1) } else { (4.0, 2) };
        let (threads, rates) = churn::fastest(&churn_bin, &plan.trace.candidates, secs, reps)?;
        (plan.trace.threads, plan.trace.picked_from) = (threads, rates);
        (per, trace::bench(&plan.trace, per, &churn_bin, &twreset, &caps, stats.as_ref())?)
    } else {
        (trace::PerConn { client_close: 0.0, server_close: 0.0 }, trace::skipped())
    };
    let kills = if want("kill") { kill::bench(&plan.kill_sizes, &churn_bin, &twreset, &caps)? } else { Vec::new() };
    let tbl = if want("table") {
        table::bench(plan.table_n, &churn_bin, &twreset, &caps)?
    } else {
        table::skipped(plan.table_n)
    };
    let mut agents = Vec::new();
    for &n in &plan.agent_sizes {
        agents.push(if want("agent") { agent::bench(n, &churn_bin, &twreset, &caps)? } else { agent::skipped(n) });
    }
    drop(stats);

    let r = report::Report {
        plan: &plan,
        per,
        traces: &traces,
        kills: &kills,
        table: &tbl,
        agents: &agents,
        load_start,
        load_end: loadavg(),
    };
    print!("{}", r.text());
    let mode = match only.as_deref().map(str::trim) {
        Some("trace") => "tracing-only".into(), // the name earlier recorded runs use
        Some(o) => format!("{}-only", o.replace(',', "-")),
        None if quick => "quick".into(),
        None => "full".into(),
    };
    let mut doc = provenance(&mode);
    if let (Some(d), serde_json::Value::Object(r)) = (doc.as_object_mut(), r.json()) {
        d.extend(r);
    }
    doc["twreset_capabilities"] = caps.json();
    write_json("latest.json", &doc)?;
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(quantile(vec![], 0.25), None);
        assert_eq!(quantile(vec![5.0, 1.0, 3.0, 2.0, 4.0], 0.25), Some(2.0));
        assert_eq!(quantile(vec![5.0, 1.0, 3.0, 2.0, 4.0], 0.75), Some(4.0));
        assert_eq!(quantile(vec![1.0, 2.0], 0.25), Some(1.25));
        assert_eq!(quantile(vec![7.0], 0.9), Some(7.0));
    }
}
