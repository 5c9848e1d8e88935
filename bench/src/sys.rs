//! Process measurements for the bench: CPU time and peak RSS from /proc, in-kernel BPF run time
//! from prog fdinfo, wall time and `ru_maxrss` from wait4, and the Ctrl-C flag.

use std::{
    fs,
    io::Read,
    os::unix::process::ExitStatusExt,
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C / SIGTERM only set a flag: the children (same process group) get the signal too and
/// stop; the bench then unwinds normally so every namespace guard runs.
pub fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn send_signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a child we started and have not reaped yet.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// utime + stime of a whole process (all threads), in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|u| u.parse().ok()).context("utime")?;
    let sticks: u64 = f.get(12).and_then(|s| s.parse().ok()).context("stime")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks + sticks) as f64 / hz)
}

/// Busy CPU time of the whole host so far (all CPUs: user, nice, system, irq, softirq, steal).
pub fn host_busy_s() -> f64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let busy: u64 = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .enumerate()
                .filter(|(i, _)| matches!(i, 0 | 1 | 2 | 5 | 6 | 7))
                .filter_map(|(_, v)| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    busy as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// CPU time of the ksoftirqd threads: loopback receive work deferred out of the churn process.
pub fn ksoftirqd_s() -> f64 {
    let Ok(dir) = fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("ksoftirqd")))
        .filter_map(|pid| cpu_seconds(pid).ok())
        .sum()
}

/// Peak resident set (VmHWM) in KiB.
pub fn vm_hwm_kib(pid: u32) -> Result<u64> {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")
}

/// Sum of `run_time_ns` over the BPF programs a process holds open (needs kernel.bpf_stats_enabled=1),
/// and how many programs that was.
pub fn bpf_run_time_ns(pid: u32) -> (u64, u32) {
    let (mut ns, mut progs) = (0, 0);
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0);
    };
    for e in dir.flatten() {
        if fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == "anon_inode:bpf-prog") {
            let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy()))
                .unwrap_or_default();
            if let Some(v) = info.lines().find_map(|l| l.strip_prefix("run_time_ns:")) {
                ns += v.trim().parse::<u64>().unwrap_or(0);
                progs += 1;
            }
        }
    }
    (ns, progs)
}

/// Owns `kernel.bpf_stats_enabled` for the bench: [`BpfStats::set`] switches it between rounds,
/// and the old value is restored on drop.
pub struct BpfStats {
    old: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    /// Take it over, switched off; `None` if it cannot be written.
    pub fn take() -> Option<Self> {
        let old = fs::read_to_string(BPF_STATS).ok()?.trim().to_owned();
        fs::write(BPF_STATS, "0").ok()?;
        Some(Self { old })
    }

    pub fn set(&self, on: bool) -> Result<()> {
        fs::write(BPF_STATS, if on { "1" } else { "0" }).context("writing kernel.bpf_stats_enabled")
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, &self.old);
    }
}

/// A finished one-shot command: exit status, wall time, peak RSS and stderr.
#[derive(Debug)]
pub struct Measured {
    pub status: ExitStatus,
    pub wall: Duration,
    pub maxrss_kib: u64,
    /// The bench's own peak RSS when it spawned the child, after resetting it: the floor under
    /// `maxrss_kib` (see [`run_measured`]).
    pub floor_kib: u64,
    /// User + system CPU time of the child (ru_utime + ru_stime).
    pub cpu_s: f64,
    pub stdout: String,
    pub stderr: String,
    /// `CLOCK_MONOTONIC` at spawn, in ns: the zero of every "seconds since spawn" here, so times
    /// the child reports on that clock (`tw --json`'s `live`) convert to it.
    pub spawned_mono_ns: u64,
}

fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Run a command to completion; wall time from spawn to reap, `ru_maxrss` from wait4.
/// stdout is kept only when `keep_stdout` (a kill listing 200k sockets is thrown away).
///
/// A child's `ru_maxrss` is never below the spawning process's own RSS: `exec` records the
/// peak of the memory it replaces, which for a spawned child is the parent's. So the bench resets
/// its own peak to its current RSS first (`/proc/self/clear_refs`, 5) and keeps that small: a
/// figure close to the bench's RSS is a floor, not the child's.
pub fn run_measured(cmd: &mut Command, keep_stdout: bool) -> Result<Measured> {
    run_measured_with(cmd, keep_stdout, None)
}

fn run_measured_with(
    cmd: &mut Command,
    keep_stdout: bool,
    on_spawn: Option<std::sync::mpsc::Sender<(u32, Instant)>>,
) -> Result<Measured> {
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    cmd.stdout(if keep_stdout { Stdio::piped() } else { Stdio::null() });
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let floor_kib = vm_hwm_kib(std::process::id()).unwrap_or(0);
    let start = Instant::now();
    let spawned_mono_ns = mono_ns();
    let mut child: Child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    if let Some(tx) = on_spawn {
        let _ = tx.send((child.id(), start));
    }
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: wait4 on our own unreaped child with valid out-pointers.
    let r = loop {
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break r;
        }
    };
    let wall = start.elapsed();
    if r < 0 {
        bail!("wait4 on {cmd:?}: {}", std::io::Error::last_os_error());
    }
    let stderr = err.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
    Ok(Measured {
        status: ExitStatus::from_raw(status),
        wall,
        maxrss_kib: ru.ru_maxrss.max(0) as u64,
        floor_kib,
        cpu_s: [ru.ru_utime, ru.ru_stime].iter().map(|t| t.tv_sec as f64 + t.tv_usec as f64 / 1e6).sum(),
        stdout: out.map(|h| h.join().unwrap_or_default()).unwrap_or_default(),
        stderr,
        spawned_mono_ns,
    })
}

/// `CLOCK_MONOTONIC` in ns (the clock of `Instant` on Linux, and of `bpf_ktime_get_ns`).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One reading of a running child's memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RssSample {
    /// Seconds since spawn (the clock of [`Measured::spawned_mono_ns`]).
    pub t: f64,
    /// VmRSS: anonymous + file-backed + shmem pages, in KiB.
    pub rss_kib: u64,
    /// RssAnon: the heap, stacks and other private memory, in KiB.
    pub anon_kib: u64,
}

/// Like [`run_measured`], also sampling the child's VmRSS and RssAnon every 50 ms, so a figure
/// "while running" can be told from the peak, on a clock that starts at the spawn
/// ([`Measured::spawned_mono_ns`]).
pub fn run_sampled(cmd: &mut Command) -> Result<(Measured, Vec<RssSample>)> {
    use std::sync::{Arc, Mutex};
    let samples = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel::<(u32, Instant)>();
    let sink = samples.clone();
    let sampler = thread::spawn(move || {
        let Ok((pid, start)) = rx.recv() else { return };
        while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            };
            match (field("VmRSS:"), field("RssAnon:")) {
                (Some(rss_kib), Some(anon_kib)) => {
                    sink.lock().unwrap().push(RssSample { t: start.elapsed().as_secs_f64(), rss_kib, anon_kib })
                }
                _ => break, // a zombie has no VmRSS: it has exited
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
    let m = run_measured_with(cmd, true, Some(tx))?;
    let _ = sampler.join();
    let samples = samples.lock().unwrap().clone();
    Ok((m, samples))
}

/// Run a command and return its stdout; fail with its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
