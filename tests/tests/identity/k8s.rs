//! A Kubernetes-shaped node without Kubernetes: pod cgroups in the systemd and the cgroupfs
//! drivers' layouts (under a test-only parent in the cgroup v2 hierarchy), a process with its own
//! network namespace in each, and the kubelet's pod log directories in a temporary directory.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
};

use serde_json::Value;
use twreset_tests::{Running, ndjson, privileged};

use super::*;

/// The cgroup v2 mount (on a hybrid host it sits beside the v1 controllers).
fn v2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("no cgroup2 mount: the test builds its pod cgroups in the v2 hierarchy")
}

/// A pod: a process in its own network namespace inside the pod's container cgroup.
struct Pod {
    child: Child,
    uid: String,
    container_id: String,
}

impl Pod {
    fn ns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.child.id()))
    }
}

/// The test's cgroup subtree and its pods; processes killed and cgroups removed on drop.
struct Node {
    root: PathBuf,
    pods: Vec<Pod>,
}

impl Node {
    fn new() -> Self {
        let root = v2_root().join(unique("node"));
        std::fs::create_dir(&root).unwrap_or_else(|e| panic!("mkdir {}: {e}", root.display()));
        Self { root, pods: Vec::new() }
    }

    /// Start a pod whose container cgroup is `layout` under the test root, with `{uid}`,
    /// `{uid_}` (underscores) and `{id}` filled in.
    fn pod(&mut self, layout: &str, n: u32) -> &Pod {
        let uid = format!("{:08x}-1111-4222-8333-{:012x}", std::process::id(), n);
        let container_id = format!("{n:02x}c0ffee{:056x}", std::process::id());
        let rel =
            layout.replace("{uid_}", &uid.replace('-', "_")).replace("{uid}", &uid).replace("{id}", &container_id);
        let dir = self.root.join(rel);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let child = Command::new("unshare").args(["-n", "sleep", "600"]).spawn().expect("spawn unshare");
        let mine = std::fs::read_link("/proc/self/ns/net").unwrap();
        let link = format!("/proc/{}/ns/net", child.id());
        wait_until(10, "unshare -n", || std::fs::read_link(&link).is_ok_and(|l| l != mine));
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string())
            .unwrap_or_else(|e| panic!("moving {} into {}: {e}", child.id(), dir.display()));
        let pod = Pod { child, uid, container_id };
        prepare(&pod.ns());
        self.pods.push(pod);
        self.pods.last().unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for p in &mut self.pods {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        // Deepest first: a cgroup is removable once it has no children and no processes.
        fn remove(dir: &Path) {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.filter_map(Result::ok) {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        remove(&e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        remove(&self.root);
    }
}

/// A bind mount of a namespace file: it keeps the namespace alive with no process in it.
struct Held(PathBuf);

impl Held {
    fn new(ns: &Path, at: PathBuf) -> Self {
        std::fs::write(&at, "").unwrap();
        let ok = Command::new("mount").arg("--bind").arg(ns).arg(&at).status().unwrap().success();
        assert!(ok, "mount --bind {} {}", ns.display(), at.display());
        Self(at)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn rows_of(doc: &Value, cookie: u64) -> Vec<Value> {
    doc["rows"].as_array().unwrap().iter().filter(|r| of(r, cookie)).cloned().collect()
}

fn assert_pod(v: &Value, ns: &str, name: &str, pod: &Pod) {
    assert_eq!(v["netns"], format!("pod:{ns}/{name}"), "{v}");
    assert_eq!((v["pod_namespace"].as_str(), v["pod"].as_str()), (Some(ns), Some(name)), "{v}");
    assert_eq!(v["pod_uid"].as_str(), Some(pod.uid.as_str()), "{v}");
    assert_eq!(v["container_id"].as_str(), Some(pod.container_id.as_str()), "{v}");
}

#[test]
fn a_kubernetes_shaped_node_is_labelled_selected_and_kept() {
    if !privileged("a_kubernetes_shaped_node_is_labelled_selected_and_kept") {
        return;
    }
    let mut node = Node::new();
    node.pod("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope", 1);
    node.pod("kubepods/besteffort/pod{uid}/{id}", 2);
    let (a, b) = (&node.pods[0], &node.pods[1]);
    let logs = TempDir::new("pods");
    for (ns, name, p) in [("shop", "web-0", a), ("batch", "job-7", b)] {
        std::fs::create_dir(logs.0.join(format!("{ns}_{name}_{}", p.uid))).unwrap();
    }
    let logs_dir = logs.0.to_str().unwrap();
    let env = [("TWRESET_PODS_LOG_DIR", logs_dir)];
    let (ca, cb) = (cookie(&a.ns()), cookie(&b.ns()));
    make_time_wait(&a.ns(), 8080, 3);
    make_time_wait(&b.ns(), 8080, 2);
    assert_eq!((ss_time_wait(&a.ns()), ss_time_wait(&b.ns())), (3, 2));

    // Every destination row names its pod.
    let (code, out, err) = twreset_env(&["tw", "--all-netns", "--json", "--by", "dest"], &env);
    assert_eq!(code, Some(0), "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    for (cookie, ns, name, pod, count) in [(ca, "shop", "web-0", a, 3), (cb, "batch", "job-7", b, 2)] {
        let rows = rows_of(&doc, cookie);
        assert_eq!(rows.iter().map(|r| r["count"].as_u64().unwrap()).sum::<u64>(), count, "{out}");
        rows.iter().for_each(|r| assert_pod(r, ns, name, pod));
    }
    // The agent's metrics name the pods too.
    agent_names_the_pods(&logs.0, &[("shop", "web-0", 3), ("batch", "job-7", 2)]);
    // So does doctor, for the pod it is pointed at.
    let (code, out, err) = twreset_env(&["doctor", "--json", "--pod", "shop/web-0"], &env);
    assert!(code == Some(0) || code == Some(1), "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let ns0 = &doc["namespaces"][0];
    assert_eq!((ns0["label"].as_str(), ns0["cookie"].as_u64()), (Some("pod:shop/web-0"), Some(ca)), "{ns0}");
    assert_eq!((ns0["pod_namespace"].as_str(), ns0["pod"].as_str()), (Some("shop"), Some("web-0")), "{ns0}");
    // --pod selects the pod's namespace alone.
    let (code, out, err) = twreset_env(&["tw", "--pod", "shop/web-0", "--json"], &env);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["totals"]["count"], 3, "{out}");

    // Selectors: unknown is a usage error; an ID prefix picks the pod; kill exactly its sockets.
    let (code, _, err) = twreset_env(&["kill", "--pod", "shop/web-9", "--all"], &env);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("shop/web-9"), "{err}");
    let (code, out, err) =
        twreset_env(&["kill", "--container", &b.container_id[..12], "--all", "--dry-run", "--json"], &env);
    assert_eq!(code, Some(0), "{err}");
    let lines = ndjson(&out);
    let sockets: Vec<&Value> = lines.iter().filter(|v| v["type"] == "socket").collect();
    assert_eq!(sockets.len(), 2, "{out}");
    sockets.iter().for_each(|s| assert_pod(s, "batch", "job-7", b));
    let (code, out, err) =
        twreset_env(&["kill", "--pod", "shop/web-0", "--all", "--json", "--audit-log", "/dev/null"], &env);
    assert_eq!(code, Some(0), "{err}");
    let lines = ndjson(&out);
    assert_eq!(lines.last().unwrap()["killed"], 3, "{out}");
    lines.iter().filter(|v| v["type"] == "socket").for_each(|s| assert_pod(s, "shop", "web-0", a));
    assert_eq!((ss_time_wait(&a.ns()), ss_time_wait(&b.ns())), (0, 2), "exactly the pod's sockets die");

    // A pod's identity outlives its processes while its namespace lives (here a bind mount).
    let held = Held::new(&a.ns(), logs.0.join("held-netns"));
    let trace = Running::start_with_env(&["trace", "--all-netns", "--json"], &env, "tracing TCP");
    make_time_wait(&a.ns(), 8082, 1);
    make_time_wait(&b.ns(), 8082, 1);
    let pa = &mut node.pods[0];
    pa.child.kill().unwrap();
    pa.child.wait().unwrap();
    make_time_wait(&held.0, 8083, 2);
    std::thread::sleep(Duration::from_millis(300));
    let (code, out, err) = trace.stop();
    assert_eq!(code, Some(0), "{err}");
    let lines = ndjson(&out);
    let on = |v: &Value, port: u64| v["lport"] == port || v["rport"] == port;
    let (a, b) = (&node.pods[0], &node.pods[1]);
    for (port, cookie, ns, name, pod) in
        [(8082, ca, "shop", "web-0", a), (8082, cb, "batch", "job-7", b), (8083, ca, "shop", "web-0", a)]
    {
        let mine: Vec<&Value> = lines.iter().filter(|v| of(v, cookie) && on(v, port)).collect();
        assert!(mine.len() >= 4, "port {port} in {name}: {} lines\n{out}", mine.len());
        mine.iter().for_each(|v| assert_pod(v, ns, name, pod));
    }
    // The namespace deleted, nothing names the pod any more.
    drop(held);
    let (code, _, err) = twreset_env(&["kill", "--pod", "shop/web-0", "--all"], &env);
    assert_eq!(code, Some(2), "{err}");
}

/// `twreset agent` with the pod log directories at `logs`: its metrics label each pod's namespace
/// `pod:NS/NAME`, with its TIME_WAIT count, and give one `twreset_netns_info` series per pod.
fn agent_names_the_pods(logs: &Path, pods: &[(&str, &str, u64)]) {
    let dir = TempDir::new("agent");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.0.join("agent.toml");
    std::fs::write(&config, format!("pods_log_dir = {:?}\n", logs.display().to_string())).unwrap();
    let socket = dir.0.join("agent.sock");
    let listen = format!("127.0.0.1:{port}");
    let mut agent = twreset_tests::run_agent(&config, &listen, &socket);
    let url = format!("http://{listen}/metrics");
    let scrape = || {
        let out = Command::new("curl").args(["-s", "--max-time", "10", &url]).output().expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut text = String::new();
    twreset_tests::poll_until("the agent's metrics to name every pod", || {
        text = scrape();
        pods.iter().all(|(ns, name, count)| {
            let info = text.lines().any(|l| {
                l.starts_with("twreset_netns_info{")
                    && l.contains(&format!("netns=\"pod:{ns}/{name}\""))
                    && l.contains(&format!("pod_namespace=\"{ns}\""))
                    && l.contains(&format!("pod=\"{name}\""))
            });
            let sockets =
                format!("twreset_timewait_sockets{{netns=\"pod:{ns}/{name}\",substate=\"time_wait\"}} {count}");
            info && text.lines().any(|l| l == sockets)
        })
    });
    let (code, _, err) = agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, Some(0), "agent: {err}\nlast scrape:\n{text}");
}
