//! Targeted kills: one sock_diag dump per namespace (the snapshot), a pure plan over it,
//! preflight, then a kill method over exactly the planned sockets.

pub mod audit;
pub mod auto;
pub mod exec;
pub mod execute;
pub mod killer;
pub mod packet;
pub mod plan;
pub mod preflight;
pub mod replay;
pub mod report;
pub mod rst;
pub mod select;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::{
    diag::{Diag, DiagError, Entry, Outcome},
    kernel::netns::{self, NetnsError},
    kill::{
        killer::{DestroyKiller, KillError, Killer},
        preflight::PreflightError,
        rst::RstKiller,
        select::Selector,
    },
};

/// Kills of at least this many sockets get a progress bar on a terminal.
pub const PROGRESS_MIN: usize = 10_000;

/// How sockets are killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// SOCK_DESTROY where the kernel can, the exact-sequence RST where it cannot (TIME_WAIT
    /// sockets before Linux 6.0, or CONFIG_INET_DIAG_DESTROY off); probed, reported per socket.
    Auto,
    /// netlink SOCK_DESTROY, batched (what `ss -K` does, much faster).
    Destroy,
    /// A RST carrying the sequence number the kernel expects.
    Rst,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Destroy => "destroy",
            Self::Rst => "rst",
        }
    }
}

/// Everything a namespace run needs; shared read-only across namespace threads.
#[derive(Clone, Debug)]
pub struct Options {
    pub selector: Selector,
    pub limit: Option<usize>,
    pub method: Method,
    pub dry_run: bool,
    /// Draw a progress bar (stderr is a terminal).
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error(transparent)]
    Diag(#[from] DiagError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Kill(#[from] KillError),
}

/// What happened in one namespace.
#[derive(Debug, Default)]
pub struct NsRun {
    pub cookie: u64,
    /// The selected sockets, in kill order.
    pub planned: Vec<Entry>,
    /// One outcome per planned socket; None for a dry run or when nothing was attempted.
    pub outcomes: Option<Vec<Outcome>>,
    /// The method that acted on each planned socket (with `outcomes`).
    pub methods: Vec<Method>,
    /// Why nothing (more) could be done here.
    pub error: Option<NsError>,
    /// Dry run: why a real run would fail.
    pub warning: Option<PreflightError>,
}

/// Run the kill in the calling thread's namespace (use `Netns::run` to target another).
pub fn run_here(opts: &Options) -> NsRun {
    let mut run = NsRun::default();
    if let Err(e) = try_run_here(opts, &mut run) {
        run.error = Some(e);
    }
    run
}

fn try_run_here(opts: &Options, run: &mut NsRun) -> Result<(), NsError> {
    run.cookie = netns::current_cookie()?;
    // One netlink socket per namespace, created here, used for dump, probe and destroy.
    let mut diag = Diag::open()?;
    let t0 = std::time::Instant::now();
    let snapshot = diag.dump(&opts.selector.states.dump_states())?;
    let dumped = snapshot.len();
    let t1 = std::time::Instant::now();
    run.planned = plan::plan(snapshot, &opts.selector, opts.limit);
    tracing::debug!(dumped, selected = run.planned.len(), dump = ?(t1 - t0), plan = ?t1.elapsed(), "snapshot");
    if run.planned.is_empty() {
        return Ok(());
    }
    let facts = preflight::gather(opts.method, &mut diag);
    let timewait = run.planned.iter().any(|e| e.sock.timewait);
    match preflight::check(opts.method, &facts, timewait) {
        Err(e) if opts.dry_run => run.warning = Some(e),
        Err(e) => return Err(e.into()),
        Ok(()) => {}
    }
    if opts.dry_run {
        return Ok(());
    }
    let bar = progress_bar(opts, run.planned.len());
    let t2 = std::time::Instant::now();
    let mut tick = |done: usize| bar.set_position(done as u64);
    let result = match opts.method {
        Method::Auto => auto::kill(&mut diag, &facts, &run.planned, &mut tick).map(|r| {
            run.error = r.blocked.map(NsError::from);
            (r.outcomes, r.methods)
        }),
        m @ Method::Destroy => DestroyKiller { diag: &mut diag }.kill(&run.planned, &mut tick).map(|o| (o, vec![m])),
        m @ Method::Rst => RstKiller.kill(&run.planned, &mut tick).map(|o| (o, vec![m])),
    };
    bar.finish_and_clear();
    tracing::debug!(preflight = ?(t2 - t1), kill = ?t2.elapsed(), "kill");
    let (outcomes, mut methods) = result?;
    if methods.len() != outcomes.len() {
        methods = vec![methods[0]; outcomes.len()];
    }
    run.outcomes = Some(outcomes);
    run.methods = methods;
    Ok(())
}

fn progress_bar(opts: &Options, len: usize) -> ProgressBar {
    if !opts.progress || len < PROGRESS_MIN {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("killing {bar:40} {pos}/{len} sockets ({per_sec})") {
        bar.set_style(style);
    }
    bar
}
