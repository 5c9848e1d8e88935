//! Where a kill's results go, line by line: the `kill --json` objects or the human table. The
//! CLI going through the agent replays the agent's lines into [`HumanSink`] (see `replay`), so it
//! prints what a direct run (`kill::execute`) prints.

use std::io::{self, Write};

use serde_json::Value;

use crate::{
    diag::{Entry, Outcome},
    kill::report::{self, Totals},
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
    fn problem(&mut self, kind: ProblemKind, netns: &str, cookie: u64, message: &str) -> io::Result<()>;
    /// A selected socket: `outcome` None in a dry run.
    fn socket(&mut self, netns: &str, e: &Entry, outcome: Option<Outcome>) -> io::Result<()>;
    fn summary(&mut self, totals: &Totals, dry_run: bool) -> io::Result<()>;
}

/// `kill --json`: one object per line; `stderr` also prints problems as the human output does.
pub struct JsonSink<W: Write> {
    pub out: W,
    pub stderr: bool,
}

impl<W: Write> JsonSink<W> {
    fn line(&mut self, v: &Value) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, v)?;
        self.out.write_all(b"\n")
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn problem(&mut self, kind: ProblemKind, netns: &str, cookie: u64, message: &str) -> io::Result<()> {
        if self.stderr {
            eprintln!("{}", kind.stderr_line(netns, message));
        }
        self.line(&report::problem_json(kind.name(), netns, cookie, message))
    }

    fn socket(&mut self, netns: &str, e: &Entry, outcome: Option<Outcome>) -> io::Result<()> {
        self.line(&report::socket_json(netns, e, outcome, None))
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
}

impl<W: Write> HumanSink<W> {
    pub fn new(out: W) -> Self {
        Self { out, header: false }
    }
}

impl<W: Write> Sink for HumanSink<W> {
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
