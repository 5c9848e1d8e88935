//! Doctor's view of the one port-pressure model ([`crate::ports`]): a namespace's dump counted per
//! destination (IPv4-mapped addresses folded), busiest first.
//!
//! Which sockets hold a port, the ports per destination and what `tcp_tw_reuse` frees are the
//! model's; this file only groups one namespace's dump and ranks it for the report.

use std::{collections::HashMap, net::IpAddr};

use crate::{
    doctor::model::{Destination, Settings},
    ports::{self, canonical, percent},
    sock::DiagSocket,
};

/// The `top` destinations with the most sockets holding an ephemeral port, busiest first (ties
/// broken by address so the order is stable).
pub fn destinations(sockets: &[DiagSocket], settings: &Settings, top: usize) -> Vec<Destination> {
    let Some(space) = settings.port_space() else {
        return Vec::new();
    };
    let slots = space.ports();
    let mut by: HashMap<(IpAddr, IpAddr, u16), (u64, u64)> = HashMap::new();
    for s in sockets.iter().filter(|s| ports::holds_port(s, &space)) {
        let k = &s.key;
        let e = by.entry((canonical(k.laddr), canonical(k.raddr), k.rport)).or_default();
        e.0 += 1;
        if s.timewait {
            e.1 += 1;
        }
    }
    let mut out: Vec<Destination> = by
        .into_iter()
        .map(|((local, remote, remote_port), (sockets, time_wait))| Destination {
            local,
            remote,
            remote_port,
            sockets,
            time_wait,
            pressure_pct: percent(sockets, u64::from(slots)),
            reuse_applies: settings.reuse_applies(local, remote),
        })
        .collect();
    // Closest to exhaustion first: ports connect() cannot take back, then all held ports.
    out.sort_by(|a, b| {
        held(b)
            .cmp(&held(a))
            .then(b.sockets.cmp(&a.sockets))
            .then(a.remote.cmp(&b.remote))
            .then(a.remote_port.cmp(&b.remote_port))
            .then(a.local.cmp(&b.local))
    });
    out.truncate(top);
    out
}

/// Ports of a destination that `connect()` cannot take back ([`ports::held`]).
pub fn held(d: &Destination) -> u64 {
    ports::held(d.sockets, d.time_wait, d.reuse_applies)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{sock::SockKey, state::TcpState};

    fn sock(l: &str, lport: u16, r: &str, rport: u16, state: TcpState) -> DiagSocket {
        DiagSocket {
            key: SockKey { netns_cookie: 1, laddr: l.parse().unwrap(), lport, raddr: r.parse().unwrap(), rport },
            state,
            timewait: matches!(state, TcpState::TimeWait),
            expires_ms: 0,
            cookie: 0,
            inode: 0,
            uid: 0,
        }
    }

    fn settings(lo: u16, hi: u16, reuse: u32) -> Settings {
        Settings {
            ip_local_port_range: Some((lo, hi)),
            tcp_tw_reuse: Some(reuse),
            tcp_timestamps: Some(1),
            ..Default::default()
        }
    }

    #[test]
    fn ports_per_destination_subtracts_reserved_ports_inside_the_range() {
        let mut s = settings(40000, 40099, 0);
        assert_eq!(s.ports_per_destination(), Some(100));
        s.ip_local_reserved_ports = vec![(39990, 40004), (40050, 40050), (50000, 50010)];
        assert_eq!(s.ports_per_destination(), Some(94));
        assert!(!s.is_ephemeral(40000) && s.is_ephemeral(40005) && !s.is_ephemeral(40100));
        assert_eq!(Settings::default().ports_per_destination(), None);
        assert_eq!(settings(2, 1, 0).ports_per_destination(), Some(0));
    }

    #[test]
    fn counts_per_destination_and_ranks() {
        let s = settings(40000, 40099, 0);
        let mut socks: Vec<_> =
            (0..95).map(|i| sock("127.0.0.1", 40000 + i, "127.0.0.1", 8080, TcpState::TimeWait)).collect();
        socks.push(sock("127.0.0.1", 40095, "127.0.0.1", 8080, TcpState::Established));
        socks.push(sock("10.0.0.1", 40001, "10.0.0.5", 443, TcpState::Established));
        // The server side of the loopback connections: local port 8080 is not ephemeral.
        socks.push(sock("127.0.0.1", 8080, "127.0.0.1", 40000, TcpState::Established));
        socks.push(sock("0.0.0.0", 8080, "0.0.0.0", 0, TcpState::Listen));
        let d = destinations(&socks, &s, 10);
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].remote, d[0].remote_port, d[0].sockets, d[0].time_wait),
            ("127.0.0.1".parse().unwrap(), 8080, 96, 95)
        );
        assert_eq!(d[0].pressure_pct, 96.0);
        assert!(!d[0].reuse_applies);
        assert_eq!(d[1].remote, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(d[1].pressure_pct, 1.0);
        assert_eq!(destinations(&socks, &s, 1).len(), 1);
    }

    #[test]
    fn mapped_addresses_fold_into_ipv4() {
        let s = settings(40000, 40099, 0);
        let socks = [
            sock("::ffff:10.0.0.1", 40000, "::ffff:10.0.0.5", 443, TcpState::Established),
            sock("10.0.0.1", 40001, "10.0.0.5", 443, TcpState::TimeWait),
        ];
        let d = destinations(&socks, &s, 10);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].sockets, d[0].time_wait), (2, 1));
        assert_eq!(d[0].local, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn reuse_applies_per_mode() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let far: IpAddr = "10.0.0.5".parse().unwrap();
        let near: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(!settings(1, 2, 0).reuse_applies(lo, lo));
        assert!(settings(1, 2, 1).reuse_applies(near, far));
        assert!(settings(1, 2, 2).reuse_applies(lo, lo));
        assert!(settings(1, 2, 2).reuse_applies(lo, far), "a loopback source is enough");
        assert!(settings(1, 2, 2).reuse_applies(near, lo), "a loopback destination is enough");
        assert!(!settings(1, 2, 2).reuse_applies(near, far));
        let v6: IpAddr = "::1".parse().unwrap();
        assert!(settings(1, 2, 2).reuse_applies(v6, v6));
        let mut no_ts = settings(1, 2, 1);
        no_ts.tcp_timestamps = Some(0);
        assert!(!no_ts.reuse_applies(near, far));
    }

    #[test]
    fn ranks_by_ports_that_reuse_cannot_free() {
        // tcp_tw_reuse=2: the loopback destination's TIME_WAIT ports come back, the remote one's do not.
        let s = settings(40000, 40099, 2);
        let mut socks: Vec<_> =
            (0..60).map(|i| sock("127.0.0.1", 40000 + i, "127.0.0.1", 8080, TcpState::TimeWait)).collect();
        socks.extend((0..30).map(|i| sock("10.0.0.1", 40000 + i, "10.0.0.5", 443, TcpState::TimeWait)));
        let d = destinations(&socks, &s, 10);
        assert_eq!((d[0].remote_port, d[0].reuse_applies, held(&d[0])), (443, false, 30));
        assert_eq!((d[1].remote_port, d[1].reuse_applies, held(&d[1])), (8080, true, 0));
        assert_eq!(destinations(&socks, &s, 1)[0].remote_port, 443);
    }
}
