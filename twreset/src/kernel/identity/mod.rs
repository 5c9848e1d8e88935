//! Who a network namespace belongs to: the host, an `ip netns` name, a container or a Kubernetes
//! pod, resolved from the host's own files (`/proc`, cgroup paths, kubelet log directories,
//! runtime state) with no runtime API. [`Resolver`] keeps the identities by namespace cookie.

pub mod parse;
mod resolver;
mod scan;

use std::path::PathBuf;

use serde_json::{Map, Value};

pub use self::{
    parse::Runtime,
    resolver::{RefreshStats, Resolver},
};
use crate::kernel::netns::NetnsError;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read this process's own network namespace")]
    Own(#[source] NetnsError),
    #[error("{}: cannot read", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--pod {0}: no such pod on this host (looked for its processes under {1} and its name in {2})")]
    NoPod(String, String, String),
    #[error("--container {0}: no such container on this host (by name, or ID prefix of at least 12 hex digits)")]
    NoContainer(String),
    #[error("{0}: its network namespace is known but no process or ip-netns name holds it any more")]
    Unreachable(String),
}

/// Where identities are read from; every path is configurable so an agent in a container can
/// read the host's (`/host/proc`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityPaths {
    /// The host's procfs (`proc_root`).
    pub proc_root: PathBuf,
    /// The kubelet's pod log directories, `<namespace>_<name>_<uid>` (`pods_log_dir`).
    pub pods_log_dir: PathBuf,
    /// The kubelet's container log links, `<pod>_<namespace>_<container>-<id>.log`.
    pub containers_log_dir: PathBuf,
    /// `ip netns` names.
    pub named_dir: PathBuf,
    /// containers/storage roots (Podman, CRI-O): `*-containers/containers.json` inside.
    pub storage_roots: Vec<PathBuf>,
    /// Docker's root: `containers/<id>/config.v2.json` inside.
    pub docker_root: PathBuf,
}

impl Default for IdentityPaths {
    fn default() -> Self {
        Self {
            proc_root: "/proc".into(),
            pods_log_dir: "/var/log/pods".into(),
            containers_log_dir: "/var/log/containers".into(),
            named_dir: crate::kernel::netns::NAMED_DIR.into(),
            storage_roots: vec!["/var/lib/containers/storage".into()],
            docker_root: "/var/lib/docker".into(),
        }
    }
}

/// Environment variables overriding [`IdentityPaths`] for the CLI (the agent has config keys).
pub const ENV: [&str; 6] = [
    "TWRESET_PROC_ROOT",
    "TWRESET_PODS_LOG_DIR",
    "TWRESET_CONTAINERS_LOG_DIR",
    "TWRESET_NETNS_DIR",
    "TWRESET_CONTAINERS_STORAGE",
    "TWRESET_DOCKER_ROOT",
];

impl IdentityPaths {
    /// The defaults, each overridden by its variable in [`ENV`] when set and not empty
    /// (`TWRESET_CONTAINERS_STORAGE` takes `:`-separated roots).
    pub fn from_env() -> Self {
        let mut p = Self::default();
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let slots: [&mut PathBuf; 4] =
            [&mut p.proc_root, &mut p.pods_log_dir, &mut p.containers_log_dir, &mut p.named_dir];
        for (slot, key) in slots.into_iter().zip(&ENV[..4]) {
            if let Some(v) = var(key) {
                *slot = v;
            }
        }
        if let Some(v) = std::env::var(ENV[4]).ok().filter(|v| !v.is_empty()) {
            p.storage_roots = v.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect();
        }
        if let Some(v) = var(ENV[5]) {
            p.docker_root = v;
        }
        p
    }
}

/// A container: runtime, full ID, and its name where the runtime's state or the kubelet says.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Container {
    pub runtime: Runtime,
    pub id: String,
    pub name: Option<String>,
}

impl Container {
    /// Its name, else its short (12-digit) ID.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id[..12.min(self.id.len())])
    }
}

/// What a namespace is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The resolver's own namespace (the agent runs with the host network).
    Host,
    /// An `ip netns` name, and nothing more specific.
    Named {
        name: String,
    },
    Container(Container),
    /// A pod's namespace, shared by its containers (sorted by ID; the sandbox's included).
    Pod {
        namespace: Option<String>,
        name: Option<String>,
        uid: String,
        containers: Vec<Container>,
    },
    Unknown,
}

/// The identity of one network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsIdentity {
    pub cookie: u64,
    pub kind: Kind,
}

impl NetnsIdentity {
    pub fn unknown(cookie: u64) -> Self {
        Self { cookie, kind: Kind::Unknown }
    }

    /// The stable label (metrics `netns`, rules' `netns`): `host`, the ip-netns name,
    /// `pod:<namespace>/<name>` (`pod:<uid>` before the kubelet's directory appears),
    /// `container:<name>`, else `netns:<cookie>`.
    pub fn label(&self) -> String {
        match &self.kind {
            Kind::Host => "host".into(),
            Kind::Named { name } => name.clone(),
            Kind::Container(c) => format!("container:{}", c.display_name()),
            Kind::Pod { namespace: Some(ns), name: Some(name), .. } => format!("pod:{ns}/{name}"),
            Kind::Pod { uid, .. } => format!("pod:{uid}"),
            Kind::Unknown => format!("netns:{}", self.cookie),
        }
    }

    /// Host or unknown: nothing to add to output beyond the cookie.
    pub fn is_plain(&self) -> bool {
        matches!(self.kind, Kind::Host | Kind::Unknown)
    }

    /// The container: a container's namespace's, or a pod's only named container (the sandbox
    /// has no name in the kubelet's logs), or its only container.
    pub fn container(&self) -> Option<&Container> {
        match &self.kind {
            Kind::Container(c) => Some(c),
            Kind::Pod { containers, .. } => {
                let mut named = containers.iter().filter(|c| c.name.is_some());
                match (named.next(), named.next(), containers.as_slice()) {
                    (Some(c), None, _) => Some(c),
                    (None, _, [only]) => Some(only),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// `netns` (the label) and, where known, `pod_namespace`, `pod`, `pod_uid`, `container`,
    /// `container_id`, `runtime`: the fields JSON output adds for a namespace.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("netns", self.label())];
        if let Kind::Pod { namespace, name, uid, .. } = &self.kind {
            out.extend(namespace.clone().map(|v| ("pod_namespace", v)));
            out.extend(name.clone().map(|v| ("pod", v)));
            out.push(("pod_uid", uid.clone()));
        }
        if let Some(c) = self.container() {
            out.push(("container", c.display_name().to_owned()));
            out.push(("container_id", c.id.clone()));
            out.push(("runtime", c.runtime.name().to_owned()));
        }
        out
    }

    /// [`NetnsIdentity::fields`] into a JSON object.
    pub fn insert_into(&self, o: &mut Map<String, Value>) {
        for (k, v) in self.fields() {
            o.insert(k.into(), Value::String(v));
        }
    }

    /// [`NetnsIdentity::fields`] as a JSON fragment to splice into an object: `,"netns":"..",...`.
    pub fn json_fragment(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in self.fields() {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(Value::String(v).to_string().as_bytes());
        }
        out
    }

    /// Does `--container sel` (a name, or an ID prefix of at least 12 hex digits) pick this one?
    pub fn matches_container(&self, sel: &str) -> bool {
        let by_id = sel.len() >= 12 && sel.bytes().all(|b| b.is_ascii_hexdigit());
        self.containers().iter().any(|c| c.name.as_deref() == Some(sel) || (by_id && c.id.starts_with(sel)))
    }

    /// Does `--pod namespace/name` pick this one?
    pub fn matches_pod(&self, ns: &str, pod: &str) -> bool {
        matches!(&self.kind, Kind::Pod { namespace: Some(n), name: Some(p), .. } if n == ns && p == pod)
    }

    /// Every container known in this namespace.
    pub fn containers(&self) -> &[Container] {
        match &self.kind {
            Kind::Container(c) => std::slice::from_ref(c),
            Kind::Pod { containers, .. } => containers,
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests;
