//! Tests of `decide`: triggers, counts, ages, deny-lists, dry run, pause, rule order, intents.

use std::{net::IpAddr, path::Path};

use super::*;
use crate::{
    kill::{plan::plan, select::tests::sock},
    ports::{Dest, Pressure},
    state::TcpState,
};

pub(super) const S: u64 = 1_000_000_000;

/// A `[relief]` config from TOML: `relief` lines (no cool-down unless they set one), then rules.
pub(super) fn cfg(relief: &str, rules: &str) -> ReliefConfig {
    let cooldown = if relief.contains("cooldown") { "" } else { "cooldown = \"0s\"\n" };
    parse_relief(Path::new("t.toml"), &format!("[relief]\n{cooldown}{relief}\n{rules}")).unwrap()
}

/// One enforce rule on 10.0.0.0/8 at trigger 0.9, target 0.5, min_age 5s, plus `extra` keys.
pub(super) fn rule(extra: &str) -> String {
    format!(
        "[[relief.rule]]\nname = \"r\"\nremote = [\"10.0.0.0/8\"]\ntarget_pressure = 0.5\nmin_age = \"5s\"\n{extra}\n"
    )
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Destination (host namespace, cookie 1) to `raddr:443` from 192.168.0.1, `tw` TIME_WAIT sockets
/// and `connected` full ones in a `range`-port range, `old` tw sockets at least 5 s old.
pub(super) fn dest(raddr: &str, tw: u64, connected: u64, range: u32, old: u64) -> DestSnapshot {
    DestSnapshot {
        dest: Dest { netns: 1, laddr: ip("192.168.0.1"), raddr: ip(raddr), rport: 443 },
        netns: "host".into(),
        pressure: Pressure::compute(tw, connected, range, 0.0),
        old_enough: OldEnough::from_counts([(5 * S, old)]),
    }
}

pub(super) fn input(dests: Vec<DestSnapshot>) -> Input {
    Input { dests, peer_sockets: Default::default() }
}

pub(super) fn run(c: &ReliefConfig, dests: Vec<DestSnapshot>, st: &mut PolicyState, now: u64) -> Vec<Decision> {
    decide(c, &input(dests), st, now)
}

pub(super) fn counts(ds: &[Decision]) -> Vec<(&'static str, u64)> {
    ds.iter().map(|d| (d.label(), d.count())).collect()
}

fn enforce() -> ReliefConfig {
    cfg("mode = \"enforce\"", &rule("trigger_pressure = 0.9"))
}

#[test]
fn trigger_is_at_or_above() {
    let c = enforce();
    let mut st = PolicyState::new();
    assert!(run(&c, vec![dest("10.0.0.1", 899, 0, 1000, 899)], &mut st, 0).is_empty(), "below");
    let at = run(&c, vec![dest("10.0.0.1", 900, 0, 1000, 900)], &mut st, 0);
    assert_eq!(counts(&at), vec![("killed", 400)], "at: inclusive");
    let above = run(&c, vec![dest("10.0.0.2", 901, 0, 1000, 901)], &mut st, 0);
    assert_eq!(counts(&above), vec![("killed", 401)]);
    // Connected sockets count in the pressure too.
    let mixed = run(&c, vec![dest("10.0.0.3", 500, 400, 1000, 500)], &mut st, 0);
    assert_eq!(counts(&mixed), vec![("killed", 400)]);
}

#[test]
fn count_reaches_target_with_floor() {
    let mut st = PolicyState::new();
    let c = enforce();
    let d = run(&c, vec![dest("10.0.0.1", 950, 0, 1000, 950)], &mut st, 0);
    assert_eq!((d[0].wanted, d[0].count()), (450, 450));
    assert_eq!((d[0].pressure.ratio, d[0].pressure_after()), (0.95, 0.5));
    // floor(0.5 * 1001) = 500: 501 to kill, ending at or below the target.
    let d = run(&c, vec![dest("10.0.0.2", 1001, 0, 1001, 1001)], &mut st, 0);
    assert_eq!(d[0].count(), 501);
    assert!(d[0].pressure_after() <= 0.5);
    // 0.29 of 100 is 29 ports (no float rounding to 28).
    let c29 = cfg("mode = \"enforce\"", &rule("trigger_pressure = 0.9").replace("0.5", "0.29"));
    let d = run(&c29, vec![dest("10.0.0.3", 100, 0, 100, 100)], &mut st, 0);
    assert_eq!(d[0].count(), 71);
    // Target 0 wants every port back, but only tw sockets can be killed.
    let c0 = cfg("mode = \"enforce\"", &rule("trigger_pressure = 0.9").replace("0.5", "0"));
    let d = run(&c0, vec![dest("10.0.0.4", 600, 350, 1000, 600)], &mut st, 0);
    assert_eq!((d[0].wanted, d[0].count()), (950, 600));
    let i = d[0].kill_intent().unwrap();
    assert_eq!((i.pressure_before, i.pressure_after), (0.95, 0.35));
}

#[test]
fn min_age_caps_the_count() {
    let c = enforce();
    let mut st = PolicyState::new();
    let d = run(&c, vec![dest("10.0.0.1", 950, 0, 1000, 120)], &mut st, 0);
    assert_eq!((d[0].wanted, d[0].count()), (450, 120), "only sockets old enough");
    assert_eq!(d[0].kill_intent().unwrap().min_age_ns, 5 * S);
    let d = run(&c, vec![dest("10.0.0.2", 950, 0, 1000, 0)], &mut st, 0);
    assert_eq!(d[0].verdict, Verdict::TooYoung { min_age_ns: 5 * S });
    assert_eq!(d[0].kill_intent(), None);
    // A min_age the agent did not count reads as the next larger one counted, else 0.
    let mut x = dest("10.0.0.3", 950, 0, 1000, 0);
    x.old_enough = OldEnough::from_counts([(10 * S, 30), (S, 700)]);
    assert_eq!(counts(&run(&c, vec![x.clone()], &mut st, 0)), vec![("killed", 30)]);
    x.old_enough = OldEnough::from_counts([(S, 700)]);
    assert_eq!(counts(&run(&c, vec![x], &mut st, 0)), vec![("too_young", 0)]);
}

#[test]
fn old_enough_from_ages() {
    let o = OldEnough::from_ages([0, 4_999_999_999, 5 * S, 7 * S, 60 * S], &[5 * S, 500_000_000, 5 * S]);
    assert_eq!((o.at_least(500_000_000), o.at_least(5 * S), o.at_least(6 * S)), (4, 3, 0));
    assert_eq!(o.at_least(0), 4, "the smallest counted min_age is used");
    assert_eq!(OldEnough::default().at_least(0), 0);
}

#[test]
fn deny_lists_override_every_rule() {
    let rules = rule("trigger_pressure = 0.9");
    let c = cfg("mode = \"enforce\"\ndeny_remote = [\"10.0.0.7\"]\ndeny_netns = [\"pod:kube-system/*\"]", &rules);
    let mut st = PolicyState::new();
    let d = run(&c, vec![dest("10.0.0.7", 999, 0, 1000, 999)], &mut st, 0);
    assert_eq!(d[0].verdict, Verdict::Denied(Denied::Remote("10.0.0.7/32".parse().unwrap())));
    let d = run(&c, vec![dest("::ffff:10.0.0.7", 999, 0, 1000, 999)], &mut st, 0);
    assert_eq!(d[0].label(), "denied", "IPv4-mapped addresses are denied too");
    let mut pod = dest("10.0.0.8", 999, 0, 1000, 999);
    pod.netns = "pod:kube-system/coredns-x".into();
    let d = run(&c, vec![pod.clone()], &mut st, 0);
    assert_eq!(d[0].verdict, Verdict::Denied(Denied::Netns(NetnsPattern("pod:kube-system/*".into()))));
    st.pause();
    assert_eq!(counts(&run(&c, vec![pod], &mut st, 0)), vec![("denied", 0)], "deny wins over pause");
    assert_eq!(st.status(&c, 0).kills_last_minute, 0);
    // Not triggered or not covered: no decision at all, denied or not.
    assert!(
        run(&c, vec![dest("10.0.0.7", 10, 0, 1000, 10), dest("11.0.0.7", 999, 0, 1000, 999)], &mut st, 0).is_empty()
    );
}

#[test]
fn dry_run_never_kills() {
    let c = cfg("max_kills_per_cycle = 500", &rule("trigger_pressure = 0.9"));
    assert_eq!(c.mode, Mode::DryRun);
    let mut st = PolicyState::new();
    let ds = vec![dest("10.0.0.1", 990, 0, 1000, 990), dest("10.0.0.2", 950, 0, 1000, 950)];
    for t in 0..5 {
        let d = run(&c, ds.clone(), &mut st, t * 60 * S);
        assert!(d.iter().all(|d| d.kill_intent().is_none()));
        // Same numbers as enforce: 490 would die at the hotter one, the cycle budget cuts the other.
        assert_eq!(counts(&d), vec![("would_kill", 490), ("rate_limited", 10)]);
        let Verdict::RateLimited { limit, eligible, partial, dry_run } = &d[1].verdict else { panic!() };
        assert_eq!(
            (*limit, *eligible, partial.as_ref().map(|i| i.count), *dry_run),
            (Limit::PerCycle, 450, Some(10), true)
        );
        assert_eq!(st.status(&c, t * 60 * S).kills_last_minute, 0, "dry run consumes no budget");
    }
}

#[test]
fn dry_run_goes_through_cooldown() {
    let c = cfg("cooldown = \"5s\"", &rule("trigger_pressure = 0.9"));
    let mut st = PolicyState::new();
    let d = || vec![dest("10.0.0.1", 990, 0, 1000, 990)];
    assert_eq!(counts(&run(&c, d(), &mut st, 0)), vec![("would_kill", 490)]);
    assert_eq!(run(&c, d(), &mut st, S)[0].verdict, Verdict::CoolingDown { remaining_ns: 4 * S });
    assert_eq!(counts(&run(&c, d(), &mut st, 5 * S)), vec![("would_kill", 490)]);
}

#[test]
fn pause_and_resume() {
    let c = enforce();
    let mut st = PolicyState::new();
    st.pause();
    assert!(st.paused());
    let d = run(&c, vec![dest("10.0.0.1", 990, 0, 1000, 990)], &mut st, 0);
    assert_eq!((d[0].verdict.clone(), d[0].kill_intent()), (Verdict::Paused, None));
    assert_eq!(st.status(&c, 0).kills_last_minute, 0);
    st.resume();
    assert_eq!(counts(&run(&c, vec![dest("10.0.0.1", 990, 0, 1000, 990)], &mut st, 0)), vec![("killed", 490)]);
}

#[test]
fn first_covering_rule_owns_the_destination() {
    let rules = "[[relief.rule]]\nname = \"narrow\"\nremote = [\"10.0.0.1\"]\ntrigger_pressure = 0.95\ntarget_pressure = 0.9\n\
                 [[relief.rule]]\nname = \"wide\"\nremote = [\"10.0.0.0/8\"]\ntrigger_pressure = 0.8\ntarget_pressure = 0.1\n";
    let c = cfg("mode = \"enforce\"", rules);
    let mut st = PolicyState::new();
    // 0.9 triggers "wide" but "narrow" covers 10.0.0.1 first and is not triggered: nothing.
    let d = run(&c, vec![dest("10.0.0.1", 900, 0, 1000, 900), dest("10.0.0.2", 900, 0, 1000, 900)], &mut st, 0);
    assert_eq!(
        d.iter().map(|d| (d.rule.as_str(), d.dest.raddr, d.count())).collect::<Vec<_>>(),
        vec![("wide", ip("10.0.0.2"), 800)]
    );
    let d = run(&c, vec![dest("10.0.0.1", 960, 0, 1000, 960)], &mut st, 0);
    assert_eq!((d[0].rule.as_str(), d[0].count()), ("narrow", 60));
}

#[test]
fn peer_socket_trigger() {
    let r = "[[relief.rule]]\nname = \"peer\"\nremote = [\"10.0.0.0/8\"]\ntrigger_peer_sockets = 500\ntarget_pressure = 0.1\n";
    let c = cfg("mode = \"enforce\"", r);
    let mut st = PolicyState::new();
    let mut a = dest("10.0.0.1", 300, 0, 1000, 300);
    let mut b = a.clone();
    b.dest.rport = 80;
    let mut inp = input(vec![a.clone(), b.clone()]);
    inp.peer_sockets.insert((1, ip("10.0.0.1")), 499);
    assert!(decide(&c, &inp, &mut st, 0).is_empty(), "below the count; pressure 0.3 does not trigger alone");
    inp.peer_sockets.insert((1, ip("10.0.0.1")), 500);
    inp.peer_sockets.insert((2, ip("10.0.0.1")), 9999);
    assert_eq!(counts(&decide(&c, &inp, &mut st, 0)), vec![("killed", 200), ("killed", 200)]);
    // Per namespace: the same peer in another namespace does not count.
    a.dest.netns = 3;
    b.pressure = Pressure::compute(50, 0, 1000, 0.0);
    let mut inp = input(vec![a, b]);
    inp.peer_sockets.insert((1, ip("10.0.0.1")), 500);
    assert!(decide(&c, &inp, &mut st, 0).is_empty(), "other netns not triggered; b is below its target");
    // Both triggers: either fires.
    let both = cfg("mode = \"enforce\"", &r.replace("\ntarget", "\ntrigger_pressure = 0.9\ntarget"));
    let d = run(&both, vec![dest("10.0.0.1", 950, 0, 1000, 950)], &mut st, 0);
    assert_eq!(counts(&d), vec![("killed", 850)]);
}

#[test]
fn hottest_destinations_are_served_first() {
    let c = cfg("mode = \"enforce\"\nmax_kills_per_cycle = 100", &rule("trigger_pressure = 0.9"));
    let mut st = PolicyState::new();
    let cool = dest("10.0.0.1", 910, 0, 1000, 910);
    let hot = dest("10.0.0.2", 99, 0, 100, 99);
    let d = run(&c, vec![cool, hot], &mut st, 0);
    assert_eq!(
        d.iter().map(|d| (d.dest.raddr, d.label(), d.count())).collect::<Vec<_>>(),
        vec![(ip("10.0.0.2"), "killed", 49), (ip("10.0.0.1"), "rate_limited", 51)]
    );
}

#[test]
fn intent_selects_only_old_time_wait_sockets_of_its_destination() {
    let c = enforce();
    let mut st = PolicyState::new();
    let d = run(&c, vec![dest("10.0.0.1", 950, 0, 1000, 950)], &mut st, 0);
    let i = d[0].kill_intent().unwrap();
    let sel = i.selector();
    assert!(sel.states.only_timewait());
    let tw = |l: &str, r: &str, expires| sock(l, r, TcpState::TimeWait, true, expires);
    let dump: Vec<crate::diag::Entry> = [
        tw("192.168.0.1:40001", "10.0.0.1:443", 50_000), // 10 s old
        tw("192.168.0.1:40002", "10.0.0.1:443", 58_000), // 2 s old: too young
        tw("192.168.0.1:40003", "10.0.0.1:443", 20_000), // 40 s old: first
        tw("192.168.0.1:40004", "10.0.0.1:80", 1_000),   // other port
        tw("192.168.0.2:40005", "10.0.0.1:443", 1_000),  // other local address
        tw("192.168.0.1:40006", "10.0.0.2:443", 1_000),  // other remote
        sock("192.168.0.1:40007", "10.0.0.1:443", TcpState::Established, false, 0),
        sock("192.168.0.1:40008", "10.0.0.1:443", TcpState::CloseWait, false, 0),
    ]
    .into_iter()
    .map(|sock| crate::diag::Entry { sock, ifindex: 0 })
    .collect();
    let chosen = plan(dump, &sel, Some(i.count as usize));
    assert_eq!(chosen.iter().map(|e| e.sock.key.lport).collect::<Vec<_>>(), vec![40003, 40001]);
    assert_eq!(plan(chosen, &sel, Some(1)).len(), 1, "the count limits the plan");
}

#[test]
fn labels_and_uncovered_destinations() {
    let c = enforce();
    let mut st = PolicyState::new();
    assert!(run(&c, vec![dest("11.0.0.1", 999, 0, 1000, 999)], &mut st, 0).is_empty(), "no rule covers it");
    let d = run(&c, vec![dest("10.0.0.1", 999, 0, 1000, 999)], &mut st, 0).remove(0);
    let with = |verdict| Decision { verdict, ..d.clone() };
    let i = d.kill_intent().unwrap().clone();
    for (v, label, count) in [
        (Verdict::Kill(i.clone()), "killed", 499),
        (Verdict::WouldKill(i.clone()), "would_kill", 499),
        (
            Verdict::RateLimited { limit: Limit::PerMinute, eligible: 9, partial: None, dry_run: false },
            "rate_limited",
            0,
        ),
        (Verdict::CoolingDown { remaining_ns: 1 }, "cooling_down", 0),
        (Verdict::Denied(Denied::Netns(NetnsPattern("host".into()))), "denied", 0),
        (Verdict::Paused, "paused", 0),
        (Verdict::TooYoung { min_age_ns: 1 }, "too_young", 0),
    ] {
        let x = with(v);
        assert_eq!((x.label(), x.count()), (label, count));
        assert_eq!(x.pressure_after(), (999 - count) as f64 / 1000.0);
    }
    assert!(with(Verdict::WouldKill(i.clone())).kill_intent().is_none());
    let partial =
        |dry_run| Verdict::RateLimited { limit: Limit::PerCycle, eligible: 600, partial: Some(i.clone()), dry_run };
    assert_eq!(with(partial(false)).kill_intent(), Some(&i));
    assert_eq!(with(partial(true)).kill_intent(), None);
}
