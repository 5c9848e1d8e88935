//! Reading what the tracers print at exit: bpftrace's `Lost N events` lines and count map,
//! twreset's `N events seen, M lost` summary.

/// `Lost N events` lines (bpftrace), summed.
pub fn bpftrace_lost(lines: &[String]) -> u64 {
    lines.iter().filter_map(|l| l.split("Lost ").nth(1)?.split_whitespace().next()?.parse::<u64>().ok()).sum()
}

/// twreset's exit summary `N events seen, M lost (...)`.
pub fn twreset_summary(lines: &[String]) -> Option<(u64, u64)> {
    let l = lines.iter().rev().find(|l| l.contains(" events seen, "))?;
    let (a, b) = l.split_once(" events seen, ")?;
    let seen = a.rsplit(' ').next()?.parse().ok()?;
    let lost = b.split_whitespace().next()?.parse().ok()?;
    Some((seen, lost))
}

/// The `; N recovered after nesting` of twreset's exit summary.
pub fn twreset_recovered(lines: &[String]) -> Option<u64> {
    let l = lines.iter().rev().find(|l| l.contains(" events seen, "))?;
    l.split("; ").nth(1)?.strip_suffix(" recovered after nesting")?.parse().ok()
}

/// Sum of the `@[state]: N` lines bpftrace prints for its count map at exit.
pub fn map_sum(lines: &[String]) -> u64 {
    lines.iter().filter(|l| l.starts_with("@[")).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
}

/// The loss figures of a `twreset tw --json` document, wherever its totals object sits.
#[derive(Debug, PartialEq, Eq)]
pub struct TwTotals {
    pub lost: u64,
    pub drift: u64,
    pub resyncs: u64,
}

pub fn tw_totals(text: &str) -> Option<TwTotals> {
    fn find(v: &serde_json::Value) -> Option<TwTotals> {
        match v {
            serde_json::Value::Object(m) => {
                let n = |k: &str| m.get(k).and_then(serde_json::Value::as_u64);
                if let (Some(lost), Some(drift)) = (n("lost"), n("drift")) {
                    return Some(TwTotals { lost, drift, resyncs: n("resyncs").unwrap_or(0) });
                }
                m.values().find_map(find)
            }
            serde_json::Value::Array(a) => a.iter().find_map(find),
            _ => None,
        }
    }
    find(&serde_json::from_str(text).ok()?)
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
            "twreset: 324289 events seen, 7 lost (ring buffer full: 7, recursion misses: 0, kernel read errors: 0); 31 recovered after nesting",
        ]);
        assert_eq!(twreset_summary(&l), Some((324289, 7)));
        assert_eq!(twreset_recovered(&l), Some(31));
        assert_eq!(twreset_recovered(&lines(&["twreset: 1 events seen, 0 lost (...)"])), None);
        assert_eq!(twreset_summary(&lines(&["nothing"])), None);
    }

    #[test]
    fn bpftrace_output() {
        let l = lines(&["Attaching 3 probes...", "Lost 12 events", "@[7]: 100", "@[1]: 23", "Lost 3 events"]);
        assert_eq!(bpftrace_lost(&l), 15);
        assert_eq!(map_sum(&l), 123);
    }

    #[test]
    fn tw_document_totals() {
        let doc = r#"{"rows": [{"raddr": "10.0.0.1", "count": 3}], "totals": {"count": 3, "overflow": 0, "lost": 2, "drift": 0, "resyncs": 1}}"#;
        assert_eq!(tw_totals(doc), Some(TwTotals { lost: 2, drift: 0, resyncs: 1 }));
        assert_eq!(tw_totals("{}"), None);
        assert_eq!(tw_totals("not json"), None);
    }
}
