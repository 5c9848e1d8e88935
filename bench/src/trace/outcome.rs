//! One tracing run and a variant's runs: what each measured (rate, loss, CPU, BPF time, memory,
//! the agent's own counts), and the medians and ratios the report shows.

use anyhow::Result;
use serde_json::{Value, json};

use super::Kind;
use crate::{chains::Chains, churn::Churned, mean, median, profile, quantile, sys};

/// What a run is for (see [`super::bench`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// As in production (`kernel.bpf_stats_enabled` off, printers to /dev/null): the rates.
    #[default]
    Rate,
    /// `kernel.bpf_stats_enabled` on: the run times the programs (`bpf_s`), and pays for that
    /// timing, so its rate does not count.
    Timed,
    /// Stats off, the host sampled by `perf record` (`sampled`): its rate does not count either.
    Sampled,
}

/// One measured run of one variant.
#[derive(Debug, Default, Clone)]
pub struct Run {
    /// Its bracket: a tracer's rate run with `round` k ran between the no-tracer runs with
    /// `round` k and k+1, and is compared with them. (Other runs: `usize::MAX`.)
    pub round: usize,
    pub mode: Mode,
    pub churn: Churned,
    pub expected: u64,
    pub seen: Option<u64>,
    pub lost: Option<u64>,
    pub cpu_s: Option<f64>,
    pub bpf_s: Option<f64>,
    pub bpf_progs: u32,
    pub hwm_kib: Option<u64>,
    /// The tracer's own closing words about loss (twreset's summary, bpftrace's `Lost` lines).
    pub loss_note: Option<String>,
    /// Transitions twreset's backup program handled because the kernel skipped the primary.
    pub recovered: Option<u64>,
    /// TIME_WAIT lifecycle events printed (`trace --timewait`), beside the transitions.
    pub tw_events: Option<u64>,
    /// twreset's printed transitions followed socket by socket (`chains`).
    pub chains: Option<Chains>,
    /// Host CPU time during the churn not used by the churn or the tracer: the other tenants'
    /// share (an estimate; BPF time in softirq may land here too).
    pub others_cpu_s: Option<f64>,
    /// Host CPU by where it went during the churn (sampled runs).
    pub sampled: Option<profile::Sampled>,
    /// The agent variant: what its `/metrics` said after the churn.
    pub agent: Option<AgentSeen>,
}

/// The agent's own counts after a run, from its `/metrics` (it started with the run, so its
/// counters are the run's).
#[derive(Debug, Default, Clone)]
pub struct AgentSeen {
    /// `twreset_timewait_created_total` of the bench namespace: one per connection of the churn.
    pub created: Option<u64>,
    /// `twreset_events_lost_total`, every reason summed (all namespaces: the agent covers them).
    pub lost: Option<u64>,
    pub drift: Option<u64>,
    pub resyncs: Option<u64>,
    /// Why `/metrics` could not be read.
    pub error: Option<String>,
}

impl AgentSeen {
    fn json(&self) -> Value {
        json!({ "timewait_created": self.created, "events_lost": self.lost, "drift_sockets": self.drift,
                "resyncs": self.resyncs, "error": self.error })
    }
}

impl Run {
    /// Distinct transitions shown: printed, less those printed twice.
    pub fn distinct(&self) -> Option<u64> {
        self.seen.map(|s| s - self.chains.map_or(0, |c| c.repeated).min(s))
    }
    /// What the tool did not show: transitions less the distinct ones it showed; for the agent,
    /// the churn's connections less the TIME_WAIT creations it counted in the bench namespace.
    pub fn missing(&self) -> Option<u64> {
        match &self.agent {
            Some(a) => a.created.map(|c| self.churn.connections.saturating_sub(c)),
            None => self.distinct().map(|s| self.expected.saturating_sub(s)),
        }
    }
    /// What the tool itself says it lost.
    pub fn own_lost(&self) -> Option<u64> {
        self.agent.as_ref().map_or(self.lost, |a| a.lost)
    }
    pub fn is_rate(&self) -> bool {
        self.mode == Mode::Rate
    }
    pub fn per_million(&self, secs: Option<f64>) -> Option<f64> {
        secs.map(|s| s / (self.expected.max(1) as f64 / 1e6))
    }
    fn json(&self) -> Value {
        json!({
            "round": self.round, "mode": format!("{:?}", self.mode).to_lowercase(), "bpf_stats": self.mode == Mode::Timed, "churn": self.churn.json(), "expected_transitions": self.expected, "seen": self.seen, "lost_reported": self.lost,
            "tracer_cpu_s": self.cpu_s, "bpf_run_s": self.bpf_s, "bpf_progs": self.bpf_progs, "peak_rss_kib": self.hwm_kib,
            "loss_note": self.loss_note,
            "recovered": self.recovered,
            "tw_lifecycle_events": self.tw_events,
            "repeated": self.chains.map(|c| c.repeated), "chain_gaps": self.chains.map(|c| c.gaps),
            "others_cpu_s": self.others_cpu_s,
            "sampled": self.sampled.map(|s| json!({ "total_s": s.total_s, "tracer_process_s": s.tracer_s, "hooks_s": s.hooks_s })),
            "agent_metrics": self.agent.as_ref().map(AgentSeen::json),
        })
    }
}

/// A variant's runs and medians; `na` says why it could not run.
pub struct Outcome {
    pub kind: Kind,
    pub na: Option<String>,
    pub runs: Vec<Run>,
}

impl Outcome {
    pub fn med(&self, f: impl Fn(&Run) -> Option<f64>) -> Option<f64> {
        median(self.runs.iter().filter_map(f).collect())
    }
    /// Connections per second of the runs without BPF run-time stats (the production setting).
    pub fn conn_per_s(&self) -> Option<f64> {
        self.med(|r| r.is_rate().then_some(r.churn.conn_per_s))
    }
    /// Each rate run's conn/s as a percentage of the mean rate of the two no-tracer runs just
    /// before and after it, in run order. Pairing with its neighbours cancels the drift of a
    /// shared machine's speed, which moves whole runs by more than the effect measured here.
    pub fn pct_each_round(&self, none: &Outcome) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|r| r.is_rate())
            .filter_map(|r| {
                let base: Vec<f64> = none
                    .runs
                    .iter()
                    .filter(|n| n.is_rate() && (n.round == r.round || n.round == r.round.wrapping_add(1)))
                    .map(|n| n.churn.conn_per_s)
                    .collect();
                let mean = mean(&base);
                (mean > 0.0).then(|| 100.0 * r.churn.conn_per_s / mean)
            })
            .collect()
    }
    /// Keep a run, or mark the variant failed (it runs no more); whether it was kept. Ctrl-C
    /// ends the bench.
    pub(super) fn keep(&mut self, run: Result<Run>) -> Result<bool> {
        match run {
            Ok(run) => self.runs.push(run),
            Err(e) => {
                sys::check_interrupted()?;
                eprintln!("bench: {}: {e:#}", self.kind.label());
                self.na = Some(format!("failed: {e:#}"));
            }
        }
        Ok(self.na.is_none())
    }
    /// The median of [`Outcome::pct_each_round`].
    pub fn pct_of_none(&self, none: &Outcome) -> Option<f64> {
        median(self.pct_each_round(none))
    }
    /// The first and third quartiles of [`Outcome::pct_each_round`]: how far the rounds scatter
    /// around that median.
    pub fn pct_quartiles(&self, none: &Outcome) -> Option<(f64, f64)> {
        let v = self.pct_each_round(none);
        Some((quantile(v.clone(), 0.25)?, quantile(v, 0.75)?))
    }
    /// The tracer process's own CPU per million transitions, from the rate runs: stdout as in
    /// production (the timed runs also write their lines to a file, which costs CPU).
    pub fn tracer_per_m(&self) -> Option<f64> {
        self.med(|r| r.is_rate().then(|| r.per_million(r.cpu_s)).flatten())
    }
    /// Tracer CPU (rate runs) plus in-kernel BPF time (the runs that timed it), per million
    /// transitions. Without any timed run (stats unavailable) the tracer's own CPU alone.
    pub fn cpu_per_m(&self) -> Option<f64> {
        Some(self.tracer_per_m()? + self.bpf_per_m().unwrap_or(0.0))
    }
    /// What the host spent on the tracer per million transitions, sampled: its process plus
    /// everything under the hooks (sampled runs; for no tracer, the hooks alone: about 0).
    pub fn host_per_m(&self) -> Option<f64> {
        self.med(|r| r.per_million(r.sampled.map(|s| s.host_s())))
    }
    pub fn bpf_per_m(&self) -> Option<f64> {
        self.med(|r| r.per_million(r.bpf_s))
    }
    /// Events not delivered: what the tool says it lost, or what is missing from the distinct
    /// transitions it showed, whichever is larger (median over runs).
    pub fn lost(&self) -> Option<f64> {
        // bpftrace's `Lost N events` counts perf records, and tcpstates emits two per transition
        // (time() and printf()): only the independent count is in transitions there.
        let own = |r: &Run| {
            if self.kind == Kind::BpftracePrint { None } else { r.own_lost() }
        };
        self.med(|r| match (own(r), r.missing()) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).max(b.unwrap_or(0)) as f64),
        })
    }
    pub fn hwm_kib(&self) -> Option<f64> {
        self.med(|r| r.hwm_kib.map(|k| k as f64))
    }
    pub fn json(&self) -> Value {
        json!({
            "variant": self.kind.label(), "na": self.na, "runs": self.runs.iter().map(Run::json).collect::<Vec<_>>(),
            "median": { "conn_per_s": self.conn_per_s(), "cpu_s_per_million": self.cpu_per_m(),
                        "tracer_cpu_s_per_million": self.tracer_per_m(),
                        "bpf_s_per_million": self.bpf_per_m(),
                        "host_s_per_million_sampled": self.host_per_m(),
                        "lost": self.lost(), "peak_rss_kib": self.hwm_kib() },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_compare_with_the_runs_around_them() {
        let run = |round, cps, stats: bool| Run {
            round,
            mode: if stats { Mode::Timed } else { Mode::Rate },
            churn: Churned { conn_per_s: cps, ..Churned::default() },
            ..Run::default()
        };
        // none(0) A(0) none(1) B(1) none(2), then a faster round: none(3) A(3) none(4).
        let none = Outcome {
            kind: Kind::NoTracer,
            na: None,
            runs: vec![
                run(0, 100.0, false),
                run(1, 120.0, false),
                run(2, 80.0, false),
                run(3, 200.0, false),
                run(4, 200.0, false),
            ],
        };
        // Each run against its two neighbours; timed runs (bpf_stats on) do not count.
        let a = Outcome {
            kind: Kind::TwresetTrace,
            na: None,
            runs: vec![run(0, 99.0, false), run(usize::MAX, 10.0, true), run(3, 190.0, false)],
        };
        assert_eq!(a.pct_each_round(&none), vec![90.0, 95.0]);
        assert_eq!(a.pct_of_none(&none), Some(92.5));
        assert_eq!(a.pct_quartiles(&none), Some((91.25, 93.75)));
        let b = Outcome { kind: Kind::BpftraceCount, na: None, runs: vec![run(1, 90.0, false)] };
        assert_eq!(b.pct_each_round(&none), vec![90.0]);
        let lone = Outcome { kind: Kind::TwresetTrace, na: None, runs: vec![run(9, 50.0, false)] };
        assert!(lone.pct_each_round(&none).is_empty());
    }

    #[test]
    fn lost_is_the_larger_of_reported_and_missing() {
        let run = |seen, lost| Run { expected: 100, seen: Some(seen), lost: Some(lost), ..Run::default() };
        let o = Outcome { kind: Kind::TwresetTrace, na: None, runs: vec![run(95, 2)] };
        assert_eq!(o.lost(), Some(5.0));
        let o = Outcome { kind: Kind::TwresetTrace, na: None, runs: vec![run(100, 3)] };
        assert_eq!(o.lost(), Some(3.0));
    }
}
