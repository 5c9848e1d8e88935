//! The policy as a pure function: a snapshot of destinations, the rules, the state and the time
//! in; one [`Decision`] per triggered (rule, destination) out, with kill intents for the executor.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use ipnet::IpNet;

use super::{
    config::{Mode, ReliefConfig},
    rule::{NetnsPattern, Rule},
    state::PolicyState,
};
use crate::{
    kill::select::{Endpoint, Selector, States},
    ports::{Dest, Pressure},
};

/// TIME_WAIT sockets of one destination at least `min_age` old, for each `min_age` the rules use
/// ([`ReliefConfig::min_ages_ns`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OldEnough(Vec<(u64, u64)>);

impl OldEnough {
    /// Count `ages_ns` (one per TIME_WAIT socket) at or above each of `min_ages_ns`.
    pub fn from_ages(ages_ns: impl IntoIterator<Item = u64>, min_ages_ns: &[u64]) -> Self {
        let mut v: Vec<(u64, u64)> = min_ages_ns.iter().map(|&m| (m, 0)).collect();
        v.sort_unstable();
        v.dedup();
        for age in ages_ns {
            v.iter_mut().filter(|(m, _)| age >= *m).for_each(|(_, n)| *n += 1);
        }
        Self(v)
    }

    /// From counts already made: `(min_age_ns, sockets at least that old)`.
    pub fn from_counts(counts: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut v: Vec<(u64, u64)> = counts.into_iter().collect();
        v.sort_unstable();
        v.dedup_by_key(|e| e.0);
        Self(v)
    }

    /// Sockets at least `min_age_ns` old. A `min_age` not counted reads as the count of the next
    /// larger one counted (those are old enough too), or 0: never more than the truth.
    pub fn at_least(&self, min_age_ns: u64) -> u64 {
        self.0.iter().find(|(m, _)| *m >= min_age_ns).map_or(0, |e| e.1)
    }
}

/// One destination of the snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct DestSnapshot {
    pub dest: Dest,
    /// The namespace's label (`host`, `pod:<ns>/<pod>`, ...), matched by `netns` and `deny_netns`.
    pub netns: String,
    /// From [`Pressure::compute`]: `holding` (tw + connected) and `range` are what count.
    pub pressure: Pressure,
    pub old_enough: OldEnough,
}

/// What the policy sees in one cycle.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Input {
    pub dests: Vec<DestSnapshot>,
    /// TIME_WAIT sockets per (namespace cookie, remote address), for `trigger_peer_sockets`.
    pub peer_sockets: HashMap<(u64, IpAddr), u64>,
}

/// An order for the executor: kill the `count` oldest TIME_WAIT sockets of `dest` that are at
/// least `min_age_ns` old. It has no state field: relief never selects anything but TIME_WAIT.
#[derive(Clone, Debug, PartialEq)]
pub struct KillIntent {
    /// For [`PolicyState::record_kills`].
    pub id: u64,
    pub rule: String,
    pub dest: Dest,
    pub netns: String,
    pub count: u64,
    pub min_age_ns: u64,
    pub pressure_before: f64,
    /// Expected once `count` sockets are gone.
    pub pressure_after: f64,
}

impl KillIntent {
    /// The TIME_WAIT-only selector of this intent, for `kill::plan::plan(dump, &sel, Some(count))`
    /// on a dump of `dest.netns` (plan puts the oldest first).
    pub fn selector(&self) -> Selector {
        let host = |ip: IpAddr| Some(IpNet::from(ip));
        Selector {
            peers: vec![Endpoint { net: host(self.dest.raddr), port: Some(self.dest.rport) }],
            ports: Vec::new(),
            locals: vec![Endpoint { net: host(self.dest.laddr), port: None }],
            states: States::TimeWait,
            older_than: Some(Duration::from_nanos(self.min_age_ns)),
            all: false,
        }
    }
}

/// Which budget cut a kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    RulePerCycle,
    RulePerMinute,
    PerCycle,
    PerMinute,
}

/// Why a destination is never touched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    Remote(IpNet),
    Netns(NetnsPattern),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Enforce: execute the intent.
    Kill(KillIntent),
    /// Dry run: the intent enforce would have executed; nothing is killed.
    WouldKill(KillIntent),
    /// A budget allowed fewer than the `eligible` sockets (wanted and old enough): `partial` is
    /// what it allowed (`None`: nothing). Executed only when not `dry_run`.
    RateLimited { limit: Limit, eligible: u64, partial: Option<KillIntent>, dry_run: bool },
    /// The destination was acted on less than `cooldown` ago.
    CoolingDown { remaining_ns: u64 },
    /// On a deny-list: never killed, whatever the rule.
    Denied(Denied),
    /// The kill switch is on.
    Paused,
    /// Triggered, but none of its TIME_WAIT sockets is `min_age` old yet.
    TooYoung { min_age_ns: u64 },
}

/// The policy's answer for one triggered (rule, destination).
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub rule: String,
    pub dest: Dest,
    pub netns: String,
    pub pressure: Pressure,
    /// Sockets to kill to bring the destination to the rule's target: `holding - floor(target * range)`.
    pub wanted: u64,
    pub verdict: Verdict,
}

impl Decision {
    /// The `decision` label of `twreset_relief_decisions_total`.
    pub fn label(&self) -> &'static str {
        match self.verdict {
            Verdict::Kill(_) => "killed",
            Verdict::WouldKill(_) => "would_kill",
            Verdict::RateLimited { .. } => "rate_limited",
            Verdict::CoolingDown { .. } => "cooling_down",
            Verdict::Denied(_) => "denied",
            Verdict::Paused => "paused",
            Verdict::TooYoung { .. } => "too_young",
        }
    }

    /// The intent the executor must run, if any (never in dry run).
    pub fn kill_intent(&self) -> Option<&KillIntent> {
        match &self.verdict {
            Verdict::Kill(i) => Some(i),
            Verdict::RateLimited { partial: Some(i), dry_run: false, .. } => Some(i),
            _ => None,
        }
    }

    /// Sockets killed or (dry run) that would be: the intent's count, else 0.
    pub fn count(&self) -> u64 {
        match &self.verdict {
            Verdict::Kill(i) | Verdict::WouldKill(i) | Verdict::RateLimited { partial: Some(i), .. } => i.count,
            _ => 0,
        }
    }

    /// The destination's pressure once [`Self::count`] sockets are gone.
    pub fn pressure_after(&self) -> f64 {
        ratio(self.pressure.holding.saturating_sub(self.count()), self.pressure.range)
    }
}

fn ratio(holding: u64, range: u32) -> f64 {
    holding as f64 / f64::from(range.max(1))
}

/// Does the rule fire for this destination? Pressure at or above `trigger_pressure`, or the peer
/// at or above `trigger_peer_sockets` TIME_WAIT sockets: either is enough.
pub fn triggered(rule: &Rule, d: &DestSnapshot, input: &Input) -> bool {
    let by_pressure = rule.trigger_pressure.is_some_and(|t| t.reached_by(d.pressure.holding, d.pressure.range));
    let by_peer = rule
        .trigger_peer_sockets
        .is_some_and(|n| input.peer_sockets.get(&(d.dest.netns, d.dest.raddr)).copied().unwrap_or(0) >= n);
    by_pressure || by_peer
}

fn denied(config: &ReliefConfig, d: &DestSnapshot) -> Option<Denied> {
    let raddr = d.dest.raddr.to_canonical();
    if let Some(n) = config.deny_remote.iter().find(|n| n.contains(&raddr)) {
        return Some(Denied::Remote(*n));
    }
    config.deny_netns.iter().find(|p| p.matches(&d.netns)).map(|p| Denied::Netns(p.clone()))
}

/// Kills planned so far in this cycle (dry-run ones count too, so dry run shows enforce's numbers).
#[derive(Default)]
struct Cycle<'a> {
    total: u64,
    by_rule: HashMap<&'a str, u64>,
    /// Dry run only: would-kills, which the per-minute windows do not hold.
    dry_total: u64,
    dry_by_rule: HashMap<&'a str, u64>,
}

/// One cycle of the policy. Destinations covered by a rule (the first that covers them, in file
/// order) and triggered get a decision; the hottest are served first.
pub fn decide(config: &ReliefConfig, input: &Input, state: &mut PolicyState, now_ns: u64) -> Vec<Decision> {
    state.advance(now_ns);
    let mut todo: Vec<(&Rule, &DestSnapshot)> = input
        .dests
        .iter()
        .filter_map(|d| {
            let rule = config.rule_for(&d.netns, d.dest.laddr, d.dest.raddr, d.dest.rport)?;
            triggered(rule, d, input).then_some((rule, d))
        })
        .collect();
    // Hottest first (holding/range compared exactly), then a stable order.
    todo.sort_by(|a, b| {
        let (pa, pb) = (&a.1.pressure, &b.1.pressure);
        let lhs = u128::from(pb.holding) * u128::from(pa.range.max(1));
        let rhs = u128::from(pa.holding) * u128::from(pb.range.max(1));
        lhs.cmp(&rhs).then(a.1.dest.cmp(&b.1.dest))
    });
    let mut cycle = Cycle::default();
    let mut out = Vec::with_capacity(todo.len());
    for (rule, d) in todo {
        let target = rule.target_pressure.ports_of(d.pressure.range);
        let wanted = d.pressure.holding.saturating_sub(target);
        if wanted == 0 {
            continue; // already at or below target (a peer trigger can fire there)
        }
        let verdict = verdict(config, rule, d, wanted, state, &mut cycle);
        let decision = Decision {
            rule: rule.name.clone(),
            dest: d.dest,
            netns: d.netns.clone(),
            pressure: d.pressure,
            wanted,
            verdict,
        };
        state.remember(&decision);
        out.push(decision);
    }
    out
}

fn verdict<'a>(
    config: &ReliefConfig,
    rule: &'a Rule,
    d: &DestSnapshot,
    wanted: u64,
    state: &mut PolicyState,
    cycle: &mut Cycle<'a>,
) -> Verdict {
    if let Some(why) = denied(config, d) {
        return Verdict::Denied(why);
    }
    if state.paused() {
        return Verdict::Paused;
    }
    let now = state.now();
    if let Some(until) = state.cooling_until(&d.dest) {
        return Verdict::CoolingDown { remaining_ns: until.saturating_sub(now) };
    }
    let tw = d.pressure.holding.saturating_sub(d.pressure.connected);
    let eligible = wanted.min(tw).min(d.old_enough.at_least(rule.min_age_ns));
    if eligible == 0 {
        return Verdict::TooYoung { min_age_ns: rule.min_age_ns };
    }
    let dry_run = config.mode == Mode::DryRun;
    let name = rule.name.as_str();
    let rule_cycle = cycle.by_rule.get(name).copied().unwrap_or(0);
    let (dry_total, dry_rule) = (cycle.dry_total, cycle.dry_by_rule.get(name).copied().unwrap_or(0));
    let left = |max: u64, used: u64| max.saturating_sub(used);
    let budgets = [
        (Limit::PerCycle, Some(left(config.max_kills_per_cycle, cycle.total))),
        (Limit::PerMinute, Some(left(config.max_kills_per_minute, state.overall.total().saturating_add(dry_total)))),
        (Limit::RulePerCycle, rule.max_kills_per_cycle.map(|m| left(m, rule_cycle))),
        (
            Limit::RulePerMinute,
            rule.max_kills_per_minute.map(|m| left(m, state.rule_used(name).saturating_add(dry_rule))),
        ),
    ];
    let (allowed, limit) = budgets
        .iter()
        .filter_map(|&(l, b)| b.map(|b| (b, l)))
        .filter(|&(b, _)| b < eligible)
        .min_by_key(|&(b, _)| b)
        .map_or((eligible, None), |(b, l)| (b, Some(l)));
    let intent = (allowed > 0).then(|| {
        let id = if dry_run { state.new_id() } else { state.reserve(name, allowed) };
        *cycle.by_rule.entry(name).or_insert(0) += allowed;
        cycle.total += allowed;
        if dry_run {
            *cycle.dry_by_rule.entry(name).or_insert(0) += allowed;
            cycle.dry_total += allowed;
        }
        // Would-kills cool down too: one line per destination and cool-down, not one per cycle.
        state.start_cooldown(d.dest, config.cooldown_ns);
        KillIntent {
            id,
            rule: rule.name.clone(),
            dest: d.dest,
            netns: d.netns.clone(),
            count: allowed,
            min_age_ns: rule.min_age_ns,
            pressure_before: ratio(d.pressure.holding, d.pressure.range),
            pressure_after: ratio(d.pressure.holding.saturating_sub(allowed), d.pressure.range),
        }
    });
    match (limit, intent) {
        (Some(limit), partial) => Verdict::RateLimited { limit, eligible, partial, dry_run },
        (None, Some(i)) if dry_run => Verdict::WouldKill(i),
        (None, Some(i)) => Verdict::Kill(i),
        // allowed == eligible > 0 always yields an intent.
        (None, None) => Verdict::TooYoung { min_age_ns: rule.min_age_ns },
    }
}
