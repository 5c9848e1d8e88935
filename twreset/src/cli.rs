//! Command-line surface: clap parses into args; each command's `TryFrom` validates into a config.

use std::{net::IpAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use crate::{
    cmd,
    kernel::{identity, netns::Netns},
    state::TcpState,
};

#[derive(Parser, Debug)]
#[command(name = "twreset", version, about = "Live TIME_WAIT tables and targeted TCP socket kills, with eBPF")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Stream TCP state transitions live (Ctrl-C to stop).
    Trace(cmd::trace::TraceArgs),
    /// Print the live TIME_WAIT table once, per peer, prefix, port, local address or destination.
    Tw(cmd::tw::TwArgs),
    /// Live full-screen view of the TIME_WAIT table (g grouping, s sort, +/- interval, q quit).
    Top(cmd::top::TopArgs),
    /// Kill selected TCP sockets (TIME_WAIT by default) by peer, prefix, port or connection.
    Kill(cmd::kill::KillArgs),
    /// Explain what this host's sysctls, counters and kernel mean for TIME_WAIT (exit 1 on a critical finding).
    Doctor(cmd::doctor::DoctorArgs),
}

/// A usage error found after clap's parsing (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `--netns PATH... | --all-netns | --pod NS/NAME... --container NAME|ID...`, shared by every
/// command that looks at sockets.
#[derive(Args, Debug, Clone, Default)]
pub struct NetnsArgs {
    /// Network namespace to watch (e.g. /run/netns/NAME, /proc/PID/ns/net); repeatable. Default: the current one.
    #[arg(long = "netns", value_name = "PATH", conflicts_with_all = ["all_netns", "pods", "containers"])]
    pub netns: Vec<PathBuf>,
    /// Every network namespace on the host.
    #[arg(long, conflicts_with_all = ["pods", "containers"])]
    pub all_netns: bool,
    /// The network namespace of a Kubernetes pod, NAMESPACE/NAME (cgroups and /var/log/pods; see
    /// docs/guide/namespaces.md); repeatable.
    #[arg(long = "pod", value_name = "NS/NAME", value_parser = identity::parse::pod_selector)]
    pub pods: Vec<(String, String)>,
    /// The network namespace of a container, by name or ID (a prefix of at least 12 hex digits);
    /// repeatable.
    #[arg(long = "container", value_name = "NAME|ID")]
    pub containers: Vec<String>,
}

/// Which namespaces a command covers.
#[derive(Debug)]
pub enum NetnsScope {
    Current,
    Paths(Vec<Netns>),
    All,
}

impl TryFrom<&NetnsArgs> for NetnsScope {
    type Error = UsageError;
    fn try_from(a: &NetnsArgs) -> Result<Self, Self::Error> {
        if a.all_netns {
            return Ok(Self::All);
        }
        if !a.pods.is_empty() || !a.containers.is_empty() {
            let resolver = identity::Resolver::from_env().map_err(|e| UsageError(format!("{e:#}")))?;
            return resolver
                .open_selected(&a.pods, &a.containers)
                .map(Self::Paths)
                .map_err(|e| UsageError(e.to_string()));
        }
        if a.netns.is_empty() {
            return Ok(Self::Current);
        }
        a.netns
            .iter()
            .map(|p| Netns::open(p).map_err(|e| UsageError(format!("{e:#}"))))
            .collect::<Result<Vec<_>, _>>()
            .map(Self::Paths)
    }
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
