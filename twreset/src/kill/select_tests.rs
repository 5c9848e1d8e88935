//! Unit tests of the pure selector rules.

use super::*;
use crate::{duration::parse as parse_duration, sock::SockKey};

pub(crate) fn sock(l: &str, r: &str, state: TcpState, timewait: bool, expires_ms: u32) -> DiagSocket {
    let l: std::net::SocketAddr = l.parse().unwrap();
    let r: std::net::SocketAddr = r.parse().unwrap();
    DiagSocket {
        key: SockKey { netns_cookie: 1, laddr: l.ip(), lport: l.port(), raddr: r.ip(), rport: r.port() },
        state,
        timewait,
        expires_ms,
        cookie: 0,
        inode: 0,
        uid: 0,
    }
}

fn ep(s: &str) -> Endpoint {
    parse_endpoint(s, true).unwrap()
}

#[test]
fn endpoint_forms() {
    assert_eq!(ep("10.0.0.1"), Endpoint { net: Some("10.0.0.1/32".parse().unwrap()), port: None });
    assert_eq!(ep("10.0.0.1:80"), Endpoint { net: Some("10.0.0.1/32".parse().unwrap()), port: Some(80) });
    assert_eq!(ep("10.1.0.0/16"), Endpoint { net: Some("10.1.0.0/16".parse().unwrap()), port: None });
    assert_eq!(ep("10.1.2.3/16:443").port, Some(443));
    assert_eq!(ep("fd00::1"), Endpoint { net: Some("fd00::1/128".parse().unwrap()), port: None });
    assert_eq!(ep("[fd00::1]:8080"), Endpoint { net: Some("fd00::1/128".parse().unwrap()), port: Some(8080) });
    assert_eq!(ep("[fd00::]"), Endpoint { net: Some("fd00::/128".parse().unwrap()), port: None });
    assert_eq!(ep("fd00::/64"), Endpoint { net: Some("fd00::/64".parse().unwrap()), port: None });
    assert_eq!(ep(":8080"), Endpoint { net: None, port: Some(8080) });
    assert_eq!(ep("::/0"), Endpoint { net: Some("::/0".parse().unwrap()), port: None });
    assert_eq!(ep("::1"), Endpoint { net: Some("::1/128".parse().unwrap()), port: None });
    assert_eq!(ep("[fd00::1]:8080").to_string(), "[fd00::1]:8080");
    assert_eq!(ep("10.0.0.0/8:80").to_string(), "10.0.0.0/8:80");
    assert_eq!(ep(":80").to_string(), ":80");
}

#[test]
fn endpoint_errors() {
    for (bad, needle) in [
        ("300.1.1.1", "not an IP"),
        ("10.0.0.0/33", "/33"),
        ("10.0.0.1:70000", "out of range"),
        ("10.0.0.1:0", "out of range"),
        ("10.0.0.1:http", "not a port"),
        ("[fd00::1", "missing ']'"),
        ("[10.0.0.1]:80", "IPv6"),
        ("[fd00::1]80", "[IPv6]:PORT"),
        ("443", "--port 443"),
        ("fd00::/129", "/129"),
        ("", "not an IP"),
        ("example.com", "not an IP"),
    ] {
        let e = parse_endpoint(bad, false).unwrap_err();
        assert!(e.contains(needle), "{bad:?}: {e}");
    }
    assert!(parse_endpoint(":80", false).unwrap_err().contains("--port 80"));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    for bad in ["", "s", "10x", "-5s", "1.5s", "m10"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn state_words() {
    assert_eq!(parse_state_word("any"), Ok(StateWord::Any));
    assert_eq!(parse_state_word("established"), Ok(StateWord::State(TcpState::Established)));
    assert!(parse_state_word("bogus").unwrap_err().contains("or any"));
    assert_eq!(States::from_words(&[]), States::TimeWait);
    assert_eq!(States::from_words(&[StateWord::State(TcpState::TimeWait)]), States::TimeWait);
    assert_eq!(States::from_words(&[StateWord::State(TcpState::Established), StateWord::Any]), States::Any);
}

#[test]
fn state_matching() {
    let tw = sock("10.0.0.1:1000", "10.0.0.2:80", TcpState::TimeWait, true, 1000);
    let tw_fw2 = sock("10.0.0.1:1001", "10.0.0.2:80", TcpState::FinWait2, true, 1000);
    let full_fw2 = sock("10.0.0.1:1002", "10.0.0.2:80", TcpState::FinWait2, false, 0);
    let est = sock("10.0.0.1:1003", "10.0.0.2:80", TcpState::Established, false, 0);
    let listen = sock("0.0.0.0:80", "0.0.0.0:0", TcpState::Listen, false, 0);
    let d = States::TimeWait;
    assert!(d.matches(&tw) && d.matches(&tw_fw2));
    assert!(!d.matches(&full_fw2) && !d.matches(&est) && !d.matches(&listen));
    let e = States::from_words(&[StateWord::State(TcpState::Established)]);
    assert!(e.matches(&est) && !e.matches(&tw) && !e.matches(&listen));
    let f = States::from_words(&[StateWord::State(TcpState::FinWait2)]);
    assert!(f.matches(&full_fw2) && !f.matches(&tw_fw2), "fin-wait-2 means full sockets; tw ones come with time-wait");
    let a = States::Any;
    assert!(a.matches(&tw) && a.matches(&est) && a.matches(&full_fw2) && !a.matches(&listen));
    assert!(States::from_words(&[StateWord::State(TcpState::Listen)]).matches(&listen));
    assert_eq!(d.dump_states(), vec![TcpState::TimeWait, TcpState::FinWait2]);
    assert_eq!(a.dump_states(), vec![]);
}

fn sel(peers: &[&str], ports: &[u16], locals: &[&str]) -> Selector {
    Selector::new(
        peers.iter().map(|p| ep(p)).collect(),
        ports.to_vec(),
        locals.iter().map(|p| ep(p)).collect(),
        States::TimeWait,
        None,
        false,
    )
    .unwrap()
}

#[test]
fn combining() {
    let a = sock("10.0.0.1:1000", "10.0.0.2:80", TcpState::TimeWait, true, 1000);
    let b = sock("10.0.0.1:1001", "10.0.0.3:443", TcpState::TimeWait, true, 1000);
    let c = sock("[fd00::1]:1002", "[fd00::2]:80", TcpState::TimeWait, true, 1000);
    // cutter form: several peers, any of them.
    let s = sel(&["10.0.0.2", "10.0.0.3"], &[], &[]);
    assert!(s.matches(&a) && s.matches(&b) && !s.matches(&c));
    let s = sel(&["10.0.0.0/24"], &[80], &[]);
    assert!(s.matches(&a) && !s.matches(&b) && !s.matches(&c));
    let s = sel(&["10.0.0.3:443"], &[], &[]);
    assert!(!s.matches(&a) && s.matches(&b));
    let s = sel(&[], &[80], &[]);
    assert!(s.matches(&a) && !s.matches(&b) && s.matches(&c));
    let s = sel(&[], &[], &[":1001"]);
    assert!(!s.matches(&a) && s.matches(&b));
    let s = sel(&[], &[], &["fd00::/64"]);
    assert!(!s.matches(&a) && s.matches(&c));
    // An IPv4 prefix never matches IPv6 peers and vice versa.
    let s = sel(&["::/0"], &[], &[]);
    assert!(!s.matches(&a) && s.matches(&c));
    // Ports are remote ports: a local port of 80 is not selected by --port 80.
    let srv = sock("10.0.0.2:80", "10.0.0.1:5555", TcpState::TimeWait, true, 1000);
    assert!(!sel(&[], &[80], &[]).matches(&srv));
}

#[test]
fn ages() {
    let young = sock("10.0.0.1:1000", "10.0.0.2:80", TcpState::TimeWait, true, 59_000);
    let old = sock("10.0.0.1:1001", "10.0.0.2:80", TcpState::TimeWait, true, 10_000);
    assert_eq!(age(&young), Some(Duration::from_secs(1)));
    assert_eq!(age(&old), Some(Duration::from_secs(50)));
    assert_eq!(age(&sock("10.0.0.1:1", "10.0.0.2:80", TcpState::Established, false, 200)), None);
    // Re-armed timers can exceed 60 s with slack: age saturates at 0.
    assert_eq!(age(&sock("10.0.0.1:1", "10.0.0.2:80", TcpState::TimeWait, true, 61_000)), Some(Duration::ZERO));
    let mut s = sel(&["10.0.0.2"], &[], &[]);
    s.older_than = Some(Duration::from_secs(30));
    assert!(!s.matches(&young) && s.matches(&old));
}

#[test]
fn validation() {
    let e = |r: Result<Selector, SelectorError>| r.unwrap_err();
    assert_eq!(e(Selector::new(vec![], vec![], vec![], States::TimeWait, None, false)), SelectorError::Empty);
    assert_eq!(e(Selector::new(vec![], vec![80], vec![], States::TimeWait, None, true)), SelectorError::AllWithFilters);
    let est = States::from_words(&[StateWord::State(TcpState::Established)]);
    let err = e(Selector::new(vec![], vec![80], vec![], est, Some(Duration::from_secs(1)), false));
    assert!(err.to_string().contains("established"), "{err}");
    let all = Selector::new(vec![], vec![], vec![], States::TimeWait, Some(Duration::from_secs(5)), true).unwrap();
    assert_eq!(all.describe(), "state time-wait all older-than 5000ms");
    assert!(all.matches(&sock("1.2.3.4:1", "5.6.7.8:9", TcpState::TimeWait, true, 0)));
}
