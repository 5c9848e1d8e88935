//! `twreset kill --method rst`: RSTs with the kernel's sequence numbers, and the rfc1337 refusal.

use std::{
    io::{ErrorKind, Read, Write},
    time::Duration,
};

use twreset_tests::{NetNs, ndjson, privileged};

use super::world::*;

#[test]
fn rst_refuses_with_rfc1337() {
    if !privileged("rst_refuses_with_rfc1337") {
        return;
    }
    let w = world("krfc");
    w.a.sysctl("net.ipv4.tcp_rfc1337", "1");
    let before = snapshot(&w.a);
    let (code, _, err) = kill_in(&w, &["--method", "rst", S1]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("tcp_rfc1337=1"), "{err}");
    assert_eq!(snapshot(&w.a), before);
}

/// `Tcp: InSegs` of a namespace (/proc/net/snmp): SOCK_DESTROY sends no packet to a TIME_WAIT
/// socket, a RST kill delivers exactly one segment per socket.
fn tcp_in_segs(ns: &NetNs) -> u64 {
    let text = ns.exec(&["cat", "/proc/net/snmp"]);
    let mut lines = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names.split_whitespace().position(|n| n == "InSegs").unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

#[test]
fn rst_kills_time_wait_with_exact_sequence() {
    if !privileged("rst_kills_time_wait_with_exact_sequence") {
        return;
    }
    let w = world("krst");
    let segs = tcp_in_segs(&w.a);
    let killed = check_kill(&w, &["--method", "rst", &format!("{S1}:80")], |s| tw(s) && s.remote == sa(S1, 80));
    assert_eq!(tcp_in_segs(&w.a) - segs, killed.len() as u64, "one RST segment per socket, no SOCK_DESTROY");
    let v6 = check_kill(&w, &["--method", "rst", "fd77::/64"], |s| tw(s) && in_net(&s.remote, "fd77::/64"));
    assert_eq!(v6.len(), 5);
    let audit = ndjson(&std::fs::read_to_string(&w.audit).unwrap());
    assert!(audit.iter().all(|l| l["method"] == "rst"));
}

#[test]
fn rst_resets_both_ends_of_established() {
    if !privileged("rst_resets_both_ends_of_established") {
        return;
    }
    let w = world("krste");
    let mut pairs = w.a.run(|| {
        let p = established(sa(S1, 7001), C, 2);
        for (c, s) in &p {
            // Traffic first, so the sequence numbers are not the initial ones.
            (&*c).write_all(b"ping").unwrap();
            let mut b = [0u8; 4];
            (&*s).read_exact(&mut b).unwrap();
            (&*s).write_all(b"pong!").unwrap();
            let mut b = [0u8; 5];
            (&*c).read_exact(&mut b).unwrap();
        }
        p
    });
    let before = snapshot(&w.a);
    let (code, out, err) = kill_in(&w, &["--method", "rst", "--state", "established", "--port", "7001", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(ndjson(&out).pop().unwrap()["killed"], 2, "{out}");
    let gone: Set = before.difference(&snapshot(&w.a)).cloned().collect();
    let want: Set = before.iter().filter(|s| s.remote.port() == 7001 || s.local.port() == 7001).cloned().collect();
    assert_eq!((gone.len(), &gone), (4, &want));
    for (client, server) in &mut pairs {
        for s in [client, server] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let e = s.read(&mut [0u8; 8]).expect_err("both ends must see a reset");
            assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
        }
    }
}
