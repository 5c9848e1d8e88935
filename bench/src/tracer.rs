//! A long-running tracer process under measurement: started, awaited until it says it is ready,
//! sampled (CPU, BPF run time, peak RSS) around a churn window, stopped with SIGINT like Ctrl-C.
//!
//! Its stdout goes to /dev/null ([`Sink::Discard`], what the rate runs use, as the issue
//! specifies) or to a file in /dev/shm whose lines are counted and followed afterwards
//! ([`Sink::Count`]): no pipe, so no reader competes for the 2 CPUs. The file is not free: writing
//! `trace --json`'s 50 MB/s into tmpfs took 0.13-0.15 s of the tracer's CPU per million
//! transitions, about as much as decoding and formatting them.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{chains, sys};

/// Which stdout lines are per-event output (counted, not kept).
#[derive(Clone, Copy)]
pub enum Lines {
    /// bpftrace tcpstates: lines with `->` except the header.
    Tcpstates,
    /// twreset NDJSON: one object per line.
    Json,
    /// No per-event output: keep every line.
    Keep,
}

impl Lines {
    fn is_event(self, l: &str) -> bool {
        match self {
            Lines::Tcpstates => l.contains(" -> ") && !l.contains("OLDSTATE"),
            Lines::Json => l.starts_with('{'),
            Lines::Keep => false,
        }
    }
}

/// Where a tracer's stdout goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Sink {
    /// A file, read after the run: event lines counted and followed, other lines kept.
    Count,
    /// /dev/null: nothing is read back.
    Discard,
}

/// What the tracer wrote: event lines counted, other lines kept (bounded).
#[derive(Default)]
pub struct Output {
    /// The lines were read ([`Sink::Count`]); with [`Sink::Discard`] the counts below are empty.
    pub counted: bool,
    pub event_lines: u64,
    /// twreset NDJSON lines about TIME_WAIT sockets themselves (`trace --timewait`).
    pub tw_lines: u64,
    pub other: Vec<String>,
    /// twreset NDJSON: each socket's transitions followed in order.
    pub chains: Option<chains::Chains>,
}

pub struct Tracer {
    child: Child,
    pub pid: u32,
    kind: Lines,
    /// The file stdout goes to ([`Sink::Count`]).
    out_path: Option<PathBuf>,
    err: Option<JoinHandle<Output>>,
}

/// Scratch file for a tracer's stdout: RAM-backed when /dev/shm exists.
fn out_path() -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    dir.join(format!("twbench-{}-tracer.out", std::process::id()))
}

fn count_lines(path: &std::path::Path, kind: Lines) -> Output {
    match File::open(path) {
        Ok(f) => Output { counted: true, ..read_lines(f, kind, None, None) },
        Err(_) => Output::default(),
    }
}

fn file_contains(path: &std::path::Path, marker: &str) -> bool {
    let mut head = String::new();
    File::open(path).and_then(|f| f.take(1 << 16).read_to_string(&mut head)).is_ok() && head.contains(marker)
}

fn reader(
    r: impl Read + Send + 'static,
    kind: Lines,
    ready: Option<&'static str>,
    tx: mpsc::Sender<()>,
) -> JoinHandle<Output> {
    thread::spawn(move || read_lines(r, kind, ready, Some(tx)))
}

fn read_lines(r: impl Read, kind: Lines, ready: Option<&str>, tx: Option<mpsc::Sender<()>>) -> Output {
    {
        let mut o = Output::default();
        let mut r = BufReader::with_capacity(1 << 16, r);
        let mut line = Vec::new();
        let mut follow = chains::Follow::default();
        while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let l = String::from_utf8_lossy(&line);
            if matches!(kind, Lines::Json) && l.contains("\"event\":\"tw_") {
                o.tw_lines += 1;
            } else if kind.is_event(&l) {
                o.event_lines += 1;
                if matches!(kind, Lines::Json) {
                    follow.line(&l);
                }
            } else {
                if let (Some(m), Some(tx)) = (ready, &tx)
                    && l.contains(m)
                {
                    let _ = tx.send(());
                }
                if o.other.len() < 10_000 {
                    o.other.push(l.trim_end().to_owned());
                }
            }
            line.clear();
        }
        if matches!(kind, Lines::Json) {
            o.chains = Some(follow.chains);
        }
        o
    }
}

impl Tracer {
    /// Spawn and wait until `ready` shows up on stdout (when counted) or stderr (or, without a
    /// marker, until the process has stayed up for a few seconds).
    pub fn start(cmd: &mut Command, kind: Lines, ready: Option<&'static str>, sink: Sink) -> Result<Self> {
        let out_path = (sink == Sink::Count).then(out_path);
        let stdout = match &out_path {
            Some(p) => Stdio::from(File::create(p).with_context(|| format!("creating {}", p.display()))?),
            None => Stdio::null(),
        };
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let (tx, rx) = mpsc::channel();
        let err = reader(child.stderr.take().expect("piped"), Lines::Keep, ready, tx);
        let pid = child.id();
        let mut t = Self { child, pid, kind, out_path, err: Some(err) };
        let deadline = Instant::now() + Duration::from_secs(if ready.is_some() { 90 } else { 5 });
        loop {
            sys::check_interrupted()?;
            if ready.is_some_and(|m| rx.try_recv().is_ok() || t.out_path.as_ref().is_some_and(|p| file_contains(p, m)))
            {
                break;
            }
            if let Some(status) = t.child.try_wait()? {
                let (_, err) = t.finish_readers();
                bail!("{cmd:?} exited before it was ready ({status}): {}", err.other.join(" / "));
            }
            if Instant::now() >= deadline {
                if ready.is_none() {
                    break;
                }
                bail!("{cmd:?} did not print {:?} within 90 s", ready.unwrap_or(""));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(t)
    }

    /// After exit: stdout's lines counted from the file (then removed), stderr's kept.
    fn finish_readers(&mut self) -> (Output, Output) {
        let err = self.err.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        let out = self.out_path.as_ref().map(|p| count_lines(p, self.kind)).unwrap_or_default();
        if let Some(p) = &self.out_path {
            let _ = std::fs::remove_file(p);
        }
        (out, err)
    }

    /// SIGINT (what Ctrl-C sends), wait for the exit summary; SIGKILL after 60 s.
    pub fn stop(self) -> Result<(Output, Output)> {
        sys::send_signal(self.pid, libc::SIGINT);
        self.wait_exit(Duration::from_secs(60))
    }

    /// Wait for the tracer to end by itself; SIGKILL after `timeout`.
    pub fn wait_exit(mut self, timeout: Duration) -> Result<(Output, Output)> {
        let deadline = Instant::now() + timeout;
        while self.child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(self.finish_readers())
    }
}

impl Drop for Tracer {
    /// On an error path: never leave a tracer attached behind the bench.
    fn drop(&mut self) {
        if self.err.is_some() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(p) = &self.out_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// CPU seconds and BPF run time of a tracer at one instant.
#[derive(Clone, Copy, Default)]
pub struct Sample {
    pub cpu_s: f64,
    pub bpf_ns: u64,
    pub bpf_progs: u32,
}

pub fn sample(pid: u32) -> Result<Sample> {
    let (bpf_ns, bpf_progs) = sys::bpf_run_time_ns(pid);
    Ok(Sample { cpu_s: sys::cpu_seconds(pid)?, bpf_ns, bpf_progs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines() {
        let text = "Attaching 3 probes...\nTracing TCP state changes.\nTIME SKADDR ... OLDSTATE    -> NEWSTATE    MS\n\
                    11:33:08 ffff 1 churn 127.0.0.1 900 127.0.1.1 5000 SYN_SENT    -> ESTABLISHED 0\n";
        let o = read_lines(text.as_bytes(), Lines::Tcpstates, None, None);
        assert_eq!((o.event_lines, o.other.len()), (1, 3));
        let o = read_lines("{\"a\":1}\n{\"a\":2}\n{\"event\":\"tw_start\"}\n".as_bytes(), Lines::Json, None, None);
        assert_eq!((o.event_lines, o.tw_lines), (2, 1));
    }
}
