//! Real containers: Debian's podman running containers from a busybox root filesystem the test
//! builds (no image, no registry), with runc and cgroupfs (crun refuses hybrid cgroup hosts).
//! Podman keeps its containers in a storage of the test's own (`vfs`, which works over any file
//! system, also a VM's 9p root where `overlay` does not), given to twreset the way an operator
//! names a non-default root: `TWRESET_CONTAINERS_STORAGE`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use twreset_tests::{Running, ndjson, on_ci, privileged};

use super::*;

/// A podman storage of the test's own: nothing left behind, nothing from earlier runs.
struct Store {
    dir: TempDir,
}

impl Store {
    fn new() -> Self {
        Self { dir: TempDir::new("podman") }
    }

    fn root(&self) -> String {
        self.dir.0.join("storage").display().to_string()
    }

    /// What twreset needs to find this storage's containers.
    fn env(&self) -> [(&'static str, String); 1] {
        [("TWRESET_CONTAINERS_STORAGE", self.root())]
    }

    fn podman(&self, args: &[&str]) -> (bool, String, String) {
        let run = self.dir.0.join("run").display().to_string();
        let out = Command::new("podman")
            .args(["--root", &self.root(), "--runroot", &run, "--storage-driver", "vfs"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("podman {args:?}: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// True when podman and runc are installed; without them: fails on CI, skips loudly elsewhere.
fn have_podman(test: &str) -> bool {
    let found = |c: &str| {
        Command::new("sh").args(["-c", &format!("command -v {c}")]).output().is_ok_and(|o| o.status.success())
    };
    if found("podman") && found("runc") && Path::new("/usr/bin/busybox").exists() {
        return true;
    }
    assert!(!on_ci(), "{test}: needs podman, runc and busybox-static (cargo xtask bootstrap installs them)");
    eprintln!("SKIPPED {test}: podman, runc or busybox-static missing");
    false
}

/// A root filesystem: busybox-static and the links the container runs.
fn rootfs(dir: &Path) {
    for d in ["usr/bin", "bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/usr/bin/busybox", dir.join("usr/bin/busybox")).expect("copy busybox");
    for app in ["sh", "sleep"] {
        std::os::unix::fs::symlink("/usr/bin/busybox", dir.join("bin").join(app)).unwrap();
    }
}

/// A running container, removed on drop.
struct Container<'a> {
    store: &'a Store,
    name: String,
    id: String,
    pid: u32,
}

impl<'a> Container<'a> {
    fn run(store: &'a Store, rootfs: &Path) -> Self {
        let name = unique("ctr");
        let (ok, _, err) = store.podman(&[
            "run",
            "-d",
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--name",
            &name,
            "--rootfs",
            rootfs.to_str().unwrap(),
            "/bin/sleep",
            "600",
        ]);
        let mut c = Self { store, name, id: String::new(), pid: 0 };
        assert!(ok, "podman run {}: {err}", c.name);
        let (_, id, _) = store.podman(&["inspect", "-f", "{{.Id}}", &c.name]);
        let (_, pid, _) = store.podman(&["inspect", "-f", "{{.State.Pid}}", &c.name]);
        (c.id, c.pid) = (id, pid.parse().unwrap_or_else(|_| panic!("pid of {}: {pid:?}", c.name)));
        assert!(c.pid > 0 && c.id.len() == 64, "{} not running: id {:?} pid {}", c.name, c.id, c.pid);
        prepare(&c.ns());
        c
    }

    /// The namespace of the container's process (conmon's child).
    fn ns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.store.podman(&["rm", "-f", "-t", "0", &self.name]);
    }
}

fn assert_container(v: &Value, c: &Container) {
    assert_eq!(v["netns"], format!("container:{}", c.name), "{v}");
    assert_eq!(v["container"].as_str(), Some(c.name.as_str()), "{v}");
    assert_eq!(v["container_id"].as_str(), Some(c.id.as_str()), "{v}");
    assert_eq!(v["runtime"], "podman", "{v}");
}

#[test]
fn podman_containers_are_labelled_and_killed_by_name() {
    if !privileged("podman_containers_are_labelled_and_killed_by_name") || !have_podman("podman_containers") {
        return;
    }
    let dir = TempDir::new("rootfs");
    rootfs(&dir.0);
    let store = Store::new();
    let (a, b) = (Container::run(&store, &dir.0), Container::run(&store, &dir.0));
    let env = store.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (ca, cb) = (cookie(&a.ns()), cookie(&b.ns()));
    assert_ne!(ca, cb);
    make_time_wait(&a.ns(), 8080, 3);
    make_time_wait(&b.ns(), 8080, 2);
    assert_eq!((ss_time_wait(&a.ns()), ss_time_wait(&b.ns())), (3, 2));

    let (code, out, err) = twreset_env(&["tw", "--all-netns", "--json", "--by", "dest"], &env);
    assert_eq!(code, Some(0), "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    for (cookie, c, count) in [(ca, &a, 3), (cb, &b, 2)] {
        let rows: Vec<&Value> = doc["rows"].as_array().unwrap().iter().filter(|r| of(r, cookie)).collect();
        assert_eq!(rows.iter().map(|r| r["count"].as_u64().unwrap()).sum::<u64>(), count, "{out}");
        rows.iter().for_each(|r| assert_container(r, c));
    }
    let (code, out, err) = twreset_env(&["tw", "--container", &a.id[..12], "--json"], &env);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["totals"]["count"], 3, "{out}");

    // trace: every namespace's lines carry its container; --container keeps that one alone.
    let all = Running::start_with_env(&["trace", "--all-netns", "--json"], &env, "tracing TCP");
    let one = Running::start_with_env(&["trace", "--container", &b.name, "--json"], &env, "tracing TCP");
    make_time_wait(&a.ns(), 8081, 1);
    make_time_wait(&b.ns(), 8081, 1);
    std::thread::sleep(Duration::from_millis(300));
    let ((code, out, err), (code1, out1, err1)) = (all.stop(), one.stop());
    assert_eq!((code, code1), (Some(0), Some(0)), "{err}\n{err1}");
    let lines = ndjson(&out);
    for (cookie, c) in [(ca, &a), (cb, &b)] {
        let mine: Vec<&Value> = lines.iter().filter(|v| of(v, cookie) && v["rport"] == 8081).collect();
        assert!(mine.len() >= 2, "{}: {} lines\n{out}", c.name, mine.len());
        mine.iter().for_each(|v| assert_container(v, c));
    }
    let lines = ndjson(&out1);
    assert!(lines.iter().any(|v| v["rport"] == 8081), "{out1}");
    lines.iter().for_each(|v| assert_container(v, &b));

    // kill --container NAME: exactly that container's TIME_WAIT sockets.
    let (code, _, err) = twreset_env(&["kill", "--container", "twr-no-such-container", "--all"], &env);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("twr-no-such-container"), "{err}");
    let (code, out, err) =
        twreset_env(&["kill", "--container", &a.name, "--json", "--audit-log", "/dev/null", "--all"], &env);
    assert_eq!(code, Some(0), "{err}");
    let lines = ndjson(&out);
    assert_eq!(lines.last().unwrap()["killed"], 4, "{out}");
    lines.iter().filter(|v| v["type"] == "socket").for_each(|v| assert_container(v, &a));
    assert_eq!((ss_time_wait(&a.ns()), ss_time_wait(&b.ns())), (0, 3), "the bystander keeps all of its sockets");
}
