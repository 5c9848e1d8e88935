//! Network namespaces: validate a path, learn its identity, run work inside it.
//!
//! A namespace's identity ("cookie" throughout the tool, `netns_cookie` in JSON) is its
//! `SO_NETNS_COOKIE` (Linux >= 5.14) where the kernel has that option, else its nsfs inode number
//! (`stat(/proc/PID/ns/net).st_ino` = `net->ns.inum`), which every kernel has. Before 5.12 the
//! kernel's own `net_cookie` is generated lazily (0 until a BPF program asks for it), so it cannot
//! serve there. The eBPF side reads the same field ([`IdKind::btf_field`]), so kernel events,
//! sock_diag dumps and output agree on every kernel.

use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

/// `SO_NETNS_COOKIE` (Linux 5.14): the same cookie the eBPF side reads from `struct net`.
const SO_NETNS_COOKIE: libc::c_int = 71;
/// `NS_GET_NSTYPE` ioctl on a namespace file.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Where `ip netns` keeps named namespaces.
pub const NAMED_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("--netns {}: cannot open", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--netns {}: not a network namespace (expected e.g. /run/netns/NAME or /proc/PID/ns/net)", path.display())]
    NotNetns { path: PathBuf },
    #[error("cannot enter network namespace {}", path.display())]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot read the namespace identity (SO_NETNS_COOKIE, or the inode of /proc/thread-self/ns/net)")]
    Cookie(#[source] std::io::Error),
    #[error("namespace worker thread panicked")]
    Thread,
}

/// An opened, verified network namespace.
#[derive(Debug)]
pub struct Netns {
    pub path: PathBuf,
    fd: OwnedFd,
}

impl Netns {
    /// Open `path` and check it really is a network namespace.
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open { path: path.to_owned(), source })?;
        // SAFETY: ioctl without argument on an fd we own.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind != libc::CLONE_NEWNET {
            return Err(NetnsError::NotNetns { path: path.to_owned() });
        }
        Ok(Self { path: path.to_owned(), fd: file.into() })
    }

    /// Run `f` on a fresh thread that has entered this namespace; sockets it makes live there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|source| NetnsError::Enter { path: self.path.clone(), source })?;
                Ok(f())
            })
            .join()
            .map_err(|_| NetnsError::Thread)?
        })
    }

    /// Identity of this namespace ([`IdKind`]): its cookie, or the inode of its file.
    pub fn cookie(&self) -> Result<u64, NetnsError> {
        match id_kind() {
            IdKind::Cookie => self.run(current_cookie)?,
            IdKind::Inode => inode_of(File::from(self.fd.try_clone().map_err(NetnsError::Cookie)?)),
        }
    }
}

/// What identifies a network namespace on this kernel (decided once, by asking the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    /// `SO_NETNS_COOKIE` = `net->net_cookie` (Linux >= 5.14).
    Cookie,
    /// nsfs inode = `net->ns.inum` (every kernel; used where `SO_NETNS_COOKIE` is missing).
    Inode,
}

impl IdKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cookie => "cookie",
            Self::Inode => "inode",
        }
    }

    /// Why this identity was chosen, for `doctor`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Cookie => "SO_NETNS_COOKIE works (Linux >= 5.14): netns_cookie is the kernel's namespace cookie",
            Self::Inode => {
                "no SO_NETNS_COOKIE (Linux < 5.14): netns_cookie holds the namespace's inode number (ls -i /proc/PID/ns/net)"
            }
        }
    }

    /// The `struct net` member the eBPF programs read, and whether it is a 32-bit field.
    pub fn btf_field(self) -> (&'static str, bool) {
        match self {
            Self::Cookie => ("net_cookie", false),
            Self::Inode => ("ns.inum", true),
        }
    }
}

/// The identity this kernel supports, probed once on a socket of the caller's namespace.
pub fn id_kind() -> IdKind {
    static KIND: std::sync::OnceLock<IdKind> = std::sync::OnceLock::new();
    *KIND.get_or_init(|| match so_netns_cookie() {
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => IdKind::Inode,
        _ => IdKind::Cookie,
    })
}

/// Identity of the namespace the calling thread is in ([`IdKind`]).
pub fn current_cookie() -> Result<u64, NetnsError> {
    match id_kind() {
        IdKind::Cookie => so_netns_cookie().map_err(NetnsError::Cookie),
        IdKind::Inode => inode_of(File::open("/proc/thread-self/ns/net").map_err(NetnsError::Cookie)?),
    }
}

fn inode_of(file: File) -> Result<u64, NetnsError> {
    use std::os::unix::fs::MetadataExt;
    Ok(file.metadata().map_err(NetnsError::Cookie)?.ino())
}

/// `SO_NETNS_COOKIE` of a fresh socket in the calling thread's namespace.
fn so_netns_cookie() -> std::io::Result<u64> {
    // SAFETY: plain socket syscalls on an fd we close before returning.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut cookie: u64 = 0;
        let mut len = size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, (&raw mut cookie).cast(), &mut len);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
        Ok(cookie)
    }
}

/// Named namespaces (`ip netns`) with their cookies, for labelling output. Unreadable ones are skipped.
pub fn named() -> Vec<(String, u64)> {
    let Ok(dir) = std::fs::read_dir(NAMED_DIR) else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let ns = Netns::open(&e.path()).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), ns.cookie().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_namespace_paths() {
        assert!(matches!(Netns::open(Path::new("/etc/hostname")), Err(NetnsError::NotNetns { .. })));
        assert!(matches!(Netns::open(Path::new("/nonexistent")), Err(NetnsError::Open { .. })));
        // A namespace of another type is not a network namespace either.
        assert!(matches!(Netns::open(Path::new("/proc/self/ns/uts")), Err(NetnsError::NotNetns { .. })));
    }

    #[test]
    fn own_namespace_cookie_is_stable() {
        let ns = Netns::open(Path::new("/proc/self/ns/net")).unwrap();
        let a = ns.cookie().unwrap();
        assert_eq!(a, current_cookie().unwrap());
        assert_ne!(a, 0);
    }

    /// The identity follows the kernel: the cookie where SO_NETNS_COOKIE exists, else the inode.
    #[test]
    fn identity_matches_the_kernel() {
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        match (id_kind(), so_netns_cookie()) {
            (IdKind::Cookie, Ok(c)) => assert_eq!(current_cookie().unwrap(), c),
            (IdKind::Inode, Err(_)) => assert_eq!(current_cookie().unwrap(), inode),
            (kind, got) => panic!("identity {kind:?} but SO_NETNS_COOKIE answered {got:?}"),
        }
    }
}
