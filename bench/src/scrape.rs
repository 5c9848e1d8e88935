//! Prometheus expositions as the bench reads them: one timed `curl` scrape (size, series, a
//! figure picked from the body), samples found by family and labels, and a free port for an
//! agent's metrics listener.

use std::{net::TcpListener, process::Command};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::{ns::Ns, sys};

/// What Prometheus 2.x asks for (OpenMetrics first); no `Accept-Encoding`: sizes are uncompressed.
const ACCEPT: &str = "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;\
q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// One timed scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub ms: f64,
    pub bytes: u64,
    /// Sample lines (not `#` comments).
    pub series: u64,
    /// TIME_WAIT sockets of the bench namespace in this exposition.
    pub time_wait: Option<u64>,
}

impl Scrape {
    pub fn json(&self) -> Value {
        json!({ "ms": self.ms, "bytes": self.bytes, "series": self.series, "time_wait": self.time_wait })
    }
}

/// A port free on the host's loopback now (the agent binds it a moment later).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?.local_addr()?.port())
}

/// `curl` one URL (inside `ns` if given): time, size, and the body.
pub fn fetch(ns: Option<&Ns>, url: &str) -> Result<(Scrape, String)> {
    let body = std::env::temp_dir().join(format!("twbench-{}-scrape", std::process::id()));
    let body_s = body.to_str().context("temp path is not UTF-8")?;
    let args = [
        "curl",
        "-sS",
        "-f",
        "--max-time",
        "120",
        "-H",
        ACCEPT,
        "-o",
        body_s,
        "-w",
        "%{time_total} %{size_download}",
        url,
    ];
    let mut cmd = match ns {
        Some(ns) => ns.cmd(&args),
        None => {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c
        }
    };
    let out = sys::output(&mut cmd);
    let text = std::fs::read_to_string(&body).unwrap_or_default();
    let _ = std::fs::remove_file(&body);
    let out = out?;
    let mut it = out.split_whitespace();
    let secs: f64 = it.next().and_then(|s| s.parse().ok()).context("curl time_total")?;
    let bytes: u64 = it.next().and_then(|s| s.parse().ok()).context("curl size_download")?;
    let series = text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count() as u64;
    Ok((Scrape { ms: secs * 1000.0, bytes, series, time_wait: None }, text))
}

/// [`fetch`], with the TIME_WAIT figure `tw` picks from the body.
pub fn scrape(ns: Option<&Ns>, url: &str, tw: &dyn Fn(&str) -> Option<u64>) -> Result<Scrape> {
    let (s, text) = fetch(ns, url)?;
    Ok(Scrape { time_wait: tw(&text), ..s })
}

/// Samples of `family` (exactly that name, or with OpenMetrics' `_total` suffix) carrying every
/// label in `labels`, as (label text, value).
fn samples<'a>(text: &'a str, family: &'a str, labels: &'a [&str]) -> impl Iterator<Item = f64> + 'a {
    text.lines().filter_map(move |l| {
        let rest = l.strip_prefix(family)?;
        let rest = rest.strip_prefix("_total").unwrap_or(rest);
        let (lbl, val) = match rest.strip_prefix('{') {
            Some(r) => r.rsplit_once('}')?,
            None if rest.starts_with(' ') => ("", rest),
            None => return None,
        };
        labels.iter().all(|x| lbl.contains(x)).then(|| val.split_whitespace().next()?.parse::<f64>().ok())?
    })
}

/// The value of the first sample of `family` carrying every label in `labels`.
pub fn sample(text: &str, family: &str, labels: &[&str]) -> Option<u64> {
    samples(text, family, labels).next().map(|v| v as u64)
}

/// The sum of every sample of `family` carrying every label in `labels`; `None` if there is none.
pub fn sum(text: &str, family: &str, labels: &[&str]) -> Option<u64> {
    samples(text, family, labels).fold(None, |acc, v| Some(acc.unwrap_or(0) + v as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_by_labels() {
        let t = "# TYPE twreset_timewait_sockets gauge\n\
                 twreset_timewait_sockets{netns=\"host\",substate=\"time_wait\"} 3\n\
                 twreset_timewait_sockets{netns=\"b\",substate=\"fin_wait2\"} 1\n\
                 twreset_timewait_sockets{substate=\"time_wait\",netns=\"b\"} 20000\n\
                 node_tcp_connection_states{state=\"time_wait\"} 1e+06\n\
                 twreset_events_lost_total{reason=\"ring_full\"} 2\n\
                 twreset_events_lost_total{reason=\"recursion\"} 5\n\
                 twreset_table_resyncs_total 1\n";
        assert_eq!(sample(t, "twreset_timewait_sockets", &["netns=\"b\"", "substate=\"time_wait\""]), Some(20000));
        assert_eq!(sample(t, "node_tcp_connection_states", &["state=\"time_wait\""]), Some(1_000_000));
        assert_eq!(sample(t, "twreset_timewait", &["netns=\"b\""]), None);
        assert_eq!(sum(t, "twreset_events_lost", &[]), Some(7));
        assert_eq!(sum(t, "twreset_table_resyncs", &[]), Some(1));
        assert_eq!(sum(t, "twreset_timewait_sockets", &["substate=\"time_wait\""]), Some(20003));
        assert_eq!(sum(t, "twreset_kills", &[]), None);
    }
}
