//! Auto-relief (issue 22), the pure core: the `[relief]` config and the policy that turns a
//! snapshot of destinations into kill intents. No I/O, no clock: the agent owns both.
//!
//! # Using it (the agent's side)
//!
//! ```text
//! load / SIGHUP:  let cfg = policy::parse_relief(path, &text)?;   // on Err keep the old config
//! start:          let mut st = PolicyState::new();                 // keep it across reloads
//! every interval (cfg.interval_ns):
//!     let input = Input { dests, peer_sockets };                   // see below
//!     for d in policy::decide(&cfg, &input, &mut st, now_ns) {
//!         metrics: twreset_relief_decisions_total{rule = d.rule, decision = d.label()} += 1
//!         if let Some(i) = d.kill_intent() {                       // enforce only
//!             executor (off the table thread, audited, trigger "policy"):
//!                 plan(dump of i.dest.netns, &i.selector(), Some(i.count as usize)), kill them,
//!                 audit i.rule, i.dest, i.pressure_before, i.pressure_after
//!             then, on the policy's thread: st.record_kills(&i, really_killed)
//!         }
//!     }
//! GET /v1/relief:           st.status(&cfg, now_ns)  (serialisable)
//! POST /v1/relief/pause:    st.pause();   /resume: st.resume()
//! ```
//!
//! `now_ns` is any monotonic clock in ns (CLOCK_MONOTONIC, like the table). A clock that goes
//! back is read as the latest value seen (no time passed: no budget or cool-down is freed); a
//! jump forward simply expires windows and cool-downs. Nothing panics or underflows.
//!
//! **Input.** One [`DestSnapshot`] per destination (namespace cookie, local IP, remote IP, remote
//! port) with its namespace label, its [`crate::ports::Pressure`] (`holding` = tw + connected
//! sockets, `range` = size of its namespace's ephemeral range) and [`OldEnough`]: how many of its
//! TIME_WAIT sockets are at least each of [`ReliefConfig::min_ages_ns`] old. `peer_sockets` gives
//! TIME_WAIT sockets per (namespace cookie, remote IP), keyed with the same address form as
//! `Dest::raddr`, for `trigger_peer_sockets`. Destinations no rule covers may be left out.
//!
//! **Decisions.** A destination gets at most one decision per cycle: from the **first** rule (in
//! file order) that covers it, and only when that rule is triggered (pressure at or above
//! `trigger_pressure`, *or* the peer's TIME_WAIT count at or above `trigger_peer_sockets`) and
//! the destination is above the rule's target. Later rules never see it, as in a firewall: put
//! narrow rules first. Checks, in order: deny-lists ([`Verdict::Denied`], whatever the rule),
//! pause ([`Verdict::Paused`]), cool-down ([`Verdict::CoolingDown`]), age
//! ([`Verdict::TooYoung`]: nothing `min_age` old), then budgets: [`Verdict::Kill`] (enforce) or
//! [`Verdict::WouldKill`] (dry run), or [`Verdict::RateLimited`] with the part a budget allowed.
//! Triggered destinations are served hottest first, so budgets go where ports are scarcest.
//!
//! **Count.** `wanted = holding - floor(target_pressure * range)`, then capped by the tw sockets
//! old enough and by the budgets. Ratios are compared in exact integer parts per million.
//!
//! **Budgets.** Per cycle (one `decide` call) and per sliding 60 s window, overall and per rule.
//! An enforce intent reserves its count when decided (a cycle running before the executor
//! reports cannot overspend); [`PolicyState::record_kills`] replaces the reservation by the real
//! number. Dry run consumes no per-minute budget across cycles, but within a cycle its would-kills
//! count against every budget so it shows the numbers enforce would have. Any intent (dry run
//! too) starts the destination's cool-down, so a dry run logs once per cool-down, not per cycle.
//!
//! **TIME_WAIT only.** [`KillIntent`] has no state field; [`KillIntent::selector`] builds a
//! selector with `States::TimeWait` and `older_than = min_age`.

mod config;
mod decide;
mod rule;
mod state;

#[cfg(test)]
mod config_tests;
#[cfg(test)]
mod decide_tests;
#[cfg(test)]
mod state_tests;

pub use config::{ConfigError, Mode, ReliefConfig, parse_relief};
pub use decide::{Decision, Denied, DestSnapshot, Input, KillIntent, Limit, OldEnough, Verdict, decide, triggered};
pub use rule::{NetnsPattern, Ratio, Rule};
pub use state::{LastDecision, PolicyState, ReliefStatus, RuleStatus, WINDOW_NS};
