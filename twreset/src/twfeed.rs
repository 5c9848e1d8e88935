//! Kernel TIME_WAIT events to [`TwEvent`]s: pure decoding (cause from the caller's address, timer
//! jiffies to milliseconds), the probe that produces them, and the [`Feed`] the live table reads.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    time::{Interval, MissedTickBehavior},
};
use twreset_common::{Event, kind, state_aux};

use crate::{
    crosscheck::NsCount,
    decode::{DecodeError, parse_event, sock_key},
    diag,
    kernel::kallsyms::Kallsyms,
    kernel::netns::{self, Netns, NetnsError},
    live::{CountFn, DumpSink, LiveError},
    probe::{Filters, Loss, Probe, ProbeError},
    scope::NetnsScope,
    state::TcpState,
    tw_event::{TwCause, TwEvent, TwEventKind},
};

/// The function that removed a TIME_WAIT socket early tells why (docs/internals/timewait.md).
pub fn cause_of(function: Option<&str>) -> TwCause {
    match function {
        Some("tcp_abort") => TwCause::SockDestroy,
        Some("tcp_timewait_state_process") => TwCause::PeerRst,
        Some("tcp_v4_rcv" | "tcp_v6_rcv") => TwCause::NewSyn,
        Some("__inet_hash_connect") => TwCause::Reuse,
        Some("inet_twsk_purge" | "tcp_twsk_purge") => TwCause::NetnsGone,
        _ => TwCause::Other,
    }
}

/// Decode one kernel event. `None` for events that are not TIME_WAIT lifecycle (ordinary state
/// transitions). `hz` is the kernel's CONFIG_HZ; `resolve` maps a kernel address to a function.
pub fn decode<'a>(
    ev: &Event,
    hz: u64,
    resolve: impl Fn(u64) -> Option<&'a str>,
) -> Result<Option<TwEvent>, DecodeError> {
    let kind = match ev.kind {
        kind::STATE if ev.aux & state_aux::OVERFLOW != 0 => TwEventKind::Overflow,
        kind::STATE => return Ok(None),
        kind::TW_START | kind::TW_REARM => {
            let substate = TcpState::try_from(ev.newstate).map_err(DecodeError::State)?;
            let timeout_ms = (ev.aux.saturating_mul(1000) / hz.max(1)).min(u32::MAX as u64) as u32;
            if ev.kind == kind::TW_REARM {
                TwEventKind::Rearmed { substate, timeout_ms }
            } else {
                TwEventKind::Created { substate, timeout_ms }
            }
        }
        kind::TW_BORN => TwEventKind::Born { substate: TcpState::try_from(ev.newstate).map_err(DecodeError::State)? },
        kind::TW_EXPIRE => TwEventKind::Expired,
        kind::TW_KILL => TwEventKind::Killed { cause: cause_of(resolve(ev.aux)) },
        other => return Err(DecodeError::Kind { kind: other }),
    };
    Ok(Some(TwEvent { ts_ns: ev.ts_ns, key: sock_key(ev)?, kind }))
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Live(#[from] LiveError),
    #[error("reading a namespace cookie")]
    Netns(#[source] NetnsError),
    #[error("registering the ring buffer with tokio")]
    Register(#[source] std::io::Error),
    #[error("waiting on the ring buffer")]
    Wait(#[source] std::io::Error),
}

/// The kernel's CONFIG_HZ (timer jiffies per second), from /proc/config.gz or /boot/config-*.
pub fn kernel_hz() -> Option<u64> {
    use std::io::Read;
    let text = std::fs::File::open("/proc/config.gz")
        .ok()
        .and_then(|f| {
            let mut s = String::new();
            flate2::read::GzDecoder::new(f).read_to_string(&mut s).ok().map(|_| s)
        })
        .or_else(|| {
            let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
            std::fs::read_to_string(format!("/boot/config-{}", rel.trim())).ok()
        })?;
    text.lines().find_map(|l| l.strip_prefix("CONFIG_HZ=")).and_then(|v| v.trim().parse().ok())
}

/// Fault injection for tests: set, `tw`, `top` and `trace --timewait` leave the `timer_start`
/// program out, so the `sock_ops` program must report every TIME_WAIT creation
/// ([`TwEventKind::Born`]), as it does for the few the timer tracepoint leaves undelivered.
pub const FAULT_NO_TIMER_START: &str = "TWRESET_FAULT_NO_TIMER_START";

/// The timer programs [`FAULT_NO_TIMER_START`] leaves out: none unless it is set.
pub fn fault_skip() -> &'static [&'static str] {
    if std::env::var_os(FAULT_NO_TIMER_START).is_some() { &["timer_start"] } else { &[] }
}

/// How often the table's reader drains the ring buffer on its own (the kernel side wakes it only
/// once a quarter MiB is pending). A table is read once a second at most (`top`, the
/// cross-check), so it waits longer than `trace` does: each drain is two task wakeups, which
/// made up a fifth of the agent's CPU under churn at 10 ms.
const TABLE_DRAIN_EVERY: Duration = Duration::from_millis(50);

/// Live TIME_WAIT events from the kernel for the namespaces in `netns` (`None`: all).
pub struct TwFeed {
    probe: Probe,
    ring: AsyncFd<RingBuf<MapData>>,
    /// The kernel side wakes the reader only when a lot is pending: drain on this timer too.
    drain: Interval,
    hz: u64,
    pub decode_errors: u64,
}

impl TwFeed {
    /// Load, filter to the namespaces, attach the timer programs, then the `sock_ops` program
    /// for the creations the timer tracepoint does not deliver (a warning if it cannot attach:
    /// the kernel cross-check still finds those, later). Overflows of `tcp_max_tw_buckets` are
    /// the kernel's own counter (`live`), so no state program runs on the host's transitions.
    pub fn start(netns: Option<Vec<u64>>) -> Result<Self, FeedError> {
        let mut probe = Probe::load()?;
        probe.set_filters(&Filters { netns, tw_table: true, ..Filters::default() })?;
        let ring = probe.take_events()?;
        // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd holds it.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|e| FeedError::Register(e.into_parts().1))?;
        probe.attach_timewait(fault_skip())?;
        // After the timer programs: before them it would report every creation.
        if let Err(e) = probe.attach_sock_ops() {
            tracing::warn!(
                "{:#}; TIME_WAIT creations the timer tracepoint misses (a few per million) are left to the kernel cross-check",
                anyhow::Error::from(e)
            );
        }
        // Without CONFIG_HZ: 250 is the most common; only reported timeouts depend on it.
        let hz = kernel_hz().unwrap_or(250);
        let mut drain = tokio::time::interval(TABLE_DRAIN_EVERY);
        drain.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self { probe, ring, drain, hz, decode_errors: 0 })
    }

    /// Wait for events (a wakeup from the kernel side or the next drain tick) and append every
    /// decoded one to `out`.
    pub async fn next_batch(&mut self, out: &mut Vec<TwEvent>) -> Result<(), FeedError> {
        let ks: Option<&Kallsyms> = self.probe.kallsyms();
        let (hz, errors) = (self.hz, &mut self.decode_errors);
        let mut take = |ring: &mut RingBuf<MapData>| {
            while let Some(item) = ring.next() {
                match parse_event(&item).and_then(|ev| decode(&ev, hz, |a| ks.and_then(|k| k.resolve(a)))) {
                    Ok(Some(ev)) => out.push(ev),
                    Ok(None) => {}
                    Err(_) => *errors += 1,
                }
            }
        };
        tokio::select! {
            _ = self.drain.tick() => take(self.ring.get_mut()),
            guard = self.ring.readable_mut() => {
                let mut guard = guard.map_err(FeedError::Wait)?;
                take(guard.get_inner_mut());
                guard.clear_ready();
            }
        }
        Ok(())
    }

    /// Forward kernel-side log records (see [`Probe::flush_logs`]).
    pub fn flush_logs(&mut self) {
        self.probe.flush_logs();
    }

    /// Replace the namespace filter while attached (`None`: every namespace).
    pub fn set_netns(&mut self, netns: Option<Vec<u64>>) -> Result<(), FeedError> {
        Ok(self.probe.set_filters(&Filters { netns, tw_table: true, ..Filters::default() })?)
    }

    pub fn loss(&self) -> Result<Loss, FeedError> {
        Ok(self.probe.loss()?)
    }
}

/// The namespaces of `scope` as [`dump_scope`] and [`tw_counts`] take them.
pub(crate) fn paths_of(scope: &NetnsScope) -> Option<Vec<std::path::PathBuf>> {
    match scope {
        NetnsScope::All => None,
        NetnsScope::Current => Some(Vec::new()),
        NetnsScope::Paths(list) => Some(list.iter().map(|n| n.path.clone()).collect()),
    }
}

/// Every TCP socket of the scope into `sink`: `None` = all namespaces (enumerated anew each time,
/// so deleted ones are not held open), empty = the current one.
pub(crate) fn dump_scope(
    paths: Option<&[std::path::PathBuf]>,
    proc_root: &std::path::Path,
    sink: &mut dyn DumpSink,
) -> Result<(), DumpError> {
    let targets: Vec<Netns> = match paths {
        None => crate::scope::all_in(proc_root).into_iter().filter_map(|t| t.netns).collect(),
        Some([]) => return dump_here(sink).map_err(DumpError::Diag),
        Some(list) => list.iter().map(|p| Netns::open(p)).collect::<Result<_, _>>().map_err(DumpError::Netns)?,
    };
    for ns in &targets {
        match ns.run(|| dump_here(&mut *sink)) {
            Ok(Ok(())) => {}
            // A namespace that vanished while we looked has no sockets left to count (any it
            // handed over before vanishing are removed by their netns_gone events).
            Ok(Err(_)) | Err(_) if paths.is_none() => {}
            Ok(Err(e)) => return Err(DumpError::Diag(e)),
            Err(e) => return Err(DumpError::Netns(e)),
        }
    }
    Ok(())
}

/// How often the kernel's counts of all the host's namespaces are read (`--all-netns`).
const ALL_NETNS_COUNT_EVERY: Duration = Duration::from_secs(10);

/// The kernel's TIME_WAIT count of every namespace in scope (see [`crate::crosscheck`]), scope
/// as in [`dump_scope`]. Before 6.1 `TcpExt` `TW`/`TWKilled` count a TIME_WAIT socket when its
/// timer ends, not when it is created (checked on Debian's 5.10: 4 new sockets, `TW` 0), so no
/// creation count is read there; sockstat's `tw` and `TCPTimeWaitOverflow` are per namespace on
/// every kernel of the matrix.
pub(crate) fn tw_counts(paths: Option<Vec<std::path::PathBuf>>, proc_root: std::path::PathBuf) -> CountFn {
    let creations_counted = crate::kernel::procfs::running_version().is_some_and(|v| v >= (6, 1));
    // Every namespace of the host means a /proc walk and a thread per namespace: not every second.
    let mut next_all = std::time::Instant::now();
    Box::new(move || {
        let here = || {
            let (created, overflow) = tcp_ext_counts();
            let created = created.filter(|_| creations_counted);
            Some(NsCount { netns: netns::current_cookie().ok()?, tw: tw_count()?, created, overflow })
        };
        let targets: Vec<Netns> = match paths.as_deref() {
            None if std::time::Instant::now() < next_all => return Vec::new(),
            None => {
                next_all = std::time::Instant::now() + ALL_NETNS_COUNT_EVERY;
                crate::scope::all_in(&proc_root).into_iter().filter_map(|t| t.netns).collect()
            }
            Some([]) => return here().into_iter().collect(),
            Some(list) => list.iter().filter_map(|p| Netns::open(p).ok()).collect(),
        };
        targets.iter().filter_map(|ns| ns.run(here).ok().flatten()).collect()
    })
}

/// The calling thread's namespace into `sink`, announcing its TIME_WAIT count first.
fn dump_here(sink: &mut dyn DumpSink) -> Result<(), diag::DiagError> {
    if let Some(n) = tw_count() {
        sink.expect_tw(n);
    }
    diag::dump_each(&[], |d| sink.socket(d))
}

/// TIME_WAIT sockets of the calling thread's namespace, as `/proc/net/sockstat` counts them
/// (`thread-self`: a thread that entered another namespace sees that one's).
fn tw_count() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/thread-self/net/sockstat").ok()?;
    crate::kernel::procfs::sockstat_tw(&text).ok().map(|n| n as usize)
}

/// Of the calling thread's namespace, from `TcpExt`: the TIME_WAIT sockets created so far
/// (`TW`, 60 s timers, + `TWKilled`, short ones; counted once per new socket, never for a
/// re-arm), and the active closes that found `tcp_max_tw_buckets` full (`TCPTimeWaitOverflow`).
fn tcp_ext_counts() -> (Option<u64>, Option<u64>) {
    let Some(ext) = std::fs::read_to_string("/proc/thread-self/net/netstat")
        .ok()
        .and_then(|text| crate::kernel::procfs::tcp_ext(&text).ok())
    else {
        return (None, None);
    };
    let created = ext.get("TW").zip(ext.get("TWKilled")).map(|(a, b)| a + b);
    (created, ext.get("TCPTimeWaitOverflow").copied())
}

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("sock_diag dump")]
    Diag(#[source] diag::DiagError),
    #[error("entering a namespace to dump it")]
    Netns(#[source] NetnsError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    use crate::decode::mapped;
    use twreset_common::{AF_INET, tcp_state};

    fn ev(kind: u16, aux: u64) -> Event {
        Event {
            ts_ns: 5,
            netns_cookie: 9,
            skaddr: 0,
            saddr: mapped("10.0.0.1".parse().unwrap()),
            daddr: mapped("10.0.0.2".parse().unwrap()),
            sport: 40000,
            dport: 443,
            family: AF_INET,
            kind,
            oldstate: 0,
            newstate: tcp_state::TIME_WAIT,
            aux,
        }
    }

    #[test]
    fn decodes_each_kind() {
        let none = |_| None;
        let e = decode(&ev(kind::TW_START, 15000), 250, none).unwrap().unwrap();
        assert_eq!(e.kind, TwEventKind::Created { substate: TcpState::TimeWait, timeout_ms: 60_000 });
        assert_eq!(e.key.raddr, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!((e.key.lport, e.key.rport, e.key.netns_cookie), (40000, 443, 9));
        let r = decode(&ev(kind::TW_REARM, 15000), 250, none).unwrap().unwrap();
        assert_eq!(r.kind, TwEventKind::Rearmed { substate: TcpState::TimeWait, timeout_ms: 60_000 });
        assert_eq!(decode(&ev(kind::TW_EXPIRE, 0), 250, none).unwrap().unwrap().kind, TwEventKind::Expired);
        let k = decode(&ev(kind::TW_KILL, 0xffff_1234), 250, |_| Some("tcp_abort")).unwrap().unwrap();
        assert_eq!(k.kind, TwEventKind::Killed { cause: TwCause::SockDestroy });
        let mut st = ev(kind::STATE, state_aux::OVERFLOW);
        st.oldstate = tcp_state::FIN_WAIT2;
        st.newstate = tcp_state::CLOSE;
        assert_eq!(decode(&st, 250, none).unwrap().unwrap().kind, TwEventKind::Overflow);
        st.aux = state_aux::TW_CREATED;
        assert_eq!(decode(&st, 250, none).unwrap(), None);
        assert!(decode(&ev(42, 0), 250, none).is_err());
    }

    #[test]
    fn causes() {
        assert_eq!(cause_of(Some("tcp_abort")), TwCause::SockDestroy);
        assert_eq!(cause_of(Some("tcp_timewait_state_process")), TwCause::PeerRst);
        assert_eq!(cause_of(Some("tcp_v4_rcv")), TwCause::NewSyn);
        assert_eq!(cause_of(Some("tcp_v6_rcv")), TwCause::NewSyn);
        assert_eq!(cause_of(Some("__inet_hash_connect")), TwCause::Reuse);
        assert_eq!(cause_of(Some("inet_twsk_purge")), TwCause::NetnsGone);
        assert_eq!(cause_of(Some("something_else")), TwCause::Other);
        assert_eq!(cause_of(None), TwCause::Other);
    }
}
