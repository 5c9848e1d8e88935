//! Which namespaces a request covers, seen from the agent: by default the caller's own (its
//! `/proc/PID/ns/net`, PID from `SO_PEERCRED`), so `curl` and the CLI get what a command run
//! where they run would print. Blocking (namespace threads): call on the blocking pool.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::{
    api::{kill_req::Namespaces, query::Scope},
    kernel::netns::{self, Netns, NetnsError},
    scope::NetnsScope,
};

#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("the caller's network namespace is unknown (no pid in its credentials)")]
    NoPid,
    /// The command line's message for the same path (`--netns PATH`).
    #[error("{0}")]
    Netns(String),
    #[error("the caller's network namespace")]
    Caller(#[source] NetnsError),
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// The caller's namespace: None when it is the agent's own (no thread, no setns needed).
fn caller(pid: Option<u32>) -> Result<Option<Netns>, ScopeError> {
    let path = PathBuf::from(format!("/proc/{}/ns/net", pid.ok_or(ScopeError::NoPid)?));
    if same_file(&path, Path::new("/proc/self/ns/net")) {
        return Ok(None);
    }
    Netns::open(&path).map(Some).map_err(ScopeError::Caller)
}

fn cookie(ns: Option<&Netns>) -> Result<u64, NetnsError> {
    match ns {
        None => netns::current_cookie(),
        Some(ns) => ns.cookie(),
    }
}

/// Cookies a `GET /v1/tw` covers; None: every namespace.
pub fn tw_cookies(scope: &Scope, pid: Option<u32>) -> Result<Option<Vec<u64>>, ScopeError> {
    match scope {
        Scope::All => Ok(None),
        Scope::Caller => cookie(caller(pid)?.as_ref()).map(|c| Some(vec![c])).map_err(ScopeError::Caller),
        Scope::Selected { pods, containers } => {
            let pods = pods
                .iter()
                .map(|p| {
                    crate::kernel::identity::parse::pod_selector(p).map_err(|e| ScopeError::Netns(format!("pod: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            match crate::scope::select(&[], false, &pods, containers).map_err(ScopeError::Netns)? {
                NetnsScope::Paths(list) => list
                    .iter()
                    .map(|ns| ns.cookie().map_err(|e| ScopeError::Netns(format!("{e:#}"))))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                _ => Ok(Some(Vec::new())),
            }
        }
        Scope::Paths(paths) => paths
            .iter()
            .map(|p| {
                Netns::open(Path::new(p)).and_then(|ns| ns.cookie()).map_err(|e| ScopeError::Netns(format!("{e:#}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
    }
}

/// Namespaces a `POST /v1/kill` runs in: by default the caller's (the agent's own is
/// [`NetnsScope::Current`], as for a direct run there).
pub fn kill_scope(ns: &Namespaces, pid: Option<u32>) -> Result<NetnsScope, ScopeError> {
    if ns.all || !ns.paths.is_empty() || !ns.pods.is_empty() || !ns.containers.is_empty() {
        return crate::scope::select(&ns.paths, ns.all, &ns.pods, &ns.containers).map_err(ScopeError::Netns);
    }
    Ok(match caller(pid)? {
        None => NetnsScope::Current,
        Some(ns) => NetnsScope::Paths(vec![ns]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_needs_no_thread() {
        let me = Some(std::process::id());
        let want = netns::current_cookie().unwrap();
        assert_eq!(tw_cookies(&Scope::Caller, me).unwrap(), Some(vec![want]));
        assert_eq!(tw_cookies(&Scope::All, None).unwrap(), None);
        assert!(matches!(kill_scope(&Namespaces::default(), me).unwrap(), NetnsScope::Current));
        assert!(matches!(tw_cookies(&Scope::Caller, None), Err(ScopeError::NoPid)));
        let e = tw_cookies(&Scope::Paths(vec!["/nonexistent/ns".into()]), me).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ns"), "{e}");
    }
}
