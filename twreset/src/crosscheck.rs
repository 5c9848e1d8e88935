//! The live table against the kernel's own TIME_WAIT count per namespace (`/proc/net/sockstat`,
//! `tw`): a quiet namespace must hold exactly as many entries as the kernel counts.
//!
//! Events alone cannot prove the table whole: on 6.18 about one TIME_WAIT creation in 100k
//! reaches no BPF program and no miss counter (README, "Events no counter sees"). A namespace with no
//! event for [`QUIET_NS`] before its count was read, and none while in-flight events land after
//! it, has nothing in motion: any difference then is a loss the probe could not see. It is
//! counted, and counting it forces a resync like any other loss.

use std::collections::HashMap;

use foldhash::fast::RandomState;

/// How long a namespace must have had no event before its count is compared.
pub const QUIET_NS: u64 = 1_000_000_000;

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

/// The quiet namespaces of `kernel` (cookie, kernel count) whose table count differs.
pub fn mismatches(kernel: &[(u64, usize)], table: impl Fn(u64) -> usize, quiet: impl Fn(u64) -> bool) -> Vec<Mismatch> {
    kernel
        .iter()
        .filter(|&&(ns, _)| quiet(ns))
        .map(|&(netns, kernel)| Mismatch { netns, kernel, table: table(netns) })
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
        // 1 matches, 2 is short by 2 (quiet), 3 differs but is busy, 4 has 3 the table lacks.
        let kernel = [(1, 10), (2, 7), (3, 9), (4, 3)];
        let found = mismatches(&kernel, table, |ns| ns != 3);
        assert_eq!(found, vec![m(2, 7, 5), m(4, 3, 0)]);
        assert_eq!(found.iter().map(Mismatch::size).collect::<Vec<_>>(), vec![2, 3]);
        // More entries than the kernel counts is a difference too.
        assert_eq!(mismatches(&[(1, 8)], table, |_| true)[0].size(), 2);
        assert_eq!(mismatches(&[], table, |_| true), vec![]);
    }
}
