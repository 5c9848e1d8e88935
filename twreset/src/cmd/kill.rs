//! `twreset kill`: select sockets by peer, prefix, port, local address, state and age, then kill
//! exactly those (or list them with --dry-run), with preflight, audit log and per-socket results.

use std::{
    io::{self, IsTerminal, Write},
    path::PathBuf,
    time::Duration,
};

use clap::Args;

use http::{Method as HttpMethod, StatusCode};

use crate::{
    api::{
        client::{Agent, AgentArgs, ClientError, for_each_line},
        kill_req::KillRequest,
    },
    cmd::{NetnsArgs, UsageError},
    duration,
    kill::{
        Method, Options,
        audit::{self, Actor},
        exec::{self, HumanSink, ProblemKind},
        execute::{ExecuteError, Request, execute},
        replay::{ReplayError, replay},
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
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub older_than: Option<Duration>,
    /// Kill at most N sockets per namespace, oldest first.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Every socket in the selected state (the no-restart equivalent of restarting networking).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub netns: NetnsArgs,
    /// How to kill: auto uses SOCK_DESTROY where the kernel can and the exact-sequence RST where
    /// it cannot (TIME_WAIT before Linux 6.0); the method used is reported per socket.
    #[arg(long, value_enum, default_value = "auto")]
    pub method: Method,
    /// List exactly what would be killed; kill nothing.
    #[arg(long, visible_alias = "list")]
    pub dry_run: bool,
    /// NDJSON: one object per socket, then a summary object.
    #[arg(long)]
    pub json: bool,
    /// Audit log file (one JSON line per kill batch; also sent to syslog). Through the agent, the
    /// agent's own audit_log records the kill, with this caller's uid and pid.
    #[arg(long, value_name = "PATH", default_value = audit::DEFAULT_PATH)]
    pub audit_log: PathBuf,
    #[command(flatten)]
    pub agent: AgentArgs,
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
    #[error(transparent)]
    Agent(#[from] ClientError),
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error("{0}")]
    Usage(#[from] UsageError),
    #[error("the agent's kill stopped: {0}")]
    Fatal(String),
    #[error("the agent's answer ended before its summary")]
    Truncated,
    #[error("writing results")]
    Output(#[from] io::Error),
}

/// Run the kill here; Ok(true) when every selected socket is dead or already gone.
pub fn run(cfg: KillConfig) -> Result<bool, KillCmdError> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let req = Request { opts: &cfg.opts, scope: cfg.scope, json: cfg.json, audit_log: &cfg.audit_log };
    Ok(execute(req, Actor::current(), &mut out)?.ok())
}

impl From<&KillArgs> for KillRequest {
    /// The request the agent reads back as these arguments (selectors as typed, paths absolute).
    fn from(a: &KillArgs) -> Self {
        Self {
            peers: a.peers.iter().map(ToString::to_string).collect(),
            port: a.ports.iter().map(|p| serde_json::Value::from(*p)).collect(),
            local: a.locals.iter().map(ToString::to_string).collect(),
            state: a
                .states
                .iter()
                .map(|w| match w {
                    StateWord::State(s) => s.name().to_owned(),
                    StateWord::Any => "any".to_owned(),
                })
                .collect(),
            older_than: a.older_than.map(|d| serde_json::Value::from(format!("{}ms", d.as_millis()))),
            limit: a.limit,
            all: a.all,
            netns: match crate::api::query::Scope::from(&a.netns) {
                crate::api::query::Scope::Paths(p) => p,
                _ => Vec::new(),
            },
            all_netns: a.netns.all_netns,
            pods: a.netns.pods.iter().map(|(ns, name)| format!("{ns}/{name}")).collect(),
            containers: a.netns.containers.clone(),
            dry_run: a.dry_run,
            method: Some(a.method.name().to_owned()),
        }
    }
}

/// The same kill through the agent (`POST /v1/kill`), printed by the same sinks.
pub async fn via_agent(agent: &Agent, args: &KillArgs) -> Result<bool, KillCmdError> {
    let body = serde_json::to_vec(&KillRequest::from(args)).expect("serializable");
    let resp = match agent.request(HttpMethod::POST, "/v1/kill", Some(body)).await {
        Err(ClientError::Status { status: StatusCode::BAD_REQUEST, message }) => return Err(UsageError(message).into()),
        r => r?,
    };
    // Human output goes through the sink; JSON lines are copied to its writer as they came.
    let mut human = HumanSink::new(io::BufWriter::new(io::stdout().lock()));
    let mut totals = None;
    for_each_line(agent.path(), resp, |line| -> Result<(), KillCmdError> {
        let v: serde_json::Value = serde_json::from_slice(line)
            .map_err(|e| ClientError::Answer(format!("{e}: {}", String::from_utf8_lossy(line))))?;
        if v["type"] == "fatal" {
            return Err(KillCmdError::Fatal(v["message"].as_str().unwrap_or_default().to_owned()));
        }
        if !args.json {
            totals = replay(&v, &mut human)?.or(totals.take());
            return Ok(());
        }
        // JSON: the agent's lines as they are (the same writer made them), problems on stderr too.
        if let (Some(kind @ ("warning" | "error")), Some(ns), Some(msg)) =
            (v["type"].as_str(), v["netns"].as_str(), v["message"].as_str())
        {
            let kind = if kind == "warning" { ProblemKind::Warning } else { ProblemKind::Error };
            eprintln!("{}", kind.stderr_line(ns, msg));
        }
        if v["type"] == "summary" {
            totals = replay(&v, &mut exec::NullSink)?;
        }
        human.out.write_all(line)?;
        human.out.write_all(b"\n")?;
        Ok(())
    })
    .await?;
    human.out.flush()?;
    totals.map(|t| t.ok()).ok_or(KillCmdError::Truncated)
}
