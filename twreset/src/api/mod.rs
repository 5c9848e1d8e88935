//! The agent's control API: HTTP/1.1 + JSON on a unix socket, checked per connection by the
//! peer's credentials. It never touches the table: it asks the table's owner ([`Owner`]).

pub mod bind;
pub mod client;
pub mod events;
pub mod kill_req;
pub mod peer;
pub mod query;
pub mod routes;
pub mod scope;
pub mod server;
#[cfg(test)]
mod tests;

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::broadcast;

use crate::{
    kill::report::Totals,
    table::{By, Snapshot, Sort, ViewConfig},
    tw_event::TwEvent,
};

/// Where the agent listens unless told otherwise, and where the CLI looks for it.
pub const DEFAULT_SOCKET: &str = "/run/twreset/agent.sock";
/// Overrides [`DEFAULT_SOCKET`] for the CLI (`--agent-socket` overrides both).
pub const SOCKET_ENV: &str = "TWRESET_AGENT_SOCKET";

/// A `GET /v1/tw`: one snapshot of the live table, restricted to some namespaces.
#[derive(Clone, Debug, PartialEq)]
pub struct TwQuery {
    pub by: By,
    pub sort: Sort,
    pub view: ViewConfig,
    /// Namespace cookies to cover; None: every namespace the agent watches.
    pub netns: Option<Vec<u64>>,
}

/// What `/healthz` and `/readyz` report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    pub seeded: bool,
    pub attached: bool,
}

/// One batch of TIME_WAIT lifecycle events, as the owner applied it.
pub type EventBatch = Arc<[TwEvent]>;

#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("the agent's table owner does not answer")]
pub struct OwnerGone;

/// The owner of the live table, as the API needs it. Each call is a message to the owner's
/// task; none may make the owner wait for a client.
pub trait Owner: Clone + Send + Sync + 'static {
    fn tw(&self, q: TwQuery) -> impl Future<Output = Result<Snapshot, OwnerGone>> + Send;
    /// A receiver of every event batch from now on (a lagging receiver loses batches, counted).
    fn subscribe(&self) -> impl Future<Output = Result<broadcast::Receiver<EventBatch>, OwnerGone>> + Send;
    fn health(&self) -> impl Future<Output = Result<Health, OwnerGone>> + Send;
    /// A kill ran (`trigger` "api"): for the owner's counters. Must not block.
    fn kills_done(&self, trigger: &'static str, totals: &Totals);
    /// `GET /v1/relief` (status), `POST /v1/relief/pause` and `/resume`: the relief's status as
    /// JSON after the action. An owner without a relief answers as gone.
    fn relief(&self, _action: ReliefAction) -> impl Future<Output = Result<serde_json::Value, OwnerGone>> + Send {
        async { Err(OwnerGone) }
    }
}

/// What `GET /v1/relief` and `POST /v1/relief/pause|resume` ask of the relief's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReliefAction {
    Status,
    Pause,
    Resume,
}

/// Bounds that keep one client from costing the others.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; one more is closed at once.
    pub max_connections: usize,
    /// A request's head must arrive within this (also an idle keep-alive connection's life).
    pub header_timeout: Duration,
    /// A request's body must arrive within this.
    pub body_timeout: Duration,
    pub max_body: usize,
    /// How long a request waits for the owner before a 503.
    pub owner_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            max_body: 64 * 1024,
            owner_timeout: Duration::from_secs(10),
        }
    }
}

/// The API's part of the agent's configuration.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub socket: PathBuf,
    /// Group (name or gid) allowed to read and kill; None: root only.
    pub group: Option<String>,
    /// Group allowed GET requests only.
    pub readonly_group: Option<String>,
    pub audit_log: PathBuf,
    pub limits: Limits,
}

impl ApiConfig {
    pub fn new(socket: PathBuf, audit_log: PathBuf) -> Self {
        Self { socket, group: None, readonly_group: None, audit_log, limits: Limits::default() }
    }
}
