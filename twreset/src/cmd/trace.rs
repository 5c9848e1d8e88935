//! `twreset trace`: stream filtered TCP state transitions until Ctrl-C / SIGTERM or a closed pipe.

use std::{
    future::Future,
    io::{self, Write},
    time::Duration,
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use clap::Args;
use ipnet::IpNet;
use tokio::time::MissedTickBehavior;

use crate::{
    cmd::{NetnsArgs, UsageError},
    decode,
    kernel::{
        identity::{IdentityPaths, Resolver},
        kallsyms::Kallsyms,
        netns,
    },
    ndjson::transition::TransitionLines,
    output::{self, NsNames, WallClock},
    probe::{DRAIN_EVERY, Loss},
    scope::{NetnsScope, parse_peer, parse_port, parse_state},
    session::trace::{TraceSession, TraceSpec},
    state::TcpState,
    synrecv::ChildAddrs,
    twfeed,
};

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// Remote address or prefix to keep (IP or CIDR); repeatable.
    #[arg(long = "peer", value_name = "IP|CIDR", value_parser = parse_peer)]
    pub peers: Vec<IpNet>,
    /// Local or remote port to keep; repeatable.
    #[arg(long = "port", value_name = "N", value_parser = parse_port)]
    pub ports: Vec<u16>,
    /// Keep transitions from or to this state (TIME_WAIT: the active close into TIME_WAIT); repeatable.
    #[arg(long = "state", value_name = "STATE", value_parser = parse_state)]
    pub states: Vec<TcpState>,
    #[command(flatten)]
    pub netns: NetnsArgs,
    /// NDJSON output, one object per transition.
    #[arg(long)]
    pub json: bool,
    /// Also trace the TIME_WAIT sockets themselves: created / re-armed, expired, killed early
    /// (with the cause), and closes that found tcp_max_tw_buckets full.
    #[arg(long)]
    pub timewait: bool,
}

/// Validated trace session.
#[derive(Debug)]
pub struct TraceConfig {
    pub scope: NetnsScope,
    pub peers: Vec<IpNet>,
    pub ports: Vec<u16>,
    pub states: Vec<TcpState>,
    pub json: bool,
    pub timewait: bool,
}

impl TryFrom<TraceArgs> for TraceConfig {
    type Error = UsageError;
    fn try_from(a: TraceArgs) -> Result<Self, UsageError> {
        Ok(Self {
            scope: NetnsScope::try_from(&a.netns)?,
            peers: a.peers,
            ports: a.ports,
            states: a.states,
            json: a.json,
            timewait: a.timewait,
        })
    }
}

/// What a finished session saw.
#[derive(Debug, Default)]
pub struct Summary {
    pub events: u64,
    pub decode_errors: u64,
    pub loss: Loss,
    /// The `sock_ops` source was attached (see [`TraceSession::sock_ops`]).
    pub sock_ops: bool,
}

fn scope_label(cfg: &TraceConfig) -> String {
    match &cfg.scope {
        NetnsScope::All => "all network namespaces".into(),
        NetnsScope::Current => "the current network namespace".into(),
        NetnsScope::Paths(l) => l.iter().map(|n| n.path.display().to_string()).collect::<Vec<_>>().join(", "),
    }
}

fn report_loss(prev: &mut u64, loss: &Loss) {
    if loss.lost() > *prev {
        eprintln!("twreset: warning: {} events lost so far ({})", loss.lost(), loss.breakdown());
        *prev = loss.lost();
    }
}

/// What one event is printed with.
struct Render<'a> {
    json: bool,
    timewait: bool,
    names: &'a NsNames,
    clock: &'a WallClock,
    hz: u64,
    kallsyms: Option<&'a Kallsyms>,
}

impl<'a> Render<'a> {
    fn new(
        cfg: &TraceConfig,
        names: &'a NsNames,
        clock: &'a WallClock,
        hz: u64,
        kallsyms: Option<&'a Kallsyms>,
    ) -> Self {
        Self { json: cfg.json, timewait: cfg.timewait, names, clock, hz, kallsyms }
    }
}

/// Decode one ring-buffer record and append its line(s) to `out` (no per-event allocation); a
/// child's event without its addresses waits for them in `kids` (`synrecv`).
fn render(
    out: &mut Vec<u8>,
    bytes: &[u8],
    r: &Render<'_>,
    lines: &mut TransitionLines,
    kids: &mut ChildAddrs,
) -> Result<(), decode::DecodeError> {
    let ev = decode::parse_event(bytes)?;
    kids.feed(ev, &mut |ev| render_event(out, ev, r, lines))
}

fn render_event(
    out: &mut Vec<u8>,
    ev: &twreset_common::Event,
    r: &Render<'_>,
    lines: &mut TransitionLines,
) -> Result<(), decode::DecodeError> {
    let ev = *ev;
    if ev.kind == twreset_common::kind::STATE {
        if r.json {
            lines.push(out, &ev)?;
        } else {
            let t = decode::transition(&ev)?;
            out.extend_from_slice(output::human_line(&t, r.names, r.clock).as_bytes());
            out.push(b'\n');
        }
    }
    if r.timewait
        && let Some(tw) = twfeed::decode(&ev, r.hz, |a| r.kallsyms.and_then(|k| k.resolve(a)))?
    {
        if r.json {
            output::push_tw_json_line(out, &tw, lines.identity(tw.key.netns_cookie));
        } else {
            out.extend_from_slice(output::tw_human_line(&tw, r.names, r.clock).as_bytes());
            out.push(b'\n');
        }
    }
    Ok(())
}

/// Lines are written out in chunks of about this size.
const WRITE_CHUNK: usize = 1 << 16;

/// Render every pending event to `out` through `buf`; stops at the first write error.
fn render_all(
    out: &mut impl Write,
    buf: &mut Vec<u8>,
    ring: &mut RingBuf<MapData>,
    ctx: &Render<'_>,
    lines: &mut TransitionLines,
    summary: &mut Summary,
    kids: &mut ChildAddrs,
) -> io::Result<()> {
    while let Some(item) = ring.next() {
        match render(buf, &item, ctx, lines, kids) {
            Ok(()) => summary.events += 1,
            Err(e) => {
                summary.decode_errors += 1;
                tracing::warn!("undecodable event: {e}");
            }
        }
        if buf.len() >= WRITE_CHUNK {
            out.write_all(buf)?;
            buf.clear();
        }
    }
    out.write_all(buf)?;
    buf.clear();
    out.flush()
}

/// Namespace identities for the session's output, rescanned every [`IDENTITY_SCAN`] with
/// `--all-netns`. Kept for the whole session: a trace's namespaces are few next to its events.
struct Identities {
    resolver: Option<Resolver>,
    next: std::time::Instant,
}

/// How often an `--all-netns` trace looks for new namespaces (the agent's `netns_scan` default).
const IDENTITY_SCAN: Duration = Duration::from_secs(2);

impl Identities {
    fn start() -> Self {
        let resolver = Resolver::new(IdentityPaths::from_env())
            .map(|mut r| {
                r.refresh();
                r
            })
            .map_err(|e| tracing::debug!("namespace identities: {e:#}"))
            .ok();
        Self { resolver, next: std::time::Instant::now() + IDENTITY_SCAN }
    }

    /// Rescan when due; true when an identity changed.
    fn refresh(&mut self) -> bool {
        let Some(r) = self.resolver.as_mut().filter(|_| std::time::Instant::now() >= self.next) else {
            return false;
        };
        self.next = std::time::Instant::now() + IDENTITY_SCAN;
        r.refresh().changed > 0
    }

    fn names(&self) -> NsNames {
        match &self.resolver {
            Some(r) => NsNames::from_resolver(r),
            None => NsNames(netns::named().into_iter().map(|(n, c)| (c, n)).collect(), Default::default()),
        }
    }

    fn fragments(&self) -> std::collections::HashMap<u64, Box<[u8]>> {
        let Some(r) = &self.resolver else { return Default::default() };
        r.identities().filter(|i| !i.is_plain()).map(|i| (i.cookie, i.json_fragment().into())).collect()
    }
}

/// Run the session until `shutdown` resolves or stdout is closed.
pub async fn run(cfg: TraceConfig, shutdown: impl Future<Output = ()>) -> Result<Summary> {
    let spec = TraceSpec {
        scope: &cfg.scope,
        peers: cfg.peers.clone(),
        ports: cfg.ports.clone(),
        states: cfg.states.clone(),
        timewait: cfg.timewait,
    };
    // The session attaches in the protocol's order and hands older sockets over.
    let (mut session, mut ring) = TraceSession::start(spec)?;
    for n in session.notices() {
        eprintln!("twreset: {n}");
    }
    let hz = twfeed::kernel_hz().unwrap_or(250);

    let mut ids = Identities::start();
    let mut names = ids.names();
    let clock = WallClock::now();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut buf = Vec::with_capacity(2 * WRITE_CHUNK);
    let mut lines = TransitionLines::new();
    lines.set_identities(ids.fragments());
    if !cfg.json {
        writeln!(out, "{}", output::human_header())?;
        out.flush()?;
    }
    eprintln!("twreset: tracing TCP state transitions in {} (Ctrl-C to stop)", scope_label(&cfg));

    let mut summary = Summary::default();
    // With peer or port filters the kernel passes a child's unaddressed first event unchecked.
    let mut kids =
        if cfg.peers.is_empty() && cfg.ports.is_empty() { ChildAddrs::default() } else { ChildAddrs::filtered() };
    let mut reported = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut drain = tokio::time::interval(DRAIN_EVERY);
    drain.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let result: Result<()> = loop {
        // The kernel side wakes us only when a lot is pending: drain on our own timer too.
        let guard = tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = tick.tick() => {
                session.flush_logs();
                report_loss(&mut reported, &session.loss()?);
                // New pods and containers appear while an --all-netns trace runs.
                if matches!(cfg.scope, NetnsScope::All) && ids.refresh() {
                    names = ids.names();
                    lines.set_identities(ids.fragments());
                }
                continue;
            }
            _ = drain.tick() => None,
            guard = ring.readable_mut() => Some(guard.context("waiting on the ring buffer")?),
        };
        let ctx = Render::new(&cfg, &names, &clock, hz, session.kallsyms());
        let wrote = match guard {
            Some(mut guard) => {
                let wrote =
                    render_all(&mut out, &mut buf, guard.get_inner_mut(), &ctx, &mut lines, &mut summary, &mut kids);
                guard.clear_ready();
                wrote
            }
            None => render_all(&mut out, &mut buf, ring.get_mut(), &ctx, &mut lines, &mut summary, &mut kids),
        };
        if let Err(e) = wrote {
            break Err(e.into());
        }
    };
    // What the kernel sent before the stop and no timer tick collected yet.
    let result = result.and_then(|_| {
        let ctx = Render::new(&cfg, &names, &clock, hz, session.kallsyms());
        render_all(&mut out, &mut buf, ring.get_mut(), &ctx, &mut lines, &mut summary, &mut kids)?;
        kids.flush(&mut |ev| render_event(&mut buf, ev, &ctx, &mut lines)).map_err(io::Error::other)?;
        out.write_all(&buf).and_then(|_| out.flush()).map_err(Into::into)
    });
    summary.sock_ops = session.sock_ops();
    summary.loss = session.shutdown()?; // detaches the programs before the summary is printed
    result.map(|_| summary)
}
