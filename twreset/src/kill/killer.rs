//! Kill methods behind one trait, so planning and reporting are testable without a kernel and a
//! policy can pick a method: netlink SOCK_DESTROY (default) and RST injection.

use crate::{
    diag::{Diag, DiagError, Entry, Outcome},
    kill::Method,
};

#[derive(Debug, thiserror::Error)]
pub enum KillError {
    #[error("SOCK_DESTROY failed")]
    Destroy {
        #[source]
        source: DiagError,
    },
    #[error(
        "--method rst is not implemented yet: it needs each socket's rcv_nxt read from the kernel (BPF iter/tcp), which this build does not have; use the default method (SOCK_DESTROY)"
    )]
    RstNotImplemented,
}

/// Kills exact sockets of one namespace; `progress` gets the count handled so far.
pub trait Killer {
    fn method(&self) -> Method;
    /// One outcome per target, in order.
    fn kill(&mut self, targets: &[Entry], progress: &mut dyn FnMut(usize)) -> Result<Vec<Outcome>, KillError>;
}

/// Batched netlink SOCK_DESTROY by exact tuple and socket cookie.
pub struct DestroyKiller<'a> {
    pub diag: &'a mut Diag,
}

impl Killer for DestroyKiller<'_> {
    fn method(&self) -> Method {
        Method::Destroy
    }

    fn kill(&mut self, targets: &[Entry], progress: &mut dyn FnMut(usize)) -> Result<Vec<Outcome>, KillError> {
        let tuples: Vec<_> = targets.iter().map(Entry::tuple).collect();
        self.diag.destroy(&tuples, progress).map_err(|source| KillError::Destroy { source })
    }
}

/// RST with the kernel's exact expected sequence number. Not built yet: it refuses rather than
/// guess sequence numbers (a guessed RST is silently ignored, the very failure we exist to fix).
pub struct RstKiller;

impl Killer for RstKiller {
    fn method(&self) -> Method {
        Method::Rst
    }

    fn kill(&mut self, _targets: &[Entry], _progress: &mut dyn FnMut(usize)) -> Result<Vec<Outcome>, KillError> {
        Err(KillError::RstNotImplemented)
    }
}

/// Human reason for a failed kill's errno, with what to do where we know it.
pub fn reason(errno: i32) -> String {
    let base = std::io::Error::from_raw_os_error(errno).to_string();
    match errno {
        libc::EPERM | libc::EACCES => format!("{base}: needs CAP_NET_ADMIN in the socket's namespace"),
        libc::EOPNOTSUPP => {
            format!("{base}: the kernel cannot destroy this socket (CONFIG_INET_DIAG_DESTROY off, or TIME_WAIT before Linux 6.0)")
        }
        _ => base,
    }
}
