//! Seeding from, and reconciling with, a sock_diag dump: the kernel's own list is the truth.
//!
//! A dump is not atomic with the event stream: events about a socket may be applied while its dump
//! is in flight. [`Table::begin_reconcile`] marks the dump's start; keys touched by events from
//! then on are left alone by the reconcile (the events are newer than the dump).

use std::collections::HashMap;

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

fn substate(d: &DiagSocket) -> TcpState {
    if d.state == TcpState::FinWait2 { TcpState::FinWait2 } else { TcpState::TimeWait }
}

/// A seeded socket's entry into TIME_WAIT, estimated from its remaining timer (60 s timers).
fn estimated_created(now_ns: u64, expires_ns: u64) -> u64 {
    expires_ns.saturating_sub(TW_LEN_NS).min(now_ns)
}

impl Table {
    /// Add the tw sockets of a dump taken at `now_ns` (only `timewait` entries count). Sockets
    /// already tracked keep their entry time; their timer is taken from the dump. Returns how many
    /// were added.
    pub fn seed(&mut self, now_ns: u64, dump: &[DiagSocket]) -> usize {
        let mut added = 0;
        for d in dump.iter().filter(|d| d.timewait) {
            let k = self.keys.intern(&d.key);
            let expires = now_ns.saturating_add(u64::from(d.expires_ms) * NS_PER_MS);
            match self.map.get_mut(&k) {
                Some(slot) => slot.rearm(expires, substate(d)),
                None => {
                    self.map.insert(k, Slot::new(estimated_created(now_ns, expires), expires, substate(d)));
                    added += 1;
                }
            }
        }
        added
    }

    /// Mark the start of a dump: events with `ts_ns >= now_ns` applied from here until
    /// [`Table::reconcile`] win over the dump for the sockets they name.
    pub fn begin_reconcile(&mut self, now_ns: u64) {
        self.watch = Some(Watch { since_ns: now_ns, touched: Default::default() });
    }

    /// Forget a started reconcile (its dump failed).
    pub fn abort_reconcile(&mut self) {
        self.watch = None;
    }

    /// Compare with a dump started at `now_ns`, fix the table to match it, count the drift.
    pub fn reconcile(&mut self, now_ns: u64, dump: &[DiagSocket]) -> Drift {
        let touched = self.watch.take().map(|w| w.touched).unwrap_or_default();
        let mut drift = Drift::default();
        let mut in_dump: HashMap<Key, (u64, TcpState)> = HashMap::with_capacity(dump.len());
        for d in dump.iter().filter(|d| d.timewait) {
            let k = self.keys.intern(&d.key);
            in_dump.insert(k, (now_ns.saturating_add(u64::from(d.expires_ms) * NS_PER_MS), substate(d)));
        }
        for (k, (expires, sub)) in &in_dump {
            if touched.contains(k) {
                continue;
            }
            match self.map.get_mut(k) {
                Some(slot) => slot.rearm(*expires, *sub),
                None => {
                    self.map.insert(*k, Slot::new(estimated_created(now_ns, *expires), *expires, *sub));
                    drift.missing += 1;
                }
            }
        }
        let before = self.map.len();
        // Entries created after the dump started may simply be newer than it.
        self.map.retain(|k, s| in_dump.contains_key(k) || touched.contains(k) || s.created_ns > now_ns);
        drift.extra = (before - self.map.len()) as u64;
        self.counters.drift += drift.total();
        self.counters.reconciles += 1;
        drift
    }

    /// A reconcile forced by lost events (counted in `resyncs`).
    pub fn resync(&mut self, now_ns: u64, dump: &[DiagSocket]) -> Drift {
        self.counters.resyncs += 1;
        self.reconcile(now_ns, dump)
    }
}
