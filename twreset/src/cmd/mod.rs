//! One module per subcommand: its clap args, validated config and runner.
pub mod agent;
pub mod doctor;
pub mod kill;
pub mod top;
pub mod trace;
pub mod tw;

use std::path::PathBuf;

use clap::Args;

use crate::{kernel::netns::Netns, scope::NetnsScope};

/// A usage error found after clap's parsing (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `--netns PATH... | --all-netns`, shared by every command that looks at sockets.
#[derive(Args, Debug, Clone, Default)]
pub struct NetnsArgs {
    /// Network namespace to watch (e.g. /run/netns/NAME, /proc/PID/ns/net); repeatable. Default: the current one.
    #[arg(long = "netns", value_name = "PATH", conflicts_with = "all_netns")]
    pub netns: Vec<PathBuf>,
    /// Every network namespace on the host.
    #[arg(long)]
    pub all_netns: bool,
}

impl TryFrom<&NetnsArgs> for NetnsScope {
    type Error = UsageError;
    fn try_from(a: &NetnsArgs) -> Result<Self, Self::Error> {
        if a.all_netns {
            return Ok(Self::All);
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
