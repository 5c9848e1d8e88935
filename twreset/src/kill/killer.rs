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
    #[error("--method rst needs kernel BTF for socket field offsets")]
    Btf {
        #[source]
        source: crate::kernel::btf::BtfError,
    },
    #[error("--method rst: loading the eBPF object failed (needs root or CAP_BPF + CAP_PERFMON)")]
    BpfLoad {
        #[source]
        source: aya::EbpfError,
    },
    #[error("--method rst: eBPF program iter_tcp missing from the object")]
    NoProgram,
    #[error("--method rst: the iter/tcp sequence reader failed at {what}")]
    Iter {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Kills exact sockets of one namespace; `progress` gets the count handled so far.
pub trait Killer {
    fn method(&self) -> Method;
    /// One outcome per target, in order.
    fn kill(
        &mut self,
        targets: &[Entry],
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Outcome>, KillError>;
}

/// Batched netlink SOCK_DESTROY by exact tuple and socket cookie.
pub struct DestroyKiller<'a> {
    pub diag: &'a mut Diag,
}

impl Killer for DestroyKiller<'_> {
    fn method(&self) -> Method {
        Method::Destroy
    }

    fn kill(
        &mut self,
        targets: &[Entry],
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Outcome>, KillError> {
        let tuples: Vec<_> = targets.iter().map(Entry::tuple).collect();
        self.diag
            .destroy(&tuples, progress)
            .map_err(|source| KillError::Destroy { source })
    }
}

/// Why a socket could not be killed (None when it was killed or already gone).
pub fn failure(o: Outcome) -> Option<String> {
    match o {
        Outcome::Killed | Outcome::Gone => None,
        Outcome::Failed { errno } => Some(reason(errno)),
        Outcome::Survived => Some(
            "the socket survived the RST (its sequence number moved on meanwhile, or net.ipv4.tcp_rfc1337=1)".into(),
        ),
    }
}

/// Human reason for a failed kill's errno, with what to do where we know it.
pub fn reason(errno: i32) -> String {
    let base = std::io::Error::from_raw_os_error(errno).to_string();
    match errno {
        libc::EPERM | libc::EACCES => {
            format!("{base}: needs CAP_NET_ADMIN in the socket's namespace")
        }
        libc::EOPNOTSUPP => {
            format!(
                "{base}: the kernel cannot destroy this socket (CONFIG_INET_DIAG_DESTROY off, or TIME_WAIT before Linux 6.0)"
            )
        }
        _ => base,
    }
}
