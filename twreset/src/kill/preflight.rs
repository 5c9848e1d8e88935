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
    /// May load BPF programs (the RST method reads sequence numbers with one).
    pub bpf: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreflightError {
    #[error(
        "permission denied: killing sockets needs CAP_NET_ADMIN in the target namespace; run twreset as root (sudo)"
    )]
    NoNetAdmin,
    #[error(
        "this kernel cannot destroy TCP sockets over netlink (SOCK_DESTROY answered EOPNOTSUPP: CONFIG_INET_DIAG_DESTROY is off); use --method rst or auto"
    )]
    DestroyUnsupported,
    #[error("SOCK_DESTROY probe failed: {reason}")]
    DestroyProbe { reason: String },
    #[error(
        "Linux {release} cannot destroy TIME_WAIT sockets with SOCK_DESTROY (that needs Linux >= 6.0); use --method auto (the default) or rst"
    )]
    OldKernel { release: String },
    #[error(
        "net.ipv4.tcp_rfc1337=1 in this namespace: the kernel ignores RSTs aimed at TIME_WAIT sockets, so --method rst cannot kill them; use the default method (SOCK_DESTROY) or set net.ipv4.tcp_rfc1337=0"
    )]
    Rfc1337,
    #[error("cannot read net.ipv4.tcp_rfc1337 of the namespace, which --method rst depends on")]
    Rfc1337Unknown,
    #[error(
        "--method rst reads sequence numbers with a BPF iterator, which needs root (or CAP_BPF and CAP_PERFMON); run twreset with sudo"
    )]
    NoBpf,
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
        // SOCK_DESTROY unsupported altogether: every socket needs the RST.
        Method::Auto if facts.destroy_probe == Some(libc::EOPNOTSUPP) => return check(Method::Rst, facts, timewait),
        // Whether TIME_WAIT sockets need the RST is probed on the first of them (`kill::auto`).
        Method::Auto => return check_destroy_probe(facts),
        Method::Destroy => {
            check_destroy_probe(facts)?;
            // Explicit `--method destroy` refuses up front on a kernel that cannot do it.
            if timewait && version(&facts.release).is_none_or(|v| v < (6, 0)) {
                return Err(PreflightError::OldKernel { release: facts.release.clone() });
            }
        }
        Method::Rst if !facts.bpf => return Err(PreflightError::NoBpf),
        Method::Rst => match facts.rfc1337 {
            Some(0) => {}
            Some(_) if timewait => return Err(PreflightError::Rfc1337),
            Some(_) => {}
            None => return Err(PreflightError::Rfc1337Unknown),
        },
    }
    Ok(())
}

/// What the SOCK_DESTROY probe answered, as a preflight verdict.
fn check_destroy_probe(facts: &Facts) -> Result<(), PreflightError> {
    match facts.destroy_probe {
        Some(libc::ENOENT) | None => Ok(()),
        Some(libc::EOPNOTSUPP) => Err(PreflightError::DestroyUnsupported),
        Some(libc::EPERM) => Err(PreflightError::NoNetAdmin),
        Some(e) => Err(PreflightError::DestroyProbe { reason: std::io::Error::from_raw_os_error(e).to_string() }),
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// Gather the facts; call on a thread inside the target namespace (`/proc/sys/net` and the
/// netlink socket both answer for the caller's namespace).
pub fn gather(method: Method, diag: &mut Diag) -> Facts {
    let destroy_probe = match method {
        // The probe itself is a SOCK_DESTROY; a failure to even send it shows as its errno.
        Method::Destroy | Method::Auto => Some(diag::probe_destroy(diag).unwrap_or_else(|e| match e {
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
        bpf: caps::require_bpf().is_ok(),
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
            bpf: true,
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
        let f = Facts { net_admin: false, ..ok_facts() };
        assert_eq!(check(Method::Destroy, &f, false), Err(PreflightError::NoNetAdmin));
        let f = Facts { destroy_probe: Some(libc::EOPNOTSUPP), ..ok_facts() };
        let e = check(Method::Destroy, &f, false).unwrap_err();
        assert!(e.to_string().contains("--method rst"), "{e}");
        let f = Facts { destroy_probe: Some(libc::EPERM), ..ok_facts() };
        assert_eq!(check(Method::Destroy, &f, false), Err(PreflightError::NoNetAdmin));
        let f = Facts { destroy_probe: Some(libc::EIO), ..ok_facts() };
        assert!(matches!(check(Method::Destroy, &f, false), Err(PreflightError::DestroyProbe { .. })));
        let old = Facts { release: "5.15.0".into(), ..ok_facts() };
        assert!(matches!(check(Method::Destroy, &old, true), Err(PreflightError::OldKernel { .. })));
        assert_eq!(check(Method::Destroy, &old, false), Ok(()), "established sockets die on old kernels too");
    }

    #[test]
    fn auto_decisions() {
        assert_eq!(check(Method::Auto, &ok_facts(), true), Ok(()));
        let old = Facts { release: "5.10.0-32-amd64".into(), rfc1337: Some(1), ..ok_facts() };
        assert_eq!(check(Method::Auto, &old, true), Ok(()), "TIME_WAIT support is probed on the sockets");
        let f = Facts { destroy_probe: Some(libc::EOPNOTSUPP), ..ok_facts() };
        assert_eq!(check(Method::Auto, &f, true), Ok(()), "falls back to the RST");
        let f = Facts { destroy_probe: Some(libc::EOPNOTSUPP), rfc1337: Some(1), ..ok_facts() };
        assert_eq!(check(Method::Auto, &f, true), Err(PreflightError::Rfc1337));
        let f = Facts { net_admin: false, ..ok_facts() };
        assert_eq!(check(Method::Auto, &f, false), Err(PreflightError::NoNetAdmin));
    }

    #[test]
    fn rst_decisions() {
        assert_eq!(check(Method::Rst, &ok_facts(), true), Ok(()));
        let f = Facts { rfc1337: Some(1), ..ok_facts() };
        assert_eq!(check(Method::Rst, &f, true), Err(PreflightError::Rfc1337));
        assert_eq!(check(Method::Rst, &f, false), Ok(()), "rfc1337 only protects TIME_WAIT");
        let f = Facts { rfc1337: None, ..ok_facts() };
        assert_eq!(check(Method::Rst, &f, true), Err(PreflightError::Rfc1337Unknown));
        let f = Facts { bpf: false, ..ok_facts() };
        assert_eq!(check(Method::Rst, &f, false), Err(PreflightError::NoBpf));
    }
}
