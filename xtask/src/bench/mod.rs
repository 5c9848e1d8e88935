//! `cargo xtask bench`: twreset against its peers (bpftrace, `ss -K`) on this machine, inside
//! namespaces of its own; prints one side-by-side table and writes target/bench/latest.json.
//!
//! Benchmarks, not tests: nothing here fails on a number; the table says how far each figure is
//! from its target.

mod agent;
mod chains;
mod churn;
mod kill;
mod ns;
mod parse;
mod profile;
mod report;
mod sys;
mod table;
mod trace;
mod tracer;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{
    bootstrap::{self, Tools},
    build,
};

/// Sizes and repetitions of one bench run.
pub struct Plan {
    pub quick: bool,
    pub trace: trace::Cfg,
    pub kill_sizes: Vec<u64>,
    pub table_n: u64,
    /// TIME_WAIT sockets (over a twentieth as many peers) the agent section scrapes.
    pub agent_n: u64,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
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
        Self {
            quick,
            trace,
            kill_sizes: if quick { vec![10_000] } else { vec![10_000, 50_000, 200_000] },
            table_n: if quick { 10_000 } else { 200_000 },
            agent_n: if quick { 10_000 } else { 200_000 },
        }
    }
}

/// What the twreset binary offers, read from its `--help` (other branches add commands).
pub struct Caps {
    pub kill: bool,
    kill_yes: bool,
    pub tw: bool,
    pub trace_timewait: bool,
    /// A real `twreset agent` subcommand.
    pub agent_cmd: bool,
    agent: Option<Vec<String>>,
}

fn help(bin: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(bin).args(args).arg("--help").output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Subcommand names from clap's `Commands:` section.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Placeholder for the namespace path in `TWRESET_BENCH_AGENT`.
const NETNS_HOLE: &str = "{netns}";
/// Placeholder for how long a self-ending table mode must keep the table (e.g. `5000ms`).
const SETTLE_HOLE: &str = "{settle}";

impl Caps {
    pub fn detect(bin: &Path) -> Self {
        let subs = subcommands(&help(bin, &[]).unwrap_or_default());
        let has = |s: &str| subs.iter().any(|c| c == s);
        let kill = has("kill");
        let kill_yes = kill && help(bin, &["kill"]).is_some_and(|h| h.contains("--yes"));
        let tw = has("tw");
        // The table-keeping (agent) path: an explicit command line wins, then an `agent`
        // subcommand, then a repeating `tw --watch`, then a one-shot `tw` that keeps its table
        // live from kernel events for `--settle` (no per-event output) before printing once.
        let agent = if let Ok(cmdline) = std::env::var("TWRESET_BENCH_AGENT") {
            Some(cmdline.split_whitespace().map(str::to_owned).collect())
        } else if has("agent") {
            // It covers every namespace, the bench's included; an empty config is all defaults,
            // and the metrics port and API socket are its own so it never meets an installed one.
            let socket = std::env::temp_dir().join(format!("twbench-{}-table-agent.sock", std::process::id()));
            Some(vec![
                "agent".into(),
                "--config".into(),
                "/dev/null".into(),
                "--metrics-listen".into(),
                "127.0.0.1:0".into(),
                "--socket".into(),
                socket.to_string_lossy().into_owned(),
            ])
        } else if tw && help(bin, &["tw"]).is_some_and(|h| h.contains("--watch")) {
            Some(vec!["tw".into(), "--watch".into(), "--json".into(), "--netns".into(), NETNS_HOLE.into()])
        } else if tw && help(bin, &["tw"]).is_some_and(|h| h.contains("--settle")) {
            Some(vec![
                "tw".into(),
                "--json".into(),
                "--netns".into(),
                NETNS_HOLE.into(),
                "--settle".into(),
                SETTLE_HOLE.into(),
            ])
        } else {
            None
        };
        let trace_timewait = help(bin, &["trace"]).is_some_and(|h| h.contains("--timewait"));
        Self { kill, kill_yes, tw, trace_timewait, agent_cmd: has("agent"), agent }
    }

    /// Arguments of the table-keeping mode for one namespace, if the binary has one.
    pub fn table_agent(&self, netns: &Path, settle_s: f64) -> Option<Vec<OsString>> {
        self.agent.as_ref().map(|a| {
            a.iter()
                .map(|s| match s.as_str() {
                    NETNS_HOLE => netns.as_os_str().to_owned(),
                    SETTLE_HOLE => format!("{}ms", (settle_s * 1000.0) as u64).into(),
                    _ => s.into(),
                })
                .collect()
        })
    }

    /// Whether the table mode ends by itself (after `--settle`) rather than on SIGINT.
    pub fn table_agent_ends(&self) -> bool {
        self.agent.as_ref().is_some_and(|a| a.iter().any(|s| s == SETTLE_HOLE))
    }

    pub fn kill_args(&self, peer: &str, netns: &Path) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["kill".into(), peer.into(), "--netns".into(), netns.as_os_str().to_owned()];
        if self.kill_yes {
            a.push("--yes".into());
        }
        a
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "kill": self.kill, "tw": self.tw, "trace_timewait": self.trace_timewait, "agent_command": self.agent_cmd, "agent": self.agent })
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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run(t: &Tools, quick: bool) -> Result<()> {
    ns::remove_stale();
    // Before any thread: a new mount namespace needs a single-threaded process.
    crate::mounts::with_tracefs()?;
    sys::install_signal_handlers();
    let mut plan = Plan::new(quick);
    // TWRESET_BENCH_BIN measures a binary built elsewhere (e.g. a merge candidate) as it is.
    let twreset = match std::env::var_os("TWRESET_BENCH_BIN") {
        Some(p) => PathBuf::from(p),
        None => build::release(t)?,
    };
    let churn_bin = churn::build(&t.root)?;
    bootstrap::ensure_bench_packages();
    let caps = Caps::detect(&twreset);
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
    let agt = if want("agent") {
        agent::bench(plan.agent_n, &churn_bin, &twreset, &caps)?
    } else {
        agent::skipped(plan.agent_n)
    };
    drop(stats);

    let r = report::Report {
        plan: &plan,
        per,
        traces: &traces,
        kills: &kills,
        table: &tbl,
        agent: &agt,
        load_start,
        load_end: loadavg(),
    };
    print!("{}", r.text());
    let dir = build::target_dir(&t.root).join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path: PathBuf = dir.join("latest.json");
    let mut doc = r.json();
    doc["twreset_capabilities"] = caps.json();
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("bench: figures written to {}", path.display());
    Ok(())
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

    #[test]
    fn clap_subcommands() {
        let h = "Usage: twreset <COMMAND>\n\nCommands:\n  trace  Stream\n  kill   Kill\n  help   Print\n\nOptions:\n  -h, --help\n";
        assert_eq!(subcommands(h), ["trace", "kill", "help"]);
    }
}
