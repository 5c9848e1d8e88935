//! Unit tests of the doctor rules: every setting at good and bad values, every threshold edge.

use std::path::PathBuf;

use super::*;
use crate::doctor::model::Capability;

fn good() -> Settings {
    Settings {
        ip_local_port_range: Some((32768, 60999)),
        ip_local_reserved_ports: vec![],
        tcp_tw_reuse: Some(2),
        tcp_tw_reuse_delay: Some(1000),
        tcp_max_tw_buckets: Some(262_144),
        tcp_fin_timeout: Some(60),
        tcp_timestamps: Some(1),
        tcp_rfc1337: Some(0),
        tcp_tw_recycle: None,
    }
}

fn counters() -> Counters {
    Counters { tcp_time_wait_overflow: Some(0), tw_recycled: Some(0), ..Default::default() }
}

fn ctx() -> NsContext {
    NsContext { sock_destroy: true, netns_arg: None }
}

fn find<'a>(f: &'a [Finding], code: &str) -> &'a Finding {
    let hits: Vec<_> = f.iter().filter(|x| x.code == code).collect();
    assert_eq!(hits.len(), 1, "expected one {code} finding in {f:#?}");
    hits[0]
}

fn sev(s: &Settings, c: &Counters, code: &str) -> Severity {
    find(&namespace(s, c, &[], &ctx()), code).severity
}

#[test]
fn a_healthy_namespace_is_all_ok() {
    let f = namespace(&good(), &counters(), &[], &ctx());
    assert!(f.iter().all(|x| x.severity == Severity::Ok), "{f:#?}");
    assert!(f.iter().all(|x| x.action.is_none()));
    assert_eq!(exit_code(worst(&f)), 0);
    for code in [
        "port_range",
        "tcp_tw_reuse",
        "tcp_tw_reuse_delay",
        "tcp_timestamps",
        "tcp_max_tw_buckets",
        "tcp_fin_timeout",
        "tcp_rfc1337",
        "tcp_tw_recycle",
        "time_wait",
        "tcp_time_wait_overflow",
        "tw_recycled",
    ] {
        find(&f, code);
    }
}

#[test]
fn port_range_levels() {
    let c = counters();
    let mut s = good();
    assert!(find(&namespace(&s, &c, &[], &ctx()), "port_range").message.contains("28232 ephemeral ports"));
    s.ip_local_port_range = Some((40000, 40000 + NARROW_RANGE as u16 - 1));
    assert_eq!(sev(&s, &c, "port_range"), Severity::Ok);
    s.ip_local_port_range = Some((40000, 40000 + NARROW_RANGE as u16 - 2));
    assert_eq!(sev(&s, &c, "port_range"), Warning);
    s.ip_local_port_range = Some((40000, 40000));
    s.ip_local_reserved_ports = vec![(40000, 40000)];
    assert_eq!(sev(&s, &c, "port_range"), Critical);
    s.ip_local_port_range = None;
    assert_eq!(sev(&s, &c, "port_range"), Warning);
}

#[test]
fn tw_reuse_modes_explain_outgoing_only() {
    let c = counters();
    for (v, want) in [(0, Info), (1, Severity::Ok), (2, Severity::Ok), (3, Info)] {
        let s = Settings { tcp_tw_reuse: Some(v), ..good() };
        let f = namespace(&s, &c, &[], &ctx());
        let r = find(&f, "tcp_tw_reuse");
        assert_eq!(r.severity, want, "tcp_tw_reuse={v}");
        if v < 3 {
            assert!(r.message.contains("outgoing connect() only"), "{}", r.message);
        }
    }
    assert!(
        find(&namespace(&Settings { tcp_tw_reuse: Some(0), ..good() }, &c, &[], &ctx()), "tcp_tw_reuse")
            .action
            .is_some()
    );
    assert_eq!(sev(&Settings { tcp_tw_reuse: None, ..good() }, &c, "tcp_tw_reuse"), Info);
}

#[test]
fn reuse_delay_present_or_not() {
    let c = counters();
    let f = namespace(&good(), &c, &[], &ctx());
    assert!(find(&f, "tcp_tw_reuse_delay").message.contains("1000 ms"));
    let f = namespace(&Settings { tcp_tw_reuse_delay: None, ..good() }, &c, &[], &ctx());
    assert!(find(&f, "tcp_tw_reuse_delay").message.contains("not present"));
}

#[test]
fn timestamps_needed_for_reuse() {
    let c = counters();
    let off = |reuse| Settings { tcp_timestamps: Some(0), tcp_tw_reuse: Some(reuse), ..good() };
    assert_eq!(sev(&off(1), &c, "tcp_timestamps"), Warning);
    assert_eq!(sev(&off(2), &c, "tcp_timestamps"), Warning);
    assert_eq!(sev(&off(0), &c, "tcp_timestamps"), Info);
    assert_eq!(sev(&Settings { tcp_timestamps: Some(2), ..good() }, &c, "tcp_timestamps"), Severity::Ok);
}

#[test]
fn max_tw_buckets_levels() {
    let s = Settings { tcp_max_tw_buckets: Some(100_000), ..good() };
    let with = |n| Counters { timewait_total: n, ..counters() };
    assert_eq!(sev(&s, &with(0), "tcp_max_tw_buckets"), Severity::Ok);
    assert_eq!(sev(&s, &with(79_999), "tcp_max_tw_buckets"), Severity::Ok);
    assert_eq!(sev(&s, &with(80_000), "tcp_max_tw_buckets"), Warning);
    assert_eq!(sev(&s, &with(100_000), "tcp_max_tw_buckets"), Critical);
    // A limit below one destination's worth of ports is a warning even when empty.
    let low = Settings { tcp_max_tw_buckets: Some(1000), ..good() };
    let f = namespace(&low, &with(0), &[], &ctx());
    let b = find(&f, "tcp_max_tw_buckets");
    assert_eq!(b.severity, Warning);
    assert!(b.message.contains("28232 ports"), "{}", b.message);
    // Missing sysctl: no finding.
    let f = namespace(&Settings { tcp_max_tw_buckets: None, ..good() }, &with(0), &[], &ctx());
    assert!(f.iter().all(|x| x.code != "tcp_max_tw_buckets"));
}

#[test]
fn fin_timeout_does_not_touch_time_wait() {
    let c = Counters { fin_wait2_timewait: 3, ..counters() };
    let f = namespace(&good(), &c, &[], &ctx());
    let ft = find(&f, "tcp_fin_timeout");
    assert_eq!(ft.severity, Severity::Ok);
    assert!(ft.message.contains("3 such sockets"));
    let f = namespace(&Settings { tcp_fin_timeout: Some(10), ..good() }, &c, &[], &ctx());
    let ft = find(&f, "tcp_fin_timeout");
    assert_eq!(ft.severity, Info);
    assert!(ft.message.contains("does NOT shorten TIME_WAIT"), "{}", ft.message);
    assert!(ft.action.as_ref().unwrap().contains("tcp_tw_reuse"));
}

#[test]
fn rfc1337_blocks_rst_kills() {
    let c = counters();
    let s = Settings { tcp_rfc1337: Some(1), ..good() };
    assert_eq!(find(&namespace(&s, &c, &[], &ctx()), "tcp_rfc1337").severity, Info);
    let no_destroy = NsContext { sock_destroy: false, netns_arg: None };
    let f = namespace(&s, &c, &[], &no_destroy);
    assert_eq!(find(&f, "tcp_rfc1337").severity, Warning);
    assert!(find(&f, "tcp_rfc1337").action.as_ref().unwrap().contains("tcp_rfc1337=0"));
    assert_eq!(find(&namespace(&good(), &c, &[], &no_destroy), "tcp_rfc1337").severity, Severity::Ok);
}

#[test]
fn tw_recycle_presence() {
    let c = counters();
    assert!(find(&namespace(&good(), &c, &[], &ctx()), "tcp_tw_recycle").message.contains("removed in Linux 4.12"));
    assert_eq!(sev(&Settings { tcp_tw_recycle: Some(0), ..good() }, &c, "tcp_tw_recycle"), Severity::Ok);
    assert_eq!(sev(&Settings { tcp_tw_recycle: Some(1), ..good() }, &c, "tcp_tw_recycle"), Critical);
}

#[test]
fn counters_findings() {
    let s = good();
    let c = Counters {
        tcp_time_wait_overflow: Some(5),
        tw_recycled: Some(9),
        timewait_total: 7,
        time_wait: 6,
        fin_wait2_timewait: 1,
    };
    let f = namespace(&s, &c, &[], &ctx());
    assert_eq!(find(&f, "tcp_time_wait_overflow").severity, Warning);
    assert_eq!(find(&f, "tw_recycled").severity, Info);
    assert!(
        find(&f, "time_wait")
            .message
            .starts_with("7 TIME_WAIT sockets (6 in substate TIME_WAIT, 1 orphaned FIN_WAIT2)")
    );
    let f = namespace(&s, &Counters::default(), &[], &ctx());
    assert!(f.iter().all(|x| x.code != "tcp_time_wait_overflow" && x.code != "tw_recycled"));
}

fn dest(sockets: u64, time_wait: u64, reuse: bool) -> Destination {
    Destination {
        local: "10.0.0.1".parse().unwrap(),
        remote: "10.0.0.5".parse().unwrap(),
        remote_port: 443,
        sockets,
        time_wait,
        pressure_pct: percent(sockets, 100),
        reuse_applies: reuse,
    }
}

fn pressure_of(d: Destination, ctx: &NsContext) -> Option<Finding> {
    let s = Settings { ip_local_port_range: Some((40000, 40099)), tcp_tw_reuse: Some(0), ..good() };
    namespace(&s, &counters(), &[d], ctx).into_iter().find(|f| f.code == "port_pressure")
}

#[test]
fn port_pressure_thresholds() {
    let c = ctx();
    assert_eq!(pressure_of(dest(49, 49, false), &c), None);
    assert_eq!(pressure_of(dest(50, 50, false), &c).unwrap().severity, Info);
    assert_eq!(pressure_of(dest(70, 70, false), &c).unwrap().severity, Warning);
    assert_eq!(pressure_of(dest(89, 89, false), &c).unwrap().severity, Warning);
    assert_eq!(pressure_of(dest(90, 90, false), &c).unwrap().severity, Critical);
}

#[test]
fn port_pressure_message_and_action() {
    let f = pressure_of(dest(92, 90, false), &ctx()).unwrap();
    assert!(f.message.starts_with("port pressure 92% to 10.0.0.5:443 from 10.0.0.1: 92 of 100"), "{}", f.message);
    assert_eq!(
        f.action.as_deref(),
        Some(
            "widen ip_local_port_range, add source IPs, or enable tcp_tw_reuse=1 for outgoing connections; killing TIME_WAIT gives relief now: `twreset kill 10.0.0.5:443`"
        )
    );
    let in_ns = NsContext { sock_destroy: true, netns_arg: Some("/run/netns/x".into()) };
    assert!(
        pressure_of(dest(92, 90, false), &in_ns)
            .unwrap()
            .action
            .unwrap()
            .contains("`twreset kill --netns /run/netns/x 10.0.0.5:443`")
    );
    // No TIME_WAIT: killing would not help, so it is not suggested.
    assert!(!pressure_of(dest(92, 0, false), &ctx()).unwrap().action.unwrap().contains("twreset kill"));
}

#[test]
fn reuse_discounts_time_wait_ports() {
    // 95% held, but 90 of them TIME_WAIT that connect() may take over: 5% really held.
    assert_eq!(pressure_of(dest(95, 90, true), &ctx()), None);
    let f = pressure_of(dest(95, 20, true), &ctx()).unwrap();
    assert_eq!(f.severity, Warning);
    assert!(f.message.contains("75% really held"), "{}", f.message);
    assert!(!f.action.unwrap().contains("enable tcp_tw_reuse"));
}

#[test]
fn ipv6_destinations_are_bracketed() {
    let mut d = dest(95, 95, false);
    d.remote = "fd00::5".parse().unwrap();
    let f = pressure_of(d, &ctx()).unwrap();
    assert!(f.message.contains("to [fd00::5]:443"), "{}", f.message);
    assert!(f.action.unwrap().contains("`twreset kill [fd00::5]:443`"));
}

fn caps(all: bool) -> Capabilities {
    let c = |ok: bool| {
        if ok { Capability::yes("fine") } else { Capability::no(Some("EPERM"), "refused") }
    };
    Capabilities {
        btf: c(all),
        tracefs: c(all),
        bpf_tracepoint: c(all),
        bpf_fentry: c(all),
        sock_destroy_time_wait: c(all),
        timewait_timer: c(all),
    }
}

#[test]
fn kernel_capabilities() {
    let f = kernel(&caps(true), &[], false);
    assert!(f.iter().all(|x| x.severity == Severity::Ok), "{f:#?}");
    let f = kernel(&caps(false), &[], false);
    assert_eq!(find(&f, "btf").severity, Warning);
    assert_eq!(find(&f, "tracefs").severity, Info);
    assert_eq!(find(&f, "bpf_tracepoint").severity, Warning);
    assert_eq!(find(&f, "bpf_fentry").severity, Info);
    assert!(find(&f, "bpf_fentry").message.contains("fentry unavailable: refused"));
    assert_eq!(find(&f, "sock_destroy").severity, Warning);
    assert_eq!(find(&f, "timewait_timer").severity, Warning);
    assert_eq!(exit_code(worst(&f)), 0, "missing capabilities alone never fail the host");
}

#[test]
fn recycle_in_config_files() {
    let line = |v: &str| ConfigLine { path: PathBuf::from("/etc/sysctl.d/90-tune.conf"), line: 3, value: v.into() };
    let f = kernel(&caps(true), &[line("1")], false);
    let r = find(&f, "tcp_tw_recycle_config");
    assert_eq!(r.severity, Warning);
    assert!(r.message.starts_with("/etc/sysctl.d/90-tune.conf:3 sets net.ipv4.tcp_tw_recycle = 1"), "{}", r.message);
    assert!(r.action.as_ref().unwrap().contains("/etc/sysctl.d/90-tune.conf"));
    assert_eq!(find(&kernel(&caps(true), &[line("1")], true), "tcp_tw_recycle_config").severity, Critical);
    assert_eq!(find(&kernel(&caps(true), &[line("0")], true), "tcp_tw_recycle_config").severity, Info);
    assert_eq!(
        kernel(&caps(true), &[line("1"), line("0")], false)
            .iter()
            .filter(|x| x.code == "tcp_tw_recycle_config")
            .count(),
        2
    );
}

#[test]
fn exit_codes() {
    assert_eq!(exit_code(Severity::Ok), 0);
    assert_eq!(exit_code(Info), 0);
    assert_eq!(exit_code(Warning), 0);
    assert_eq!(exit_code(Critical), 1);
    assert_eq!(worst(&[]), Severity::Ok);
}
