//! The kernel sessions that attach the eBPF object to watch: table mode here, trace mode in
//! `session/trace.rs` ([`trace::TraceSession`]); the only code that attaches either mode.
//!
//! [`TableSession::start`] loads, filters and attaches in the order the table relies on (timer
//! programs, then `sock_ops`: see [`TwFeed::start`]) and streams decoded events into a channel;
//! its handle changes the namespace filter at run time, reads the full loss breakdown, and shuts
//! down. Dropping the handle (or [`TableSession::shutdown`]) drops the probe, which detaches
//! every program and link. The per-mode truth table (which programs each mode attaches, in which
//! order, and who reports each transition) is in `session/trace.rs` and
//! docs/internals/capture.md.

pub mod trace;

use std::time::Duration;

use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use crate::{
    kernel::netns,
    live::{DumpFn, Feed, LostFn, port_spaces},
    probe::Loss,
    scope::NetnsScope,
    tw_event::TwEvent,
    twfeed::{FeedError, TwFeed, dump_scope, paths_of, tw_counts},
};

/// How often the loss counters are read (five syscalls each: not per drain).
const STATS_EVERY: Duration = Duration::from_millis(100);
/// Batches in flight between the reader and the table: at most 256 ring-buffer drains.
const BATCHES: usize = 256;

/// The session's kernel-side counters, as last read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub loss: Loss,
    /// Events the kernel sent that userspace could not decode.
    pub decode_errors: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the kernel session has stopped")]
    Stopped,
    #[error(transparent)]
    Feed(#[from] FeedError),
}

enum Control {
    /// Replace the namespace filter (`None`: every namespace).
    SetNetns {
        netns: Option<Vec<u64>>,
        reply: oneshot::Sender<Result<(), FeedError>>,
    },
    Stop,
}

/// A loaded, attached table-mode session and the reader task that owns it.
pub struct TableSession {
    control: mpsc::Sender<Control>,
    stats: watch::Receiver<SessionStats>,
    task: Option<JoinHandle<()>>,
}

impl TableSession {
    /// Load and attach for the namespaces in `netns` (`None`: all, including ones created
    /// later) and start streaming. The programs are attached when this returns, so a dump taken
    /// afterwards misses no socket. The receiver gets batches in kernel order; it closes when the
    /// session stops.
    pub fn start(netns: Option<Vec<u64>>) -> Result<(Self, mpsc::Receiver<Vec<TwEvent>>), FeedError> {
        let feed = TwFeed::start(netns)?;
        let (tx, events) = mpsc::channel(BATCHES);
        let (control, rx) = mpsc::channel(8);
        let (stats_tx, stats) = watch::channel(SessionStats::default());
        let task = tokio::spawn(read(feed, tx, rx, stats_tx));
        Ok((Self { control, stats, task: Some(task) }, events))
    }

    /// The counters as last read (at most [`STATS_EVERY`] old).
    pub fn stats(&self) -> SessionStats {
        *self.stats.borrow()
    }

    /// A reader of the counters that outlives no session: it keeps the last value once stopped.
    pub fn stats_watch(&self) -> watch::Receiver<SessionStats> {
        self.stats.clone()
    }

    /// Replace the kernel-side namespace filter while attached (`None`: every namespace).
    pub async fn set_netns(&self, netns: Option<Vec<u64>>) -> Result<(), SessionError> {
        let (reply, answer) = oneshot::channel();
        self.control.send(Control::SetNetns { netns, reply }).await.map_err(|_| SessionError::Stopped)?;
        Ok(answer.await.map_err(|_| SessionError::Stopped)??)
    }

    /// Stop reading and detach everything; returns once the programs are gone.
    pub async fn shutdown(mut self) {
        let _ = self.control.send(Control::Stop).await;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TableSession {
    /// Without [`TableSession::shutdown`]: cancel the reader, which drops the probe (and with it
    /// the programs) the next time the runtime polls it, or when the runtime itself stops.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The reader task: ring buffer to channel, control requests, counters on their own tick.
async fn read(
    mut feed: TwFeed,
    tx: mpsc::Sender<Vec<TwEvent>>,
    mut control: mpsc::Receiver<Control>,
    stats: watch::Sender<SessionStats>,
) {
    let mut batch = Vec::with_capacity(4096);
    let mut tick = tokio::time::interval(STATS_EVERY);
    loop {
        tokio::select! {
            r = feed.next_batch(&mut batch) => {
                if let Err(e) = r {
                    tracing::error!("kernel feed stopped: {:#}", anyhow::Error::from(e));
                    return;
                }
                if !batch.is_empty() && tx.send(std::mem::take(&mut batch)).await.is_err() {
                    return; // the table's owner is gone
                }
            }
            c = control.recv() => match c {
                Some(Control::SetNetns { netns, reply }) => {
                    let _ = reply.send(feed.set_netns(netns));
                }
                Some(Control::Stop) | None => return,
            },
            _ = tick.tick() => {
                if let Ok(loss) = feed.loss() {
                    stats.send_replace(SessionStats { loss, decode_errors: feed.decode_errors });
                }
                feed.flush_logs();
            }
        }
    }
}

/// The kernel feed: the TIME_WAIT lifecycle programs attached and streaming into a channel
/// (before the first dump, so no socket falls between the seed and the events), a sock_diag dump
/// of every namespace in scope, and the probe's loss counter. The session lives as long as the
/// table reads its loss count: dropping the table detaches.
pub fn kernel_feed(scope: &NetnsScope) -> Result<Feed, FeedError> {
    let (mut feed, session) = kernel_session(scope, std::path::Path::new("/proc"))?;
    feed.lost = Box::new(move || session.stats().loss.lost());
    Ok(feed)
}

/// Like [`kernel_feed`], with the session handed to the caller (the agent), which keeps it for
/// its loss breakdown, its namespace filter and its shutdown. With [`NetnsScope::All`],
/// processes' namespaces are looked for under `proc_root`.
pub fn kernel_session(scope: &NetnsScope, proc_root: &std::path::Path) -> Result<(Feed, TableSession), FeedError> {
    let ranges = port_spaces(scope, proc_root)?;
    let cookies = match scope {
        NetnsScope::All => None,
        NetnsScope::Current => Some(vec![netns::current_cookie().map_err(FeedError::Netns)?]),
        NetnsScope::Paths(list) => {
            Some(list.iter().map(|n| n.cookie()).collect::<Result<Vec<_>, _>>().map_err(FeedError::Netns)?)
        }
    };
    // Overflows are the kernel's counter: read it before the probe attaches, so the table counts
    // every one from then on. A counter of its own: the feed's first reading (the creation
    // baselines, after the seed) must read every namespace too.
    let attached_counts = tw_counts(paths_of(scope), proc_root.to_owned())();
    let (session, events) = TableSession::start(cookies)?;
    let stats = session.stats_watch();
    let tw_counts = tw_counts(paths_of(scope), proc_root.to_owned());
    let paths = paths_of(scope);
    let root = proc_root.to_owned();
    let dump: DumpFn = Box::new(move |sink| dump_scope(paths.as_deref(), &root, sink).map_err(|e| Box::new(e) as _));
    let lost: LostFn = Box::new(move || stats.borrow().loss.lost());
    let clock = crate::live::monotonic_ns;
    Ok((Feed { events, dump, lost, tw_counts, attached_counts, ranges, clock }, session))
}
