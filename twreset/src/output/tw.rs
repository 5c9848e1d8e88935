//! Pure rendering of a table [`Snapshot`]: one JSON document (`tw --json`) or an aligned table.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use crate::{
    output::NsNames,
    table::{By, Group, Row, Snapshot, Totals},
    tw_event::TwCause,
};

/// Seconds, rounded to the millisecond.
fn secs(s: Option<f64>) -> Value {
    s.map_or(Value::Null, |s| json!((s * 1000.0).round() / 1000.0))
}

fn kills<T: Copy + Into<u64>>(by_cause: &[T; 6]) -> Value {
    Value::Object(TwCause::ALL.iter().map(|c| (c.name().to_owned(), json!(by_cause[c.index()].into()))).collect())
}

fn row_json(r: &Row, names: &NsNames) -> Value {
    let mut o = Map::new();
    match r.group {
        Group::Peer(ip) => {
            o.insert("raddr".into(), json!(ip.to_string()));
        }
        Group::Prefix(net) => {
            o.insert("prefix".into(), json!(net.to_string()));
        }
        Group::Port(p) => {
            o.insert("rport".into(), json!(p));
        }
        Group::Local(ip) => {
            o.insert("laddr".into(), json!(ip.to_string()));
        }
        Group::Dest(d) => {
            o.insert("netns_cookie".into(), json!(d.netns));
            if let Some(id) = names.identity(d.netns) {
                id.insert_into(&mut o);
            }
            o.insert("laddr".into(), json!(d.laddr.to_string()));
            o.insert("raddr".into(), json!(d.raddr.to_string()));
            o.insert("rport".into(), json!(d.rport));
        }
    }
    o.insert("count".into(), json!(r.count));
    o.insert("time_wait".into(), json!(r.time_wait()));
    o.insert("fin_wait2".into(), json!(r.fin_wait2));
    o.insert("oldest_s".into(), secs(r.oldest_s));
    o.insert("newest_s".into(), secs(r.newest_s));
    o.insert("kills".into(), kills(&r.kills));
    if let Some(p) = r.pressure {
        o.insert("connected".into(), json!(p.connected));
        o.insert("holding".into(), json!(p.holding));
        o.insert("port_range".into(), json!(p.range));
        o.insert("pressure".into(), json!((p.ratio * 10_000.0).round() / 10_000.0));
        o.insert("rate_per_s".into(), json!((p.rate_per_s * 1000.0).round() / 1000.0));
        o.insert("exhaustion_s".into(), secs(p.exhaustion_s));
    }
    Value::Object(o)
}

fn totals_json(t: &Totals) -> Value {
    let c = &t.counters;
    json!({
        "count": t.count,
        "time_wait": t.time_wait(),
        "fin_wait2": t.fin_wait2,
        "created": c.created,
        "rearmed": c.rearmed,
        "expired": c.expired,
        "killed": kills(&c.killed),
        "overflow": c.overflow,
        "born": c.born,
        "lost": c.lost,
        "unseen": c.unseen,
        "drift": c.drift,
        "resyncs": c.resyncs,
        "reconciles": c.reconciles,
        "overdue": c.overdue,
        "stray": c.stray,
    })
}

/// The `twreset tw --json` document (schema in docs/guide/tw.md); destination rows of a pod's,
/// container's or named namespace carry its identity (`netns`, `pod_namespace`, `pod`, ...).
pub fn render_json(snap: &Snapshot, names: &NsNames) -> Value {
    json!({
        "by": snap.by.name(),
        "rows": snap.rows.iter().map(|r| row_json(r, names)).collect::<Vec<_>>(),
        "totals": totals_json(&snap.totals),
    })
}

/// `42.5s`, `5m03s`, `2h01m`.
pub fn age(s: Option<f64>) -> String {
    let Some(s) = s else { return "-".into() };
    match s {
        s if s < 60.0 => format!("{s:.1}s"),
        s if s < 3600.0 => format!("{}m{:02}s", (s / 60.0) as u64, s as u64 % 60),
        s => format!("{}h{:02}m", (s / 3600.0) as u64, s as u64 / 60 % 60),
    }
}

/// The group column's heading.
pub fn group_heading(by: By) -> &'static str {
    match by {
        By::Peer => "PEER",
        By::Prefix => "PREFIX",
        By::Port => "RPORT",
        By::Local => "LOCAL",
        By::Dest => "DESTINATION",
    }
}

/// A row's group label; destinations carry their namespace when it has a name.
pub fn group_label(g: &Group, names: &NsNames) -> String {
    match g {
        Group::Dest(d) if names.0.contains_key(&d.netns) => format!("[{}] {g}", names.label(d.netns)),
        g => g.to_string(),
    }
}

pub fn totals_line(t: &Totals) -> String {
    let c = &t.counters;
    format!(
        "tw sockets: {} (TIME_WAIT {}, FIN_WAIT2 {})  overflow {}  lost {}  drift {}  resyncs {}",
        t.count,
        t.time_wait(),
        t.fin_wait2,
        c.overflow,
        c.lost,
        c.drift,
        c.resyncs
    )
}

pub fn kills_line(t: &Totals) -> String {
    let parts: Vec<String> =
        TwCause::ALL.iter().map(|c| format!("{} {}", c.name(), t.counters.killed[c.index()])).collect();
    format!("early kills: {}", parts.join(", "))
}

/// The aligned table `twreset tw` prints.
pub fn render_human(snap: &Snapshot, names: &NsNames) -> String {
    let mut out = String::new();
    let labels: Vec<String> = snap.rows.iter().map(|r| group_label(&r.group, names)).collect();
    let head = group_heading(snap.by);
    let w = labels.iter().map(String::len).chain([head.len()]).max().unwrap_or(0);
    let _ = write!(out, "{head:<w$} {:>7} {:>6} {:>8} {:>8} {:>6}", "COUNT", "FW2", "OLDEST", "NEWEST", "KILLS");
    if snap.by == By::Dest {
        let _ = write!(out, " {:>6} {:>9} {:>8} {:>8}", "CONN", "PRESSURE", "RATE/s", "EXHAUST");
    }
    out.push('\n');
    for (r, label) in snap.rows.iter().zip(&labels) {
        let _ = write!(
            out,
            "{label:<w$} {:>7} {:>6} {:>8} {:>8} {:>6}",
            r.count,
            r.fin_wait2,
            age(r.oldest_s),
            age(r.newest_s),
            r.kills_total()
        );
        if let Some(p) = r.pressure {
            let exhaust = p.exhaustion_s.map_or("never".into(), |s| age(Some(s)));
            let _ = write!(out, " {:>6} {:>8.1}% {:>8.1} {:>8}", p.connected, p.ratio * 100.0, p.rate_per_s, exhaust);
        }
        out.push('\n');
    }
    let _ = writeln!(out, "{}", totals_line(&snap.totals));
    let _ = writeln!(out, "{}", kills_line(&snap.totals));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ports::{Dest, Pressure},
        table::Counters,
    };

    fn row(group: Group) -> Row {
        Row {
            group,
            count: 3,
            fin_wait2: 1,
            oldest_s: Some(20.1234),
            newest_s: Some(1.0),
            kills: [1, 0, 0, 0, 2, 0],
            pressure: None,
        }
    }

    fn snap(by: By, rows: Vec<Row>) -> Snapshot {
        let counters = Counters {
            overflow: 4,
            lost: 5,
            unseen: 2,
            drift: 6,
            resyncs: 7,
            killed: [1, 0, 0, 0, 2, 0],
            ..Counters::default()
        };
        Snapshot { by, rows, totals: Totals { count: 3, fin_wait2: 1, counters } }
    }

    fn render_json_plain(s: &Snapshot) -> Value {
        render_json(s, &NsNames::default())
    }

    fn dest() -> Dest {
        Dest { netns: 9, laddr: "10.0.0.1".parse().unwrap(), raddr: "10.0.0.2".parse().unwrap(), rport: 443 }
    }

    #[test]
    fn json_by_peer() {
        let v = render_json_plain(&snap(By::Peer, vec![row(Group::Peer("10.0.0.2".parse().unwrap()))]));
        assert_eq!(v["by"], "peer");
        let r = &v["rows"][0];
        assert_eq!(r["raddr"], "10.0.0.2");
        assert_eq!(
            (r["count"].as_u64(), r["time_wait"].as_u64(), r["fin_wait2"].as_u64()),
            (Some(3), Some(2), Some(1))
        );
        assert_eq!(r["oldest_s"], 20.123);
        assert_eq!(r["newest_s"], 1.0);
        assert_eq!(r["kills"]["sock_destroy"], 1);
        assert_eq!(r["kills"]["netns_gone"], 2);
        assert_eq!(r["kills"].as_object().unwrap().len(), 6);
        assert!(r.get("pressure").is_none());
        let t = &v["totals"];
        for (k, want) in [
            ("count", 3),
            ("time_wait", 2),
            ("fin_wait2", 1),
            ("overflow", 4),
            ("lost", 5),
            ("unseen", 2),
            ("drift", 6),
            ("resyncs", 7),
        ] {
            assert_eq!(t[k], want, "{k}");
        }
        assert_eq!(t["killed"]["netns_gone"], 2);
    }

    #[test]
    fn json_group_fields() {
        let one = |g| render_json_plain(&snap(By::Peer, vec![row(g)]))["rows"][0].clone();
        assert_eq!(one(Group::Prefix("10.0.0.0/24".parse().unwrap()))["prefix"], "10.0.0.0/24");
        assert_eq!(one(Group::Port(443))["rport"], 443);
        assert_eq!(one(Group::Local("fd00::1".parse().unwrap()))["laddr"], "fd00::1");
        let mut r = row(Group::Dest(dest()));
        r.pressure = Some(Pressure::compute(3, 7, 100, 2.0));
        let v = render_json_plain(&snap(By::Dest, vec![r]));
        let r = &v["rows"][0];
        assert_eq!(
            (r["netns_cookie"].as_u64(), r["laddr"].as_str(), r["raddr"].as_str(), r["rport"].as_u64()),
            (Some(9), Some("10.0.0.1"), Some("10.0.0.2"), Some(443))
        );
        assert_eq!(
            (r["connected"].as_u64(), r["holding"].as_u64(), r["port_range"].as_u64()),
            (Some(7), Some(10), Some(100))
        );
        assert_eq!(r["pressure"], 0.1);
        assert_eq!(r["rate_per_s"], 2.0);
        assert_eq!(r["exhaustion_s"], 45.0);
        let mut idle = row(Group::Dest(dest()));
        idle.pressure = Some(Pressure::compute(0, 1, 100, 0.0));
        idle.oldest_s = None;
        let v = render_json_plain(&snap(By::Dest, vec![idle]));
        assert!(v["rows"][0]["exhaustion_s"].is_null());
        assert!(v["rows"][0]["oldest_s"].is_null());
    }

    #[test]
    fn ages() {
        assert_eq!(age(None), "-");
        assert_eq!(age(Some(0.04)), "0.0s");
        assert_eq!(age(Some(42.46)), "42.5s");
        assert_eq!(age(Some(303.0)), "5m03s");
        assert_eq!(age(Some(7260.0)), "2h01m");
    }

    #[test]
    fn human_table() {
        let text =
            render_human(&snap(By::Peer, vec![row(Group::Peer("10.0.0.2".parse().unwrap()))]), &NsNames::default());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("PEER") && lines[0].contains("COUNT") && !lines[0].contains("RATE"), "{text}");
        assert!(lines[1].starts_with("10.0.0.2") && lines[1].contains(" 3 ") && lines[1].contains("20.1s"), "{text}");
        assert!(lines[2].contains("overflow 4  lost 5  drift 6  resyncs 7"), "{text}");
        assert!(lines[3].contains("sock_destroy 1") && lines[3].contains("netns_gone 2"), "{text}");
    }

    #[test]
    fn human_dest_shows_pressure_and_namespace_name() {
        let mut r = row(Group::Dest(dest()));
        r.pressure = Some(Pressure::compute(3, 7, 100, 0.0));
        let mut names = NsNames::default();
        names.0.insert(9, "blue".into());
        let text = render_human(&snap(By::Dest, vec![r]), &names);
        assert!(text.lines().next().unwrap().contains("EXHAUST"), "{text}");
        let line = text.lines().nth(1).unwrap();
        assert!(line.starts_with("[blue] 10.0.0.1 -> 10.0.0.2:443"), "{line}");
        assert!(line.contains("10.0%") && line.ends_with("never"), "{line}");
    }

    #[test]
    fn dest_rows_carry_the_namespace_identity() {
        use crate::kernel::identity::{Kind, NetnsIdentity};
        let pod = NetnsIdentity {
            cookie: 9,
            kind: Kind::Pod {
                namespace: Some("shop".into()),
                name: Some("web-0".into()),
                uid: "u-1234567".into(),
                containers: vec![],
            },
        };
        let mut names = NsNames::default();
        names.0.insert(9, pod.label());
        names.1.insert(9, pod);
        let v = render_json(&snap(By::Dest, vec![row(Group::Dest(dest()))]), &names);
        let r = &v["rows"][0];
        assert_eq!(
            (r["netns"].as_str(), r["pod_namespace"].as_str(), r["pod"].as_str()),
            (Some("pod:shop/web-0"), Some("shop"), Some("web-0"))
        );
        assert_eq!(r["netns_cookie"], 9);
        let text = render_human(&snap(By::Dest, vec![row(Group::Dest(dest()))]), &names);
        assert!(text.lines().nth(1).unwrap().starts_with("[pod:shop/web-0] 10.0.0.1"), "{text}");
        // Other groupings span namespaces: no identity on their rows.
        let v = render_json(&snap(By::Peer, vec![row(Group::Peer("10.0.0.2".parse().unwrap()))]), &names);
        assert!(v["rows"][0].get("pod").is_none());
    }
}
