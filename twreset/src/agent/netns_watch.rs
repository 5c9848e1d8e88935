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
    kernel::netns::{self, NAMED_DIR, Netns},
    live::{monotonic_ns, read_port_range},
    sock::DiagSocket,
    table::PortRange,
};

/// What is known of a namespace's identity. The identity module (pods, containers) extends this;
/// [`netns_label`] is the one place that turns it into the `netns` label.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NsIdentity {
    pub cookie: u64,
    /// The agent's own namespace.
    pub host: bool,
    /// Its `ip netns` name, if it has one.
    pub ip_netns: Option<String>,
}

/// The `netns` label of the metrics: `host`, the `ip netns` name, else `netns:<cookie>`.
pub fn netns_label(id: &NsIdentity) -> String {
    match (&id.ip_netns, id.host) {
        (_, true) => "host".into(),
        (Some(name), false) => name.clone(),
        (None, false) => format!("netns:{}", id.cookie),
    }
}

/// A namespace found by a scan.
#[derive(Debug)]
pub struct Found {
    pub identity: NsIdentity,
    /// Its `ip_local_port_range` (None: unreadable, the default applies).
    pub range: Option<PortRange>,
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

/// The scanner's memory: namespaces by nsfs inode.
pub struct Scanner {
    proc_root: PathBuf,
    host_cookie: u64,
    known: HashMap<(u64, u64), Known>,
    first: bool,
}

impl Scanner {
    pub fn new(proc_root: PathBuf) -> Result<Self, netns::NetnsError> {
        Ok(Self { proc_root, host_cookie: netns::current_cookie()?, known: HashMap::new(), first: true })
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
        let now = self.reachable();
        let mut changes = Vec::new();
        self.known.retain(|id, k| {
            let keep = now.contains_key(id);
            if !keep {
                changes.push(Change::Gone { cookie: k.identity.cookie });
            }
            keep
        });
        for (id, (path, name)) in now {
            if let Some(k) = self.known.get_mut(&id) {
                if k.identity.ip_netns != name {
                    k.identity.ip_netns = name;
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
                let range = read_port_range().ok();
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
        let identity = NsIdentity { cookie, host: cookie == self.host_cookie, ip_netns };
        Some(Found { identity, range, dump })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let id = |cookie, host, name: Option<&str>| NsIdentity { cookie, host, ip_netns: name.map(str::to_owned) };
        assert_eq!(netns_label(&id(1, true, None)), "host");
        assert_eq!(netns_label(&id(1, true, Some("x"))), "host");
        assert_eq!(netns_label(&id(7, false, Some("blue"))), "blue");
        assert_eq!(netns_label(&id(4099, false, None)), "netns:4099");
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
