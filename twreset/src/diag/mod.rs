//! sock_diag netlink (`NETLINK_SOCK_DIAG`, what `ss` reads): dump the TCP sockets of the calling
//! thread's network namespace and destroy exact sockets with batched `SOCK_DESTROY`.
//!
//! A netlink socket acts in the namespace it was created in, so callers that target another
//! namespace open [`Diag`] inside `kernel::netns::Netns::run`.

pub mod wire;

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::{
    kernel::netns::{self, NetnsError},
    sock::{DiagSocket, SockKey},
    state::{StateError, TcpState},
};
pub use wire::Tuple;
use wire::{Msg, Request};

/// SOCK_DESTROY requests per `send` (docs/internals/kernel-abi.md: 512 with acks ~510k sockets/s).
pub const BATCH: usize = 512;
/// Receive buffer: 512 acks must fit without the kernel dropping one (ENOBUFS).
const RCVBUF: libc::c_int = 8 << 20;
const RECV_LEN: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("cannot open a NETLINK_SOCK_DIAG socket")]
    Open {
        #[source]
        source: io::Error,
    },
    #[error("sending to sock_diag failed")]
    Send {
        #[source]
        source: io::Error,
    },
    #[error("receiving from sock_diag failed")]
    Recv {
        #[source]
        source: io::Error,
    },
    #[error("the kernel refused the sock_diag dump")]
    Dump {
        #[source]
        source: io::Error,
    },
    #[error("sock_diag sent a datagram larger than {RECV_LEN} bytes")]
    Truncated,
    #[error("bad sock_diag reply")]
    Malformed {
        #[source]
        source: wire::Malformed,
    },
    #[error("sock_diag reported an unknown TCP state")]
    State {
        #[source]
        source: StateError,
    },
    #[error("cannot identify the network namespace")]
    Netns {
        #[source]
        source: NetnsError,
    },
}

/// One dumped socket plus what SOCK_DESTROY needs beyond [`DiagSocket`] (the bound interface).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub sock: DiagSocket,
    pub ifindex: u32,
}

impl Entry {
    /// The exact identity to destroy: 4-tuple, interface and socket cookie, so a new socket that
    /// reuses the tuple after the dump is never hit (the kernel answers ESTALE instead).
    pub fn tuple(&self) -> Tuple {
        let k = &self.sock.key;
        Tuple {
            laddr: k.laddr,
            lport: k.lport,
            raddr: k.raddr,
            rport: k.rport,
            ifindex: self.ifindex,
            cookie: self.sock.cookie,
        }
    }
}

/// What SOCK_DESTROY did to one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Killed,
    /// ENOENT (closed meanwhile) or ESTALE (its tuple now belongs to a newer socket, left alone).
    Gone,
    Failed {
        errno: i32,
    },
    /// `kill --method rst`: the RST was sent, yet the socket is still there afterwards.
    Survived,
}

impl Outcome {
    pub fn from_errno(errno: i32) -> Self {
        match errno {
            0 => Self::Killed,
            libc::ENOENT | libc::ESTALE => Self::Gone,
            errno => Self::Failed { errno },
        }
    }
}

/// A NETLINK_SOCK_DIAG socket bound to the namespace of the thread that opened it.
pub struct Diag {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

fn setsockopt(fd: &OwnedFd, level: i32, opt: i32, val: libc::c_int) -> io::Result<()> {
    // SAFETY: int option on a valid fd.
    let rc = unsafe {
        libc::setsockopt(fd.as_raw_fd(), level, opt, (&raw const val).cast(), size_of::<libc::c_int>() as u32)
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

impl Diag {
    pub fn open() -> Result<Self, DiagError> {
        // SAFETY: plain socket(2); the fd is owned immediately.
        let raw =
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, wire::NETLINK_SOCK_DIAG) };
        if raw < 0 {
            return Err(DiagError::Open { source: io::Error::last_os_error() });
        }
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setsockopt(&fd, wire::SOL_NETLINK, wire::NETLINK_CAP_ACK, 1).map_err(|source| DiagError::Open { source })?;
        // FORCE needs CAP_NET_ADMIN, which a kill has anyway; plain SO_RCVBUF is capped by rmem_max.
        if setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF).is_err() {
            let _ = setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF);
        }
        Ok(Self { fd, seq: 1, buf: vec![0; RECV_LEN] })
    }

    fn send(&self, bytes: &[u8]) -> Result<(), DiagError> {
        // SAFETY: zeroed sockaddr_nl addresses the kernel (pid 0).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        loop {
            // SAFETY: valid buffer and address for the call's duration.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    (&raw const sa).cast(),
                    size_of::<libc::sockaddr_nl>() as u32,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(DiagError::Send { source: e });
            }
        }
    }

    /// Receive one datagram into `self.buf`; returns its length.
    fn recv(&mut self) -> Result<usize, DiagError> {
        loop {
            // SAFETY: buf is valid for its length; MSG_TRUNC makes the return value the real size.
            let n = unsafe {
                libc::recv(self.fd.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len(), libc::MSG_TRUNC)
            };
            if n >= 0 {
                let n = n as usize;
                return if n > self.buf.len() { Err(DiagError::Truncated) } else { Ok(n) };
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(DiagError::Recv { source: e });
            }
        }
    }

    fn next_seq(&mut self, n: u32) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(n);
        s
    }

    /// Dump both families, calling `f` for every raw record. `mask` is the kernel state bitmask.
    ///
    /// One compat request walks the kernel's socket hash once for both families; a request per
    /// family walks it twice, and the IPv6 walk of a namespace full of IPv4 sockets, which finds
    /// nothing, cost a quarter of a 200k-socket seed. A kernel that refuses the compat request
    /// does so before any socket, and then gets one request per family.
    pub fn dump_raw(
        &mut self,
        mask: u32,
        mut f: impl FnMut(&wire::DiagMsg) -> Result<(), DiagError>,
    ) -> Result<(), DiagError> {
        let seq = self.next_seq(1);
        let mut delivered = 0usize;
        match self.dump_request(wire::compat_dump_request(mask, seq).as_bytes(), &mut delivered, &mut f) {
            Err(DiagError::Dump { .. }) if delivered == 0 => {}
            done => return done,
        }
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let seq = self.next_seq(1);
            self.dump_request(wire::dump_request(family, mask, seq).as_bytes(), &mut delivered, &mut f)?;
        }
        Ok(())
    }

    /// Send one dump request and read its replies to the end, counting the records in `delivered`.
    fn dump_request(
        &mut self,
        request: &[u8],
        delivered: &mut usize,
        mut f: impl FnMut(&wire::DiagMsg) -> Result<(), DiagError>,
    ) -> Result<(), DiagError> {
        self.send(request)?;
        loop {
            let n = self.recv()?;
            let mut done = false;
            let mut failure: Result<(), DiagError> = Ok(());
            wire::walk(&self.buf[..n], |m| {
                if done || failure.is_err() {
                    return;
                }
                match m {
                    Msg::Diag(d) => {
                        *delivered += 1;
                        failure = f(&d);
                    }
                    Msg::Done { errno: 0, .. } => done = true,
                    Msg::Done { errno, .. } | Msg::Error { errno, .. } => {
                        failure = Err(DiagError::Dump { source: io::Error::from_raw_os_error(errno) })
                    }
                    Msg::Other { .. } => {}
                }
            })
            .map_err(|source| DiagError::Malformed { source })?;
            failure?;
            if done {
                return Ok(());
            }
        }
    }

    /// Every TCP socket of this namespace whose kernel state is in `states` (empty = all).
    /// Kernel semantics: a TIME_WAIT socket matches by its substate, so tw sockets in substate
    /// FIN_WAIT2 come with `FinWait2`, not `TimeWait`.
    pub fn dump(&mut self, states: &[TcpState]) -> Result<Vec<Entry>, DiagError> {
        let mut out = Vec::new();
        self.dump_each(states, |e| out.push(e.clone()))?;
        Ok(out)
    }

    /// Like [`Diag::dump`], handing each socket to `f` as its datagram is read instead of
    /// collecting them: a 200k-socket dump then needs one receive buffer, not a list as large as
    /// the table the caller builds from it.
    pub fn dump_each(&mut self, states: &[TcpState], mut f: impl FnMut(&Entry)) -> Result<(), DiagError> {
        let netns_cookie = netns::current_cookie().map_err(|source| DiagError::Netns { source })?;
        let mask = wire::state_mask(states.iter().map(|s| s.number()));
        self.dump_raw(mask, |m| {
            let state = TcpState::try_from(u32::from(m.state)).map_err(|source| DiagError::State { source })?;
            let (laddr, raddr) = wire::addrs(m);
            f(&Entry {
                sock: DiagSocket {
                    key: SockKey {
                        netns_cookie,
                        laddr,
                        lport: u16::from_be_bytes(m.id.sport),
                        raddr,
                        rport: u16::from_be_bytes(m.id.dport),
                    },
                    state,
                    timewait: m.timer == wire::TIMER_TIMEWAIT,
                    expires_ms: m.expires,
                    cookie: wire::cookie(&m.id),
                    inode: m.inode,
                    uid: m.uid,
                },
                ifindex: m.id.ifindex,
            });
            Ok(())
        })
    }

    /// Destroy exactly these sockets, [`BATCH`] requests per send. Results are in input order;
    /// `progress` gets the number of sockets handled so far after every batch.
    ///
    /// Only the last request of a batch asks for an ack: the kernel answers the others only when
    /// they fail, and it handles a netlink send synchronously, in order, so once the last ack is
    /// read every failure of the batch has been read too and silence means "killed". This is
    /// about twice as fast as one ack per request (docs/internals/kernel-abi.md) with the same per-socket results.
    pub fn destroy(&mut self, tuples: &[Tuple], mut progress: impl FnMut(usize)) -> Result<Vec<Outcome>, DiagError> {
        let mut out = Vec::with_capacity(tuples.len());
        // One reusable batch buffer: BATCH requests, one send.
        let mut req = bytes::BytesMut::with_capacity(BATCH * size_of::<Request>());
        for chunk in tuples.chunks(BATCH) {
            let base = self.next_seq(chunk.len() as u32);
            let last = chunk.len() - 1;
            req.clear();
            for (i, t) in chunk.iter().enumerate() {
                req.extend_from_slice(wire::destroy_request(t, base.wrapping_add(i as u32), i == last).as_bytes());
            }
            let first = out.len();
            out.resize(first + chunk.len(), Outcome::Killed);
            self.send(&req)?;
            let mut finished = false;
            while !finished {
                let n = self.recv()?;
                wire::walk(&self.buf[..n], |m| {
                    if let Msg::Error { seq, errno } = m {
                        let i = seq.wrapping_sub(base) as usize;
                        if i < chunk.len() {
                            out[first + i] = Outcome::from_errno(errno);
                            finished |= i == last;
                        }
                    }
                })
                .map_err(|source| DiagError::Malformed { source })?;
            }
            progress(out.len());
        }
        Ok(out)
    }
}

/// Dump the TCP sockets of the calling thread's namespace (see [`Diag::dump`]).
pub fn dump(states: &[TcpState]) -> Result<Vec<DiagSocket>, DiagError> {
    let mut out = Vec::new();
    dump_each(states, |d| out.push(d.clone()))?;
    Ok(out)
}

/// Hand every TCP socket of the calling thread's namespace to `f` (see [`Diag::dump_each`]).
pub fn dump_each(states: &[TcpState], mut f: impl FnMut(&DiagSocket)) -> Result<(), DiagError> {
    Diag::open()?.dump_each(states, |e| f(&e.sock))
}

/// Destroy these exact sockets in the calling thread's namespace (see [`Diag::destroy`]).
pub fn destroy(tuples: &[Tuple], progress: impl FnMut(usize)) -> Result<Vec<Outcome>, DiagError> {
    Diag::open()?.destroy(tuples, progress)
}

/// Probe SOCK_DESTROY: a request for a tuple that cannot exist (port 0 on both sides) answers
/// ENOENT when the kernel supports destroying TCP sockets, EOPNOTSUPP when
/// `CONFIG_INET_DIAG_DESTROY` is off. Returns the errno of the answer.
pub fn probe_destroy(diag: &mut Diag) -> Result<i32, DiagError> {
    let t = Tuple {
        laddr: std::net::Ipv4Addr::UNSPECIFIED.into(),
        lport: 0,
        raddr: std::net::Ipv4Addr::UNSPECIFIED.into(),
        rport: 0,
        ifindex: 0,
        cookie: wire::NO_COOKIE,
    };
    Ok(match diag.destroy(&[t], |_| {})?[0] {
        Outcome::Killed => 0,
        Outcome::Gone => libc::ENOENT,
        Outcome::Failed { errno } => errno,
        Outcome::Survived => libc::EIO,
    })
}
