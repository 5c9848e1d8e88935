//! [`Resolver`]: namespace identities by cookie, rescanned on [`Resolver::refresh`], each kept
//! until its namespace is gone (the caller says so with [`Resolver::forget`]).

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::{Container, IdentityError, IdentityPaths, Kind, NetnsIdentity, scan};
use crate::kernel::netns::{self, Netns, NetnsError};

/// The one place a namespace's key is read: the cookie `kernel::netns` gives (the key the eBPF
/// side and every table use).
fn namespace_cookie(path: &Path) -> Result<u64, NetnsError> {
    Netns::open(path)?.cookie()
}

#[derive(Debug)]
struct Entry {
    identity: NetnsIdentity,
    /// A path that opened the namespace in the last scan; None when none held it then.
    path: Option<PathBuf>,
}

/// What one [`Resolver::refresh`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefreshStats {
    /// Namespaces held by a process or an `ip netns` name (the own one not counted).
    pub held: usize,
    /// Identities added or changed.
    pub changed: usize,
}

/// Identities of the host's network namespaces, keyed by namespace cookie.
///
/// Keeping rule: an identity stays after the processes that revealed it are gone (a pod's
/// TIME_WAIT sockets outlive it by up to 60 s, and a namespace held only by a bind mount or an
/// open file has no process to read). A scan never downgrades it: a pod stays a pod when later
/// scans find only an `ip netns` name (CNI's) or nothing. It is dropped only by
/// [`Resolver::forget`], which the owner calls when the namespace is gone: a `netns_gone` kill
/// event, or a namespace that left its own scan and has no sockets left in its table.
#[derive(Debug)]
pub struct Resolver {
    paths: IdentityPaths,
    own_cookie: u64,
    own_ino: u64,
    entries: HashMap<u64, Entry>,
    names: scan::Names,
    generation: u64,
}

fn rank(k: &Kind) -> u8 {
    match k {
        Kind::Unknown => 0,
        Kind::Named { .. } => 1,
        Kind::Container(_) => 2,
        Kind::Pod { .. } => 3,
        Kind::Host => 4,
    }
}

impl Resolver {
    /// A resolver whose `host` is the calling thread's own namespace. Nothing is scanned yet.
    pub fn new(paths: IdentityPaths) -> Result<Self, IdentityError> {
        let own_cookie = netns::current_cookie().map_err(IdentityError::Own)?;
        let own = Path::new("/proc/thread-self/ns/net");
        let own_ino = std::fs::metadata(own).map_err(|source| IdentityError::Read { path: own.into(), source })?.ino();
        let host = Entry { identity: NetnsIdentity { cookie: own_cookie, kind: Kind::Host }, path: None };
        Ok(Self {
            paths,
            own_cookie,
            own_ino,
            entries: HashMap::from([(own_cookie, host)]),
            names: scan::Names::default(),
            generation: 0,
        })
    }

    /// [`Resolver::new`] with [`IdentityPaths::from_env`], refreshed once.
    pub fn from_env() -> Result<Self, IdentityError> {
        let mut r = Self::new(IdentityPaths::from_env())?;
        r.refresh();
        Ok(r)
    }

    /// Rescan: every namespace a process or an `ip netns` name holds gets its identity (new or
    /// better than the kept one); kept identities of namespaces no longer held stay.
    pub fn refresh(&mut self) -> RefreshStats {
        self.names.rescan();
        let pods = scan::pods(&self.paths.pods_log_dir);
        let holders = scan::holders(&self.paths, self.own_ino);
        let mut stats = RefreshStats { held: holders.len(), changed: 0 };
        let mut seen = HashSet::new();
        for h in holders.values() {
            // Gone between the listing and now, or not enterable: nothing to key it by.
            let Ok(cookie) = namespace_cookie(&h.path) else { continue };
            if cookie == self.own_cookie {
                continue;
            }
            seen.insert(cookie);
            let found = NetnsIdentity { cookie, kind: self.identify(h, &pods) };
            let entry = match self.entries.entry(cookie) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Entry { identity: found, path: Some(h.path.clone()) });
                    stats.changed += 1;
                    continue;
                }
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            };
            entry.path = Some(h.path.clone());
            let kept = &entry.identity.kind;
            let better = match (&found.kind, kept) {
                // Same pod: names found earlier stay if the kubelet's directory went first.
                (Kind::Pod { uid, namespace: None, .. }, Kind::Pod { uid: u, namespace: Some(_), .. }) => uid != u,
                (f, k) => rank(f) >= rank(k),
            };
            if better && entry.identity != found {
                entry.identity = found;
                stats.changed += 1;
            }
        }
        for (cookie, e) in &mut self.entries {
            if !seen.contains(cookie) {
                e.path = None;
            }
        }
        if stats.changed > 0 {
            self.generation += 1;
        }
        stats
    }

    fn identify(&mut self, h: &scan::Holder, pods: &HashMap<String, (String, String)>) -> Kind {
        let containers = self.names.containers(&self.paths, &h.cgroups);
        if let Some(uid) = h.cgroups.iter().find_map(|c| c.pod_uid.clone()) {
            let (namespace, name) = pods.get(&uid).cloned().unzip();
            return Kind::Pod { namespace, name, uid, containers };
        }
        // Several containers sharing a namespace: the first process's (the one that made it).
        let first = h.cgroups.iter().find_map(|c| c.container.as_ref().map(|(_, id)| id));
        if let Some(c) = first.and_then(|id| containers.iter().find(|c| &c.id == id)) {
            return Kind::Container(Container::clone(c));
        }
        match &h.named {
            Some(name) => Kind::Named { name: name.clone() },
            None => Kind::Unknown,
        }
    }

    /// The identity of a namespace, if it was ever resolved and not forgotten.
    pub fn get(&self, cookie: u64) -> Option<&NetnsIdentity> {
        self.entries.get(&cookie).map(|e| &e.identity)
    }

    /// [`NetnsIdentity::label`] of a namespace, `netns:<cookie>` when unknown.
    pub fn label(&self, cookie: u64) -> String {
        self.get(cookie).map_or_else(|| NetnsIdentity::unknown(cookie).label(), NetnsIdentity::label)
    }

    /// Every identity kept, the host's included.
    pub fn identities(&self) -> impl Iterator<Item = &NetnsIdentity> {
        self.entries.values().map(|e| &e.identity)
    }

    /// A path that opened the namespace in the last scan (`/proc/PID/ns/net`, `/run/netns/NAME`).
    pub fn path(&self, cookie: u64) -> Option<&Path> {
        self.entries.get(&cookie)?.path.as_deref()
    }

    /// Drop a namespace's identity (it is gone). The host's is never dropped.
    pub fn forget(&mut self, cookie: u64) -> bool {
        if cookie == self.own_cookie {
            return false;
        }
        let gone = self.entries.remove(&cookie).is_some();
        self.generation += u64::from(gone);
        gone
    }

    /// Forget every namespace the last scan did not find held (no process, no `ip netns` name)
    /// unless `keep` says otherwise (e.g. its table still has sockets): the keeping rule for an
    /// owner that learns of deleted namespaces only by scanning. Returns how many were dropped.
    pub fn forget_unheld(&mut self, keep: impl Fn(u64) -> bool) -> usize {
        let own = self.own_cookie;
        let before = self.entries.len();
        self.entries.retain(|c, e| *c == own || e.path.is_some() || keep(*c));
        let dropped = before - self.entries.len();
        self.generation += u64::from(dropped > 0);
        dropped
    }

    /// The own (`host`) namespace's cookie.
    pub fn own_cookie(&self) -> u64 {
        self.own_cookie
    }

    /// Changes whenever an identity is added, changed or forgotten: a key for derived caches.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn paths(&self) -> &IdentityPaths {
        &self.paths
    }

    /// Cookies of the namespaces `--pod NS/NAME` and `--container NAME|ID` select, sorted; an
    /// unknown pod or container is an error naming it.
    pub fn select(&self, pods: &[(String, String)], containers: &[String]) -> Result<Vec<u64>, IdentityError> {
        let mut out = Vec::new();
        for (ns, name) in pods {
            let found: Vec<u64> = self.identities().filter(|i| i.matches_pod(ns, name)).map(|i| i.cookie).collect();
            if found.is_empty() {
                let (proc, logs) = (self.paths.proc_root.display(), self.paths.pods_log_dir.display());
                return Err(IdentityError::NoPod(format!("{ns}/{name}"), proc.to_string(), logs.to_string()));
            }
            out.extend(found);
        }
        for sel in containers {
            let found: Vec<u64> = self.identities().filter(|i| i.matches_container(sel)).map(|i| i.cookie).collect();
            if found.is_empty() {
                return Err(IdentityError::NoContainer(sel.clone()));
            }
            out.extend(found);
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// [`Resolver::select`], each namespace opened through its [`Resolver::path`].
    pub fn open_selected(&self, pods: &[(String, String)], containers: &[String]) -> Result<Vec<Netns>, IdentityError> {
        self.select(pods, containers)?
            .into_iter()
            .map(|cookie| {
                let unreachable = || IdentityError::Unreachable(self.label(cookie));
                let path = self.path(cookie).ok_or_else(unreachable)?;
                let ns = Netns::open(path).map_err(|_| unreachable())?;
                // The path may have changed hands since the scan (a PID reused).
                (namespace_cookie(path).ok() == Some(cookie)).then_some(ns).ok_or_else(unreachable)
            })
            .collect()
    }
}
