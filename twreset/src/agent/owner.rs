//! The owner: the one task that holds the live table. It applies kernel events, seeds new
//! namespaces, forgets deleted ones, reconciles, and answers [`Command`]s with snapshots. It runs
//! on a thread of its own, so its blocking dumps never hold up the HTTP side, and the HTTP side
//! never holds up the events.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{broadcast, mpsc, watch},
    time::{Instant, MissedTickBehavior, interval, interval_at},
};

use super::{
    command::{Caller, Command, CommandError, KillReply, KillRequest, Status},
    heap,
    metrics::{DestFigure, Figures, NsFigures, PeerFigure},
    netns_watch::{Change, NsIdentity, netns_label},
    relief::{self, Relief},
};
use crate::{
    kill::{
        audit::Actor,
        execute::{Request, execute},
    },
    live::{Feed, Live, LiveError},
    session::SessionStats,
    table::{By, Group, Sort, ViewConfig},
};

/// How long the seed follows events before the table is trusted, and how long a reconcile lets
/// in-flight events land after its dump.
const SETTLE: Duration = Duration::from_millis(100);
/// Upkeep: overdue entries, the kernel cross-check, resyncs after loss.
const TICK: Duration = Duration::from_secs(1);

/// What a reload may change while running.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub top_n: usize,
    pub reconcile: Duration,
    pub audit_log: std::path::PathBuf,
    /// `[relief]`, validated.
    pub relief: crate::policy::ReliefConfig,
}

/// Kills by (trigger, result), shared with the kill workers.
pub type KillCounts = Arc<Mutex<HashMap<(&'static str, &'static str), u64>>>;

/// The owner's inputs besides the feed.
pub struct Inputs {
    pub commands: mpsc::Receiver<Command>,
    pub netns: mpsc::Receiver<Vec<Change>>,
    pub settings: watch::Receiver<Settings>,
    pub stats: watch::Receiver<SessionStats>,
    /// Set once the table is seeded (the programs are attached before the owner starts).
    pub ready: Arc<AtomicBool>,
    pub kernel: String,
}

struct Owner {
    live: Live,
    names: HashMap<u64, NsIdentity>,
    settings: Settings,
    stats: watch::Receiver<SessionStats>,
    kills: KillCounts,
    tap: broadcast::Sender<Arc<[crate::tw_event::TwEvent]>>,
    kernel: String,
    ready: bool,
    relief: Relief,
}

/// Seed, then serve until `stop` resolves or the kernel feed closes.
pub async fn run(feed: Feed, mut inputs: Inputs, stop: impl Future<Output = ()>) -> Result<(), LiveError> {
    let mut live = Live::start(feed, ViewConfig::default(), SETTLE).await?;
    heap::trim();
    let (tap, _) = broadcast::channel(1024);
    live.set_tap(tap.clone());
    let settings = inputs.settings.borrow_and_update().clone();
    let (relief_done, mut relief_reports) = mpsc::unbounded_channel();
    let relief = Relief::new(settings.relief.clone(), relief_done);
    let mut owner = Owner {
        live,
        names: HashMap::new(),
        settings,
        stats: inputs.stats,
        kills: KillCounts::default(),
        tap,
        kernel: inputs.kernel,
        ready: true,
        relief,
    };
    inputs.ready.store(true, Ordering::SeqCst);
    let mut tick = interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let every = owner.settings.reconcile;
    let mut reconcile = interval_at(Instant::now() + every, every);
    reconcile.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut relief_tick = relief_interval(&owner.relief.config);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            cmd = inputs.commands.recv() => match cmd {
                Some(cmd) => owner.commands(cmd, &mut inputs.commands),
                None => break,
            },
            Some(changes) = inputs.netns.recv() => owner.netns(changes),
            Ok(()) = inputs.settings.changed() => {
                let new = inputs.settings.borrow_and_update().clone();
                if new.reconcile != owner.settings.reconcile {
                    reconcile = interval_at(Instant::now() + new.reconcile, new.reconcile);
                    reconcile.set_missed_tick_behavior(MissedTickBehavior::Delay);
                }
                if new.relief.interval_ns != owner.relief.config.interval_ns {
                    relief_tick = relief_interval(&new.relief);
                }
                owner.relief.reload(new.relief.clone());
                owner.settings = new;
            }
            _ = relief_tick.tick() => owner.relief_cycle(),
            Some(done) = relief_reports.recv() => {
                let mut kills = self_kills(&owner.kills);
                owner.relief.done(&done, &mut kills);
            }
            _ = tick.tick() => {
                if let Err(e) = owner.live.tick().await {
                    tracing::warn!("resync failed: {:#}", anyhow::Error::from(e));
                }
            }
            _ = reconcile.tick() => {
                match owner.live.reconcile(false).await {
                    Ok(d) if d.total() > 0 => tracing::info!("reconcile: {} missing, {} extra", d.missing, d.extra),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("reconcile failed: {:#}", anyhow::Error::from(e)),
                }
                heap::trim();
            }
            _ = owner.live.next_events() => {
                if owner.live.closed() {
                    tracing::error!("the kernel feed closed; stopping");
                    break;
                }
            }
        }
    }
    Ok(())
}

fn relief_interval(c: &crate::policy::ReliefConfig) -> tokio::time::Interval {
    let every = Duration::from_nanos(c.interval_ns.max(1));
    let mut i = interval_at(Instant::now() + every, every);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

fn self_kills(k: &KillCounts) -> std::sync::MutexGuard<'_, HashMap<(&'static str, &'static str), u64>> {
    k.lock().expect("kill counts")
}

impl Owner {
    /// One relief cycle on the table as it is now (no rule: nothing to look at).
    fn relief_cycle(&mut self) {
        if self.relief.config.rules.is_empty() {
            return;
        }
        self.live.pump();
        // One reading of the clock for the policy and for the audit's latency.
        let (now, at) = (crate::live::monotonic_ns(), std::time::Instant::now());
        let input = relief::input(&self.live, &self.relief.config, &|c| self.label(c), now);
        let decisions = self.relief.cycle(&input, now);
        self.relief.execute(&decisions, &self.settings.audit_log, at);
    }

    /// Answer `first` and every command already queued behind it from one moment of the table;
    /// the metrics figures are built at most once for the lot. A batch that made a pass over the
    /// table gives the heap it freed back ([`heap::trim`]).
    fn commands(&mut self, first: Command, queue: &mut mpsc::Receiver<Command>) {
        self.live.pump();
        let mut figures: Option<Arc<Figures>> = None;
        let mut passes = 0;
        let mut next = Some(first);
        while let Some(cmd) = next {
            match cmd {
                Command::Metrics { reply } => {
                    let f = figures.get_or_insert_with(|| Arc::new(self.figures()));
                    let _ = reply.send(f.clone());
                }
                Command::Tw { by, sort, reply } => {
                    passes += 1;
                    let _ = reply.send(self.live.snapshot(by, sort));
                }
                Command::TwIn { query: q, reply } => {
                    passes += 1;
                    let _ = reply.send(self.live.snapshot_in(q.by, q.sort, &q.view, q.netns.as_deref()));
                }
                Command::Killed { trigger, totals } => {
                    let mut c = self.kills.lock().expect("kill counts");
                    *c.entry((trigger, "killed")).or_default() += totals.killed as u64;
                    *c.entry((trigger, "skipped")).or_default() += totals.gone as u64;
                    *c.entry((trigger, "failed")).or_default() += totals.failed as u64;
                }
                Command::Relief { action, reply } => {
                    let _ = reply.send(self.relief.act(action, crate::live::monotonic_ns()));
                }
                Command::Status { reply } => {
                    let _ = reply.send(Status { ready: self.ready, sockets: self.live.table.len() as u64 });
                }
                Command::Subscribe { reply } => {
                    let _ = reply.send(self.tap.subscribe());
                }
                Command::Kill { req, caller, reply } => self.kill(*req, caller, reply),
            }
            next = queue.try_recv().ok();
        }
        if passes > 0 || figures.is_some() {
            heap::trim();
        }
    }

    /// Kills are blocking netlink work: on a blocking thread, answered from there.
    fn kill(
        &self,
        req: KillRequest,
        caller: Caller,
        reply: tokio::sync::oneshot::Sender<Result<KillReply, CommandError>>,
    ) {
        let counts = self.kills.clone();
        let audit_log = self.settings.audit_log.clone();
        tokio::task::spawn_blocking(move || {
            let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(caller.uid))
                .ok()
                .flatten()
                .map_or_else(|| caller.uid.to_string(), |u| u.name);
            let actor = Actor {
                uid: caller.uid,
                user,
                pid: caller.pid,
                argv: vec!["twreset-agent-api".into()],
                trigger: "api",
            };
            let dry_run = req.opts.dry_run;
            let run = Request { opts: &req.opts, scope: req.scope, json: true, audit_log: &audit_log };
            let mut out = Vec::new();
            let answer = match execute(run, actor, &mut out) {
                Ok(t) => {
                    if !dry_run {
                        let mut c = counts.lock().expect("kill counts");
                        *c.entry(("api", "killed")).or_default() += t.killed as u64;
                        *c.entry(("api", "skipped")).or_default() += t.gone as u64;
                        *c.entry(("api", "failed")).or_default() += t.failed as u64;
                    }
                    let lines = out.split(|&b| b == b'\n').filter_map(|l| serde_json::from_slice(l).ok()).collect();
                    Ok(KillReply { lines, ok: t.ok() })
                }
                Err(e) => Err(CommandError::Kill { message: format!("{:#}", anyhow::Error::from(e)) }),
            };
            let _ = reply.send(answer);
        });
    }

    fn netns(&mut self, changes: Vec<Change>) {
        for c in changes {
            match c {
                Change::Added(found) => {
                    let cookie = found.identity.cookie;
                    if let Some(r) = found.range {
                        self.live.ranges.per_ns.insert(cookie, r);
                    }
                    if let Some((started, dump)) = &found.dump {
                        match self.live.seed_netns(cookie, *started, dump) {
                            Some(n) => tracing::info!(
                                "namespace {} appeared; seeded {n} sockets",
                                netns_label(&found.identity)
                            ),
                            None => tracing::info!(
                                "namespace {} appeared, busy: following its events",
                                netns_label(&found.identity)
                            ),
                        }
                    }
                    self.names.insert(cookie, found.identity);
                }
                Change::Renamed(id) => {
                    self.names.insert(id.cookie, id);
                }
                Change::Gone { cookie } => {
                    let dropped = self.live.forget_netns(cookie);
                    if let Some(id) = self.names.remove(&cookie) {
                        tracing::info!("namespace {} is gone; {dropped} sockets dropped with it", netns_label(&id));
                    }
                }
            }
        }
    }

    fn label(&self, cookie: u64) -> String {
        match self.names.get(&cookie) {
            Some(id) => netns_label(id),
            None => netns_label(&NsIdentity { cookie, ..NsIdentity::default() }),
        }
    }

    /// What `/metrics` shows, from the table as it is now.
    fn figures(&self) -> Figures {
        let table = &self.live.table;
        let counters = table.ns_counters();
        let overflow: HashMap<u64, u64> = self.live.overflows().per_ns().collect();
        let mut per_ns: HashMap<u64, NsFigures> = HashMap::new();
        // Every namespace that exists, and any the table has sockets of.
        for &cookie in self.names.keys() {
            per_ns.entry(cookie).or_default();
        }
        let mut peers = Vec::new();
        for p in table.peer_counts() {
            let ns = per_ns.entry(p.netns).or_default();
            ns.time_wait += p.time_wait;
            ns.fin_wait2 += p.fin_wait2;
            peers.push(PeerFigure {
                netns: self.label(p.netns),
                peer: p.peer.to_string(),
                sockets: p.time_wait + p.fin_wait2,
            });
        }
        let namespaces = per_ns
            .into_iter()
            .map(|(cookie, mut f)| {
                f.netns = self.label(cookie);
                if let Some(c) = counters.get(&cookie) {
                    (f.created, f.expired, f.killed) = (c.created, c.expired, c.killed);
                }
                f.overflow = overflow.get(&cookie).copied().unwrap_or(0);
                f
            })
            .collect();
        let dests = self
            .live
            .snapshot(By::Dest, Sort::Pressure)
            .rows
            .into_iter()
            .filter_map(|r| {
                let (Group::Dest(d), Some(p)) = (r.group, r.pressure) else { return None };
                Some(DestFigure {
                    netns: self.label(d.netns),
                    laddr: d.laddr.to_string(),
                    raddr: d.raddr.to_string(),
                    rport: d.rport.to_string(),
                    held: p.holding,
                    ratio: p.ratio,
                })
            })
            .collect();
        let s = *self.stats.borrow();
        let c = table.counters();
        let mut kills: Vec<(&'static str, &'static str, u64)> = ["cli", "api", "policy"]
            .into_iter()
            .flat_map(|t| ["killed", "failed", "skipped"].map(|r| (t, r, 0)))
            .collect();
        for ((t, r), n) in self.kills.lock().expect("kill counts").iter() {
            if let Some(k) = kills.iter_mut().find(|k| (k.0, k.1) == (*t, *r)) {
                k.2 = *n;
            }
        }
        Figures {
            version: env!("CARGO_PKG_VERSION").into(),
            kernel: self.kernel.clone(),
            top_n: self.settings.top_n,
            namespaces,
            peers,
            dests,
            lost: vec![
                ("ringbuf_full", s.loss.ringbuf_full),
                ("recursion_miss", s.loss.recursion_misses),
                ("read_error", s.loss.read_errors),
                ("decode_error", s.decode_errors),
                ("unseen", c.unseen),
            ],
            drift: c.drift,
            resyncs: c.resyncs,
            interned: {
                let i = table.interned();
                [("namespaces", i.namespaces as u64), ("addresses", i.addresses as u64), ("pairs", i.pairs as u64)]
            },
            kills,
            relief: self.relief.decision_counts(),
            owners: self.names.values().filter_map(|id| id.owner.as_ref().map(|(_, fields)| fields.clone())).collect(),
        }
    }
}

#[cfg(test)]
#[path = "owner_tests.rs"]
mod tests;
