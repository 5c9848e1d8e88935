//! The socket map's storage: IPv4 sockets under 12-byte keys, IPv6 ones under 28, each with an
//! 8-byte [`Slot`] whose times count milliseconds from the store's epoch.
//!
//! A hash map's buckets come in powers of two, at most 7/8 full, so a map just past a step is
//! half empty: at one million sockets the buckets are 2^21 whatever the entry. What a socket
//! costs is therefore the entry's size, paid about twice. An IPv4 entry is 20 bytes plus a
//! control byte (44 bytes a socket at a million, 24 just before a step); an IPv6 one 36 plus one.
//! An IPv4 key names its (namespace, local address) pair by one id of the store's own: those
//! pairs are few (a namespace has a handful of addresses); a pair no key holds is released by
//! [`Store::mark_held`], as the table's interners release namespaces and addresses.

use super::{
    NS_PER_MS,
    key::{Interner, Key, LOCAL_V6, Marks},
    map::Map,
};
use crate::state::TcpState;

/// One tracked socket: when it entered TIME_WAIT, in ms after the store's epoch (rounded up),
/// and its timer's expiry in ms after that, with two flags in the same word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    created_ms: u32,
    /// Expiry in ms after `created_ms` (low 30 bits, saturating: ~12 days, far beyond any tw
    /// timer) plus [`Slot::FIN_WAIT2`] and [`Slot::SEEN`].
    bits: u32,
}

impl Slot {
    const MS_MASK: u32 = (1 << 30) - 1;
    /// Substate FIN_WAIT2 (an orphaned FIN_WAIT2 kept as a tw socket), else TIME_WAIT.
    const FIN_WAIT2: u32 = 1 << 30;
    /// Listed by the dump of the reconcile in progress (cleared when it ends).
    const SEEN: u32 = 1 << 31;

    pub fn created_ns(&self, epoch_ns: u64) -> u64 {
        epoch_ns.saturating_add(u64::from(self.created_ms) * NS_PER_MS)
    }

    /// Set the timer: it expires at `expires_ns` (the table's clock) in `substate`.
    pub fn rearm(&mut self, epoch_ns: u64, expires_ns: u64, substate: TcpState) {
        let ms = expires_ns.saturating_sub(self.created_ns(epoch_ns)) / NS_PER_MS;
        let ms = u32::try_from(ms).unwrap_or(u32::MAX).min(Self::MS_MASK);
        let fin_wait2 = if substate == TcpState::FinWait2 { Self::FIN_WAIT2 } else { 0 };
        self.bits = ms | fin_wait2 | (self.bits & Self::SEEN);
    }

    pub fn expires_ns(&self, epoch_ns: u64) -> u64 {
        self.created_ns(epoch_ns).saturating_add(u64::from(self.bits & Self::MS_MASK) * NS_PER_MS)
    }

    pub fn fin_wait2(&self) -> bool {
        self.bits & Self::FIN_WAIT2 != 0
    }

    pub fn substate(&self) -> TcpState {
        if self.fin_wait2() { TcpState::FinWait2 } else { TcpState::TimeWait }
    }

    pub fn seen(&self) -> bool {
        self.bits & Self::SEEN != 0
    }

    pub fn set_seen(&mut self, seen: bool) {
        self.bits = if seen { self.bits | Self::SEEN } else { self.bits & !Self::SEEN };
    }
}

/// An IPv4 socket's key: its (namespace, local address) pair's id in [`Locals`], the remote
/// address's four bytes, the ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key4 {
    local: u32,
    raddr: [u8; 4],
    lport: u16,
    rport: u16,
}

/// The (namespace id, local address id) pairs of IPv4 keys, each given a dense id.
type Locals = Interner<(u32, u32)>;

/// The short form of an IPv4 socket's key (its remote address is stored IPv4-mapped), given its
/// pair's id.
fn short(k: &Key, local: u32) -> Key4 {
    let [.., a, b, c, d] = k.raddr;
    Key4 { local, raddr: [a, b, c, d], lport: k.lport, rport: k.rport }
}

/// The full key of an IPv4 entry.
fn long(locals: &Locals, k: &Key4) -> Key {
    let (ns, laddr) = locals.value(k.local);
    let mut raddr = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];
    raddr[12..].copy_from_slice(&k.raddr);
    Key { ns, laddr, raddr, lport: k.lport, rport: k.rport }
}

/// How far before the first time it stores the epoch is put, so that a slightly older one (a
/// seeded socket's estimated entry, a late event) still fits.
const EPOCH_SLACK_NS: u64 = 3600 * 1_000_000_000;
/// Past this many ms after the epoch, the epoch moves forward (about 24.8 days).
const REBASE_AFTER_MS: u64 = 1 << 31;

/// The IPv4 and IPv6 maps and the epoch their slots count from.
#[derive(Debug, Default)]
pub(crate) struct Store {
    v4: Map<Key4, Slot>,
    v6: Map<Key, Slot>,
    locals: Locals,
    /// A whole number of ms; set by the first slot made.
    epoch_ns: Option<u64>,
}

impl Store {
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch_ns.unwrap_or(0)
    }

    /// A slot for a socket that entered TIME_WAIT at `created_ns` and expires at `expires_ns`.
    /// Moves the epoch forward first when `created_ns` lies too far past it.
    pub fn slot(&mut self, created_ns: u64, expires_ns: u64, substate: TcpState) -> Slot {
        let epoch = match self.epoch_ns {
            Some(e) if created_ns.saturating_sub(e) / NS_PER_MS < REBASE_AFTER_MS => e,
            Some(_) => self.rebase(created_ns),
            None => *self.epoch_ns.insert(epoch_for(created_ns)),
        };
        // Rounded up: an entry never looks older than it is (a reconcile keeps entries created
        // after its dump started).
        let ms = created_ns.saturating_sub(epoch).div_ceil(NS_PER_MS);
        let mut s = Slot { created_ms: u32::try_from(ms).unwrap_or(u32::MAX), bits: 0 };
        s.rearm(epoch, expires_ns, substate);
        s
    }

    /// Move the epoch to fit `created_ns`, shifting every slot (once in about 24 days). Slots
    /// from before the new epoch (none that are not long overdue) are clamped to it.
    #[cold]
    fn rebase(&mut self, created_ns: u64) -> u64 {
        let (old, new) = (self.epoch(), epoch_for(created_ns));
        let shift = u32::try_from((new - old) / NS_PER_MS).unwrap_or(u32::MAX);
        let move_slot = |s: &mut Slot| {
            let expires_ms = (s.bits & Slot::MS_MASK).saturating_sub(shift.saturating_sub(s.created_ms));
            s.created_ms = s.created_ms.saturating_sub(shift);
            s.bits = (s.bits & !Slot::MS_MASK) | expires_ms;
        };
        self.v4.values_mut().for_each(move_slot);
        self.v6.values_mut().for_each(move_slot);
        self.epoch_ns = Some(new);
        new
    }

    pub fn get(&self, k: &Key) -> Option<&Slot> {
        if !k.is_v4() {
            return self.v6.get(k);
        }
        self.v4.get(&short(k, self.locals.get(&(k.ns, k.laddr))?))
    }

    pub fn get_mut(&mut self, k: &Key) -> Option<&mut Slot> {
        if !k.is_v4() {
            return self.v6.get_mut(k);
        }
        self.v4.get_mut(&short(k, self.locals.get(&(k.ns, k.laddr))?))
    }

    pub fn contains_key(&self, k: &Key) -> bool {
        self.get(k).is_some()
    }

    /// Insert or replace; returns the slot replaced.
    pub fn insert(&mut self, k: Key, s: Slot) -> Option<Slot> {
        if !k.is_v4() {
            return self.v6.insert(k, s);
        }
        let local = self.locals.intern((k.ns, k.laddr));
        self.v4.insert(short(&k, local), s)
    }

    pub fn remove(&mut self, k: &Key) -> Option<Slot> {
        if !k.is_v4() {
            return self.v6.remove(k);
        }
        self.v4.remove(&short(k, self.locals.get(&(k.ns, k.laddr))?))
    }

    /// Every entry, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = (Key, &Slot)> {
        let locals = &self.locals;
        self.v4.iter().map(|(k, s)| (long(locals, k), s)).chain(self.v6.iter().map(|(k, s)| (*k, s)))
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.v4.values_mut().chain(self.v6.values_mut())
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&Key, &mut Slot) -> bool) {
        let locals = &self.locals;
        self.v4.retain(|k, s| keep(&long(locals, k), s));
        self.v6.retain(|k, s| keep(k, s));
    }

    /// Release the (namespace, local address) pairs no IPv4 key holds, then mark in `ns` and
    /// `local` the namespace and local address ids (family bit cleared) that the keys hold. One
    /// pass over the keys.
    pub fn mark_held(&mut self, ns: &mut Marks, local: &mut Marks) {
        let mut pairs = Marks::new(self.locals.len());
        self.v4.keys().for_each(|k| pairs.set(k.local));
        self.locals.release_unless(|id| pairs.get(id));
        for id in 0..self.locals.len() as u32 {
            if pairs.get(id) {
                let (n, l) = self.locals.value(id);
                ns.set(n);
                local.set(l & !LOCAL_V6);
            }
        }
        for k in self.v6.keys() {
            ns.set(k.ns);
            local.set(k.laddr & !LOCAL_V6);
        }
    }

    /// (namespace, local address) pairs interned now.
    pub fn pairs(&self) -> usize {
        self.locals.live_len()
    }

    /// Room for `additional` more IPv4 entries (a dump's expected size; IPv6 ones, rarer, grow
    /// their map as they come).
    pub fn reserve(&mut self, additional: usize) {
        self.v4.reserve(additional);
    }

    /// Give back a map far larger than its entries (see `Table::shrink_if_sparse`).
    pub fn shrink_if_sparse(&mut self) {
        self.v4.shrink_if_sparse();
        self.v6.shrink_if_sparse();
    }

    /// Bytes of the two maps' bucket arrays (see [`Map::approx_bytes`]).
    pub fn approx_bytes(&self) -> usize {
        self.v4.approx_bytes() + self.v6.approx_bytes()
    }
}

/// The epoch for a store whose first (or newest) slot is at `ns`: [`EPOCH_SLACK_NS`] before, on
/// a whole ms so that times in whole ms stay exact.
fn epoch_for(ns: u64) -> u64 {
    let e = ns.saturating_sub(EPOCH_SLACK_NS);
    e - e % NS_PER_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn k(laddr: u32, raddr: [u8; 16]) -> Key {
        Key { ns: 3, laddr, raddr, lport: 40000, rport: 443 }
    }

    fn v4(last: u8) -> Key {
        k(0, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, last])
    }

    #[test]
    fn entries_are_small() {
        assert_eq!(size_of::<Slot>(), 8);
        assert_eq!(size_of::<(Key4, Slot)>(), 20);
        assert_eq!(size_of::<(Key, Slot)>(), 36);
    }

    #[test]
    fn keys_round_trip_in_their_family() {
        let mut st = Store::default();
        let six = k(super::super::key::LOCAL_V6, [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        // An IPv6 socket whose remote address is IPv4-mapped stays IPv6 (its local id says so).
        let mapped6 = k(super::super::key::LOCAL_V6, v4(9).raddr);
        for key in [v4(2), six, mapped6] {
            let s = st.slot(5 * S, 65 * S, TcpState::TimeWait);
            assert_eq!(st.insert(key, s), None);
        }
        assert_eq!((st.v4.len(), st.v6.len()), (1, 2));
        let mut keys: Vec<Key> = st.iter().map(|(k, _)| k).collect();
        keys.sort();
        let mut want = vec![v4(2), six, mapped6];
        want.sort();
        assert_eq!(keys, want);
        assert!(st.contains_key(&mapped6) && !st.contains_key(&v4(9)));
        assert!(st.remove(&v4(2)).is_some() && st.get(&v4(2)).is_none());
    }

    #[test]
    fn ipv4_keys_keep_namespace_and_local_address_apart() {
        let mut st = Store::default();
        let keys: Vec<Key> =
            [(3, 0), (4, 0), (3, 1), (4, 1)].into_iter().map(|(ns, laddr)| Key { ns, laddr, ..v4(7) }).collect();
        for (n, k) in keys.iter().enumerate() {
            let s = st.slot(n as u64 * S, 60 * S, TcpState::TimeWait);
            assert_eq!(st.insert(*k, s), None);
        }
        assert_eq!((st.v4.len(), st.locals.len()), (4, 4));
        for (n, k) in keys.iter().enumerate() {
            assert_eq!(st.get(k).map(|s| s.created_ns(st.epoch())), Some(n as u64 * S));
        }
        // A pair never seen is no socket, and asking does not add it.
        assert!(st.get(&Key { ns: 5, ..v4(7) }).is_none() && st.remove(&Key { ns: 5, ..v4(7) }).is_none());
        assert_eq!(st.locals.len(), 4);
        let mut listed: Vec<Key> = st.iter().map(|(k, _)| k).collect();
        listed.sort();
        let mut want = keys.clone();
        want.sort();
        assert_eq!(listed, want);
        st.retain(|k, _| k.ns == 4);
        assert!(st.iter().all(|(k, _)| k.ns == 4) && st.len() == 2);
    }

    #[test]
    fn times_are_exact_in_whole_ms_and_never_older_than_given() {
        let mut st = Store::default();
        let s = st.slot(7 * S, 67 * S, TcpState::FinWait2);
        let e = st.epoch();
        assert_eq!((s.created_ns(e), s.expires_ns(e), s.substate()), (7 * S, 67 * S, TcpState::FinWait2));
        // Before the epoch's slack is used up, older times still fit; a partial ms rounds up.
        let s = st.slot(7 * S + 1, 67 * S, TcpState::TimeWait);
        assert_eq!(s.created_ns(e), 7 * S + NS_PER_MS);
        let s = st.slot(2 * S, 62 * S, TcpState::TimeWait);
        assert_eq!(s.created_ns(e), 2 * S);
    }

    #[test]
    fn the_epoch_moves_forward_and_keeps_every_time() {
        let mut st = Store::default();
        let t0 = 10_000 * S;
        let s = st.slot(t0, t0 + 60 * S, TcpState::TimeWait);
        st.insert(v4(1), s);
        let first = st.epoch();
        // 30 days later a new socket moves the epoch; the old entry keeps its times.
        let later = t0 + 30 * 86_400 * S;
        let s = st.slot(later, later + 60 * S, TcpState::TimeWait);
        st.insert(v4(2), s);
        let e = st.epoch();
        assert!(e > first);
        assert_eq!(st.get(&v4(2)).map(|s| s.created_ns(e)), Some(later));
        // The old one is long overdue: clamped to the new epoch, with its expiry no later.
        let old = *st.get(&v4(1)).unwrap();
        assert_eq!((old.created_ns(e), old.expires_ns(e)), (e, e));
        // A socket half an hour old at the move (inside the slack) keeps its times exactly.
        let mut st = Store::default();
        let s = st.slot(t0, t0 + 60 * S, TcpState::TimeWait);
        st.insert(v4(1), s);
        let mid = later - 1800 * S;
        let s = st.slot(mid, mid + 60 * S, TcpState::TimeWait);
        st.insert(v4(3), s);
        let s = st.slot(later, later + 60 * S, TcpState::TimeWait);
        st.insert(v4(2), s);
        let e = st.epoch();
        let kept = *st.get(&v4(3)).unwrap();
        assert_eq!((kept.created_ns(e), kept.expires_ns(e)), (mid, mid + 60 * S));
    }
}
