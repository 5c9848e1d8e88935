//! The `kill --json` lines read back into [`Sink`] calls: the CLI going through the agent prints
//! its human output with the same sink as a direct run.

use std::{collections::BTreeMap, net::SocketAddr};

use serde_json::Value;

use crate::{
    diag::{Entry, Outcome},
    kill::{
        exec::{ProblemKind, Sink},
        report::Totals,
    },
    sock::{DiagSocket, SockKey},
    state::TcpState,
};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("the agent sent a kill line without a valid {field:?}: {line}")]
    Field { field: &'static str, line: String },
    #[error("the agent sent an unknown kill line: {line}")]
    Type { line: String },
    #[error("writing results")]
    Output(#[from] std::io::Error),
}

/// One parsed line; `Some(totals)` for the summary.
pub fn replay(v: &Value, sink: &mut dyn Sink) -> Result<Option<Totals>, ReplayError> {
    let bad = |field| ReplayError::Field { field, line: v.to_string() };
    let str_of = |field| v[field].as_str().ok_or_else(|| bad(field));
    let u64_of = |field| v[field].as_u64().ok_or_else(|| bad(field));
    match v["type"].as_str() {
        Some(kind @ ("warning" | "error")) => {
            let kind = if kind == "warning" { ProblemKind::Warning } else { ProblemKind::Error };
            sink.problem(kind, str_of("netns")?, u64_of("netns_cookie")?, str_of("message")?)?;
            Ok(None)
        }
        Some("socket") => {
            let addr = |field| str_of(field)?.parse::<SocketAddr>().map_err(|_| bad(field));
            let (local, remote) = (addr("local")?, addr("remote")?);
            let sock = DiagSocket {
                key: SockKey {
                    netns_cookie: u64_of("netns_cookie")?,
                    laddr: local.ip(),
                    lport: local.port(),
                    raddr: remote.ip(),
                    rport: remote.port(),
                },
                state: str_of("state")?.parse::<TcpState>().map_err(|_| bad("state"))?,
                timewait: v["timewait"].as_bool().ok_or_else(|| bad("timewait"))?,
                expires_ms: u64_of("expires_ms")?.try_into().map_err(|_| bad("expires_ms"))?,
                cookie: 0,
                inode: 0,
                uid: 0,
            };
            // Only "would_kill" (a dry run) versus done matters to the human output.
            let outcome = match str_of("result")? {
                "would_kill" => None,
                "killed" => Some(Outcome::Killed),
                "gone" => Some(Outcome::Gone),
                _ => Some(Outcome::Survived),
            };
            sink.socket(str_of("netns")?, &Entry { sock, ifindex: 0 }, outcome)?;
            Ok(None)
        }
        Some("summary") => {
            let n = |field| u64_of(field).map(|n| n as usize);
            let failures: BTreeMap<String, usize> = v["failures"]
                .as_object()
                .ok_or_else(|| bad("failures"))?
                .iter()
                .map(|(k, n)| n.as_u64().map(|n| (k.clone(), n as usize)).ok_or_else(|| bad("failures")))
                .collect::<Result<_, _>>()?;
            let totals = Totals {
                selected: n("selected")?,
                killed: n("killed")?,
                gone: n("gone")?,
                failed: n("failed")?,
                failures,
                ns_errors: n("namespace_errors")?,
            };
            sink.summary(&totals, v["dry_run"].as_bool().ok_or_else(|| bad("dry_run"))?)?;
            Ok(Some(totals))
        }
        _ => Err(ReplayError::Type { line: v.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kill::{exec::JsonSink, report, select::tests::sock};

    /// Lines written by the JSON sink, replayed into another JSON sink, come out identical.
    #[test]
    fn round_trip() {
        let mut direct = JsonSink { out: Vec::new(), stderr: false };
        let tw = Entry { sock: sock("[fd00::1]:4000", "[fd00::2]:80", TcpState::FinWait2, true, 20_000), ifindex: 3 };
        let est = Entry { sock: sock("10.0.0.1:4000", "10.0.0.2:443", TcpState::Established, false, 0), ifindex: 0 };
        direct.problem(ProblemKind::Warning, "ns1", 7, "needs CAP_NET_ADMIN").unwrap();
        direct.socket("ns1", &tw, None).unwrap();
        direct.socket("ns1", &est, Some(Outcome::Killed)).unwrap();
        direct.socket("ns1", &est, Some(Outcome::Gone)).unwrap();
        let mut t = Totals { selected: 3, ns_errors: 1, ..Totals::default() };
        t.add(&[Outcome::Killed, Outcome::Gone, Outcome::Failed { errno: libc::EPERM }]);
        direct.summary(&t, false).unwrap();
        let text = String::from_utf8(direct.out).unwrap();
        let mut again = JsonSink { out: Vec::new(), stderr: false };
        let mut last = None;
        for l in text.lines() {
            last = replay(&serde_json::from_str(l).unwrap(), &mut again).unwrap();
        }
        assert_eq!(String::from_utf8(again.out).unwrap(), text);
        assert_eq!(last, Some(t));
        assert!(report::summary_line(&last.unwrap(), false).contains("failed 1"));
    }

    #[test]
    fn bad_lines() {
        let mut s = JsonSink { out: Vec::new(), stderr: false };
        assert!(matches!(replay(&serde_json::json!({"type": "x"}), &mut s), Err(ReplayError::Type { .. })));
        let e = replay(&serde_json::json!({"type": "socket", "netns": "a"}), &mut s).unwrap_err();
        assert!(e.to_string().contains("\"local\""), "{e}");
    }
}
