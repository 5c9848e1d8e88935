//! The facts `twreset doctor` works from and the findings it draws, as plain serialisable data.
//!
//! Gathering (cmd/doctor.rs) fills these from the kernel; everything that judges them is pure.

use std::{net::IpAddr, path::PathBuf};

use serde::Serialize;

use crate::ports::{self, PortRange, PortSpace};

/// How bad a finding is. Ordered: `Ok < Info < Warning < Critical`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// One judgement: a stable `code` (for scripts), a plain explanation, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    /// A concrete next step; `None` when nothing needs doing.
    pub action: Option<String>,
}

impl Finding {
    pub fn new(severity: Severity, code: &'static str, message: impl Into<String>) -> Self {
        Self { severity, code, message: message.into(), action: None }
    }

    pub fn action(mut self, action: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self
    }
}

/// The namespaced sysctls that matter for TIME_WAIT, as read from /proc/sys inside the
/// namespace. `None`: the file does not exist on this kernel (or could not be read).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// `net.ipv4.ip_local_port_range` (low, high), inclusive.
    pub ip_local_port_range: Option<(u16, u16)>,
    /// `net.ipv4.ip_local_reserved_ports` as inclusive ranges: never handed out as ephemeral ports.
    pub ip_local_reserved_ports: Vec<(u16, u16)>,
    pub tcp_tw_reuse: Option<u32>,
    pub tcp_tw_reuse_delay: Option<u32>,
    pub tcp_max_tw_buckets: Option<u64>,
    pub tcp_fin_timeout: Option<u32>,
    pub tcp_timestamps: Option<u32>,
    pub tcp_rfc1337: Option<u32>,
    /// Present only on kernels before 4.12.
    pub tcp_tw_recycle: Option<u32>,
}

/// The TCP_TIMEWAIT_LEN of every kernel: no sysctl changes it.
pub const TIME_WAIT_SECONDS: u32 = 60;
/// Kernel default of `tcp_fin_timeout`.
pub const DEFAULT_FIN_TIMEOUT: u32 = 60;

impl Settings {
    /// The namespace's ephemeral ports, as the one port-pressure model sees them
    /// ([`crate::ports`]); `None` when the range could not be read.
    pub fn port_space(&self) -> Option<PortSpace> {
        let (lo, hi) = self.ip_local_port_range?;
        Some(PortSpace { range: PortRange { lo, hi }, reserved: self.ip_local_reserved_ports.clone() })
    }

    /// Ephemeral ports one (local IP, remote IP, remote port) destination can use: the
    /// range minus the reserved ports inside it ([`PortSpace::ports`]).
    pub fn ports_per_destination(&self) -> Option<u32> {
        self.port_space().map(|s| s.ports())
    }

    /// True when `port` can be handed out by `connect()` as an ephemeral port.
    pub fn is_ephemeral(&self, port: u16) -> bool {
        self.port_space().is_some_and(|s| s.is_ephemeral(port))
    }

    /// Whether `connect()` from `local` to `remote` may take over a TIME_WAIT socket's port
    /// ([`ports::reuse_applies`]).
    pub fn reuse_applies(&self, local: IpAddr, remote: IpAddr) -> bool {
        ports::reuse_applies(self.tcp_tw_reuse, self.tcp_timestamps, local, remote)
    }
}

/// Counters of one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// TIME_WAIT sockets in substate TIME_WAIT (what `ss -tan state time-wait` lists).
    pub time_wait: u64,
    /// TIME_WAIT sockets still in substate FIN_WAIT2 (orphans; `ss` shows FIN-WAIT-2).
    pub fin_wait2_timewait: u64,
    /// All TIME_WAIT sockets, from /proc/net/sockstat `tw` (what `ss -s` prints as timewait and
    /// what `tcp_max_tw_buckets` limits).
    pub timewait_total: u64,
    /// TcpExt `TCPTimeWaitOverflow`: TIME_WAIT sockets never created because the bucket limit was full.
    pub tcp_time_wait_overflow: Option<u64>,
    /// TcpExt `TWRecycled`: connects that took over a TIME_WAIT socket's port (tcp_tw_reuse at work).
    pub tw_recycled: Option<u64>,
}

/// Sockets that hold an ephemeral port towards one destination.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Destination {
    pub local: IpAddr,
    pub remote: IpAddr,
    pub remote_port: u16,
    /// Sockets of any state holding a port of the ephemeral range to this destination.
    pub sockets: u64,
    /// Of those, TIME_WAIT sockets (both substates).
    pub time_wait: u64,
    /// `sockets` / ports per destination, in percent (one decimal).
    pub pressure_pct: f64,
    /// True when connect() may reuse the TIME_WAIT ports here (see [`Settings::reuse_applies`]).
    pub reuse_applies: bool,
}

/// One thing twreset needs from the kernel, and whether a real attempt showed it is there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Capability {
    pub available: bool,
    /// The errno name when the attempt failed (`"EPERM"`), else `None`.
    pub errno: Option<String>,
    /// What was tried and what happened.
    pub detail: String,
}

impl Capability {
    pub fn yes(detail: impl Into<String>) -> Self {
        Self { available: true, errno: None, detail: detail.into() }
    }

    pub fn no(errno: Option<&str>, detail: impl Into<String>) -> Self {
        Self { available: false, errno: errno.map(str::to_owned), detail: detail.into() }
    }
}

/// What this kernel lets twreset do. Kernel-wide (probed once, in twreset's own namespace).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    pub btf: Capability,
    pub tracefs: Capability,
    pub bpf_tracepoint: Capability,
    pub bpf_fentry: Capability,
    pub sock_destroy_time_wait: Capability,
    /// The kernel symbols twreset's exact TIME_WAIT lifecycle tracking filters timer
    /// tracepoints on are visible in /proc/kallsyms.
    pub timewait_timer: Capability,
}

/// A sysctl configuration line that sets `net.ipv4.tcp_tw_recycle`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigLine {
    pub path: PathBuf,
    pub line: usize,
    pub value: String,
}
