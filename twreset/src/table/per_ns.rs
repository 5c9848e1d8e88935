//! Per-namespace figures of the table, for the agent's metrics: socket counts by substate and by
//! peer, and lifecycle counters per namespace. One pass over the table; pure like the rest.

use std::{collections::HashMap, net::IpAddr};

use super::{FastHash, Table, key::unpack};

/// Lifecycle counters of one namespace since the table started (or since the namespace was
/// first seen).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NsCounters {
    pub created: u64,
    pub expired: u64,
    /// Early kills by [`crate::tw_event::TwCause::index`].
    pub killed: [u64; 6],
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
        self.ns_counters.iter().enumerate().map(|(id, c)| (self.keys.netns(id as u32), *c)).collect()
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
        let Some(id) = (0..self.keys.ns_count()).find(|&id| self.keys.netns(id) == cookie) else { return 0 };
        let before = self.map.len();
        self.map.retain(|k, _| k.ns != id);
        self.kills.retain(|d, _| d.ns != id);
        let dropped = before - self.map.len();
        if let Some(c) = self.ns_counters.get_mut(id as usize) {
            *c = NsCounters::default();
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(t.ns_counters()[&2].created, 0);
        assert!(t.peer_counts().iter().all(|p| p.netns == 1));
    }
}
