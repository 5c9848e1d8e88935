//! One module per subcommand: its clap args, validated config and runner.
pub mod agent;
pub mod doctor;
pub mod kill;
pub mod top;
pub mod trace;
pub mod tw;

use std::path::PathBuf;

use clap::Args;

use crate::{kernel::identity, scope::NetnsScope};

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
        crate::scope::select(&a.netns, a.all_netns, &a.pods, &a.containers).map_err(UsageError)
    }
}

impl From<&NetnsArgs> for crate::api::query::Scope {
    /// The command line's namespaces as the agent must see them (paths made absolute).
    fn from(a: &NetnsArgs) -> Self {
        use crate::api::query::Scope;
        if a.all_netns {
            return Scope::All;
        }
        if !a.pods.is_empty() || !a.containers.is_empty() {
            let pods = a.pods.iter().map(|(ns, name)| format!("{ns}/{name}")).collect();
            return Scope::Selected { pods, containers: a.containers.clone() };
        }
        if a.netns.is_empty() {
            return Scope::Caller;
        }
        let cwd = std::env::current_dir().unwrap_or_default();
        Scope::Paths(a.netns.iter().map(|p| cwd.join(p).display().to_string()).collect())
    }
}
