//! The live table against the kernel's own TIME_WAIT counts per namespace: a quiet namespace
//! must hold exactly as many entries as `/proc/net/sockstat` counts (`tw`), and a busy one must
//! have had as many creation events as `/proc/net/netstat` counts creations (`TcpExt` `TW` +
//! `TWKilled`).
//!
//! Events alone cannot prove the table whole: on 6.18 about one TIME_WAIT creation in 100k
//! reaches no BPF program and no miss counter (docs/internals/known-gaps.md). A namespace with no
//! event for [`QUIET_NS`] before its count was read, and none while in-flight events land after
//! it, has nothing in motion: any difference then is a loss the probe could not see. It is
//! counted, and counting it forces a resync like any other loss.

use std::collections::HashMap;

use foldhash::fast::RandomState;

/// How long a namespace must have had no event before its count is compared.
pub const QUIET_NS: u64 = 1_000_000_000;

/// The kernel's counts of one namespace, read at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NsCount {
    pub netns: u64,
    /// TIME_WAIT sockets now (sockstat `tw`).
    pub tw: usize,
    /// TIME_WAIT sockets created so far (`TW` + `TWKilled`), if readable.
    pub created: Option<u64>,
    /// Active closes that found `tcp_max_tw_buckets` full so far (`TCPTimeWaitOverflow`), if
    /// readable.
    pub overflow: Option<u64>,
}

/// The kernel's overflow counters against a baseline per namespace: its first reading, which
/// for the namespaces the probe saw attach is the one taken just before it attached. A deleted
/// namespace keeps its last reading.
#[derive(Debug, Default)]
pub struct Overflows {
    /// Per namespace: (baseline, last reading).
    per_ns: HashMap<u64, (u64, u64), RandomState>,
    /// Overflows of the namespaces forgotten ([`Overflows::forget`]), so the sum never goes back.
    retired: u64,
}

impl Overflows {
    /// Take in a reading; returns the overflows since the baselines, summed over namespaces.
    pub fn read(&mut self, kernel: &[NsCount]) -> u64 {
        for c in kernel {
            if let Some(v) = c.overflow {
                let e = self.per_ns.entry(c.netns).or_insert((v, v));
                e.1 = e.1.max(v);
            }
        }
        self.retired + self.per_ns.values().map(|&(base, last)| last - base).sum::<u64>()
    }

    /// A namespace that is gone: its overflows stay in the sum, its entry goes.
    pub fn forget(&mut self, netns: u64) {
        if let Some((base, last)) = self.per_ns.remove(&netns) {
            self.retired += last - base;
        }
    }

    /// A namespace made after the probe attached: its counter started at 0 then, so every
    /// overflow it counts is the table's (a first reading taken later would miss the early ones).
    pub fn from_zero(&mut self, netns: u64) {
        self.per_ns.entry(netns).and_modify(|e| e.0 = 0).or_insert((0, 0));
    }

    /// Overflows since the baseline, per namespace cookie.
    pub fn per_ns(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.per_ns.iter().map(|(&ns, &(base, last))| (ns, last - base))
    }
}

/// Creation events against the kernel's creation counter, per namespace. A namespace's baseline
/// is taken the first time it is seen, from both sides, so what happened before is not judged. The
/// counter moves before its event is delivered: a reading is judged only after the events in
/// flight at that moment have landed (the caller lets them), and a surplus of events (creations
/// in flight at the baseline) only makes the check more lenient.
#[derive(Debug, Default)]
pub struct Creations {
    /// Creation events applied, per namespace.
    ours: HashMap<u64, u64, RandomState>,
    /// Per namespace: kernel counter minus our events at the baseline, and the deficit already
    /// reported.
    seen: HashMap<u64, (i128, u64), RandomState>,
}

impl Creations {
    /// `n` creation events of namespace `netns` applied.
    pub fn applied(&mut self, netns: u64, n: u64) {
        *self.ours.entry(netns).or_default() += n;
    }

    /// A namespace that is gone.
    pub fn forget(&mut self, netns: u64) {
        self.ours.remove(&netns);
        self.seen.remove(&netns);
    }

    /// Take a baseline for the namespaces of `kernel` not seen before.
    pub fn baseline(&mut self, kernel: &[NsCount]) {
        for c in kernel {
            if let Some(k) = c.created {
                let ours = self.ours.get(&c.netns).copied().unwrap_or(0);
                self.seen.entry(c.netns).or_insert((i128::from(k) - i128::from(ours), 0));
            }
        }
    }

    fn deficits(&self, kernel: &[NsCount]) -> impl Iterator<Item = (u64, u64)> {
        kernel.iter().filter_map(|c| {
            let (base, reported) = *self.seen.get(&c.netns)?;
            let ours = self.ours.get(&c.netns).copied().unwrap_or(0);
            let deficit = (i128::from(c.created?) - base - i128::from(ours)).max(0) as u64;
            Some((c.netns, deficit.saturating_sub(reported)))
        })
    }

    /// Creations of the reading `kernel` that no event reported (yet), not reported before.
    pub fn unreported(&self, kernel: &[NsCount]) -> u64 {
        self.deficits(kernel).map(|(_, d)| d).sum()
    }

    /// Like [`Creations::unreported`], for a reading whose events have landed: what it returns
    /// counts as reported from now on.
    pub fn report(&mut self, kernel: &[NsCount]) -> u64 {
        let found: Vec<(u64, u64)> = self.deficits(kernel).filter(|&(_, d)| d > 0).collect();
        for &(ns, d) in &found {
            if let Some(s) = self.seen.get_mut(&ns) {
                s.1 += d;
            }
        }
        found.iter().map(|&(_, d)| d).sum()
    }
}

/// Newest event time (kernel monotonic ns) per namespace cookie.
#[derive(Debug, Default)]
pub struct LastEvents {
    newest: HashMap<u64, u64, RandomState>,
}

impl LastEvents {
    /// An event of namespace `netns` stamped `ts_ns`.
    pub fn saw(&mut self, netns: u64, ts_ns: u64) {
        let t = self.newest.entry(netns).or_default();
        *t = (*t).max(ts_ns);
    }

    /// A namespace that is gone.
    pub fn forget(&mut self, netns: u64) {
        self.newest.remove(&netns);
    }

    /// No event of `netns` stamped at or after `since_ns`.
    pub fn quiet_since(&self, netns: u64, since_ns: u64) -> bool {
        self.newest.get(&netns).is_none_or(|&t| t < since_ns)
    }
}

/// A quiet namespace whose table disagrees with the kernel's count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub netns: u64,
    pub kernel: usize,
    pub table: usize,
}

impl Mismatch {
    /// Sockets the table has wrong at least (either way).
    pub fn size(&self) -> u64 {
        self.kernel.abs_diff(self.table) as u64
    }
}

/// The quiet namespaces of `kernel` whose table count differs.
pub fn mismatches(kernel: &[NsCount], table: impl Fn(u64) -> usize, quiet: impl Fn(u64) -> bool) -> Vec<Mismatch> {
    kernel
        .iter()
        .filter(|c| quiet(c.netns))
        .map(|c| Mismatch { netns: c.netns, kernel: c.tw, table: table(c.netns) })
        .filter(|m| m.size() > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_means_no_event_since() {
        let mut l = LastEvents::default();
        assert!(l.quiet_since(7, 0), "never seen is quiet");
        l.saw(7, 100);
        l.saw(7, 50);
        assert!(!l.quiet_since(7, 100));
        assert!(l.quiet_since(7, 101));
        assert!(l.quiet_since(8, 0));
    }

    #[test]
    fn only_quiet_namespaces_that_differ_count() {
        let table = |ns: u64| match ns {
            1 => 10,
            2 => 5,
            3 => 7,
            _ => 0,
        };
        let m = |netns, kernel, table| Mismatch { netns, kernel, table };
        let c = |netns, tw| NsCount { netns, tw, created: None, overflow: None };
        // 1 matches, 2 is short by 2 (quiet), 3 differs but is busy, 4 has 3 the table lacks.
        let kernel = [c(1, 10), c(2, 7), c(3, 9), c(4, 3)];
        let found = mismatches(&kernel, table, |ns| ns != 3);
        assert_eq!(found, vec![m(2, 7, 5), m(4, 3, 0)]);
        assert_eq!(found.iter().map(Mismatch::size).collect::<Vec<_>>(), vec![2, 3]);
        // More entries than the kernel counts is a difference too.
        assert_eq!(mismatches(&[c(1, 8)], table, |_| true)[0].size(), 2);
        assert_eq!(mismatches(&[], table, |_| true), vec![]);
    }

    #[test]
    fn creations_missing_from_the_events_count_once() {
        let read = |created| [NsCount { netns: 7, tw: 0, created: Some(created), overflow: None }];
        let mut c = Creations::default();
        // Baseline: the kernel had made 1000 before, 2 of them already seen as events.
        c.applied(7, 2);
        c.baseline(&read(1000));
        assert_eq!(c.report(&read(1000)), 0);
        // 50 made, their events still in flight at the reading: a suspicion, not a finding.
        assert_eq!(c.unreported(&read(1050)), 50);
        c.applied(7, 50);
        assert_eq!(c.report(&read(1050)), 0);
        // 30 more made, only 29 events landed: one unseen, reported once.
        c.applied(7, 29);
        assert_eq!(c.report(&read(1080)), 1);
        assert_eq!(c.report(&read(1080)), 0);
        assert_eq!(c.unreported(&read(1080)), 0);
        // A later baseline call does not move a namespace's baseline.
        c.baseline(&read(5000));
        c.applied(7, 10);
        assert_eq!(c.report(&read(1090)), 0);
        // No counter, or a namespace without a baseline: nothing judged.
        assert_eq!(c.report(&[NsCount { netns: 7, tw: 0, created: None, overflow: None }]), 0);
        assert_eq!(c.report(&[NsCount { netns: 8, tw: 0, created: Some(9), overflow: None }]), 0);
    }

    #[test]
    fn overflows_count_from_each_namespaces_baseline() {
        let c = |netns, overflow| NsCount { netns, tw: 0, created: None, overflow };
        let mut o = Overflows::default();
        // Baselines: 1 had 40 before the probe attached, 2 had 0; 3 is unreadable.
        assert_eq!(o.read(&[c(1, Some(40)), c(2, Some(0)), c(3, None)]), 0);
        assert_eq!(o.read(&[c(1, Some(46)), c(2, Some(1))]), 7);
        // A namespace first seen later starts from that reading; one gone keeps its count.
        assert_eq!(o.read(&[c(1, Some(46)), c(4, Some(9))]), 7);
        assert_eq!(o.read(&[c(4, Some(12)), c(3, Some(5))]), 10);
        // A reading is never older than the last one taken in.
        assert_eq!(o.read(&[c(4, Some(11))]), 10);
        // A namespace made after the start counts from 0, not from its first reading.
        o.from_zero(5);
        assert_eq!(o.read(&[c(5, Some(6))]), 16);
        o.from_zero(4);
        assert_eq!(o.read(&[]), 16 + 9);
        // A namespace forgotten: its entry goes, its overflows stay in the sum.
        o.forget(2);
        o.forget(99);
        assert_eq!(o.read(&[]), 25);
        assert!(o.per_ns().all(|(ns, _)| ns != 2));
    }

    #[test]
    fn a_forgotten_namespace_leaves_no_note() {
        let mut l = LastEvents::default();
        l.saw(7, 100);
        l.forget(7);
        assert!(l.quiet_since(7, 0));
        let mut c = Creations::default();
        c.applied(7, 3);
        c.baseline(&[NsCount { netns: 7, tw: 0, created: Some(10), overflow: None }]);
        c.forget(7);
        assert!(c.ours.is_empty() && c.seen.is_empty());
    }
}
