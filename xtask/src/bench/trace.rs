//! Tracing overhead and loss: the same fixed-duration churn with no tracer, bpftrace printing
//! every transition, bpftrace counting in the kernel, `twreset trace --json`, and twreset's table
//! keeping, in turn, repeated; each in a fresh namespace so TIME_WAIT sockets never pile up.

use std::{path::Path, process::Command, thread, time::Duration};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::{
    Caps,
    churn::{self, Churned},
    mean, median,
    ns::Ns,
    parse::{bpftrace_lost, map_sum, tw_totals, twreset_recovered, twreset_summary},
    profile, quantile, sys,
    tracer::{self, Lines, Output, Sink, Tracer},
};

const TCPSTATES_BT: &str = include_str!("scripts/tcpstates.bt");
const TCPCOUNT_BT: &str = include_str!("scripts/tcpcount.bt");

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    NoTracer,
    BpftracePrint,
    BpftraceCount,
    TwresetTrace,
    TwresetLifecycle,
    TwresetTable,
}

pub const KINDS: [Kind; 6] = [
    Kind::NoTracer,
    Kind::BpftracePrint,
    Kind::BpftraceCount,
    Kind::TwresetTrace,
    Kind::TwresetLifecycle,
    Kind::TwresetTable,
];

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::NoTracer => "no tracer",
            Kind::BpftracePrint => "bpftrace tcpstates (print)",
            Kind::BpftraceCount => "bpftrace count (in-kernel)",
            Kind::TwresetTrace => "twreset trace --json",
            Kind::TwresetLifecycle => "twreset trace --timewait --json",
            Kind::TwresetTable => "twreset table (agent)",
        }
    }
}

pub struct Cfg {
    pub runs: usize,
    /// Rounds that also time the programs (`kernel.bpf_stats_enabled` on), the first ones.
    pub timed_runs: usize,
    /// Rounds that run bpftrace printing every transition, the first ones: the slowest variant
    /// (a quarter of the no-tracer rate, with losses), far from every target, so a few rounds
    /// tell its figures and the rest go to the rate comparison the targets need.
    pub print_runs: usize,
    pub seconds: f64,
    /// Client threads of the churn: the fastest of [`Cfg::candidates`] once `churn::fastest` ran.
    pub threads: usize,
    pub candidates: Vec<usize>,
    /// What `churn::fastest` measured: conn/s of each run per candidate thread count.
    pub picked_from: churn::Rates,
}

/// Transitions the state tracepoint reports per connection, by close side, measured once.
#[derive(Clone, Copy, Debug)]
pub struct PerConn {
    pub client_close: f64,
    pub server_close: f64,
}

impl PerConn {
    /// Transitions a churn run caused: per connection, plus CLOSE->LISTEN->CLOSE per listener.
    pub fn expected(&self, c: &Churned) -> u64 {
        (c.client_close as f64 * self.client_close + c.server_close as f64 * self.server_close).round() as u64
            + 2 * c.listeners
    }
}

/// What a run is for (see [`bench`]).
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
    pub chains: Option<super::chains::Chains>,
    /// Host CPU time during the churn not used by the churn or the tracer: the other tenants'
    /// share (an estimate; BPF time in softirq may land here too).
    pub others_cpu_s: Option<f64>,
    /// Host CPU by where it went during the churn (sampled runs).
    pub sampled: Option<profile::Sampled>,
}

impl Run {
    /// Distinct transitions shown: printed, less those printed twice.
    pub fn distinct(&self) -> Option<u64> {
        self.seen.map(|s| s - self.chains.map_or(0, |c| c.repeated).min(s))
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
    fn keep(&mut self, run: Result<Run>) -> Result<bool> {
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
            if self.kind == Kind::BpftracePrint { None } else { r.lost }
        };
        self.med(|r| {
            let missing = r.distinct().map(|s| r.expected.saturating_sub(s));
            match (own(r), missing) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0).max(b.unwrap_or(0)) as f64),
            }
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

fn bpftrace(script: &str, ns: &Ns) -> Result<Command> {
    let mut c = Command::new("bpftrace");
    if script.contains("system(") {
        c.arg("--unsafe");
    }
    c.arg("-e").arg(script.replace("NSINUM", &ns.inum()?.to_string()));
    Ok(c)
}

/// How long a self-ending table mode must keep its table: the 5 s wait for a tracer without a
/// ready marker, the churn, the 1 s drain, and a margin for a loaded machine.
fn settle_s(cfg: &Cfg) -> f64 {
    5.0 + 0.5 + cfg.seconds + 1.0 + 5.0
}

/// The tracer command for a variant, with how its stdout is read and what marks it ready.
fn command(
    kind: Kind,
    cfg: &Cfg,
    ns: &Ns,
    caps: &Caps,
    twreset: &Path,
) -> Result<Option<(Command, Lines, Option<&'static str>)>> {
    let path = ns.path();
    Ok(match kind {
        Kind::NoTracer => None,
        Kind::BpftracePrint => Some((bpftrace(TCPSTATES_BT, ns)?, Lines::Tcpstates, Some("Tracing TCP"))),
        Kind::BpftraceCount => Some((bpftrace(TCPCOUNT_BT, ns)?, Lines::Keep, Some("Tracing TCP"))),
        Kind::TwresetTrace => {
            let mut c = Command::new(twreset);
            c.args(["trace", "--json", "--netns"]).arg(&path);
            Some((c, Lines::Json, Some("tracing TCP")))
        }
        Kind::TwresetLifecycle => {
            let mut c = Command::new(twreset);
            c.args(["trace", "--timewait", "--json", "--netns"]).arg(&path);
            Some((c, Lines::Json, Some("tracing TCP")))
        }
        Kind::TwresetTable => {
            let args = caps.table_agent(&path, settle_s(cfg)).context("no table-keeping mode in this twreset")?;
            let mut c = Command::new(twreset);
            c.args(args);
            Some((c, Lines::Keep, None))
        }
    })
}

fn interpret(kind: Kind, out: &Output, err: &Output, run: &mut Run) {
    let notes: Vec<&str> = out
        .other
        .iter()
        .chain(&err.other)
        .map(String::as_str)
        .filter(|l| l.contains("Lost ") || l.contains(" events seen, "))
        .collect();
    run.loss_note = (!notes.is_empty()).then(|| notes.join(" / "));
    match kind {
        Kind::NoTracer => {}
        Kind::BpftracePrint => {
            // Its `Lost` lines are on stdout, with the events.
            run.seen = out.counted.then_some(out.event_lines);
            run.lost = out.counted.then(|| bpftrace_lost(&out.other) + bpftrace_lost(&err.other));
        }
        Kind::BpftraceCount => {
            run.seen = Some(map_sum(&out.other));
            run.lost = Some(bpftrace_lost(&out.other) + bpftrace_lost(&err.other));
        }
        Kind::TwresetTrace | Kind::TwresetLifecycle | Kind::TwresetTable => {
            if kind != Kind::TwresetTable && out.counted {
                run.seen = Some(out.event_lines);
                run.chains = out.chains;
            }
            if kind == Kind::TwresetLifecycle && out.counted {
                run.tw_events = Some(out.tw_lines);
            }
            if let Some((seen, lost)) = twreset_summary(&err.other) {
                // The summary counts every record; with --timewait the lifecycle events too, which
                // only the counted lines tell apart.
                if kind == Kind::TwresetTrace || out.counted {
                    run.seen = Some(run.seen.map_or(seen, |s| s.min(seen)));
                }
                run.lost = Some(lost);
                run.recovered = twreset_recovered(&err.other);
            }
            if kind == Kind::TwresetTable
                && let Some(t) = tw_totals(&out.other.join("\n"))
            {
                run.lost = Some(t.lost);
                run.loss_note = Some(format!("tw totals: lost {}, drift {}, resyncs {}", t.lost, t.drift, t.resyncs));
            }
        }
    }
}

/// Where a tracer's stdout goes: the rate runs of the tracers that print every transition write
/// to /dev/null, as the issue's `> /dev/null` says (a file costs them CPU); the timed runs, and
/// tracers that print only a summary, write to a file that is read afterwards (lines counted,
/// each socket's transitions followed).
fn sink(stats: bool, lines: Lines) -> Sink {
    match lines {
        Lines::Tcpstates | Lines::Json if !stats => Sink::Discard,
        _ => Sink::Count,
    }
}

/// One run: fresh namespace, tracer attached and ready, churn for the configured time, a second
/// for the tracer to drain, then samples and SIGINT.
#[allow(clippy::too_many_arguments)]
fn one(
    kind: Kind,
    cfg: &Cfg,
    per: PerConn,
    churn_bin: &Path,
    twreset: &Path,
    caps: &Caps,
    mode: Mode,
    round: usize,
) -> Result<Run> {
    let stats = mode == Mode::Timed;
    let ns = Ns::new("trace")?;
    let tracer = match command(kind, cfg, &ns, caps, twreset)? {
        Some((mut cmd, lines, ready)) => Some(Tracer::start(&mut cmd, lines, ready, sink(stats, lines))?),
        None => None,
    };
    thread::sleep(Duration::from_millis(500));
    let before = tracer.as_ref().map(|t| tracer::sample(t.pid)).transpose()?;
    let threads = cfg.threads.to_string();
    let secs = cfg.seconds.to_string();
    // A sampling failure costs the run its sampled figure only, never the variant.
    let sampler = (mode == Mode::Sampled)
        .then(profile::Sampler::start)
        .and_then(|s| s.inspect_err(|e| eprintln!("bench: perf record: {e:#}")).ok());
    let (busy0, soft0) = (sys::host_busy_s(), sys::ksoftirqd_s());
    let c = churn::run(churn_bin, &ns, &["--threads", &threads, "--seconds", &secs])?;
    // Deferred loopback softirq work belongs to the churn, not to the other tenants.
    let busy = sys::host_busy_s() - busy0 - (sys::ksoftirqd_s() - soft0);
    let tracer_cpu = match (&tracer, before) {
        (Some(t), Some(b)) => sys::cpu_seconds(t.pid).map_or(0.0, |c| c - b.cpu_s),
        _ => 0.0,
    };
    // perf script reads the samples after the busy time is taken.
    let sampled = sampler
        .and_then(|s| s.stop(tracer.as_ref().map(|t| t.pid)).inspect_err(|e| eprintln!("bench: perf: {e:#}")).ok());
    let mut run = Run {
        round,
        mode,
        sampled,
        others_cpu_s: Some((busy - c.cpu_s - tracer_cpu).max(0.0)),
        expected: per.expected(&c),
        churn: c,
        ..Run::default()
    };
    if let (Some(t), Some(b)) = (tracer, before) {
        thread::sleep(Duration::from_secs(1));
        let after = tracer::sample(t.pid)?;
        run.hwm_kib = sys::vm_hwm_kib(t.pid).ok();
        run.cpu_s = Some(after.cpu_s - b.cpu_s);
        run.bpf_progs = after.bpf_progs;
        run.bpf_s = (stats && after.bpf_progs > 0).then(|| after.bpf_ns.saturating_sub(b.bpf_ns) as f64 / 1e9);
        let (out, err) = if kind == Kind::TwresetTable && caps.table_agent_ends() {
            t.wait_exit(Duration::from_secs_f64(settle_s(cfg) + 60.0))?
        } else {
            t.stop()?
        };
        interpret(kind, &out, &err, &mut run);
    }
    sys::check_interrupted()?;
    Ok(run)
}

/// Transitions per connection, client-close and server-close apart, counted by bpftrace in the
/// kernel from small runs (an independent count: not the tool under test).
pub fn calibrate(churn_bin: &Path) -> Result<PerConn> {
    let mut per = [0.0; 2];
    for (i, mode) in ["client", "server"].into_iter().enumerate() {
        let ns = Ns::new("calib")?;
        let t = Tracer::start(&mut bpftrace(TCPCOUNT_BT, &ns)?, Lines::Keep, Some("Tracing TCP"), Sink::Count)?;
        let c = churn::run(churn_bin, &ns, &["--threads", "2", "--count", "2000", "--mode", mode])?;
        thread::sleep(Duration::from_millis(500));
        let (out, _) = t.stop()?;
        let events = map_sum(&out.other);
        per[i] = events.saturating_sub(2 * c.listeners) as f64 / c.connections.max(1) as f64;
        eprintln!(
            "bench: {mode}-close: {events} transitions for {} connections and {} listeners",
            c.connections, c.listeners
        );
    }
    // Each close side walks a fixed path through the state machine, so the true figure is a whole
    // number; the counter itself can come out a hair low (a BPF program skipped on recursion when
    // the tracepoint fires from softirq on top of itself), which rounding removes.
    let whole = |v: f64| {
        if (v - v.round()).abs() < 0.01 { v.round() } else { v }
    };
    Ok(PerConn { client_close: whole(per[0]), server_close: whole(per[1]) })
}

/// Outcomes of a bench run without the tracing section.
pub fn skipped() -> Vec<Outcome> {
    KINDS.iter().map(|&kind| Outcome { kind, na: Some("skipped".into()), runs: Vec::new() }).collect()
}

/// Whether round `r` runs variant `kind` (bpftrace print only in the first `cfg.print_runs`).
fn in_round(kind: Kind, r: usize, cfg: &Cfg) -> bool {
    kind != Kind::BpftracePrint || r < cfg.print_runs
}

/// Every variant, `cfg.runs` rounds, interleaved so slow drift of the machine hits all alike.
/// Each round runs every tracer once with `kernel.bpf_stats_enabled` off, as in production
/// (rates, loss and memory), each between two no-tracer runs that are its reference rate
/// (none, A, none, B, none, ...). The first `cfg.timed_runs` rounds then run every tracer once
/// more with the stats on, for the in-kernel BPF time only: the stats cost two clock reads per
/// program run, which slows the host by more than some tracers cost.
pub fn bench(
    cfg: &Cfg,
    per: PerConn,
    churn_bin: &Path,
    twreset: &Path,
    caps: &Caps,
    stats: Option<&sys::BpfStats>,
) -> Result<Vec<Outcome>> {
    let mut outs: Vec<Outcome> = KINDS.iter().map(|&kind| Outcome { kind, na: None, runs: Vec::new() }).collect();
    for o in &mut outs {
        if o.kind == Kind::TwresetTable && caps.table_agent(Path::new("/"), 0.0).is_none() {
            o.na = Some("n/a (not built): this twreset has no table-keeping mode".into());
        }
        if o.kind == Kind::TwresetLifecycle && !caps.trace_timewait {
            o.na = Some("n/a (not built): this twreset has no `trace --timewait`".into());
        }
    }
    // Bracket numbers: the k-th no-tracer rate run has `round` k, and a tracer's rate run between
    // no-tracer runs k and k+1 has `round` k (see `Outcome::pct_each_round`).
    let sampling = profile::available();
    if !sampling {
        eprintln!("bench: no usable `perf`: the sampled host CPU will be n/a");
    }
    let mut bracket = 0;
    for r in 0..cfg.runs {
        if let Some(s) = stats {
            s.set(false)?;
        }
        // The rate of a shared machine drifts from one run to the next: every tracer's rate run
        // sits between two no-tracer runs, its reference.
        let (none, tracers) = outs.split_first_mut().expect("the no-tracer variant comes first");
        eprintln!("bench: trace round {}/{}, rate (bpf_stats off): no tracer", r + 1, cfg.runs);
        none.runs.push(one(Kind::NoTracer, cfg, per, churn_bin, twreset, caps, Mode::Rate, bracket)?);
        for o in tracers.iter_mut().filter(|o| o.na.is_none() && in_round(o.kind, r, cfg)) {
            eprintln!("bench: trace round {}/{}, rate (bpf_stats off): {}", r + 1, cfg.runs, o.kind.label());
            if !o.keep(one(o.kind, cfg, per, churn_bin, twreset, caps, Mode::Rate, bracket))? {
                continue;
            }
            bracket += 1;
            eprintln!("bench: trace round {}/{}, rate (bpf_stats off): no tracer", r + 1, cfg.runs);
            none.runs.push(one(Kind::NoTracer, cfg, per, churn_bin, twreset, caps, Mode::Rate, bracket)?);
        }
        bracket += 1;
        if r >= cfg.timed_runs {
            continue;
        }
        if sampling {
            for o in outs.iter_mut().filter(|o| o.na.is_none() && in_round(o.kind, r, cfg)) {
                eprintln!("bench: trace round {}/{}, host sampled (perf): {}", r + 1, cfg.runs, o.kind.label());
                o.keep(one(o.kind, cfg, per, churn_bin, twreset, caps, Mode::Sampled, usize::MAX))?;
            }
        }
        let (_, tracers) = outs.split_first_mut().expect("the no-tracer variant comes first");
        let Some(s) = stats else { continue };
        s.set(true)?;
        for o in tracers.iter_mut().filter(|o| o.na.is_none() && in_round(o.kind, r, cfg)) {
            eprintln!("bench: trace round {}/{}, BPF time (bpf_stats on): {}", r + 1, cfg.runs, o.kind.label());
            o.keep(one(o.kind, cfg, per, churn_bin, twreset, caps, Mode::Timed, usize::MAX))?;
        }
        s.set(false)?;
    }
    if let Some(s) = stats {
        s.set(false)?;
    }
    Ok(outs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_transitions() {
        let per = PerConn { client_close: 10.0, server_close: 10.0 };
        let c = Churned { client_close: 3, server_close: 4, listeners: 8, ..Churned::default() };
        assert_eq!(per.expected(&c), 70 + 16);
    }

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
