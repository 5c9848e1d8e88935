//! `twreset kill`: select sockets by peer, prefix, port, local address, state and age, then kill
//! exactly those (or list them with --dry-run), with preflight, audit log and per-socket results.

use std::{
    io::{self, IsTerminal, Write},
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::Args;

use crate::{
    cmd::{NetnsArgs, UsageError},
    kill::{
        self, Method, NsRun, Options,
        audit::{self, AuditError, AuditLog, Record},
        report::{self, Totals},
        select::{self, Endpoint, Selector, StateWord, States},
    },
    scope::{self as targets, Target},
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
    Audit(#[from] AuditError),
    #[error("writing results")]
    Output(#[from] io::Error),
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn run_target(t: &Target, opts: &Options) -> NsRun {
    match &t.netns {
        None => kill::run_here(opts),
        Some(ns) => {
            ns.run(|| kill::run_here(opts)).unwrap_or_else(|e| NsRun { error: Some(e.into()), ..Default::default() })
        }
    }
}

/// Run the kill; Ok(true) when every selected socket is dead or already gone.
pub fn run(cfg: KillConfig) -> Result<bool, KillCmdError> {
    // Opened before anything dies: a kill that cannot be recorded does not happen.
    let mut audit = if cfg.opts.dry_run { None } else { Some(AuditLog::open(&cfg.audit_log)?) };
    let targets = targets::resolve(cfg.scope);
    // Who each namespace belongs to, for labels, JSON and the audit log.
    let names = crate::output::NsNames::resolve();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut totals = Totals::default();
    let mut header = false;
    for t in &targets {
        let run = run_target(t, &cfg.opts);
        let identity = names.identity(run.cookie).filter(|_| run.cookie != 0);
        let label = identity.map_or_else(|| t.label.clone(), |i| i.label());
        let with_identity = |mut v: serde_json::Value| {
            if let (Some(i), Some(o)) = (identity, v.as_object_mut()) {
                i.insert_into(o);
            }
            v
        };
        totals.selected += run.planned.len();
        if let Some(w) = &run.warning {
            eprintln!("twreset: warning: netns {}: a real kill would fail: {w}", label);
            if cfg.json {
                let msg = w.to_string();
                writeln!(out, "{}", with_identity(report::problem_json("warning", &label, run.cookie, &msg)))?;
            }
        }
        if let Some(e) = &run.error {
            totals.ns_errors += 1;
            eprintln!("twreset: netns {}: {}", label, chain(e));
            if cfg.json {
                let msg = chain(e);
                writeln!(out, "{}", with_identity(report::problem_json("error", &label, run.cookie, &msg)))?;
            }
        }
        if let Some(o) = &run.outcomes {
            totals.add(o);
        }
        if let (Some(log), Some(o)) = (audit.as_mut(), &run.outcomes) {
            let mut t2 = Totals::default();
            t2.add(o);
            log.write(&Record {
                time_ms: now_ms(),
                netns: label.clone(),
                netns_cookie: run.cookie,
                method: kill::auto::describe(&run.methods),
                selector: cfg.opts.selector.describe(),
                selected: run.planned.len(),
                killed: t2.killed,
                gone: t2.gone,
                failed: t2.failed,
            })?;
        }
        if cfg.json {
            for (i, e) in run.planned.iter().enumerate() {
                let outcome = run.outcomes.as_ref().map(|o| o[i]);
                if cfg.opts.dry_run || outcome.is_some() {
                    let method = run.methods.get(i).copied();
                    writeln!(out, "{}", with_identity(report::socket_json(&label, e, outcome, method)))?;
                }
            }
        } else if cfg.opts.dry_run {
            for e in &run.planned {
                if !header {
                    writeln!(out, "{}", report::table_header())?;
                    header = true;
                }
                writeln!(out, "{}", report::table_line(&label, e))?;
            }
        }
    }
    if cfg.json {
        writeln!(out, "{}", report::summary_json(&totals, cfg.opts.dry_run))?;
    } else {
        writeln!(out, "{}", report::summary_line(&totals, cfg.opts.dry_run))?;
    }
    out.flush()?;
    Ok(totals.ok())
}

/// An error with its sources, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
