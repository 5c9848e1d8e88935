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
    cmd::tw::parse_duration,
    cmd::{NetnsArgs, UsageError},
    live::{Feed, Live, LiveError},
    output::NsNames,
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
    #[arg(long, short = 'd', value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// How often to compare the table with a sock_diag dump (drift should stay 0).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub reconcile: Duration,
    /// Prefix length of IPv4 rows when grouping by prefix.
    #[arg(long = "prefix-v4", value_name = "LEN", default_value_t = 24, value_parser = clap::value_parser!(u8).range(0..=32))]
    pub prefix_v4: u8,
    /// Prefix length of IPv6 rows when grouping by prefix.
    #[arg(long = "prefix-v6", value_name = "LEN", default_value_t = 64, value_parser = clap::value_parser!(u8).range(0..=128))]
    pub prefix_v6: u8,
}

#[derive(Debug)]
pub struct TopConfig {
    pub scope: NetnsScope,
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
}

/// `top` draws on stdout: fail before loading anything when it is not a terminal.
pub fn ensure_terminal() -> Result<(), TopError> {
    if io::stdout().is_terminal() { Ok(()) } else { Err(TopError::NotATerminal) }
}

fn snapshots(live: &Live, state: &TopState) -> (Snapshot, Snapshot) {
    (live.snapshot(state.by, state.sort), live.snapshot(By::Dest, Sort::Pressure))
}

/// Run the screen until `q`/Esc/Ctrl-C or `shutdown`. The terminal is restored on every way out.
pub async fn run(
    cfg: &TopConfig,
    feed: Feed,
    names: &NsNames,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TopError> {
    ensure_terminal()?;
    // Seed before taking the screen, so a failure prints like any other error.
    let mut live = Live::start(feed, cfg.view, SETTLE).await.map_err(TopError::Live)?;
    let mut state = TopState::new(cfg.by, cfg.interval);
    state.sample(live.table.len() as u64);
    let mut term = term::Term::enter().map_err(TopError::Terminal)?;
    let mut keys = term::Keys::spawn();
    let (mut rows, mut dests) = snapshots(&live, &state);
    let mut refresh = interval_at(Instant::now() + state.interval, state.interval);
    refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut reconcile = interval_at(Instant::now() + cfg.reconcile, cfg.reconcile);
    reconcile.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut dirty = true;
    tokio::pin!(shutdown);
    loop {
        if dirty {
            let screen = ui::Screen { state: &state, rows: &rows, dests: &dests, names };
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
                        (rows, dests) = snapshots(&live, &state);
                        dirty = true;
                    }
                },
                Some(Ok(Event::Resize(..))) => dirty = true,
                Some(Ok(_)) => {}
            },
            _ = refresh.tick() => {
                live.tick().await.map_err(TopError::Live)?;
                state.sample(live.table.len() as u64);
                state.feed_closed = live.closed();
                (rows, dests) = snapshots(&live, &state);
                dirty = true;
            }
            _ = reconcile.tick() => {
                live.reconcile(false).await.map_err(TopError::Live)?;
            }
            _ = live.next_events() => {}
        }
    }
    drop(keys);
    drop(term);
    Ok(())
}
