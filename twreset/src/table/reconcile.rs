//! Seeding from, and reconciling with, a sock_diag dump: the kernel's own list is the truth.
//!
//! Both take the dump one socket at a time as it is read ([`Table::seed_one`], [`Table::observe`]),
//! so no copy of a 200k-socket dump is ever held: the table's own entries are the only per-socket
//! memory.
//!
//! A dump is not atomic with the event stream: events about a socket may be applied while its dump
//! is in flight. [`Table::begin_reconcile`] marks the dump's start; keys touched by events from
//! then on are left alone by the reconcile (the events are newer than the dump). The dump's verdict
//! is only drawn at [`Table::end_reconcile`], after the events older than the dump have landed:
//! meanwhile each listed socket is marked in its entry (`Slot::SEEN`), and the few
//! the table lacks (or loses before the end) wait in a side list.

use super::{Key, Slot, TW_LEN_NS, Table, Watch};
use crate::{sock::DiagSocket, state::TcpState};

const NS_PER_MS: u64 = 1_000_000;

/// What a reconcile found wrong and fixed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drift {
    /// In the kernel's dump, not in the table (added).
    pub missing: u64,
    /// In the table, not in the dump (removed).
    pub extra: u64,
}

impl Drift {
    pub fn total(&self) -> u64 {
        self.missing + self.extra
    }
}

/// Which way a socket was wrong at a reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriftKind {
    /// Listed by the kernel, not in the table.
    Missing,
    /// In the table, not listed by the kernel.
    Extra,
}

/// How many wrong sockets a reconcile keeps as examples: enough to debug by, never a copy of a
/// table that was wrong wholesale (after lost events).
const DRIFT_SAMPLES: usize = 8;

/// A socket of the reconcile's dump that has no marked entry (yet).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Listed {
    key: Key,
    expires_ns: u64,
    substate: TcpState,
}

fn substate(d: &DiagSocket) -> TcpState {
    if d.state == TcpState::FinWait2 { TcpState::FinWait2 } else { TcpState::TimeWait }
}

/// A seeded socket's entry into TIME_WAIT, estimated from its remaining timer (60 s timers).
fn estimated_created(now_ns: u64, expires_ns: u64) -> u64 {
    expires_ns.saturating_sub(TW_LEN_NS).min(now_ns)
}

impl Table {
    /// Make room for `additional` more entries at once (a dump's expected size), so the map is
    /// not rehashed, with the old and new bucket arrays both resident, while a seed fills it.
    pub fn reserve(&mut self, additional: usize) {
        self.map.reserve(additional);
    }

    /// Give back a map far larger than its entries: a sizing hint that was too high (a kernel
    /// whose sockstat counts the tw sockets of every namespace) must not stay resident.
    pub fn shrink_if_sparse(&mut self) {
        self.map.shrink_if_sparse();
    }

    /// Add the tw sockets of a dump taken at `now_ns` (see [`Table::seed_one`]). Returns how many
    /// were added.
    pub fn seed(&mut self, now_ns: u64, dump: &[DiagSocket]) -> usize {
        dump.iter().filter(|d| self.seed_one(now_ns, d)).count()
    }

    /// Add one socket of a dump taken at `now_ns` (only `timewait` entries count). A socket
    /// already tracked keeps its entry time; its timer is taken from the dump. True if added.
    pub fn seed_one(&mut self, now_ns: u64, d: &DiagSocket) -> bool {
        if !d.timewait {
            return false;
        }
        let k = self.keys.intern(&d.key);
        let expires = now_ns.saturating_add(u64::from(d.expires_ms) * NS_PER_MS);
        let epoch = self.map.epoch();
        if let Some(slot) = self.map.get_mut(&k) {
            slot.rearm(epoch, expires, substate(d));
            return false;
        }
        let slot = self.map.slot(estimated_created(now_ns, expires), expires, substate(d));
        self.map.insert(k, slot);
        true
    }

    /// Mark the start of a dump: events with `ts_ns >= now_ns` applied from here until
    /// [`Table::end_reconcile`] win over the dump for the sockets they name.
    pub fn begin_reconcile(&mut self, now_ns: u64) {
        self.abort_reconcile();
        self.watch = Some(Watch { since_ns: now_ns, ..Watch::default() });
    }

    /// Forget a started reconcile (its dump failed).
    pub fn abort_reconcile(&mut self) {
        if self.watch.take().is_some() {
            self.map.values_mut().for_each(|s| s.set_seen(false));
        }
    }

    /// Take one socket of the dump of the reconcile in progress (only `timewait` entries count;
    /// without [`Table::begin_reconcile`] it is ignored). Its entry takes the dump's timer and is
    /// marked as listed, unless an event since the dump's start already spoke for it.
    pub fn observe(&mut self, d: &DiagSocket) {
        if !d.timewait {
            return;
        }
        let Some(since) = self.watch.as_ref().map(|w| w.since_ns) else { return };
        let key = self.keys.intern(&d.key);
        let w = self.watch.as_mut().expect("checked above");
        if w.touched.contains(&key) {
            return;
        }
        let expires_ns = since.saturating_add(u64::from(d.expires_ms) * NS_PER_MS);
        let epoch = self.map.epoch();
        match self.map.get_mut(&key) {
            Some(slot) => {
                slot.rearm(epoch, expires_ns, substate(d));
                slot.set_seen(true);
            }
            None => w.unmarked.push(Listed { key, expires_ns, substate: substate(d) }),
        }
    }

    /// An event removed a listed entry while the reconcile waits: the dump still lists it.
    pub(super) fn keep_listed(&mut self, key: Key, slot: Slot) {
        if let Some(w) = &mut self.watch {
            let expires_ns = slot.expires_ns(self.map.epoch());
            w.unmarked.push(Listed { key, expires_ns, substate: slot.substate() });
        }
    }

    /// Draw the verdict of the reconcile in progress: add what its dump listed and the table
    /// lacks, drop what the table holds and the dump did not list, count both as drift. Keys
    /// touched by events since the dump's start, and entries created after it, are left alone.
    /// `forced` counts it as a resync (after lost events).
    pub fn end_reconcile(&mut self, forced: bool) -> Drift {
        let Watch { since_ns, touched, unmarked } = self.watch.take().unwrap_or_default();
        let mut drift = Drift::default();
        self.drift_samples.clear();
        for l in unmarked {
            if touched.contains(&l.key) {
                continue;
            }
            let epoch = self.map.epoch();
            match self.map.get_mut(&l.key) {
                Some(slot) => slot.rearm(epoch, l.expires_ns, l.substate),
                None => {
                    let created = estimated_created(since_ns, l.expires_ns);
                    let slot = self.map.slot(created, l.expires_ns, l.substate);
                    self.map.insert(l.key, slot);
                    drift.missing += 1;
                    if self.drift_samples.len() < DRIFT_SAMPLES {
                        self.drift_samples.push((DriftKind::Missing, self.keys.sock_key(&l.key)));
                    }
                }
            }
            self.map.get_mut(&l.key).expect("just placed").set_seen(true);
        }
        let (before, epoch) = (self.map.len(), self.map.epoch());
        let (keys, samples) = (&self.keys, &mut self.drift_samples);
        self.map.retain(|k, s| {
            let keep = s.seen() || touched.contains(k) || s.created_ns(epoch) > since_ns;
            s.set_seen(false);
            if !keep && samples.len() < 2 * DRIFT_SAMPLES {
                samples.push((DriftKind::Extra, keys.sock_key(k)));
            }
            keep
        });
        drift.extra = (before - self.map.len()) as u64;
        self.counters.drift += drift.total();
        self.counters.reconciles += 1;
        self.counters.resyncs += u64::from(forced);
        drift
    }

    /// Up to a few of the sockets the last reconcile added (missing) or dropped (extra), for the
    /// log: a drift is a bug or a loss somewhere, and the socket it hit is the first clue.
    pub fn drift_samples(&self) -> &[(DriftKind, crate::sock::SockKey)] {
        &self.drift_samples
    }

    /// Compare with a whole dump started at `now_ns` (which [`Table::begin_reconcile`] may have
    /// marked already), fix the table to match it, count the drift.
    pub fn reconcile(&mut self, now_ns: u64, dump: &[DiagSocket]) -> Drift {
        self.reconcile_with(now_ns, dump, false)
    }

    /// A reconcile forced by lost events (counted in `resyncs`).
    pub fn resync(&mut self, now_ns: u64, dump: &[DiagSocket]) -> Drift {
        self.reconcile_with(now_ns, dump, true)
    }

    fn reconcile_with(&mut self, now_ns: u64, dump: &[DiagSocket], forced: bool) -> Drift {
        if self.watch.is_none() {
            self.begin_reconcile(now_ns);
        }
        dump.iter().for_each(|d| self.observe(d));
        self.end_reconcile(forced)
    }
}
