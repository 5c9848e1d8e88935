//! Namespace identity end to end: a Kubernetes-shaped node (cgroups in both kubelet drivers'
//! layouts, pod log directories) and real Podman containers, labelled in `tw`, `trace` and
//! `kill` output and selected with `--pod` and `--container`.

mod k8s;
mod podman;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use twreset_tests::{Closer, bin, connections};

/// Run `f` on a thread inside the network namespace at `path`.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    twreset_tests::run_in(path, f)
}

/// The namespace at `path` as twreset names it (`netns_cookie`).
pub fn cookie(path: &Path) -> u64 {
    twreset_tests::netns_id(path)
}

/// `nsenter --net=PATH cmd...`, asserting success; its stdout.
pub fn nsenter(path: &Path, cmd: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", path.display()))
        .args(cmd)
        .output()
        .unwrap_or_else(|e| panic!("nsenter {cmd:?}: {e}"));
    assert!(out.status.success(), "nsenter {} {cmd:?}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Loopback up, no TIME_WAIT reuse (loopback tests would otherwise recycle the sockets).
pub fn prepare(path: &Path) {
    nsenter(path, &["ip", "link", "set", "lo", "up"]);
    nsenter(path, &["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=0"]);
}

/// `n` client-closed connections to 127.0.0.1:`port` inside the namespace: `n` TIME_WAIT sockets.
pub fn make_time_wait(path: &Path, port: u16, n: usize) {
    in_netns(path, || connections(format!("127.0.0.1:{port}").parse().unwrap(), None, n, Closer::Client));
}

/// TIME_WAIT sockets in the namespace as the kernel counts them (`ss`, entered with nsenter).
pub fn ss_time_wait(path: &Path) -> usize {
    nsenter(path, &["ss", "-Htan", "state", "time-wait"]).lines().filter(|l| !l.trim().is_empty()).count()
}

/// `twreset args...` with extra environment: (exit code, stdout, stderr).
pub fn twreset_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out =
        Command::new(bin()).args(args).envs(env.iter().copied()).stdin(Stdio::null()).output().expect("spawn twreset");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A unique name for this test process.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!("twr-{tag}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

pub use twreset_tests::TempDir;

/// Poll `f` until it holds or `secs` pass.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A row or line belongs to the namespace with this cookie.
pub fn of(v: &serde_json::Value, cookie: u64) -> bool {
    v["netns_cookie"].as_u64() == Some(cookie)
}
