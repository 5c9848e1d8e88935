//! The accept loop: a cap on connections, the peer check before a byte is read, and one
//! HTTP/1.1 connection task per client (head timeout, size limits), none able to hold up another.

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{UnixListener, UnixStream},
    sync::{Mutex, Semaphore},
};

use crate::api::{
    ApiConfig, Limits, Owner,
    bind::{self, BindError, SocketFile},
    peer::{Access, Peer, PeerError, Policy},
    routes,
};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("the API socket's groups")]
    Group(#[from] PeerError),
    #[error("the API socket")]
    Bind(#[from] BindError),
    #[error("listening on the API socket {}", path.display())]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a configuration reload may change without a new socket.
#[derive(Clone, Debug)]
pub struct Reloadable {
    pub policy: Policy,
    pub audit_log: PathBuf,
}

/// Applies reloads to a running server.
#[derive(Clone, Debug)]
pub struct ApiHandle {
    now: Arc<RwLock<Reloadable>>,
    socket: PathBuf,
}

/// A reload checked and ready to apply (its groups exist).
#[derive(Debug)]
pub struct Reload {
    now: Reloadable,
    socket: PathBuf,
}

impl ApiHandle {
    /// Check a new configuration without applying it (an unknown group refuses the reload).
    pub fn check(&self, cfg: &ApiConfig) -> Result<Reload, ServerError> {
        let policy = Policy::new(cfg.group.as_deref(), cfg.readonly_group.as_deref())?;
        Ok(Reload { now: Reloadable { policy, audit_log: cfg.audit_log.clone() }, socket: cfg.socket.clone() })
    }

    /// Take the new groups (the socket file's group and ACL too) and audit log; a new socket
    /// path needs a restart.
    pub fn apply(&self, r: Reload) -> Result<(), ServerError> {
        if r.socket != self.socket {
            tracing::warn!(
                "the API socket stays {} until a restart (configured: {})",
                self.socket.display(),
                r.socket.display()
            );
        }
        bind::set_access(&self.socket, r.now.policy.group, r.now.policy.readonly_group)?;
        *self.now.write().expect("API settings") = r.now;
        Ok(())
    }
}

/// What every connection task shares.
pub struct Shared<O> {
    pub owner: O,
    pub limits: Limits,
    pub now: Arc<RwLock<Reloadable>>,
    /// One kill at a time: a thousand POSTs queue here, not in a thousand threads.
    pub kill_lock: Arc<Mutex<()>>,
}

/// One accepted, admitted connection.
pub struct Conn<O> {
    pub shared: Arc<Shared<O>>,
    pub peer: Peer,
    pub access: Access,
}

pub struct Server<O> {
    listener: UnixListener,
    file: SocketFile,
    shared: Arc<Shared<O>>,
}

/// Let the process hold `want` descriptors if the hard limit allows (the soft limit is often
/// 1024, fewer than the connections the API serves at once).
fn raise_nofile(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let target = want.min(hard);
        if soft < target {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, target, hard);
        }
    }
}

impl<O: Owner> Server<O> {
    /// Resolve the groups and bind the socket (inside a tokio runtime). Errors here are the
    /// agent's start-up errors.
    pub fn bind(cfg: &ApiConfig, owner: O) -> Result<Self, ServerError> {
        let policy = Policy::new(cfg.group.as_deref(), cfg.readonly_group.as_deref())?;
        raise_nofile(cfg.limits.max_connections as u64 + 1024);
        let (std_listener, file) = bind::bind(&cfg.socket, policy.group, policy.readonly_group)?;
        let listen_err = |source| ServerError::Listen { path: cfg.socket.clone(), source };
        std_listener.set_nonblocking(true).map_err(listen_err)?;
        let listener = UnixListener::from_std(std_listener).map_err(listen_err)?;
        let now = Arc::new(RwLock::new(Reloadable { policy, audit_log: cfg.audit_log.clone() }));
        let shared = Arc::new(Shared { owner, limits: cfg.limits, now, kill_lock: Arc::new(Mutex::new(())) });
        Ok(Self { listener, file, shared })
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    pub fn handle(&self) -> ApiHandle {
        ApiHandle { now: self.shared.now.clone(), socket: self.file.path.clone() }
    }

    /// Serve until `shutdown`; the socket file is removed on return.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let slots = Arc::new(Semaphore::new(self.shared.limits.max_connections));
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                _ = &mut shutdown => break,
                r = self.listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Out of descriptors or memory: back off instead of spinning.
                        tracing::warn!("API socket accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!("API connection refused: {} connections open", self.shared.limits.max_connections);
                continue;
            };
            let policy = self.shared.now.read().expect("API settings").policy;
            let shared = self.shared.clone();
            // The check reads /proc (or the user database): in the connection's task, so a slow
            // lookup never holds up the accept loop. Still before a byte of the request is read.
            tokio::spawn(async move {
                let Some((peer, access)) = admit(&stream, policy).await else { return };
                serve(stream, Arc::new(Conn { shared, peer, access })).await;
                drop(slot);
            });
        }
        drop(self.file);
    }
}

/// The peer's credentials and what they allow; None closes the connection unread. Group
/// lookups (`/proc`, maybe NSS) run on the blocking pool: the API shares one thread.
async fn admit(stream: &UnixStream, policy: Policy) -> Option<(Peer, Access)> {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("API connection without peer credentials: {e}");
            return None;
        }
    };
    let peer = Peer { uid: cred.uid(), gid: cred.gid(), pid: cred.pid().and_then(|p| u32::try_from(p).ok()) };
    let access = match peer.uid {
        0 => Some(Access::ReadWrite),
        _ => tokio::task::spawn_blocking(move || policy.check(&peer)).await.ok().flatten(),
    };
    if access.is_none() {
        tracing::info!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "API connection refused: not root or a member of the API groups");
    }
    access.map(|a| (peer, a))
}

async fn serve<O: Owner>(stream: UnixStream, conn: Arc<Conn<O>>) {
    let limits = conn.shared.limits;
    let svc = service_fn(move |req| routes::handle(req, conn.clone()));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).max_buf_size(16 * 1024).max_headers(64);
    if let Err(e) = http.serve_connection(TokioIo::new(stream), svc).await {
        tracing::debug!("API connection: {e}");
    }
}
