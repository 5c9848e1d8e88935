//! The rules: settings, counters, port pressure and kernel capabilities in, findings out. Pure.
//!
//! Every message states what the setting really does (much folk advice is wrong, see
//! docs/guide/doctor.md) and every non-ok finding says what to do.

use std::net::{IpAddr, SocketAddr};

use crate::{
    doctor::{
        model::{
            Capabilities, ConfigLine, Counters, DEFAULT_FIN_TIMEOUT, Destination, Finding, Settings, Severity,
            TIME_WAIT_SECONDS,
        },
        pressure::held,
    },
    ports::percent,
};

use Severity::{Critical, Info, Warning};

/// Below this many ports per destination the range itself is a warning.
pub const NARROW_RANGE: u32 = 5000;
/// Port pressure thresholds (percent of the ports per destination in use).
pub const PRESSURE_CRITICAL: f64 = 90.0;
pub const PRESSURE_WARNING: f64 = 70.0;
pub const PRESSURE_INFO: f64 = 50.0;
/// TIME_WAIT table fill (percent of tcp_max_tw_buckets) that is a warning.
pub const BUCKETS_WARNING: u64 = 80;

/// What the namespace rules need besides its own facts.
#[derive(Clone, Debug, Default)]
pub struct NsContext {
    /// SOCK_DESTROY can kill TIME_WAIT sockets on this kernel.
    pub sock_destroy: bool,
    /// `--netns PATH` to add to suggested twreset commands (None for twreset's own namespace).
    pub netns_arg: Option<String>,
}

/// Findings for one namespace.
pub fn namespace(s: &Settings, c: &Counters, dests: &[Destination], ctx: &NsContext) -> Vec<Finding> {
    let mut out = vec![port_range(s), tw_reuse(s), tw_reuse_delay(s), timestamps(s)];
    out.extend(max_tw_buckets(s, c));
    out.push(fin_timeout(s, c));
    out.push(rfc1337(s, ctx));
    out.push(tw_recycle(s));
    out.push(time_wait_count(c));
    out.extend(overflow(c));
    out.extend(recycled(c));
    out.extend(dests.iter().filter_map(|d| port_pressure(d, s, ctx)));
    out
}

fn port_range(s: &Settings) -> Finding {
    let (Some((lo, hi)), Some(n)) = (s.ip_local_port_range, s.ports_per_destination()) else {
        return Finding::new(Warning, "port_range", "cannot read net.ipv4.ip_local_port_range");
    };
    let rate = f64::from(n) / f64::from(TIME_WAIT_SECONDS);
    let rate = if rate < 10.0 { format!("{rate:.1}") } else { format!("{rate:.0}") };
    let what = |adj: &str| {
        format!(
            "ip_local_port_range {lo}-{hi}{adj}: {n} ephemeral ports per destination (local IP, remote IP, remote port); \
             when this host closes first each port then sits {TIME_WAIT_SECONDS} s in TIME_WAIT, so at most {rate} new \
             connections/s to one destination without tcp_tw_reuse"
        )
    };
    if n == 0 {
        Finding::new(
            Critical,
            "port_range",
            format!("{}: connect() without bind() fails with EADDRNOTAVAIL", what(" is empty")),
        )
        .action("sysctl -w net.ipv4.ip_local_port_range=\"32768 60999\"")
    } else if n < NARROW_RANGE {
        Finding::new(Warning, "port_range", what(" is narrow"))
            .action("widen it, e.g. sysctl -w net.ipv4.ip_local_port_range=\"10240 65000\"")
    } else {
        Finding::new(Severity::Ok, "port_range", what(""))
    }
}

fn tw_reuse(s: &Settings) -> Finding {
    const ONLY_OUT: &str = "it helps outgoing connect() only, never incoming connections or listeners";
    match s.tcp_tw_reuse {
        Some(0) => Finding::new(
            Info,
            "tcp_tw_reuse",
            format!("tcp_tw_reuse=0: connect() never takes over a TIME_WAIT socket's port ({ONLY_OUT})"),
        )
        .action(
            "if this host opens many outgoing connections to the same destination: sysctl -w net.ipv4.tcp_tw_reuse=1",
        ),
        Some(1) => Finding::new(
            Severity::Ok,
            "tcp_tw_reuse",
            format!("tcp_tw_reuse=1: connect() may reuse a TIME_WAIT port to any destination ({ONLY_OUT})"),
        ),
        Some(2) => Finding::new(
            Severity::Ok,
            "tcp_tw_reuse",
            format!("tcp_tw_reuse=2 (kernel default): reuse for loopback connections only ({ONLY_OUT})"),
        ),
        Some(v) => Finding::new(Info, "tcp_tw_reuse", format!("tcp_tw_reuse={v}: unknown mode")),
        None => Finding::new(Info, "tcp_tw_reuse", "net.ipv4.tcp_tw_reuse not present on this kernel"),
    }
}

fn tw_reuse_delay(s: &Settings) -> Finding {
    match s.tcp_tw_reuse_delay {
        Some(ms) => Finding::new(
            Severity::Ok,
            "tcp_tw_reuse_delay",
            format!(
                "tcp_tw_reuse_delay={ms} ms: a TIME_WAIT port becomes reusable that long after the socket entered TIME_WAIT (when tcp_tw_reuse applies)"
            ),
        ),
        None => Finding::new(
            Severity::Ok,
            "tcp_tw_reuse_delay",
            "net.ipv4.tcp_tw_reuse_delay not present on this kernel: reuse waits a fixed 1 s",
        ),
    }
}

fn timestamps(s: &Settings) -> Finding {
    match s.tcp_timestamps {
        Some(0) if s.tcp_tw_reuse.is_some_and(|r| r != 0) => Finding::new(
            Warning,
            "tcp_timestamps",
            "tcp_timestamps=0: tcp_tw_reuse is set but has no effect, the kernel reuses TIME_WAIT ports only for connections with timestamps",
        )
        .action("sysctl -w net.ipv4.tcp_timestamps=1"),
        Some(0) => Finding::new(
            Info,
            "tcp_timestamps",
            "tcp_timestamps=0: no PAWS protection, and tcp_tw_reuse could not work if enabled",
        )
        .action("sysctl -w net.ipv4.tcp_timestamps=1"),
        Some(v) => Finding::new(Severity::Ok, "tcp_timestamps", format!("tcp_timestamps={v}: on (tcp_tw_reuse can work)")),
        None => Finding::new(Info, "tcp_timestamps", "net.ipv4.tcp_timestamps not present on this kernel"),
    }
}

fn max_tw_buckets(s: &Settings, c: &Counters) -> Option<Finding> {
    let max = s.tcp_max_tw_buckets?;
    let pct = percent(c.timewait_total, max);
    let now = format!("{} TIME_WAIT sockets of tcp_max_tw_buckets={max} ({pct}%)", c.timewait_total);
    const DROPPED: &str = "connections then close without a TIME_WAIT socket (no protection against stale segments) and TCPTimeWaitOverflow counts them";
    let raise = "raise it: sysctl -w net.ipv4.tcp_max_tw_buckets=262144 (a TIME_WAIT socket costs ~250 bytes); lowering it never was a fix";
    let slots = s.ports_per_destination().unwrap_or(0);
    Some(if c.timewait_total >= max {
        Finding::new(Critical, "tcp_max_tw_buckets", format!("{now}: the table is full, {DROPPED}")).action(raise)
    } else if u128::from(c.timewait_total) * 100 >= u128::from(max) * u128::from(BUCKETS_WARNING) {
        Finding::new(Warning, "tcp_max_tw_buckets", format!("{now}: nearly full; when full, {DROPPED}")).action(raise)
    } else if max < u64::from(slots) {
        Finding::new(
            Warning,
            "tcp_max_tw_buckets",
            format!("{now}: the limit is below the {slots} ports of a single destination, so one busy peer fills it; {DROPPED}"),
        )
        .action(raise)
    } else {
        Finding::new(Severity::Ok, "tcp_max_tw_buckets", now)
    })
}

fn fin_timeout(s: &Settings, c: &Counters) -> Finding {
    let fw2 =
        if c.fin_wait2_timewait > 0 { format!(" ({} such sockets now)", c.fin_wait2_timewait) } else { String::new() };
    match s.tcp_fin_timeout {
        Some(v) if v == DEFAULT_FIN_TIMEOUT => Finding::new(
            Severity::Ok,
            "tcp_fin_timeout",
            format!("tcp_fin_timeout={v} s (default): how long an orphaned FIN_WAIT2 socket waits for the peer's FIN{fw2}; it does not change TIME_WAIT ({TIME_WAIT_SECONDS} s, hard-coded)"),
        ),
        Some(v) => Finding::new(
            Info,
            "tcp_fin_timeout",
            format!("tcp_fin_timeout={v} s: this only limits orphaned FIN_WAIT2 sockets{fw2}; it does NOT shorten TIME_WAIT, which lasts {TIME_WAIT_SECONDS} s whatever any sysctl says"),
        )
        .action("to get rid of TIME_WAIT use tcp_tw_reuse=1 (outgoing connects) or `twreset kill`; tcp_fin_timeout will not do it"),
        None => Finding::new(Info, "tcp_fin_timeout", "net.ipv4.tcp_fin_timeout not present on this kernel"),
    }
}

fn rfc1337(s: &Settings, ctx: &NsContext) -> Finding {
    match s.tcp_rfc1337 {
        Some(0) => Finding::new(Severity::Ok, "tcp_rfc1337", "tcp_rfc1337=0: a RST with the right sequence number kills a TIME_WAIT socket (twreset's RST fallback works)"),
        Some(v) if ctx.sock_destroy => Finding::new(
            Info,
            "tcp_rfc1337",
            format!("tcp_rfc1337={v}: TIME_WAIT sockets ignore RSTs, so the RST fallback cannot kill them; SOCK_DESTROY still can"),
        ),
        Some(v) => Finding::new(
            Warning,
            "tcp_rfc1337",
            format!("tcp_rfc1337={v}: TIME_WAIT sockets ignore RSTs and this kernel cannot SOCK_DESTROY them, so nothing can kill TIME_WAIT here"),
        )
        .action("sysctl -w net.ipv4.tcp_rfc1337=0 to allow RST kills"),
        None => Finding::new(Info, "tcp_rfc1337", "net.ipv4.tcp_rfc1337 not present on this kernel"),
    }
}

fn tw_recycle(s: &Settings) -> Finding {
    match s.tcp_tw_recycle {
        None => Finding::new(Severity::Ok, "tcp_tw_recycle", "tcp_tw_recycle does not exist: removed in Linux 4.12 (it broke clients behind NAT)"),
        Some(0) => Finding::new(Severity::Ok, "tcp_tw_recycle", "tcp_tw_recycle=0 (kernel older than 4.12): keep it off"),
        Some(v) => Finding::new(
            Critical,
            "tcp_tw_recycle",
            format!("tcp_tw_recycle={v}: drops SYNs from clients behind NAT whose timestamps go backwards; removed in Linux 4.12 for that reason"),
        )
        .action("sysctl -w net.ipv4.tcp_tw_recycle=0 and remove it from /etc/sysctl*"),
    }
}

fn time_wait_count(c: &Counters) -> Finding {
    Finding::new(
        Severity::Ok,
        "time_wait",
        format!(
            "{} TIME_WAIT sockets ({} in substate TIME_WAIT, {} orphaned FIN_WAIT2); each lives {TIME_WAIT_SECONDS} s",
            c.timewait_total, c.time_wait, c.fin_wait2_timewait
        ),
    )
}

fn overflow(c: &Counters) -> Option<Finding> {
    let n = c.tcp_time_wait_overflow?;
    Some(if n > 0 {
        Finding::new(
            Warning,
            "tcp_time_wait_overflow",
            format!("TCPTimeWaitOverflow={n}: that many connections closed without a TIME_WAIT socket because tcp_max_tw_buckets was full (counted since the namespace started)"),
        )
        .action("raise net.ipv4.tcp_max_tw_buckets")
    } else {
        Finding::new(
            Severity::Ok,
            "tcp_time_wait_overflow",
            "TCPTimeWaitOverflow=0: the TIME_WAIT table never overflowed",
        )
    })
}

fn recycled(c: &Counters) -> Option<Finding> {
    let n = c.tw_recycled?;
    Some(Finding::new(
        if n > 0 { Info } else { Severity::Ok },
        "tw_recycled",
        format!(
            "TWRecycled={n}: connects that took over a TIME_WAIT port through tcp_tw_reuse (the counter keeps the old recycle name)"
        ),
    ))
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

fn port_pressure(d: &Destination, s: &Settings, ctx: &NsContext) -> Option<Finding> {
    let slots = u64::from(s.ports_per_destination()?);
    // With reuse in force the TIME_WAIT ports are free for the next connect().
    let effective = percent(held(d), slots);
    let sev = match effective {
        p if p >= PRESSURE_CRITICAL => Critical,
        p if p >= PRESSURE_WARNING => Warning,
        p if p >= PRESSURE_INFO => Info,
        _ => return None,
    };
    let to = endpoint(d.remote, d.remote_port);
    let mut msg = format!(
        "port pressure {:.0}% to {to} from {}: {} of {slots} ephemeral ports held, {} of them in TIME_WAIT",
        d.pressure_pct, d.local, d.sockets, d.time_wait
    );
    if d.reuse_applies {
        msg.push_str(&format!("; tcp_tw_reuse frees the TIME_WAIT ones, {effective:.0}% really held"));
    }
    let mut action = String::from("widen ip_local_port_range, add source IPs");
    if !d.reuse_applies {
        action.push_str(", or enable tcp_tw_reuse=1 for outgoing connections");
    }
    if d.time_wait > 0 {
        let ns = ctx.netns_arg.as_ref().map(|p| format!(" --netns {p}")).unwrap_or_default();
        action.push_str(&format!("; killing TIME_WAIT gives relief now: `twreset kill{ns} {to}`"));
    }
    Some(Finding::new(sev, "port_pressure", msg).action(action))
}

/// Kernel-wide findings: capabilities and sysctl configuration files.
pub fn kernel(caps: &Capabilities, recycle_lines: &[ConfigLine], kernel_has_recycle: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    let cap = |ok: bool, sev: Severity, code: &'static str, yes: String, no: String, action: &str| {
        if ok { Finding::new(Severity::Ok, code, yes) } else { Finding::new(sev, code, no).action(action) }
    };
    out.push(cap(
        caps.btf.available,
        Warning,
        "btf",
        format!("kernel BTF present ({})", caps.btf.detail),
        format!("no kernel BTF: twreset cannot locate socket fields ({})", caps.btf.detail),
        "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
    ));
    out.push(cap(
        caps.tracefs.available,
        Info,
        "tracefs",
        format!("tracefs mounted ({})", caps.tracefs.detail),
        format!(
            "tracefs not mounted ({}); twreset does not need it (BTF-typed raw tracepoints), other tracers do",
            caps.tracefs.detail
        ),
        "mount -t tracefs tracefs /sys/kernel/tracing",
    ));
    out.push(cap(
        caps.bpf_tracepoint.available,
        Warning,
        "bpf_tracepoint",
        format!("BTF-typed tracepoint programs (tp_btf) load ({})", caps.bpf_tracepoint.detail),
        format!(
            "BTF-typed tracepoint programs (tp_btf) do not load ({}): twreset trace, tw and top cannot run",
            caps.bpf_tracepoint.detail
        ),
        "run as root (or with CAP_BPF and CAP_PERFMON)",
    ));
    out.push(cap(
        caps.bpf_fentry.available,
        Info,
        "bpf_fentry",
        format!("fentry programs load ({})", caps.bpf_fentry.detail),
        format!(
            "fentry unavailable: {}; twreset uses tracepoints instead, with the same precision",
            caps.bpf_fentry.detail
        ),
        "nothing to do",
    ));
    out.push(cap(
        caps.sock_destroy_time_wait.available,
        Warning,
        "sock_destroy",
        format!("SOCK_DESTROY can kill TIME_WAIT sockets ({})", caps.sock_destroy_time_wait.detail),
        format!(
            "SOCK_DESTROY cannot kill TIME_WAIT sockets ({}): twreset kill falls back to RSTs, which need tcp_rfc1337=0",
            caps.sock_destroy_time_wait.detail
        ),
        "use Linux >= 6.0 with CONFIG_INET_DIAG_DESTROY=y, or keep tcp_rfc1337=0",
    ));
    out.push(cap(
        caps.timewait_timer.available,
        Warning,
        "timewait_timer",
        format!("TIME_WAIT timers can be followed exactly ({})", caps.timewait_timer.detail),
        format!(
            "TIME_WAIT creation, expiry and early removal cannot be followed exactly: {}",
            caps.timewait_timer.detail
        ),
        "run as root (kernel.kptr_restrict hides kernel addresses from others)",
    ));
    for l in recycle_lines {
        let at = format!("{}:{}", l.path.display(), l.line);
        out.push(if kernel_has_recycle && l.value != "0" {
            Finding::new(
                Critical,
                "tcp_tw_recycle_config",
                format!("{at} sets net.ipv4.tcp_tw_recycle = {}: at boot this breaks clients behind NAT", l.value),
            )
            .action(format!("delete that line from {}", l.path.display()))
        } else if kernel_has_recycle {
            Finding::new(Info, "tcp_tw_recycle_config", format!("{at} sets net.ipv4.tcp_tw_recycle = {} (off)", l.value))
        } else {
            Finding::new(
                Warning,
                "tcp_tw_recycle_config",
                format!(
                    "{at} sets net.ipv4.tcp_tw_recycle = {}, which this kernel does not have (removed in Linux 4.12): the line does nothing but fail at boot",
                    l.value
                ),
            )
            .action(format!("delete that line from {}", l.path.display()))
        });
    }
    out
}

/// The worst severity among findings (`Severity::Ok` when there are none).
pub fn worst<'a>(findings: impl IntoIterator<Item = &'a Finding>) -> Severity {
    findings.into_iter().map(|f| f.severity).max().unwrap_or(Severity::Ok)
}

/// Exit status: 0 when nothing is worse than a warning, 1 otherwise.
pub fn exit_code(worst: Severity) -> u8 {
    if worst > Warning { 1 } else { 0 }
}

#[cfg(test)]
#[path = "findings_tests.rs"]
mod tests;
