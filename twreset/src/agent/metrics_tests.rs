//! The exposition: bounded rows whose sums stay right, escaping, and every family present.

use super::*;

fn ns(netns: &str, time_wait: u64) -> NsFigures {
    NsFigures { netns: netns.into(), time_wait, created: time_wait, ..NsFigures::default() }
}

/// `name{labels} value` lines of one family, labels as written.
fn series<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .map(|l| {
            let (head, v) = l.rsplit_once(' ').unwrap();
            (head, v.parse().unwrap())
        })
        .collect()
}

fn sum(text: &str, name: &str, filter: &str) -> f64 {
    series(text, name).iter().filter(|(h, _)| h.contains(filter)).map(|(_, v)| v).sum()
}

fn figures(top_n: usize) -> Figures {
    let mut f = Figures { version: "0.1.0".into(), kernel: "6.18.0".into(), top_n, ..Figures::default() };
    f.interned = [("namespaces", 5), ("addresses", 4), ("pairs", 6)];
    // 5 namespaces of 10..50 sockets; each with as many peers as tens.
    for k in 1..=5u64 {
        let name = format!("ns{k}");
        f.namespaces.push(ns(&name, k * 10));
        for p in 0..k {
            f.peers.push(PeerFigure { netns: name.clone(), peer: format!("10.0.{k}.{p}"), sockets: 10 });
            f.dests.push(DestFigure {
                netns: name.clone(),
                laddr: "10.0.0.1".into(),
                raddr: format!("10.0.{k}.{p}"),
                rport: "443".into(),
                held: 10 + p,
                ratio: (10 + p) as f64 / 1000.0,
            });
        }
    }
    f.lost = vec![("ringbuf_full", 1), ("unseen", 2)];
    f.kills = vec![("api", "killed", 3)];
    f
}

#[test]
fn top_n_rows_plus_other_keep_every_sum() {
    let f = figures(3);
    let text = exposition(&f);
    // Namespaces: ns5, ns4, ns3 by name, ns1 + ns2 as other.
    let tw = series(&text, "twreset_timewait_sockets");
    assert_eq!(tw.len(), 4 * 2, "{tw:?}");
    assert_eq!(sum(&text, "twreset_timewait_sockets", "netns=\"other\",substate=\"time_wait\""), 30.0);
    assert_eq!(sum(&text, "twreset_timewait_sockets", ""), 150.0);
    assert_eq!(sum(&text, "twreset_timewait_created_total", "netns=\"other\""), 30.0);
    // Peers: 3 rows of their own, then per-namespace other rows (3 at most), then one more.
    let peers = series(&text, "twreset_timewait_peer_sockets");
    assert!(peers.len() <= 3 + 3 + 1, "{peers:?}");
    assert_eq!(sum(&text, "twreset_timewait_peer_sockets", ""), 150.0);
    for k in 3..=5 {
        let label = format!("netns=\"ns{k}\"");
        assert_eq!(sum(&text, "twreset_timewait_peer_sockets", &label), (k * 10) as f64, "{label}");
    }
    assert_eq!(sum(&text, "twreset_timewait_peer_sockets", "netns=\"other\""), 30.0);
    // Destinations: held sums stay right; the other rows' ratio is the highest of the rest.
    let held: u64 = f.dests.iter().map(|d| d.held).sum();
    assert_eq!(sum(&text, "twreset_destination_ports_held", ""), held as f64);
    assert!(series(&text, "twreset_destination_port_pressure_ratio").len() <= 7);
}

#[test]
fn small_tables_are_shown_whole() {
    let f = figures(100);
    let text = exposition(&f);
    for folded in ["netns=\"other\"", "peer=\"other\"", "laddr=\"other\""] {
        assert!(!text.contains(folded), "nothing to fold:\n{text}");
    }
    assert_eq!(series(&text, "twreset_timewait_peer_sockets").len(), 15);
    assert_eq!(sum(&text, "twreset_timewait_peer_sockets", "netns=\"ns2\",peer=\"10.0.2.1\""), 10.0);
}

#[test]
fn every_contract_family_is_there() {
    let text = exposition(&figures(20));
    for family in [
        "twreset_timewait_sockets gauge",
        "twreset_timewait_peer_sockets gauge",
        "twreset_destination_port_pressure_ratio gauge",
        "twreset_destination_ports_held gauge",
        "twreset_timewait_created counter",
        "twreset_timewait_expired counter",
        "twreset_timewait_killed counter",
        "twreset_timewait_overflow counter",
        "twreset_events_lost counter",
        "twreset_table_drift_sockets counter",
        "twreset_table_resyncs counter",
        "twreset_table_interned gauge",
        "twreset_kills counter",
        "twreset_build_info gauge",
    ] {
        assert!(text.contains(&format!("# TYPE {family}\n")), "{family} missing:\n{text}");
    }
    assert!(text.contains("twreset_build_info{version=\"0.1.0\",kernel=\"6.18.0\"} 1\n"));
    assert!(text.contains("twreset_events_lost_total{reason=\"unseen\"} 2\n"));
    assert!(text.contains("twreset_kills_total{trigger=\"api\",result=\"killed\"} 3\n"));
    assert!(text.contains("twreset_timewait_killed_total{netns=\"ns1\",cause=\"netns_gone\"} 0\n"));
    assert!(text.contains("twreset_table_resyncs_total 0\n"));
    assert!(text.contains("twreset_table_interned{kind=\"addresses\"} 4\n"), "{text}");
    assert!(text.ends_with("# EOF\n"));
    // A family without rows (no relief policy yet) is left out whole.
    assert!(!text.contains("twreset_relief_decisions"));
}

#[test]
fn label_values_are_escaped() {
    let mut f = figures(20);
    f.namespaces = vec![ns("a\"b\\c\nd", 1)];
    f.peers = vec![PeerFigure { netns: "a\"b\\c\nd".into(), peer: "fd00::1".into(), sockets: 1 }];
    let text = exposition(&f);
    assert!(text.contains(r#"twreset_timewait_peer_sockets{netns="a\"b\\c\nd",peer="fd00::1"} 1"#), "{text}");
    assert!(text.lines().all(|l| !l.starts_with('d')), "no raw newline inside a label:\n{text}");
}

#[test]
fn pods_and_containers_get_one_info_series_each() {
    let mut f = figures(20);
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    f.owners.push(vec![
        pair("netns", "pod:web/api-0"),
        pair("pod_namespace", "web"),
        pair("pod", "api-0"),
        pair("pod_uid", "0b4c2d1e-5f6a-4b7c-8d9e-0f1a2b3c4d5e"),
        pair("container", "api"),
        pair("container_id", "5003e4a2794c"),
        pair("runtime", "containerd"),
    ]);
    f.owners.push(vec![pair("netns", "container:db"), pair("container", "db"), pair("container_id", "a1b2c3d4e5f6")]);
    let text = exposition(&f);
    let info = series(&text, "twreset_netns_info");
    assert_eq!(info.len(), 2, "{text}");
    let pod = info.iter().find(|(h, _)| h.contains("netns=\"pod:web/api-0\"")).expect("the pod's series");
    for want in ["pod_namespace=\"web\"", "pod=\"api-0\"", "container=\"api\"", "container_id=\"5003e4a2794c\""] {
        assert!(pod.0.contains(want), "{want} in {}", pod.0);
    }
    // Unbounded values (the pod UID, the runtime) stay out of the labels.
    assert!(!pod.0.contains("pod_uid") && !pod.0.contains("runtime"), "{}", pod.0);
    assert_eq!(pod.1, 1.0);
}
