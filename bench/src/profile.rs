//! What a tracer costs the whole host, by sampling: `perf record -a -g` (the `cpu-clock` software
//! event, so it works in a VM without hardware counters) over the churn window, each sample
//! charged to the tracer when it ran in the tracer's process or under a hook that runs BPF
//! programs (tracepoint probes, cgroup `sock_ops`, the programs themselves). This counts what
//! `bpf_stats` leaves out: the classic tracepoint's record building before its program runs, the
//! dispatch around each run, ring buffer wakeups. A share of samples from the same seconds does
//! not move with the machine's speed, which drifts between runs on a shared VM.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::sys;

/// Samples per second per CPU.
const FREQ: &str = "997";

/// Frames under which a sample is the tracing hooks' work. The tracepoint's static call targets
/// the probe itself when one is registered (`__bpf_trace_*` for raw tracepoint programs,
/// `perf_trace_*` for classic ones, which build the event record first) and `__traceiter_*`
/// when several are; `sock_ops` programs run under `__cgroup_bpf_run_filter_sock_ops`; the
/// ring buffer's deferred wakeup is `bpf_ringbuf_notify`; JIT-ed programs are `bpf_prog_*`.
const HOOK_PREFIXES: [&str; 9] = [
    "__traceiter_",
    "__bpf_trace_",
    "perf_trace_",
    "bpf_trace_run",
    "trace_call_bpf",
    "__cgroup_bpf_run_filter_sock_ops",
    "bpf_prog_",
    "bpf_ringbuf_notify",
    "__bpf_prog_run",
];

/// CPU time by where it went, in seconds, from one sampled window.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Sampled {
    pub total_s: f64,
    /// Samples in the tracer's process (its threads, user and kernel side).
    pub tracer_s: f64,
    /// Samples in other processes (and softirq, idle) under a hook frame.
    pub hooks_s: f64,
}

impl Sampled {
    /// Everything charged to the tracer.
    pub fn host_s(&self) -> f64 {
        self.tracer_s + self.hooks_s
    }
}

/// A `perf record` running system-wide until [`Sampler::stop`].
pub struct Sampler {
    child: Option<Child>,
    path: PathBuf,
}

/// Whether `perf` is there and can sample (root, a kernel with perf events).
pub fn available() -> bool {
    Command::new("perf").arg("--version").output().is_ok_and(|o| o.status.success())
}

impl Sampler {
    pub fn start() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("twbench-{}-perf.data", std::process::id()));
        let child = Command::new("perf")
            .args(["record", "-a", "-g", "-e", "cpu-clock", "-F", FREQ, "-q", "-o"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting perf record")?;
        // It reads every process's maps and the kernel's symbols before it samples.
        thread::sleep(Duration::from_millis(300));
        Ok(Self { child: Some(child), path })
    }

    /// Stop sampling and charge the samples, `tracer` being the tracer's process id.
    pub fn stop(mut self, tracer: Option<u32>) -> Result<Sampled> {
        let child = self.child.take().context("perf record already stopped")?;
        sys::send_signal(child.id(), libc::SIGINT);
        let out = child.wait_with_output()?;
        if !self.path.exists() {
            bail!("perf record wrote nothing ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        // Read as it comes, not collected: a few seconds of samples are tens of MB of text, and
        // the bench's own peak RSS must stay small (see `sys::run_measured`).
        let mut script = Command::new("perf")
            .args(["script", "-F", "comm,pid,tid,period,ip,sym", "-i"])
            .arg(&self.path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("running perf script")?;
        let lines = BufReader::new(script.stdout.take().context("perf script stdout")?).lines().map_while(|l| l.ok());
        let sampled = charge(lines, tracer);
        let status = script.wait()?;
        if !status.success() {
            bail!("perf script failed: {status}");
        }
        Ok(sampled)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One sample's header: `comm pid/tid period` (comm may hold spaces). Its pid and period (ns).
fn header(line: &str) -> Option<(u32, u64)> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let at = tokens.iter().rposition(|t| t.split_once('/').is_some_and(|(p, _)| p.parse::<u32>().is_ok()))?;
    let pid = tokens[at].split_once('/')?.0.parse().ok()?;
    let period = tokens.get(at + 1)?.parse().ok()?;
    Some((pid, period))
}

/// A frame line's symbol without its offset: `ffffffff81234567 tcp_v4_rcv+0x1f ([kernel.kallsyms])`.
fn symbol(line: &str) -> Option<&str> {
    let sym = line.split_whitespace().nth(1)?;
    Some(sym.split_once("+0x").map_or(sym, |(s, _)| s))
}

/// Charge `perf script` output lines (a header line, then indented frames, a blank line between
/// samples).
pub fn charge<S: AsRef<str>>(script: impl IntoIterator<Item = S>, tracer: Option<u32>) -> Sampled {
    let mut s = Sampled::default();
    let mut current: Option<(u32, u64, bool)> = None;
    let close = |c: Option<(u32, u64, bool)>, s: &mut Sampled| {
        if let Some((pid, period, hooked)) = c {
            let secs = period as f64 / 1e9;
            s.total_s += secs;
            if Some(pid) == tracer {
                s.tracer_s += secs;
            } else if hooked {
                s.hooks_s += secs;
            }
        }
    };
    for line in script {
        let line = line.as_ref();
        if line.trim().is_empty() {
            close(current.take(), &mut s);
        } else if !line.starts_with(char::is_whitespace) {
            close(current.take(), &mut s);
            current = header(line).map(|(pid, period)| (pid, period, false));
        } else if let Some((_, _, hooked)) = current.as_mut()
            && !*hooked
            && let Some(sym) = symbol(line)
        {
            *hooked = HOOK_PREFIXES.iter().any(|p| sym.starts_with(p));
        }
    }
    close(current, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "\
churn 4242/4250     1003009
\tffffffff9a1b2c3d bpf_prog_6deef7357e7b4530_set_state+0x95 (bpf_prog_6deef7357e7b4530_set_state)
\tffffffff9a000001 __bpf_trace_run+0x71 ([kernel.kallsyms])
\tffffffff9a000002 tcp_set_state+0x20 ([kernel.kallsyms])

churn 4242/4251     1003009
\tffffffff9a000003 tcp_v4_connect+0x10 ([kernel.kallsyms])

swapper     0/0     1003009
\tffffffff9a000004 perf_trace_inet_sock_set_state+0x1 ([kernel.kallsyms])
\tffffffff9a000005 net_rx_action+0x1 ([kernel.kallsyms])

tokio-runtime-w 777/778     2006018
\tffffffff9a000006 __x64_sys_epoll_wait+0x1 ([kernel.kallsyms])

swapper     0/0     1003009
\tffffffff9a000007 default_idle+0x1 ([kernel.kallsyms])
";

    #[test]
    fn samples_are_charged_to_the_tracer_process_or_a_hook() {
        let s = charge(SCRIPT.lines(), Some(777));
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(s.total_s, 0.006018054), "{s:?}");
        assert!(close(s.tracer_s, 0.002006018), "{s:?}");
        // The BPF program's sample and the softirq one under the classic tracepoint's probe.
        assert!(close(s.hooks_s, 0.002006018), "{s:?}");
        assert!(close(s.host_s(), 0.004012036), "{s:?}");
        // Without a tracer process only the hooks count.
        assert!(close(charge(SCRIPT.lines(), None).host_s(), 0.002006018));
    }

    #[test]
    fn headers_and_symbols() {
        assert_eq!(header("tokio-runtime-w 777/778     2006018"), Some((777, 2006018)));
        assert_eq!(header("Web Content 12/13 5"), Some((12, 5)));
        assert_eq!(header("no numbers here"), None);
        assert_eq!(symbol("\tffff tcp_v4_rcv+0x1f ([kernel.kallsyms])"), Some("tcp_v4_rcv"));
        assert_eq!(symbol("\tffff [unknown] ([unknown])"), Some("[unknown]"));
    }
}
