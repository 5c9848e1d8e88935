//! One module per subcommand: its clap args, validated config and runner.
pub mod doctor;
pub mod kill;
pub mod top;
pub mod trace;
pub mod tw;

use std::path::PathBuf;

use clap::Args;

use crate::{
    kernel::{identity, netns::Netns},
    scope::NetnsScope,
};

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
