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
use tokio::{io::unix::AsyncFd, time::MissedTickBehavior};

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
    probe::{DRAIN_EVERY, Filters, Loss, Probe},
    scope::{NetnsScope, parse_peer, parse_port, parse_state},
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
    /// The `sock_ops` source was attached (see [`Probe::attach_sock_ops`]).
    pub sock_ops: bool,
}

fn filters(cfg: &TraceConfig) -> Result<Filters> {
    let netns = match &cfg.scope {
        NetnsScope::All => None,
        NetnsScope::Current => Some(vec![netns::current_cookie()?]),
        NetnsScope::Paths(list) => Some(list.iter().map(|n| n.cookie()).collect::<Result<_, _>>()?),
    };
    Ok(Filters {
        netns,
        peers: cfg.peers.clone(),
        ports: cfg.ports.clone(),
        states: cfg.states.clone(),
        tw_table: false,
    })
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

/// Give the sockets of the watched namespaces that existed before `trace` to `sock_ops`, then
/// detach the tracepoint programs: from then on each transition costs one `sock_ops` call
/// instead of that and two tracepoint programs. `--all-netns` keeps them: a namespace with no
/// process or name in it cannot be entered, and its older sockets would go unreported.
fn hand_over(probe: &mut Probe, scope: &NetnsScope) {
    let handed = match scope {
        NetnsScope::All => {
            eprintln!("twreset: --all-netns: the tracepoint programs stay attached for sockets older than this trace");
            return;
        }
        NetnsScope::Current => probe.own_existing().map_err(anyhow::Error::from),
        NetnsScope::Paths(list) => {
            list.iter().try_fold(0, |sum, n| -> Result<u64> { Ok(sum + n.run(|| probe.own_existing())??) })
        }
    };
    match handed.and_then(|n| probe.detach_state().map(|()| n).map_err(anyhow::Error::from)) {
        Ok(n) => tracing::debug!("{n} existing sockets handed to sock_ops; tracepoint programs detached"),
        Err(e) => eprintln!("twreset: warning: {e:#}; the tracepoint programs stay attached"),
    }
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
    let mut probe = Probe::load()?;
    probe.set_filters(&filters(&cfg)?)?;
    let ring = probe.take_events()?;
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd holds it.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| e.into_parts().1)
        .context("registering the ring buffer with tokio")?;
    // Established sockets' transitions from tcp_set_state() itself, which the tracepoint leaves
    // a few per million of undelivered; without it the tracepoint reports everything. First, so
    // that the tracepoint programs never run without it (see `Probe::attach_sock_ops`).
    let sock_ops = match probe.attach_sock_ops() {
        Ok(()) => true,
        Err(e) => {
            let e = anyhow::Error::from(e);
            eprintln!("twreset: warning: {e:#}; the tracepoint alone may miss a few transitions per million");
            false
        }
    };
    // Sockets that connect or listen from now on are sock_ops' from birth; the tracepoint
    // programs report the others until the older sockets are handed over too (`hand_over`).
    let own = sock_ops
        && match probe.attach_own() {
            Ok(()) => true,
            Err(e) => {
                let e = anyhow::Error::from(e);
                eprintln!("twreset: warning: {e:#}; the tracepoint programs stay attached");
                false
            }
        };
    probe.attach_state()?;
    if cfg.timewait {
        probe.attach_timewait(twfeed::fault_skip())?;
    }
    if own {
        hand_over(&mut probe, &cfg.scope);
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
                probe.flush_logs();
                report_loss(&mut reported, &probe.loss()?);
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
        let ctx = Render::new(&cfg, &names, &clock, hz, probe.kallsyms());
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
        let ctx = Render::new(&cfg, &names, &clock, hz, probe.kallsyms());
        render_all(&mut out, &mut buf, ring.get_mut(), &ctx, &mut lines, &mut summary, &mut kids)?;
        kids.flush(&mut |ev| render_event(&mut buf, ev, &ctx, &mut lines)).map_err(io::Error::other)?;
        out.write_all(&buf).and_then(|_| out.flush()).map_err(Into::into)
    });
    summary.loss = probe.loss()?;
    summary.sock_ops = sock_ops;
    drop(probe); // detaches the program before the summary is printed
    result.map(|_| summary)
}
