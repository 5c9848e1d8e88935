//! Socket identities shared by the kernel-event path, sock_diag dumps, tables and killers.

use std::net::IpAddr;

use crate::state::TcpState;

/// An address family, as output names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Inet,
    Inet6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Self::Inet => "inet",
            Self::Inet6 => "inet6",
        }
    }
}

/// A TCP connection in a namespace: the key of every table (the socket cookie of a TIME_WAIT
/// socket is often 0, so the 4-tuple plus namespace cookie is the identity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockKey {
    pub netns_cookie: u64,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
}

/// `laddr:lport -> raddr:rport netns N`, addresses as `ss` writes them.
impl std::fmt::Display for SockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = std::net::SocketAddr::new(self.laddr, self.lport);
        let r = std::net::SocketAddr::new(self.raddr, self.rport);
        write!(f, "{l} -> {r} netns {}", self.netns_cookie)
    }
}

impl SockKey {
    pub fn family(&self) -> Family {
        if self.laddr.is_ipv4() { Family::Inet } else { Family::Inet6 }
    }
}

/// One socket from a sock_diag dump (`NETLINK_SOCK_DIAG`, what `ss` reads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub key: SockKey,
    /// `idiag_state`; for a TIME_WAIT socket this is its substate (TIME_WAIT or FIN_WAIT2).
    pub state: TcpState,
    /// True for `inet_timewait_sock` entries (`idiag_timer == 3`): TIME_WAIT and FIN_WAIT2-substate.
    pub timewait: bool,
    /// Milliseconds until the socket's timer fires (`idiag_expires`), 0 if none.
    pub expires_ms: u32,
    /// `idiag_cookie` (often 0 for TIME_WAIT sockets).
    pub cookie: u64,
    pub inode: u32,
    pub uid: u32,
}
