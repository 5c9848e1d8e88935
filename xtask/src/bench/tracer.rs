//! A long-running tracer process under measurement: started, awaited until it says it is ready,
//! sampled (CPU, BPF run time, peak RSS) around a churn window, stopped with SIGINT like Ctrl-C.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::sys;

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

/// What the tracer wrote: event lines counted, other lines kept (bounded).
#[derive(Default)]
pub struct Output {
    pub event_lines: u64,
    pub other: Vec<String>,
}

pub struct Tracer {
    child: Child,
    pub pid: u32,
    out: Option<JoinHandle<Output>>,
    err: Option<JoinHandle<Output>>,
}

fn reader(r: impl Read + Send + 'static, kind: Lines, ready: Option<&'static str>, tx: mpsc::Sender<()>) -> JoinHandle<Output> {
    thread::spawn(move || {
        let mut o = Output::default();
        let mut r = BufReader::with_capacity(1 << 16, r);
        let mut line = Vec::new();
        while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let l = String::from_utf8_lossy(&line);
            if kind.is_event(&l) {
                o.event_lines += 1;
            } else {
                if ready.is_some_and(|m| l.contains(m)) {
                    let _ = tx.send(());
                }
                if o.other.len() < 10_000 {
                    o.other.push(l.trim_end().to_owned());
                }
            }
            line.clear();
        }
        o
    })
}

impl Tracer {
    /// Spawn and wait until `ready` shows up on stdout or stderr (or, without a marker, until the
    /// process has stayed up for a few seconds).
    pub fn start(cmd: &mut Command, kind: Lines, ready: Option<&'static str>) -> Result<Self> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let (tx, rx) = mpsc::channel();
        let out = reader(child.stdout.take().expect("piped"), kind, ready, tx.clone());
        let err = reader(child.stderr.take().expect("piped"), Lines::Keep, ready, tx);
        let pid = child.id();
        let mut t = Self { child, pid, out: Some(out), err: Some(err) };
        let deadline = Instant::now() + Duration::from_secs(if ready.is_some() { 90 } else { 5 });
        loop {
            sys::check_interrupted()?;
            if ready.is_some() && rx.try_recv().is_ok() {
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

    fn finish_readers(&mut self) -> (Output, Output) {
        let out = self.out.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        let err = self.err.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        (out, err)
    }

    /// SIGINT (what Ctrl-C sends), wait for the exit summary; SIGKILL after 60 s.
    pub fn stop(mut self) -> Result<(Output, Output)> {
        sys::send_signal(self.pid, libc::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(60);
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
        if self.out.is_some() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
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
