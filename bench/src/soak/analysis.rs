//! What a soak showed: the minute samples, the slopes of RSS and table size after the warm-up
//! (least squares), whether RSS grew beyond what the table's own growth explains, the printed
//! table and the JSON.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::Cfg;

/// RSS per tracked socket the verdict allows for the table's own growth: the project's target
/// (`docs/benchmarks.md`), above the ~53 B measured, so table growth is never taken for a leak.
const BYTES_PER_SOCKET: f64 = 100.0;
/// Growth over the fitted stretch below this is noise (allocator arenas, metrics buffers).
const TOLERANCE_KIB: f64 = 1024.0;

/// One minute's look at the agent and the kernel.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    /// Seconds since the agent was ready.
    pub t_s: f64,
    pub rss_kib: Option<u64>,
    pub anon_kib: Option<u64>,
    /// Tw sockets in the agent's table, every namespace (`twreset_timewait_sockets` summed).
    pub table: Option<u64>,
    /// The agent's count of the live bench namespaces, and the kernel's (sockstat `tw`).
    pub agent_tw: Option<u64>,
    pub kernel_tw: Option<u64>,
    pub lost: Option<u64>,
    pub drift: Option<u64>,
    pub resyncs: Option<u64>,
    /// Ids the agent's table holds (`twreset_table_interned`): namespaces, local addresses,
    /// (namespace, local address) pairs; None from an agent without the series.
    pub interned: [Option<u64>; 3],
    pub scrape_ms: Option<f64>,
    pub series: Option<u64>,
    pub namespaces_created: u64,
    pub namespaces_deleted: u64,
    /// Connections of the churns that have ended so far.
    pub connections_done: u64,
    pub loadavg: String,
    pub error: Option<String>,
}

fn o<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "n/a".into(), |v| v.to_string())
}

impl Sample {
    /// The agent's count minus the kernel's for the live bench namespaces, at this instant.
    pub fn diff(&self) -> Option<i64> {
        Some(self.agent_tw? as i64 - self.kernel_tw? as i64)
    }

    pub fn line(&self) -> String {
        format!(
            "t={:.0}s rss={} KiB anon={} KiB table={} interned ns/addr/pairs={}/{}/{} bench ns: agent {} kernel {} lost={} drift={} resyncs={} load {}",
            self.t_s,
            o(self.rss_kib),
            o(self.anon_kib),
            o(self.table),
            o(self.interned[0]),
            o(self.interned[1]),
            o(self.interned[2]),
            o(self.agent_tw),
            o(self.kernel_tw),
            o(self.lost),
            o(self.drift),
            o(self.resyncs),
            self.loadavg
        )
    }

    fn json(&self) -> Value {
        json!({ "t_s": self.t_s, "rss_kib": self.rss_kib, "anon_kib": self.anon_kib, "table_sockets": self.table,
                "bench_ns_agent_tw": self.agent_tw, "bench_ns_kernel_tw": self.kernel_tw, "events_lost": self.lost,
                "bench_ns_agent_minus_kernel": self.diff(), "drift_sockets": self.drift, "resyncs": self.resyncs,
                "interned_namespaces": self.interned[0], "interned_addresses": self.interned[1], "interned_pairs": self.interned[2],
                "scrape_ms": self.scrape_ms, "series": self.series,
                "namespaces_created": self.namespaces_created, "namespaces_deleted": self.namespaces_deleted,
                "connections_done": self.connections_done, "loadavg": self.loadavg, "error": self.error })
    }
}

/// Least-squares slope of y over x; `None` under 3 points.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

pub struct Soak<'a> {
    pub cfg: &'a Cfg,
    pub samples: Vec<Sample>,
    pub connections: u64,
    pub connect_errors: u64,
    pub namespaces_created: u64,
    pub agent_exit: Option<i32>,
    pub agent_stderr: String,
    pub load_start: String,
    pub load_end: String,
}

/// The fitted stretch: slopes per hour and what they mean.
#[derive(Debug, Default)]
pub struct Fit {
    pub from_s: f64,
    pub to_s: f64,
    pub points: usize,
    pub rss_kib_per_h: Option<f64>,
    pub anon_kib_per_h: Option<f64>,
    pub table_per_h: Option<f64>,
    /// RSS slope less what the table's growth explains at [`BYTES_PER_SOCKET`].
    pub beyond_table_kib_per_h: Option<f64>,
    /// The fitted stretch cut in two halves by time: the highest RSS and table of each. A heap
    /// that grows in steps (a map doubling, an arena) has a slope but settles; one that keeps
    /// growing reaches a new high in the second half.
    pub halves: Option<Halves>,
}

/// The highest RSS (KiB) and table size of each half of the fitted stretch.
#[derive(Debug, Default, Clone, Copy)]
pub struct Halves {
    pub rss_max_kib: [u64; 2],
    pub table_max: [u64; 2],
}

impl Halves {
    /// Samples after the warm-up, cut at the middle of their time span; `None` unless each half has
    /// at least two samples with RSS and table.
    pub fn of(after: &[&Sample]) -> Option<Self> {
        let pts: Vec<(f64, u64, u64)> = after.iter().filter_map(|s| Some((s.t_s, s.rss_kib?, s.table?))).collect();
        let (from, to) = (pts.first()?.0, pts.last()?.0);
        let mid = from + (to - from) / 2.0;
        let (a, b): (Vec<_>, Vec<_>) = pts.iter().partition(|p| p.0 < mid);
        if a.len() < 2 || b.len() < 2 {
            return None;
        }
        let max = |v: &[(f64, u64, u64)], f: fn(&(f64, u64, u64)) -> u64| v.iter().map(f).max().unwrap_or(0);
        Some(Self {
            rss_max_kib: [max(&a, |p| p.1), max(&b, |p| p.1)],
            table_max: [max(&a, |p| p.2), max(&b, |p| p.2)],
        })
    }

    /// How far the second half's RSS high passed the first's, less what a larger table explains
    /// at [`BYTES_PER_SOCKET`]; KiB, negative when it stayed below.
    pub fn new_high_kib(&self) -> f64 {
        let table = self.table_max[1].saturating_sub(self.table_max[0]) as f64 * BYTES_PER_SOCKET / 1024.0;
        self.rss_max_kib[1] as f64 - self.rss_max_kib[0] as f64 - table
    }
}

impl Fit {
    /// Growth beyond the table over the fitted stretch, in KiB.
    pub fn beyond_table_kib(&self) -> Option<f64> {
        Some(self.beyond_table_kib_per_h? * (self.to_s - self.from_s) / 3600.0)
    }

    /// "No growth" when the slope explains at most [`TOLERANCE_KIB`] beyond the table; else
    /// "levelled off" when the second half set no new RSS high beyond the tolerance (the growth was
    /// steps that settled); else "grew".
    pub fn verdict(&self) -> String {
        let halves = self.halves.map(|h| h.new_high_kib());
        match (self.beyond_table_kib(), halves) {
            (None, _) => "n/a (too few samples after the warm-up)".into(),
            (Some(k), _) if k <= TOLERANCE_KIB => {
                format!("no growth beyond the table's ({k:.0} KiB over the stretch, tolerance {TOLERANCE_KIB:.0})")
            }
            (Some(k), Some(h)) if h <= TOLERANCE_KIB => format!(
                "levelled off: RSS grew {k:.0} KiB beyond the table's by the slope, in steps, but its high in the \
                 second half is {h:+.0} KiB from the first half's (tolerance {TOLERANCE_KIB:.0})"
            ),
            (Some(k), h) => format!(
                "RSS grew {k:.0} KiB beyond the table's growth over the stretch{}",
                h.map_or(String::new(), |h| format!(
                    ", and its high in the second half passed the first's by {h:.0} KiB"
                ))
            ),
        }
    }
}

impl Soak<'_> {
    pub fn fit(&self) -> Fit {
        let after: Vec<&Sample> = self.samples.iter().filter(|s| s.t_s >= self.cfg.warmup.as_secs_f64()).collect();
        let per_h = |f: &dyn Fn(&Sample) -> Option<u64>| {
            let pts: Vec<(f64, f64)> =
                after.iter().filter_map(|s| Some((s.t_s / 3600.0, f(s)? as f64))).collect::<Vec<_>>();
            slope(&pts)
        };
        let rss = per_h(&|s| s.rss_kib);
        let table = per_h(&|s| s.table);
        Fit {
            from_s: after.first().map_or(0.0, |s| s.t_s),
            to_s: after.last().map_or(0.0, |s| s.t_s),
            points: after.len(),
            rss_kib_per_h: rss,
            anon_kib_per_h: per_h(&|s| s.anon_kib),
            table_per_h: table,
            beyond_table_kib_per_h: rss.map(|r| r - table.unwrap_or(0.0).max(0.0) * BYTES_PER_SOCKET / 1024.0),
            halves: Halves::of(&after),
        }
    }

    fn last(&self) -> Option<&Sample> {
        self.samples.last()
    }

    pub fn text(&self) -> String {
        let f = self.fit();
        let mut s = String::new();
        let secs = self.last().map_or(0.0, |l| l.t_s);
        let _ = writeln!(
            s,
            "\n## twreset soak: {:.1} min at {} conn/s ({} connections, {} connect errors), {} namespaces made \
             and deleted in turn ({} at a time, {} s each); load average {} at start, {} at end\n",
            secs / 60.0,
            self.cfg.rate,
            self.connections,
            self.connect_errors,
            self.namespaces_created,
            self.cfg.slots,
            self.cfg.ns_life.as_secs(),
            self.load_start,
            self.load_end
        );
        s += "| min | RSS MiB | anon MiB | table | interned ns / addresses / pairs | bench ns agent / kernel | lost | drift | resyncs | scrape ms | load |\n";
        s += "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
        let step = self.samples.len().div_ceil(60).max(1);
        let mib = |k: Option<u64>| k.map_or("n/a".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        for x in self.samples.iter().step_by(step) {
            let _ = writeln!(
                s,
                "| {:.0} | {} | {} | {} | {} / {} / {} | {} / {} | {} | {} | {} | {} | {} |",
                x.t_s / 60.0,
                mib(x.rss_kib),
                mib(x.anon_kib),
                o(x.table),
                o(x.interned[0]),
                o(x.interned[1]),
                o(x.interned[2]),
                o(x.agent_tw),
                o(x.kernel_tw),
                o(x.lost),
                o(x.drift),
                o(x.resyncs),
                x.scrape_ms.map_or("n/a".into(), |m| format!("{m:.1}")),
                x.loadavg
            );
        }
        let per_h = |v: Option<f64>, unit: &str| v.map_or("n/a".into(), |v| format!("{v:+.1} {unit}/h"));
        let _ = writeln!(
            s,
            "\nAfter the {} s warm-up ({} samples, {:.0}-{:.0} s): RSS {}, RssAnon {}, table {}; beyond the \
             table's own growth (at {BYTES_PER_SOCKET} B per socket): {}. Highest RSS in the first and second \
             half of the stretch: {} (table {}). Verdict: {}. Agent exit on SIGTERM: {:?}.",
            self.cfg.warmup.as_secs(),
            f.points,
            f.from_s,
            f.to_s,
            per_h(f.rss_kib_per_h, "KiB"),
            per_h(f.anon_kib_per_h, "KiB"),
            per_h(f.table_per_h, "sockets"),
            per_h(f.beyond_table_kib_per_h, "KiB"),
            f.halves.map_or("n/a".into(), |h| format!(
                "{:.1} / {:.1} MiB",
                h.rss_max_kib[0] as f64 / 1024.0,
                h.rss_max_kib[1] as f64 / 1024.0
            )),
            f.halves.map_or("n/a".into(), |h| format!("{} / {}", h.table_max[0], h.table_max[1])),
            f.verdict(),
            self.agent_exit
        );
        s
    }

    pub fn json(&self) -> Value {
        let f = self.fit();
        let after: Vec<&Sample> = self.samples.iter().filter(|s| s.t_s >= f.from_s).collect();
        let body = json!({
            "when": std::process::Command::new("date").args(["-u", "+%FT%TZ"]).output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default(),
            "machine": { "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
                         "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
                         "loadavg_start": self.load_start, "loadavg_end": self.load_end },
            "soak": { "duration_s": self.last().map_or(0.0, |l| l.t_s), "planned_s": self.cfg.duration.as_secs(),
                      "rate_conn_per_s": self.cfg.rate, "connections": self.connections,
                      "connect_errors": self.connect_errors, "namespaces_created": self.namespaces_created,
                      "namespaces_at_once": self.cfg.slots, "namespace_life_s": self.cfg.ns_life.as_secs(),
                      "peers_per_namespace": self.cfg.peers_per_ns, "sample_every_s": self.cfg.every.as_secs(),
                      "warmup_s": self.cfg.warmup.as_secs() },
            "fit": { "from_s": f.from_s, "to_s": f.to_s, "points": f.points,
                     "rss_kib_per_h": f.rss_kib_per_h, "anon_kib_per_h": f.anon_kib_per_h,
                     "table_sockets_per_h": f.table_per_h, "bytes_per_socket_allowed": BYTES_PER_SOCKET,
                     "beyond_table_kib_per_h": f.beyond_table_kib_per_h, "beyond_table_kib": f.beyond_table_kib(),
                     "tolerance_kib": TOLERANCE_KIB, "verdict": f.verdict(),
                     "halves_rss_max_kib": f.halves.map(|h| h.rss_max_kib), "halves_table_max": f.halves.map(|h| h.table_max),
                     "second_half_new_high_kib": f.halves.map(|h| h.new_high_kib()),
                     "rss_kib_first": after.first().and_then(|s| s.rss_kib), "rss_kib_last": after.last().and_then(|s| s.rss_kib),
                     "rss_kib_min": after.iter().filter_map(|s| s.rss_kib).min(),
                     "rss_kib_max": after.iter().filter_map(|s| s.rss_kib).max() },
            "agent_exit_status": self.agent_exit,
            "agent_stderr": self.agent_stderr.trim(),
            "samples": self.samples.iter().map(Sample::json).collect::<Vec<_>>(),
        });
        let mut doc = crate::provenance("soak");
        if let (Some(d), Value::Object(b)) = (doc.as_object_mut(), body) {
            d.extend(b);
        }
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_squares() {
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0)]), None);
        let s = slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0), (3.0, 7.0)]).unwrap();
        assert!((s - 2.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)]), None);
    }

    #[test]
    fn growth_beyond_the_table() {
        let fit = |beyond| Fit { from_s: 0.0, to_s: 3600.0, beyond_table_kib_per_h: Some(beyond), ..Fit::default() };
        assert!(fit(500.0).verdict().starts_with("no growth"));
        assert!(fit(5000.0).verdict().starts_with("RSS grew 5000 KiB"));
        assert!(Fit::default().verdict().starts_with("n/a"));
    }

    fn sample(t_s: f64, rss_kib: u64, table: u64) -> Sample {
        Sample { t_s, rss_kib: Some(rss_kib), table: Some(table), ..Sample::default() }
    }

    /// RSS (KiB) and table size of minute `m`, for 20 minutes.
    fn minutes(at: impl Fn(u64) -> (u64, u64)) -> Vec<Sample> {
        (0..20).map(|m| sample(m as f64 * 60.0, at(m).0, at(m).1)).collect()
    }

    fn halves(samples: &[Sample]) -> Option<Halves> {
        Halves::of(&samples.iter().collect::<Vec<_>>())
    }

    /// A fit of those 20 minutes with this slope beyond the table and these halves.
    fn fit_of(beyond_kib_per_h: f64, h: Halves) -> Fit {
        Fit {
            from_s: 0.0,
            to_s: 1140.0,
            beyond_table_kib_per_h: Some(beyond_kib_per_h),
            halves: Some(h),
            ..Fit::default()
        }
    }

    #[test]
    fn steps_that_settle_level_off_and_a_creep_does_not() {
        // A step of 10 MiB early in the stretch, then flat: a slope, but no new high later.
        let h = halves(&minutes(|m| (if m < 4 { 50_000 } else { 60_240 }, 100_000))).unwrap();
        assert_eq!(h.rss_max_kib, [60_240, 60_240]);
        let fit = fit_of(20_000.0, h);
        assert!(fit.verdict().starts_with("levelled off"), "{}", fit.verdict());

        // A steady creep of 200 KiB a minute: the second half's high is far above the first's.
        let h = halves(&minutes(|m| (50_000 + m * 200, 100_000))).unwrap();
        assert!(h.new_high_kib() > 1900.0, "{h:?}");
        let fit = fit_of(12_000.0, h);
        assert!(fit.verdict().starts_with("RSS grew"), "{}", fit.verdict());

        // A table that grows explains RSS that grows with it, at 100 B a socket.
        let grown = minutes(|m| (50_000 + m * 100, 100_000 + m * 1024));
        assert!(halves(&grown).unwrap().new_high_kib() <= 0.0);
        assert!(halves(&grown[..3]).is_none());
    }
}
