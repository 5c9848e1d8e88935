//! Table: twreset's memory while it tracks N TIME_WAIT sockets and the time to seed its table from
//! them, both as the difference between a snapshot of N sockets and one of an empty namespace.
//! Memory is read two ways: current RSS sampled while `tw` follows kernel events after its seed
//! (the tracking cost), and the peak, which also holds the transient sock_diag dumps.

use std::{path::Path, process::Command};

use anyhow::Result;
use serde_json::{Value, json};

use super::{Caps, churn, ns::Ns, sys};

const PEERS: [&str; 2] = ["127.0.0.30", "127.0.0.31"];

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub sockets: u64,
    pub wall_s: f64,
    pub maxrss_kib: u64,
    /// Median VmRSS while `tw` follows events after its seed (see [`SETTLE_S`]).
    pub tracking_rss_kib: Option<u64>,
    /// TIME_WAIT sockets the snapshot itself reported, when its JSON says so.
    pub reported: Option<u64>,
    pub exit: Option<i32>,
    pub stderr: String,
}

impl Snapshot {
    fn json(&self) -> Value {
        json!({ "time_wait_sockets": self.sockets, "wall_s": self.wall_s, "peak_rss_kib": self.maxrss_kib,
                "tracking_rss_kib": self.tracking_rss_kib,
                "reported_by_twreset": self.reported, "exit_status": self.exit, "stderr": self.stderr.trim() })
    }
}

pub struct Outcome {
    pub n: u64,
    pub na: Option<String>,
    pub empty: Snapshot,
    pub full: Snapshot,
}

impl Outcome {
    /// Current RSS beyond the base per tracked socket, while tracking.
    pub fn tracking_bytes_per_socket(&self) -> Option<f64> {
        let (full, empty) = (self.full.tracking_rss_kib?, self.empty.tracking_rss_kib?);
        (self.na.is_none() && self.full.sockets > 0)
            .then(|| (full as f64 - empty as f64) * 1024.0 / self.full.sockets as f64)
    }

    /// Peak RSS beyond the base per tracked socket (includes the transient dumps).
    pub fn bytes_per_socket(&self) -> Option<f64> {
        (self.na.is_none() && self.full.sockets > 0)
            .then(|| (self.full.maxrss_kib as f64 - self.empty.maxrss_kib as f64) * 1024.0 / self.full.sockets as f64)
    }
    /// Snapshot time beyond the empty snapshot's (attach and settle cost the same in both).
    pub fn seed_s(&self) -> Option<f64> {
        self.na.is_none().then_some(self.full.wall_s - self.empty.wall_s)
    }
    pub fn json(&self) -> Value {
        json!({ "n": self.n, "na": self.na, "empty": self.empty.json(), "full": self.full.json(),
                "bytes_per_socket": self.bytes_per_socket(),
                "tracking_bytes_per_socket": self.tracking_bytes_per_socket(), "seed_s": self.seed_s() })
    }
}

/// A total TIME_WAIT count in `twreset tw --json` output, wherever the schema puts it: a
/// `totals` object's `count`/`time_wait`/`total`, else the sum of `count` over the first list.
fn reported(v: &Value) -> Option<u64> {
    fn totals(v: &Value) -> Option<u64> {
        match v {
            Value::Object(m) => {
                if let Some(t) = m.get("totals").or_else(|| m.get("total")) {
                    if let Some(n) = t.as_u64() {
                        return Some(n);
                    }
                    for k in ["count", "time_wait", "total"] {
                        if let Some(n) = t.get(k).and_then(Value::as_u64) {
                            return Some(n);
                        }
                    }
                }
                m.values().find_map(totals)
            }
            Value::Array(a) => a.iter().find_map(totals),
            _ => None,
        }
    }
    fn first_list_sum(v: &Value) -> Option<u64> {
        match v {
            Value::Array(a) if a.iter().any(|e| e.get("count").is_some()) => {
                Some(a.iter().filter_map(|e| e.get("count").and_then(Value::as_u64)).sum())
            }
            Value::Object(m) => m.values().find_map(first_list_sum),
            _ => None,
        }
    }
    totals(v).or_else(|| first_list_sum(v))
}

/// How long each snapshot follows kernel events after its seed.
const SETTLE_S: f64 = 6.0;

/// Median of the RSS samples taken while `tw` followed events: well after the seed (its dump ends
/// about a second into the settle at 200k) and before the final reconcile's dump (the last second
/// or so of the run).
fn tracking_rss(samples: &[(f64, u64)], wall_s: f64) -> Option<u64> {
    let (from, to) = (wall_s - SETTLE_S + 1.5, wall_s - 1.5);
    let mut in_window: Vec<u64> = samples.iter().filter(|(t, _)| *t >= from && *t <= to).map(|(_, k)| *k).collect();
    in_window.sort_unstable();
    in_window.get(in_window.len() / 2).copied()
}

fn snapshot(ns: &Ns, twreset: &Path) -> Result<Snapshot> {
    let sockets = ns.time_wait_all()?;
    let mut cmd = Command::new(twreset);
    cmd.args(["tw", "--json", "--settle", &format!("{SETTLE_S}s"), "--netns"]).arg(ns.path());
    let (m, samples) = sys::run_sampled(&mut cmd)?;
    sys::check_interrupted()?;
    let wall_s = m.wall.as_secs_f64();
    Ok(Snapshot {
        sockets,
        wall_s,
        maxrss_kib: m.maxrss_kib,
        tracking_rss_kib: tracking_rss(&samples, wall_s),
        reported: serde_json::from_str::<Value>(&m.stdout).ok().as_ref().and_then(reported),
        exit: m.status.code(),
        stderr: m.stderr.chars().take(2000).collect(),
    })
}

/// The outcome of a bench run without the table section.
pub fn skipped(n: u64) -> Outcome {
    Outcome { n, na: Some("skipped".into()), empty: Snapshot::default(), full: Snapshot::default() }
}

pub fn bench(n: u64, churn_bin: &Path, twreset: &Path, caps: &Caps) -> Result<Outcome> {
    let mut o = Outcome { n, na: None, empty: Snapshot::default(), full: Snapshot::default() };
    if !caps.tw {
        o.na = Some("n/a (not built): this twreset has no `tw`".into());
        return Ok(o);
    }
    eprintln!("bench: table snapshot of an empty namespace and of {n} TIME_WAIT sockets");
    let empty = Ns::new("table0")?;
    o.empty = snapshot(&empty, twreset)?;
    drop(empty);
    let ns = Ns::new("table")?;
    for (i, peer) in PEERS.iter().enumerate() {
        let share = n / PEERS.len() as u64 + u64::from(i == 0) * (n % PEERS.len() as u64);
        churn::run(
            churn_bin,
            &ns,
            &[
                "--threads",
                "4",
                "--mode",
                "client",
                "--count",
                &share.to_string(),
                "--dst",
                peer,
                "--src",
                "127.0.1.1:16",
                "--ports",
                "900:8",
            ],
        )?;
    }
    o.full = snapshot(&ns, twreset)?;
    if o.full.exit != Some(0) || o.empty.exit != Some(0) {
        o.na = Some(format!("twreset tw failed: {}", o.full.stderr.trim().lines().last().unwrap_or("")));
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracking_rss_is_the_median_inside_the_settle_window() {
        // wall 8 s, settle 6 s: samples from 3.5 s to 6.5 s count; the seed peak at 2.5 s and the
        // final reconcile at 7.0 s do not.
        let samples = [(0.5, 10), (2.5, 900), (3.5, 100), (5.0, 104), (6.5, 102), (7.0, 800)];
        assert_eq!(tracking_rss(&samples, 8.0), Some(102));
        assert_eq!(tracking_rss(&[], 5.0), None);
    }

    #[test]
    fn finds_totals() {
        assert_eq!(reported(&json!({"peers": [{"count": 3}], "totals": {"count": 7}})), Some(7));
        assert_eq!(reported(&json!({"peers": [{"count": 3}, {"count": 4}]})), Some(7));
        assert_eq!(reported(&json!([{"raddr": "x", "count": 2}])), Some(2));
        assert_eq!(reported(&json!({"x": 1})), None);
    }
}
