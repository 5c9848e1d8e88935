//! `twreset agent`: clap arguments and the configuration they select (see [`crate::agent`]).

use std::{net::SocketAddr, path::PathBuf};

use clap::Args;

use crate::{
    agent::config::{Config, DEFAULT_PATH, Overrides, Source},
    cmd::UsageError,
};

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Configuration file (TOML). Default: /etc/twreset/agent.toml, or the defaults when it is missing.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address of GET /metrics, /healthz and /readyz (overrides the file's metrics_listen).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Control API socket (overrides the file's socket).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// Where the configuration comes from, and its first reading (a bad one is a usage error).
pub fn load(a: AgentArgs) -> Result<(Config, Source), UsageError> {
    let source = Source {
        explicit: a.config.is_some(),
        path: a.config.unwrap_or_else(|| DEFAULT_PATH.into()),
        overrides: Overrides { metrics_listen: a.metrics_listen, socket: a.socket },
    };
    let config = source.load().map_err(|e| UsageError(format!("{:#}", anyhow::Error::from(e))))?;
    Ok((config, source))
}
