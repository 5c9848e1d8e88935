//! Pure decoding of kernel [`Event`]s into typed [`Transition`]s: no I/O, no clock.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use twreset_common::{AF_INET, AF_INET6, Event, kind};

use crate::sock::Family;
use crate::{
    sock::SockKey,
    state::{StateError, TcpState, is_active_close},
};

/// One TCP state transition of one socket, as the kernel reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub ts_ns: u64,
    pub netns_cookie: u64,
    pub skaddr: u64,
    pub family: Family,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    pub old: TcpState,
    pub new: TcpState,
}

impl Transition {
    /// The full socket handed over to a TIME_WAIT socket (see [`is_active_close`]).
    pub fn into_time_wait(&self) -> bool {
        is_active_close(self.old, self.new)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {len} bytes, expected {expected}")]
    Size { len: usize, expected: usize },
    #[error("unknown event kind {kind}")]
    Kind { kind: u16 },
    #[error("unknown address family {family}")]
    Family { family: u16 },
    #[error("bad TCP state")]
    State(#[source] StateError),
}

/// Copy a ring-buffer record into an [`Event`] (records are not guaranteed aligned).
pub fn parse_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    let expected = size_of::<Event>();
    if bytes.len() != expected {
        return Err(DecodeError::Size { len: bytes.len(), expected });
    }
    // SAFETY: length checked; Event is Pod (integers and byte arrays only).
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

fn addr(family: Family, raw: [u8; 16]) -> IpAddr {
    match family {
        Family::Inet => IpAddr::V4(Ipv4Addr::new(raw[12], raw[13], raw[14], raw[15])),
        Family::Inet6 => IpAddr::V6(Ipv6Addr::from(raw)),
    }
}

/// The namespace and 4-tuple of any event (addresses in the event's IPv4-mapped wire form).
pub fn sock_key(ev: &Event) -> Result<SockKey, DecodeError> {
    let family = match ev.family {
        AF_INET => Family::Inet,
        AF_INET6 => Family::Inet6,
        family => return Err(DecodeError::Family { family }),
    };
    Ok(SockKey {
        netns_cookie: ev.netns_cookie,
        laddr: addr(family, ev.saddr),
        lport: ev.sport,
        raddr: addr(family, ev.daddr),
        rport: ev.dport,
    })
}

pub fn transition(ev: &Event) -> Result<Transition, DecodeError> {
    if ev.kind != kind::STATE {
        return Err(DecodeError::Kind { kind: ev.kind });
    }
    let k = sock_key(ev)?;
    Ok(Transition {
        ts_ns: ev.ts_ns,
        netns_cookie: k.netns_cookie,
        skaddr: ev.skaddr,
        family: k.family(),
        laddr: k.laddr,
        lport: k.lport,
        raddr: k.raddr,
        rport: k.rport,
        old: TcpState::try_from(ev.oldstate).map_err(DecodeError::State)?,
        new: TcpState::try_from(ev.newstate).map_err(DecodeError::State)?,
    })
}

/// IPv4 as `::ffff:a.b.c.d`, the form the kernel side uses for every address.
pub fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twreset_common::tcp_state;

    fn v4_event() -> Event {
        Event {
            ts_ns: 42,
            netns_cookie: 7,
            skaddr: 0xffff_0000_1234,
            saddr: mapped("10.1.2.3".parse().unwrap()),
            daddr: mapped("10.9.8.7".parse().unwrap()),
            sport: 40000,
            dport: 80,
            family: AF_INET,
            kind: kind::STATE,
            oldstate: tcp_state::FIN_WAIT2,
            newstate: tcp_state::CLOSE,
            aux: 0,
        }
    }

    #[test]
    fn decodes_v4() {
        let t = transition(&v4_event()).unwrap();
        assert_eq!(t.laddr, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(t.raddr, "10.9.8.7".parse::<IpAddr>().unwrap());
        assert_eq!((t.lport, t.rport, t.family), (40000, 80, Family::Inet));
        assert_eq!((t.old, t.new), (TcpState::FinWait2, TcpState::Close));
        assert!(t.into_time_wait());
    }

    #[test]
    fn decodes_v6() {
        let mut ev = v4_event();
        ev.family = AF_INET6;
        ev.saddr = mapped("fd00::1".parse().unwrap());
        ev.daddr = mapped("fd00::2".parse().unwrap());
        ev.oldstate = tcp_state::SYN_SENT;
        ev.newstate = tcp_state::ESTABLISHED;
        let t = transition(&ev).unwrap();
        assert_eq!(t.raddr, "fd00::2".parse::<IpAddr>().unwrap());
        assert!(!t.into_time_wait());
    }

    #[test]
    fn rejects_garbage() {
        let mut ev = v4_event();
        ev.family = 99;
        assert_eq!(transition(&ev), Err(DecodeError::Family { family: 99 }));
        let mut ev = v4_event();
        ev.newstate = 77;
        assert!(matches!(transition(&ev), Err(DecodeError::State(_))));
        let mut ev = v4_event();
        ev.kind = 9;
        assert_eq!(transition(&ev), Err(DecodeError::Kind { kind: 9 }));
        assert!(matches!(parse_event(&[0u8; 12]), Err(DecodeError::Size { len: 12, .. })));
    }

    #[test]
    fn parse_round_trip() {
        let ev = v4_event();
        // SAFETY: viewing a Pod value as bytes.
        let bytes = unsafe { std::slice::from_raw_parts((&ev as *const Event).cast::<u8>(), size_of::<Event>()) };
        assert_eq!(parse_event(bytes).unwrap(), ev);
    }
}
