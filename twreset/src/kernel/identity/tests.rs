//! Tests of identities, labels and output fields, and of the resolver over a built `/proc`.

use std::{fs, os::unix::fs::symlink, path::Path, process::Command};

use super::*;

const ID: &str = "5003e4a2794c031e84d2c7e78f02f9562edbea3a09fb8282f012fc8653d7ee90";
const ID2: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const UID: &str = "0b4c2d1e-5f6a-4b7c-8d9e-0f1a2b3c4d5e";

fn container(name: Option<&str>, id: &str) -> Container {
    Container { runtime: Runtime::Podman, id: id.into(), name: name.map(Into::into) }
}

fn pod(containers: Vec<Container>) -> NetnsIdentity {
    NetnsIdentity {
        cookie: 7,
        kind: Kind::Pod { namespace: Some("shop".into()), name: Some("web-0".into()), uid: UID.into(), containers },
    }
}

#[test]
fn labels() {
    let id = |kind| NetnsIdentity { cookie: 42, kind };
    assert_eq!(id(Kind::Host).label(), "host");
    assert_eq!(id(Kind::Unknown).label(), "netns:42");
    assert_eq!(id(Kind::Named { name: "blue".into() }).label(), "blue");
    assert_eq!(id(Kind::Container(container(Some("db"), ID))).label(), "container:db");
    assert_eq!(id(Kind::Container(container(None, ID))).label(), "container:5003e4a2794c");
    assert_eq!(pod(vec![]).label(), "pod:shop/web-0");
    let nameless = Kind::Pod { namespace: None, name: None, uid: UID.into(), containers: vec![] };
    assert_eq!(id(nameless).label(), format!("pod:{UID}"));
}

#[test]
fn a_pod_names_its_one_named_container() {
    assert_eq!(pod(vec![container(None, ID), container(Some("app"), ID2)]).container().unwrap().id, ID2);
    assert_eq!(pod(vec![container(None, ID)]).container().unwrap().id, ID);
    assert!(pod(vec![container(Some("a"), ID), container(Some("b"), ID2)]).container().is_none());
    assert!(pod(vec![container(None, ID), container(None, ID2)]).container().is_none());
}

#[test]
fn fields_and_fragment_are_the_same_json() {
    let p = pod(vec![container(Some("app"), ID)]);
    let fields = p.fields();
    let keys: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, ["netns", "pod_namespace", "pod", "pod_uid", "container", "container_id", "runtime"]);
    let mut obj = serde_json::Map::new();
    p.insert_into(&mut obj);
    let mut text = b"{\"a\":1".to_vec();
    text.extend(p.json_fragment());
    text.push(b'}');
    let v: Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(v["container_id"], ID);
    assert_eq!(v["pod"], "web-0");
    obj.insert("a".into(), 1.into());
    assert_eq!(v, Value::Object(obj));
    let odd = NetnsIdentity { cookie: 1, kind: Kind::Named { name: "we\"ird\\".into() } };
    let v: Value = serde_json::from_slice(&[b"{\"a\":1".as_slice(), &odd.json_fragment(), b"}"].concat()).unwrap();
    assert_eq!(v["netns"], "we\"ird\\");
    let host = NetnsIdentity { cookie: 1, kind: Kind::Host };
    assert_eq!(host.fields(), vec![("netns", "host".to_owned())]);
    assert!(host.is_plain() && !p.is_plain());
}

#[test]
fn container_selectors() {
    let p = pod(vec![container(None, ID), container(Some("app"), ID2)]);
    assert!(p.matches_container("app") && p.matches_container(&ID[..12]) && p.matches_container(ID2));
    assert!(!p.matches_container(&ID[..11]), "an ID prefix needs 12 digits");
    assert!(!p.matches_container("ap") && !p.matches_container("5003e4a2794cx"));
    assert!(p.matches_pod("shop", "web-0") && !p.matches_pod("shop", "web-1") && !p.matches_pod("web-0", "shop"));
}

/// A process in a network namespace of its own; killed on drop.
struct Unshared(std::process::Child);

impl Unshared {
    fn start() -> Self {
        let me = fs::read_link("/proc/self/ns/net").unwrap();
        let u = Self(Command::new("unshare").args(["-n", "sleep", "60"]).spawn().expect("unshare"));
        let link = format!("/proc/{}/ns/net", u.0.id());
        for _ in 0..200 {
            if fs::read_link(&link).is_ok_and(|l| l != me) {
                return u;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("unshare -n never entered a namespace of its own");
    }

    fn cookie(&self) -> u64 {
        crate::kernel::netns::Netns::open(Path::new(&format!("/proc/{}/ns/net", self.0.id())))
            .unwrap()
            .cookie()
            .unwrap()
    }
}

impl Drop for Unshared {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `/proc` whose entries borrow real namespaces (`ns` links to a real process's) but carry
/// the cgroup files a test writes.
fn fake_pid(root: &Path, pid: u32, real: &Unshared, cgroup: &str) {
    let dir = root.join("proc").join(pid.to_string());
    fs::create_dir_all(&dir).unwrap();
    symlink(format!("/proc/{}/ns", real.0.id()), dir.join("ns")).unwrap();
    fs::write(dir.join("cgroup"), cgroup).unwrap();
}

#[test]
fn resolves_pods_containers_and_keeps_them() {
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var("CI").is_err(), "needs root (namespaces) and CI forbids skipping");
        eprintln!("SKIPPED resolves_pods_containers_and_keeps_them: needs root");
        return;
    }
    struct Tmp(std::path::PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let guard = Tmp(std::env::temp_dir().join(format!("twr-identity-unit-{}", std::process::id())));
    let tmp = guard.0.clone();
    let _ = fs::remove_dir_all(&tmp);
    let (a, b, c) = (Unshared::start(), Unshared::start(), Unshared::start());
    let uid_ = UID.replace('-', "_");
    fake_pid(&tmp, 100, &a, &format!("0::/kubepods/burstable/pod{UID}/{ID}\n"));
    fake_pid(&tmp, 101, &a, &format!("0::/x/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID2}.scope\n"));
    fake_pid(&tmp, 200, &b, &format!("1:cpu:/\n0::/libpod_parent/libpod-{ID2}\n"));
    fake_pid(&tmp, 300, &c, "0::/user.slice\n");
    fs::create_dir_all(tmp.join(format!("pods/shop_web-0_{UID}"))).unwrap();
    fs::create_dir_all(tmp.join("logs")).unwrap();
    symlink("/dev/null", tmp.join(format!("logs/web-0_shop_app-{ID2}.log"))).unwrap();
    let storage = tmp.join("storage/overlay-containers");
    fs::create_dir_all(&storage).unwrap();
    fs::write(storage.join("containers.json"), format!(r#"[{{"id":"{ID2}","names":["twr-box"]}}]"#)).unwrap();
    let paths = IdentityPaths {
        proc_root: tmp.join("proc"),
        pods_log_dir: tmp.join("pods"),
        containers_log_dir: tmp.join("logs"),
        named_dir: tmp.join("netns"),
        storage_roots: vec![tmp.join("storage")],
        docker_root: tmp.join("docker"),
    };
    let mut r = Resolver::new(paths).unwrap();
    let stats = r.refresh();
    assert_eq!((stats.held, stats.changed), (3, 3), "{r:#?}");
    let (ca, cb, cc) = (a.cookie(), b.cookie(), c.cookie());
    assert_eq!(r.label(r.own_cookie()), "host");
    assert_eq!(r.label(ca), "pod:shop/web-0");
    let pa = r.get(ca).unwrap();
    assert_eq!(pa.containers().len(), 2);
    assert_eq!(pa.container().map(|c| c.display_name()), Some("app"), "the kubelet's name wins");
    assert_eq!(r.label(cb), "container:app", "the kubelet's log links name the ID here too");
    assert_eq!(r.get(cb).unwrap().container().unwrap().runtime, Runtime::Podman);
    assert_eq!(r.label(cc), format!("netns:{cc}"));
    assert_eq!(r.select(&[("shop".into(), "web-0".into())], &[]).unwrap(), vec![ca]);
    let mut both = vec![ca, cb];
    both.sort_unstable();
    assert_eq!(r.select(&[], &["app".into()]).unwrap(), both, "a pod container and a podman one");
    assert_eq!(r.select(&[], &[ID[..12].into()]).unwrap(), vec![ca]);
    assert!(matches!(r.select(&[("shop".into(), "web-1".into())], &[]), Err(IdentityError::NoPod(..))));
    assert!(matches!(r.select(&[], &["nope".into()]), Err(IdentityError::NoContainer(_))));
    assert_eq!(r.open_selected(&[("shop".into(), "web-0".into())], &[]).unwrap().len(), 1);
    let generation = r.generation();

    // The processes leave (the namespace would live on in a bind mount): the identity stays.
    fs::remove_dir_all(tmp.join("proc/100")).unwrap();
    fs::remove_dir_all(tmp.join("proc/101")).unwrap();
    fs::remove_dir_all(tmp.join("pods")).unwrap();
    assert_eq!(r.refresh(), RefreshStats { held: 2, changed: 0 });
    assert_eq!(r.label(ca), "pod:shop/web-0");
    assert_eq!(r.path(ca), None);
    assert!(matches!(r.open_selected(&[("shop".into(), "web-0".into())], &[]), Err(IdentityError::Unreachable(_))));
    assert_eq!(r.generation(), generation);
    // An `ip netns` name (CNI's) does not demote it either, and is the label of a plain one.
    fs::create_dir_all(tmp.join("netns")).unwrap();
    fs::write(tmp.join("netns/cni-1234"), "").unwrap();
    r.refresh();
    assert_eq!(r.label(ca), "pod:shop/web-0");
    assert_eq!(r.forget_unheld(|c| c == ca), 0, "kept while its table has sockets");
    assert_eq!(r.label(ca), "pod:shop/web-0");
    assert!(r.forget(ca) && !r.forget(ca) && !r.forget(r.own_cookie()));
    assert_eq!(r.forget_unheld(|_| false), 0, "the host and held namespaces stay");
    assert_eq!(r.label(cb), "container:app");
    assert_eq!(r.label(ca), format!("netns:{ca}"));
    assert!(r.generation() > generation);
}
