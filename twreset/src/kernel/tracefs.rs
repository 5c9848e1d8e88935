//! Make sure tracefs is mounted: tracepoint attachment looks event ids up there.

use std::path::Path;

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUG_TRACEFS: &str = "/sys/kernel/debug/tracing";

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at {TRACEFS} failed; mount it with `mount -t tracefs tracefs {TRACEFS}`"
    )]
    Mount {
        #[source]
        source: nix::Error,
    },
}

/// True when tracefs answers at one of the places aya looks.
pub fn mounted() -> bool {
    [TRACEFS, DEBUG_TRACEFS].iter().any(|p| Path::new(p).join("events").is_dir())
}

/// Mount tracefs at /sys/kernel/tracing when it is missing. Returns true if this call mounted it.
pub fn ensure_mounted() -> Result<bool, TracefsError> {
    if mounted() {
        return Ok(false);
    }
    nix::mount::mount(Some("tracefs"), TRACEFS, Some("tracefs"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|source| TracefsError::Mount { source })?;
    Ok(true)
}
