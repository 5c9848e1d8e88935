//! Privilege checks, so a missing capability is one clear line rather than an EPERM from deep inside.

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("permission denied: loading eBPF programs needs root (or CAP_BPF and CAP_PERFMON); run twreset with sudo")]
    NoBpf,
    #[error("permission denied: killing sockets needs CAP_NET_ADMIN; run twreset with sudo")]
    NoNetAdmin,
    #[error("cannot read /proc/self/status")]
    Read(#[source] std::io::Error),
}

fn effective() -> Result<u64, CapsError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(CapsError::Read)?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0))
}

fn has(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

/// Loading tracing programs: CAP_SYS_ADMIN, or CAP_BPF together with CAP_PERFMON.
pub fn require_bpf() -> Result<(), CapsError> {
    let caps = effective()?;
    if has(caps, CAP_SYS_ADMIN) || (has(caps, CAP_BPF) && has(caps, CAP_PERFMON)) {
        Ok(())
    } else {
        Err(CapsError::NoBpf)
    }
}

/// SOCK_DESTROY and namespace switching: CAP_NET_ADMIN (and CAP_SYS_ADMIN for setns).
pub fn require_net_admin() -> Result<(), CapsError> {
    if has(effective()?, CAP_NET_ADMIN) { Ok(()) } else { Err(CapsError::NoNetAdmin) }
}
