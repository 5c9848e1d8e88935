//! `twreset top`: a live full-screen view of the TIME_WAIT table, fed like `tw` (events + dumps).

use std::{
    future::Future,
    io::{self, IsTerminal},
    time::Duration,
};

use clap::Args;
use ratatui::crossterm::event::Event;
use tokio::time::{Instant, MissedTickBehavior, interval_at};

use crate::top::{
    state::{Action, TopState},
    term, ui,
};
use crate::{
    api::{
        client::{Agent, AgentArgs, ClientError},
        query::{Scope, TwParams},
    },
    cmd::{NetnsArgs, UsageError},
    live::{Feed, Live, LiveError},
    output::NsNames,
    output::parse::parse_json,
    scope::NetnsScope,
    table::{By, Snapshot, Sort, ViewConfig},
};

/// How long a reconcile lets in-flight events land after its dump.
const SETTLE: Duration = Duration::from_millis(50);

#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub netns: NetnsArgs,
    /// Grouping to start with (`g` cycles peer, prefix, port, dest).
    #[arg(long, value_enum, default_value_t = By::Peer)]
    pub by: By,
    /// Refresh interval (`+`/`-` change it live).
    #[arg(long, short = 'd', value_name = "DURATION", default_value = "1s", value_parser = crate::duration::parse)]
    pub interval: Duration,
    /// How often to compare the table with a sock_diag dump (drift should stay 0).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::duration::parse)]
    pub reconcile: Duration,
    /// Prefix length of IPv4 rows when grouping by prefix.
    #[arg(long = "prefix-v4", value_name = "LEN", default_value_t = 24, value_parser = clap::value_parser!(u8).range(0..=32))]
    pub prefix_v4: u8,
    /// Prefix length of IPv6 rows when grouping by prefix.
    #[arg(long = "prefix-v6", value_name = "LEN", default_value_t = 64, value_parser = clap::value_parser!(u8).range(0..=128))]
    pub prefix_v6: u8,
    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Debug)]
pub struct TopConfig {
    pub scope: NetnsScope,
    /// The same namespaces as the agent sees them.
    pub agent_scope: Scope,
    pub by: By,
    pub interval: Duration,
    pub reconcile: Duration,
    pub view: ViewConfig,
}

impl TryFrom<TopArgs> for TopConfig {
    type Error = UsageError;
    fn try_from(a: TopArgs) -> Result<Self, UsageError> {
        if a.interval.is_zero() || a.reconcile.is_zero() {
            return Err(UsageError("--interval and --reconcile must be longer than 0".into()));
        }
        Ok(Self {
            agent_scope: Scope::from(&a.netns),
            scope: NetnsScope::try_from(&a.netns)?,
            by: a.by,
            interval: a.interval,
            reconcile: a.reconcile,
            view: ViewConfig { prefix_v4: a.prefix_v4, prefix_v6: a.prefix_v6, ..ViewConfig::default() },
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error("top needs a terminal on stdout (for a one-shot table use `twreset tw`)")]
    NotATerminal,
    #[error("keeping the TIME_WAIT table")]
    Live(#[source] LiveError),
    #[error("terminal")]
    Terminal(#[source] io::Error),
    #[error("asking the agent")]
    Agent(#[source] ClientError),
}

/// `top` draws on stdout: fail before loading anything when it is not a terminal.
pub fn ensure_terminal() -> Result<(), TopError> {
    if io::stdout().is_terminal() { Ok(()) } else { Err(TopError::NotATerminal) }
}

/// Where the table comes from: kept here (events + dumps), or the agent's (`GET /v1/tw`).
pub enum Source {
    Live(Box<Live>),
    Agent { agent: Agent, params: TwParams, len: u64 },
}

/// Seed a table here, before the screen is taken, so a failure prints like any other error.
pub async fn direct(cfg: &TopConfig, feed: Feed) -> Result<Source, TopError> {
    Live::start(feed, cfg.view, SETTLE).await.map(|l| Source::Live(Box::new(l))).map_err(TopError::Live)
}

/// Use the agent's table, and its namespace names; fails (so the caller can run directly) when
/// it does not answer.
pub async fn via_agent(cfg: &TopConfig, agent: &Agent) -> Result<(Source, NsNames), ClientError> {
    let params = TwParams {
        by: cfg.by,
        prefix_v4: cfg.view.prefix_v4,
        prefix_v6: cfg.view.prefix_v6,
        scope: cfg.agent_scope.clone(),
        ..TwParams::default()
    };
    let mut source = Source::Agent { agent: agent.clone(), params, len: 0 };
    source.snapshot(By::Peer, Sort::Count).await.map_err(|e| match e {
        TopError::Agent(e) => e,
        e => ClientError::Answer(e.to_string()),
    })?;
    let raw = agent.get("/v1/netns").await?;
    let names: std::collections::HashMap<String, String> =
        serde_json::from_slice(&raw).map_err(|e| ClientError::Answer(e.to_string()))?;
    let labels = names.into_iter().filter_map(|(c, n)| Some((c.parse().ok()?, n))).collect();
    let names = NsNames(labels, std::collections::HashMap::new());
    Ok((source, names))
}

impl Source {
    async fn snapshot(&mut self, by: By, sort: Sort) -> Result<Snapshot, TopError> {
        match self {
            Self::Live(live) => Ok(live.snapshot(by, sort)),
            Self::Agent { agent, params, len } => {
                let q = TwParams { by, sort, ..params.clone() }.to_query();
                let body = agent.get(&format!("/v1/tw?{q}")).await.map_err(TopError::Agent)?;
                let doc =
                    serde_json::from_slice(&body).map_err(|e| TopError::Agent(ClientError::Answer(e.to_string())))?;
                let snap = parse_json(&doc).map_err(|e| TopError::Agent(ClientError::Answer(e.to_string())))?;
                *len = snap.totals.count;
                Ok(snap)
            }
        }
    }

    async fn snapshots(&mut self, state: &TopState) -> Result<(Snapshot, Snapshot), TopError> {
        Ok((self.snapshot(state.by, state.sort).await?, self.snapshot(By::Dest, Sort::Pressure).await?))
    }

    /// The agent's relief in one line; `None` when there is no agent or no rule.
    async fn relief(&self) -> Option<String> {
        let Self::Agent { agent, .. } = self else { return None };
        let body = agent.get("/v1/relief").await.ok()?;
        ui::relief_line(&serde_json::from_slice(&body).ok()?)
    }

    fn len(&self) -> u64 {
        match self {
            Self::Live(live) => live.table.len() as u64,
            Self::Agent { len, .. } => *len,
        }
    }

    async fn tick(&mut self) -> Result<bool, TopError> {
        match self {
            Self::Live(live) => {
                live.tick().await.map_err(TopError::Live)?;
                Ok(live.closed())
            }
            Self::Agent { .. } => Ok(false),
        }
    }

    async fn reconcile(&mut self) -> Result<(), TopError> {
        match self {
            Self::Live(live) => live.reconcile(false).await.map(drop).map_err(TopError::Live),
            // The agent reconciles its own table.
            Self::Agent { .. } => Ok(()),
        }
    }

    async fn next_events(&mut self) {
        match self {
            Self::Live(live) => {
                live.next_events().await;
            }
            Self::Agent { .. } => std::future::pending().await,
        }
    }
}

/// Run the screen until `q`/Esc/Ctrl-C or `shutdown`. The terminal is restored on every way out.
pub async fn run(
    cfg: &TopConfig,
    mut source: Source,
    names: &NsNames,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TopError> {
    ensure_terminal()?;
    let mut state = TopState::new(cfg.by, cfg.interval);
    let (mut rows, mut dests) = source.snapshots(&state).await?;
    let mut relief = source.relief().await;
    state.sample(source.len());
    let mut term = term::Term::enter().map_err(TopError::Terminal)?;
    let mut keys = term::Keys::spawn();
    let mut refresh = interval_at(Instant::now() + state.interval, state.interval);
    refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut reconcile = interval_at(Instant::now() + cfg.reconcile, cfg.reconcile);
    reconcile.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut dirty = true;
    tokio::pin!(shutdown);
    loop {
        if dirty {
            let relief_text = relief.as_deref();
            let screen = ui::Screen { state: &state, rows: &rows, dests: &dests, names, relief: relief_text };
            term.terminal.draw(|f| ui::draw(f, &screen)).map_err(TopError::Terminal)?;
            dirty = false;
        }
        tokio::select! {
            _ = &mut shutdown => break,
            ev = keys.events.recv() => match ev {
                None => break,
                Some(Err(e)) => return Err(TopError::Terminal(e)),
                Some(Ok(Event::Key(k))) => match state.on_key(k) {
                    Action::Quit => break,
                    Action::None => {}
                    action => {
                        if action == Action::Interval {
                            refresh = interval_at(Instant::now() + state.interval, state.interval);
                            refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
                        }
                        (rows, dests) = source.snapshots(&state).await?;
                        dirty = true;
                    }
                },
                Some(Ok(Event::Resize(..))) => dirty = true,
                Some(Ok(_)) => {}
            },
            _ = refresh.tick() => {
                state.feed_closed = source.tick().await?;
                (rows, dests) = source.snapshots(&state).await?;
                relief = source.relief().await;
                state.sample(source.len());
                dirty = true;
            }
            _ = reconcile.tick() => source.reconcile().await?,
            _ = source.next_events() => {}
        }
    }
    drop(keys);
    drop(term);
    Ok(())
}
