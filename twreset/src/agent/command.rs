//! Requests to the agent's owner task, the only holder of the live table (mini-redis style: the
//! HTTP side never locks the table; it sends a [`Command`] and awaits the reply on a oneshot).
//!
//! Every command is answered from one consistent moment of the table: the owner applies the
//! events already queued, then answers. Replies are owned values (snapshots), so a slow client
//! holds nothing of the owner's.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{
    kill::Options,
    scope::NetnsScope,
    table::{By, Snapshot, Sort},
    tw_event::TwEvent,
};

/// How many commands may wait for the owner before senders wait too (backpressure, not loss).
pub const QUEUE: usize = 1024;

/// Who asked (from `SO_PEERCRED` on the API socket); recorded in the audit log with each kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// A validated kill: the same selection, limit and method as `twreset kill`, over `scope`.
#[derive(Debug)]
pub struct KillRequest {
    pub opts: Options,
    pub scope: NetnsScope,
}

/// What a kill did: the lines `twreset kill --json` prints (one per socket, problems, then the
/// summary), and whether every selected socket is dead or already gone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KillReply {
    pub lines: Vec<serde_json::Value>,
    pub ok: bool,
}

/// The owner's state, for `/healthz` and `/readyz`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Seeded from the first dump, and the kernel programs attached.
    pub ready: bool,
    /// Sockets in the table.
    pub sockets: u64,
}

/// A batch of TIME_WAIT lifecycle events as the table applied them (kernel order).
pub type EventBatch = Arc<[TwEvent]>;

/// One request to the owner.
#[derive(Debug)]
pub enum Command {
    /// The table grouped `by`, sorted by `sort` (render with `output::tw::render_json` for
    /// the same document as `tw --json`).
    Tw { by: By, sort: Sort, reply: oneshot::Sender<Snapshot> },
    /// The table as `GET /v1/tw` asks for it: its own prefix lengths, some namespaces only.
    TwIn { query: crate::api::TwQuery, reply: oneshot::Sender<Snapshot> },
    /// A kill the API ran itself (it does not wait for the owner): for `twreset_kills_total`.
    Killed { trigger: &'static str, totals: crate::kill::report::Totals },
    /// Kill through the same selection, preflight and audit as `twreset kill`; the audit line
    /// names `caller`. Runs off the owner's event loop (events keep flowing meanwhile).
    Kill { req: Box<KillRequest>, caller: Caller, reply: oneshot::Sender<Result<KillReply, CommandError>> },
    /// Every TIME_WAIT event applied from now on, batch by batch. A receiver that falls behind
    /// gets `RecvError::Lagged` (the owner never waits for it).
    Subscribe { reply: oneshot::Sender<broadcast::Receiver<EventBatch>> },
    /// Readiness and size.
    Status { reply: oneshot::Sender<Status> },
    /// The relief's status (`GET /v1/relief`), after pausing or resuming it if asked.
    Relief { action: crate::api::ReliefAction, reply: oneshot::Sender<crate::policy::ReliefStatus> },
    /// The figures `GET /metrics` is built from (see `agent::metrics`).
    Metrics { reply: oneshot::Sender<Arc<super::metrics::Figures>> },
}

/// Why a command got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("the agent is shutting down")]
    Closed,
    #[error("kill failed: {message}")]
    Kill { message: String },
}

/// The sending side, cloned into every server task.
#[derive(Clone, Debug)]
pub struct Commands(pub mpsc::Sender<Command>);

impl Commands {
    /// A channel of [`QUEUE`] commands: the sender for servers, the receiver for the owner.
    pub fn channel() -> (Self, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self(tx), rx)
    }

    /// Send the command `make` builds around a fresh reply channel and wait for the answer.
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, CommandError> {
        let (reply, answer) = oneshot::channel();
        self.0.send(make(reply)).await.map_err(|_| CommandError::Closed)?;
        answer.await.map_err(|_| CommandError::Closed)
    }

    pub async fn tw(&self, by: By, sort: Sort) -> Result<Snapshot, CommandError> {
        self.ask(|reply| Command::Tw { by, sort, reply }).await
    }

    pub async fn kill(&self, req: KillRequest, caller: Caller) -> Result<KillReply, CommandError> {
        self.ask(|reply| Command::Kill { req: Box::new(req), caller, reply }).await?
    }

    pub async fn subscribe(&self) -> Result<broadcast::Receiver<EventBatch>, CommandError> {
        self.ask(|reply| Command::Subscribe { reply }).await
    }

    /// `GET /v1/relief`, `POST /v1/relief/pause`, `POST /v1/relief/resume`.
    pub async fn relief(&self, action: crate::api::ReliefAction) -> Result<crate::policy::ReliefStatus, CommandError> {
        self.ask(|reply| Command::Relief { action, reply }).await
    }

    pub async fn status(&self) -> Result<Status, CommandError> {
        self.ask(|reply| Command::Status { reply }).await
    }
}
