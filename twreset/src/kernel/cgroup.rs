//! Where the cgroup v2 hierarchy is mounted: the `sock_ops` program attaches at its root, which
//! covers every process (on a hybrid host too, where it sits beside the v1 controllers).

use std::path::PathBuf;

/// The first cgroup2 mount point in `mounts` (the text of /proc/self/mounts).
pub fn v2_root_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_src, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        // Spaces and other bytes in the path are octal escapes (`\040`).
        (fstype == "cgroup2").then(|| PathBuf::from(unescape(dir)))
    })
}

/// The cgroup v2 root of this mount namespace, if mounted.
pub fn v2_root() -> Option<PathBuf> {
    v2_root_in(&std::fs::read_to_string("/proc/self/mounts").ok()?)
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v2_mount_on_hybrid_and_unified_hosts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(v2_root_in(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "proc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(v2_root_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(v2_root_in("cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"), None);
        assert_eq!(v2_root_in("none /mnt/my\\040cg cgroup2 rw 0 0\n"), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(v2_root_in(""), None);
    }

    /// This machine mounts cgroup v2 (CI runs the same kind): the `sock_ops` source needs it.
    #[test]
    fn this_host_has_a_v2_root() {
        let root = v2_root();
        if std::env::var("CI").is_ok() {
            assert!(root.as_ref().is_some_and(|r| r.join("cgroup.procs").exists()), "{root:?}");
        }
    }
}
