//! Auto-relief in the agent (issue 22). Every `relief.interval` the owner builds the policy's
//! [`Input`] from its live table ([`input`]: destinations with the one port-pressure model's
//! figures, TIME_WAIT ages for the rules' `min_age`s, TIME_WAIT sockets per peer), and
//! [`Relief::cycle`] runs the pure [`policy::decide`] on it, counts and logs each decision and
//! hands kill intents to the executor thread ([`super::relief_exec`]), whose reports come back
//! through [`Relief::done`]. Pause, resume and status are owner commands (`GET /v1/relief`).

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc as std_mpsc,
    },
};

use tokio::sync::mpsc;

use super::relief_exec::{self, Done, Job};
use crate::{
    live::Live,
    policy::{self, Decision, DestSnapshot, Input, Mode, OldEnough, PolicyState, ReliefConfig, ReliefStatus, Verdict},
    table::{By, Group, Sort},
};

/// What `GET /v1/relief` and the pause switch ask of the owner (the API's vocabulary).
use crate::api::ReliefAction;

/// The policy's input from the live table at `now_ns`: destinations some rule covers (`label`
/// names their namespaces), with pressure as `tw --by dest` computes it and their TIME_WAIT
/// sockets old enough for each rule's `min_age`; TIME_WAIT sockets per peer when a rule uses
/// `trigger_peer_sockets`.
pub fn input(live: &Live, config: &ReliefConfig, label: &dyn Fn(u64) -> String, now_ns: u64) -> Input {
    let mut labels: HashMap<u64, String> = HashMap::new();
    let mut label_of = |cookie: u64| labels.entry(cookie).or_insert_with(|| label(cookie)).clone();
    let min_ages = config.min_ages_ns();
    let mut ages = live.table.old_enough_by_dest(now_ns, &min_ages, &live.ranges);
    let dests = live
        .snapshot(By::Dest, Sort::Pressure)
        .rows
        .into_iter()
        .filter_map(|r| {
            let (Group::Dest(dest), Some(pressure)) = (r.group, r.pressure) else { return None };
            let netns = label_of(dest.netns);
            config.rule_for(&netns, dest.laddr, dest.raddr, dest.rport)?;
            let old_enough = OldEnough::from_counts(ages.remove(&dest).unwrap_or_default());
            Some(DestSnapshot { dest, netns, pressure, old_enough })
        })
        .collect();
    let peer_sockets = if config.rules.iter().any(|r| r.trigger_peer_sockets.is_some()) {
        live.table.peer_counts().into_iter().map(|p| ((p.netns, p.peer), p.time_wait)).collect()
    } else {
        HashMap::new()
    };
    Input { dests, peer_sockets }
}

/// The relief's side of the owner: config, policy state, decision counters, executor.
pub struct Relief {
    pub config: ReliefConfig,
    state: PolicyState,
    /// `twreset_relief_decisions_total{rule,decision}`.
    decisions: BTreeMap<(String, &'static str), u64>,
    /// Shared with the executor: queued kills are dropped once set.
    paused: Arc<AtomicBool>,
    jobs: Option<std_mpsc::Sender<Job>>,
}

impl Relief {
    /// The relief on `config`; its executor thread starts now and reports to `done`.
    pub fn new(config: ReliefConfig, done: mpsc::UnboundedSender<Done>) -> Self {
        let paused = Arc::new(AtomicBool::new(false));
        let warm = config.mode == Mode::Enforce && !config.rules.is_empty();
        let jobs = relief_exec::spawn(paused.clone(), done, warm)
            .inspect_err(|e| tracing::error!("cannot start the relief's executor, relief disabled: {e}"))
            .ok();
        Self { config, state: PolicyState::new(), decisions: BTreeMap::new(), paused, jobs }
    }

    /// A reloaded config: the state (budgets, cool-downs, pause) is kept, keyed by rule name.
    pub fn reload(&mut self, config: ReliefConfig) {
        if config != self.config {
            tracing::info!("relief: {} rules, mode {}", config.rules.len(), config.mode.name());
            self.config = config;
        }
    }

    /// One cycle at `now_ns` on `input`: decide and count; the decisions, for [`Self::execute`].
    pub fn cycle(&mut self, input: &Input, now_ns: u64) -> Vec<Decision> {
        let decisions = policy::decide(&self.config, input, &mut self.state, now_ns);
        for d in &decisions {
            *self.decisions.entry((d.rule.clone(), d.label())).or_default() += 1;
        }
        decisions
    }

    /// Log each decision and send its kill intent, if any, to the executor.
    /// `decided` is the moment of the cycle's clock reading (its audit lines' `latency_ms` start there).
    pub fn execute(&mut self, decisions: &[Decision], audit_log: &Path, decided: std::time::Instant) {
        for d in decisions {
            log(d);
            let Some(intent) = d.kill_intent() else { continue };
            let job = Job {
                intent: intent.clone(),
                holding: d.pressure.holding,
                range: d.pressure.range,
                audit_log: audit_log.to_owned(),
                decided,
            };
            if self.jobs.as_ref().is_none_or(|j| j.send(job).is_err()) {
                self.state.record_kills(intent, 0);
            }
        }
    }

    /// The executor's report: the budgets keep what was really killed; counts by result.
    pub fn done(&mut self, done: &Done, kills: &mut HashMap<(&'static str, &'static str), u64>) {
        let killed = done.totals.as_ref().map_or(0, |t| t.killed as u64);
        self.state.record_kills(&done.intent, killed);
        if let Some(t) = &done.totals {
            *kills.entry(("policy", "killed")).or_default() += t.killed as u64;
            *kills.entry(("policy", "skipped")).or_default() += t.gone as u64;
            *kills.entry(("policy", "failed")).or_default() += t.failed as u64;
            tracing::info!(
                rule = %done.intent.rule,
                netns = %done.intent.netns,
                "relief killed {} of {} TIME_WAIT sockets to {}:{} ({} gone, {} failed)",
                t.killed,
                done.intent.count,
                done.intent.dest.raddr,
                done.intent.dest.rport,
                t.gone,
                t.failed
            );
        }
    }

    /// Pause, resume or just look; the status at `now_ns` either way.
    pub fn act(&mut self, action: ReliefAction, now_ns: u64) -> ReliefStatus {
        match action {
            ReliefAction::Status => {}
            ReliefAction::Pause => {
                self.paused.store(true, Ordering::SeqCst);
                self.state.pause();
                tracing::info!("relief paused");
            }
            ReliefAction::Resume => {
                self.paused.store(false, Ordering::SeqCst);
                self.state.resume();
                tracing::info!("relief resumed");
            }
        }
        self.state.status(&self.config, now_ns)
    }

    /// `(rule, decision, count)` for the metrics.
    pub fn decision_counts(&self) -> Vec<(String, String, u64)> {
        self.decisions.iter().map(|((r, d), n)| (r.clone(), (*d).to_owned(), *n)).collect()
    }
}

/// One log line per decision: info for those that kill or would, debug for cool-downs.
fn log(d: &Decision) {
    let dest = format!("{} -> {}:{}", d.dest.laddr, d.dest.raddr, d.dest.rport);
    let (ratio, wanted, count) = (d.pressure.ratio, d.wanted, d.count());
    let what = match &d.verdict {
        Verdict::CoolingDown { remaining_ns } => {
            tracing::debug!(rule = %d.rule, netns = %d.netns, "relief decision cooling_down {dest}: {remaining_ns} ns left");
            return;
        }
        Verdict::RateLimited { limit, eligible, .. } => format!("{limit:?} allowed {count} of {eligible}"),
        Verdict::Denied(why) => format!("{why:?}"),
        Verdict::TooYoung { min_age_ns } => format!("nothing {min_age_ns} ns old"),
        Verdict::Kill(_) | Verdict::WouldKill(_) | Verdict::Paused => String::new(),
    };
    tracing::info!(
        rule = %d.rule,
        netns = %d.netns,
        "relief decision {} {dest}: pressure {ratio:.3}, wanted {wanted}, count {count} {what}",
        d.label()
    );
}
