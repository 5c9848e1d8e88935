//! Per-namespace figures of the table, for the agent's metrics: socket counts by substate and by
//! peer, and lifecycle counters per namespace. One pass over the table; pure like the rest.

use std::{collections::HashMap, net::IpAddr};

use super::{
    FastHash, Table,
    key::{LOCAL_V6, Marks, unpack},
};

/// Lifecycle counters of one namespace since the table started (or since the namespace was
/// first seen).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NsCounters {
    pub created: u64,
    pub expired: u64,
    /// Early kills by [`crate::tw_event::TwCause::index`].
    pub killed: [u64; 6],
}

/// Interned ids: released by [`Table::collect`], or held ([`Table::interned`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub namespaces: usize,
    pub addresses: usize,
    pub pairs: usize,
}

/// Tw sockets of one (namespace, peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCount {
    pub netns: u64,
    pub peer: IpAddr,
    pub time_wait: u64,
    pub fin_wait2: u64,
}

impl Table {
    /// Count one lifecycle event of namespace id `ns` (the hot path: a Vec index, no hash).
    pub(super) fn ns_counters_mut(&mut self, ns: u32) -> &mut NsCounters {
        let i = ns as usize;
        if self.ns_counters.len() <= i {
            self.ns_counters.resize(i + 1, NsCounters::default());
        }
        &mut self.ns_counters[i]
    }

    /// Counters of every namespace the table has seen, by cookie.
    pub fn ns_counters(&self) -> HashMap<u64, NsCounters, FastHash> {
        let live = |(id, _): &(usize, &NsCounters)| self.keys.ns_live(*id as u32);
        self.ns_counters.iter().enumerate().filter(live).map(|(id, c)| (self.keys.netns(id as u32), *c)).collect()
    }

    /// Tw sockets per (namespace, peer), TIME_WAIT and FIN_WAIT2 substate apart.
    pub fn peer_counts(&self) -> Vec<PeerCount> {
        // (namespace id, IPv4, packed remote) -> (TIME_WAIT, FIN_WAIT2)
        type Peer = (u32, bool, [u8; 16]);
        let mut acc: HashMap<Peer, (u64, u64), FastHash> = HashMap::default();
        for (k, s) in self.map.iter() {
            let v4 = k.is_v4();
            let e = acc.entry((k.ns, v4, k.raddr)).or_default();
            if s.fin_wait2() {
                e.1 += 1;
            } else {
                e.0 += 1;
            }
        }
        acc.into_iter()
            .map(|((ns, v4, raddr), (time_wait, fin_wait2))| PeerCount {
                netns: self.keys.netns(ns),
                peer: unpack(raddr, v4),
                time_wait,
                fin_wait2,
            })
            .collect()
    }

    /// Forget a namespace that no longer exists: its entries (its sockets died with it) and its
    /// counters. Returns how many entries were dropped (the kernel's purge reports them as
    /// `netns_gone` kills, maybe later: not counted here a second time).
    pub fn drop_netns(&mut self, cookie: u64) -> usize {
        let Some(id) = self.keys.ns_id(cookie) else { return 0 };
        let before = self.map.len();
        self.map.retain(|k, _| k.ns != id);
        self.kills.retain(|d, _| d.ns != id);
        let dropped = before - self.map.len();
        if let Some(c) = self.ns_counters.get_mut(id as usize) {
            *c = NsCounters::default();
        }
        if !self.dropped_ns.contains(&id) {
            self.dropped_ns.push(id);
        }
        self.collect();
        dropped
    }

    /// Forget what no entry and no kill count holds any more: the (namespace, local address)
    /// pairs, the local addresses, and the namespaces dropped as gone (a namespace that still
    /// exists keeps its counters, sockets or not). Without this the interners would grow with
    /// every address and namespace a host ever saw. One pass over the table; nothing while a
    /// reconcile watches (its notes hold keys). Returns what was released.
    pub fn collect(&mut self) -> Collected {
        if self.watch.is_some() {
            return Collected::default();
        }
        let mut ns = Marks::new(self.keys.ns_count() as usize);
        let mut local = Marks::new(self.keys.local_count());
        let pairs = self.map.pairs();
        self.map.mark_held(&mut ns, &mut local);
        for d in self.kills.keys() {
            ns.set(d.ns);
            local.set(d.laddr & !LOCAL_V6);
        }
        // A dropped namespace that keys hold again (late events) waits for the next collection.
        let free: Vec<u32> = self.dropped_ns.iter().copied().filter(|&id| !ns.get(id)).collect();
        self.dropped_ns.retain(|id| !free.contains(id));
        let (namespaces, addresses) = self.keys.release(|id| !free.contains(&id), &local);
        for &id in &free {
            if let Some(c) = self.ns_counters.get_mut(id as usize) {
                *c = NsCounters::default();
            }
        }
        Collected { namespaces, addresses, pairs: pairs - self.map.pairs() }
    }

    /// Namespaces, local addresses and (namespace, local address) pairs interned now.
    pub fn interned(&self) -> Collected {
        let (namespaces, addresses) = self.keys.live_counts();
        Collected { namespaces, addresses, pairs: self.map.pairs() }
    }
}

#[cfg(test)]
mod tests {
    use super::Collected;
    use crate::{
        sock::SockKey,
        state::TcpState,
        table::Table,
        tw_event::{TwCause, TwEvent, TwEventKind},
    };

    fn ev(ns: u64, r: &str, lport: u16, kind: TwEventKind) -> TwEvent {
        let laddr = if r.contains(':') { "fd00::1" } else { "10.0.0.1" };
        TwEvent {
            ts_ns: 1_000,
            key: SockKey {
                netns_cookie: ns,
                laddr: laddr.parse().unwrap(),
                lport,
                raddr: r.parse().unwrap(),
                rport: 80,
            },
            kind,
        }
    }

    const TW: TwEventKind = TwEventKind::Created { substate: TcpState::TimeWait, timeout_ms: 60_000 };
    const FW2: TwEventKind = TwEventKind::Created { substate: TcpState::FinWait2, timeout_ms: 60_000 };

    #[test]
    fn counts_per_namespace_and_peer() {
        let mut t = Table::new();
        for (ns, r, p, k) in
            [(1, "10.0.0.2", 1, TW), (1, "10.0.0.2", 2, FW2), (1, "fd00::2", 3, TW), (2, "10.0.0.2", 4, TW)]
        {
            t.apply(&ev(ns, r, p, k));
        }
        t.apply(&ev(2, "10.0.0.2", 4, TwEventKind::Expired));
        t.apply(&ev(1, "fd00::2", 3, TwEventKind::Killed { cause: TwCause::SockDestroy }));
        let mut peers = t.peer_counts();
        peers.sort_by_key(|p| (p.netns, p.peer));
        assert_eq!(peers.len(), 1);
        assert_eq!((peers[0].netns, peers[0].time_wait, peers[0].fin_wait2), (1, 1, 1));
        let c = t.ns_counters();
        assert_eq!((c[&1].created, c[&1].expired, c[&1].killed[TwCause::SockDestroy.index()]), (3, 0, 1));
        assert_eq!((c[&2].created, c[&2].expired), (1, 1));
    }

    #[test]
    fn a_gone_namespace_leaves_nothing() {
        let mut t = Table::new();
        t.apply(&ev(1, "10.0.0.2", 1, TW));
        t.apply(&ev(2, "10.0.0.2", 2, TW));
        t.apply(&ev(2, "10.0.0.3", 3, TW));
        assert_eq!(t.drop_netns(2), 2);
        assert_eq!(t.drop_netns(9), 0);
        assert_eq!(t.len(), 1);
        assert!(!t.ns_counters().contains_key(&2), "no counters of a gone namespace");
        assert!(t.peer_counts().iter().all(|p| p.netns == 1));
    }

    /// A socket of namespace `ns` from local address number `local` (10.1.x.y, or fd01::x:y),
    /// to a peer of its family.
    fn from(ns: u64, local: u16, v6: bool, kind: TwEventKind) -> TwEvent {
        let [a, b] = local.to_be_bytes();
        let (laddr, raddr) =
            if v6 { (format!("fd01::{a}:{b}"), "fd00::2") } else { (format!("10.1.{a}.{b}"), "10.0.0.2") };
        TwEvent {
            ts_ns: 1_000,
            key: SockKey {
                netns_cookie: ns,
                laddr: laddr.parse().unwrap(),
                lport: 4000,
                raddr: raddr.parse().unwrap(),
                rport: 80,
            },
            kind,
        }
    }

    /// Every entry's full key, as the views see it.
    fn keys(t: &Table) -> Vec<SockKey> {
        let mut k: Vec<SockKey> = t.map.iter().map(|(k, _)| t.keys.sock_key(&k)).collect();
        k.sort_by_key(|k| (k.netns_cookie, k.laddr));
        k
    }

    #[test]
    fn addresses_and_namespaces_that_went_are_forgotten_and_their_ids_reused() {
        let mut t = Table::new();
        // Namespace 1 lives on; a thousand of its local addresses come and go (both families).
        // Namespace 2 shares one of them, and goes later.
        for i in 0..1000 {
            t.apply(&from(1, i, i % 2 == 1, TW));
        }
        t.apply(&from(1, 5000, false, TW));
        t.apply(&from(2, 0, false, TW));
        assert_eq!(t.interned(), Collected { namespaces: 2, addresses: 1001, pairs: 502 });
        for i in 0..1000 {
            t.apply(&from(1, i, i % 2 == 1, TwEventKind::Expired));
        }
        assert_eq!(t.collect(), Collected { namespaces: 0, addresses: 999, pairs: 500 });
        assert_eq!(t.interned(), Collected { namespaces: 2, addresses: 2, pairs: 2 });
        assert_eq!(t.ns_counters()[&1].created, 1001, "a namespace that is still there keeps its counters");
        assert_eq!(t.collect(), Collected::default(), "nothing more to release");

        assert_eq!(t.drop_netns(2), 1);
        assert_eq!(t.interned(), Collected { namespaces: 1, addresses: 1, pairs: 1 });
        assert!(!t.ns_counters().contains_key(&2));
        // Its purge comes after it was dropped: counted in the totals, nothing interned again.
        t.apply(&from(2, 0, false, TwEventKind::Killed { cause: TwCause::NetnsGone }));
        assert_eq!(t.killed(TwCause::NetnsGone), 1);
        assert_eq!(t.interned(), Collected { namespaces: 1, addresses: 1, pairs: 1 });

        // New namespaces and addresses take the freed ids: the ids stay as few as were ever held
        // at once, and every key still reads back as it came.
        let bound = t.keys.local_count();
        let mut want = vec![from(1, 5000, false, TW).key];
        for i in 0..1000 {
            let e = from(3 + u64::from(i % 2), 2000 + i, i % 3 == 0, TW);
            want.push(e.key);
            t.apply(&e);
        }
        // Namespace 3 takes 2's id; 4 is a third one held at once.
        assert_eq!((t.keys.ns_count(), t.keys.local_count()), (3, bound));
        want.sort_by_key(|k| (k.netns_cookie, k.laddr));
        assert_eq!(keys(&t), want);
        let c = t.ns_counters();
        assert_eq!((c.len(), c[&3].created, c[&4].created), (3, 500, 500), "new namespaces count from 0");
    }

    #[test]
    fn kill_counts_hold_their_namespace_and_address() {
        let mut t = Table::new();
        t.apply(&from(1, 7, false, TW));
        t.apply(&from(1, 7, false, TwEventKind::Killed { cause: TwCause::SockDestroy }));
        assert_eq!(t.len(), 0);
        // The per-destination kill count still names 10.1.0.7: the address stays until the count
        // is old (the pair, the IPv4 map's own, goes with the socket).
        assert_eq!(t.collect(), Collected { namespaces: 0, addresses: 0, pairs: 1 });
        t.expire_overdue(crate::table::KILL_MEMORY_NS + 2_000);
        assert_eq!(t.collect(), Collected { namespaces: 0, addresses: 1, pairs: 0 });
        assert_eq!(t.interned(), Collected { namespaces: 1, addresses: 0, pairs: 0 });
    }
}
