//! The agent section's figures: medians of each side's scrapes, RSS per tracked socket beyond the
//! agent's base, the details table, the summary rows and the JSON.

use serde_json::{Value, json};

use super::{Outcome, SCRAPES, Side};
use crate::{median, scrape::Scrape};

/// The bar for the agent at 1M: bytes of RSS per tracked socket beyond the base.
pub const BYTES_PER_SOCKET_BAR: f64 = 53.0;

fn med(side: &Side, f: impl Fn(&Scrape) -> f64) -> Option<f64> {
    side.as_ref().ok().and_then(|v| median(v.iter().map(f).collect()))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.digits$}"))
}

/// `10k`, `200k`, `1M`.
fn size(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) { format!("{}M", n / 1_000_000) } else { format!("{}k", n / 1000) }
}

impl Outcome {
    pub fn ms(side: &Side) -> Option<f64> {
        med(side, |s| s.ms)
    }
    pub fn bytes(side: &Side) -> Option<f64> {
        med(side, |s| s.bytes as f64)
    }
    pub fn series(side: &Side) -> Option<f64> {
        med(side, |s| s.series as f64)
    }
    pub fn time_wait(side: &Side) -> Option<f64> {
        side.as_ref().ok().and_then(|v| median(v.iter().filter_map(|s| s.time_wait.map(|t| t as f64)).collect()))
    }

    /// Sockets the agent tracked: what its first scrape showed of the bench namespace, else the
    /// kernel's count before it started.
    pub fn tracked(&self) -> u64 {
        self.agent.as_ref().ok().and_then(|v| v.first()?.time_wait).unwrap_or(self.sockets)
    }

    /// (RSS - base RSS) / tracked sockets, in bytes.
    fn per_socket(&self, kib: Option<u64>, base_kib: Option<u64>) -> Option<f64> {
        let (rss, base) = (kib?, base_kib?);
        (self.tracked() > 0).then(|| (rss as f64 - base as f64) * 1024.0 / self.tracked() as f64)
    }
    pub fn bytes_per_socket_seeded(&self) -> Option<f64> {
        self.per_socket(self.rss_seeded_kib, self.rss_base_kib)
    }
    pub fn bytes_per_socket_after(&self) -> Option<f64> {
        self.per_socket(self.rss_after_kib, self.rss_base_kib)
    }
    /// The same from RssAnon (no file pages), seeded and after the scrapes.
    pub fn anon_bytes_per_socket(&self) -> [Option<f64>; 2] {
        [self.per_socket(self.anon_kib[1], self.anon_kib[0]), self.per_socket(self.anon_kib[2], self.anon_kib[0])]
    }

    pub fn json(&self) -> Value {
        let side = |s: &Side| match s {
            Ok(v) => json!({ "scrapes": v.iter().map(Scrape::json).collect::<Vec<_>>(),
                             "median_ms": Self::ms(s), "median_bytes": Self::bytes(s),
                             "median_series": Self::series(s), "median_time_wait": Self::time_wait(s) }),
            Err(e) => json!({ "na": e }),
        };
        json!({ "n": self.n, "peers": self.peers, "na": self.na, "time_wait_sockets": self.sockets,
                "distinct_peers": self.distinct_peers, "time_wait_sockets_after": self.sockets_after,
                "churn_s": self.churn_s, "window_s": self.window_s,
                "agent": side(&self.agent), "node_exporter_tcpstat": side(&self.exporter),
                "agent_ready_s": self.agent_ready_s, "agent_rss_base_kib": self.rss_base_kib,
                "agent_rss_seeded_kib": self.rss_seeded_kib,
                "agent_rss_after_scrapes_kib": self.rss_after_kib, "agent_peak_rss_kib": self.hwm_kib,
                "agent_tracked_sockets": self.tracked(),
                "agent_bytes_per_socket_seeded": self.bytes_per_socket_seeded(),
                "agent_bytes_per_socket_after_scrapes": self.bytes_per_socket_after(),
                "agent_rss_anon_kib": { "base": self.anon_kib[0], "seeded": self.anon_kib[1], "after_scrapes": self.anon_kib[2] },
                "agent_anon_bytes_per_socket": { "seeded": self.anon_bytes_per_socket()[0], "after_scrapes": self.anon_bytes_per_socket()[1] },
                "agent_exit_status": self.agent_exit, "agent_stderr": self.agent_stderr.trim() })
    }

    pub const DETAILS_HEADER: [&'static str; 8] = [
        "N (peers)",
        "side",
        "scrape ms (median, min-max)",
        "bytes",
        "series",
        "TIME_WAIT seen",
        "sockstat tw: before -> after (ss peers)",
        "churn s / churn end to last scrape s",
    ];

    /// Rows of the details table.
    pub fn details(&self) -> Vec<Vec<String>> {
        let n = format!("{} ({})", self.n, self.peers);
        let ss = format!("{} -> {} ({} peers)", self.sockets, self.sockets_after, self.distinct_peers);
        let times = format!("{:.1} / {:.1}", self.churn_s, self.window_s);
        [("twreset agent", &self.agent), ("node-exporter tcpstat", &self.exporter)]
            .into_iter()
            .map(|(name, s)| match s {
                Ok(v) => {
                    let ms: Vec<f64> = v.iter().map(|s| s.ms).collect();
                    let (lo, hi) =
                        (ms.iter().copied().fold(f64::INFINITY, f64::min), ms.iter().copied().fold(0.0, f64::max));
                    vec![
                        n.clone(),
                        name.into(),
                        format!("{} ({lo:.1}-{hi:.1})", opt(Self::ms(s), 1)),
                        opt(Self::bytes(s), 0),
                        opt(Self::series(s), 0),
                        opt(Self::time_wait(s), 0),
                        ss.clone(),
                        times.clone(),
                    ]
                }
                Err(e) => {
                    let mut r = vec![n.clone(), name.into(), e.chars().take(60).collect()];
                    r.resize(Self::DETAILS_HEADER.len(), String::new());
                    r
                }
            })
            .collect()
    }

    /// Summary rows: figure, twreset, peer, ratio, target, verdict.
    pub fn summary(&self) -> Vec<[String; 6]> {
        let at = format!("{} TIME_WAIT over {} peers", size(self.n), self.peers);
        let na = |s: &Side| s.as_ref().err().map(|e| e.chars().take(60).collect::<String>());
        let tw = |v: Option<f64>, d: usize| na(&self.agent).unwrap_or_else(|| opt(v, d));
        let pe = |v: Option<f64>, d: usize| {
            format!("{} (node-exporter tcpstat)", na(&self.exporter).unwrap_or_else(|| opt(v, d)))
        };
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.3}x", a / b),
            _ => "n/a".into(),
        };
        let (ms, ems) = (Self::ms(&self.agent), Self::ms(&self.exporter));
        let (by, eby) = (Self::bytes(&self.agent), Self::bytes(&self.exporter));
        let mib = |k: Option<u64>| opt(k.map(|k| k as f64 / 1024.0), 1);
        let dash = || "-".to_owned();
        let (per_seeded, per_after) = (self.bytes_per_socket_seeded(), self.bytes_per_socket_after());
        let bar = self.n >= 1_000_000;
        vec![
            [
                format!("agent: scrape ms, median of {SCRAPES} ({at})"),
                tw(ms, 1),
                pe(ems, 1),
                ratio(ms, ems),
                dash(),
                dash(),
            ],
            [
                format!("agent: exposition bytes (series) ({at})"),
                na(&self.agent).unwrap_or_else(|| format!("{} ({})", opt(by, 0), opt(Self::series(&self.agent), 0))),
                format!(
                    "{} (node-exporter tcpstat)",
                    na(&self.exporter).unwrap_or_else(|| format!(
                        "{} ({})",
                        opt(eby, 0),
                        opt(Self::series(&self.exporter), 0)
                    ))
                ),
                ratio(by, eby),
                "hundreds of series".into(),
                dash(),
            ],
            [
                format!("agent: TIME_WAIT of the bench namespace in the exposition ({})", size(self.n)),
                tw(Self::time_wait(&self.agent), 0),
                pe(Self::time_wait(&self.exporter), 0),
                dash(),
                format!("sockstat: {} -> {}", self.sockets, self.sockets_after),
                dash(),
            ],
            [
                format!("agent: RSS MiB base / seeded / after scrapes / peak ({at})"),
                na(&self.agent).unwrap_or_else(|| {
                    format!(
                        "{} / {} / {} / {}",
                        mib(self.rss_base_kib),
                        mib(self.rss_seeded_kib),
                        mib(self.rss_after_kib),
                        mib(self.hwm_kib)
                    )
                }),
                dash(),
                dash(),
                dash(),
                dash(),
            ],
            [
                format!("agent: RSS bytes per tracked socket beyond the base, seeded / after scrapes ({at})"),
                na(&self.agent).unwrap_or_else(|| {
                    let [a, b] = self.anon_bytes_per_socket();
                    format!("{} / {} (anon only: {} / {})", opt(per_seeded, 1), opt(per_after, 1), opt(a, 1), opt(b, 1))
                }),
                dash(),
                dash(),
                if bar { format!("<= ~{BYTES_PER_SOCKET_BAR} (issue, at 1M)") } else { dash() },
                match per_seeded.zip(per_after).map(|(a, b)| a.max(b)) {
                    Some(v) if bar && v <= BYTES_PER_SOCKET_BAR => format!("met ({v:.1} B)"),
                    Some(v) if bar => format!("above by {:.1} B", v - BYTES_PER_SOCKET_BAR),
                    _ => dash(),
                },
            ],
        ]
    }
}
