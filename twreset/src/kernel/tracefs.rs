//! Is tracefs mounted? Only reported by `doctor`: twreset attaches raw tracepoints, by name,
//! which need no tracefs.

use std::path::Path;

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUG_TRACEFS: &str = "/sys/kernel/debug/tracing";

/// True when tracefs answers at one of its usual places.
pub fn mounted() -> bool {
    [TRACEFS, DEBUG_TRACEFS].iter().any(|p| Path::new(p).join("events").is_dir())
}
