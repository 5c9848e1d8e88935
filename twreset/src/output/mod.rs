//! Pure formatting of transitions: aligned human lines and NDJSON objects; `tw` renders tables.

pub mod tw;

use std::{collections::HashMap, net::IpAddr};

use serde_json::{Value, json};

use crate::{
    decode::Transition,
    kernel::identity::{NetnsIdentity, Resolver},
    ndjson::Line,
    tw_event::{TwCause, TwEvent, TwEventKind},
};

/// Labels of namespace cookies where known (pods, containers, `ip netns` names; not the host,
/// which human output leaves as its cookie), and the identities behind them for JSON output.
#[derive(Clone, Debug, Default)]
pub struct NsNames(pub HashMap<u64, String>, pub HashMap<u64, NetnsIdentity>);

impl NsNames {
    /// Every identity of `r` other than the host's and unknown ones.
    pub fn from_resolver(r: &Resolver) -> Self {
        let ids: HashMap<u64, NetnsIdentity> =
            r.identities().filter(|i| !i.is_plain()).map(|i| (i.cookie, i.clone())).collect();
        Self(ids.iter().map(|(c, i)| (*c, i.label())).collect(), ids)
    }

    /// Identities from [`Resolver::from_env`]; only `ip netns` names where it cannot run.
    pub fn resolve() -> Self {
        match Resolver::from_env() {
            Ok(r) => Self::from_resolver(&r),
            Err(e) => {
                tracing::debug!("namespace identities: {e:#}");
                Self(crate::kernel::netns::named().into_iter().map(|(n, c)| (c, n)).collect(), HashMap::new())
            }
        }
    }

    /// The identity of a non-host namespace, where known.
    pub fn identity(&self, cookie: u64) -> Option<&NetnsIdentity> {
        self.1.get(&cookie)
    }

    pub fn label(&self, cookie: u64) -> String {
        match self.0.get(&cookie) {
            Some(name) => name.clone(),
            None => cookie.to_string(),
        }
    }
}

/// Maps `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// realtime_ns - monotonic_ns, sampled once.
    pub offset_ns: i128,
}

impl WallClock {
    pub fn now() -> Self {
        let rt = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME).expect("CLOCK_REALTIME");
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
        let ns = |t: nix::sys::time::TimeSpec| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128;
        Self { offset_ns: ns(rt) - ns(mono) }
    }

    /// `HH:MM:SS.uuuuuu` (UTC) of a monotonic timestamp.
    pub fn format(&self, mono_ns: u64) -> String {
        let ns = (mono_ns as i128 + self.offset_ns).max(0) as u128;
        let secs = ns / 1_000_000_000;
        let day = secs % 86_400;
        format!("{:02}:{:02}:{:02}.{:06}", day / 3600, day / 60 % 60, day % 60, ns % 1_000_000_000 / 1000)
    }
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// Keep a column at most `max` characters wide, marking the cut with `~`.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('~');
        t
    }
}

/// Column header matching [`human_line`].
pub fn human_header() -> String {
    format!("{:<15} {:<24} {:>30} {:>30}  {}", "TIME(UTC)", "NETNS", "LOCAL", "REMOTE", "TRANSITION")
}

/// One aligned line per transition; an active close is marked `(TIME_WAIT)`.
pub fn human_line(t: &Transition, ns: &NsNames, clock: &WallClock) -> String {
    let mark = if t.into_time_wait() { "  (TIME_WAIT)" } else { "" };
    format!(
        "{:<15} {:<24} {:>30} {:>30}  {} -> {}{}",
        clock.format(t.ts_ns),
        truncate(&ns.label(t.netns_cookie), 24),
        endpoint(t.laddr, t.lport),
        endpoint(t.raddr, t.rport),
        t.old,
        t.new,
        mark
    )
}

/// The NDJSON object of one transition (schema documented in docs/guide/trace.md).
pub fn json(t: &Transition) -> Value {
    json!({
        "ts_ns": t.ts_ns,
        "netns_cookie": t.netns_cookie,
        "family": t.family.name(),
        "laddr": t.laddr.to_string(),
        "lport": t.lport,
        "raddr": t.raddr.to_string(),
        "rport": t.rport,
        "old": t.old.name(),
        "new": t.new.name(),
        "time_wait": t.into_time_wait(),
        "sk": format!("{:#x}", t.skaddr),
    })
}

/// Append the NDJSON line of [`tw_json`] to `buf`: the same object without a `serde_json::Value`
/// per event (transitions have their own writer, `ndjson::transition`).
/// `identity` is spliced in after `netns_cookie` (see [`NetnsIdentity::json_fragment`]).
pub fn push_tw_json_line(buf: &mut Vec<u8>, ev: &TwEvent, identity: &[u8]) {
    let k = &ev.key;
    let mut l = Line::new(buf);
    let event = match ev.kind {
        TwEventKind::Created { .. } | TwEventKind::Rearmed { .. } => "tw_start",
        TwEventKind::Expired => "tw_expire",
        TwEventKind::Killed { .. } => "tw_kill",
        TwEventKind::Born { .. } => "tw_born",
        TwEventKind::Overflow => "tw_overflow",
    };
    l.str("event", event)
        .u64("ts_ns", ev.ts_ns)
        .u64("netns_cookie", k.netns_cookie)
        .raw(identity)
        .str("family", k.family().name())
        .ip("laddr", k.laddr)
        .u64("lport", k.lport.into())
        .ip("raddr", k.raddr)
        .u64("rport", k.rport.into());
    match ev.kind {
        TwEventKind::Created { substate, timeout_ms } | TwEventKind::Rearmed { substate, timeout_ms } => {
            l.str("substate", substate.name())
                .u64("timeout_ms", timeout_ms.into())
                .bool("rearm", matches!(ev.kind, TwEventKind::Rearmed { .. }));
        }
        TwEventKind::Killed { cause } => {
            l.str("cause", cause_name(cause));
        }
        TwEventKind::Born { substate } => {
            l.str("substate", substate.name());
        }
        TwEventKind::Expired | TwEventKind::Overflow => {}
    }
    l.end();
}

/// Stable snake_case name of a cause (JSON and human output).
pub fn cause_name(c: TwCause) -> &'static str {
    c.name()
}

fn tw_fields(ev: &TwEvent) -> (&'static str, Value) {
    match ev.kind {
        TwEventKind::Created { substate, timeout_ms } | TwEventKind::Rearmed { substate, timeout_ms } => {
            let rearm = matches!(ev.kind, TwEventKind::Rearmed { .. });
            ("tw_start", json!({"substate": substate.name(), "timeout_ms": timeout_ms, "rearm": rearm}))
        }
        TwEventKind::Expired => ("tw_expire", json!({})),
        TwEventKind::Killed { cause } => ("tw_kill", json!({"cause": cause_name(cause)})),
        TwEventKind::Born { substate } => ("tw_born", json!({"substate": substate.name()})),
        TwEventKind::Overflow => ("tw_overflow", json!({})),
    }
}

/// NDJSON object of a TIME_WAIT lifecycle event (`trace --timewait`).
pub fn tw_json(ev: &TwEvent) -> Value {
    let (name, extra) = tw_fields(ev);
    let k = &ev.key;
    let mut v = json!({
        "event": name,
        "ts_ns": ev.ts_ns,
        "netns_cookie": k.netns_cookie,
        "family": k.family().name(),
        "laddr": k.laddr.to_string(),
        "lport": k.lport,
        "raddr": k.raddr.to_string(),
        "rport": k.rport,
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v
}

/// Human line of a TIME_WAIT lifecycle event, aligned with [`human_line`].
pub fn tw_human_line(ev: &TwEvent, ns: &NsNames, clock: &WallClock) -> String {
    let what = match ev.kind {
        TwEventKind::Created { substate, timeout_ms } => {
            format!("tw armed {substate} {:.1}s", timeout_ms as f64 / 1000.0)
        }
        TwEventKind::Rearmed { substate, timeout_ms } => {
            format!("tw re-armed {substate} {:.1}s", timeout_ms as f64 / 1000.0)
        }
        TwEventKind::Expired => "tw expired".to_owned(),
        TwEventKind::Killed { cause } => format!("tw killed ({})", cause_name(cause)),
        TwEventKind::Born { substate } => format!("tw created {substate} (no timer event; seen by sock_ops)"),
        TwEventKind::Overflow => "tw overflow: tcp_max_tw_buckets full, no TIME_WAIT socket".to_owned(),
    };
    format!(
        "{:<15} {:<24} {:>30} {:>30}  {}",
        clock.format(ev.ts_ns),
        truncate(&ns.label(ev.key.netns_cookie), 24),
        endpoint(ev.key.laddr, ev.key.lport),
        endpoint(ev.key.raddr, ev.key.rport),
        what
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{sock::Family, state::TcpState};

    fn t() -> Transition {
        Transition {
            ts_ns: 1_500_000_000,
            netns_cookie: 4096,
            skaddr: 1,
            family: Family::Inet6,
            laddr: "fd00::1".parse().unwrap(),
            lport: 1234,
            raddr: "fd00::2".parse().unwrap(),
            rport: 80,
            old: TcpState::FinWait2,
            new: TcpState::Close,
        }
    }

    #[test]
    fn json_schema() {
        let v = json(&t());
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec![
            "ts_ns",
            "netns_cookie",
            "family",
            "laddr",
            "lport",
            "raddr",
            "rport",
            "old",
            "new",
            "time_wait",
            "sk",
        ];
        want.sort();
        let mut got = keys.clone();
        got.sort();
        assert_eq!(got, want);
        assert_eq!(v["family"], "inet6");
        assert_eq!(v["old"], "FIN_WAIT2");
        assert_eq!(v["new"], "CLOSE");
        assert_eq!(v["time_wait"], true);
        assert_eq!(v["rport"], 80);
    }

    #[test]
    fn fast_tw_json_line_is_the_same_object() {
        use crate::{sock::SockKey, state::TcpState};
        let kinds = [
            TwEventKind::Created { substate: TcpState::TimeWait, timeout_ms: 60_000 },
            TwEventKind::Rearmed { substate: TcpState::FinWait2, timeout_ms: 1 },
            TwEventKind::Expired,
            TwEventKind::Killed { cause: TwCause::PeerRst },
            TwEventKind::Born { substate: TcpState::TimeWait },
            TwEventKind::Overflow,
        ];
        for (kind, laddr, raddr) in kinds.into_iter().zip(["10.0.0.1", "fd00::1"].into_iter().cycle()).map(|(k, a)| {
            let b = if a.contains(':') { "fd00::2" } else { "10.0.0.2" };
            (k, a, b)
        }) {
            let key = SockKey {
                netns_cookie: 4096,
                laddr: laddr.parse().unwrap(),
                lport: 40000,
                raddr: raddr.parse().unwrap(),
                rport: 443,
            };
            let ev = TwEvent { ts_ns: 123, key, kind };
            let mut buf = Vec::new();
            push_tw_json_line(&mut buf, &ev, b"");
            let parsed: Value = serde_json::from_slice(&buf).unwrap();
            assert_eq!(parsed, tw_json(&ev), "{}", String::from_utf8_lossy(&buf));
            match kind {
                TwEventKind::Created { .. } => assert_eq!(parsed["rearm"], false),
                TwEventKind::Rearmed { .. } => assert_eq!(parsed["rearm"], true),
                _ => assert!(parsed.get("rearm").is_none()),
            }
        }
    }

    #[test]
    fn human_marks_time_wait_and_labels_ns() {
        let mut names = NsNames::default();
        names.0.insert(4096, "blue".into());
        let clock = WallClock { offset_ns: 3_600_000_000_000 };
        let line = human_line(&t(), &names, &clock);
        assert!(line.starts_with("01:00:01.500000 blue"), "{line}");
        assert!(line.contains("[fd00::1]:1234"));
        assert!(line.ends_with("FIN_WAIT2 -> CLOSE  (TIME_WAIT)"), "{line}");
        let mut other = t();
        other.old = TcpState::LastAck;
        assert!(human_line(&other, &NsNames::default(), &clock).contains(" 4096 "));
        assert!(!human_line(&other, &names, &clock).contains("TIME_WAIT"));
    }
}
