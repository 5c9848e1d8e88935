//! The socket maps' hash map: hashbrown's, kept from doubling under churn.
//!
//! A removed entry leaves a tombstone, and an insert into a tombstone's slot does not take a free
//! slot; once inserts have used up the free slots, hashbrown rehashes the buckets in place when at
//! most half of its capacity is live, but *doubles* them when more is. A table that churns at a
//! steady size between half and 7/8 of its capacity (300k sockets in 2^19 buckets, a million in
//! 2^21) therefore doubles after a few minutes, for no more sockets: seen in the soak as an 11 MiB
//! step at 300k. [`Map::insert`] rebuilds such a map at its own size instead (one pass, while the
//! old and the new buckets both exist: less than the doubling's own peak), so only a table that
//! really grows past [`REBUILD_MAX_LIVE`] of its capacity gets more buckets.

use std::{collections::HashMap, hash::Hash};

use super::FastHash;

/// Up to this share of the capacity live, a map without free slots is rebuilt at its size rather
/// than doubled: the rebuild leaves at least 30% of the capacity free, so rebuilds stay rare.
const REBUILD_MAX_LIVE: (usize, usize) = (7, 10);

#[derive(Debug)]
pub(crate) struct Map<K, V> {
    map: HashMap<K, V, FastHash>,
    /// The capacity of the buckets as allocated (hashbrown's `capacity()` is live entries plus
    /// free slots: tombstones take it down).
    full: usize,
    /// Same-size rebuilds so far (the tests look).
    rebuilds: u64,
}

impl<K, V> Default for Map<K, V> {
    fn default() -> Self {
        Self { map: HashMap::default(), full: 0, rebuilds: 0 }
    }
}

impl<K: Hash + Eq, V> Map<K, V> {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Entries the buckets hold at most before they grow (tombstones included).
    pub fn capacity(&self) -> usize {
        self.full.max(self.map.capacity())
    }

    #[cfg(test)]
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.map.get_mut(k)
    }

    /// Insert or replace; returns the value replaced. A map whose free slots tombstones used up is
    /// rebuilt at its size first, unless more than [`REBUILD_MAX_LIVE`] of it is live.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        let cap = self.map.capacity();
        self.full = self.full.max(cap);
        if self.map.len() == cap && cap > 0 && self.map.len() * REBUILD_MAX_LIVE.1 <= self.full * REBUILD_MAX_LIVE.0 {
            self.rebuild();
        }
        self.map.insert(k, v)
    }

    #[cold]
    fn rebuild(&mut self) {
        let old = std::mem::take(&mut self.map);
        let mut new = HashMap::with_capacity_and_hasher(self.full, old.hasher().clone());
        new.extend(old);
        self.map = new;
        self.full = self.map.capacity();
        self.rebuilds += 1;
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        self.map.remove(k)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter()
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.map.keys()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.map.values_mut()
    }

    pub fn retain(&mut self, keep: impl FnMut(&K, &mut V) -> bool) {
        self.map.retain(keep);
    }

    pub fn reserve(&mut self, additional: usize) {
        self.map.reserve(additional);
        self.full = self.full.max(self.map.capacity());
    }

    /// Give back buckets far more than the entries need.
    pub fn shrink_if_sparse(&mut self) {
        if self.capacity() > 4 * self.map.len().max(1024) {
            self.map.shrink_to_fit();
            self.full = self.map.capacity();
        }
    }

    /// Bytes of the bucket array: a power-of-two bucket count (at most 7/8 full) of one entry plus
    /// one control byte each.
    pub fn approx_bytes(&self) -> usize {
        match self.capacity() {
            0 => 0,
            c => (c * 8 / 7).next_power_of_two() * (size_of::<(K, V)>() + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// `live` entries churned `rounds` times over (the oldest removed, a new one inserted), as
    /// TIME_WAIT sockets come and go at a steady count. Returns the capacities seen.
    fn churn(map: &mut Map<u64, u64>, live: u64, rounds: u64) -> Vec<usize> {
        let mut order: VecDeque<u64> = (0..live).collect();
        order.iter().for_each(|&k| _ = map.insert(k, k));
        let mut caps = vec![map.capacity()];
        for k in live..live * (rounds + 1) {
            let old = order.pop_front().unwrap();
            assert_eq!(map.remove(&old), Some(old));
            map.insert(k, k);
            order.push_back(k);
            caps.push(map.capacity());
        }
        assert_eq!(map.len() as u64, live);
        caps.dedup();
        caps
    }

    #[test]
    fn a_steady_count_between_half_and_most_of_the_capacity_keeps_its_buckets() {
        // 60k entries: 2^17 buckets (capacity 114,688), more than half of them live.
        let mut m = Map::default();
        assert_eq!(churn(&mut m, 60_000, 30), [114_688]);
        assert!(m.rebuilds() > 0, "rebuilt at its size, {} times", m.rebuilds());
        assert_eq!(m.approx_bytes(), (1 << 17) * 17);
        // hashbrown alone doubles the same churn.
        let mut plain: HashMap<u64, u64, FastHash> = HashMap::default();
        (0..60_000u64).for_each(|k| _ = plain.insert(k, k));
        for k in 60_000..60_000 * 31u64 {
            plain.remove(&(k - 60_000));
            plain.insert(k, k);
        }
        // (`capacity()` is live entries plus free slots: a few tombstones below 2^18's 229,376.)
        assert!(plain.capacity() > 200_000, "hashbrown alone doubled: {}", plain.capacity());
    }

    #[test]
    fn a_map_mostly_live_doubles_once_then_keeps_its_buckets() {
        // 100k entries in 2^17 buckets are 87% of the capacity: too full to rebuild at that size.
        let mut m = Map::default();
        assert_eq!(churn(&mut m, 100_000, 20), [114_688, 229_376]);
    }

    #[test]
    fn a_map_that_really_grows_gets_more_buckets_and_shrinks_back() {
        let mut m = Map::default();
        (0..200_000u64).for_each(|k| _ = m.insert(k, k));
        assert_eq!(m.capacity(), 229_376);
        m.retain(|k, _| *k < 1000);
        m.shrink_if_sparse();
        assert!(m.capacity() < 4 * 1024, "{}", m.capacity());
        assert_eq!(m.len(), 1000);
    }
}
