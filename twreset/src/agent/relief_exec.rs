//! The relief's executor: one thread of its own (never the table's owner) that runs the policy's
//! kill intents one at a time through the kill path of every caller ([`execute::kill_in`] in the
//! destination's namespace: dump, plan oldest first, preflight, kill, audit line with trigger
//! `policy`), and reports what was really killed back to the owner.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc as std_mpsc,
    },
};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{
    kernel::netns::{self, Netns, NetnsError},
    kill::{
        Method, Options,
        audit::{Actor, AuditError, AuditLog},
        exec, execute,
        report::Totals,
    },
    policy::KillIntent,
    scope::{self, Target},
};

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("namespace {label}: {message}")]
    Kill { label: String, message: String },
    #[error("namespace {label} (cookie {cookie}) is gone")]
    NoNetns { label: String, cookie: u64 },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// One intent to execute, with what its audit line needs.
#[derive(Clone, Debug)]
pub struct Job {
    pub intent: KillIntent,
    /// Sockets holding a port to the destination when decided, and its range: pressure after.
    pub holding: u64,
    pub range: u32,
    pub audit_log: PathBuf,
    /// When the policy decided it: the audit line's `latency_ms` is the time from there.
    pub decided: std::time::Instant,
}

/// What the executor did with a [`Job`].
#[derive(Debug)]
pub struct Done {
    pub intent: KillIntent,
    /// `None`: nothing was attempted (paused, or an error, logged).
    pub totals: Option<Totals>,
}

/// Start the executor thread. Jobs queued while `paused` is set are dropped (reported with no
/// kills), so a pause takes effect before the next kill even for intents already decided. With
/// `warm` (an enforcing relief) on a kernel whose TIME_WAIT sockets only an RST kills, the RST's
/// iterator is loaded first, so the first kill does not wait for it.
pub fn spawn(
    paused: Arc<AtomicBool>,
    done: mpsc::UnboundedSender<Done>,
    warm: bool,
) -> std::io::Result<std_mpsc::Sender<Job>> {
    let (tx, rx) = std_mpsc::channel::<Job>();
    std::thread::Builder::new().name("twreset-relief".into()).spawn(move || {
        if warm
            && crate::kill::rst::needed_for_time_wait()
            && let Err(e) = crate::kill::rst::preload()
        {
            tracing::warn!("relief: the RST iterator could not be loaded ahead of the first kill: {}", exec::chain(&e));
        }
        let mut paths = HashMap::new();
        for job in rx {
            let totals = if paused.load(Ordering::SeqCst) {
                tracing::info!(rule = %job.intent.rule, "relief paused: queued kill of {} dropped", job.intent.count);
                None
            } else {
                match run(&job, &mut paths) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        tracing::warn!(rule = %job.intent.rule, "relief kill failed: {}", exec::chain(&e));
                        None
                    }
                }
            };
            if done.send(Done { intent: job.intent, totals }).is_err() {
                return;
            }
        }
    })?;
    Ok(tx)
}

/// The namespace of `cookie`: the agent's own (run here), or one found by scanning (its path
/// cached, re-checked on each use: a path may name another namespace later).
fn target(cookie: u64, label: &str, paths: &mut HashMap<u64, PathBuf>) -> Result<Target, ExecutorError> {
    if netns::current_cookie()? == cookie {
        return Ok(Target { label: label.to_owned(), netns: None });
    }
    let reopen = |p: &Path| Netns::open(p).ok().filter(|n| n.cookie().ok() == Some(cookie));
    if let Some(ns) = paths.get(&cookie).and_then(|p| reopen(p)) {
        return Ok(Target { label: label.to_owned(), netns: Some(ns) });
    }
    let found = scope::all().into_iter().filter_map(|t| t.netns).find(|n| n.cookie().ok() == Some(cookie));
    match found {
        Some(ns) => {
            paths.insert(cookie, ns.path.clone());
            Ok(Target { label: label.to_owned(), netns: Some(ns) })
        }
        None => {
            paths.remove(&cookie);
            Err(ExecutorError::NoNetns { label: label.to_owned(), cookie })
        }
    }
}

/// The fields a policy kill adds to its audit line.
pub fn audit_fields(job: &Job, killed: u64) -> serde_json::Map<String, Value> {
    let i = &job.intent;
    let after = job.holding.saturating_sub(killed) as f64 / f64::from(job.range.max(1));
    let v = json!({
        "rule": i.rule,
        "destination": format!("{} -> {}", i.dest.laddr, std::net::SocketAddr::new(i.dest.raddr, i.dest.rport)),
        "laddr": i.dest.laddr.to_string(),
        "raddr": i.dest.raddr.to_string(),
        "rport": i.dest.rport,
        "pressure_before": i.pressure_before,
        "pressure_after": after,
        "wanted": i.count,
        "min_age_ms": i.min_age_ns / 1_000_000,
        "latency_ms": job.decided.elapsed().as_millis() as u64,
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!("a JSON object"),
    }
}

/// Kill the intent's oldest TIME_WAIT sockets through the one kill path
/// ([`execute::kill_in`]: plan, preflight, kill, audit), its audit line carrying the policy's
/// fields. The log is opened first: a kill that cannot be recorded does not happen.
fn run(job: &Job, paths: &mut HashMap<u64, PathBuf>) -> Result<Totals, ExecutorError> {
    let i = &job.intent;
    let actor = Actor { argv: vec!["twreset-agent-relief".into()], trigger: "policy", ..Actor::current() };
    let mut audit = AuditLog::open_as(&job.audit_log, actor)?;
    let target = target(i.dest.netns, &i.netns, paths)?;
    let opts = Options {
        selector: i.selector(),
        limit: Some(usize::try_from(i.count).unwrap_or(usize::MAX)),
        method: Method::Auto,
        dry_run: false,
        progress: false,
    };
    let fields = |t: &Totals| audit_fields(job, t.killed as u64);
    let done = execute::kill_in(&target, &opts, None, Some(&mut audit), Some(&fields))?;
    if let Some(e) = &done.run.error {
        return Err(ExecutorError::Kill { label: done.label, message: exec::chain(e) });
    }
    Ok(done.totals)
}
