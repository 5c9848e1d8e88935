//! Harness for integration tests: the real binary, real network namespaces (deleted on drop, even
//! on panic), real sockets inside them, and the kernel's own view through `ss`.
//!
//! Tests panic with a clear message. A test that needs root or BPF fails under `CI=true` and only
//! skips (loudly) on a developer machine without privileges.

use std::{
    io::{BufRead, BufReader, Read},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::sched::{CloneFlags, setns};

/// The release binary built by `cargo xtask test` (`TWRESET_BIN`), else `target/release/twreset`.
pub fn bin() -> PathBuf {
    let p = std::env::var_os("TWRESET_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/twreset"));
    assert!(p.exists(), "twreset binary {} missing: run the tests with `cargo xtask test`", p.display());
    p
}

/// Where `twreset` commands run by the harness look for an agent: nowhere, so they run directly
/// even on a machine where an agent serves the default socket (the API tests pass their own).
pub const NO_AGENT: &str = "/nonexistent/twreset-tests/agent.sock";
/// The running kernel's `(major, minor)`, from `/proc/sys/kernel/osrelease`.
pub fn kernel_version() -> (u32, u32) {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("reading the kernel release");
    let mut it = r.trim().split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Is the running kernel at least `major.minor`? (Tests whose expectations follow the kernel.)
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    kernel_version() >= (major, minor)
}

/// `trace` gives sockets to `sock_ops` at `connect()` from Linux 6.12 on; before, the tracepoint
/// programs stay attached and it says so in this one warning line.
pub const NO_SOCK_OPS_AT_CONNECT: &str = "cannot hand sockets to sock_ops at connect() (needs Linux >= 6.12)";

/// Fail on any warning in a tracer's stderr other than the one the running kernel explains.
pub fn assert_no_unexpected_warnings(err: &str) {
    let expected = |l: &str| !kernel_at_least(6, 12) && l.contains(NO_SOCK_OPS_AT_CONNECT);
    let bad: Vec<&str> = err.lines().filter(|l| l.contains("warning") && !expected(l)).collect();
    assert!(bad.is_empty(), "unexpected warnings {bad:?} in: {err}");
}

/// `N` of the tracer's closing line `twreset: N transitions came from sock_ops`.
pub fn from_sock_ops(err: &str) -> Option<u64> {
    err.lines().find_map(|l| l.strip_prefix("twreset: ")?.strip_suffix(" transitions came from sock_ops")?.parse().ok())
}

/// Transitions from `sock_ops`: all `total` where sockets are its from `connect()` (>= 6.12);
/// before, the tracepoint reports some of them, so at most `total`.
pub fn assert_from_sock_ops(err: &str, total: u64) {
    let n = from_sock_ops(err);
    if kernel_at_least(6, 12) {
        assert_eq!(n, Some(total), "all {total} transitions from sock_ops: {err}");
    } else {
        assert!(n.is_none_or(|n| n <= total), "at most {total} transitions from sock_ops: {err}");
    }
}

pub fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// True when the test may run (root). Without root: fails on CI, skips loudly elsewhere.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(!on_ci(), "{test}: needs root (BPF, network namespaces) and CI=true forbids skipping");
    eprintln!("SKIPPED {test}: needs root");
    false
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`ip netns add`), with `lo` up; deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> Self {
        let name = format!("twr-{tag}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        // Loopback tests would otherwise recycle TIME_WAIT sockets (default tcp_tw_reuse=2).
        ns.sysctl("net.ipv4.tcp_tw_reuse", "0");
        // The default limit follows the size of the kernel's established hash, i.e. the machine's
        // memory: a test that counts sockets must not overflow it on a small machine. Tests of
        // the overflow set their own limit.
        ns.sysctl("net.ipv4.tcp_max_tw_buckets", "262144");
        ns
    }

    /// Wait until no socket of this namespace is between states (a handshake or a close under
    /// way): every transition the test caused has then happened, softirq work included, so its
    /// events are in the kernel's ring buffer. Loopback defers that work under load.
    pub fn wait_quiescent(&self) {
        poll_until(&format!("{}: handshakes and closes to finish", self.name), || {
            self.exec(&[
                "ss",
                "-Htan",
                "state",
                "syn-sent",
                "state",
                "syn-recv",
                "state",
                "fin-wait-1",
                "state",
                "closing",
                "state",
                "last-ack",
            ])
            .trim()
            .is_empty()
        });
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Identity of this namespace, what twreset reports as `netns_cookie`, from the same source
    /// the tool asks: `SO_NETNS_COOKIE` where the kernel has it (Linux >= 5.14), else the inode
    /// number of the namespace file (`net->ns.inum`).
    pub fn cookie(&self) -> u64 {
        netns_id(&self.path())
    }

    /// `ip netns exec NAME cmd...`, asserting success.
    pub fn exec(&self, cmd: &[&str]) -> String {
        let out = run_ok(Command::new("ip").args(["netns", "exec", &self.name]).args(cmd));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ip(&self, args: &[&str]) {
        run_ok(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    pub fn read_sysctl(&self, key: &str) -> String {
        self.exec(&["sysctl", "-n", key]).trim().to_owned()
    }

    /// Add an address to `lo` (IPv6 with `nodad`), and return once it is usable: an IPv6
    /// address is, when addrconf's work queue has installed its local route, which lags behind
    /// `ip addr add` on a loaded machine (a connect before that fails with ENETUNREACH).
    pub fn add_lo_addr(&self, cidr: &str) {
        if cidr.contains(':') {
            self.ip(&["-6", "addr", "add", cidr, "dev", "lo", "nodad"]);
            self.wait_v6_local(&[cidr.split('/').next().unwrap_or(cidr)]);
        } else {
            self.ip(&["addr", "add", cidr, "dev", "lo"]);
        }
    }

    /// Wait until every IPv6 address of `addrs` has its local route (see [`NetNs::add_lo_addr`]).
    pub fn wait_v6_local(&self, addrs: &[&str]) {
        poll_until(&format!("{}: local routes of {addrs:?}", self.name), || {
            let routes = self.exec(&["ip", "-6", "route", "show", "table", "local"]);
            addrs.iter().all(|a| routes.lines().any(|l| l.split_whitespace().nth(1) == Some(a)))
        });
    }

    /// Run `f` on a thread inside this namespace; sockets it creates live here.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        run_in(&self.path(), f)
    }

    /// `ss -Htan <filter...>` inside the namespace, parsed.
    pub fn ss(&self, filter: &[&str]) -> Vec<SsSocket> {
        let mut args = vec!["ss", "-Htan"];
        args.extend_from_slice(filter);
        self.exec(&args).lines().filter_map(SsSocket::parse).collect()
    }

    /// Count of TIME_WAIT sockets (`ss state time-wait`), the kernel's own view.
    pub fn time_wait(&self) -> Vec<SsSocket> {
        self.ss(&["state", "time-wait"])
    }

    /// Sockets in one state (`ss -Htan state STATE`). With a single-state filter `ss` drops the
    /// State column, which [`SsSocket::parse`] expects; this parses the four remaining columns.
    pub fn ss_state(&self, state: &str) -> Vec<SsSocket> {
        self.exec(&["ss", "-Htan", "state", state])
            .lines()
            .filter_map(|l| SsSocket::parse(&format!("{state} {l}")))
            .collect()
    }

    /// A `/proc/net/netstat` TcpExt counter of this namespace (e.g. `TCPTimeWaitOverflow`).
    pub fn tcp_ext(&self, counter: &str) -> u64 {
        let text = self.exec(&["cat", "/proc/net/netstat"]);
        let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
        let (names, values) = (lines.next().expect("TcpExt header"), lines.next().expect("TcpExt values"));
        let i = names.split_whitespace().position(|n| n == counter).unwrap_or_else(|| panic!("no {counter}"));
        values.split_whitespace().nth(i).unwrap().parse().unwrap()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// The namespace's id as twreset reports it (`netns_cookie`): `SO_NETNS_COOKIE` where the
/// kernel has it (Linux >= 5.14), else the nsfs inode, the rule the tool itself follows.
pub fn netns_id(path: &std::path::Path) -> u64 {
    let cookie = run_in(path, || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        let mut cookie: u64 = 0;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: getsockopt into a u64 of the right size (71 = SO_NETNS_COOKIE).
        let rc = unsafe {
            libc::getsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                71,
                (&raw mut cookie).cast(),
                &mut len,
            )
        };
        let err = std::io::Error::last_os_error();
        match rc {
            0 => Some(cookie),
            _ if err.raw_os_error() == Some(libc::ENOPROTOOPT) => None,
            _ => panic!("SO_NETNS_COOKIE: {err}"),
        }
    });
    cookie.unwrap_or_else(|| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display())).ino()
    })
}

/// Run `f` on a thread inside the network namespace at `path`.
pub fn run_in<T: Send>(path: &std::path::Path, f: impl FnOnce() -> T + Send) -> T {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in netns panicked")
    })
}

/// `twreset agent` with its config file, metrics listener and control socket, returned once it
/// says it is ready (seeded and serving).
pub fn run_agent(config: &std::path::Path, metrics_listen: &str, socket: &std::path::Path) -> Running {
    Running::start_with_env(
        &[
            "agent",
            "--config",
            config.to_str().expect("a UTF-8 path"),
            "--metrics-listen",
            metrics_listen,
            "--socket",
            socket.to_str().expect("a UTF-8 path"),
        ],
        &[("TWRESET_LOG", "info")],
        "agent ready",
    )
}

/// A directory of its own under the system's temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "twreset-test-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How long [`poll_until`] waits: generous, since a slow or loaded machine only makes the wait
/// longer, never the test's work different.
pub const POLL_DEADLINE: Duration = Duration::from_secs(60);

/// [`POLL_DEADLINE`] times `TWRESET_TEST_SLOWDOWN` (default 1): `cargo xtask test --kernel`
/// sets it for guests under qemu's TCG, where loading the programs alone can take a minute.
pub fn poll_deadline() -> Duration {
    POLL_DEADLINE * slowdown()
}

/// `TWRESET_TEST_SLOWDOWN` (at least 1): how many times slower than a normal machine the tool
/// runs here (5 in a VM under qemu's TCG). Only for margins between two ages the test makes.
pub fn slowdown() -> u32 {
    std::env::var("TWRESET_TEST_SLOWDOWN").ok().and_then(|v| v.parse().ok()).unwrap_or(1u32).max(1)
}

/// Poll `done` every 20 ms until it holds; panic naming `what` after [`POLL_DEADLINE`]. For
/// asynchronous kernel work (namespace cleanup, softirq, timers): never a fixed sleep.
pub fn poll_until(what: &str, mut done: impl FnMut() -> bool) {
    let limit = poll_deadline();
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An IPv4 /24 (`"10.X.Y"`) made of this process's id, which no other test binary running at the
/// same time uses: for tests that look at every namespace on the host (`--all-netns`), where
/// another run's sockets would otherwise match. Tests of one binary pick distinct host numbers.
pub fn private_net() -> String {
    let pid = std::process::id();
    format!("10.{}.{}", 100 + (pid >> 8) % 100, pid & 0xff)
}

/// One line of `ss -Htan`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SsSocket {
    pub state: String,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl SsSocket {
    pub fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.split_whitespace().collect();
        // With a `state` filter ss omits the State column (the line starts with Recv-Q).
        let (state, local, remote) = match f.first()?.parse::<u64>() {
            Ok(_) if f.len() >= 4 => ("", f[2], f[3]),
            Err(_) if f.len() >= 5 => (f[0], f[3], f[4]),
            _ => return None,
        };
        let fix = |s: &str| -> Option<SocketAddr> {
            // ss prints IPv4-mapped and bracketed v6; strip scope ids.
            let s = s.replace("%lo", "");
            s.parse().ok()
        };
        Some(Self { state: state.to_owned(), local: fix(local)?, remote: fix(remote)? })
    }
}

/// Who closes first: the side that closes first ends in TIME_WAIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closer {
    Client,
    Server,
}

/// Inside the current thread's namespace: `n` connections from `client_ip` to `server`, closed by
/// `closer`, fully finished (the closer's socket is in TIME_WAIT on return).
/// Returns (client address, server address) of each connection.
/// A listener on `addr`, waiting out sockets of an earlier listener on the same port: the server
/// ends of its connections can still be in LAST_ACK (their peer's last ACK not yet processed in
/// softirq, which lags under load), and `listen` refuses the port until they close.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match TcpListener::bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

pub fn connections(
    server: SocketAddr,
    client_ip: Option<std::net::IpAddr>,
    n: usize,
    closer: Closer,
) -> Vec<(SocketAddr, SocketAddr)> {
    let listener = listen(server).unwrap_or_else(|e| panic!("bind {server}: {e}"));
    let server = listener.local_addr().unwrap();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let c = match client_ip {
            Some(ip) => {
                let sock =
                    socket2::Socket::new(socket2::Domain::for_address(server), socket2::Type::STREAM, None).unwrap();
                // The port is picked at connect, per destination: a bound port would have to be
                // free of every TIME_WAIT socket of the address, and churn runs out of those.
                let on: libc::c_int = 1;
                // SAFETY: int option on a valid socket.
                let rc = unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&sock),
                        libc::SOL_IP,
                        libc::IP_BIND_ADDRESS_NO_PORT,
                        (&raw const on).cast(),
                        size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                assert_eq!(rc, 0, "IP_BIND_ADDRESS_NO_PORT: {}", std::io::Error::last_os_error());
                sock.bind(&SocketAddr::new(ip, 0).into()).unwrap();
                sock.connect(&server.into()).unwrap_or_else(|e| panic!("connect {server}: {e}"));
                TcpStream::from(sock)
            }
            None => TcpStream::connect(server).unwrap_or_else(|e| panic!("connect {server}: {e}")),
        };
        let (a, _) = listener.accept().unwrap();
        let pair = (c.local_addr().unwrap(), server);
        let (mut first, mut second) = match closer {
            Closer::Client => (c, a),
            Closer::Server => (a, c),
        };
        first.shutdown(std::net::Shutdown::Write).unwrap();
        // Wait for the FIN, then close the other side: the first closer ends in TIME_WAIT.
        let mut buf = [0u8; 1];
        assert_eq!(second.read(&mut buf).unwrap(), 0);
        drop(second);
        // The first closer reads the peer's FIN before it closes: closed earlier (when loopback
        // delivery is deferred on a busy machine) it would be orphaned in FIN_WAIT2 and become a
        // TIME_WAIT socket of substate FIN_WAIT2 first.
        assert_eq!(first.read(&mut buf).unwrap(), 0);
        drop(first);
        out.push(pair);
    }
    drop(listener);
    out
}

/// A running `twreset` command (e.g. `trace`), stopped with SIGINT.
pub struct Running {
    child: Child,
    stderr_lines: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
    stdout_lines: mpsc::Receiver<String>,
    stdout_seen: Vec<String>,
}

/// Lines of `r` sent to a channel by a thread of their own, until EOF.
fn lines_of(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Running {
    /// Start `twreset args...` and wait until it prints a stderr line containing `ready`.
    pub fn start(args: &[&str], ready: &str) -> Self {
        Self::start_with_env(args, &[], ready)
    }

    /// [`Running::start`] with extra environment variables for the child.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)], ready: &str) -> Self {
        let mut child = Command::new(bin())
            .args(args)
            .env("TWRESET_AGENT_SOCKET", NO_AGENT)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn twreset");
        let stderr_lines = lines_of(child.stderr.take().unwrap());
        let stdout_lines = lines_of(child.stdout.take().unwrap());
        let mut r = Self { child, stderr_lines, stderr_seen: Vec::new(), stdout_lines, stdout_seen: Vec::new() };
        let deadline = Instant::now() + poll_deadline();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match r.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(ready);
                    r.stderr_seen.push(line);
                    if done {
                        return r;
                    }
                }
                Err(_) => {
                    let _ = r.child.kill();
                    panic!("twreset {args:?} never printed {ready:?}; stderr: {:?}", r.stderr_seen);
                }
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Wait up to `timeout` for a stderr line containing `needle`; returns it.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        if let Some(l) = self.stderr_seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no stderr line with {needle:?} within {timeout:?}; stderr: {:?}", self.stderr_seen),
            }
        }
    }

    /// Send SIGINT and collect (exit code, stdout, stderr).
    pub fn stop(mut self) -> (Option<i32>, String, String) {
        self.signal(nix::sys::signal::Signal::SIGINT)
    }

    /// Read stdout until a line satisfies `found` (returning it), panicking naming `what` after
    /// [`POLL_DEADLINE`]. The lines read stay part of what [`Running::stop`] returns.
    pub fn wait_stdout(&mut self, what: &str, found: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + poll_deadline();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.stdout_lines.recv_timeout(left).unwrap_or_else(|_| panic!("twreset never printed {what}"));
            self.stdout_seen.push(line.clone());
            if found(&line) {
                return line;
            }
        }
    }

    pub fn signal(&mut self, sig: nix::sys::signal::Signal) -> (Option<i32>, String, String) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal twreset");
        let status = self.child.wait().unwrap();
        // The reader thread ends at EOF, once the process is gone.
        self.stdout_seen.extend(self.stdout_lines.iter());
        let stdout: String = self.stdout_seen.iter().map(|l| format!("{l}\n")).collect();
        let mut stderr = self.stderr_seen.join("\n");
        while let Ok(l) = self.stderr_lines.recv_timeout(Duration::from_secs(5)) {
            stderr.push('\n');
            stderr.push_str(&l);
        }
        (status.code(), stdout, stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `twreset tw --json --settle 10m ARGS...`, returned once it has seeded its table and follows
/// kernel events (it says so at log level info). The settle is far longer than any test: the test
/// does a fixed amount of work, then [`TwFollowing::finish`] interrupts it (Ctrl-C ends the
/// settle and prints the table), so what it sees never depends on the machine's speed.
pub struct TwFollowing {
    pub child: Child,
    stderr: BufReader<std::process::ChildStderr>,
    /// What it logged until now.
    pub log: String,
}

impl TwFollowing {
    /// `env` may set `TWRESET_LOG`; it must keep info level for `twreset::live`.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(bin())
            .args(["tw", "--json", "--settle", "10m"])
            .args(args)
            .env("TWRESET_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn twreset tw");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut log = String::new();
        while !log.contains("following kernel events") {
            let mut line = String::new();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "tw ended before following events: {log}");
            log.push_str(&line);
        }
        Self { child, stderr, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ctrl-C, then its exit status, its one JSON document and everything it logged.
    pub fn finish(mut self) -> (std::process::ExitStatus, serde_json::Value, String) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), nix::sys::signal::Signal::SIGINT)
            .expect("SIGINT to twreset tw");
        let mut stdout = String::new();
        self.child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
        self.stderr.read_to_string(&mut self.log).unwrap();
        let status = self.child.wait().unwrap();
        let v = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("tw printed no JSON document ({e}): {status}\n{}", self.log));
        (status, v, std::mem::take(&mut self.log))
    }
}

impl Drop for TwFollowing {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `twreset args...` to completion: (exit code, stdout, stderr).
/// The totals of a `tw --json` document say the table stayed exact, or that it lost events,
/// said so and resynced. Without lost events the table is exact (drift 0). Under load this kernel
/// reports BPF recursion misses (programs nested on one CPU), and about one TIME_WAIT creation in
/// 100k reaches no program and no counter at all: `tw` finds those by comparing a quiet namespace
/// with the kernel's own count (`unseen`, part of `lost`). Each loss must have forced a resync,
/// which fixes the table (its drift is what the lost events had broken).
pub fn assert_lossless_or_resynced(totals: &serde_json::Value) {
    let n = |k: &str| totals[k].as_u64().unwrap_or_else(|| panic!("no {k} in {totals}"));
    assert!(n("unseen") <= n("lost"), "unseen is part of lost: {totals}");
    if n("lost") == 0 {
        assert_eq!(n("drift"), 0, "drift without lost events: {totals}");
    } else {
        assert!(n("resyncs") > 0, "lost events without a resync: {totals}");
    }
}

pub fn twreset(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("TWRESET_AGENT_SOCKET", NO_AGENT)
        .stdin(Stdio::null())
        .output()
        .expect("spawn twreset");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Parse NDJSON, panicking with the offending line.
pub fn ndjson(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON line {l:?}: {e}")))
        .collect()
}

/// Distinct BPF program ids process `pid` holds (program and link fds both name them).
pub fn programs_of(pid: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = fdinfo_values(pid, "prog_id:").iter().filter_map(|v| v.parse().ok()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The `link_type` of every BPF link the process `pid` holds, sorted.
pub fn links_of(pid: u32) -> Vec<String> {
    let mut types = fdinfo_values(pid, "link_type:");
    types.sort_unstable();
    types
}

/// The value of every `key` line in the fdinfo of each of `pid`'s fds.
fn fdinfo_values(pid: u32, key: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return Vec::new() };
    dir.filter_map(Result::ok)
        .flat_map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            text.lines().filter_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_owned()).collect::<Vec<_>>()
        })
        .collect()
}

/// Fail unless every program of `ours` has left the kernel within 30 s. The kernel frees a
/// program after an RCU grace period once its last fd is closed; one still there after 30 s is a
/// leak (a loaded machine delays the grace period, so the wait is generous).
pub fn assert_programs_freed(ours: &[u32], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let left = loop {
        let left: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .filter(|id| ours.contains(id))
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(left.is_empty(), "{what}: programs {left:?} left in the kernel");
}

/// Wait until process `pid` holds `n` BPF programs (attached), panicking after [`POLL_DEADLINE`].
pub fn wait_for_programs(pid: u32, n: usize) {
    let deadline = Instant::now() + poll_deadline();
    while programs_of(pid).len() < n {
        assert!(Instant::now() < deadline, "process {pid} never attached {n} programs");
        std::thread::sleep(Duration::from_millis(20));
    }
}
