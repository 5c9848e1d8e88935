//! The doctor report: one JSON document with stable keys (docs/doctor.md) or readable sections
//! with one line per finding. Pure: built from gathered facts, rendered to a String.

use std::{fmt::Write, path::PathBuf};

use serde::Serialize;

use crate::doctor::{
    findings::{self, NsContext},
    model::{Capabilities, Capability, ConfigLine, Counters, Destination, Finding, Settings, Severity},
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
}

/// One network namespace.
#[derive(Clone, Debug, Serialize)]
pub struct NsReport {
    /// `current`, an `ip netns` name, or `pid N`.
    pub label: String,
    pub path: Option<PathBuf>,
    pub cookie: u64,
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
    let paths: Vec<String> = k.sysctl_paths.iter().map(|p| p.display().to_string()).collect();
    let _ = writeln!(o, "  sysctl files scanned: {}", paths.join(" "));
    o.push_str("findings:\n");
    k.findings.iter().for_each(|f| finding_line(&mut o, f));
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
        ns.findings.iter().for_each(|f| finding_line(&mut o, f));
    }
    let _ = writeln!(o, "\nworst: {}", r.worst.name());
    o
}
