//! Preflight: before killing, learn what will work in the target namespace and turn every
//! obstacle into one clear reason plus what to do (instead of silently skipping, like `ss -K`).

use crate::{
    diag::{self, Diag},
    kernel::caps,
    kill::Method,
};

/// What the kernel told us, gathered inside the target namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// `/proc/sys/kernel/osrelease`.
    pub release: String,
    pub net_admin: bool,
    /// errno a SOCK_DESTROY for a tuple that cannot exist answered (ENOENT = supported).
    pub destroy_probe: Option<i32>,
    /// `net.ipv4.tcp_rfc1337` of the namespace.
    pub rfc1337: Option<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreflightError {
    #[error(
        "permission denied: killing sockets needs CAP_NET_ADMIN in the target namespace; run twreset as root (sudo)"
    )]
    NoNetAdmin,
    #[error(
        "this kernel cannot destroy TCP sockets over netlink (SOCK_DESTROY answered EOPNOTSUPP: CONFIG_INET_DIAG_DESTROY is off); use --method rst"
    )]
    DestroyUnsupported,
    #[error("SOCK_DESTROY probe failed: {reason}")]
    DestroyProbe { reason: String },
    #[error(
        "Linux {release} cannot destroy TIME_WAIT sockets with SOCK_DESTROY (that needs Linux >= 6.0); use --method rst"
    )]
    OldKernel { release: String },
    #[error(
        "net.ipv4.tcp_rfc1337=1 in this namespace: the kernel ignores RSTs aimed at TIME_WAIT sockets, so --method rst cannot kill them; use the default method (SOCK_DESTROY) or set net.ipv4.tcp_rfc1337=0"
    )]
    Rfc1337,
    #[error("cannot read net.ipv4.tcp_rfc1337 of the namespace, which --method rst depends on")]
    Rfc1337Unknown,
}

/// `major.minor` of a kernel release string such as `6.18.44-fc`.
pub fn version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Pure decision: can `method` kill the planned sockets (`timewait`: some are tw sockets)?
pub fn check(method: Method, facts: &Facts, timewait: bool) -> Result<(), PreflightError> {
    if !facts.net_admin {
        return Err(PreflightError::NoNetAdmin);
    }
    match method {
        Method::Destroy => {
            match facts.destroy_probe {
                Some(libc::ENOENT) | None => {}
                Some(libc::EOPNOTSUPP) => return Err(PreflightError::DestroyUnsupported),
                Some(libc::EPERM) => return Err(PreflightError::NoNetAdmin),
                Some(e) => {
                    return Err(PreflightError::DestroyProbe {
                        reason: std::io::Error::from_raw_os_error(e).to_string(),
                    });
                }
            }
            if timewait && version(&facts.release).is_none_or(|v| v < (6, 0)) {
                return Err(PreflightError::OldKernel {
                    release: facts.release.clone(),
                });
            }
        }
        Method::Rst => match facts.rfc1337 {
            Some(0) => {}
            Some(_) if timewait => return Err(PreflightError::Rfc1337),
            Some(_) => {}
            None => return Err(PreflightError::Rfc1337Unknown),
        },
    }
    Ok(())
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Gather the facts; call on a thread inside the target namespace (`/proc/sys/net` and the
/// netlink socket both answer for the caller's namespace).
pub fn gather(method: Method, diag: &mut Diag) -> Facts {
    let destroy_probe = match method {
        // The probe itself is a SOCK_DESTROY; a failure to even send it shows as its errno.
        Method::Destroy => Some(diag::probe_destroy(diag).unwrap_or_else(|e| match e {
            diag::DiagError::Send { source } | diag::DiagError::Recv { source } => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            _ => libc::EIO,
        })),
        Method::Rst => None,
    };
    Facts {
        release: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
        net_admin: caps::require_net_admin().is_ok(),
        destroy_probe,
        rfc1337: read_trimmed("/proc/sys/net/ipv4/tcp_rfc1337").and_then(|v| v.parse().ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_facts() -> Facts {
        Facts {
            release: "6.18.44-fc".into(),
            net_admin: true,
            destroy_probe: Some(libc::ENOENT),
            rfc1337: Some(0),
        }
    }

    #[test]
    fn versions() {
        assert_eq!(version("6.18.44-fc-v445"), Some((6, 18)));
        assert_eq!(version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(version("6.0"), Some((6, 0)));
        assert_eq!(version("garbage"), None);
    }

    #[test]
    fn destroy_decisions() {
        assert_eq!(check(Method::Destroy, &ok_facts(), true), Ok(()));
        let f = Facts {
            net_admin: false,
            ..ok_facts()
        };
        assert_eq!(
            check(Method::Destroy, &f, false),
            Err(PreflightError::NoNetAdmin)
        );
        let f = Facts {
            destroy_probe: Some(libc::EOPNOTSUPP),
            ..ok_facts()
        };
        let e = check(Method::Destroy, &f, false).unwrap_err();
        assert!(e.to_string().contains("--method rst"), "{e}");
        let f = Facts {
            destroy_probe: Some(libc::EPERM),
            ..ok_facts()
        };
        assert_eq!(
            check(Method::Destroy, &f, false),
            Err(PreflightError::NoNetAdmin)
        );
        let f = Facts {
            destroy_probe: Some(libc::EIO),
            ..ok_facts()
        };
        assert!(matches!(
            check(Method::Destroy, &f, false),
            Err(PreflightError::DestroyProbe { .. })
        ));
        let old = Facts {
            release: "5.15.0".into(),
            ..ok_facts()
        };
        assert!(matches!(
            check(Method::Destroy, &old, true),
            Err(PreflightError::OldKernel { .. })
        ));
        assert_eq!(
            check(Method::Destroy, &old, false),
            Ok(()),
            "established sockets die on old kernels too"
        );
    }

    #[test]
    fn rst_decisions() {
        assert_eq!(check(Method::Rst, &ok_facts(), true), Ok(()));
        let f = Facts {
            rfc1337: Some(1),
            ..ok_facts()
        };
        assert_eq!(check(Method::Rst, &f, true), Err(PreflightError::Rfc1337));
        assert_eq!(
            check(Method::Rst, &f, false),
            Ok(()),
            "rfc1337 only protects TIME_WAIT"
        );
        let f = Facts {
            rfc1337: None,
            ..ok_facts()
        };
        assert_eq!(
            check(Method::Rst, &f, true),
            Err(PreflightError::Rfc1337Unknown)
        );
    }
}
