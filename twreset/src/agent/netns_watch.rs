//! Network namespaces come and go (containers): a scan of `/run/netns/*` and
//! `<proc_root>/*/ns/net` every `netns_scan` finds the new ones (their cookie, label, port range
//! and a sock_diag dump made inside them) and the deleted ones. Scans are blocking work: they
//! run on a blocking thread, never on the owner's.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::{
    diag,
    kernel::{
        identity::{IdentityPaths, Kind, Resolver},
        netns::{self, NAMED_DIR, Netns},
    },
    live::{monotonic_ns, read_port_space},
    ports::PortSpace,
    sock::DiagSocket,
};

/// What is known of a namespace's identity; [`netns_label`] is the one place that turns it into
/// the `netns` label.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NsIdentity {
    pub cookie: u64,
    /// The agent's own namespace.
    pub host: bool,
    /// Its `ip netns` name, if it has one.
    pub ip_netns: Option<String>,
    /// The pod or container it belongs to (`kernel::identity`): its label (`pod:NS/NAME`,
    /// `container:NAME`) and its fields (`pod_namespace`, `pod`, `container`, ...).
    pub owner: Option<(String, Vec<(String, String)>)>,
}

/// The `netns` label of the metrics: `host`, the pod or container (`pod:NS/NAME`,
/// `container:NAME`), the `ip netns` name, else `netns:<cookie>`.
pub fn netns_label(id: &NsIdentity) -> String {
    match (&id.owner, &id.ip_netns, id.host) {
        (_, _, true) => "host".into(),
        (Some((label, _)), _, false) => label.clone(),
        (None, Some(name), false) => name.clone(),
        (None, None, false) => format!("netns:{}", id.cookie),
    }
}

/// A namespace found by a scan.
#[derive(Debug)]
pub struct Found {
    pub identity: NsIdentity,
    /// Its ephemeral ports (None: unreadable, the default applies).
    pub range: Option<PortSpace>,
    /// Its sockets, dumped inside it, and when the dump started (CLOCK_MONOTONIC ns). None for
    /// the namespaces of the first scan, which the table's own seed covers.
    pub dump: Option<(u64, Vec<DiagSocket>)>,
}

/// What changed since the previous scan.
#[derive(Debug)]
pub enum Change {
    Added(Found),
    /// Its identity changed (e.g. `ip netns attach` named it).
    Renamed(NsIdentity),
    Gone {
        cookie: u64,
    },
}

struct Known {
    identity: NsIdentity,
}

/// The scanner's memory: namespaces by nsfs inode, and who they belong to.
pub struct Scanner {
    proc_root: PathBuf,
    host_cookie: u64,
    known: HashMap<(u64, u64), Known>,
    first: bool,
    /// Pods and containers (`None` when it cannot start: labels then stay plain).
    owners: Option<Resolver>,
}

impl Scanner {
    pub fn new(proc_root: PathBuf) -> Result<Self, netns::NetnsError> {
        Self::with_pods(proc_root, IdentityPaths::default().pods_log_dir)
    }

    /// With the kubelet's pod log directories at `pods_log_dir` (pod namespace and name).
    pub fn with_pods(proc_root: PathBuf, pods_log_dir: PathBuf) -> Result<Self, netns::NetnsError> {
        let paths = IdentityPaths { proc_root: proc_root.clone(), pods_log_dir, ..IdentityPaths::default() };
        let owners =
            Resolver::new(paths).inspect_err(|e| tracing::warn!("pods and containers will not be named: {e:#}")).ok();
        Ok(Self { proc_root, host_cookie: netns::current_cookie()?, known: HashMap::new(), first: true, owners })
    }

    /// The pod or container owning `cookie`, from the latest refresh.
    fn owner_of(&self, cookie: u64) -> Option<(String, Vec<(String, String)>)> {
        let id = self.owners.as_ref()?.get(cookie)?;
        let pod_or_container = matches!(id.kind, Kind::Pod { .. } | Kind::Container(_));
        pod_or_container.then(|| {
            let fields = id.fields().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            (id.label(), fields)
        })
    }

    /// Every namespace reachable now, by nsfs inode, with its path and `ip netns` name.
    fn reachable(&self) -> HashMap<(u64, u64), (PathBuf, Option<String>)> {
        let mut out = HashMap::new();
        let inode = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
        if let Ok(dir) = std::fs::read_dir(NAMED_DIR) {
            for e in dir.filter_map(Result::ok) {
                if let Some(id) = inode(&e.path()) {
                    out.insert(id, (e.path(), Some(e.file_name().to_string_lossy().into_owned())));
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir(&self.proc_root) {
            for e in dir.filter_map(Result::ok) {
                if !e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
                    continue;
                }
                let path = e.path().join("ns/net");
                if let Some(id) = inode(&path) {
                    out.entry(id).or_insert((path, None));
                }
            }
        }
        out
    }

    /// Look again (blocking: opens and enters each new namespace).
    pub fn scan(&mut self) -> Vec<Change> {
        let first = std::mem::take(&mut self.first);
        if let Some(r) = self.owners.as_mut() {
            r.refresh();
        }
        let now = self.reachable();
        let mut changes = Vec::new();
        let mut gone = Vec::new();
        self.known.retain(|id, k| {
            let keep = now.contains_key(id);
            if !keep {
                gone.push(k.identity.cookie);
                changes.push(Change::Gone { cookie: k.identity.cookie });
            }
            keep
        });
        // An owner is kept while the namespace lives (its sockets outlive the container).
        if let Some(r) = self.owners.as_mut() {
            gone.into_iter().for_each(|c| {
                r.forget(c);
            });
        }
        for (id, (path, name)) in now {
            let owner = self.known.get(&id).and_then(|k| self.owner_of(k.identity.cookie));
            if let Some(k) = self.known.get_mut(&id) {
                // A pod's owner, once known, stays until the namespace is gone.
                let owner = owner.or_else(|| k.identity.owner.clone());
                if k.identity.ip_netns != name || k.identity.owner != owner {
                    k.identity.ip_netns = name;
                    k.identity.owner = owner;
                    changes.push(Change::Renamed(k.identity.clone()));
                }
                continue;
            }
            // Gone meanwhile, or not ours to enter: looked at again next time.
            let Some(found) = self.open(&path, name, first) else { continue };
            self.known.insert(id, Known { identity: found.identity.clone() });
            changes.push(Change::Added(found));
        }
        changes
    }

    fn open(&self, path: &Path, ip_netns: Option<String>, first: bool) -> Option<Found> {
        let ns = Netns::open(path).ok()?;
        let (cookie, range, dump) = ns
            .run(|| {
                let cookie = netns::current_cookie().ok()?;
                let range = read_port_space().ok();
                let dump = (!first).then(|| {
                    let started = monotonic_ns();
                    let mut all = Vec::new();
                    // A namespace that cannot be dumped is left to the events and reconciles.
                    let _ = diag::dump_each(&[], |d| all.push(d.clone()));
                    (started, all)
                });
                Some((cookie, range, dump))
            })
            .ok()??;
        let identity = NsIdentity { cookie, host: cookie == self.host_cookie, ip_netns, owner: self.owner_of(cookie) };
        Some(Found { identity, range, dump })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let id = |cookie, host, name: Option<&str>| NsIdentity {
            cookie,
            host,
            ip_netns: name.map(str::to_owned),
            owner: None,
        };
        assert_eq!(netns_label(&id(1, true, None)), "host");
        assert_eq!(netns_label(&id(1, true, Some("x"))), "host");
        assert_eq!(netns_label(&id(7, false, Some("blue"))), "blue");
        assert_eq!(netns_label(&id(4099, false, None)), "netns:4099");
        // A pod or container names the namespace before its ip-netns name does.
        let pod = NsIdentity { owner: Some(("pod:web/api-0".into(), Vec::new())), ..id(9, false, Some("x")) };
        assert_eq!(netns_label(&pod), "pod:web/api-0");
        assert_eq!(netns_label(&NsIdentity { host: true, ..pod }), "host");
    }

    #[test]
    fn the_first_scan_finds_this_namespace_without_a_dump() {
        let mut s = Scanner::new("/proc".into()).unwrap();
        let changes = s.scan();
        let host = changes
            .iter()
            .find_map(|c| match c {
                Change::Added(f) if f.identity.host => Some(f),
                _ => None,
            })
            .expect("the host namespace is found");
        assert!(host.dump.is_none());
        assert!(host.range.is_some());
        // Nothing changed: nothing reported (processes come and go, namespaces of the test's
        // own host rarely do).
        assert!(s.scan().iter().all(|c| !matches!(c, Change::Added(f) if f.identity.host)));
    }
}
