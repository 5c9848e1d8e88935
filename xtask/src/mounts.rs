//! A mount namespace of xtask's own: the test suite runs without tracefs and debugfs, as on a
//! fresh machine, without changing the host's mounts.

use std::ffi::CString;

use anyhow::{Context, Result, bail};

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in a path")
}

/// Move this process (single-threaded, before it spawns anything) into a new mount namespace in
/// which nothing propagates back to the host.
fn private_namespace() -> Result<()> {
    // SAFETY: plain syscalls with valid C strings; xtask has no other thread.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNS): a mount namespace needs root");
        }
        let root = cstr("/");
        let flags = libc::MS_REC | libc::MS_PRIVATE;
        if libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), flags, std::ptr::null()) != 0 {
            return Err(std::io::Error::last_os_error()).context("making / private in the new mount namespace");
        }
    }
    Ok(())
}

fn mounted(fstype: &str) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == fstype).then(|| pre.split_whitespace().nth(4).map(str::to_owned))?
        })
        .collect()
}

/// Run the rest of xtask (and the tests it starts) where tracefs and debugfs are not mounted: a
/// test that needs one mounts it itself, so the suite behaves as on a fresh machine even where
/// an earlier run or the host mounted them. Without root (a developer's unprivileged run, whose
/// kernel tests skip anyway) it says so and goes on, except under `CI=true`.
pub fn without_tracefs() -> Result<()> {
    if let Err(e) = private_namespace() {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            return Err(e);
        }
        eprintln!("xtask: {e:#}; running the tests with the host's mounts");
        return Ok(());
    }
    // Deepest first: tracefs may sit inside debugfs (/sys/kernel/debug/tracing).
    let mut targets: Vec<String> = mounted("tracefs").into_iter().chain(mounted("debugfs")).collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in &targets {
        // SAFETY: umount2 with a valid C string.
        if unsafe { libc::umount2(cstr(t).as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("unmounting {t}"));
        }
    }
    let left: Vec<String> = mounted("tracefs").into_iter().chain(mounted("debugfs")).collect();
    if !left.is_empty() {
        bail!("still mounted in the test's mount namespace: {left:?}");
    }
    eprintln!("xtask: tests run in a mount namespace of their own, without tracefs and debugfs");
    Ok(())
}
