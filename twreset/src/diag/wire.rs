//! sock_diag wire format (`linux/netlink.h`, `linux/inet_diag.h`) as `repr(C)` structs, with pure
//! encoders and a zero-allocation message walker. Hand-rolled so a 50k-socket dump costs one
//! `Vec` push per socket and nothing else.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const NETLINK_SOCK_DIAG: i32 = 4;
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
pub const SOCK_DESTROY: u16 = 21;
/// The original inet_diag request (`inet_diag_req`), still served: it dumps with `AF_UNSPEC`,
/// i.e. both families in one walk of the kernel's socket hash, and its replies carry this type.
pub const TCPDIAG_GETSOCK: u16 = 18;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
/// `NETLINK_CAP_ACK`: acks do not echo the request back (keeps 512 acks small).
pub const NETLINK_CAP_ACK: i32 = 10;
pub const SOL_NETLINK: i32 = 270;
/// `INET_DIAG_NOCOOKIE` in both halves: "match any socket with this tuple".
pub const NO_COOKIE: u64 = u64::MAX;
/// `idiag_timer` value of a TIME_WAIT socket's timer (`inet_twsk_diag_fill`).
pub const TIMER_TIMEWAIT: u8 = 3;
const IPPROTO_TCP: u8 = 6;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NlMsgHdr {
    pub len: u32,
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
}
const _: () = assert!(size_of::<NlMsgHdr>() == 16);

/// `struct inet_diag_sockid`: ports and addresses in network byte order, as raw bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockId {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub ifindex: u32,
    pub cookie: [u32; 2],
}
const _: () = assert!(size_of::<SockId>() == 48);

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReqV2 {
    pub family: u8,
    pub protocol: u8,
    pub ext: u8,
    pub _pad: u8,
    pub states: u32,
    pub id: SockId,
}
const _: () = assert!(size_of::<ReqV2>() == 56);

/// `struct inet_diag_msg` (attributes after it are not requested and skipped).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiagMsg {
    pub family: u8,
    pub state: u8,
    pub timer: u8,
    pub retrans: u8,
    pub id: SockId,
    pub expires: u32,
    pub rqueue: u32,
    pub wqueue: u32,
    pub uid: u32,
    pub inode: u32,
}
const _: () = assert!(size_of::<DiagMsg>() == 72);

/// `struct nlmsgerr` without the echoed request (we set `NETLINK_CAP_ACK`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NlMsgErr {
    pub error: i32,
    pub msg: NlMsgHdr,
}
const _: () = assert!(size_of::<NlMsgErr>() == 20);

/// A request: header followed by `inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Request {
    pub hdr: NlMsgHdr,
    pub req: ReqV2,
}
const _: () = assert!(size_of::<Request>() == 72);

impl Request {
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: repr(C), integers and byte arrays only, no implicit padding (sizes asserted).
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>()) }
    }
}

/// `struct inet_diag_req` (the compat request: no family selects both).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReqCompat {
    pub family: u8,
    pub src_len: u8,
    pub dst_len: u8,
    pub ext: u8,
    pub id: SockId,
    pub states: u32,
    pub dbs: u32,
}
const _: () = assert!(size_of::<ReqCompat>() == 60);

/// A compat dump request: header followed by `inet_diag_req`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CompatRequest {
    pub hdr: NlMsgHdr,
    pub req: ReqCompat,
}
const _: () = assert!(size_of::<CompatRequest>() == 76);

impl CompatRequest {
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: repr(C), integers and byte arrays only, no implicit padding (sizes asserted).
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>()) }
    }
}

/// Kernel state bitmask (`1 << TCP_*`) for the given state numbers; empty = every state.
pub fn state_mask(states: impl IntoIterator<Item = u32>) -> u32 {
    let mask = states.into_iter().fold(0u32, |m, s| m | (1u32 << s));
    if mask == 0 { u32::MAX } else { mask }
}

pub fn dump_request(family: u8, states: u32, seq: u32) -> Request {
    Request {
        hdr: NlMsgHdr {
            len: size_of::<Request>() as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            pid: 0,
        },
        req: ReqV2 { family, protocol: IPPROTO_TCP, states, ..Default::default() },
    }
}

/// A dump of the TCP sockets of both families in one request (see [`TCPDIAG_GETSOCK`]).
pub fn compat_dump_request(states: u32, seq: u32) -> CompatRequest {
    CompatRequest {
        hdr: NlMsgHdr {
            len: size_of::<CompatRequest>() as u32,
            kind: TCPDIAG_GETSOCK,
            flags: NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            pid: 0,
        },
        req: ReqCompat { states, ..Default::default() },
    }
}

/// The exact identity SOCK_DESTROY looks a socket up by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    pub ifindex: u32,
    pub cookie: u64,
}

fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

/// A SOCK_DESTROY request. Without `ack` the kernel answers only on failure.
pub fn destroy_request(t: &Tuple, seq: u32, ack: bool) -> Request {
    let family = if t.laddr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 } as u8;
    Request {
        hdr: NlMsgHdr {
            len: size_of::<Request>() as u32,
            kind: SOCK_DESTROY,
            flags: NLM_F_REQUEST | if ack { NLM_F_ACK } else { 0 },
            seq,
            pid: 0,
        },
        req: ReqV2 {
            family,
            protocol: IPPROTO_TCP,
            states: u32::MAX,
            id: SockId {
                sport: t.lport.to_be_bytes(),
                dport: t.rport.to_be_bytes(),
                src: addr_bytes(t.laddr),
                dst: addr_bytes(t.raddr),
                ifindex: t.ifindex,
                cookie: [t.cookie as u32, (t.cookie >> 32) as u32],
            },
            ..Default::default()
        },
    }
}

/// Addresses of a dump record. IPv4-mapped IPv6 addresses (dual-stack sockets talking IPv4) are
/// returned as IPv4: that is the peer an operator names, and SOCK_DESTROY's IPv4 lookup finds them.
pub fn addrs(m: &DiagMsg) -> (IpAddr, IpAddr) {
    let conv = |raw: [u8; 16]| -> IpAddr {
        if m.family == libc::AF_INET as u8 {
            IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
        } else {
            Ipv6Addr::from(raw).to_canonical()
        }
    };
    (conv(m.id.src), conv(m.id.dst))
}

pub fn cookie(id: &SockId) -> u64 {
    u64::from(id.cookie[0]) | (u64::from(id.cookie[1]) << 32)
}

/// One netlink message inside a received datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Msg<'a> {
    Diag(DiagMsg),
    /// NLMSG_ERROR: `errno` 0 is an ack; `seq` is the request's sequence number.
    Error {
        seq: u32,
        errno: i32,
    },
    /// NLMSG_DONE; a failed dump carries a non-zero `errno`.
    Done {
        seq: u32,
        errno: i32,
    },
    Other {
        kind: u16,
        payload: &'a [u8],
    },
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("malformed netlink message at byte {offset} of {len}")]
pub struct Malformed {
    pub offset: usize,
    pub len: usize,
}

fn read<T: Copy + Default>(b: &[u8]) -> Option<T> {
    (b.len() >= size_of::<T>()).then(|| {
        // SAFETY: length checked; T is a plain repr(C) integer struct; read_unaligned copes with
        // the buffer's alignment.
        unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) }
    })
}

/// Walk the messages of one datagram, calling `f` for each.
pub fn walk<'a>(buf: &'a [u8], mut f: impl FnMut(Msg<'a>)) -> Result<(), Malformed> {
    let mut off = 0;
    while off + size_of::<NlMsgHdr>() <= buf.len() {
        let bad = Malformed { offset: off, len: buf.len() };
        let hdr: NlMsgHdr = read(&buf[off..]).ok_or(bad.clone())?;
        let len = hdr.len as usize;
        if len < size_of::<NlMsgHdr>() || off + len > buf.len() {
            return Err(bad);
        }
        let payload = &buf[off + size_of::<NlMsgHdr>()..off + len];
        f(match hdr.kind {
            NLMSG_DONE => Msg::Done { seq: hdr.seq, errno: read::<i32>(payload).map_or(0, |e| -e) },
            NLMSG_ERROR => {
                let e: NlMsgErr = read(payload).ok_or(bad)?;
                Msg::Error { seq: e.msg.seq, errno: -e.error }
            }
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => Msg::Diag(read(payload).ok_or(bad)?),
            kind => Msg::Other { kind, payload },
        });
        off += (len + 3) & !3;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a repr(C) value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()).to_vec() }
    }

    #[test]
    fn destroy_request_layout() {
        let t = Tuple {
            laddr: "10.0.0.1".parse().unwrap(),
            lport: 40000,
            raddr: "10.0.0.2".parse().unwrap(),
            rport: 80,
            ifindex: 3,
            cookie: 0x1_0000_0002,
        };
        let r = destroy_request(&t, 7, true);
        let b = r.as_bytes();
        assert_eq!(b.len(), 72);
        assert_eq!(&b[0..4], &72u32.to_ne_bytes());
        assert_eq!(&b[4..6], &SOCK_DESTROY.to_ne_bytes());
        assert_eq!(&b[6..8], &(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        assert_eq!(destroy_request(&t, 7, false).hdr.flags, NLM_F_REQUEST);
        assert_eq!(b[16], libc::AF_INET as u8);
        assert_eq!(b[17], 6);
        assert_eq!(&b[24..26], &40000u16.to_be_bytes());
        assert_eq!(&b[26..28], &80u16.to_be_bytes());
        assert_eq!(&b[28..32], &[10, 0, 0, 1]);
        assert_eq!(&b[44..48], &[10, 0, 0, 2]);
        assert_eq!(&b[60..64], &3u32.to_ne_bytes());
        assert_eq!(&b[64..68], &2u32.to_ne_bytes());
        assert_eq!(&b[68..72], &1u32.to_ne_bytes());
    }

    #[test]
    fn compat_request_layout() {
        let r = compat_dump_request(1 << 6, 5);
        let b = r.as_bytes();
        assert_eq!(b.len(), 76);
        assert_eq!(&b[0..4], &76u32.to_ne_bytes());
        assert_eq!(&b[4..6], &TCPDIAG_GETSOCK.to_ne_bytes());
        assert_eq!(&b[6..8], &(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        assert_eq!(&b[8..12], &5u32.to_ne_bytes());
        assert_eq!(b[16], 0, "AF_UNSPEC: both families");
        assert_eq!(&b[68..72], &(1u32 << 6).to_ne_bytes());
        assert_eq!(&b[72..76], &[0; 4]);
    }

    #[test]
    fn masks() {
        assert_eq!(state_mask([]), u32::MAX);
        assert_eq!(state_mask([6, 5]), (1 << 6) | (1 << 5));
    }

    #[test]
    fn walks_diag_ack_and_done() {
        let mut buf = Vec::new();
        let mut m = DiagMsg { family: libc::AF_INET6 as u8, state: 6, timer: 3, expires: 500, ..Default::default() };
        m.id.src = "::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap().octets();
        m.id.dst = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
        let hdr = NlMsgHdr { len: 16 + 72 + 8, kind: SOCK_DIAG_BY_FAMILY, ..Default::default() };
        buf.extend(bytes(&hdr));
        buf.extend(bytes(&m));
        buf.extend([0u8; 8]); // attributes we skip
        let err = NlMsgErr { error: -2, msg: NlMsgHdr { seq: 9, ..Default::default() } };
        buf.extend(bytes(&NlMsgHdr { len: 36, kind: NLMSG_ERROR, ..Default::default() }));
        buf.extend(bytes(&err));
        buf.extend(bytes(&NlMsgHdr { len: 20, kind: NLMSG_DONE, seq: 4, ..Default::default() }));
        buf.extend([0u8; 4]);
        let mut seen = Vec::new();
        walk(&buf, |msg| seen.push(format!("{msg:?}"))).unwrap();
        assert_eq!(seen.len(), 3);
        let mut got = None;
        walk(&buf, |msg| {
            if let Msg::Diag(d) = msg {
                got = Some(d)
            }
        })
        .unwrap();
        let d = got.unwrap();
        assert_eq!(addrs(&d), ("10.0.0.1".parse().unwrap(), "fd00::2".parse().unwrap()));
        assert!(seen[1].contains("errno: 2") && seen[1].contains("seq: 9"));
    }

    #[test]
    fn rejects_truncated() {
        let hdr = NlMsgHdr { len: 100, kind: SOCK_DIAG_BY_FAMILY, ..Default::default() };
        let buf = bytes(&hdr);
        assert!(walk(&buf, |_| {}).is_err());
        let hdr = NlMsgHdr { len: 16, kind: SOCK_DIAG_BY_FAMILY, ..Default::default() };
        assert!(walk(&bytes(&hdr), |_| {}).is_err(), "diag message without body");
    }
}
