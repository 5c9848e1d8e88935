//! Who may talk to the agent: root, the configured group (read and write) and the read-only
//! group (GET only), decided from a connection's `SO_PEERCRED` before any byte of it is read.

use std::ffi::CString;

use nix::unistd::{Gid, Group, Uid, User};

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("group {name:?} does not exist")]
    NoSuchGroup { name: String },
    #[error("looking up group {name:?}")]
    Lookup {
        name: String,
        #[source]
        source: nix::Error,
    },
}

/// What a connection may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

/// A connection's peer, from `SO_PEERCRED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<u32>,
}

/// `name` or a numeric gid; "" means none.
pub fn resolve_group(name: Option<&str>) -> Result<Option<Gid>, PeerError> {
    let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) else { return Ok(None) };
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(Some(Gid::from_raw(gid)));
    }
    match Group::from_name(name) {
        Ok(Some(g)) => Ok(Some(g.gid)),
        Ok(None) => Err(PeerError::NoSuchGroup { name: name.to_owned() }),
        Err(source) => Err(PeerError::Lookup { name: name.to_owned(), source }),
    }
}

/// The access rule, with its groups resolved once at start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub group: Option<Gid>,
    pub readonly_group: Option<Gid>,
}

impl Policy {
    pub fn new(group: Option<&str>, readonly_group: Option<&str>) -> Result<Self, PeerError> {
        Ok(Self { group: resolve_group(group)?, readonly_group: resolve_group(readonly_group)? })
    }

    /// None: refuse the connection.
    pub fn check(&self, peer: &Peer) -> Option<Access> {
        if peer.uid == 0 {
            return Some(Access::ReadWrite);
        }
        if self.group.is_none() && self.readonly_group.is_none() {
            return None;
        }
        let groups = groups_of(peer);
        let member = |g: Option<Gid>| g.is_some_and(|g| groups.contains(&g.as_raw()));
        if member(self.group) {
            Some(Access::ReadWrite)
        } else if member(self.readonly_group) {
            Some(Access::ReadOnly)
        } else {
            None
        }
    }
}

/// The peer's primary gid and supplementary groups: those its process holds right now
/// (`/proc/PID/status`, when that process still has the peer's uid), else the user database's.
pub fn groups_of(peer: &Peer) -> Vec<u32> {
    let mut groups = vec![peer.gid];
    let from_proc = peer
        .pid
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .and_then(|status| proc_groups(&status, peer.uid));
    match from_proc {
        Some(g) => groups.extend(g),
        None => groups.extend(user_groups(peer.uid, peer.gid)),
    }
    groups
}

/// `Groups:` of a `/proc/PID/status`, if its real and effective uid are `uid` (the pid was not
/// reused by another user's process).
pub fn proc_groups(status: &str, uid: u32) -> Option<Vec<u32>> {
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::split_whitespace);
    let uids: Vec<u32> = field("Uid:")?.filter_map(|u| u.parse().ok()).collect();
    if uids.len() < 2 || uids[0] != uid || uids[1] != uid {
        return None;
    }
    Some(field("Groups:")?.filter_map(|g| g.parse().ok()).collect())
}

fn user_groups(uid: u32, gid: u32) -> Vec<u32> {
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else { return Vec::new() };
    let Ok(name) = CString::new(user.name) else { return Vec::new() };
    nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
        .map(|g| g.into_iter().map(Gid::as_raw).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str =
        "Name:\tcurl\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\t4 27 998 \n";

    #[test]
    fn groups_from_status() {
        assert_eq!(proc_groups(STATUS, 1000), Some(vec![4, 27, 998]));
        assert_eq!(proc_groups(STATUS, 1001), None, "another user's process");
        assert_eq!(proc_groups("Uid:\t5\t5\t5\t5\nGroups:\n", 5), Some(vec![]));
    }

    #[test]
    fn policy() {
        let p = Policy { group: Some(Gid::from_raw(998)), readonly_group: Some(Gid::from_raw(999)) };
        let me = |uid, gid| Peer { uid, gid, pid: None };
        assert_eq!(p.check(&me(0, 0)), Some(Access::ReadWrite));
        assert_eq!(p.check(&me(4242, 998)), Some(Access::ReadWrite), "primary group");
        assert_eq!(p.check(&me(4242, 999)), Some(Access::ReadOnly));
        assert_eq!(p.check(&me(4242, 4242)), None);
        assert_eq!(Policy::default().check(&me(4242, 998)), None, "root only");
        let mine = Peer { uid: nix::unistd::getuid().as_raw(), gid: 12345, pid: Some(std::process::id()) };
        assert!(groups_of(&mine).contains(&12345));
    }

    #[test]
    fn group_names() {
        assert_eq!(resolve_group(Some("")).unwrap(), None);
        assert_eq!(resolve_group(None).unwrap(), None);
        assert_eq!(resolve_group(Some("4321")).unwrap(), Some(Gid::from_raw(4321)));
        assert_eq!(resolve_group(Some("root")).unwrap(), Some(Gid::from_raw(0)));
        assert!(resolve_group(Some("no-such-group-twreset")).unwrap_err().to_string().contains("does not exist"));
    }
}
