//! What the policy remembers between cycles: kills per sliding 60 s window (per rule and overall),
//! cool-downs per destination, the pause switch, and each rule's last decision for `GET /v1/relief`.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

use serde::Serialize;

use super::{
    config::{Mode, ReliefConfig},
    decide::{Decision, KillIntent},
};
use crate::ports::Dest;

/// Length of the per-minute budgets' sliding window.
pub const WINDOW_NS: u64 = 60_000_000_000;

/// Kills by time over the last [`WINDOW_NS`]: not a bucket that resets on the minute.
#[derive(Clone, Debug, Default)]
pub(crate) struct Window {
    /// (decided at, intent id, kills), in time and id order.
    entries: VecDeque<(u64, u64, u64)>,
    total: u64,
}

impl Window {
    fn expire(&mut self, now_ns: u64) {
        while let Some(&(at, _, n)) = self.entries.front() {
            if at.saturating_add(WINDOW_NS) > now_ns {
                break;
            }
            self.total = self.total.saturating_sub(n);
            self.entries.pop_front();
        }
    }

    fn push(&mut self, at_ns: u64, id: u64, n: u64) {
        self.entries.push_back((at_ns, id, n));
        self.total = self.total.saturating_add(n);
    }

    /// Replace a reservation by what was really killed (never more than reserved).
    fn settle(&mut self, id: u64, killed: u64) {
        if let Ok(i) = self.entries.binary_search_by_key(&id, |e| e.1) {
            let n = &mut self.entries[i].2;
            let real = killed.min(*n);
            self.total = self.total.saturating_sub(*n - real);
            *n = real;
        }
    }

    /// Kills in the window ending at `now_ns`, without expiring anything.
    fn used_at(&self, now_ns: u64) -> u64 {
        self.entries.iter().filter(|e| e.0.saturating_add(WINDOW_NS) > now_ns).map(|e| e.2).sum()
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }
}

/// The last decision of a rule, as `GET /v1/relief` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LastDecision {
    /// [`Decision::label`]: killed, would_kill, rate_limited, cooling_down, denied, paused, too_young.
    pub decision: &'static str,
    pub at_ns: u64,
    pub netns: String,
    pub laddr: IpAddr,
    pub raddr: IpAddr,
    pub rport: u16,
    pub pressure: f64,
    pub pressure_after: f64,
    /// Sockets to kill to reach the target.
    pub wanted: u64,
    /// Sockets killed or (dry-run) that would be.
    pub count: u64,
}

/// One rule in `GET /v1/relief`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RuleStatus {
    pub rule: String,
    pub last_decision: Option<LastDecision>,
    pub kills_last_minute: u64,
    /// The rule's own budget (`None`: only the overall one).
    pub max_kills_per_minute: Option<u64>,
    /// What the rule may still kill in the current window: its own budget and the overall one.
    pub budget_left_this_minute: u64,
}

/// The document of `GET /v1/relief`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReliefStatus {
    pub mode: Mode,
    pub paused: bool,
    pub max_kills_per_minute: u64,
    pub kills_last_minute: u64,
    pub budget_left_this_minute: u64,
    pub rules: Vec<RuleStatus>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct RuleState {
    pub(crate) window: Window,
    last: Option<LastDecision>,
}

/// The policy's memory. Keyed by rule name, so it survives a reload that keeps the names.
#[derive(Clone, Debug, Default)]
pub struct PolicyState {
    /// Latest time seen: a clock that goes back is read as this (no time passed).
    now_ns: u64,
    next_id: u64,
    paused: bool,
    pub(crate) overall: Window,
    pub(crate) rules: HashMap<String, RuleState>,
    /// Destination -> end of its cool-down.
    cooldowns: HashMap<Dest, u64>,
}

impl PolicyState {
    pub fn new() -> Self {
        Self::default()
    }

    /// The kill switch (`POST /v1/relief/pause`): every triggered destination gets `Paused`.
    pub fn pause(&mut self) {
        self.paused = true;
    }

    pub fn resume(&mut self) {
        self.paused = false;
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Report what the executor really killed for an intent of [`super::decide`]. The intent's
    /// count was reserved in the budgets when it was decided (so a cycle that runs before this
    /// report cannot overspend); this gives back the part that was not killed. Unknown ids (dry
    /// run, or an intent older than the window) are ignored; `killed` above the count is capped.
    pub fn record_kills(&mut self, intent: &KillIntent, killed: u64) {
        self.overall.settle(intent.id, killed);
        if let Some(r) = self.rules.get_mut(&intent.rule) {
            r.window.settle(intent.id, killed);
        }
    }

    /// Move the clock to `now_ns` (never back), drop expired kills and cool-downs; returns the
    /// clock used.
    pub(crate) fn advance(&mut self, now_ns: u64) -> u64 {
        self.now_ns = self.now_ns.max(now_ns);
        let now = self.now_ns;
        self.overall.expire(now);
        self.rules.values_mut().for_each(|r| r.window.expire(now));
        self.cooldowns.retain(|_, until| *until > now);
        now
    }

    pub(crate) fn now(&self) -> u64 {
        self.now_ns
    }

    pub(crate) fn cooling_until(&self, dest: &Dest) -> Option<u64> {
        self.cooldowns.get(dest).copied().filter(|&until| until > self.now_ns)
    }

    pub(crate) fn start_cooldown(&mut self, dest: Dest, cooldown_ns: u64) {
        if cooldown_ns > 0 {
            self.cooldowns.insert(dest, self.now_ns.saturating_add(cooldown_ns));
        }
    }

    pub(crate) fn rule_used(&self, rule: &str) -> u64 {
        self.rules.get(rule).map_or(0, |r| r.window.total())
    }

    /// Reserve `n` kills of a new enforce intent; returns its id.
    pub(crate) fn reserve(&mut self, rule: &str, n: u64) -> u64 {
        let id = self.new_id();
        self.overall.push(self.now_ns, id, n);
        self.rules.entry(rule.to_owned()).or_default().window.push(self.now_ns, id, n);
        id
    }

    pub(crate) fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn remember(&mut self, d: &Decision) {
        let count = d.count();
        let last = LastDecision {
            decision: d.label(),
            at_ns: self.now_ns,
            netns: d.netns.clone(),
            laddr: d.dest.laddr,
            raddr: d.dest.raddr,
            rport: d.dest.rport,
            pressure: d.pressure.ratio,
            pressure_after: d.pressure_after(),
            wanted: d.wanted,
            count,
        };
        self.rules.entry(d.rule.clone()).or_default().last = Some(last);
    }

    /// `GET /v1/relief` at `now_ns` (read-only: a clock behind the latest seen reads as it).
    pub fn status(&self, config: &ReliefConfig, now_ns: u64) -> ReliefStatus {
        let now = self.now_ns.max(now_ns);
        let used = self.overall.used_at(now);
        let left = config.max_kills_per_minute.saturating_sub(used);
        let rules = config
            .rules
            .iter()
            .map(|rule| {
                let st = self.rules.get(&rule.name);
                let used = st.map_or(0, |s| s.window.used_at(now));
                let own_left = rule.max_kills_per_minute.map_or(u64::MAX, |m| m.saturating_sub(used));
                RuleStatus {
                    rule: rule.name.clone(),
                    last_decision: st.and_then(|s| s.last.clone()),
                    kills_last_minute: used,
                    max_kills_per_minute: rule.max_kills_per_minute,
                    budget_left_this_minute: own_left.min(left),
                }
            })
            .collect();
        ReliefStatus {
            mode: config.mode,
            paused: self.paused,
            max_kills_per_minute: config.max_kills_per_minute,
            kills_last_minute: used,
            budget_left_this_minute: left,
            rules,
        }
    }
}
