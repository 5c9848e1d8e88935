//! Tests of the policy's memory: budgets per cycle and sliding minute (per rule and overall),
//! reservations and reported kills, cool-downs, clocks that jump, and `GET /v1/relief`.

use super::{
    decide_tests::{S, cfg, counts, dest, rule, run},
    *,
};

fn two_rules(relief: &str, a_extra: &str) -> ReliefConfig {
    let a = format!("[[relief.rule]]\nname = \"a\"\nremote = [\"10.0.0.0/8\"]\nmin_age = \"5s\"\n{a_extra}\n");
    let b = "[[relief.rule]]\nname = \"b\"\nremote = [\"11.0.0.0/8\"]\nmin_age = \"5s\"\n";
    cfg(&format!("mode = \"enforce\"\n{relief}"), &format!("{a}{b}"))
}

/// 490 to kill (0.99 -> 0.5 of 1000), all old enough.
fn hot(raddr: &str) -> super::DestSnapshot {
    dest(raddr, 990, 0, 1000, 990)
}

#[test]
fn overall_per_cycle_budget() {
    let c = two_rules("max_kills_per_cycle = 600", "");
    let mut st = PolicyState::new();
    let d = run(&c, vec![hot("10.0.0.1"), hot("11.0.0.1"), hot("10.0.0.2")], &mut st, 0);
    assert_eq!(counts(&d), vec![("killed", 490), ("rate_limited", 110), ("rate_limited", 0)]);
    let Verdict::RateLimited { limit, eligible, partial, dry_run } = &d[1].verdict else { panic!() };
    assert_eq!(
        (*limit, *eligible, partial.as_ref().map(|i| i.count), *dry_run),
        (Limit::PerCycle, 490, Some(110), false)
    );
    assert_eq!(d[1].kill_intent().map(|i| i.count), Some(110), "a partial is executed");
    assert_eq!(d[2].kill_intent(), None);
    // The next cycle has a fresh cycle budget (no cool-down configured).
    assert_eq!(counts(&run(&c, vec![hot("10.0.0.2")], &mut st, 1)), vec![("killed", 490)]);
}

#[test]
fn overall_per_minute_budget_slides() {
    let c = two_rules("max_kills_per_minute = 1000", "");
    let mut st = PolicyState::new();
    assert_eq!(counts(&run(&c, vec![hot("10.0.0.1")], &mut st, 0)), vec![("killed", 490)]);
    assert_eq!(counts(&run(&c, vec![hot("11.0.0.1")], &mut st, 30 * S)), vec![("killed", 490)]);
    let d = run(&c, vec![hot("10.0.0.2")], &mut st, 59 * S);
    assert_eq!(counts(&d), vec![("rate_limited", 20)]);
    assert!(matches!(d[0].verdict, Verdict::RateLimited { limit: Limit::PerMinute, .. }));
    assert_eq!(counts(&run(&c, vec![hot("10.0.0.2")], &mut st, 60 * S - 1)), vec![("rate_limited", 0)]);
    // At 60 s the kills of t=0 leave the window, those of 30 s and 59 s stay (510): a bucket reset
    // on the minute would allow all 990 this destination wants; the sliding window allows 490.
    let big = |r| dest(r, 1990, 0, 2000, 1990);
    assert_eq!(counts(&run(&c, vec![big("10.0.0.3")], &mut st, 60 * S)), vec![("rate_limited", 490)]);
    assert_eq!(st.status(&c, 60 * S).kills_last_minute, 1000);
    assert_eq!(st.status(&c, 60 * S).budget_left_this_minute, 0);
    assert_eq!(counts(&run(&c, vec![big("10.0.0.4")], &mut st, 90 * S - 1)), vec![("rate_limited", 0)]);
    assert_eq!(counts(&run(&c, vec![big("10.0.0.4")], &mut st, 90 * S)), vec![("rate_limited", 490)]);
}

#[test]
fn per_rule_budgets_and_zero_meaning_overall_only() {
    let c = two_rules("max_kills_per_minute = 100000", "max_kills_per_cycle = 300\nmax_kills_per_minute = 700");
    let mut st = PolicyState::new();
    let d = run(&c, vec![hot("10.0.0.1"), hot("10.0.0.2"), hot("11.0.0.1")], &mut st, 0);
    assert_eq!(counts(&d), vec![("rate_limited", 300), ("rate_limited", 0), ("killed", 490)], "b has no own budget");
    assert!(matches!(d[0].verdict, Verdict::RateLimited { limit: Limit::RulePerCycle, .. }));
    let d = run(&c, vec![hot("10.0.0.2")], &mut st, S);
    assert_eq!(counts(&d), vec![("rate_limited", 300)]);
    let d = run(&c, vec![hot("10.0.0.3")], &mut st, 2 * S);
    assert_eq!(counts(&d), vec![("rate_limited", 100)]);
    assert!(matches!(d[0].verdict, Verdict::RateLimited { limit: Limit::RulePerMinute, .. }));
    let s = st.status(&c, 2 * S);
    assert_eq!((s.rules[0].kills_last_minute, s.rules[0].budget_left_this_minute), (700, 0));
    assert_eq!((s.rules[1].kills_last_minute, s.rules[1].budget_left_this_minute), (490, 100000 - 1190));
    assert_eq!(counts(&run(&c, vec![hot("11.0.0.2")], &mut st, 3 * S)), vec![("killed", 490)], "b unaffected");
    // Zero in the config means "no per-rule budget".
    let z = two_rules("", "max_kills_per_cycle = 0\nmax_kills_per_minute = 0");
    assert_eq!((z.rules[0].max_kills_per_cycle, z.rules[0].max_kills_per_minute), (None, None));
}

#[test]
fn reported_kills_replace_reservations() {
    let c = two_rules("max_kills_per_minute = 1000", "");
    let mut st = PolicyState::new();
    let d = run(&c, vec![hot("10.0.0.1"), hot("10.0.0.2")], &mut st, 0);
    assert_eq!(counts(&d), vec![("killed", 490), ("killed", 490)]);
    // Before any report, the reservations hold: a cycle cannot overspend.
    assert_eq!(counts(&run(&c, vec![hot("10.0.0.3")], &mut st, S)), vec![("rate_limited", 20)]);
    let (i1, i2) = (d[0].kill_intent().unwrap().clone(), d[1].kill_intent().unwrap().clone());
    st.record_kills(&i1, 90); // 400 of them had gone already
    st.record_kills(&i2, 10_000); // capped at the intent's count
    st.record_kills(&i2, 490); // reporting again cannot raise it
    assert_eq!(st.status(&c, S).kills_last_minute, 90 + 490 + 20);
    assert_eq!(counts(&run(&c, vec![hot("10.0.0.4")], &mut st, 2 * S)), vec![("rate_limited", 400)]);
    // Unknown ids (a dry-run intent, an intent from another state) change nothing.
    let mut ghost = i1.clone();
    ghost.id = 999_999;
    st.record_kills(&ghost, 0);
    assert_eq!(st.status(&c, 2 * S).kills_last_minute, 1000);
    // After the window, a late report is ignored.
    let later = run(&c, vec![hot("10.0.0.5")], &mut st, 200 * S);
    assert_eq!(counts(&later), vec![("killed", 490)]);
    st.record_kills(&i1, 0);
    assert_eq!(st.status(&c, 200 * S).kills_last_minute, 490);
}

#[test]
fn cooldown_per_destination() {
    let c = cfg("mode = \"enforce\"\ncooldown = \"5s\"\nmax_kills_per_cycle = 500", &rule("trigger_pressure = 0.9"));
    let mut st = PolicyState::new();
    let d = run(&c, vec![hot("10.0.0.1"), hot("10.0.0.2"), hot("10.0.0.3")], &mut st, 0);
    assert_eq!(counts(&d), vec![("killed", 490), ("rate_limited", 10), ("rate_limited", 0)]);
    let d = run(&c, vec![hot("10.0.0.1"), hot("10.0.0.2"), hot("10.0.0.3")], &mut st, 5 * S - 1);
    assert_eq!(d[0].verdict, Verdict::CoolingDown { remaining_ns: 1 });
    assert_eq!(d[1].verdict, Verdict::CoolingDown { remaining_ns: 1 }, "a partial kill cools down too");
    assert_eq!(counts(&d)[2], ("killed", 490), "nothing was killed there: no cool-down");
    let d = run(&c, vec![hot("10.0.0.1")], &mut st, 5 * S);
    assert_eq!(counts(&d), vec![("killed", 490)], "over at exactly cooldown");
    // Too young and denied do not start a cool-down.
    let d = run(&c, vec![dest("10.0.0.9", 990, 0, 1000, 0)], &mut st, 6 * S);
    assert_eq!(counts(&d), vec![("too_young", 0)]);
    assert_eq!(counts(&run(&c, vec![hot("10.0.0.9")], &mut st, 6 * S)), vec![("killed", 490)]);
}

#[test]
fn clock_going_back_frees_nothing() {
    let c = cfg("mode = \"enforce\"\ncooldown = \"5s\"\nmax_kills_per_minute = 500", &rule("trigger_pressure = 0.9"));
    let mut st = PolicyState::new();
    let t0 = 100 * S;
    assert_eq!(counts(&run(&c, vec![hot("10.0.0.1")], &mut st, t0)), vec![("killed", 490)]);
    // Back to 0: read as t0 (no time passed), the cool-down is whole and the budget still spent.
    let d = run(&c, vec![hot("10.0.0.1"), hot("10.0.0.2")], &mut st, 0);
    assert_eq!(d[0].verdict, Verdict::CoolingDown { remaining_ns: 5 * S });
    assert_eq!(counts(&d)[1], ("rate_limited", 10));
    assert_eq!(st.status(&c, 0).kills_last_minute, 500);
    // Even a minute later by the jumped clock, nothing expires until it passes t0 + 60 s.
    assert_eq!(counts(&run(&c, vec![hot("10.0.0.3")], &mut st, 60 * S)), vec![("rate_limited", 0)]);
    assert_eq!(counts(&run(&c, vec![hot("10.0.0.3")], &mut st, t0 + 60 * S)), vec![("killed", 490)]);
}

#[test]
fn clock_jumping_forward_expires_windows() {
    let c = cfg("mode = \"enforce\"\ncooldown = \"1h\"\nmax_kills_per_minute = 490", &rule("trigger_pressure = 0.9"));
    let mut st = PolicyState::new();
    assert_eq!(counts(&run(&c, vec![hot("10.0.0.1")], &mut st, 5 * S)), vec![("killed", 490)]);
    let hours = 5 * 3600 * S;
    assert_eq!(counts(&run(&c, vec![hot("10.0.0.1")], &mut st, hours)), vec![("killed", 490)]);
    // To the end of time: nothing overflows; cool-downs saturate.
    for t in [u64::MAX - 1, u64::MAX, u64::MAX] {
        let d = run(&c, vec![hot("10.0.0.2")], &mut st, t);
        assert!(matches!(d[0].label(), "killed" | "rate_limited" | "cooling_down"), "{d:?}");
    }
    let s = st.status(&c, u64::MAX);
    assert!(s.kills_last_minute <= 490);
    let mut fresh = PolicyState::new();
    assert_eq!(counts(&run(&c, vec![hot("10.0.0.3")], &mut fresh, u64::MAX)), vec![("killed", 490)]);
}

#[test]
fn status_document() {
    let c = two_rules("max_kills_per_minute = 1000", "max_kills_per_minute = 600");
    let mut st = PolicyState::new();
    let s = st.status(&c, 0);
    assert_eq!((s.mode, s.paused, s.kills_last_minute, s.budget_left_this_minute), (Mode::Enforce, false, 0, 1000));
    assert!(s.rules.iter().all(|r| r.last_decision.is_none()));
    let d = run(&c, vec![hot("10.0.0.1"), dest("10.0.0.2", 990, 0, 1000, 0)], &mut st, 7 * S);
    assert_eq!(counts(&d), vec![("killed", 490), ("too_young", 0)]);
    st.pause();
    let s = st.status(&c, 8 * S);
    let a = &s.rules[0];
    let last = a.last_decision.as_ref().unwrap();
    assert_eq!(
        (last.decision, last.raddr, last.at_ns, last.wanted),
        ("too_young", super::decide_tests::ip("10.0.0.2"), 7 * S, 490)
    );
    assert_eq!((a.kills_last_minute, a.max_kills_per_minute, a.budget_left_this_minute), (490, Some(600), 110));
    assert_eq!((s.rules[1].rule.as_str(), s.rules[1].budget_left_this_minute), ("b", 510));
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["mode"], "enforce");
    assert_eq!(json["paused"], true);
    assert_eq!(json["rules"][0]["rule"], "a");
    assert_eq!(json["rules"][0]["last_decision"]["decision"], "too_young");
    assert_eq!(json["rules"][0]["last_decision"]["raddr"], "10.0.0.2");
    assert_eq!(json["rules"][0]["last_decision"]["pressure"], 0.99);
    assert_eq!(json["rules"][1]["last_decision"], serde_json::Value::Null);
    // A reload keeping the name keeps its budget; a removed rule leaves the document.
    let renamed = two_rules("max_kills_per_minute = 1000", "max_kills_per_minute = 600").rules[0].clone();
    let reloaded = ReliefConfig { rules: vec![renamed], ..c.clone() };
    let s = st.status(&reloaded, 8 * S);
    assert_eq!((s.rules.len(), s.rules[0].kills_last_minute, s.kills_last_minute), (1, 490, 490));
}
