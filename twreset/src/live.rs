//! Keeps a [`Table`] live from its kernel-facing inputs (a channel of [`TwEvent`]s, a sock_diag
//! dump function, the probe's loss counter): seed, apply, reconcile, resync after loss.
//!
//! The inputs are parameters so `tw` and `top` run the same way from the kernel or from a test.

use std::{
    collections::HashMap,
    error::Error as StdError,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::{broadcast, mpsc};

use crate::{
    crosscheck::{self, Creations, LastEvents, NsCount, Overflows},
    kernel::{
        netns::{self, Netns, NetnsError},
        procfs::{self, ParseError},
    },
    ports::{Connected, PortRange, PortSpace, PortSpaces},
    scope::{self, NetnsScope},
    sock::DiagSocket,
    table::{By, Drift, Snapshot, Sort, Table, ViewConfig},
    tw_event::{TwCause, TwEvent, TwEventKind},
};

/// Where a dump puts the sockets it reads, one at a time as they arrive: nothing is collected,
/// so a dump as large as the table costs no memory beyond the table.
pub trait DumpSink: Send {
    /// About `n` more tw sockets are coming (a namespace's count just before its dump): a sizing
    /// hint, which may be off either way.
    fn expect_tw(&mut self, _n: usize) {}
    fn socket(&mut self, d: &DiagSocket);
}

/// A sock_diag dump of every socket in scope (TIME_WAIT and the others, for port pressure),
/// streamed into a [`DumpSink`].
pub type DumpFn = Box<dyn FnMut(&mut dyn DumpSink) -> Result<(), Box<dyn StdError + Send + Sync>> + Send>;

/// Hand a dump held in memory to a sink, as a kernel dump would (tests, replays).
pub fn replay(dump: &[DiagSocket], sink: &mut dyn DumpSink) {
    sink.expect_tw(dump.iter().filter(|d| d.timewait).count());
    dump.iter().for_each(|d| sink.socket(d));
}

/// The seed's sink: tw sockets into the table, the others into the port-pressure counts.
struct Seeding<'a> {
    table: &'a mut Table,
    connected: &'a mut Connected,
    ranges: &'a PortSpaces,
    now_ns: u64,
    added: usize,
}

impl DumpSink for Seeding<'_> {
    fn expect_tw(&mut self, n: usize) {
        self.table.reserve(n);
    }

    fn socket(&mut self, d: &DiagSocket) {
        self.added += usize::from(self.table.seed_one(self.now_ns, d));
        self.connected.add(d, self.ranges);
    }
}

/// A reconcile's sink: tw sockets marked in the table, the others into fresh port-pressure counts.
struct Observing<'a> {
    table: &'a mut Table,
    connected: &'a mut Connected,
    ranges: &'a PortSpaces,
}

impl DumpSink for Observing<'_> {
    fn socket(&mut self, d: &DiagSocket) {
        self.table.observe(d);
        self.connected.add(d, self.ranges);
    }
}

/// The probe's cumulative count of events that never reached userspace.
pub type LostFn = Box<dyn FnMut() -> u64 + Send>;

/// The kernel's own TIME_WAIT counts per namespace in scope; namespaces it cannot count (or a
/// kernel whose counts are not per namespace) are left out.
pub type CountFn = Box<dyn FnMut() -> Vec<NsCount> + Send>;

/// How often [`Live::tick`] compares quiet namespaces with the kernel's count.
const CROSSCHECK_EVERY_NS: u64 = 1_000_000_000;
/// How often [`Live::tick`] looks for entries whose expiry event never came (a pass over the
/// whole table): as often as their grace, so one is dropped at most twice the grace late.
const OVERDUE_SWEEP_EVERY_NS: u64 = crate::table::OVERDUE_GRACE_NS;
/// How long a suspected difference waits for in-flight events before it counts.
const CROSSCHECK_SETTLE: Duration = Duration::from_millis(100);

/// What `tw` and `top` read from the kernel. The event source must be attached before the feed
/// is handed over: the first dump comes after, so no socket falls between the seed and the events.
pub struct Feed {
    /// Batches of events in kernel order (one per ring-buffer drain).
    pub events: mpsc::Receiver<Vec<TwEvent>>,
    pub dump: DumpFn,
    pub lost: LostFn,
    pub tw_counts: CountFn,
    /// The kernel's counts just before the event source attached: the baselines of the overflow
    /// counters (`Counters::overflow`).
    pub attached_counts: Vec<NsCount>,
    /// The ephemeral ports of each namespace in scope ([`port_spaces`]).
    pub ranges: PortSpaces,
    /// The clock event stamps are on (`CLOCK_MONOTONIC` for the kernel: [`monotonic_ns`]); tests
    /// pass one that follows tokio's paused time, so none of them sleeps in real time.
    pub clock: Clock,
}

/// Nanoseconds on the clock of the feed's event stamps.
pub type Clock = fn() -> u64;

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("sock_diag dump failed")]
    Dump {
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    #[error("cannot read {}", path.display())]
    SysctlRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad {}", path.display())]
    Sysctl {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
    #[error("reading the ephemeral ports of a namespace")]
    Netns {
        #[source]
        source: NetnsError,
    },
}

/// The sysctl that sizes the ephemeral port space; /proc/sys/net shows the reading thread's namespace.
pub const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
/// The ports `connect()` never hands out, in the same namespace.
pub const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

fn sysctl<T>(path: &str, parse: impl FnOnce(&str) -> Result<T, ParseError>) -> Result<T, LiveError> {
    let path = PathBuf::from(path);
    let text = std::fs::read_to_string(&path).map_err(|source| LiveError::SysctlRead { path: path.clone(), source })?;
    parse(&text).map_err(|source| LiveError::Sysctl { path, source })
}

/// The ephemeral ports of the calling thread's namespace: its `ip_local_port_range` and
/// `ip_local_reserved_ports` (see [`crate::ports`]).
pub fn read_port_space() -> Result<PortSpace, LiveError> {
    let range = sysctl(PORT_RANGE, PortRange::parse)?;
    // Older kernels share it between namespaces, and some have none: no file, nothing reserved.
    let reserved = match sysctl(RESERVED_PORTS, procfs::reserved_ports) {
        Err(LiveError::SysctlRead { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        r => r?,
    };
    Ok(PortSpace { range, reserved })
}

fn space_in(ns: &Netns) -> Result<(u64, PortSpace), LiveError> {
    let cookie = ns.cookie().map_err(|source| LiveError::Netns { source })?;
    let space = ns.run(read_port_space).map_err(|source| LiveError::Netns { source })??;
    Ok((cookie, space))
}

/// The ephemeral ports of every namespace in scope, each read inside that namespace. With
/// [`NetnsScope::All`], every namespace `scope::all_in(proc_root)` finds (named or held by a
/// process, pods included); one created later gets the current namespace's.
pub fn port_spaces(scope: &NetnsScope, proc_root: &Path) -> Result<PortSpaces, LiveError> {
    let default = read_port_space()?;
    let mut per_ns = HashMap::new();
    match scope {
        NetnsScope::Current => {
            per_ns.insert(netns::current_cookie().map_err(|source| LiveError::Netns { source })?, default.clone());
        }
        NetnsScope::Paths(list) => {
            for ns in list {
                let (cookie, space) = space_in(ns)?;
                per_ns.insert(cookie, space);
            }
        }
        NetnsScope::All => {
            let current = netns::current_cookie().map_err(|source| LiveError::Netns { source })?;
            per_ns.insert(current, default.clone());
            for ns in scope::all_in(proc_root).into_iter().filter_map(|t| t.netns) {
                // A namespace gone meanwhile simply keeps the default.
                if let Ok((cookie, space)) = space_in(&ns) {
                    per_ns.insert(cookie, space);
                }
            }
        }
    }
    Ok(PortSpaces { default, per_ns })
}

/// Hand freed heap back to the kernel after a dump: the table's growth and an event burst leave
/// free chunks behind that the allocator would otherwise keep resident.
fn trim() {
    // SAFETY: malloc_trim only returns free memory to the kernel; no pointer is touched.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`, so event stamps compare with it.
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// What `Live` did, for machines (tests, the bench, the agent) rather than log readers. Times are
/// on the feed's clock (`CLOCK_MONOTONIC` ns for the kernel feed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LiveStats {
    /// When the seeding dump started and ended, and the sockets it added.
    pub seed_started_ns: u64,
    pub seed_done_ns: u64,
    pub seeded: u64,
    /// When the latest reconcile started (0: none yet).
    pub reconcile_started_ns: u64,
    /// The latest cross-check with the kernel's counts.
    pub crosscheck: CrosscheckStats,
}

/// One cross-check: namespaces the kernel counted, of which with creation counters, and quiet
/// ones (no event for [`crosscheck::QUIET_NS`]); those whose counts differed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CrosscheckStats {
    pub namespaces: u64,
    pub with_creations: u64,
    pub quiet: u64,
    pub differ: u64,
}

pub struct Live {
    pub table: Table,
    pub connected: Connected,
    pub ranges: PortSpaces,
    pub view: ViewConfig,
    events: mpsc::Receiver<Vec<TwEvent>>,
    dump: DumpFn,
    lost: LostFn,
    tw_counts: CountFn,
    last_events: LastEvents,
    creations: Creations,
    overflows: Overflows,
    next_check_ns: u64,
    next_sweep_ns: u64,
    /// How long to keep applying events after a dump before trusting it (ring-buffer latency).
    settle: Duration,
    clock: Clock,
    closed: bool,
    /// Where applied batches are copied while anyone listens ([`Live::set_tap`]).
    tap: Option<broadcast::Sender<Arc<[TwEvent]>>>,
    stats: LiveStats,
}

impl Live {
    /// Seed from a dump, then apply what arrives during `settle`.
    pub async fn start(feed: Feed, view: ViewConfig, settle: Duration) -> Result<Self, LiveError> {
        let mut live = Self::seed(feed, view, settle)?;
        live.drain_for(settle).await;
        Ok(live)
    }

    /// Seed from a dump and return at once; the caller follows events ([`Live::follow_until`]).
    /// `settle` is how long a reconcile lets in-flight events land after its dump.
    pub fn seed(feed: Feed, view: ViewConfig, settle: Duration) -> Result<Self, LiveError> {
        let Feed { events, dump, lost, tw_counts, attached_counts, ranges, clock } = feed;
        let mut overflows = Overflows::default();
        overflows.read(&attached_counts);
        let mut live = Self {
            table: Table::new(),
            connected: Connected::default(),
            ranges,
            view,
            events,
            dump,
            lost,
            tw_counts,
            last_events: LastEvents::default(),
            creations: Creations::default(),
            overflows,
            next_check_ns: 0,
            next_sweep_ns: 0,
            settle,
            clock,
            closed: false,
            tap: None,
            stats: LiveStats::default(),
        };
        // Losses up to the seed are covered by it; any later one must force a resync.
        let lost_before_seed = (live.lost)();
        // Loading and attaching (BTF parsing) leave ~12 MiB of freed heap behind: return it now,
        // so the seed's peak is the table, not the table on top of that.
        trim();
        tracing::info!("seeding from a sock_diag dump");
        let started = std::time::Instant::now();
        live.stats.seed_started_ns = clock();
        let mut seeding = Seeding {
            table: &mut live.table,
            connected: &mut live.connected,
            ranges: &live.ranges,
            now_ns: clock(),
            added: 0,
        };
        (live.dump)(&mut seeding).map_err(|source| LiveError::Dump { source })?;
        let seeded = seeding.added;
        live.stats.seed_done_ns = clock();
        live.stats.seeded = seeded as u64;
        live.table.shrink_if_sparse();
        trim();
        tracing::info!(
            "seeded {seeded} sockets in {:.1} ms; following kernel events",
            started.elapsed().as_secs_f64() * 1e3
        );
        live.table.set_lost(lost_before_seed);
        // Creations are judged from here: the seed covers what came before.
        let kernel = (live.tw_counts)();
        live.creations.baseline(&kernel);
        live.table.set_overflow(live.overflows.read(&kernel));
        Ok(live)
    }

    /// Apply events as they come for `d`, or until `stop` resolves (Ctrl-C ending `tw`'s settle).
    pub async fn follow_until(&mut self, d: Duration, stop: impl std::future::Future<Output = ()>) {
        tokio::select! {
            _ = self.drain_for(d) => {}
            _ = stop => {
                self.pump();
            }
        }
    }

    pub fn stats(&self) -> LiveStats {
        self.stats
    }

    /// True once the event channel closed (no more kernel events will come).
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Apply every event already queued, without waiting. Returns how many.
    pub fn pump(&mut self) -> usize {
        let mut n = 0;
        loop {
            match self.events.try_recv() {
                Ok(batch) => n += self.apply(&batch),
                Err(mpsc::error::TryRecvError::Empty) => return n,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.closed = true;
                    return n;
                }
            }
        }
    }

    fn apply(&mut self, batch: &[TwEvent]) -> usize {
        // Newest event and creations per namespace, noted once per run of events of one namespace
        // (a batch is mostly one): this loop is the table's hot path.
        let mut run: Option<(u64, u64, u64)> = None;
        for ev in batch {
            let created = u64::from(self.table.apply(ev));
            // A deleted namespace's purge, maybe after it was forgotten: no note of it again.
            if matches!(ev.kind, TwEventKind::Killed { cause: TwCause::NetnsGone }) {
                continue;
            }
            match &mut run {
                Some((ns, ts, n)) if *ns == ev.key.netns_cookie => {
                    *ts = (*ts).max(ev.ts_ns);
                    *n += created;
                }
                _ => {
                    if let Some((ns, ts, n)) = run {
                        self.last_events.saw(ns, ts);
                        self.creations.applied(ns, n);
                    }
                    run = Some((ev.key.netns_cookie, ev.ts_ns, created));
                }
            }
        }
        if let Some((ns, ts, n)) = run {
            self.last_events.saw(ns, ts);
            self.creations.applied(ns, n);
        }
        if let Some(tap) = &self.tap
            && tap.receiver_count() > 0
        {
            let _ = tap.send(Arc::from(batch));
        }
        batch.len()
    }

    /// Copy every batch applied from now on to `tap` (only while it has receivers).
    pub fn set_tap(&mut self, tap: broadcast::Sender<Arc<[TwEvent]>>) {
        self.tap = Some(tap);
    }

    /// Seed one namespace found after the start from a dump made inside it, started at
    /// `started_ns`. Only a namespace with no event since then is seeded (a dump is not atomic
    /// with the events; for a busy one the events are the truth and reconciles fix the rest).
    /// Its overflow counter counts from 0 (it was made after the probe attached). Returns the
    /// sockets added, or None when it was not quiet.
    pub fn seed_netns(&mut self, netns: u64, started_ns: u64, dump: &[DiagSocket]) -> Option<usize> {
        self.pump();
        self.overflows.from_zero(netns);
        if !self.last_events.quiet_since(netns, started_ns) {
            return None;
        }
        let mut added = 0;
        for d in dump.iter().filter(|d| d.key.netns_cookie == netns) {
            added += usize::from(self.table.seed_one(started_ns, d));
            self.connected.add(d, &self.ranges);
        }
        Some(added)
    }

    /// Forget a namespace that is gone: its entries ([`Table::drop_netns`]), its port range and
    /// what the cross-checks noted of it. Returns the entries dropped.
    pub fn forget_netns(&mut self, netns: u64) -> usize {
        self.ranges.per_ns.remove(&netns);
        self.last_events.forget(netns);
        self.creations.forget(netns);
        self.overflows.forget(netns);
        self.table.drop_netns(netns)
    }

    /// The kernel's overflow counts per namespace since the table started.
    pub fn overflows(&self) -> &Overflows {
        &self.overflows
    }

    /// Wait for the next event and apply it with everything queued behind it. Returns how many;
    /// 0 once the channel closed, after which it never resolves again (it can sit in a `select!`).
    pub async fn next_events(&mut self) -> usize {
        if self.closed {
            return std::future::pending().await;
        }
        match self.events.recv().await {
            Some(batch) => self.apply(&batch) + self.pump(),
            None => {
                self.closed = true;
                0
            }
        }
    }

    async fn drain_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while !self.closed {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = self.next_events() => {}
            }
        }
        self.pump();
    }

    /// Compare with a fresh dump and fix the table; `forced` counts it as a resync.
    pub async fn reconcile(&mut self, forced: bool) -> Result<Drift, LiveError> {
        self.pump();
        tracing::info!("reconciling with a fresh dump");
        self.stats.reconcile_started_ns = (self.clock)();
        self.table.begin_reconcile(self.stats.reconcile_started_ns);
        let mut connected = Connected::default();
        let mut observing = Observing { table: &mut self.table, connected: &mut connected, ranges: &self.ranges };
        if let Err(source) = (self.dump)(&mut observing) {
            self.table.abort_reconcile();
            return Err(LiveError::Dump { source });
        }
        // Events older than the dump may still be in flight: let them land first.
        self.drain_for(self.settle).await;
        let drift = self.table.end_reconcile(forced);
        for (kind, key) in self.table.drift_samples() {
            tracing::info!("reconcile: {kind:?} {key}");
        }
        self.connected = connected;
        trim();
        Ok(drift)
    }

    /// Compare the quiet namespaces with the kernel's own count (see [`crate::crosscheck`]) and
    /// count what differs as unseen. A difference is only trusted after in-flight events had
    /// time to land; without one the check costs a sockstat read per namespace, no wait.
    async fn crosscheck(&mut self) {
        let read_ns = (self.clock)();
        let kernel = (self.tw_counts)();
        self.creations.baseline(&kernel);
        self.table.set_overflow(self.overflows.read(&kernel));
        let suspects = self.mismatches(&kernel, read_ns);
        let since = read_ns.saturating_sub(crosscheck::QUIET_NS);
        let count = |n: usize| n as u64;
        self.stats.crosscheck = CrosscheckStats {
            namespaces: count(kernel.len()),
            with_creations: count(kernel.iter().filter(|c| c.created.is_some()).count()),
            quiet: count(kernel.iter().filter(|c| self.last_events.quiet_since(c.netns, since)).count()),
            differ: count(suspects.len()),
        };
        let c = &self.stats.crosscheck;
        tracing::debug!(
            "cross-check: {} namespaces counted ({} with creations), {} quiet, {} differ",
            c.namespaces,
            c.with_creations,
            c.quiet,
            c.differ
        );
        if suspects.is_empty() && self.creations.unreported(&kernel) == 0 {
            return;
        }
        self.drain_for(CROSSCHECK_SETTLE).await;
        let uncreated = self.creations.report(&kernel);
        if uncreated > 0 {
            tracing::warn!("the kernel created {uncreated} more TIME_WAIT sockets than events said; resyncing");
            self.table.add_unseen(uncreated);
            // The same sockets would show in the counts too: compare those after the resync.
            return;
        }
        for m in self.mismatches(&kernel, read_ns) {
            tracing::warn!(
                "namespace {}: the kernel holds {} tw sockets, the table {}, with no event in flight: resyncing",
                m.netns,
                m.kernel,
                m.table
            );
            self.table.add_unseen(m.size());
        }
    }

    fn mismatches(&self, kernel: &[NsCount], read_ns: u64) -> Vec<crosscheck::Mismatch> {
        let since = read_ns.saturating_sub(crosscheck::QUIET_NS);
        // Only quiet namespaces are compared: the table is counted (a pass over it) only when
        // there is one.
        if !kernel.iter().any(|c| self.last_events.quiet_since(c.netns, since)) {
            return Vec::new();
        }
        let table = self.table.counts_by_netns();
        crosscheck::mismatches(
            kernel,
            |ns| table.get(&ns).copied().unwrap_or(0),
            |ns| self.last_events.quiet_since(ns, since),
        )
    }

    /// Periodic upkeep: drop overdue entries, compare quiet namespaces with the kernel's count,
    /// and resync when events were lost (or the comparison found changes no event reported).
    pub async fn tick(&mut self) -> Result<Option<Drift>, LiveError> {
        self.pump();
        let now = (self.clock)();
        // A pass over the whole table: no more often than the grace it allows.
        if now >= self.next_sweep_ns {
            self.next_sweep_ns = now + OVERDUE_SWEEP_EVERY_NS;
            self.table.expire_overdue(now);
            self.table.collect();
        }
        if now >= self.next_check_ns {
            self.next_check_ns = now + CROSSCHECK_EVERY_NS;
            self.crosscheck().await;
        }
        let lost = (self.lost)() + self.table.counters().unseen;
        if self.table.set_lost(lost) {
            return self.reconcile(true).await.map(Some);
        }
        Ok(None)
    }

    pub fn snapshot(&self, by: By, sort: Sort) -> Snapshot {
        self.table.snapshot((self.clock)(), by, sort, &self.view, &self.connected, &self.ranges)
    }

    /// A snapshot with its own prefix lengths, of some namespaces only (the agent's API).
    pub fn snapshot_in(&self, by: By, sort: Sort, view: &ViewConfig, netns: Option<&[u64]>) -> Snapshot {
        self.table.snapshot_in(monotonic_ns(), by, sort, view, &self.connected, &self.ranges, netns)
    }
}

#[cfg(test)]
mod tests;
