//! Tests of the identity parsers over real-looking lines of every runtime and both kubelet drivers.

use super::*;

const ID: &str = "5003e4a2794c031e84d2c7e78f02f9562edbea3a09fb8282f012fc8653d7ee90";
const ID2: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const UID: &str = "0b4c2d1e-5f6a-4b7c-8d9e-0f1a2b3c4d5e";
const UID_: &str = "0b4c2d1e_5f6a_4b7c_8d9e_0f1a2b3c4d5e";

fn ids(pod: Option<&str>, c: Option<(Runtime, &str)>) -> CgroupIds {
    CgroupIds { pod_uid: pod.map(Into::into), container: c.map(|(r, id)| (r, id.to_owned())) }
}

#[test]
fn container_runtimes() {
    for (path, rt) in [
        (format!("/docker/{ID}"), Runtime::Docker),
        (format!("/system.slice/docker-{ID}.scope"), Runtime::Docker),
        (format!("/system.slice/cri-containerd-{ID}.scope"), Runtime::Containerd),
        (format!("/system.slice/crio-{ID}.scope"), Runtime::Crio),
        (format!("/libpod_parent/libpod-{ID}"), Runtime::Podman),
        (format!("/machine.slice/libpod-{ID}.scope"), Runtime::Podman),
        (format!("/machine.slice/libpod-{ID}.scope/container"), Runtime::Podman),
        (format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"), Runtime::Podman),
        (format!("/libpod_parent/{ID}"), Runtime::Podman),
    ] {
        assert_eq!(cgroup_path(&path), ids(None, Some((rt, ID))), "{path}");
    }
}

#[test]
fn monitors_and_plain_paths_name_nothing() {
    for path in [
        "/".to_owned(),
        "/user.slice/user-0.slice/session-3.scope".to_owned(),
        "/system.slice/containerd.service".to_owned(),
        "/libpod_parent/conmon".to_owned(),
        format!("/machine.slice/libpod-conmon-{ID}.scope"),
        format!("/system.slice/crio-conmon-{ID}.scope"),
        format!("/system.slice/docker-{}.scope", &ID[..12]),
        format!("/somewhere/{ID}"),
        format!("/system.slice/docker-{}.scope", ID.to_uppercase()),
        format!("/pod{UID}/{ID}"),
    ] {
        assert!(cgroup_path(&path).is_empty(), "{path}: {:?}", cgroup_path(&path));
    }
}

#[test]
fn kubelet_systemd_driver_every_qos() {
    for qos in ["kubepods-burstable.slice/kubepods-burstable-", "kubepods-besteffort.slice/kubepods-besteffort-", ""] {
        let path = format!("/kubepods.slice/{qos}pod{UID_}.slice/cri-containerd-{ID}.scope");
        let path = path.replace("/pod", "/kubepods-pod");
        assert_eq!(cgroup_path(&path), ids(Some(UID), Some((Runtime::Containerd, ID))), "{path}");
    }
    let crio = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope");
    assert_eq!(cgroup_path(&crio), ids(Some(UID), Some((Runtime::Crio, ID))));
    let docker = format!("/kubepods.slice/kubepods-pod{UID_}.slice/docker-{ID}.scope");
    assert_eq!(cgroup_path(&docker), ids(Some(UID), Some((Runtime::Docker, ID))));
    // The pod slice alone (a process of the pod outside any container cgroup).
    let slice = format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice");
    assert_eq!(cgroup_path(&slice), ids(Some(UID), None));
}

#[test]
fn kubelet_cgroupfs_driver_every_qos() {
    for qos in ["burstable/", "besteffort/", ""] {
        let path = format!("/kubepods/{qos}pod{UID}/{ID}");
        assert_eq!(cgroup_path(&path), ids(Some(UID), Some((Runtime::Cri, ID))), "{path}");
    }
    // A static pod's UID is a hash, not a UUID.
    let path = format!("/kubepods/burstable/pod8c1b2a3f4e5d6c7b8a9f0e1d2c3b4a5f/{ID}");
    assert_eq!(cgroup_path(&path), ids(Some("8c1b2a3f4e5d6c7b8a9f0e1d2c3b4a5f"), Some((Runtime::Cri, ID))));
}

#[test]
fn kubepods_anywhere_in_the_path() {
    let nested = format!("/twr-test-4242/kubepods/burstable/pod{UID}/{ID}");
    assert_eq!(cgroup_path(&nested), ids(Some(UID), Some((Runtime::Cri, ID))));
    let kind = format!(
        "/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{ID}/\
         kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID2}.scope"
    );
    assert_eq!(cgroup_path(&kind), ids(Some(UID), Some((Runtime::Containerd, ID2))), "innermost wins");
}

#[test]
fn proc_cgroup_prefers_the_most_telling_line() {
    let hybrid = format!(
        "9:name=systemd:/\n8:pids:/libpod_parent/libpod-{ID}\n4:memory:/process_api/1e48b2513f1f4ddd\n\
         0::/libpod_parent/libpod-{ID}\n"
    );
    assert_eq!(proc_cgroup(&hybrid), ids(None, Some((Runtime::Podman, ID))));
    let v2_pod = format!("1:cpu:/\n0::/t/kubepods/pod{UID}/{ID}\n");
    assert_eq!(proc_cgroup(&v2_pod), ids(Some(UID), Some((Runtime::Cri, ID))));
    let mixed = format!("3:cpuset:/docker/{ID2}\n0::/kubepods/besteffort/pod{UID}/{ID}\n");
    assert_eq!(proc_cgroup(&mixed).pod_uid.as_deref(), Some(UID));
    assert!(proc_cgroup("0::/\n").is_empty());
    assert!(proc_cgroup("").is_empty());
    assert!(proc_cgroup("garbage").is_empty());
}

#[test]
fn pod_log_dirs() {
    assert_eq!(
        pod_log_dir(&format!("kube-system_coredns-5d78c9869d-4xk2p_{UID}")),
        Some(("kube-system".into(), "coredns-5d78c9869d-4xk2p".into(), UID.into()))
    );
    assert_eq!(
        pod_log_dir("default_web.example_8c1b2a3f4e5d6c7b8a9f0e1d2c3b4a5f").map(|p| p.1),
        Some("web.example".into())
    );
    for bad in ["default_web", "a_b_c_d", "_web_0b4c2d1e", "default__0b4c2d1e", "default_web_x", "notes.txt"] {
        assert_eq!(pod_log_dir(bad), None, "{bad}");
    }
}

#[test]
fn container_log_links() {
    assert_eq!(
        container_log_name(&format!("coredns-5d78c9869d-4xk2p_kube-system_coredns-{ID}.log")),
        Some(("coredns".into(), ID.into()))
    );
    assert_eq!(container_log_name(&format!("web-0_default_nginx-proxy-{ID}.log")).unwrap().0, "nginx-proxy");
    for bad in [format!("web_default_nginx-{}.log", &ID[..12]), format!("nginx-{ID}.log"), format!("a_b_c-{ID}.txt")] {
        assert_eq!(container_log_name(&bad), None, "{bad}");
    }
}

#[test]
fn runtime_state_files() {
    let podman = format!(
        r#"[{{"id":"{ID}","names":["twr-explore"],"image":"","layer":"e856","metadata":"{{}}"}},
            {{"id":"{ID2}","names":["k8s_POD_web-0_default_{UID}_0","alias"]}},{{"id":"x"}}]"#
    );
    let names = storage_containers(&podman);
    assert_eq!(names.get(ID).map(String::as_str), Some("twr-explore"));
    assert_eq!(names.get(ID2).map(String::as_str), Some(&*format!("k8s_POD_web-0_default_{UID}_0")));
    assert_eq!(names.len(), 2);
    assert!(storage_containers("not json").is_empty());
    assert!(storage_containers("{}").is_empty());
    assert_eq!(docker_config_name(r#"{"ID":"abc","Name":"/web","State":{}}"#), Some("web".into()));
    assert_eq!(docker_config_name(r#"{"Name":"/"}"#), None);
    assert_eq!(docker_config_name("{"), None);
}

#[test]
fn links_and_selectors() {
    assert_eq!(ns_link("net:[4026531840]"), Some(4026531840));
    assert_eq!(ns_link("mnt:[4026531840]"), None);
    assert_eq!(ns_link("net:[x]"), None);
    assert_eq!(pod_selector("default/web-0"), Ok(("default".into(), "web-0".into())));
    for bad in ["web-0", "/web", "default/", "a/b/c", ""] {
        assert!(pod_selector(bad).unwrap_err().contains("NAMESPACE/NAME"), "{bad}");
    }
}

#[test]
fn paths_seen_from_inside_a_cgroup_namespace() {
    // An agent in a pod reads a neighbour's /proc/PID/cgroup relative to its own cgroup
    // namespace: `kubepods` is above the root it sees.
    let uid = "1c2d3e4f-0000-4a4a-8b8b-0123456789ab";
    let id = "a".repeat(64);
    let ids = cgroup_path(&format!("/../../pod{uid}/{id}"));
    assert_eq!(ids.pod_uid.as_deref(), Some(uid));
    assert_eq!(ids.container, Some((Runtime::Cri, id.clone())));
    // Without `..` or `kubepods`, a bare pod-like segment names nothing.
    assert_eq!(cgroup_path(&format!("/pod{uid}/{id}")).pod_uid, None);
}
