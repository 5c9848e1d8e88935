//! Table: twreset's memory while it tracks N TIME_WAIT sockets and the time to seed its table from
//! them, each against a snapshot of an empty namespace.
//!
//! `tw --json` reports when its phases happened (`live`: `CLOCK_MONOTONIC` ns); the bench samples
//! VmRSS and RssAnon every 50 ms on the same clock (seconds since spawn):
//! - seed time: from `seed_started_ns` to `seed_done_ns` (dump read straight into the table),
//!   full minus empty;
//! - tracking memory: the median of the samples from 1 s after the seed to 0.25 s before
//!   `reconcile_started_ns`, i.e. while `tw` only follows kernel events (the final reconcile's
//!   dump and settle come after);
//! - peak memory: `ru_maxrss` (whole run, including attach) and the highest sample from the
//!   seed's start on (seed and reconcile).

use std::{path::Path, process::Command};

use anyhow::Result;
use serde_json::{Value, json};

use super::{Caps, churn, ns::Ns, sys, sys::RssSample};

const PEERS: [&str; 2] = ["127.0.0.30", "127.0.0.31"];

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub sockets: u64,
    pub wall_s: f64,
    pub maxrss_kib: u64,
    /// Seconds from spawn to the "seeding" and "seeded" lines (see the module doc).
    pub seeding_at_s: Option<f64>,
    pub seeded_at_s: Option<f64>,
    /// The seed's duration as twreset itself reports it in the "seeded" line.
    pub seed_reported_s: Option<f64>,
    /// Seconds from spawn to the final reconcile's line.
    pub reconcile_at_s: Option<f64>,
    /// Median VmRSS and RssAnon while `tw` follows events between seed and final reconcile.
    pub tracking_rss_kib: Option<u64>,
    pub tracking_anon_kib: Option<u64>,
    /// Highest VmRSS sampled from the "seeding" line on (seed, settle, reconcile, output).
    pub after_attach_peak_kib: Option<u64>,
    /// TIME_WAIT sockets the snapshot itself reported, when its JSON says so.
    pub reported: Option<u64>,
    pub exit: Option<i32>,
    pub stderr: String,
}

impl Snapshot {
    fn json(&self) -> Value {
        json!({ "time_wait_sockets": self.sockets, "wall_s": self.wall_s, "peak_rss_kib": self.maxrss_kib,
                "seeding_at_s": self.seeding_at_s, "seeded_at_s": self.seeded_at_s,
                "seed_reported_s": self.seed_reported_s, "reconcile_at_s": self.reconcile_at_s,
                "tracking_rss_kib": self.tracking_rss_kib, "tracking_anon_kib": self.tracking_anon_kib,
                "after_attach_peak_rss_kib": self.after_attach_peak_kib,
                "reported_by_twreset": self.reported, "exit_status": self.exit, "stderr": self.stderr.trim() })
    }

    /// Seconds from the "seeding" line to the "seeded" line.
    fn seed_s(&self) -> Option<f64> {
        Some(self.seeded_at_s? - self.seeding_at_s?)
    }
}

pub struct Outcome {
    pub n: u64,
    pub na: Option<String>,
    pub empty: Snapshot,
    pub full: Snapshot,
}

impl Outcome {
    fn per_socket(&self, full: Option<u64>, empty: Option<u64>) -> Option<f64> {
        let (full, empty) = (full?, empty?);
        (self.na.is_none() && self.full.sockets > 0)
            .then(|| (full as f64 - empty as f64) * 1024.0 / self.full.sockets as f64)
    }

    /// Current RSS (VmRSS) beyond the base per tracked socket, while tracking.
    pub fn tracking_bytes_per_socket(&self) -> Option<f64> {
        self.per_socket(self.full.tracking_rss_kib, self.empty.tracking_rss_kib)
    }

    /// The same in anonymous memory only (VmRSS also holds file pages: binary, ring buffer).
    pub fn tracking_anon_bytes_per_socket(&self) -> Option<f64> {
        self.per_socket(self.full.tracking_anon_kib, self.empty.tracking_anon_kib)
    }

    /// Peak RSS (`ru_maxrss`, whole run) beyond the base per tracked socket. Attaching (BTF
    /// parsing) sets the empty run's peak, so this only shows how far the table goes beyond it.
    pub fn bytes_per_socket(&self) -> Option<f64> {
        self.per_socket(Some(self.full.maxrss_kib), Some(self.empty.maxrss_kib))
    }

    /// Highest sampled RSS after attaching (seed and reconcile transients) per tracked socket.
    pub fn after_attach_peak_bytes_per_socket(&self) -> Option<f64> {
        self.per_socket(self.full.after_attach_peak_kib, self.empty.after_attach_peak_kib)
    }

    /// Seed time: "seeding" to "seeded" with N sockets, minus the same with none.
    pub fn seed_s(&self) -> Option<f64> {
        self.na.is_none().then_some(())?;
        Some(self.full.seed_s()? - self.empty.seed_s()?)
    }

    /// Spawn to "seeded", full minus empty: also holds the noise of attaching in two processes.
    pub fn spawn_to_seeded_s(&self) -> Option<f64> {
        self.na.is_none().then_some(())?;
        Some(self.full.seeded_at_s? - self.empty.seeded_at_s?)
    }

    /// The old figure: whole snapshot wall time, full minus empty. Beyond the seed it holds the
    /// final reconcile's dump, the JSON output and the teardown of a 200k table.
    pub fn snapshot_wall_diff_s(&self) -> Option<f64> {
        self.na.is_none().then_some(self.full.wall_s - self.empty.wall_s)
    }

    pub fn json(&self) -> Value {
        json!({ "n": self.n, "na": self.na, "empty": self.empty.json(), "full": self.full.json(),
                "bytes_per_socket": self.bytes_per_socket(),
                "after_attach_peak_bytes_per_socket": self.after_attach_peak_bytes_per_socket(),
                "tracking_bytes_per_socket": self.tracking_bytes_per_socket(),
                "tracking_anon_bytes_per_socket": self.tracking_anon_bytes_per_socket(),
                "seed_s": self.seed_s(), "spawn_to_seeded_s": self.spawn_to_seeded_s(),
                "seed_reported_by_twreset_s": self.full.seed_reported_s,
                "snapshot_wall_diff_s": self.snapshot_wall_diff_s() })
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

/// How long each snapshot follows kernel events after its seed (and again after the final dump).
const SETTLE_S: f64 = 6.0;

/// `tw`'s phases in seconds since spawn (see the module doc).
#[derive(Debug, Default, PartialEq)]
struct Phases {
    seeding_at: Option<f64>,
    seeded_at: Option<f64>,
    seed_reported_s: Option<f64>,
    reconcile_at: Option<f64>,
}

/// Read from the `live` object of `tw --json`'s document, its times made relative to the spawn.
fn phases(doc: &Value, spawned_mono_ns: u64) -> Phases {
    let ns = |k: &str| doc["live"][k].as_u64().filter(|&ns| ns > 0);
    let at = |k: &str| ns(k).map(|ns| ns.saturating_sub(spawned_mono_ns) as f64 / 1e9);
    Phases {
        seeding_at: at("seed_started_ns"),
        seeded_at: at("seed_done_ns"),
        seed_reported_s: ns("seed_done_ns").zip(ns("seed_started_ns")).map(|(b, a)| b.saturating_sub(a) as f64 / 1e9),
        reconcile_at: at("reconcile_started_ns"),
    }
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// Median VmRSS and RssAnon while `tw` only followed events: 1 s after the seed's line (its
/// buffers are gone by then) to 0.25 s before the final reconcile's line.
fn tracking(samples: &[RssSample], p: &Phases) -> (Option<u64>, Option<u64>) {
    let (Some(seeded), Some(reconcile)) = (p.seeded_at, p.reconcile_at) else { return (None, None) };
    let window: Vec<&RssSample> = samples.iter().filter(|s| s.t >= seeded + 1.0 && s.t <= reconcile - 0.25).collect();
    (median(window.iter().map(|s| s.rss_kib).collect()), median(window.iter().map(|s| s.anon_kib).collect()))
}

fn snapshot(ns: &Ns, twreset: &Path) -> Result<Snapshot> {
    let sockets = ns.time_wait_all()?;
    let mut cmd = Command::new(twreset);
    cmd.args(["tw", "--json", "--settle", &format!("{SETTLE_S}s"), "--netns"]).arg(ns.path());
    cmd.env("TWRESET_LOG", "twreset=info");
    let (m, samples) = sys::run_sampled(&mut cmd)?;
    sys::check_interrupted()?;
    let doc = serde_json::from_str::<Value>(&m.stdout).unwrap_or(Value::Null);
    let p = phases(&doc, m.spawned_mono_ns);
    let (tracking_rss_kib, tracking_anon_kib) = tracking(&samples, &p);
    let after_attach_peak_kib =
        p.seeding_at.and_then(|from| samples.iter().filter(|s| s.t >= from).map(|s| s.rss_kib).max());
    Ok(Snapshot {
        sockets,
        wall_s: m.wall.as_secs_f64(),
        maxrss_kib: m.maxrss_kib,
        seeding_at_s: p.seeding_at,
        seeded_at_s: p.seeded_at,
        seed_reported_s: p.seed_reported_s,
        reconcile_at_s: p.reconcile_at,
        tracking_rss_kib,
        tracking_anon_kib,
        after_attach_peak_kib,
        reported: reported(&doc),
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

    fn sample(t: f64, rss_kib: u64) -> RssSample {
        RssSample { t, rss_kib, anon_kib: rss_kib / 2 }
    }

    #[test]
    fn phases_from_the_live_object() {
        let doc = json!({"live": {"seed_started_ns": 5_400_000_000u64, "seed_done_ns": 5_663_300_000u64,
                                  "seeded": 199996, "reconcile_started_ns": 11_000_000_000u64}});
        let p = phases(&doc, 5_000_000_000);
        assert_eq!((p.seeding_at, p.reconcile_at), (Some(0.4), Some(6.0)));
        assert!((p.seeded_at.unwrap() - 0.6633).abs() < 1e-9);
        assert!((p.seed_reported_s.unwrap() - 0.2633).abs() < 1e-9);
        assert_eq!(phases(&Value::Null, 1), Phases::default());
    }

    #[test]
    fn tracking_is_the_median_between_seed_and_reconcile() {
        // Seeded at 1.0, reconcile at 7.0: samples from 2.0 to 6.75 count; the seed's at 1.5 and
        // the reconcile's at 6.9 and after do not.
        let p = Phases { seeded_at: Some(1.0), reconcile_at: Some(7.0), ..Phases::default() };
        let samples = [
            sample(0.5, 10),
            sample(1.5, 900),
            sample(2.0, 100),
            sample(4.0, 104),
            sample(6.5, 102),
            sample(6.9, 800),
            sample(9.0, 800),
        ];
        assert_eq!(tracking(&samples, &p), (Some(102), Some(51)));
        assert_eq!(tracking(&samples, &Phases::default()), (None, None), "no lines (an old binary): no figure");
        assert_eq!(tracking(&[], &p), (None, None));
    }

    #[test]
    fn finds_totals() {
        assert_eq!(reported(&json!({"peers": [{"count": 3}], "totals": {"count": 7}})), Some(7));
        assert_eq!(reported(&json!({"peers": [{"count": 3}, {"count": 4}]})), Some(7));
        assert_eq!(reported(&json!([{"raddr": "x", "count": 2}])), Some(2));
        assert_eq!(reported(&json!({"x": 1})), None);
    }
}
