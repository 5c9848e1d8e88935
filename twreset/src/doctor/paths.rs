//! Which path each command takes on the running kernel and why (`doctor`'s `kernel.paths`):
//! trace (sock_ops from connect() or the tracepoint), kill (SOCK_DESTROY or the exact RST) and
//! the namespace identity (cookie or inode). Pure: decided from facts passed in.

use serde::Serialize;

use crate::{doctor::model::Capabilities, kernel::netns::IdKind};

/// One command's path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Path {
    pub path: &'static str,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Paths {
    pub trace: Path,
    pub kill: Path,
    pub netns_identity: Path,
}

/// What the paths depend on.
pub struct PathFacts<'a> {
    pub version: Option<(u32, u32)>,
    pub caps: &'a Capabilities,
    pub cgroup2: bool,
    pub id: IdKind,
}

pub fn decide(f: &PathFacts) -> Paths {
    let trace = match (f.version, f.cgroup2) {
        (_, false) => Path {
            path: "tracepoint",
            reason: "no cgroup v2 hierarchy mounted: sock_ops cannot attach, inet_sock_set_state reports every transition".into(),
        },
        (Some(v), true) if v >= (6, 12) => Path {
            path: "sock_ops-at-connect",
            reason: "Linux >= 6.12 sets TCP_BPF_SOCK_OPS_CB_FLAGS at connect(): sockets are sock_ops' from birth, older ones are handed over and the tracepoint programs detach".into(),
        },
        _ => Path {
            path: "tracepoint",
            reason: "Linux < 6.12 cannot set the sock_ops flag at connect(): inet_sock_set_state reports transitions until a socket is established, sock_ops after; same events and loss accounting".into(),
        },
    };
    let sd = &f.caps.sock_destroy_time_wait;
    let kill = if sd.available {
        Path { path: "destroy", reason: "SOCK_DESTROY kills TIME_WAIT and other sockets (Linux >= 6.0)".into() }
    } else if sd.errno.as_deref() == Some("EOPNOTSUPP") {
        Path {
            path: "rst",
            reason: "SOCK_DESTROY is unsupported (CONFIG_INET_DIAG_DESTROY off): kill --method auto sends the exact-sequence RST to every socket (TIME_WAIT needs net.ipv4.tcp_rfc1337=0)".into(),
        }
    } else if sd.errno.is_none() {
        Path {
            path: "destroy+rst",
            reason: "SOCK_DESTROY cannot kill TIME_WAIT sockets before Linux 6.0: kill --method auto destroys the others and sends TIME_WAIT sockets the exact-sequence RST (needs net.ipv4.tcp_rfc1337=0), per socket in --json".into(),
        }
    } else {
        Path { path: "none", reason: format!("SOCK_DESTROY probe failed: {}", sd.detail) }
    };
    let netns_identity = Path { path: f.id.name(), reason: f.id.reason().into() };
    Paths { trace, kill, netns_identity }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::model::Capability;

    fn caps(sd: Capability) -> Capabilities {
        let y = || Capability::yes("ok");
        Capabilities {
            btf: y(),
            tracefs: y(),
            bpf_tracepoint: y(),
            bpf_fentry: y(),
            sock_destroy_time_wait: sd,
            timewait_timer: y(),
        }
    }

    #[test]
    fn paths_by_kernel() {
        let new = caps(Capability::yes("ok"));
        let f = PathFacts { version: Some((6, 18)), caps: &new, cgroup2: true, id: IdKind::Cookie };
        let p = decide(&f);
        assert_eq!((p.trace.path, p.kill.path, p.netns_identity.path), ("sock_ops-at-connect", "destroy", "cookie"));
        let p = decide(&PathFacts { version: Some((6, 1)), ..f });
        assert_eq!(p.trace.path, "tracepoint");
        let old = caps(Capability { available: false, errno: None, detail: "< 6.0".into() });
        let p = decide(&PathFacts { version: Some((5, 10)), caps: &old, cgroup2: true, id: IdKind::Inode });
        assert_eq!((p.trace.path, p.kill.path, p.netns_identity.path), ("tracepoint", "destroy+rst", "inode"));
        let off = caps(Capability { available: false, errno: Some("EOPNOTSUPP".into()), detail: String::new() });
        let p = decide(&PathFacts { version: Some((6, 18)), caps: &off, cgroup2: false, id: IdKind::Cookie });
        assert_eq!((p.trace.path, p.kill.path), ("tracepoint", "rst"));
    }
}
