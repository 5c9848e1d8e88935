//! One kill run from start to end for any caller: namespaces resolved, each snapshotted,
//! planned, preflighted and killed (`run_here`), every batch audited, results written as
//! `twreset kill` prints them.

use std::{
    io::{self, Write},
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    kill::{
        self, NsRun, Options,
        audit::{Actor, AuditError, AuditLog, Record},
        exec::chain,
        report::{self, Totals},
    },
    scope::{self as targets, NetnsScope, Target},
};

/// What to kill and how to report it.
#[derive(Debug)]
pub struct Request<'a> {
    pub opts: &'a Options,
    pub scope: NetnsScope,
    /// NDJSON (one object per socket, then a summary) rather than the table.
    pub json: bool,
    pub audit_log: &'a Path,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
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

/// Run the kill for `actor` (recorded in the audit log), writing what `twreset kill` prints
/// (NDJSON with `json`) to `out`. Every caller (the CLI, the agent's API) goes through here, so
/// every kill is audited the same way.
pub fn execute(req: Request<'_>, actor: Actor, out: &mut dyn Write) -> Result<Totals, ExecuteError> {
    let cfg = req;
    // Opened before anything dies: a kill that cannot be recorded does not happen.
    let mut audit = if cfg.opts.dry_run { None } else { Some(AuditLog::open_as(cfg.audit_log, actor)?) };
    let targets = targets::resolve(cfg.scope);
    // Who each namespace belongs to, for labels, JSON and the audit log.
    let names = crate::output::NsNames::resolve();
    let mut totals = Totals::default();
    let mut header = false;
    for t in &targets {
        let run = run_target(t, cfg.opts);
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
    Ok(totals)
}
