//! Formatting for the report: numbers with n/a, ratios, verdicts against a target, and markdown
//! tables padded to their widest cell.

use std::fmt::Write as _;

/// One summary line.
pub struct Row {
    pub figure: String,
    pub twreset: String,
    pub peer: String,
    pub ratio: String,
    pub target: String,
    pub verdict: String,
}

pub fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.digits$}"))
}

/// A ratio with its suffix, or just `n/a`.
pub fn times(v: Option<f64>, digits: usize, suffix: &str) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.digits$}x{suffix}"))
}

/// The short form of why a side could not run (the full reason is in the JSON).
pub fn short(reason: &str) -> String {
    if reason.starts_with("n/a (not built)") { "n/a (not built)".into() } else { reason.chars().take(60).collect() }
}

pub fn mib(kib: Option<f64>) -> Option<f64> {
    kib.map(|k| k / 1024.0)
}

pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

pub fn at_least(v: Option<f64>, target: f64, unit: &str) -> String {
    match v {
        None => "n/a".into(),
        Some(v) if v >= target => format!("met ({}{unit} >= {target}{unit})", trim(v)),
        Some(v) => format!("missed by {}{unit}", trim(target - v)),
    }
}

/// A verdict on a median, saying so when the target lies between the rounds' quartiles: the
/// next run may well come out on the other side.
pub fn within_spread(verdict: String, quartiles: Option<(f64, f64)>, target: f64) -> String {
    match quartiles {
        Some((q1, q3)) if q1 <= target && target <= q3 => format!("{verdict}; {target} is within the quartiles"),
        _ => verdict,
    }
}

/// A median count: whole, or halfway between two runs' counts (shown as such, not rounded to 0).
pub fn count(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), trim)
}

/// Whole numbers without decimals (lost events), others with two.
pub fn trim(v: f64) -> String {
    if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}

/// Verdict of "less than the peer".
pub fn below(v: Option<f64>, peer: Option<f64>) -> String {
    match (v, peer) {
        (Some(a), Some(b)) if a < b => format!("met ({:.0}% below)", (1.0 - a / b) * 100.0),
        (Some(a), Some(b)) => format!("missed by {:.3} s/M", a - b),
        _ => "n/a".into(),
    }
}

pub fn at_most(v: Option<f64>, target: f64, unit: &str) -> String {
    match v {
        None => "n/a".into(),
        Some(v) if v <= target => format!("met ({}{unit} <= {target}{unit})", trim(v)),
        Some(v) => format!("missed by {}{unit}", trim(v - target)),
    }
}

pub fn markdown(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(s, " {c:<width$} |", width = w[i]);
        }
        s + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out += &line(w.iter().map(|&n| "-".repeat(n)).collect());
    for r in rows {
        out += &line(r.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_inside_the_quartiles_is_flagged() {
        assert_eq!(within_spread("met".into(), Some((88.0, 93.0)), 90.0), "met; 90 is within the quartiles");
        assert_eq!(within_spread("met".into(), Some((91.0, 93.0)), 90.0), "met");
        assert_eq!(within_spread("missed".into(), None, 90.0), "missed");
        assert_eq!(at_least(Some(84.7), 90.0, "%"), "missed by 5.30%");
    }
}
