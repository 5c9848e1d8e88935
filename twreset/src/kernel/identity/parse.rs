//! Pure parsers behind namespace identity: cgroup paths to container IDs and pod UIDs (Docker,
//! containerd, CRI-O, Podman; the kubelet's systemd and cgroupfs drivers), kubelet log
//! directory names, and the runtimes' own state files (names by container ID).

use std::collections::HashMap;

/// Which container runtime a cgroup path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Runtime {
    Docker,
    Containerd,
    Crio,
    Podman,
    /// A bare container ID under a kubelet cgroupfs pod (containerd, CRI-O or Docker alike).
    Cri,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::Crio => "cri-o",
            Self::Podman => "podman",
            Self::Cri => "cri",
        }
    }
}

/// What one cgroup path says about the process in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupIds {
    /// Kubernetes pod UID, dashed (`0b4c...-...`) or a static pod's hash, as the kubelet wrote it.
    pub pod_uid: Option<String>,
    /// The innermost container: runtime and 64-hex ID.
    pub container: Option<(Runtime, String)>,
}

impl CgroupIds {
    pub fn is_empty(&self) -> bool {
        self.pod_uid.is_none() && self.container.is_none()
    }
}

/// A full 64-character lowercase hex container ID.
pub fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A pod UID as it appears in a path: letters, digits and dashes (a static pod's is a hash).
fn is_uid(s: &str) -> bool {
    s.len() >= 8 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The ID in `<prefix><id><suffix>`, if that is what `seg` is.
fn wrapped<'a>(seg: &'a str, prefix: &str, suffix: &str) -> Option<&'a str> {
    seg.strip_prefix(prefix)?.strip_suffix(suffix).filter(|id| is_container_id(id))
}

/// The container a cgroup path segment names, given the segments before it.
fn container_of(seg: &str, prev: Option<&str>, kube: bool) -> Option<(Runtime, String)> {
    let scoped = [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::Crio),
        ("libpod-", Runtime::Podman),
    ];
    for (prefix, rt) in scoped {
        // `.scope` under systemd; podman's cgroupfs manager writes `libpod-<id>` bare.
        if let Some(id) = wrapped(seg, prefix, ".scope").or_else(|| wrapped(seg, prefix, "")) {
            return Some((rt, id.to_owned()));
        }
    }
    if is_container_id(seg) {
        let rt = match prev {
            Some("docker") => Runtime::Docker,
            Some("libpod_parent") => Runtime::Podman,
            _ if kube => Runtime::Cri,
            _ => return None,
        };
        return Some((rt, seg.to_owned()));
    }
    None
}

/// The pod UID a segment names under `kubepods`: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid with _ for ->.slice` (systemd).
fn pod_of(seg: &str) -> Option<String> {
    if let Some(uid) = seg.strip_prefix("pod").filter(|u| is_uid(u)) {
        return Some(uid.to_owned());
    }
    let stem = seg.strip_suffix(".slice")?;
    let uid = &stem[stem.rfind("-pod")? + 4..];
    stem.starts_with("kubepods").then(|| uid.replace('_', "-")).filter(|u| is_uid(u))
}

/// Container and pod named by one cgroup path (`/kubepods/burstable/pod<uid>/<id>`, ...).
/// `kubepods` may sit anywhere in the path (a nested or test hierarchy). A path that climbs with
/// `..` is seen from inside a cgroup namespace (an agent in a pod reads its host's `/proc`): the
/// ancestors, `kubepods` among them, are hidden, so its `pod<uid>` segments count without it.
pub fn cgroup_path(path: &str) -> CgroupIds {
    let mut ids = CgroupIds::default();
    let mut kube = false;
    let mut prev = None;
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        if seg == ".." || seg == "kubepods" || (seg.starts_with("kubepods") && seg.ends_with(".slice")) {
            kube = true;
        }
        if kube && let Some(uid) = pod_of(seg) {
            ids.pod_uid = Some(uid);
        }
        if let Some(c) = container_of(seg, prev, kube) {
            ids.container = Some(c);
        }
        prev = Some(seg);
    }
    ids
}

/// The most telling path of a `/proc/PID/cgroup` text (`ID:CONTROLLERS:PATH` lines): one naming
/// a pod beats one naming only a container, which beats none. On a hybrid host the v2 line
/// (`0::`) and the v1 lines may differ; each is looked at.
pub fn proc_cgroup(text: &str) -> CgroupIds {
    let score = |c: &CgroupIds| (c.pod_uid.is_some() as u8) * 2 + c.container.is_some() as u8;
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .map(cgroup_path)
        .fold(CgroupIds::default(), |best, c| if score(&c) > score(&best) { c } else { best })
}

/// A kubelet pod log directory name, `<namespace>_<name>_<uid>`, as (namespace, name, uid).
/// Namespaces and pod names are DNS names, never containing `_`.
pub fn pod_log_dir(name: &str) -> Option<(String, String, String)> {
    let mut parts = name.split('_');
    let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    let ok = |s: &str| !s.is_empty();
    (parts.next().is_none() && ok(ns) && ok(pod) && is_uid(uid)).then(|| (ns.into(), pod.into(), uid.into()))
}

/// A kubelet container log link name, `<pod>_<namespace>_<container>-<64-hex id>.log`, as
/// (container name, container ID).
pub fn container_log_name(name: &str) -> Option<(String, String)> {
    let stem = name.strip_suffix(".log")?;
    let (rest, id) = stem.rsplit_once('-')?;
    let container = rest.rsplit('_').next().filter(|c| !c.is_empty() && rest.matches('_').count() == 2)?;
    is_container_id(id).then(|| (container.to_owned(), id.to_owned()))
}

/// Names by ID from a containers/storage `containers.json` (Podman, CRI-O): `[{"id":..,
/// "names":[..]}, ...]`; the first name of each.
pub fn storage_containers(text: &str) -> HashMap<String, String> {
    let Ok(serde_json::Value::Array(list)) = serde_json::from_str(text) else { return HashMap::new() };
    list.iter()
        .filter_map(|c| {
            let id = c.get("id")?.as_str()?;
            let name = c.get("names")?.as_array()?.first()?.as_str()?;
            Some((id.to_owned(), name.to_owned()))
        })
        .collect()
}

/// The name in a Docker `config.v2.json` (`"Name":"/web"`), without the leading slash.
pub fn docker_config_name(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let name = v.get("Name")?.as_str()?.trim_start_matches('/');
    (!name.is_empty()).then(|| name.to_owned())
}

/// The namespace inode of a `/proc/PID/ns/net` link target, `net:[4026531840]`.
pub fn ns_link(target: &str) -> Option<u64> {
    target.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// `NAMESPACE/NAME` of a `--pod` selector.
pub fn pod_selector(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(format!("{s:?} is not NAMESPACE/NAME (e.g. default/web-0)")),
    }
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
