//! What a command acts on, as users write it: the namespaces in scope (the current one, given
//! paths, or every namespace on the host: `/run/netns/*` and `/proc/*/ns/net`, each once), peers,
//! ports and states. Shared vocabulary: it imports nothing above the kernel facts.

use std::{collections::HashSet, net::IpAddr, os::unix::fs::MetadataExt, path::Path};

use ipnet::IpNet;

use crate::{
    kernel::netns::{NAMED_DIR, Netns},
    state::TcpState,
};

/// Which namespaces a command covers.
#[derive(Debug)]
pub enum NetnsScope {
    Current,
    Paths(Vec<Netns>),
    All,
}

/// A namespace to run in; `netns: None` is the caller's own (no thread, no setns).
#[derive(Debug)]
pub struct Target {
    pub label: String,
    pub netns: Option<Netns>,
}

fn label_of(path: &Path) -> String {
    match path.strip_prefix(NAMED_DIR) {
        Ok(name) => name.display().to_string(),
        Err(_) => path.display().to_string(),
    }
}

pub fn resolve(scope: NetnsScope) -> Vec<Target> {
    match scope {
        NetnsScope::Current => vec![Target { label: "current".into(), netns: None }],
        NetnsScope::Paths(list) => {
            list.into_iter().map(|n| Target { label: label_of(&n.path), netns: Some(n) }).collect()
        }
        NetnsScope::All => all(),
    }
}

/// Every reachable network namespace, named ones first; one entry per namespace (nsfs inode).
/// Namespaces that vanish or cannot be opened while we look are skipped.
pub fn all() -> Vec<Target> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut add = |path: &Path, label: String| {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            return;
        }
        if let Ok(ns) = Netns::open(path) {
            out.push(Target { label, netns: Some(ns) });
        }
    };
    if let Ok(dir) = std::fs::read_dir(NAMED_DIR) {
        let mut names: Vec<_> = dir.filter_map(Result::ok).map(|e| e.path()).collect();
        names.sort();
        for p in names {
            add(&p, label_of(&p));
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc") {
        let mut pids: Vec<u32> =
            dir.filter_map(Result::ok).filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
        pids.sort_unstable();
        for pid in pids {
            add(&Path::new("/proc").join(pid.to_string()).join("ns/net"), format!("pid:{pid}"));
        }
    }
    out
}

/// `IP` or `IP/LEN` (host bits are cleared, as `ss` does).
pub fn parse_peer(s: &str) -> Result<IpNet, String> {
    if let Some((addr, len)) = s.split_once('/') {
        let ip: IpAddr = addr.parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len: u8 = len.parse().map_err(|_| format!("prefix length {len:?} is not a number"))?;
        if len > max {
            return Err(format!("prefix length /{len} is too long for {} (at most /{max})", family(ip)));
        }
        Ok(IpNet::new(ip, len).expect("length checked").trunc())
    } else {
        let ip: IpAddr = s.parse().map_err(|_| format!("{s:?} is not an IP address or CIDR prefix"))?;
        Ok(IpNet::from(ip))
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// A TCP port, 1..=65535.
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        Ok(p) => Err(format!("port {p} is out of range (1-65535)")),
        Err(_) => Err(format!("{s:?} is not a port number")),
    }
}

pub fn parse_state(s: &str) -> Result<TcpState, String> {
    s.parse::<TcpState>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers() {
        assert_eq!(parse_peer("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
        assert_eq!(parse_peer("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_peer("fd00::1/64").unwrap().to_string(), "fd00::/64");
        assert!(parse_peer("10.0.0.0/33").unwrap_err().contains("/33"));
        assert!(parse_peer("fd00::/129").unwrap_err().contains("/129"));
        assert!(parse_peer("300.1.1.1").unwrap_err().contains("not an IP"));
        assert!(parse_peer("10.0.0.0/x").is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("443"), Ok(443));
        assert!(parse_port("0").is_err());
        assert!(parse_port("70000").unwrap_err().contains("out of range"));
        assert!(parse_port("http").is_err());
    }
}
