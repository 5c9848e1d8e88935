//! Which namespaces a kill covers: the current one, given paths, or every namespace on the host
//! (`/run/netns/*` and `/proc/*/ns/net`, each namespace once).

use std::{collections::HashSet, os::unix::fs::MetadataExt, path::Path};

use crate::{
    cli::NetnsScope,
    kernel::netns::{NAMED_DIR, Netns},
};

/// A namespace to run in; `netns: None` is the caller's own (no thread, no setns).
#[derive(Debug)]
pub struct Target {
    pub label: String,
    pub netns: Option<Netns>,
}

fn label_of(path: &Path) -> String {
    match path.strip_prefix(NAMED_DIR) {
        Ok(name) => name.display().to_string(),
        Err(_) => path.display().to_string(),
    }
}

pub fn resolve(scope: NetnsScope) -> Vec<Target> {
    match scope {
        NetnsScope::Current => vec![Target { label: "current".into(), netns: None }],
        NetnsScope::Paths(list) => {
            list.into_iter().map(|n| Target { label: label_of(&n.path), netns: Some(n) }).collect()
        }
        NetnsScope::All => all(),
    }
}

/// Every reachable network namespace, named ones first; one entry per namespace (nsfs inode).
/// Namespaces that vanish or cannot be opened while we look are skipped.
pub fn all() -> Vec<Target> {
    all_in(Path::new("/proc"))
}

/// [`all`], with processes' namespaces looked for under `proc_root` (the host's `/proc` mounted
/// elsewhere in a container).
pub fn all_in(proc_root: &Path) -> Vec<Target> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut add = |path: &Path, label: String| {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            return;
        }
        if let Ok(ns) = Netns::open(path) {
            out.push(Target { label, netns: Some(ns) });
        }
    };
    if let Ok(dir) = std::fs::read_dir(NAMED_DIR) {
        let mut names: Vec<_> = dir.filter_map(Result::ok).map(|e| e.path()).collect();
        names.sort();
        for p in names {
            add(&p, label_of(&p));
        }
    }
    if let Ok(dir) = std::fs::read_dir(proc_root) {
        let mut pids: Vec<u32> =
            dir.filter_map(Result::ok).filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
        pids.sort_unstable();
        for pid in pids {
            add(&proc_root.join(pid.to_string()).join("ns/net"), format!("pid:{pid}"));
        }
    }
    out
}
