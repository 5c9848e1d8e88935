//! Tests of `[relief]` parsing: the issue's example, defaults, and every refusal with its line.

use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<ReliefConfig, ConfigError> {
    parse_relief(Path::new("agent.toml"), text)
}

/// The error's line and its message (the whole `file:line: reason` text).
fn err(text: &str) -> (usize, String) {
    match parse(text) {
        Err(e @ ConfigError::Invalid { line, .. }) => (line, e.to_string()),
        other => panic!("expected a located error, got {other:?}"),
    }
}

const ISSUE_EXAMPLE: &str = r#"
[relief]
mode = "enforce"              # default "dry-run"
max_kills_per_minute = 60000  # overall budget of the relief (per rule budgets may exist too)

[[relief.rule]]
name = "backend"
remote = ["10.0.0.0/8"]       # remote CIDRs; optional
remote_port = [443]           # optional
trigger_pressure = 0.9        # act when a covered destination's port pressure reaches this
target_pressure = 0.5         # kill its oldest TIME_WAIT sockets down to this
min_age = "5s"                # never kill a TIME_WAIT socket younger than this
"#;

#[test]
fn issue_example_parses_as_written() {
    let c = parse(ISSUE_EXAMPLE).unwrap();
    assert_eq!(c.mode, Mode::Enforce);
    assert_eq!(c.max_kills_per_minute, 60_000);
    assert_eq!(c.max_kills_per_cycle, 10_000, "default");
    assert_eq!(c.cooldown_ns, 5_000_000_000, "default");
    assert_eq!(c.rules.len(), 1);
    let r = &c.rules[0];
    assert_eq!(r.name, "backend");
    assert_eq!(r.remote, vec!["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]);
    assert_eq!(r.remote_port, vec![443]);
    assert_eq!(r.trigger_pressure.map(|t| t.ppm), Some(900_000));
    assert_eq!(r.target_pressure.ppm, 500_000);
    assert_eq!(r.min_age_ns, 5_000_000_000);
    assert_eq!((r.max_kills_per_minute, r.max_kills_per_cycle, r.trigger_peer_sockets), (None, None, None));
    assert_eq!(c.min_ages_ns(), vec![5_000_000_000]);
}

/// The contract's full example: every key, with the agent's own keys around `[relief]`.
const CONTRACT_EXAMPLE: &str = r#"
metrics_listen = "127.0.0.1:9977"
socket = "/run/twreset/agent.sock"
top_n = 20
reconcile = "30s"
[relief]
mode = "dry-run"
max_kills_per_minute = 60000
max_kills_per_cycle = 10000
cooldown = "5s"
interval = "250ms"
deny_remote = []
deny_netns = []

[[relief.rule]]
name = "backend"
remote = ["10.0.0.0/8"]
remote_port = [443]
local = []
netns = []
trigger_pressure = 0.9
trigger_peer_sockets = 0
target_pressure = 0.5
min_age = "5s"
max_kills_per_minute = 0
max_kills_per_cycle = 0
"#;

#[test]
fn contract_example_and_agent_keys() {
    let c = parse(CONTRACT_EXAMPLE).unwrap();
    assert_eq!(c.mode, Mode::DryRun);
    assert_eq!(c.interval_ns, 250_000_000);
    let r = &c.rules[0];
    assert_eq!(
        (r.trigger_peer_sockets, r.max_kills_per_minute, r.max_kills_per_cycle),
        (None, None, None),
        "0 = unused"
    );
    assert!(r.local.is_empty() && r.netns.is_empty());
}

#[test]
fn no_relief_table_means_defaults() {
    assert_eq!(parse("").unwrap(), ReliefConfig::default());
    assert_eq!(parse("top_n = 5\n[other]\nx = 1\n").unwrap(), ReliefConfig::default());
    let c = parse("[relief]\n").unwrap();
    assert_eq!(c, ReliefConfig::default());
    assert_eq!(c.mode, Mode::DryRun);
    assert!(c.rules.is_empty());
}

#[test]
fn rule_defaults_and_full_forms() {
    let c = parse(
        r#"[relief]
cooldown = "1m30s"
deny_remote = ["192.168.1.7", "fd00::/8"]
deny_netns = ["host", "pod:kube-system/*"]
[[relief.rule]]
name = "any"
[[relief.rule]]
name = "peer"
local = ["10.1.0.0/16", "::1"]
netns = ["pod:prod/*", "blue"]
trigger_peer_sockets = 5000
target_pressure = 0
min_age = "500ms"
max_kills_per_minute = 100
max_kills_per_cycle = 10
[[relief.rule]]
name = "both"
trigger_pressure = 1
trigger_peer_sockets = 10
target_pressure = 0.999
"#,
    )
    .unwrap();
    assert_eq!(c.cooldown_ns, 90_000_000_000);
    assert_eq!(c.deny_remote.len(), 2);
    assert!(c.deny_netns[1].matches("pod:kube-system/coredns-1") && !c.deny_netns[1].matches("pod:prod/x"));
    assert!(c.deny_netns[0].matches("host") && !c.deny_netns[0].matches("hostile"));
    let any = &c.rules[0];
    assert_eq!(any.trigger_pressure.map(|t| t.value), Some(0.9), "a rule without trigger acts at 0.9");
    assert_eq!(any.target_pressure.value, 0.5);
    assert_eq!(any.min_age_ns, 5_000_000_000);
    let peer = &c.rules[1];
    assert_eq!(peer.trigger_pressure, None, "only the peer trigger when it alone is given");
    assert_eq!(peer.trigger_peer_sockets, Some(5000));
    assert_eq!(peer.target_pressure.ppm, 0);
    assert_eq!(peer.min_age_ns, 500_000_000);
    assert_eq!((peer.max_kills_per_minute, peer.max_kills_per_cycle), (Some(100), Some(10)));
    let both = &c.rules[2];
    assert_eq!(both.trigger_pressure.map(|t| t.ppm), Some(1_000_000), "an integer is a valid ratio");
    assert_eq!(both.trigger_peer_sockets, Some(10));
    assert_eq!(c.min_ages_ns(), vec![500_000_000, 5_000_000_000]);
}

#[test]
fn empty_match_is_allowed_in_dry_run_only() {
    let dry = "[relief]\n[[relief.rule]]\nname = \"all\"\n";
    assert_eq!(parse(dry).unwrap().rules.len(), 1);
    let (line, msg) = err("[relief]\nmode = \"enforce\"\n\n[[relief.rule]]\nname = \"all\"\nlocal = []\n");
    assert_eq!(line, 5);
    assert!(msg.starts_with("agent.toml:5: relief.rule \"all\": empty match in enforce mode"), "{msg}");
    // Any one kind of match is enough.
    for m in ["remote = [\"10.0.0.1\"]", "remote_port = [80]", "local = [\"10.0.0.1\"]", "netns = [\"host\"]"] {
        let text = format!("[relief]\nmode = \"enforce\"\n[[relief.rule]]\nname = \"r\"\n{m}\n");
        assert!(parse(&text).is_ok(), "{m}");
    }
}

#[test]
fn target_above_trigger_names_line_and_both_values() {
    let text = "[relief]\n[[relief.rule]]\nname = \"backend\"\ntrigger_pressure = 0.9\ntarget_pressure = 0.95\n";
    assert_eq!(
        err(text),
        (5, "agent.toml:5: relief.rule \"backend\": target_pressure 0.95 must be below trigger_pressure 0.9".into())
    );
    // Equal is refused too; just below is fine.
    let eq = "[relief]\n[[relief.rule]]\nname = \"r\"\ntrigger_pressure = 0.7\ntarget_pressure = 0.7\n";
    assert_eq!(err(eq).0, 5);
    let ok = "[relief]\n[[relief.rule]]\nname = \"r\"\ntrigger_pressure = 0.7\ntarget_pressure = 0.69\n";
    assert!(parse(ok).is_ok());
    // The default target (0.5) against a low trigger: reported at the rule's name.
    let low = "[relief]\n[[relief.rule]]\nname = \"r\"\ntrigger_pressure = 0.4\n";
    let (line, msg) = err(low);
    assert_eq!(line, 3);
    assert!(msg.contains("target_pressure 0.5 must be below trigger_pressure 0.4"), "{msg}");
}

#[test]
fn thresholds_outside_their_range() {
    let rule = |kv: &str| format!("[relief]\n[[relief.rule]]\nname = \"r\"\n{kv}\n");
    for (kv, needle) in [
        ("trigger_pressure = 0", "trigger_pressure 0 is outside (0, 1]"),
        ("trigger_pressure = -0.1", "trigger_pressure -0.1 is outside (0, 1]"),
        ("trigger_pressure = 1.01", "trigger_pressure 1.01 is outside (0, 1]"),
        ("trigger_pressure = nan", "trigger_pressure NaN is outside (0, 1]"),
        ("trigger_pressure = inf", "trigger_pressure inf is outside (0, 1]"),
        ("trigger_pressure = 0.0000001", "trigger_pressure 0.0000001 is outside (0, 1] (resolution 0.000001)"),
        ("target_pressure = 1", "target_pressure 1 is outside [0, 1)"),
        ("target_pressure = -0.5", "target_pressure -0.5 is outside [0, 1)"),
    ] {
        let (line, msg) = err(&rule(kv));
        assert_eq!(line, 4, "{kv}");
        assert!(msg.contains(needle) && msg.contains("relief.rule \"r\""), "{kv}: {msg}");
    }
    // Boundaries that are valid.
    assert!(parse(&rule("trigger_pressure = 1\ntarget_pressure = 0")).is_ok());
    assert!(parse(&rule("trigger_pressure = 0.000001\ntarget_pressure = 0")).is_ok());
}

#[test]
fn unknown_keys_are_errors_inside_relief_only() {
    let (line, msg) = err("top = 1\n[relief]\nmode = \"enforce\"\nmax_kill_per_minute = 5\n");
    assert_eq!(line, 4);
    assert!(msg.contains("unknown field `max_kill_per_minute`"), "{msg}");
    let (line, msg) = err("[relief]\n[[relief.rule]]\nname = \"r\"\n\ntigger_pressure = 0.9\n");
    assert_eq!(line, 5);
    assert!(msg.contains("unknown field `tigger_pressure`"), "{msg}");
    // A state key does not exist: relief is TIME_WAIT only.
    let (line, msg) = err("[relief]\n[[relief.rule]]\nname = \"r\"\nstate = [\"established\"]\n");
    assert_eq!(line, 4);
    assert!(msg.contains("unknown field `state`"), "{msg}");
}

#[test]
fn duplicate_rule_names() {
    let text =
        "[relief]\n[[relief.rule]]\nname = \"a\"\n[[relief.rule]]\nname = \"b\"\n[[relief.rule]]\nname = \" a\"\n";
    let (line, msg) = err(text);
    assert_eq!(line, 7);
    assert!(msg.contains("relief.rule \"a\": duplicate rule name"), "{msg}");
}

#[test]
fn bad_cidrs_ports_and_labels() {
    for (text, line, needle) in [
        (
            "[relief]\ndeny_remote = [\n  \"10.0.0.0/8\",\n  \"10.0.0.0/33\",\n]\n",
            4,
            "relief.deny_remote: prefix length /33",
        ),
        (
            "[relief]\n[[relief.rule]]\nname = \"r\"\nremote = [\"300.1.1.1\"]\n",
            4,
            "relief.rule \"r\": remote: \"300.1.1.1\"",
        ),
        ("[relief]\n[[relief.rule]]\nname = \"r\"\nlocal = [\"10.0.0.1:80\"]\n", 4, "relief.rule \"r\": local:"),
        ("[relief]\n[[relief.rule]]\nname = \"r\"\nremote_port = [0]\n", 4, "remote_port 0 is out of range"),
        ("[relief]\n[[relief.rule]]\nname = \"r\"\nremote_port = [65536]\n", 4, "remote_port 65536 is out of range"),
        ("[relief]\n[[relief.rule]]\nname = \"r\"\nnetns = [\"\"]\n", 4, "relief.rule \"r\": netns: \"\" is not"),
        ("[relief]\ndeny_netns = [\"*\"]\n", 2, "relief.deny_netns: \"*\" is not"),
        ("[relief]\ndeny_netns = [\"po*d\"]\n", 2, "relief.deny_netns: \"po*d\" is not"),
        ("[relief]\n[[relief.rule]]\nname = \"  \"\n", 3, "name must not be empty"),
    ] {
        let (l, msg) = err(text);
        assert_eq!(l, line, "{text}: {msg}");
        assert!(msg.contains(needle), "{text}: {msg}");
    }
}

#[test]
fn bad_durations() {
    for (text, line, needle) in [
        ("[relief]\ncooldown = \"5 s\"\n", 2, "relief.cooldown: \"5 s\" is not a duration"),
        ("[relief]\ninterval = \"\"\n", 2, "relief.interval: \"\" is not a duration"),
        ("[relief]\ninterval = \"0s\"\n", 2, "relief.interval must be above 0"),
        ("[relief]\n[[relief.rule]]\nname = \"r\"\nmin_age = \"5x\"\n", 4, "relief.rule \"r\": min_age: \"5x\""),
        ("[relief]\n[[relief.rule]]\nname = \"r\"\nmin_age = \"61s\"\n", 4, "above TIME_WAIT's 60 s"),
        ("[relief]\ncooldown = \"99999999999999999999h\"\n", 2, "too long"),
        ("[relief]\ncooldown = \"999999999999h999999999999h\"\n", 2, "too long"),
    ] {
        let (l, msg) = err(text);
        assert_eq!(l, line, "{text}: {msg}");
        assert!(msg.contains(needle), "{text}: {msg}");
    }
    // The shared grammar: plain seconds, ms, m, h, combinations; 60 s exactly is allowed.
    let ok = "[relief]\ncooldown = \"30\"\ninterval = \"100ms\"\n[[relief.rule]]\nname = \"r\"\nmin_age = \"1m\"\n";
    let c = parse(ok).unwrap();
    assert_eq!((c.cooldown_ns, c.interval_ns, c.rules[0].min_age_ns), (30_000_000_000, 100_000_000, 60_000_000_000));
    assert_eq!(parse("[relief]\ncooldown = \"0s\"\n").unwrap().cooldown_ns, 0, "no cool-down");
    assert_eq!(parse("[relief]\ncooldown = \"2h\"\n").unwrap().cooldown_ns, 7_200_000_000_000);
}

#[test]
fn bad_types_modes_budgets_and_syntax() {
    for (text, line, needle) in [
        ("[relief]\nmode = \"enforced\"\n", 2, "unknown variant `enforced`"),
        ("[relief]\nmax_kills_per_minute = 0\n", 2, "relief.max_kills_per_minute must be at least 1"),
        ("[relief]\n\nmax_kills_per_cycle = 0\n", 3, "relief.max_kills_per_cycle must be at least 1"),
        ("[relief]\n[relief.rule]\nname = \"r\"\n", 2, "expected a sequence"),
        ("[relief]\nmax_kills_per_cycle = -1\n", 2, "invalid value"),
        ("[relief]\ncooldown = 5\n", 2, "relief.cooldown: invalid type"),
        (
            "[relief]\n[[relief.rule]]\nname = \"r\"\ntrigger_pressure = \"0.9\"\n",
            4,
            "relief.rule.trigger_pressure: invalid type",
        ),
        ("[relief]\n[[relief.rule]]\nremote = [\"10.0.0.0/8\"]\n", 2, "missing field `name`"),
        ("relief = 3\n", 1, "invalid type"),
        ("[relief]\nmode = \n", 2, ""),
    ] {
        let (l, msg) = err(text);
        assert_eq!(l, line, "{text}: {msg}");
        assert!(msg.starts_with(&format!("agent.toml:{line}: ")) && msg.contains(needle), "{text}: {msg}");
    }
}

#[test]
fn error_display_and_fields() {
    let e = parse("[relief]\nmode = \"x\"\n").unwrap_err();
    let ConfigError::Invalid { file, line, reason } = &e else { panic!("{e:?}") };
    assert_eq!((file.as_path(), *line), (Path::new("agent.toml"), 2));
    assert_eq!(e.to_string(), format!("agent.toml:2: {reason}"));
    let u = ConfigError::Unlocated { file: "/etc/twreset/agent.toml".into(), reason: "r".into() };
    assert_eq!(u.to_string(), "/etc/twreset/agent.toml: r");
}

#[test]
fn ratios_are_exact_at_the_boundary() {
    let r = Ratio::new(0.9);
    assert!(r.reached_by(900, 1000) && !r.reached_by(899, 1000) && r.reached_by(901, 1000));
    // 0.29 * 100 is 28.999999999999996 in floats; parts per million make it 29.
    assert_eq!(Ratio::new(0.29).ports_of(100), 29);
    assert_eq!(Ratio::new(0.5).ports_of(1001), 500, "floor");
    assert_eq!(Ratio::new(0.0).ports_of(28232), 0);
    assert!(Ratio::new(0.5).reached_by(1, 0), "a range of 0 counts as 1");
    assert!(Ratio::new(1.0).reached_by(65536, 65536) && !Ratio::new(1.0).reached_by(65535, 65536));
}

#[test]
fn rule_coverage_and_first_match() {
    let c = parse(
        r#"[relief]
[[relief.rule]]
name = "narrow"
remote = ["10.0.0.0/24", "10.9.0.0/16"]
remote_port = [443, 8443]
local = ["192.168.0.1"]
netns = ["pod:prod/*"]
[[relief.rule]]
name = "wide"
remote = ["10.0.0.0/8"]
"#,
    )
    .unwrap();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let (l, pod) = (ip("192.168.0.1"), "pod:prod/api-1");
    let name = |ns: &str, l, r: &str, p| c.rule_for(ns, l, ip(r), p).map(|r| r.name.as_str());
    assert_eq!(name(pod, l, "10.0.0.5", 443), Some("narrow"));
    assert_eq!(name(pod, l, "10.9.3.5", 8443), Some("narrow"), "OR within a kind");
    assert_eq!(name(pod, l, "::ffff:10.0.0.5", 443), Some("narrow"), "IPv4-mapped matches as IPv4");
    assert_eq!(name(pod, l, "10.0.0.5", 80), Some("wide"), "AND across kinds: port");
    assert_eq!(name(pod, ip("192.168.0.2"), "10.0.0.5", 443), Some("wide"), "local");
    assert_eq!(name("host", l, "10.0.0.5", 443), Some("wide"), "netns");
    assert_eq!(name(pod, l, "11.0.0.1", 443), None);
}

#[test]
fn guide_examples_parse() {
    let guide = include_str!("../../../docs/guide/relief.md");
    let blocks: Vec<&str> =
        guide.split("```toml\n").skip(1).map(|b| b.split("```").next().unwrap_or_default()).collect();
    assert_eq!(blocks.len(), 3);
    for b in &blocks {
        let c = parse(b).unwrap_or_else(|e| panic!("{e}\n{b}"));
        assert!(!c.rules.is_empty());
    }
    assert_eq!(parse(blocks[0]).unwrap(), parse(ISSUE_EXAMPLE).unwrap(), "the guide shows the issue's example");
}
