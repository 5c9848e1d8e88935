//! Command-line surface: clap parses into args; each command's `TryFrom` validates into a config.

use clap::{Parser, Subcommand};

use crate::cmd;

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
    /// Run the node agent: live tables for every namespace, Prometheus metrics, a control API.
    Agent(cmd::agent::AgentArgs),
}
