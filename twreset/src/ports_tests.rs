//! Unit tests of the port-pressure model: port spaces with reserved ports, the counting rule,
//! per-namespace spaces, pressure math, `tcp_tw_reuse`.

use super::*;
use crate::sock::SockKey;

fn space(lo: u16, hi: u16, reserved: &[(u16, u16)]) -> PortSpace {
    PortSpace { range: PortRange { lo, hi }, reserved: reserved.to_vec() }
}

#[test]
fn parses_proc_range() {
    assert_eq!(PortRange::parse("32768\t60999\n"), Ok(PortRange { lo: 32768, hi: 60999 }));
    assert_eq!(PortRange::parse("1024 1024"), Ok(PortRange { lo: 1024, hi: 1024 }));
    for bad in ["", "1", "2 1", "1 2 3", "a b", "1 70000"] {
        assert!(PortRange::parse(bad).is_err(), "{bad:?}");
    }
    assert_eq!(PortRange::default().size(), 28232);
    assert_eq!(PortRange { lo: 1, hi: 1 }.size(), 1);
    assert_eq!(PortRange { lo: 0, hi: 65535 }.size(), 65536);
    // Never parsed (the kernel refuses it too), but a range written high to low holds nothing.
    assert_eq!(PortRange { lo: 2, hi: 1 }.size(), 0);
}

#[test]
fn ranges_per_namespace() {
    let mut r = PortSpaces::default();
    r.per_ns.insert(7, space(40000, 40009, &[]));
    assert_eq!(r.of(7).range.size(), 10);
    assert_eq!(r.of(8).range, PortRange::default());
}

#[test]
fn ports_per_destination_subtract_reserved_ports_inside_the_range() {
    assert_eq!(space(40000, 40099, &[]).ports(), 100);
    let s = space(40000, 40099, &[(39990, 40004), (40050, 40050), (50000, 50010)]);
    assert_eq!(s.ports(), 94);
    assert!(!s.is_ephemeral(40000) && !s.is_ephemeral(40004) && s.is_ephemeral(40005));
    assert!(!s.is_ephemeral(40050) && s.is_ephemeral(40099) && !s.is_ephemeral(40100));
    // Every port reserved: none left, never negative.
    assert_eq!(space(40000, 40009, &[(0, 65535)]).ports(), 0);
    assert_eq!(space(2, 1, &[]).ports(), 0);
}

#[test]
fn spaces_per_namespace() {
    let mut r = PortSpaces::default();
    r.per_ns.insert(7, space(40000, 40009, &[(40000, 40001)]));
    assert_eq!(r.of(7).ports(), 8);
    assert_eq!(r.of(8), &PortSpace::default());
    assert_eq!(r.of(8).ports(), 28232);
}

fn d(ns: u64, lport: u16, state: TcpState, timewait: bool) -> DiagSocket {
    DiagSocket {
        key: SockKey {
            netns_cookie: ns,
            laddr: "10.0.0.1".parse().unwrap(),
            lport,
            raddr: "10.0.0.2".parse().unwrap(),
            rport: 443,
        },
        state,
        timewait,
        expires_ms: 0,
        cookie: 0,
        inode: 0,
        uid: 0,
    }
}

fn dest(ns: u64) -> Dest {
    Dest { netns: ns, laddr: "10.0.0.1".parse().unwrap(), raddr: "10.0.0.2".parse().unwrap(), rport: 443 }
}

#[test]
fn connected_counts_only_full_sockets_on_ephemeral_ports() {
    let ranges = PortSpaces::default();
    let dump = vec![
        d(1, 40000, TcpState::Established, false),
        d(1, 40001, TcpState::SynSent, false),
        d(1, 40002, TcpState::TimeWait, true),   // tw: counted by the table instead
        d(1, 443, TcpState::Established, false), // server side: not an ephemeral port
        d(1, 40003, TcpState::Listen, false),
        d(2, 40004, TcpState::CloseWait, false),
    ];
    let c = Connected::from_dump(&dump, &ranges);
    assert_eq!(c.get(&dest(1)), 2);
    assert_eq!(c.get(&dest(2)), 1);
    assert_eq!(c.get(&dest(3)), 0);
}

#[test]
fn the_counting_rule() {
    let s = space(40000, 40099, &[(40050, 40059)]);
    assert!(holds_port(&d(1, 40000, TcpState::Established, false), &s));
    assert!(holds_port(&d(1, 40001, TcpState::TimeWait, true), &s), "TIME_WAIT holds its port");
    assert!(holds_port(&d(1, 40002, TcpState::FinWait2, true), &s), "so does the FIN_WAIT2 substate");
    assert!(!holds_port(&d(1, 40055, TcpState::Established, false), &s), "reserved: bound explicitly");
    assert!(!holds_port(&d(1, 39999, TcpState::Established, false), &s), "outside the range");
    assert!(!holds_port(&d(1, 40003, TcpState::Listen, false), &s));
    assert!(!holds_port(&d(1, 40004, TcpState::Close, false), &s));
    let mut unconnected = d(1, 40005, TcpState::SynSent, false);
    unconnected.key.rport = 0;
    assert!(!holds_port(&unconnected, &s));
    unconnected.key.rport = 443;
    unconnected.key.raddr = "::".parse().unwrap();
    assert!(!holds_port(&unconnected, &s));
}

#[test]
fn each_namespace_counts_in_its_own_space() {
    // Namespace 1 is narrow with a reserved block; namespace 2 uses the default range.
    let mut spaces = PortSpaces::default();
    spaces.per_ns.insert(1, space(40000, 40009, &[(40005, 40009)]));
    let dump = vec![
        d(1, 40000, TcpState::Established, false),
        d(1, 40006, TcpState::Established, false), // reserved in namespace 1
        d(1, 50000, TcpState::Established, false), // outside namespace 1's range
        d(2, 40006, TcpState::Established, false),
        d(2, 50000, TcpState::Established, false),
    ];
    let c = Connected::from_dump(&dump, &spaces);
    assert_eq!(c.get(&dest(1)), 1);
    assert_eq!(c.get(&dest(2)), 2);
    let p = Pressure::compute(3, c.get(&dest(1)), spaces.of(1).ports(), 0.0);
    assert_eq!((p.holding, p.range, p.ratio), (4, 5, 0.8));
}

#[test]
fn pressure_math() {
    // Idle destination: no rate, no exhaustion.
    let p = Pressure::compute(100, 10, 1000, 0.0);
    assert_eq!((p.holding, p.ratio, p.exhaustion_s), (110, 0.11, None));
    // 10/s piles up 600 in steady state: fits in 1000, never exhausts.
    assert_eq!(Pressure::compute(100, 10, 1000, 10.0).exhaustion_s, None);
    // 20/s needs 1200 + 10 > 1000: 890 free ports last 44.5 s.
    assert_eq!(Pressure::compute(100, 10, 1000, 20.0).exhaustion_s, Some(44.5));
    // Already full (or over, counting a range shrunk at runtime).
    assert_eq!(Pressure::compute(990, 10, 1000, 0.0).exhaustion_s, Some(0.0));
    assert_eq!(Pressure::compute(2000, 0, 1000, 0.0).ratio, 2.0);
    // Connected sockets alone can exceed the range at any rate.
    assert_eq!(Pressure::compute(0, 1000, 1000, 0.0).exhaustion_s, Some(0.0));
    assert_eq!(Pressure::compute(0, 999, 1000, 1.0).exhaustion_s, Some(1.0));
    // Every port reserved: exhausted, not a division by zero.
    assert_eq!(Pressure::compute(0, 0, 0, 0.0).exhaustion_s, Some(0.0));
}

#[test]
fn reuse_applies_per_mode() {
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let far: IpAddr = "10.0.0.5".parse().unwrap();
    let near: IpAddr = "10.0.0.1".parse().unwrap();
    let on = Some(1);
    assert!(!reuse_applies(Some(0), on, lo, lo));
    assert!(reuse_applies(Some(1), on, near, far));
    assert!(reuse_applies(Some(2), on, lo, lo));
    assert!(reuse_applies(Some(2), on, lo, far), "a loopback source is enough");
    assert!(reuse_applies(Some(2), on, near, lo), "a loopback destination is enough");
    assert!(!reuse_applies(Some(2), on, near, far));
    let v6: IpAddr = "::1".parse().unwrap();
    assert!(reuse_applies(Some(2), on, v6, v6));
    assert!(!reuse_applies(Some(1), Some(0), near, far), "no timestamps, no reuse");
    assert!(!reuse_applies(None, on, near, far));
    // Pressure keeps TIME_WAIT; `held` is what connect() cannot take back.
    assert_eq!((held(96, 95, false), held(96, 95, true), held(5, 9, true)), (96, 1, 0));
}

#[test]
fn mapped_addresses_are_ipv4() {
    assert_eq!(canonical("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(canonical("fd00::1".parse().unwrap()), "fd00::1".parse::<IpAddr>().unwrap());
}

#[test]
fn percentages() {
    assert_eq!(percent(95, 100), 95.0);
    assert_eq!(percent(1, 3), 33.3);
    assert_eq!(percent(2, 3), 66.7);
    assert_eq!(percent(0, 0), 0.0);
    assert_eq!(percent(1, 0), 100.0);
}
