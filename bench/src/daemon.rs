//! A long-running child the bench talks to over HTTP (the agent, node-exporter): spawned with its
//! stderr kept, polled until ready, stopped with SIGTERM (SIGKILL after 20 s) on drop.

use std::{
    io::Read,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::sys;

/// A long-running child, stopped (SIGTERM, then SIGKILL after 20 s) on drop or by [`Daemon::stop`].
pub struct Daemon {
    child: Option<Child>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Daemon {
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        let mut err = child.stderr.take().context("stderr")?;
        let stderr = Some(thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }));
        Ok(Self { child: Some(child), stderr })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Exit status (`None`: killed by a signal) and the last lines of stderr.
    pub fn stop(&mut self) -> (Option<i32>, String) {
        let Some(mut c) = self.child.take() else { return (None, String::new()) };
        sys::send_signal(c.id(), libc::SIGTERM);
        let start = Instant::now();
        let status = loop {
            match c.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if start.elapsed() < Duration::from_secs(20) => thread::sleep(Duration::from_millis(50)),
                _ => {
                    let _ = c.kill();
                    break c.wait().ok();
                }
            }
        };
        let err = self.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        let tail: Vec<&str> = err.lines().rev().take(10).collect();
        (status.and_then(|s| s.code()), tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Poll `f` until it is true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A field of `/proc/PID/status` in KiB (`VmRSS:`, `VmHWM:`, `RssAnon:`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
