//! `twreset kill`: select sockets by peer, prefix, port, local address, state and age, then kill
//! exactly those (or list them with --dry-run), with preflight, audit log and per-socket results.

use std::{
    io::{self, IsTerminal},
    path::PathBuf,
    time::Duration,
};

use clap::Args;

use crate::{
    cmd::{NetnsArgs, UsageError},
    kill::{
        Method, Options,
        audit::{self, Actor},
        execute::{ExecuteError, Request, execute},
        select::{self, Endpoint, Selector, StateWord, States},
    },
    scope::{NetnsScope, parse_port},
};

#[derive(Args, Debug)]
pub struct KillArgs {
    /// Remote peers to kill connections to: IP, CIDR, IP:PORT or [IPv6]:PORT (any of them).
    #[arg(value_name = "PEER", value_parser = |s: &str| select::parse_endpoint(s, false))]
    pub peers: Vec<Endpoint>,
    /// Remote port; repeatable (any of them).
    #[arg(long = "port", value_name = "N", value_parser = parse_port)]
    pub ports: Vec<u16>,
    /// Local address, prefix and/or port: IP, CIDR, IP:PORT, [IPv6]:PORT or :PORT; repeatable.
    #[arg(long = "local", value_name = "IP[:PORT]", value_parser = |s: &str| select::parse_endpoint(s, true))]
    pub locals: Vec<Endpoint>,
    /// State to kill: time-wait (default; includes FIN_WAIT2-substate TIME_WAIT sockets),
    /// established, another TCP state, or any (every state except listen); repeatable.
    #[arg(long = "state", value_name = "STATE", value_parser = select::parse_state_word)]
    pub states: Vec<StateWord>,
    /// Only TIME_WAIT sockets at least this old (60 s minus the remaining timer), e.g. 30s, 1m.
    #[arg(long, value_name = "DURATION", value_parser = select::parse_duration)]
    pub older_than: Option<Duration>,
    /// Kill at most N sockets per namespace, oldest first.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Every socket in the selected state (the no-restart equivalent of restarting networking).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub netns: NetnsArgs,
    /// How to kill.
    #[arg(long, value_enum, default_value = "destroy")]
    pub method: Method,
    /// List exactly what would be killed; kill nothing.
    #[arg(long, visible_alias = "list")]
    pub dry_run: bool,
    /// NDJSON: one object per socket, then a summary object.
    #[arg(long)]
    pub json: bool,
    /// Audit log file (one JSON line per kill batch; also sent to syslog).
    #[arg(long, value_name = "PATH", default_value = audit::DEFAULT_PATH)]
    pub audit_log: PathBuf,
}

/// Validated kill.
#[derive(Debug)]
pub struct KillConfig {
    pub opts: Options,
    pub scope: NetnsScope,
    pub json: bool,
    pub audit_log: PathBuf,
}

impl TryFrom<KillArgs> for KillConfig {
    type Error = UsageError;
    fn try_from(a: KillArgs) -> Result<Self, UsageError> {
        let states = States::from_words(&a.states);
        let selector = Selector::new(a.peers, a.ports, a.locals, states, a.older_than, a.all)
            .map_err(|e| UsageError(e.to_string()))?;
        Ok(Self {
            opts: Options {
                selector,
                limit: a.limit,
                method: a.method,
                dry_run: a.dry_run,
                progress: io::stderr().is_terminal(),
            },
            scope: NetnsScope::try_from(&a.netns)?,
            json: a.json,
            audit_log: a.audit_log,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KillCmdError {
    #[error(transparent)]
    Execute(#[from] ExecuteError),
}

/// Run the kill; Ok(true) when every selected socket is dead or already gone.
pub fn run(cfg: KillConfig) -> Result<bool, KillCmdError> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let req = Request { opts: &cfg.opts, scope: cfg.scope, json: cfg.json, audit_log: &cfg.audit_log };
    Ok(execute(req, Actor::current(), &mut out)?.ok())
}
