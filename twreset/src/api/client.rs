//! The CLI's side of the agent's socket: find it, send one HTTP/1.1 request (hyper's
//! `client::conn::http1`), hand back the status and the body, line by line for streams.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use clap::Args;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::api::{DEFAULT_SOCKET, SOCKET_ENV};

/// `--agent-socket PATH` / `--direct`, shared by the commands that can go through the agent.
#[derive(Args, Debug, Clone, Default)]
pub struct AgentArgs {
    /// The agent's control socket (default: $TWRESET_AGENT_SOCKET, else /run/twreset/agent.sock,
    /// used when it exists).
    #[arg(long, value_name = "PATH", conflicts_with = "direct")]
    pub agent_socket: Option<PathBuf>,
    /// Load programs and read the kernel here, even when an agent runs.
    #[arg(long)]
    pub direct: bool,
}

/// How long the agent gets to start answering (a kill's lines stream after that).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens there (or no file): the caller may run directly.
    #[error("nothing answers on the agent socket {} ({source})", path.display())]
    Unavailable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the agent socket {} refused this user: root or a member of the agent's socket_group is needed (--direct runs without the agent)",
        path.display()
    )]
    Refused { path: PathBuf },
    #[error("the agent at {} did not answer within {}s", path.display(), ANSWER_TIMEOUT.as_secs())]
    Timeout { path: PathBuf },
    #[error("talking to the agent at {}", path.display())]
    Http {
        path: PathBuf,
        #[source]
        source: hyper::Error,
    },
    /// The agent's error answer; a 400 is a usage error.
    #[error("{message}")]
    Status { status: StatusCode, message: String },
    #[error("the agent's answer is not what this twreset expects: {0}")]
    Answer(String),
    #[error("writing the output")]
    Output(#[from] io::Error),
}

impl ClientError {
    /// Nobody is there: fall back to a direct run (with one warning line).
    pub fn unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout { .. })
    }
}

/// An agent socket to talk to.
#[derive(Clone, Debug)]
pub struct Agent {
    pub path: PathBuf,
}

impl Agent {
    /// The socket to use: none with `--direct`; `--agent-socket` as given; else the environment's
    /// or the default path when a file is there.
    pub fn locate(args: &AgentArgs) -> Option<Self> {
        if args.direct {
            return None;
        }
        if let Some(p) = &args.agent_socket {
            return Some(Self { path: p.clone() });
        }
        let path = std::env::var_os(SOCKET_ENV).map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from);
        path.symlink_metadata().is_ok().then_some(Self { path })
    }

    fn connect_error(&self, source: io::Error) -> ClientError {
        let path = self.path.clone();
        match source.kind() {
            io::ErrorKind::PermissionDenied => ClientError::Refused { path },
            _ => ClientError::Unavailable { path, source },
        }
    }

    /// Send one request; a non-2xx answer becomes [`ClientError::Status`] with its message.
    pub async fn request(&self, method: Method, uri: &str, body: Option<Vec<u8>>) -> Result<Incoming, ClientError> {
        let path = &self.path;
        let http = |source| ClientError::Http { path: path.clone(), source };
        let exchange = async {
            let stream = UnixStream::connect(path).await.map_err(|e| self.connect_error(e))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(http)?;
            tokio::spawn(conn);
            let mut req = Request::builder().method(method).uri(uri).header(header::HOST, "twreset-agent");
            if body.is_some() {
                req = req.header(header::CONTENT_TYPE, "application/json");
            }
            let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).expect("valid request");
            sender.send_request(req).await.map_err(|e| {
                // Closed before any answer: the agent refuses this peer without reading a byte.
                if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
                    ClientError::Refused { path: path.clone() }
                } else {
                    http(e)
                }
            })
        };
        let resp = tokio::time::timeout(ANSWER_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout { path: path.clone() })??;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp.into_body());
        }
        let raw = resp.into_body().collect().await.map_err(http)?.to_bytes();
        let message = serde_json::from_slice::<serde_json::Value>(&raw)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("the agent answered {status}"));
        Err(ClientError::Status { status, message })
    }

    /// GET a whole body.
    pub async fn get(&self, uri: &str) -> Result<Bytes, ClientError> {
        let body = self.request(Method::GET, uri, None).await?;
        body.collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|source| ClientError::Http { path: self.path.clone(), source })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Call `f` with each complete line of `body` (without its newline), as the chunks arrive.
pub async fn for_each_line<E: From<ClientError>>(
    path: &Path,
    mut body: Incoming,
    mut f: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|source| ClientError::Http { path: path.to_owned(), source })?;
        let Ok(data) = frame.into_data() else { continue };
        pending.extend_from_slice(&data);
        let mut start = 0;
        while let Some(n) = pending[start..].iter().position(|b| *b == b'\n') {
            f(&pending[start..start + n])?;
            start += n + 1;
        }
        pending.drain(..start);
    }
    if !pending.is_empty() {
        f(&pending)?;
    }
    Ok(())
}
