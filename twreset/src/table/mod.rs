//! The live TIME_WAIT table: every tw socket in scope keyed by (namespace, 4-tuple), kept from a
//! sock_diag seed plus kernel [`TwEvent`]s. Pure: no I/O, time is passed in as CLOCK_MONOTONIC ns.

mod ages;
mod key;
mod map;
pub mod per_ns;
mod reconcile;
mod store;
pub mod view;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod view_tests;

use std::collections::{HashMap, HashSet};

use key::{DestKey, Key, Keys};
use store::{Slot, Store};

/// The hasher of the per-socket maps: SipHash was a third of the time a 200k-socket seed spent
/// in the table. foldhash is randomly seeded per process (keys come from remote peers).
pub(crate) type FastHash = foldhash::fast::RandomState;
pub use per_ns::{Collected, NsCounters, PeerCount};
pub use reconcile::Drift;
pub use view::{By, Group, Row, Snapshot, Sort, Totals, ViewConfig};

use crate::{
    ports::{Dest, PortSpaces},
    state::TW_LEN_NS,
    tw_event::{TwCause, TwEvent, TwEventKind},
};

/// Kernel timers fire late (observed up to 1.5 s): an entry is only overdue well past its expiry.
pub const OVERDUE_GRACE_NS: u64 = 5_000_000_000;
/// How long per-destination early-kill counts are kept once a destination stops seeing kills.
pub const KILL_MEMORY_NS: u64 = 15 * 60 * 1_000_000_000;

const NS_PER_MS: u64 = 1_000_000;

/// Early kills of one destination, remembered for [`KILL_MEMORY_NS`] after the last one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Kills {
    pub by_cause: [u32; 6],
    pub last_ns: u64,
}

/// Cumulative counters since the table was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub created: u64,
    pub rearmed: u64,
    pub expired: u64,
    /// Early kills by [`TwCause::index`].
    pub killed: [u64; 6],
    /// Closes that found `tcp_max_tw_buckets` full (no TIME_WAIT socket created): the kernel's
    /// `TCPTimeWaitOverflow` of the namespaces in scope since the table started
    /// ([`Table::set_overflow`]).
    pub overflow: u64,
    /// Kernel events that never reached userspace (set from the probe's loss counters).
    pub lost: u64,
    /// Creations no timer event reported, learned from the `sock_ops` program
    /// ([`TwEventKind::Born`]). Part of `created`; not a loss: the table has them.
    pub born: u64,
    /// Sockets the table had wrong at reconcile time (missing + extra): should stay 0.
    pub drift: u64,
    /// Changes no event reported and no loss counter saw, found against the kernel's own counts
    /// (see [`crate::crosscheck`]). Part of `lost`.
    pub unseen: u64,
    /// Reconciles forced by lost events.
    pub resyncs: u64,
    /// All reconciles, periodic and forced.
    pub reconciles: u64,
    /// Entries dropped by [`Table::expire_overdue`] (their expiry event never came).
    pub overdue: u64,
    /// Events about sockets the table did not hold (re-arm, expiry or kill of an unknown socket).
    pub stray: u64,
}

/// A reconcile in progress: keys touched by events since its dump started (the dump may predate
/// them), and the dump's sockets it could not mark in the table (see [`Table::observe`]).
#[derive(Debug, Default)]
struct Watch {
    since_ns: u64,
    touched: HashSet<Key, FastHash>,
    unmarked: Vec<reconcile::Listed>,
}

#[derive(Debug, Default)]
pub struct Table {
    keys: Keys,
    map: Store,
    kills: HashMap<DestKey, Kills, FastHash>,
    counters: Counters,
    watch: Option<Watch>,
    /// Some of the sockets the last reconcile found wrong (see [`Table::drift_samples`]).
    drift_samples: Vec<(reconcile::DriftKind, crate::sock::SockKey)>,
    /// Lifecycle counters per interned namespace id (see [`per_ns`]).
    ns_counters: Vec<NsCounters>,
    /// Ids of namespaces dropped as gone, released by [`Table::collect`] once no key holds them.
    dropped_ns: Vec<u32>,
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of tracked tw sockets (TIME_WAIT and FIN_WAIT2 substate).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Bytes of the socket maps' allocations (see `store.rs`). Interners and kill counts are
    /// per namespace or destination, not per socket.
    pub fn approx_bytes(&self) -> usize {
        self.map.approx_bytes()
    }

    /// Record the probe's cumulative lost-event count. True when it grew: the table may now be
    /// wrong and the caller should [`Table::resync`].
    pub fn set_lost(&mut self, total: u64) -> bool {
        let grew = total > self.counters.lost;
        self.counters.lost = self.counters.lost.max(total);
        grew
    }

    /// Entries per namespace cookie (one pass over the table).
    pub fn counts_by_netns(&self) -> HashMap<u64, usize, FastHash> {
        let mut per_id = vec![0usize; self.keys.ns_count() as usize];
        self.map.iter().for_each(|(k, _)| per_id[k.ns as usize] += 1);
        let live = |id: &(usize, usize)| self.keys.ns_live(id.0 as u32);
        per_id.into_iter().enumerate().filter(live).map(|(id, n)| (self.keys.netns(id as u32), n)).collect()
    }

    /// Count `n` more unseen changes (see [`Counters::unseen`]).
    pub fn add_unseen(&mut self, n: u64) {
        self.counters.unseen += n;
    }

    /// Record the kernel's count of overflows in scope since the table started.
    pub fn set_overflow(&mut self, total: u64) {
        self.counters.overflow = self.counters.overflow.max(total);
    }

    fn touch(&mut self, ts_ns: u64, k: Key) {
        if let Some(w) = &mut self.watch
            && ts_ns >= w.since_ns
        {
            w.touched.insert(k);
        }
    }

    /// Apply one kernel event. True when it added a socket the kernel created (a creation to
    /// compare with the kernel's count, see [`crate::crosscheck`]).
    pub fn apply(&mut self, ev: &TwEvent) -> bool {
        let ts = ev.ts_ns;
        match ev.kind {
            TwEventKind::Created { substate, timeout_ms } => {
                let k = self.keys.intern(&ev.key);
                self.touch(ts, k);
                let expires = ts.saturating_add(u64::from(timeout_ms) * NS_PER_MS);
                let slot = self.map.slot(ts, expires, substate);
                // A replaced entry that the reconcile's dump listed stays listed.
                if self.map.insert(k, slot).is_some_and(|old| old.seen())
                    && let Some(s) = self.map.get_mut(&k)
                {
                    s.set_seen(true);
                }
                self.counters.created += 1;
                self.ns_counters_mut(k.ns).created += 1;
                return true;
            }
            TwEventKind::Born { substate } => {
                let k = self.keys.intern(&ev.key);
                // Already there: its `Created` came first (same CPU, same call), and this one
                // only repeats it.
                if self.map.contains_key(&k) {
                    return false;
                }
                self.touch(ts, k);
                let slot = self.map.slot(ts, ts.saturating_add(TW_LEN_NS), substate);
                self.map.insert(k, slot);
                self.counters.created += 1;
                self.counters.born += 1;
                self.ns_counters_mut(k.ns).created += 1;
                return true;
            }
            TwEventKind::Rearmed { substate, timeout_ms } => {
                let k = self.keys.intern(&ev.key);
                self.touch(ts, k);
                let expires = ts.saturating_add(u64::from(timeout_ms) * NS_PER_MS);
                let epoch = self.map.epoch();
                match self.map.get_mut(&k) {
                    Some(slot) => slot.rearm(epoch, expires, substate),
                    None => {
                        // Its creation was lost or predates the seed: it exists now, so track it.
                        self.counters.stray += 1;
                        let slot = self.map.slot(ts, expires, substate);
                        self.map.insert(k, slot);
                    }
                }
                self.counters.rearmed += 1;
            }
            TwEventKind::Expired => {
                self.counters.expired += 1;
                if let Some(k) = self.keys.lookup(&ev.key) {
                    self.ns_counters_mut(k.ns).expired += 1;
                }
                self.remove(ts, &ev.key);
            }
            TwEventKind::Killed { cause } => {
                self.counters.killed[cause.index()] += 1;
                // A deleted namespace's purge may come after the namespace was dropped: it must
                // not bring the namespace and its addresses back.
                let k = match cause {
                    TwCause::NetnsGone => self.keys.lookup(&ev.key),
                    _ => Some(self.keys.intern(&ev.key)),
                };
                if let Some(k) = k {
                    self.ns_counters_mut(k.ns).killed[cause.index()] += 1;
                    let kills = self.kills.entry(k.dest()).or_default();
                    kills.by_cause[cause.index()] = kills.by_cause[cause.index()].saturating_add(1);
                    kills.last_ns = kills.last_ns.max(ts);
                }
                self.remove(ts, &ev.key);
            }
            // Counted from the kernel's own counter ([`Table::set_overflow`]); a table's probe
            // sends none.
            TwEventKind::Overflow => {}
        }
        false
    }

    fn remove(&mut self, ts: u64, key: &crate::sock::SockKey) {
        match self.keys.lookup(key) {
            Some(k) => {
                self.touch(ts, k);
                match self.map.remove(&k) {
                    Some(slot) if slot.seen() => self.keep_listed(k, slot),
                    Some(_) => {}
                    None => self.counters.stray += 1,
                }
            }
            None => self.counters.stray += 1,
        }
    }

    /// Safety net for lost expiry events: drop entries well past their timer, and forget kill
    /// counts of destinations quiet for [`KILL_MEMORY_NS`]. Returns the entries dropped.
    pub fn expire_overdue(&mut self, now_ns: u64) -> usize {
        let (before, epoch) = (self.map.len(), self.map.epoch());
        self.map.retain(|_, s| s.expires_ns(epoch).saturating_add(OVERDUE_GRACE_NS) >= now_ns);
        let dropped = before - self.map.len();
        self.counters.overdue += dropped as u64;
        self.kills.retain(|_, k| k.last_ns.saturating_add(KILL_MEMORY_NS) > now_ns);
        dropped
    }

    /// Early kills by cause, summed over the whole table (cumulative).
    pub fn killed(&self, cause: TwCause) -> u64 {
        self.counters.killed[cause.index()]
    }
}
