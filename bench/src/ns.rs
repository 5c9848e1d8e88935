//! Network namespaces the bench makes for itself: named `twbench-<pid>-<n>-<tag>`, set up for
//! churn (lo up, no TIME_WAIT reuse, wide port range, room for 2M TIME_WAIT sockets) and deleted
//! on drop, which also purges their TIME_WAIT sockets.

use std::{
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result};

use super::sys::output;

const PREFIX: &str = "twbench-";
static SEQ: AtomicU32 = AtomicU32::new(0);

/// Per-namespace sysctls: `tcp_tw_reuse=0` so loopback connects never recycle TIME_WAIT sockets
/// (default 2 does), the widest port range, and a TIME_WAIT limit far above what a run creates.
const SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.tcp_tw_reuse", "0"),
    ("net.ipv4.ip_local_port_range", "1024 65535"),
    ("net.ipv4.tcp_max_tw_buckets", "2000000"),
    ("net.core.somaxconn", "4096"),
];

pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!("{PREFIX}{}-{}-{tag}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        output(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name }; // from here on, drop deletes it
        output(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        for (k, v) in SYSCTLS {
            ns.output(&["sysctl", "-q", "-w", &format!("{k}={v}")])?;
        }
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// The namespace inode number, as bpftrace sees it in `net->ns.inum`.
    pub fn inum(&self) -> Result<u64> {
        Ok(std::fs::metadata(self.path()).with_context(|| format!("stat {}", self.path().display()))?.ino())
    }

    /// `ip netns exec NAME args...`
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    pub fn output(&self, args: &[&str]) -> Result<String> {
        output(&mut self.cmd(args))
    }

    /// TIME_WAIT sockets to `dst` (`ss -Htan state time-wait dst IP`), the kernel's own count.
    pub fn time_wait_to(&self, dst: &str) -> Result<u64> {
        Ok(self.output(&["ss", "-Htan", "state", "time-wait", "dst", dst])?.lines().count() as u64)
    }

    /// The namespace's tw sockets as the kernel counts them (`tw` of /proc/net/sockstat: one
    /// read, where `ss` would list a million lines).
    pub fn sockstat_tw(&self) -> Result<u64> {
        let text = self.output(&["cat", "/proc/net/sockstat"])?;
        sockstat_tw(&text).context("no `TCP: ... tw N` in /proc/net/sockstat")
    }

    /// All TIME_WAIT sockets of the namespace.
    pub fn time_wait_all(&self) -> Result<u64> {
        Ok(self.output(&["ss", "-Htan", "state", "time-wait"])?.lines().count() as u64)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

fn sockstat_tw(text: &str) -> Option<u64> {
    let tcp = text.lines().find(|l| l.starts_with("TCP:"))?;
    let f: Vec<&str> = tcp.split_whitespace().collect();
    f.iter().position(|&x| x == "tw").and_then(|i| f.get(i + 1)?.parse().ok())
}

/// Delete namespaces left by an earlier bench that was killed hard (its pid is gone).
pub fn remove_stale() {
    let Ok(list) = output(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()).filter(|n| n.starts_with(PREFIX)) {
        let pid = name[PREFIX.len()..].split('-').next().unwrap_or("");
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("bench: deleting stale namespace {name}");
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sockstat_tw() {
        let t = "sockets: used 5\nTCP: inuse 3 orphan 0 tw 200012 alloc 4 mem 1\nUDP: inuse 0 mem 0\n";
        assert_eq!(super::sockstat_tw(t), Some(200_012));
        assert_eq!(super::sockstat_tw("UDP: inuse 0"), None);
    }
}
