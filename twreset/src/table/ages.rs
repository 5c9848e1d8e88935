//! TIME_WAIT ages per destination: how many of each destination's TIME_WAIT sockets are at least
//! some ages old (the relief policy's `min_age`s), counted in one pass over the table.

use std::collections::HashMap;

use super::{Dest, PortSpaces, Table, key::DestKey};

impl Table {
    /// For every destination holding ephemeral ports (the sockets [`Table::snapshot`]'s
    /// destination view counts), `(min_age_ns, TIME_WAIT sockets at least that old at now_ns)`
    /// for each of `min_ages_ns`. Sockets of substate FIN_WAIT2 are left out: relief kills
    /// TIME_WAIT only.
    pub fn old_enough_by_dest(
        &self,
        now_ns: u64,
        min_ages_ns: &[u64],
        ranges: &PortSpaces,
    ) -> HashMap<Dest, Vec<(u64, u64)>> {
        let mut ages: Vec<u64> = min_ages_ns.to_vec();
        ages.sort_unstable();
        ages.dedup();
        let ns_ranges: Vec<_> = (0..self.keys.ns_count()).map(|id| ranges.of(self.keys.netns(id))).collect();
        let mut acc: HashMap<DestKey, Vec<u64>> = HashMap::new();
        let epoch = self.map.epoch();
        for (k, s) in self.map.iter() {
            if s.fin_wait2() || !ns_ranges[k.ns as usize].is_ephemeral(k.lport) {
                continue;
            }
            let age = now_ns.saturating_sub(s.created_ns(epoch));
            let counts = acc.entry(k.dest()).or_insert_with(|| vec![0; ages.len()]);
            for (n, min) in counts.iter_mut().zip(&ages) {
                *n += u64::from(age >= *min);
            }
        }
        acc.into_iter()
            .map(|(d, counts)| {
                let dest = Dest {
                    netns: self.keys.netns(d.ns),
                    laddr: self.keys.local(d.laddr),
                    raddr: self.keys.remote(d.laddr, d.raddr),
                    rport: d.rport,
                };
                (dest, ages.iter().copied().zip(counts).collect())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        sock::SockKey,
        state::TcpState,
        tw_event::{TwEvent, TwEventKind},
    };

    const S: u64 = 1_000_000_000;

    fn created(ts_s: u64, lport: u16, r: &str, substate: TcpState) -> TwEvent {
        let key = SockKey {
            netns_cookie: 7,
            laddr: "10.0.0.1".parse().unwrap(),
            lport,
            raddr: r.parse().unwrap(),
            rport: 443,
        };
        TwEvent { ts_ns: ts_s * S, key, kind: TwEventKind::Created { substate, timeout_ms: 60_000 } }
    }

    #[test]
    fn counts_per_destination_and_age_tw_only_ephemeral_only() {
        let mut t = Table::new();
        for (ts, lport) in [(1, 40001), (5, 40002), (9, 40003)] {
            t.apply(&created(ts, lport, "10.0.0.2", TcpState::TimeWait));
        }
        t.apply(&created(1, 40004, "10.0.0.2", TcpState::FinWait2));
        t.apply(&created(1, 80, "10.0.0.2", TcpState::TimeWait)); // not an ephemeral port
        t.apply(&created(2, 40005, "10.0.0.3", TcpState::TimeWait));
        let ranges = PortSpaces::default();
        let got = t.old_enough_by_dest(10 * S, &[5 * S, 0, 5 * S, 9 * S], &ranges);
        let dest =
            |r: &str| Dest { netns: 7, laddr: "10.0.0.1".parse().unwrap(), raddr: r.parse().unwrap(), rport: 443 };
        assert_eq!(got.len(), 2);
        assert_eq!(got[&dest("10.0.0.2")], vec![(0, 3), (5 * S, 2), (9 * S, 1)]);
        assert_eq!(got[&dest("10.0.0.3")], vec![(0, 1), (5 * S, 1), (9 * S, 0)]);
    }
}
