//! Auto-relief, the real problem solved (issue 22): in a namespace with 1,000 ephemeral ports and
//! `tcp_tw_reuse=0`, a client making short connections to one destination (closing first) runs
//! out of ports after about 1,000 connections; with the agent and one enforce rule it completes
//! more than 10x that with zero `EADDRNOTAVAIL`; in dry run it fails as before while the log and
//! metrics show `would_kill`. Bystander and deny-listed destinations keep every TIME_WAIT socket
//! (checked with `ss`); budgets and cool-downs hold under load (counted from the audit log); pause
//! stops kills within one cycle and resume restarts them (through the control API).

mod support;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use support::*;
use twreset_tests::{listen, poll_until, privileged};

#[test]
fn relief_without_the_agent_the_client_runs_out_of_ports() {
    if !privileged("relief_without_the_agent_the_client_runs_out_of_ports") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = small_range_ns("rl-none");
    let dst: SocketAddr = format!("127.0.0.1:{PORT}").parse().unwrap();
    let c = churn(&ns, dst, 2 * RANGE_SIZE, client_pause());
    eprintln!("no agent: {c:?}, {:.0} conn/s", c.rate());
    assert!(c.eaddrnotavail > 0, "{c:?}");
    let first = c.first_failure.unwrap();
    assert!((RANGE_SIZE * 9 / 10..=RANGE_SIZE).contains(&first), "first EADDRNOTAVAIL at {first}: {c:?}");
}

#[test]
fn relief_enforce_rule_keeps_the_client_going_and_spares_bystanders_and_denied() {
    if !privileged("relief_enforce_rule_keeps_the_client_going_and_spares_bystanders_and_denied") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = small_range_ns("rl-enf");
    let port = PORT;
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let bystander: SocketAddr = format!("127.0.0.1:{BYSTANDER_PORT}").parse().unwrap();
    let denied: SocketAddr = format!("127.0.0.3:{port}").parse().unwrap();
    let agent = Agent::start("enforce", &relief_config("enforce", &ns, port, GENEROUS, ""));
    // Above the trigger: the rule does not cover the bystander; the denied one it covers.
    let held = RANGE_SIZE * 6 / 10;
    for d in [bystander, denied] {
        let c = churn(&ns, d, held, Duration::ZERO);
        assert_eq!((c.ok, c.eaddrnotavail), (held, 0));
    }
    let n = 10 * RANGE_SIZE + RANGE_SIZE / 2;
    let c = churn(&ns, dst, n, client_pause());
    eprintln!("enforce: {c:?}, {:.0} conn/s", c.rate());
    assert_eq!(c.eaddrnotavail, 0, "{c:?}");
    assert_eq!(c.ok, n);
    // The kernel's view: bystander and denied destinations kept every socket.
    assert_eq!(tw_to(&ns, bystander), held, "bystander lost TIME_WAIT sockets");
    assert_eq!(tw_to(&ns, denied), held, "deny-listed destination lost TIME_WAIT sockets");
    let decisions = agent.decisions();
    let kills = agent.policy_kills();
    eprintln!("decisions {decisions:?}, kills {kills:?}");
    assert!(decisions.get("killed").copied().unwrap_or(0.0) > 0.0, "{decisions:?}");
    assert!(decisions.get("denied").copied().unwrap_or(0.0) > 0.0, "{decisions:?}");
    assert!(kills.get("killed").copied().unwrap_or(0.0) >= (n - RANGE_SIZE) as f64, "{kills:?}");
    let lines = agent.audit_lines();
    assert!(!lines.is_empty());
    for l in &lines {
        assert_eq!(l["trigger"], "policy", "{l}");
        assert_eq!(l["rule"], "backend", "{l}");
        assert_eq!(l["raddr"], "127.0.0.1", "{l}");
        assert_eq!(l["rport"], port, "{l}");
        assert!(l["pressure_before"].as_f64().unwrap() >= 0.3, "{l}");
        assert!(l["pressure_after"].as_f64().unwrap() < l["pressure_before"].as_f64().unwrap(), "{l}");
        assert!(l["selector"].as_str().unwrap().contains("time-wait"), "{l}");
    }
    let killed: u64 = lines.iter().map(|l| l["killed"].as_u64().unwrap()).sum();
    eprintln!("enforce: {} audit lines, {killed} sockets killed; the first: {}", lines.len(), lines[0]);
    let (_, _, stderr) = agent.run.stop();
    assert!(stderr.contains("relief decision killed"), "{stderr}");
}

#[test]
fn relief_dry_run_rule_fails_as_before_and_shows_would_kill() {
    if !privileged("relief_dry_run_rule_fails_as_before_and_shows_would_kill") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = small_range_ns("rl-dry");
    let port = PORT;
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let agent = Agent::start("dry", &relief_config("dry-run", &ns, port, "cooldown = \"1s\"", ""));
    let c = churn(&ns, dst, 2 * RANGE_SIZE, client_pause());
    eprintln!("dry run: {c:?}, {:.0} conn/s", c.rate());
    assert!(c.eaddrnotavail > 0, "{c:?}");
    assert!(c.first_failure.unwrap() <= RANGE_SIZE, "{c:?}");
    let decisions = agent.decisions();
    eprintln!("dry run decisions {decisions:?}");
    assert!(decisions.get("would_kill").copied().unwrap_or(0.0) > 0.0, "{decisions:?}");
    assert_eq!(decisions.get("killed"), None, "{decisions:?}");
    assert_eq!(agent.policy_kills().get("killed").copied().unwrap_or(0.0), 0.0);
    assert!(agent.audit_lines().is_empty(), "a dry run killed: {:?}", agent.audit_lines());
    let (_, _, stderr) = agent.run.stop();
    assert!(stderr.contains("relief decision would_kill"), "{stderr}");
}

#[test]
fn relief_budgets_and_cooldowns_hold_under_load() {
    if !privileged("relief_budgets_and_cooldowns_hold_under_load") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = small_range_ns("rl-rate");
    let port = PORT;
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (per_minute, per_cycle, cooldown_ms) = (1000u64, 250u64, 1000u64);
    let overall = format!("cooldown = \"{cooldown_ms}ms\"\nmax_kills_per_minute = {per_minute}");
    let rule = format!("max_kills_per_cycle = {per_cycle}");
    let agent = Agent::start("rate", &relief_config("enforce", &ns, port, &overall, &rule));
    // Far more than the budget allows, for several cool-downs: the client fails once it is spent.
    let c = churn(&ns, dst, 12 * RANGE_SIZE, client_pause());
    eprintln!("rate limited: {c:?}, {:.0} conn/s", c.rate());
    let lines = agent.audit_lines();
    let killed: Vec<u64> = lines.iter().map(|l| l["killed"].as_u64().unwrap()).collect();
    // When each kill was decided: the line is written once the kill is done, `latency_ms` later.
    let times: Vec<u64> = lines.iter().map(|l| audit_ms(l) - l["latency_ms"].as_u64().unwrap()).collect();
    let gaps: Vec<u64> = times.windows(2).map(|w| w[1].saturating_sub(w[0])).collect();
    eprintln!("rate limited: kills per audit line {killed:?}, gaps (ms) {gaps:?}");
    let t0 = times.first().copied().unwrap_or(0);
    let mut per_window: BTreeMap<u64, u64> = BTreeMap::new();
    for (t, k) in times.iter().zip(&killed) {
        *per_window.entry((t - t0) / cooldown_ms).or_default() += k;
    }
    eprintln!("rate limited: kills per {cooldown_ms} ms window from the first kill: {per_window:?}");
    // Within any stretch shorter than the cool-down (less the tolerance of the gap check below:
    // decision times come from millisecond stamps), at most one cycle's kills. Fixed buckets
    // would split or join decisions 999 ms apart by where the bucket edge falls.
    for (i, &start) in times.iter().enumerate() {
        let within: u64 = times
            .iter()
            .zip(&killed)
            .skip(i)
            .take_while(|(t, _)| **t + 50 < start + cooldown_ms)
            .map(|(_, k)| *k)
            .sum();
        assert!(
            within <= per_cycle,
            "{within} kills within {cooldown_ms} ms of {start}: {per_window:?}, gaps {gaps:?}"
        );
    }
    assert!(lines.len() >= 2, "{lines:?}");
    assert!(killed.iter().all(|&k| k <= per_cycle), "a cycle killed more than {per_cycle}: {killed:?}");
    // The whole run lasts less than the minute window: every kill counts against one budget.
    assert!(killed.iter().sum::<u64>() <= per_minute, "{killed:?}");
    // Decisions are at least the cool-down apart (give or take the 20 ms cycle and the clocks'
    // millisecond rounding).
    assert!(gaps.iter().all(|&g| g + 50 >= cooldown_ms), "cool-down broken: {gaps:?}");
    let decisions = agent.decisions();
    eprintln!("rate limited decisions {decisions:?}");
    assert!(decisions.get("rate_limited").copied().unwrap_or(0.0) > 0.0, "{decisions:?}");
    assert!(decisions.get("cooling_down").copied().unwrap_or(0.0) > 0.0, "{decisions:?}");
    assert!(c.eaddrnotavail > 0, "the budget should have run out: {c:?}");
}

#[test]
fn relief_pause_stops_kills_within_a_cycle_and_resume_restarts_them() {
    if !privileged("relief_pause_stops_kills_within_a_cycle_and_resume_restarts_them") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = small_range_ns("rl-pause");
    let port = PORT;
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let agent = Agent::start("pause", &relief_config("enforce", &ns, port, GENEROUS, ""));
    let status = agent.api("GET", "/v1/relief");
    assert_eq!((status["mode"].as_str(), status["paused"].as_bool()), (Some("enforce"), Some(false)), "{status}");
    // The listener lives in the namespace; each phase of the client runs there too.
    let l = ns.run(|| listen(dst).unwrap());
    let phase = |n: usize| ns.run(|| churn_here(&l, n, client_pause()));
    // Kills happen.
    let c = phase(2 * RANGE_SIZE);
    assert_eq!(c.eaddrnotavail, 0, "{c:?}");
    poll_until("a policy kill in the audit log", || !agent.audit_lines().is_empty());
    let asked = Instant::now();
    let asked_ms = now_ms_in_month();
    let paused = agent.api("POST", "/v1/relief/pause");
    let answered = asked.elapsed();
    assert_eq!(paused["paused"], true, "{paused}");
    let at_pause = agent.audit_lines().len();
    // Paused: the client fills the range; nothing is killed past the one kill in flight.
    let c = phase(2 * RANGE_SIZE);
    eprintln!("paused: {c:?}");
    assert!(c.eaddrnotavail > 0, "{c:?}");
    let after = agent.audit_lines().len();
    let last_kill = agent.audit_lines().last().map(audit_ms).unwrap();
    eprintln!(
        "pause answered in {answered:?}; audit lines at pause {at_pause}, after {after}; last kill {} ms after the pause was asked",
        last_kill as i64 - asked_ms as i64
    );
    assert!(after <= at_pause + 1, "kills went on after the pause: {at_pause} -> {after}");
    let d = agent.decisions();
    eprintln!("decisions while paused {d:?}");
    assert!(d.get("paused").copied().unwrap_or(0.0) > 0.0, "{d:?}");
    // Resumed: kills restart, the client gets ports again.
    let resumed_at = Instant::now();
    let resumed = agent.api("POST", "/v1/relief/resume");
    assert_eq!(resumed["paused"], false, "{resumed}");
    poll_until("a policy kill after resume", || agent.audit_lines().len() > after);
    eprintln!("first kill {:?} after resume", resumed_at.elapsed());
    let c = phase(RANGE_SIZE);
    assert_eq!(c.eaddrnotavail, 0, "{c:?}");
    let status = agent.api("GET", "/v1/relief");
    eprintln!("status {status}");
    assert_eq!(status["rules"][0]["rule"], "backend");
    assert!(status["rules"][0]["last_decision"].is_object(), "{status}");
}

#[test]
fn relief_sighup_applies_good_relief_rules_and_keeps_the_old_on_a_bad_file() {
    if !privileged("relief_sighup_applies_good_relief_rules_and_keeps_the_old_on_a_bad_file") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = small_range_ns("rl-hup");
    let mut agent = Agent::start("hup", &relief_config("enforce", &ns, PORT, GENEROUS, ""));
    let config = agent.dir.0.join("agent.toml");
    let audit = format!("audit_log = {:?}\n", agent.audit.display().to_string());
    let hup =
        |pid: i32| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP).unwrap();
    // Good: the same rule in dry run.
    std::fs::write(&config, format!("{audit}{}", relief_config("dry-run", &ns, PORT, GENEROUS, ""))).unwrap();
    hup(agent.run.pid());
    agent.run.wait_for_stderr("configuration reloaded", Duration::from_secs(30));
    poll_until("the reloaded mode", || agent.api("GET", "/v1/relief")["mode"] == "dry-run");
    // Bad: a target above its trigger, on the line that says so. The dry run stays.
    let bad =
        relief_config("enforce", &ns, PORT, GENEROUS, "").replace("target_pressure = 0.1", "target_pressure = 0.95");
    let text = format!("{audit}{bad}");
    let line = text.lines().position(|l| l.starts_with("target_pressure")).unwrap() + 1;
    std::fs::write(&config, text).unwrap();
    hup(agent.run.pid());
    let refused = agent.run.wait_for_stderr("reload refused", Duration::from_secs(30));
    assert!(refused.contains(&format!("agent.toml:{line}:")), "{refused}");
    assert!(refused.contains("target_pressure"), "{refused}");
    let status = agent.api("GET", "/v1/relief");
    assert_eq!(status["mode"], "dry-run", "{status}");
    assert_eq!(status["rules"][0]["rule"], "backend", "{status}");
}

/// Bench, not a test (`-- --ignored relief_bench`): reaction time at the default `interval`
/// (250 ms) and `cooldown` (5 s), from a destination reaching its trigger to its kills done as
/// `ss` sees them. Five rounds, each after the cool-down has passed; prints each and the median.
#[test]
#[ignore = "bench: run with --ignored"]
fn relief_bench_reaction_time_at_default_settings() {
    if !privileged("relief_bench_reaction_time_at_default_settings") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = small_range_ns("rl-bench");
    let dst: SocketAddr = format!("127.0.0.1:{PORT}").parse().unwrap();
    let relief = format!(
        "[relief]\nmode = \"enforce\"\n\n[[relief.rule]]\nname = \"backend\"\nnetns = [\"{}\"]\nremote_port = [{PORT}]\n\
         trigger_pressure = 0.5\ntarget_pressure = 0.2\nmin_age = \"0s\"\n",
        ns.name
    );
    let agent = Agent::start("bench", &relief);
    let l = ns.run(|| listen(dst).unwrap());
    let mut reactions = Vec::new();
    for round in 0..5 {
        let need = (RANGE_SIZE / 2).saturating_sub(tw_to(&ns, dst));
        let c = ns.run(|| churn_here(&l, need, Duration::ZERO));
        let crossed = Instant::now();
        assert_eq!(c.eaddrnotavail, 0);
        let deadline = crossed + Duration::from_secs(20);
        while tw_to(&ns, dst) > RANGE_SIZE / 5 {
            assert!(Instant::now() < deadline, "no relief within 20 s");
        }
        let took = crossed.elapsed();
        eprintln!("round {round}: {need} connections to the trigger, relieved {took:?} after");
        reactions.push(took);
        // Past the cool-down (a bench may wait on the clock).
        std::thread::sleep(Duration::from_secs(6));
    }
    reactions.sort();
    eprintln!("reaction at default settings: median {:?}, max {:?}", reactions[2], reactions[4]);
    drop(agent);
}
