//! One kill run for any caller (CLI, agent API, relief policy): namespaces resolved, each
//! snapshotted, planned, preflighted and killed (`run_here`), every batch audited ([`kill_in`]),
//! results written as `twreset kill` prints them.

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
    output::NsNames,
    scope::{self, NetnsScope, Target},
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

/// One namespace's kill as it is recorded: planned, preflighted and killed in `t`'s namespace
/// ([`kill::run_here`]), then, when anything was attempted, one audit line in `audit`.
pub struct NsKill {
    pub run: NsRun,
    /// The namespace as labelled in the output and the audit line.
    pub label: String,
    /// This namespace's totals.
    pub totals: Totals,
}

/// Extra fields of an audit line, from the namespace's totals (a policy kill's rule,
/// destination and pressure after).
pub type AuditFields<'a> = &'a dyn Fn(&Totals) -> serde_json::Map<String, serde_json::Value>;

/// The one path of every kill, per namespace: [`execute`] takes it for the CLI and the API, the
/// relief's executor for the policy. `names` labels the namespace by who it belongs to (else
/// `t.label`); `audit` is `None` for a dry run only.
pub fn kill_in(
    t: &Target,
    opts: &Options,
    names: Option<&NsNames>,
    audit: Option<&mut AuditLog>,
    fields: Option<AuditFields<'_>>,
) -> Result<NsKill, AuditError> {
    let run = match &t.netns {
        None => kill::run_here(opts),
        Some(ns) => {
            ns.run(|| kill::run_here(opts)).unwrap_or_else(|e| NsRun { error: Some(e.into()), ..Default::default() })
        }
    };
    let identity = names.and_then(|n| n.identity(run.cookie)).filter(|_| run.cookie != 0);
    let label = identity.map_or_else(|| t.label.clone(), |i| i.label());
    let mut totals = Totals { selected: run.planned.len(), ..Totals::default() };
    if let Some(o) = &run.outcomes {
        totals.add(o);
    }
    if let (Some(log), Some(_)) = (audit, &run.outcomes) {
        if let Some(f) = fields {
            log.set_fields(f(&totals));
        }
        log.write(&Record {
            time_ms: now_ms(),
            netns: label.clone(),
            netns_cookie: run.cookie,
            method: kill::auto::describe(&run.methods),
            selector: opts.selector.describe(),
            selected: run.planned.len(),
            killed: totals.killed,
            gone: totals.gone,
            failed: totals.failed,
        })?;
    }
    Ok(NsKill { run, label, totals })
}

/// Run the kill for `actor` (recorded in the audit log), writing what `twreset kill` prints
/// (NDJSON with `json`) to `out`. Every caller (the CLI, the agent's API) goes through here, so
/// every kill is audited the same way.
pub fn execute(req: Request<'_>, actor: Actor, out: &mut dyn Write) -> Result<Totals, ExecuteError> {
    let cfg = req;
    // Opened before anything dies: a kill that cannot be recorded does not happen.
    let mut audit = if cfg.opts.dry_run { None } else { Some(AuditLog::open_as(cfg.audit_log, actor)?) };
    let targets = scope::resolve(cfg.scope);
    // Who each namespace belongs to, for labels, JSON and the audit log.
    let names = NsNames::resolve();
    let mut totals = Totals::default();
    let mut header = false;
    for t in &targets {
        let NsKill { run, label, totals: ns } = kill_in(t, cfg.opts, Some(&names), audit.as_mut(), None)?;
        let identity = names.identity(run.cookie).filter(|_| run.cookie != 0);
        let with_identity = |mut v: serde_json::Value| {
            if let (Some(i), Some(o)) = (identity, v.as_object_mut()) {
                i.insert_into(o);
            }
            v
        };
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
        totals.merge(&ns);
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
