//! A real `twreset agent` per test (own temp dir, socket, audit log and config), Debian's curl
//! over its socket, and other users through `setpriv`.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::Value;
use twreset_tests::bin;

/// Another user to run a command as: `setpriv --reuid --regid` with exactly `groups`.
#[derive(Clone, Debug)]
pub struct As {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl As {
    pub fn nobody() -> Self {
        Self { uid: 65534, gid: 65534, groups: Vec::new() }
    }

    /// A uid and gid no account uses, unique to this test process and `n`.
    pub fn member(n: u32, groups: &[u32]) -> Self {
        let id = 61000 + (std::process::id() % 2000) * 8 + n;
        Self { uid: id, gid: id, groups: groups.to_vec() }
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid)).arg(format!("--regid={}", self.gid));
        if self.groups.is_empty() {
            c.arg("--clear-groups");
        } else {
            let g: Vec<String> = self.groups.iter().map(u32::to_string).collect();
            c.arg(format!("--groups={}", g.join(",")));
        }
        c.arg("--inh-caps=-all").arg(program);
        c
    }
}

/// Group ids for a test's config, unique to this test process and `n`.
pub fn test_gid(n: u32) -> u32 {
    52000 + (std::process::id() % 2000) * 8 + n
}

/// An HTTP answer read by curl (`status` 0: no answer at all, `curl_exit` says why).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub curl_exit: i32,
    pub curl_err: String,
    pub pid: u32,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// The binary, copied once where any user may run it (the build's directory may not be).
fn shared_bin() -> PathBuf {
    static COPY: OnceLock<PathBuf> = OnceLock::new();
    COPY.get_or_init(|| {
        // Copies left by earlier runs (a static is never dropped): those of processes gone.
        for e in fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("twr-api-bin-")
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        let dir = std::env::temp_dir().join(format!("twr-api-bin-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("twreset");
        fs::copy(bin(), &copy).unwrap();
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
        copy
    })
    .clone()
}

/// Spawn, retrying while another test thread's fork still holds the fresh copy open for writing
/// (ETXTBSY until that child reaches exec).
fn spawn(c: &mut Command) -> Child {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r.unwrap_or_else(|e| panic!("spawn {c:?}: {e}")),
        }
    }
}

fn write_config(path: &Path, group: Option<u32>, readonly: Option<u32>, audit: &Path) {
    let text = format!(
        "socket_group = \"{}\"\nsocket_readonly_group = \"{}\"\naudit_log = \"{}\"\n",
        group.map_or(String::new(), |g| g.to_string()),
        readonly.map_or(String::new(), |g| g.to_string()),
        audit.display()
    );
    fs::write(path, text).unwrap();
}

pub struct Agent {
    child: Child,
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub audit: PathBuf,
    log: PathBuf,
    /// The binary, copied where any user may run it.
    pub bin: PathBuf,
}

impl Agent {
    /// Start an agent whose API groups are `group` (read-write) and `readonly`, wait until ready.
    pub fn start(tag: &str, group: Option<u32>, readonly: Option<u32>) -> Self {
        let dir = std::env::temp_dir().join(format!("twr-api-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let (sock, audit, log, config) =
            (dir.join("run/agent.sock"), dir.join("audit.log"), dir.join("agent.log"), dir.join("agent.toml"));
        write_config(&config, group, readonly, &audit);
        let copy = shared_bin();
        let child = spawn(
            Command::new(&copy)
                .args(["agent", "--config", config.to_str().unwrap(), "--socket", sock.to_str().unwrap()])
                .args(["--metrics-listen", "127.0.0.1:0"])
                .env("TWRESET_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).unwrap()),
        );
        let mut a = Self { child, dir, sock, audit, log, bin: copy };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = a.child.try_wait() {
                panic!("the agent exited ({st}) before it was ready:\n{}", a.log_text());
            }
            if a.sock.exists() && a.get("/readyz").status == 200 {
                return a;
            }
            assert!(Instant::now() < deadline, "the agent never got ready:\n{}", a.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Rewrite the config with these groups and audit log, then SIGHUP.
    pub fn reload(&self, group: Option<u32>, readonly: Option<u32>, audit: &Path) {
        write_config(&self.dir.join("agent.toml"), group, readonly, audit);
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), Signal::SIGHUP).unwrap();
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn curl_command(&self, user: Option<&As>) -> Command {
        let mut c = match user {
            Some(u) => u.command(Path::new("/usr/bin/curl")),
            None => Command::new("curl"),
        };
        c.args(["-sS", "--max-time", "30", "--unix-socket"]).arg(&self.sock).args(["-w", "\n%{http_code}"]);
        c
    }

    /// `curl` a request (as `user`, else root); POST when `body` is given.
    pub fn curl(&self, user: Option<&As>, path: &str, body: Option<&str>) -> Reply {
        let mut c = self.curl_command(user);
        if let Some(b) = body {
            c.args(["-X", "POST", "-H", "Content-Type: application/json", "--data-binary", b]);
        }
        c.arg(format!("http://agent{path}"));
        let child = spawn(c.stdout(Stdio::piped()).stderr(Stdio::piped()));
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        Reply {
            status: code.trim().parse().unwrap_or(0),
            body: body.to_owned(),
            curl_exit: out.status.code().unwrap_or(-1),
            curl_err: String::from_utf8_lossy(&out.stderr).into_owned(),
            pid,
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.curl(None, path, None)
    }

    /// Run this `twreset` with `args` (as `user`, else root): output and the process's pid.
    pub fn twreset(&self, user: Option<&As>, args: &[&str]) -> (Output, u32) {
        let mut c = match user {
            Some(u) => u.command(&self.bin),
            None => Command::new(&self.bin),
        };
        let child = spawn(
            c.args(args)
                .env_remove("TWRESET_AGENT_SOCKET")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let pid = child.id();
        (child.wait_with_output().unwrap(), pid)
    }

    /// The audit log's lines.
    pub fn audit_lines(&self) -> Vec<Value> {
        twreset_tests::ndjson(&fs::read_to_string(&self.audit).unwrap_or_default())
    }

    /// Poll `GET path` until `done` holds for its JSON (or panic at the deadline).
    pub fn wait_json(&self, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.get(path);
            if r.status == 200 && done(&r.json()) {
                return r.json();
            }
            assert!(Instant::now() < deadline, "{what}: last answer {r:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Drop what differs between two readings of the same state: ages and rates (time moves on), and
/// a direct run's own seeding diagnostics (`live`: the agent seeded once, long before).
pub fn timeless(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("live");
    }
    if let Some(rows) = v["rows"].as_array_mut() {
        for r in rows.iter_mut().filter_map(Value::as_object_mut) {
            for k in ["oldest_s", "newest_s", "rate_per_s", "exhaustion_s"] {
                r.remove(k);
            }
        }
    }
    // A direct run's own seed and cross-check figures (`live`): the agent's table has no such run.
    if let Some(o) = v.as_object_mut() {
        o.remove("live");
    }
    let t = &v["totals"];
    let totals = serde_json::json!({"count": t["count"], "time_wait": t["time_wait"], "fin_wait2": t["fin_wait2"]});
    v["totals"] = totals;
    v
}

/// `kill --json` socket lines without their timers, sorted, and the summary.
pub fn kill_lines(stdout: &str) -> (Vec<Value>, Value) {
    let mut lines = twreset_tests::ndjson(stdout);
    let summary = lines.pop().expect("a summary line");
    assert_eq!(summary["type"], "summary", "{stdout}");
    for l in lines.iter_mut().filter_map(Value::as_object_mut) {
        l.remove("age_ms");
        l.remove("expires_ms");
    }
    lines.sort_by_key(|l| l.to_string());
    (lines, summary)
}
