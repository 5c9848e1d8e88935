//! Minimal NETLINK_SOCK_DIAG client: dump TCP sockets (what `ss` reads) and probe SOCK_DESTROY.
//!
//! TO BE REPLACED by `crate::diag` when the `kill` branch lands (same shapes, checked against
//! that branch): `dump::dump` -> `crate::diag::dump`, `dump::probe_sock_destroy()` ->
//! `crate::diag::Diag::open().and_then(|mut d| crate::diag::probe_destroy(&mut d))`,
//! `dump::DiagError` -> `crate::diag::DiagError`; then delete this file.
//! Acts in the calling thread's network namespace (the netlink socket lives where it is made).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::{
    kernel::netns,
    sock::{DiagSocket, SockKey},
    state::TcpState,
};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `idiag_timer` of an `inet_timewait_sock`.
const TIMER_TIMEWAIT: u8 = 3;

const NLMSG_HDR: usize = 16;
const REQ_LEN: usize = 56;
const MSG_LEN: usize = 72;

#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("cannot open a NETLINK_SOCK_DIAG socket")]
    Socket(#[source] io::Error),
    #[error("sock_diag {what}: netlink I/O failed")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("sock_diag {what}: the kernel answered with an error")]
    Kernel {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("sock_diag dump: malformed message of {len} bytes")]
    Malformed { len: usize },
    #[error("cannot read the namespace cookie")]
    Cookie {
        #[source]
        source: netns::NetnsError,
    },
}

/// `nlmsghdr` + `inet_diag_req_v2` for one family, all 4-tuple fields zero unless `tuple` is given.
fn request(kind: u16, flags: u16, family: u8, states: u32, tuple: Option<[u8; 48]>) -> Vec<u8> {
    let mut b = Vec::with_capacity(NLMSG_HDR + REQ_LEN);
    b.extend_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&1u32.to_ne_bytes()); // seq
    b.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    b.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    b.extend_from_slice(&states.to_ne_bytes());
    b.extend_from_slice(&tuple.unwrap_or([0; 48]));
    b
}

fn open() -> Result<OwnedFd, DiagError> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(DiagError::Socket(io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send(fd: &OwnedFd, msg: &[u8], what: &'static str) -> Result<(), DiagError> {
    // SAFETY: the kernel reads msg.len() bytes from a live slice; address 0 = the kernel.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if n < 0 { Err(DiagError::Io { what, source: io::Error::last_os_error() }) } else { Ok(()) }
}

fn recv<'a>(fd: &OwnedFd, buf: &'a mut [u8], what: &'static str) -> Result<&'a [u8], DiagError> {
    loop {
        // SAFETY: the kernel writes at most buf.len() bytes into a live buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok(&buf[..n as usize]);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(DiagError::Io { what, source: e });
        }
    }
}

fn u16_ne(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_ne(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The errno of an NLMSG_ERROR payload (0 = an ack).
fn nl_errno(payload: &[u8]) -> Result<i32, DiagError> {
    if payload.len() < 4 {
        return Err(DiagError::Malformed { len: payload.len() });
    }
    Ok(-(u32_ne(payload, 0) as i32))
}

fn addr(family: u8, raw: &[u8]) -> IpAddr {
    if family == libc::AF_INET as u8 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&raw[..16]).expect("16 bytes")))
    }
}

/// Decode one `inet_diag_msg`. Unknown states (a newer kernel) are skipped, never guessed.
pub fn parse_msg(m: &[u8], netns_cookie: u64) -> Result<Option<DiagSocket>, DiagError> {
    if m.len() < MSG_LEN {
        return Err(DiagError::Malformed { len: m.len() });
    }
    let (family, state, timer) = (m[0], m[1], m[2]);
    let Ok(state) = TcpState::try_from(u32::from(state)) else {
        return Ok(None);
    };
    let id = &m[4..52];
    let key = SockKey {
        netns_cookie,
        laddr: addr(family, &id[4..20]),
        lport: u16::from_be_bytes([id[0], id[1]]),
        raddr: addr(family, &id[20..36]),
        rport: u16::from_be_bytes([id[2], id[3]]),
    };
    Ok(Some(DiagSocket {
        key,
        state,
        timewait: timer == TIMER_TIMEWAIT,
        expires_ms: u32_ne(m, 52),
        cookie: u64::from(u32_ne(id, 40)) | (u64::from(u32_ne(id, 44)) << 32),
        inode: u32_ne(m, 68),
        uid: u32_ne(m, 64),
    }))
}

fn dump_family(fd: &OwnedFd, family: u8, mask: u32, cookie: u64, out: &mut Vec<DiagSocket>) -> Result<(), DiagError> {
    send(fd, &request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, family, mask, None), "dump")?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let data = recv(fd, &mut buf, "dump")?;
        if data.is_empty() {
            // Never sent by a live kernel socket; without this a dump would spin forever.
            return Err(DiagError::Malformed { len: 0 });
        }
        let mut off = 0;
        while off + NLMSG_HDR <= data.len() {
            let len = u32_ne(data, off) as usize;
            if len < NLMSG_HDR || off + len > data.len() {
                return Err(DiagError::Malformed { len });
            }
            let payload = &data[off + NLMSG_HDR..off + len];
            match u16_ne(data, off + 4) {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = nl_errno(payload)?;
                    if errno != 0 {
                        return Err(DiagError::Kernel { what: "dump", source: io::Error::from_raw_os_error(errno) });
                    }
                }
                SOCK_DIAG_BY_FAMILY => out.extend(parse_msg(payload, cookie)?),
                _ => {}
            }
            off += (len + 3) & !3;
        }
    }
}

/// Every IPv4 and IPv6 TCP socket in one of `states` (all states when empty) of the calling
/// thread's network namespace.
pub fn dump(states: &[TcpState]) -> Result<Vec<DiagSocket>, DiagError> {
    let mask = if states.is_empty() { u32::MAX } else { states.iter().fold(0, |m, s| m | (1u32 << s.number())) };
    let cookie = netns::current_cookie().map_err(|source| DiagError::Cookie { source })?;
    let fd = open()?;
    let mut out = Vec::new();
    dump_family(&fd, libc::AF_INET as u8, mask, cookie, &mut out)?;
    dump_family(&fd, libc::AF_INET6 as u8, mask, cookie, &mut out)?;
    Ok(out)
}

/// Send SOCK_DESTROY for a 4-tuple that cannot exist (local port 0) and return the kernel's
/// errno: ENOENT means the destroy handler ran and looked the socket up (supported),
/// EOPNOTSUPP means the kernel has no destroy handler (CONFIG_INET_DIAG_DESTROY off).
pub fn probe_sock_destroy() -> Result<i32, DiagError> {
    let fd = open()?;
    let mut tuple = [0u8; 48];
    tuple[2..4].copy_from_slice(&9u16.to_be_bytes()); // dport 9 (discard), local port 0
    tuple[4..8].copy_from_slice(&[127, 0, 0, 1]);
    tuple[20..24].copy_from_slice(&[127, 0, 0, 1]);
    send(
        &fd,
        &request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, libc::AF_INET as u8, u32::MAX, Some(tuple)),
        "destroy probe",
    )?;
    let mut buf = vec![0u8; 8192];
    let data = recv(&fd, &mut buf, "destroy probe")?;
    if data.len() < NLMSG_HDR || u16_ne(data, 4) != NLMSG_ERROR {
        return Err(DiagError::Malformed { len: data.len() });
    }
    nl_errno(&data[NLMSG_HDR..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let r = request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 2, 1 << 6, None);
        assert_eq!(r.len(), 72);
        assert_eq!(u32_ne(&r, 0), 72);
        assert_eq!(u16_ne(&r, 4), 20);
        assert_eq!(u16_ne(&r, 6), 0x301);
        assert_eq!(&r[16..20], &[2, 6, 0, 0]);
        assert_eq!(u32_ne(&r, 20), 64);
    }

    #[test]
    fn parses_a_timewait_message() {
        let mut m = [0u8; MSG_LEN];
        m[0] = libc::AF_INET as u8;
        m[1] = 6; // TIME_WAIT
        m[2] = TIMER_TIMEWAIT;
        m[4..6].copy_from_slice(&40000u16.to_be_bytes());
        m[6..8].copy_from_slice(&8080u16.to_be_bytes());
        m[8..12].copy_from_slice(&[10, 0, 0, 1]);
        m[24..28].copy_from_slice(&[10, 0, 0, 5]);
        m[52..56].copy_from_slice(&59_000u32.to_ne_bytes());
        let s = parse_msg(&m, 7).unwrap().unwrap();
        assert_eq!(s.key.to_string_pair(), ("10.0.0.1:40000".into(), "10.0.0.5:8080".into()));
        assert_eq!((s.state, s.timewait, s.expires_ms, s.key.netns_cookie), (TcpState::TimeWait, true, 59_000, 7));
        m[1] = 99;
        assert_eq!(parse_msg(&m, 7).unwrap(), None);
        assert!(matches!(parse_msg(&m[..10], 7), Err(DiagError::Malformed { len: 10 })));
    }

    impl SockKey {
        fn to_string_pair(self) -> (String, String) {
            (format!("{}:{}", self.laddr, self.lport), format!("{}:{}", self.raddr, self.rport))
        }
    }
}
