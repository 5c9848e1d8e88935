//! `twreset agent`: one long-running process per host. One kernel session in table mode covers
//! every network namespace (new ones are picked up, deleted ones dropped); the owner thread keeps
//! the live table; the metrics listener and the control API ask it for snapshots through
//! [`command::Commands`]. SIGHUP reloads the configuration; the `shutdown` future stops it all,
//! leaving no program or link behind.

pub mod api_owner;
pub mod command;
pub mod config;
pub mod heap;
pub mod http;
pub mod metrics;
pub mod netns_watch;
pub mod notify;
pub mod owner;
pub mod relief;
pub mod relief_exec;

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use crate::{
    kernel::netns::NetnsError, live::LiveError, scope::NetnsScope, session::kernel_session, twfeed::FeedError,
};
use command::Commands;
use config::{Config, Source};
use netns_watch::{Change, Scanner};
use owner::{Inputs, Settings};

/// How long the owner may take to answer the watchdog's ping before the ping is skipped (and
/// systemd, after `WatchdogSec`, restarts a stuck agent).
const WATCHDOG_ANSWER: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Notify(#[from] notify::NotifyError),
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error("starting the kernel session")]
    Feed(#[source] FeedError),
    #[error("reading the agent's own namespace")]
    Netns(#[source] NetnsError),
    #[error("keeping the TIME_WAIT table")]
    Owner(#[source] LiveError),
    #[error("starting the table's thread")]
    Thread(#[source] std::io::Error),
    #[error("installing the SIGHUP handler")]
    Signal(#[source] std::io::Error),
    #[error("the table's thread stopped unexpectedly")]
    OwnerGone,
    #[error(transparent)]
    Api(#[from] crate::api::server::ServerError),
}

/// The control API's part of the configuration.
fn api_config(c: &Config) -> crate::api::ApiConfig {
    let group = |g: &str| Some(g.to_owned()).filter(|g| !g.trim().is_empty());
    crate::api::ApiConfig {
        group: group(&c.socket_group),
        readonly_group: group(&c.socket_readonly_group),
        ..crate::api::ApiConfig::new(c.socket.clone(), c.audit_log.clone())
    }
}

fn settings(c: &Config) -> Settings {
    Settings { top_n: c.top_n, reconcile: c.reconcile, audit_log: c.audit_log.clone(), relief: c.relief_policy.clone() }
}

/// Scan for namespaces every `every` (changeable by a reload), on a blocking thread.
async fn watch_netns(mut scanner: Scanner, mut every: watch::Receiver<Duration>, tx: mpsc::Sender<Vec<Change>>) {
    loop {
        let Ok((back, changes)) = tokio::task::spawn_blocking(move || {
            let c = scanner.scan();
            (scanner, c)
        })
        .await
        else {
            return;
        };
        scanner = back;
        if !changes.is_empty() && tx.send(changes).await.is_err() {
            return;
        }
        let wait = *every.borrow_and_update();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = every.changed() => if r.is_err() { return },
        }
    }
}

/// Run the agent on `config` (re-read from `source` on SIGHUP) until `shutdown` resolves.
pub async fn run(config: Config, source: Source, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let notifier = notify::Notifier::from_env()?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let mut hup = signal(SignalKind::hangup()).map_err(AgentError::Signal)?;
    // Listen first: a port in use fails before anything is loaded.
    let listener = http::bind(config.metrics_listen).await?;
    let (commands, command_rx) = Commands::channel();
    let ready = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(http::Shared { commands: commands.clone(), ready: ready.clone() });
    let mut http_task: JoinHandle<()> = tokio::spawn(http::serve(listener, shared.clone()));
    tracing::info!("metrics on http://{}/metrics", config.metrics_listen);
    // The control socket too: another agent answering on it, or an unknown group, fails here.
    let api = crate::api::server::Server::bind(&api_config(&config), commands.clone())?;
    tracing::info!("control API on {}", api.path().display());
    let api_handle = api.handle();
    let (api_stop, api_stopped) = oneshot::channel::<()>();
    let api_task = tokio::spawn(api.run(async {
        let _ = api_stopped.await;
    }));

    let (feed, session) = kernel_session(&NetnsScope::All, &config.proc_root).map_err(AgentError::Feed)?;
    let scanner =
        Scanner::with_pods(config.proc_root.clone(), config.pods_log_dir.clone()).map_err(AgentError::Netns)?;
    let (scan_every_tx, scan_every) = watch::channel(config.netns_scan);
    let (netns_tx, netns_rx) = mpsc::channel(64);
    let watch_task = tokio::spawn(watch_netns(scanner, scan_every, netns_tx));
    let (settings_tx, settings_rx) = watch::channel(settings(&config));
    let inputs = Inputs {
        commands: command_rx,
        netns: netns_rx,
        settings: settings_rx,
        stats: session.stats_watch(),
        ready: ready.clone(),
        kernel,
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (done_tx, mut done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("twreset-table".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let result = match rt {
                Ok(rt) => rt.block_on(owner::run(feed, inputs, async {
                    let _ = stop_rx.await;
                })),
                Err(e) => {
                    tracing::error!("cannot start the table's runtime: {e}");
                    Ok(())
                }
            };
            let _ = done_tx.send(result);
        })
        .map_err(AgentError::Thread)?;

    let mut config = config;
    let watchdog_every = notify::watchdog_from_env();
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    let seeded = commands.status();
    tokio::pin!(seeded, shutdown);
    let mut announced = false;
    let outcome = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            r = &mut done_rx => break match r {
                Ok(Err(e)) => Err(AgentError::Owner(e)),
                _ => Err(AgentError::OwnerGone),
            },
            r = &mut seeded, if !announced => {
                announced = true;
                if r.is_ok() {
                    tracing::info!("agent ready: table seeded, programs attached");
                    notifier.notify("READY=1");
                }
            }
            _ = watchdog.tick(), if watchdog_every.is_some() && announced => {
                // Only a loop that answers is alive (pings start after READY=1).
                if let Ok(Ok(_)) = tokio::time::timeout(WATCHDOG_ANSWER, commands.status()).await {
                    notifier.notify("WATCHDOG=1");
                }
            }
            _ = hup.recv() => match source.load() {
                Err(e) => tracing::error!("configuration reload refused, keeping the old one: {e}"),
                Ok(new) => {
                    let api_reload = match api_handle.check(&api_config(&new)) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!("configuration reload refused, keeping the old one: {:#}", anyhow::Error::from(e));
                            continue;
                        }
                    };
                    if new.metrics_listen != config.metrics_listen {
                        match http::bind(new.metrics_listen).await {
                            Ok(l) => {
                                http_task.abort();
                                http_task = tokio::spawn(http::serve(l, shared.clone()));
                            }
                            Err(e) => {
                                tracing::error!("configuration reload refused, keeping the old one: {:#}", anyhow::Error::from(e));
                                continue;
                            }
                        }
                    }
                    if let Err(e) = api_handle.apply(api_reload) {
                        tracing::error!("control API socket access not updated: {:#}", anyhow::Error::from(e));
                    }
                    let _ = settings_tx.send(settings(&new));
                    let _ = scan_every_tx.send(new.netns_scan);
                    config = new;
                    tracing::info!("configuration reloaded from {}", source.path.display());
                }
            },
        }
    };
    notifier.notify("STOPPING=1");
    http_task.abort();
    watch_task.abort();
    // Stopped, not aborted: the socket file is removed on its way out.
    let _ = api_stop.send(());
    let _ = api_task.await;
    let _ = stop_tx.send(());
    let _ = done_rx.await;
    session.shutdown().await;
    tracing::info!("agent stopped; programs detached");
    outcome
}
