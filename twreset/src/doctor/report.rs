//! The doctor report: one JSON document with stable keys (docs/guide/doctor.md) or readable sections
//! with one line per finding. Pure: built from gathered facts, rendered to a String.

use std::{fmt::Write, path::PathBuf};

use serde::Serialize;

use crate::doctor::{
    findings::{self, NsContext},
    model::{Capabilities, Capability, ConfigLine, Counters, Destination, Finding, Settings, Severity},
    paths::Paths,
    pressure,
};

/// Bump when a key changes meaning or disappears (adding keys does not bump it).
pub const SCHEMA_VERSION: u32 = 1;
/// Destinations listed per namespace.
pub const TOP_DESTINATIONS: usize = 10;

/// Kernel-wide part of the report.
#[derive(Clone, Debug, Serialize)]
pub struct KernelReport {
    pub release: String,
    pub capabilities: Capabilities,
    /// Files and directories searched for sysctl settings.
    pub sysctl_paths: Vec<PathBuf>,
    pub tcp_tw_recycle_config: Vec<ConfigLine>,
    pub findings: Vec<Finding>,
    /// Which path each command takes on this kernel and why (set by the command, see `paths`).
    pub paths: Option<Paths>,
}

/// One network namespace.
#[derive(Clone, Debug, Serialize)]
pub struct NsReport {
    /// `current`, the pod or container (`pod:NS/NAME`, `container:NAME`), an `ip netns` name, or
    /// `pid N`.
    pub label: String,
    pub path: Option<PathBuf>,
    pub cookie: u64,
    /// Who the namespace belongs to, where known: `pod_namespace`, `pod`, `pod_uid`, `container`,
    /// `container_id`, `runtime` (see docs/guide/namespaces.md).
    #[serde(flatten)]
    pub owner: std::collections::BTreeMap<&'static str, String>,
    pub settings: Settings,
    pub ports_per_destination: Option<u32>,
    pub counters: Counters,
    /// Busiest destinations by ephemeral ports held, at most [`TOP_DESTINATIONS`].
    pub destinations: Vec<Destination>,
    /// tcp_rfc1337 == 0: a RST with the exact sequence number kills TIME_WAIT sockets here.
    pub rst_kill_possible: bool,
    pub findings: Vec<Finding>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub kernel: KernelReport,
    pub namespaces: Vec<NsReport>,
    pub worst: Severity,
    pub exit_code: u8,
}

/// What was gathered in one namespace.
#[derive(Clone, Debug)]
pub struct NsFacts {
    pub label: String,
    pub path: Option<PathBuf>,
    pub cookie: u64,
    /// The pod or container the namespace belongs to (identity fields but `netns`), if any.
    pub owner: std::collections::BTreeMap<&'static str, String>,
    pub settings: Settings,
    pub counters: Counters,
    pub sockets: Vec<crate::sock::DiagSocket>,
}

/// Judge everything and assemble the report.
pub fn build(
    release: String,
    caps: Capabilities,
    sysctl_paths: Vec<PathBuf>,
    recycle: Vec<ConfigLine>,
    facts: Vec<NsFacts>,
) -> Report {
    let kernel_has_recycle = facts.iter().any(|f| f.settings.tcp_tw_recycle.is_some());
    let kfind = findings::kernel(&caps, &recycle, kernel_has_recycle);
    let sock_destroy = caps.sock_destroy_time_wait.available;
    let namespaces: Vec<NsReport> = facts
        .into_iter()
        .map(|f| {
            let destinations = pressure::destinations(&f.sockets, &f.settings, TOP_DESTINATIONS);
            let ctx = NsContext { sock_destroy, netns_arg: f.path.as_ref().map(|p| p.display().to_string()) };
            let findings = findings::namespace(&f.settings, &f.counters, &destinations, &ctx);
            NsReport {
                label: f.label,
                path: f.path,
                cookie: f.cookie,
                owner: f.owner,
                ports_per_destination: f.settings.ports_per_destination(),
                rst_kill_possible: f.settings.tcp_rfc1337 == Some(0),
                settings: f.settings,
                counters: f.counters,
                destinations,
                findings,
            }
        })
        .collect();
    let worst = findings::worst(kfind.iter().chain(namespaces.iter().flat_map(|n| &n.findings)));
    Report {
        schema_version: SCHEMA_VERSION,
        kernel: KernelReport {
            release,
            capabilities: caps,
            sysctl_paths,
            tcp_tw_recycle_config: recycle,
            findings: kfind,
            paths: None,
        },
        namespaces,
        worst,
        exit_code: findings::exit_code(worst),
    }
}

pub fn json(r: &Report) -> String {
    serde_json::to_string_pretty(r).expect("report serialises")
}

fn finding_line(out: &mut String, f: &Finding) {
    let _ = write!(out, "  [{:<8}] {}", f.severity.name(), f.message);
    if let Some(a) = &f.action {
        let _ = write!(out, " -> {a}");
    }
    out.push('\n');
}

fn cap_line(out: &mut String, name: &str, c: &Capability) {
    let state = if c.available { "yes" } else { "NO" };
    let errno = c.errno.as_ref().map(|e| format!(" [{e}]")).unwrap_or_default();
    let _ = writeln!(out, "  {name:<24} {state:<4} {}{errno}", c.detail);
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or("-".into(), T::to_string)
}

/// Findings by falling severity, rule order kept within one severity.
fn worst_first(f: &[Finding]) -> impl Iterator<Item = &Finding> {
    let mut v: Vec<&Finding> = f.iter().collect();
    v.sort_by_key(|f| std::cmp::Reverse(f.severity));
    v.into_iter()
}

/// Readable sections: kernel, then per namespace settings, state, destinations and findings.
pub fn human(r: &Report) -> String {
    let mut o = String::new();
    let k = &r.kernel;
    let _ = writeln!(o, "== kernel {} ==", k.release);
    let c = &k.capabilities;
    cap_line(&mut o, "BTF", &c.btf);
    cap_line(&mut o, "tracefs", &c.tracefs);
    cap_line(&mut o, "BPF tracepoint", &c.bpf_tracepoint);
    cap_line(&mut o, "BPF fentry", &c.bpf_fentry);
    cap_line(&mut o, "SOCK_DESTROY TIME_WAIT", &c.sock_destroy_time_wait);
    cap_line(&mut o, "TIME_WAIT timer symbols", &c.timewait_timer);
    if let Some(p) = &k.paths {
        o.push_str("paths on this kernel:\n");
        for (cmd, p) in [("trace", &p.trace), ("kill", &p.kill), ("netns identity", &p.netns_identity)] {
            let _ = writeln!(o, "  {cmd}: {} ({})", p.path, p.reason);
        }
    }
    let paths: Vec<String> = k.sysctl_paths.iter().map(|p| p.display().to_string()).collect();
    let _ = writeln!(o, "  sysctl files scanned: {}", paths.join(" "));
    o.push_str("findings:\n");
    worst_first(&k.findings).for_each(|f| finding_line(&mut o, f));
    for ns in &r.namespaces {
        let s = &ns.settings;
        let path = ns.path.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default();
        let _ = writeln!(o, "\n== namespace {}{path} ==", ns.label);
        let range = s.ip_local_port_range.map_or("-".into(), |(a, b)| format!("{a}-{b}"));
        let _ = writeln!(
            o,
            "settings: ip_local_port_range={range} ({} ports/destination) tcp_tw_reuse={} tcp_tw_reuse_delay={} \
             tcp_max_tw_buckets={} tcp_fin_timeout={} tcp_timestamps={} tcp_rfc1337={} tcp_tw_recycle={}",
            opt(&ns.ports_per_destination),
            opt(&s.tcp_tw_reuse),
            opt(&s.tcp_tw_reuse_delay),
            opt(&s.tcp_max_tw_buckets),
            opt(&s.tcp_fin_timeout),
            opt(&s.tcp_timestamps),
            opt(&s.tcp_rfc1337),
            s.tcp_tw_recycle.map_or("absent".into(), |v| v.to_string()),
        );
        let n = &ns.counters;
        let _ = writeln!(
            o,
            "state: timewait={} (TIME_WAIT {}, FIN_WAIT2 {}) TCPTimeWaitOverflow={} TWRecycled={} rst_kill_possible={}",
            n.timewait_total,
            n.time_wait,
            n.fin_wait2_timewait,
            opt(&n.tcp_time_wait_overflow),
            opt(&n.tw_recycled),
            ns.rst_kill_possible
        );
        if !ns.destinations.is_empty() {
            o.push_str("busiest destinations (local -> remote:port, sockets, TIME_WAIT, pressure):\n");
            for d in &ns.destinations {
                let to = std::net::SocketAddr::new(d.remote, d.remote_port);
                let _ = writeln!(o, "  {} -> {to}  {}  {}  {}%", d.local, d.sockets, d.time_wait, d.pressure_pct);
            }
        }
        o.push_str("findings:\n");
        worst_first(&ns.findings).for_each(|f| finding_line(&mut o, f));
    }
    let _ = writeln!(o, "\nworst: {}", r.worst.name());
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        sock::{DiagSocket, SockKey},
        state::TcpState,
    };

    fn caps() -> Capabilities {
        let y = || Capability::yes("ok");
        Capabilities {
            btf: y(),
            tracefs: y(),
            bpf_tracepoint: y(),
            bpf_fentry: Capability::no(Some("EPERM"), "BPF_PROG_LOAD failed"),
            sock_destroy_time_wait: y(),
            timewait_timer: y(),
        }
    }

    fn facts(tw: u16) -> NsFacts {
        let sockets = (0..tw)
            .map(|i| DiagSocket {
                key: SockKey {
                    netns_cookie: 9,
                    laddr: "127.0.0.1".parse().unwrap(),
                    lport: 40000 + i,
                    raddr: "127.0.0.1".parse().unwrap(),
                    rport: 8080,
                },
                state: TcpState::TimeWait,
                timewait: true,
                expires_ms: 0,
                cookie: 0,
                inode: 0,
                uid: 0,
            })
            .collect();
        NsFacts {
            label: "web".into(),
            path: Some("/run/netns/web".into()),
            cookie: 9,
            owner: Default::default(),
            settings: Settings {
                ip_local_port_range: Some((40000, 40099)),
                tcp_tw_reuse: Some(0),
                tcp_tw_reuse_delay: Some(1000),
                tcp_max_tw_buckets: Some(262_144),
                tcp_fin_timeout: Some(60),
                tcp_timestamps: Some(1),
                tcp_rfc1337: Some(0),
                ..Default::default()
            },
            counters: Counters { time_wait: u64::from(tw), timewait_total: u64::from(tw), ..Default::default() },
            sockets,
        }
    }

    fn keys(v: &serde_json::Value) -> Vec<&str> {
        let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn json_keys_are_stable() {
        let r = build("6.18.44".into(), caps(), vec!["/etc/sysctl.d".into()], vec![], vec![facts(95)]);
        let v: serde_json::Value = serde_json::from_str(&json(&r)).unwrap();
        assert_eq!(keys(&v), ["exit_code", "kernel", "namespaces", "schema_version", "worst"]);
        assert_eq!(
            keys(&v["kernel"]),
            ["capabilities", "findings", "paths", "release", "sysctl_paths", "tcp_tw_recycle_config"]
        );
        assert_eq!(
            keys(&v["kernel"]["capabilities"]),
            ["bpf_fentry", "bpf_tracepoint", "btf", "sock_destroy_time_wait", "timewait_timer", "tracefs"]
        );
        assert_eq!(keys(&v["kernel"]["capabilities"]["bpf_fentry"]), ["available", "detail", "errno"]);
        let ns = &v["namespaces"][0];
        assert_eq!(
            keys(ns),
            [
                "cookie",
                "counters",
                "destinations",
                "findings",
                "label",
                "path",
                "ports_per_destination",
                "rst_kill_possible",
                "settings"
            ]
        );
        assert_eq!(
            keys(&ns["settings"]),
            [
                "ip_local_port_range",
                "ip_local_reserved_ports",
                "tcp_fin_timeout",
                "tcp_max_tw_buckets",
                "tcp_rfc1337",
                "tcp_timestamps",
                "tcp_tw_recycle",
                "tcp_tw_reuse",
                "tcp_tw_reuse_delay"
            ]
        );
        assert_eq!(
            keys(&ns["counters"]),
            ["fin_wait2_timewait", "tcp_time_wait_overflow", "time_wait", "timewait_total", "tw_recycled"]
        );
        assert_eq!(
            keys(&ns["destinations"][0]),
            ["local", "pressure_pct", "remote", "remote_port", "reuse_applies", "sockets", "time_wait"]
        );
        assert_eq!(keys(&ns["findings"][0]), ["action", "code", "message", "severity"]);
        assert_eq!(v["schema_version"], SCHEMA_VERSION);
        assert_eq!(ns["settings"]["ip_local_port_range"], serde_json::json!([40000, 40099]));
        assert_eq!(ns["settings"]["tcp_tw_recycle"], serde_json::Value::Null);
    }

    #[test]
    fn worst_and_exit_code_span_kernel_and_namespaces() {
        let calm = build("6.18".into(), caps(), vec![], vec![], vec![facts(10)]);
        // A 100-port range is a warning by itself, and a warning never fails the run.
        assert_eq!((calm.worst, calm.exit_code), (Severity::Warning, 0));
        let hot = build("6.18".into(), caps(), vec![], vec![], vec![facts(10), facts(95)]);
        assert_eq!((hot.worst, hot.exit_code), (Severity::Critical, 1));
        assert_eq!(hot.namespaces[1].destinations[0].pressure_pct, 95.0);
        let none = build("6.18".into(), caps(), vec![], vec![], vec![]);
        assert_eq!(none.exit_code, 0);
    }

    #[test]
    fn human_has_one_line_per_finding() {
        let r = build("6.18.44".into(), caps(), vec![], vec![], vec![facts(95)]);
        let text = human(&r);
        let n = r.kernel.findings.len() + r.namespaces[0].findings.len();
        assert_eq!(text.lines().filter(|l| l.starts_with("  [")).count(), n);
        assert!(text.contains("== namespace web (/run/netns/web) =="));
        assert!(text.contains("  127.0.0.1 -> 127.0.0.1:8080  95  95  95%"), "{text}");
        assert!(text.contains("[critical] port pressure 95% to 127.0.0.1:8080"));
        assert!(text.ends_with("worst: critical\n"));
        let sevs: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("== namespace"))
            .filter(|l| l.starts_with("  ["))
            .filter_map(|l| l.get(3..11))
            .collect();
        assert_eq!(sevs.first(), Some(&"critical"), "worst first: {text}");
    }
}
