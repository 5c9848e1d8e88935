//! Tracing overhead and loss: the same fixed-duration churn with no tracer, bpftrace printing
//! every transition, bpftrace counting in the kernel, `twreset trace --json`, twreset's table
//! keeping and the whole `twreset agent`, in turn, repeated; each in a fresh namespace so
//! TIME_WAIT sockets never pile up.

mod outcome;

use std::{path::Path, process::Command, thread, time::Duration};

use anyhow::{Context, Result};

pub use outcome::{AgentSeen, Mode, Outcome, Run};

use super::{
    Caps,
    churn::{self, Churned},
    ns::Ns,
    parse::{bpftrace_lost, map_sum, tw_totals, twreset_recovered, twreset_summary},
    profile,
    scrape::{self, free_port},
    sys,
    tracer::{self, Lines, Output, Sink, Tracer},
};

const TCPSTATES_BT: &str = include_str!("../scripts/tcpstates.bt");
const TCPCOUNT_BT: &str = include_str!("../scripts/tcpcount.bt");

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    NoTracer,
    BpftracePrint,
    BpftraceCount,
    TwresetTrace,
    TwresetLifecycle,
    TwresetTable,
    TwresetAgent,
}

pub const KINDS: [Kind; 7] = [
    Kind::NoTracer,
    Kind::BpftracePrint,
    Kind::BpftraceCount,
    Kind::TwresetTrace,
    Kind::TwresetLifecycle,
    Kind::TwresetTable,
    Kind::TwresetAgent,
];

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::NoTracer => "no tracer",
            Kind::BpftracePrint => "bpftrace tcpstates (print)",
            Kind::BpftraceCount => "bpftrace count (in-kernel)",
            Kind::TwresetTrace => "twreset trace --json",
            Kind::TwresetLifecycle => "twreset trace --timewait --json",
            Kind::TwresetTable => "twreset table",
            Kind::TwresetAgent => "twreset agent",
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

/// A tracer to start: its command, how its stdout is read, what marks it ready, and (the agent)
/// where its metrics are.
struct Launch {
    cmd: Command,
    lines: Lines,
    ready: Option<&'static str>,
    metrics: Option<String>,
}

impl From<(Command, Lines, Option<&'static str>)> for Launch {
    fn from((cmd, lines, ready): (Command, Lines, Option<&'static str>)) -> Self {
        Self { cmd, lines, ready, metrics: None }
    }
}

/// The tracer command for a variant, with how its stdout is read and what marks it ready.
fn command(kind: Kind, cfg: &Cfg, ns: &Ns, caps: &Caps, twreset: &Path) -> Result<Option<Launch>> {
    let path = ns.path();
    if kind == Kind::TwresetAgent {
        let port = free_port()?;
        let socket = std::env::temp_dir().join(format!("twbench-{}-trace-agent.sock", std::process::id()));
        let mut cmd = Command::new(twreset);
        cmd.args(caps.agent_args(port, &socket)).env("NO_COLOR", "1");
        let metrics = Some(format!("http://127.0.0.1:{port}/metrics"));
        return Ok(Some(Launch { cmd, lines: Lines::Keep, ready: Some("agent ready"), metrics }));
    }
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
            let args = caps.table_cmd(&path, settle_s(cfg)).context("no table-keeping mode in this twreset")?;
            let mut c = Command::new(twreset);
            c.args(args);
            Some((c, Lines::Keep, None))
        }
        Kind::TwresetAgent => None,
    }
    .map(Launch::from))
}

/// What the agent's `/metrics` says about this run: the bench namespace's TIME_WAIT creations
/// (each connection of the churn makes one) and every event the agent lost, drifted or resynced.
fn agent_seen(url: &str, ns: &Ns) -> AgentSeen {
    match scrape::fetch(None, url) {
        Ok((_, text)) => {
            let netns = format!("netns=\"{}\"", ns.name);
            AgentSeen {
                created: scrape::sum(&text, "twreset_timewait_created", &[&netns]),
                lost: scrape::sum(&text, "twreset_events_lost", &[]),
                drift: scrape::sum(&text, "twreset_table_drift_sockets", &[]),
                resyncs: scrape::sum(&text, "twreset_table_resyncs", &[]),
                error: None,
            }
        }
        Err(e) => AgentSeen { error: Some(format!("{e:#}")), ..AgentSeen::default() },
    }
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
        // Its figures come from its `/metrics` (`agent_seen`), read before it stops.
        Kind::TwresetAgent => {}
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
    let launch = command(kind, cfg, &ns, caps, twreset)?;
    let metrics = launch.as_ref().and_then(|l| l.metrics.clone());
    let tracer = match launch {
        Some(mut l) => Some(Tracer::start(&mut l.cmd, l.lines, l.ready, sink(stats, l.lines))?),
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
        run.agent = metrics.map(|url| agent_seen(&url, &ns));
        let (out, err) = if kind == Kind::TwresetTable && caps.table_ends() {
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
        if o.kind == Kind::TwresetTable && caps.table_cmd(Path::new("/"), 0.0).is_none() {
            o.na = Some("n/a (not built): this twreset has no table-keeping mode".into());
        }
        if o.kind == Kind::TwresetAgent && !caps.agent_cmd {
            o.na = Some("n/a (not built): this twreset has no `agent`".into());
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
}
