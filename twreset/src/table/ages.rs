//! TIME_WAIT ages per destination: how many of each destination's TIME_WAIT sockets are at least
//! some ages old (the relief policy's `min_age`s), counted in one pass over the table.

use std::collections::HashMap;

use super::{Dest, PortRanges, Table, key::DestKey};

impl Table {
    /// For every destination holding ephemeral ports (the sockets [`Table::snapshot`]'s
    /// destination view counts), `(min_age_ns, TIME_WAIT sockets at least that old at now_ns)`
    /// for each of `min_ages_ns`. Sockets of substate FIN_WAIT2 are left out: relief kills
    /// TIME_WAIT only.
    pub fn old_enough_by_dest(
        &self,
        now_ns: u64,
        min_ages_ns: &[u64],
        ranges: &PortRanges,
    ) -> HashMap<Dest, Vec<(u64, u64)>> {
        let mut ages: Vec<u64> = min_ages_ns.to_vec();
        ages.sort_unstable();
        ages.dedup();
        let ns_ranges: Vec<_> = (0..self.keys.ns_count()).map(|id| ranges.of(self.keys.netns(id))).collect();
        let mut acc: HashMap<DestKey, Vec<u64>> = HashMap::new();
        for (k, s) in &self.map {
            if s.fin_wait2() || !ns_ranges[k.ns as usize].contains(k.lport) {
                continue;
            }
            let age = now_ns.saturating_sub(s.created_ns);
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
