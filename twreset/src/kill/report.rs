//! Pure formatting of kill results: NDJSON per socket plus a summary object, or a human table
//! (dry run) and totals.

use std::{collections::BTreeMap, net::SocketAddr};

use serde_json::{Value, json};

use crate::{
    diag::{Entry, Outcome},
    kill::{Method, killer::failure, select::age},
};

/// Counts over every namespace of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub selected: usize,
    pub killed: usize,
    pub gone: usize,
    pub failed: usize,
    /// Failed sockets per reason.
    pub failures: BTreeMap<String, usize>,
    /// Namespaces where nothing could be attempted (preflight or kill error).
    pub ns_errors: usize,
}

impl Totals {
    pub fn add(&mut self, outcomes: &[Outcome]) {
        for o in outcomes {
            match o {
                Outcome::Killed => self.killed += 1,
                Outcome::Gone => self.gone += 1,
                Outcome::Failed { .. } | Outcome::Survived => {
                    self.failed += 1;
                    *self.failures.entry(failure(*o).unwrap_or_default()).or_default() += 1;
                }
            }
        }
    }

    /// Add another namespace's totals.
    pub fn merge(&mut self, o: &Totals) {
        self.selected += o.selected;
        self.killed += o.killed;
        self.gone += o.gone;
        self.failed += o.failed;
        for (reason, n) in &o.failures {
            *self.failures.entry(reason.clone()).or_default() += n;
        }
        self.ns_errors += o.ns_errors;
    }

    /// Exit status 1 when any selected socket could not be killed.
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.ns_errors == 0
    }
}

fn addr(ip: std::net::IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// One NDJSON object per socket; `outcome: None` means dry run ("would_kill"); `method` is the
/// one that acted on the socket (`destroy` or `rst`).
pub fn socket_json(netns: &str, e: &Entry, outcome: Option<Outcome>, method: Option<Method>) -> Value {
    let s = &e.sock;
    let (result, error) = match outcome {
        None => ("would_kill", None),
        Some(Outcome::Killed) => ("killed", None),
        Some(Outcome::Gone) => ("gone", None),
        Some(o @ (Outcome::Failed { .. } | Outcome::Survived)) => ("failed", failure(o)),
    };
    let mut v = json!({
        "type": "socket",
        "netns": netns,
        "netns_cookie": s.key.netns_cookie,
        "local": addr(s.key.laddr, s.key.lport),
        "remote": addr(s.key.raddr, s.key.rport),
        "state": s.state.name(),
        "timewait": s.timewait,
        "age_ms": age(s).map(|d| d.as_millis() as u64),
        "expires_ms": s.expires_ms,
        "result": result,
    });
    if let Some(m) = method {
        v["method"] = m.name().into();
    }
    if let Some(err) = error {
        v["error"] = err.into();
    }
    v
}

/// A namespace-level problem (`kind` "error": nothing was attempted there; "warning": a dry run
/// found that a real run would fail).
pub fn problem_json(kind: &str, netns: &str, cookie: u64, message: &str) -> Value {
    json!({ "type": kind, "netns": netns, "netns_cookie": cookie, "message": message })
}

pub fn summary_json(t: &Totals, dry_run: bool) -> Value {
    json!({
        "type": "summary",
        "dry_run": dry_run,
        "selected": t.selected,
        "killed": t.killed,
        "gone": t.gone,
        "failed": t.failed,
        "failures": t.failures,
        "namespace_errors": t.ns_errors,
    })
}

pub fn table_header() -> String {
    format!("{:<24} {:<11} {:<46} {:<46} {:>7}", "NETNS", "STATE", "LOCAL", "REMOTE", "AGE")
}

pub fn table_line(netns: &str, e: &Entry) -> String {
    let s = &e.sock;
    let state = if s.timewait && s.state.name() != "TIME_WAIT" {
        format!("TW/{}", s.state.name())
    } else {
        s.state.name().into()
    };
    let age = age(s).map_or_else(|| "-".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()));
    format!(
        "{:<24} {:<11} {:<46} {:<46} {:>7}",
        netns,
        state,
        addr(s.key.laddr, s.key.lport),
        addr(s.key.raddr, s.key.rport),
        age
    )
}

pub fn summary_line(t: &Totals, dry_run: bool) -> String {
    if dry_run {
        return format!("dry run: {} sockets would be killed; nothing was touched", t.selected);
    }
    let mut s = format!("selected {}, killed {}, already gone {}, failed {}", t.selected, t.killed, t.gone, t.failed);
    if t.ns_errors > 0 {
        s.push_str(&format!(", {} namespace(s) not attempted (reason above)", t.ns_errors));
    }
    for (why, n) in &t.failures {
        s.push_str(&format!("\n  {n} failed: {why}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{kill::select::tests::sock, state::TcpState};

    fn e(tw: bool) -> Entry {
        Entry {
            sock: sock(
                "[fd00::1]:4000",
                "[fd00::2]:80",
                if tw { TcpState::FinWait2 } else { TcpState::Established },
                tw,
                20_000,
            ),
            ifindex: 0,
        }
    }

    #[test]
    fn totals_and_exit() {
        let mut t = Totals { selected: 4, ..Default::default() };
        t.add(&[Outcome::Killed, Outcome::Gone, Outcome::Failed { errno: libc::EPERM }, Outcome::Killed]);
        assert_eq!((t.killed, t.gone, t.failed), (2, 1, 1));
        assert!(!t.ok());
        let line = summary_line(&t, false);
        assert!(line.contains("killed 2, already gone 1, failed 1") && line.contains("CAP_NET_ADMIN"), "{line}");
        let j = summary_json(&t, false);
        assert_eq!(j["failed"], 1);
        assert_eq!(j["type"], "summary");
        let mut ok = Totals::default();
        ok.add(&[Outcome::Gone]);
        assert!(ok.ok(), "already gone is not a failure");
    }

    #[test]
    fn socket_objects() {
        let j = socket_json("ns", &e(true), Some(Outcome::Failed { errno: libc::EOPNOTSUPP }), Some(Method::Destroy));
        assert_eq!(j["method"], "destroy");
        assert_eq!(j["local"], "[fd00::1]:4000");
        assert_eq!(j["remote"], "[fd00::2]:80");
        assert_eq!(j["state"], "FIN_WAIT2");
        assert_eq!(j["timewait"], true);
        assert_eq!(j["age_ms"], 40_000);
        assert_eq!(j["result"], "failed");
        assert!(j["error"].as_str().unwrap().contains("Linux 6.0"));
        let j = socket_json("ns", &e(false), None, None);
        assert!(j.get("method").is_none(), "a dry run names no method");
        assert_eq!(j["result"], "would_kill");
        assert!(j["age_ms"].is_null());
        assert!(j.get("error").is_none());
        assert!(table_line("ns", &e(true)).contains("TW/FIN_WAIT2"));
        assert!(table_line("ns", &e(false)).trim_end().ends_with('-'));
    }
}
