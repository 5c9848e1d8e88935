//! One kill run over its namespaces, shared by `twreset kill` and the agent's `POST /v1/kill`:
//! audit first, then each namespace in turn, results handed to a [`Sink`] (JSON lines or the
//! human table), so both callers print the very same thing.

use std::io::{self, Write};

use serde_json::Value;

use crate::{
    diag::{Entry, Outcome},
    kill::{
        NsRun, Options,
        audit::{AuditError, AuditLog, Record},
        report::{self, Totals},
        run_here,
        targets::Target,
    },
    output::NsNames,
};

/// A namespace-level problem: an error (nothing was attempted there) or a dry run's warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    Warning,
    Error,
}

impl ProblemKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }

    /// The stderr line `twreset kill` prints for it.
    pub fn stderr_line(self, netns: &str, message: &str) -> String {
        match self {
            Self::Warning => format!("twreset: warning: netns {netns}: a real kill would fail: {message}"),
            Self::Error => format!("twreset: netns {netns}: {message}"),
        }
    }
}

/// Where a run's results go, in order: problems and sockets per namespace, then one summary.
pub trait Sink {
    /// The label a namespace is shown and audited under: its owner's (pod, container) where the
    /// sink knows it, else `label` (the `ip netns` name or path).
    fn label(&self, _cookie: u64, label: &str) -> String {
        label.to_owned()
    }
    fn problem(&mut self, kind: ProblemKind, netns: &str, cookie: u64, message: &str) -> io::Result<()>;
    /// A selected socket: `outcome` None in a dry run.
    fn socket(&mut self, netns: &str, e: &Entry, outcome: Option<Outcome>) -> io::Result<()>;
    fn summary(&mut self, totals: &Totals, dry_run: bool) -> io::Result<()>;
}

/// `kill --json`: one object per line; `stderr` also prints problems as the human output does.
/// Lines of a namespace whose owner `names` knows carry its identity fields (pod, container).
pub struct JsonSink<W: Write> {
    pub out: W,
    pub stderr: bool,
    pub names: NsNames,
}

impl<W: Write> JsonSink<W> {
    /// Without identities (`names` empty).
    pub fn new(out: W, stderr: bool) -> Self {
        Self { out, stderr, names: NsNames::default() }
    }

    fn with_identity(&self, cookie: u64, mut v: Value) -> Value {
        if let (Some(i), Some(o)) = (self.names.identity(cookie).filter(|_| cookie != 0), v.as_object_mut()) {
            i.insert_into(o);
        }
        v
    }

    fn line(&mut self, v: &Value) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, v)?;
        self.out.write_all(b"\n")
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn label(&self, cookie: u64, label: &str) -> String {
        identity_label(&self.names, cookie, label)
    }

    fn problem(&mut self, kind: ProblemKind, netns: &str, cookie: u64, message: &str) -> io::Result<()> {
        if self.stderr {
            eprintln!("{}", kind.stderr_line(netns, message));
        }
        let v = self.with_identity(cookie, report::problem_json(kind.name(), netns, cookie, message));
        self.line(&v)
    }

    fn socket(&mut self, netns: &str, e: &Entry, outcome: Option<Outcome>) -> io::Result<()> {
        let v = self.with_identity(e.sock.key.netns_cookie, report::socket_json(netns, e, outcome));
        self.line(&v)
    }

    fn summary(&mut self, totals: &Totals, dry_run: bool) -> io::Result<()> {
        self.line(&report::summary_json(totals, dry_run))?;
        self.out.flush()
    }
}

/// The human output: problems on stderr, the dry run's table and the summary on `out`.
pub struct HumanSink<W: Write> {
    pub out: W,
    header: bool,
    names: NsNames,
}

impl<W: Write> HumanSink<W> {
    pub fn new(out: W) -> Self {
        Self { out, header: false, names: NsNames::default() }
    }

    /// Namespaces labelled by their owners (pods, containers) where `names` knows them.
    pub fn with_names(mut self, names: NsNames) -> Self {
        self.names = names;
        self
    }
}

/// The owner's label of namespace `cookie` where `names` knows it, else `label`.
fn identity_label(names: &NsNames, cookie: u64, label: &str) -> String {
    names.identity(cookie).filter(|_| cookie != 0).map_or_else(|| label.to_owned(), |i| i.label())
}

impl<W: Write> Sink for HumanSink<W> {
    fn label(&self, cookie: u64, label: &str) -> String {
        identity_label(&self.names, cookie, label)
    }

    fn problem(&mut self, kind: ProblemKind, netns: &str, _cookie: u64, message: &str) -> io::Result<()> {
        eprintln!("{}", kind.stderr_line(netns, message));
        Ok(())
    }

    fn socket(&mut self, netns: &str, e: &Entry, outcome: Option<Outcome>) -> io::Result<()> {
        if outcome.is_some() {
            return Ok(());
        }
        if !self.header {
            writeln!(self.out, "{}", report::table_header())?;
            self.header = true;
        }
        writeln!(self.out, "{}", report::table_line(netns, e))
    }

    fn summary(&mut self, totals: &Totals, dry_run: bool) -> io::Result<()> {
        writeln!(self.out, "{}", report::summary_line(totals, dry_run))?;
        self.out.flush()
    }
}

/// Prints nothing (reading a summary back).
pub struct NullSink;

impl Sink for NullSink {
    fn problem(&mut self, _: ProblemKind, _: &str, _: u64, _: &str) -> io::Result<()> {
        Ok(())
    }
    fn socket(&mut self, _: &str, _: &Entry, _: Option<Outcome>) -> io::Result<()> {
        Ok(())
    }
    fn summary(&mut self, _: &Totals, _: bool) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("writing results")]
    Output(#[from] io::Error),
}

fn run_target(t: &Target, opts: &Options) -> NsRun {
    match &t.netns {
        None => run_here(opts),
        Some(ns) => ns.run(|| run_here(opts)).unwrap_or_else(|e| NsRun { error: Some(e.into()), ..Default::default() }),
    }
}

/// Kill (or list) over `targets`, recording every real batch in `audit` (required unless a dry
/// run: open it before calling, so a kill that cannot be recorded does not happen).
pub fn execute(
    targets: &[Target],
    opts: &Options,
    mut audit: Option<&mut AuditLog>,
    now_ms: impl Fn() -> u64,
    sink: &mut dyn Sink,
) -> Result<Totals, ExecError> {
    let mut totals = Totals::default();
    for t in targets {
        let run = run_target(t, opts);
        let label = sink.label(run.cookie, &t.label);
        totals.selected += run.planned.len();
        if let Some(w) = &run.warning {
            sink.problem(ProblemKind::Warning, &label, run.cookie, &w.to_string())?;
        }
        if let Some(e) = &run.error {
            totals.ns_errors += 1;
            sink.problem(ProblemKind::Error, &label, run.cookie, &chain(e))?;
        }
        if let Some(o) = &run.outcomes {
            totals.add(o);
        }
        if let (Some(log), Some(o)) = (audit.as_deref_mut(), &run.outcomes) {
            let mut batch = Totals::default();
            batch.add(o);
            log.write(&Record {
                time_ms: now_ms(),
                netns: label.clone(),
                netns_cookie: run.cookie,
                method: opts.method.name(),
                selector: opts.selector.describe(),
                selected: run.planned.len(),
                killed: batch.killed,
                gone: batch.gone,
                failed: batch.failed,
            })?;
        }
        for (i, e) in run.planned.iter().enumerate() {
            let outcome = run.outcomes.as_ref().map(|o| o[i]);
            if opts.dry_run || outcome.is_some() {
                sink.socket(&label, e, outcome)?;
            }
        }
    }
    sink.summary(&totals, opts.dry_run)?;
    Ok(totals)
}

/// An error with its sources, `a: b: c`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
