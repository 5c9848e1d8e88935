//! Reading what the tracers print at exit: bpftrace's `Lost N events` lines and count map,
//! twreset's `N events seen, M lost` summary.

/// `Lost N events` lines (bpftrace), summed.
pub fn bpftrace_lost(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter_map(|l| {
            l.split("Lost ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// twreset's exit summary `N events seen, M lost (...)`.
pub fn twreset_summary(lines: &[String]) -> Option<(u64, u64)> {
    let l = lines.iter().rev().find(|l| l.contains(" events seen, "))?;
    let (a, b) = l.split_once(" events seen, ")?;
    let seen = a.rsplit(' ').next()?.parse().ok()?;
    let lost = b.split_whitespace().next()?.parse().ok()?;
    Some((seen, lost))
}

/// Sum of the `@[state]: N` lines bpftrace prints for its count map at exit.
pub fn map_sum(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter(|l| l.starts_with("@["))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn twreset_exit_summary() {
        let l = lines(&[
            "twreset: tracing TCP state transitions in /run/netns/x (Ctrl-C to stop)",
            "twreset: 324289 events seen, 7 lost (ring buffer full: 7, recursion misses: 0)",
        ]);
        assert_eq!(twreset_summary(&l), Some((324289, 7)));
        assert_eq!(twreset_summary(&lines(&["nothing"])), None);
    }

    #[test]
    fn bpftrace_output() {
        let l = lines(&[
            "Attaching 3 probes...",
            "Lost 12 events",
            "@[7]: 100",
            "@[1]: 23",
            "Lost 3 events",
        ]);
        assert_eq!(bpftrace_lost(&l), 15);
        assert_eq!(map_sum(&l), 123);
    }
}
