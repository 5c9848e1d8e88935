//! One look at the host: which processes and `ip netns` names hold each network namespace (by
//! nsfs inode), what their cgroups say, and the names the kubelet and the runtimes give.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use super::{
    Container, IdentityPaths,
    parse::{self, CgroupIds, Runtime},
};

/// At most this many processes of one namespace have their cgroup read.
const CGROUPS_PER_NS: usize = 256;

/// The holders of one namespace seen in a scan.
#[derive(Debug, Default)]
pub struct Holder {
    /// A path that opens it: a process's `ns/net`, else its `ip netns` file.
    pub path: PathBuf,
    /// Processes inside, lowest PID first.
    pub pids: Vec<u32>,
    /// What their cgroups say (empty ones left out), in PID order.
    pub cgroups: Vec<CgroupIds>,
    pub named: Option<String>,
}

/// Every namespace other than `own_ino` that a process or an `ip netns` name holds, by inode.
pub fn holders(paths: &IdentityPaths, own_ino: u64) -> BTreeMap<u64, Holder> {
    let mut out: BTreeMap<u64, Holder> = BTreeMap::new();
    let mut pids: Vec<u32> = std::fs::read_dir(&paths.proc_root)
        .map(|d| d.filter_map(Result::ok).filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    pids.sort_unstable();
    for pid in pids {
        let dir = paths.proc_root.join(pid.to_string());
        let link = dir.join("ns/net");
        let Some(ino) = std::fs::read_link(&link).ok().and_then(|t| parse::ns_link(&t.to_string_lossy())) else {
            continue; // gone, a kernel thread, or not ours to read
        };
        if ino == own_ino {
            continue;
        }
        let h = out.entry(ino).or_default();
        if h.pids.is_empty() {
            h.path = link;
        }
        h.pids.push(pid);
        if h.pids.len() <= CGROUPS_PER_NS
            && let Ok(text) = std::fs::read_to_string(dir.join("cgroup"))
        {
            let ids = parse::proc_cgroup(&text);
            if !ids.is_empty() {
                h.cgroups.push(ids);
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(&paths.named_dir) {
        let mut named: Vec<_> = dir.filter_map(Result::ok).map(|e| e.path()).collect();
        named.sort();
        for p in named {
            // stat follows to the nsfs inode a bind mount puts there (the bare file has another).
            let Some(ino) = nsfs_ino(&p) else { continue };
            if ino == own_ino {
                continue;
            }
            let h = out.entry(ino).or_default();
            if h.path.as_os_str().is_empty() {
                h.path = p.clone();
            }
            h.named.get_or_insert_with(|| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        }
    }
    out
}

/// The inode of the namespace at `path`, if it is an nsfs file (a mounted namespace).
pub fn nsfs_ino(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let st = nix::sys::statfs::statfs(path).ok()?;
    (st.filesystem_type().0 as i64 == NSFS_MAGIC).then(|| std::fs::metadata(path).ok().map(|m| m.ino()))?
}

/// Pods by UID from the kubelet's log directories.
pub fn pods(dir: &Path) -> HashMap<String, (String, String)> {
    let Ok(rd) = std::fs::read_dir(dir) else { return HashMap::new() };
    rd.filter_map(Result::ok)
        .filter_map(|e| parse::pod_log_dir(e.file_name().to_str()?))
        .map(|(ns, name, uid)| (uid, (ns, name)))
        .collect()
}

/// Container names by ID, read from the runtimes' state and the kubelet's log links, on demand:
/// each source is read at most once per scan, and only when an ID is not yet known.
#[derive(Debug, Default)]
pub struct Names {
    known: HashMap<String, String>,
    read_all: bool,
}

impl Names {
    /// Start a scan: sources are read again the first time an unknown ID is asked for.
    pub fn rescan(&mut self) {
        self.read_all = false;
    }

    pub fn get(&mut self, paths: &IdentityPaths, runtime: Runtime, id: &str) -> Option<String> {
        if let Some(n) = self.known.get(id) {
            return Some(n.clone());
        }
        if runtime == Runtime::Docker || runtime == Runtime::Cri {
            let file = paths.docker_root.join("containers").join(id).join("config.v2.json");
            if let Some(n) = std::fs::read_to_string(file).ok().and_then(|t| parse::docker_config_name(&t)) {
                self.known.insert(id.to_owned(), n.clone());
                return Some(n);
            }
        }
        if !self.read_all {
            self.read_all = true;
            self.read_sources(paths);
        }
        self.known.get(id).cloned()
    }

    /// Read every source anew (what was read before is dropped: names of containers long gone
    /// do not pile up in a long-running agent; resolved identities keep their own copy).
    fn read_sources(&mut self, paths: &IdentityPaths) {
        let mut known = HashMap::new();
        // The kubelet's names are read last and win: CRI-O's storage name is `k8s_<container>_...`.
        for root in &paths.storage_roots {
            let Ok(rd) = std::fs::read_dir(root) else { continue };
            for e in rd.filter_map(Result::ok) {
                if e.file_name().to_string_lossy().ends_with("-containers")
                    && let Ok(text) = std::fs::read_to_string(e.path().join("containers.json"))
                {
                    known.extend(parse::storage_containers(&text));
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(&paths.containers_log_dir) {
            let links = rd.filter_map(Result::ok).filter_map(|e| parse::container_log_name(e.file_name().to_str()?));
            known.extend(links.map(|(name, id)| (id, name)));
        }
        self.known = known;
    }

    /// The containers of `cgroups`, each once, sorted by ID, named where known.
    pub fn containers(&mut self, paths: &IdentityPaths, cgroups: &[CgroupIds]) -> Vec<Container> {
        let mut ids: Vec<(Runtime, &str)> =
            cgroups.iter().filter_map(|c| c.container.as_ref()).map(|(r, id)| (*r, id.as_str())).collect();
        ids.sort_by_key(|(_, id)| *id);
        ids.dedup_by_key(|(_, id)| *id);
        ids.into_iter()
            .map(|(runtime, id)| Container { runtime, id: id.into(), name: self.get(paths, runtime, id) })
            .collect()
    }
}
