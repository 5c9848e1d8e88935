//! Network namespaces: validate a path, learn its cookie, run work inside it.

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
    #[error("cannot read the namespace cookie (SO_NETNS_COOKIE needs Linux >= 5.14)")]
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

    pub fn cookie(&self) -> Result<u64, NetnsError> {
        self.run(current_cookie)?
    }
}

/// Cookie of the namespace the calling thread is in.
pub fn current_cookie() -> Result<u64, NetnsError> {
    // SAFETY: plain socket syscalls on an fd we close before returning.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(NetnsError::Cookie(std::io::Error::last_os_error()));
        }
        let mut cookie: u64 = 0;
        let mut len = size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, (&raw mut cookie).cast(), &mut len);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(NetnsError::Cookie(err));
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
}
