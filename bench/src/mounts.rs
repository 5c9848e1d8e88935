//! tracefs for the bench's peers (bpftrace resolves tracepoints there): mounted in a mount
//! namespace of the bench's own when the host has none, so the host's mounts never change.

use std::ffi::CString;

use anyhow::{Context, Result};

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in a path")
}

fn tracefs_mounted() -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().filter_map(|l| l.split_once(" - ")).any(|(_, post)| post.split_whitespace().next() == Some("tracefs"))
}

/// Mount tracefs at /sys/kernel/tracing unless one is mounted. Call it before any thread: a new
/// mount namespace needs a single-threaded process.
pub fn with_tracefs() -> Result<()> {
    if tracefs_mounted() {
        return Ok(());
    }
    // SAFETY: plain syscalls with valid C strings; the bench has no other thread yet.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNS): a mount namespace needs root");
        }
        let root = cstr("/");
        let flags = libc::MS_REC | libc::MS_PRIVATE;
        if libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), flags, std::ptr::null()) != 0 {
            return Err(std::io::Error::last_os_error()).context("making / private in the new mount namespace");
        }
        let (src, target, fstype) = (cstr("nodev"), cstr("/sys/kernel/tracing"), cstr("tracefs"));
        if libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) != 0 {
            return Err(std::io::Error::last_os_error()).context("mounting tracefs at /sys/kernel/tracing");
        }
    }
    eprintln!("bench: tracefs mounted at /sys/kernel/tracing (in the bench's own mount namespace)");
    Ok(())
}
