//! Session lifecycle: SIGINT/SIGTERM end with status 0 and a summary, a closed pipe ends quietly,
//! and no program is left in the kernel afterwards. Runs as its own test binary (alone).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use twreset_tests::{
    Closer, NetNs, Running, assert_from_sock_ops, assert_programs_freed, bin, connections, kernel_at_least, links_of,
    privileged, programs_of,
};

#[test]
fn sigterm_and_sigint_exit_0_with_summary_and_detach() {
    if !privileged("sigterm") {
        return;
    }
    let ns = NetNs::new("life");
    let path = ns.path();
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut t = Running::start(&["trace", "--json", "--netns", path.to_str().unwrap()], "Ctrl-C to stop");
        let ours = programs_of(t.pid() as u32);
        if kernel_at_least(6, 12) {
            assert_eq!(
                ours.len(),
                6,
                "six programs while tracing: the state tracepoint's primary and backup, sock_ops, \
                 connect4 and connect6, and the iterator that handed older sockets to sock_ops"
            );
            // The older sockets were handed over, so the tracepoint programs are detached: only
            // the three cgroup links (sock_ops, connect4, connect6) remain.
            assert_eq!(links_of(t.pid() as u32), ["cgroup", "cgroup", "cgroup"]);
        } else {
            // No sock_ops at connect() before 6.12: the tracepoint's primary and backup stay
            // attached beside sock_ops.
            assert_eq!(ours.len(), 3, "tracepoint primary and backup, sock_ops");
            assert_eq!(links_of(t.pid() as u32), ["cgroup", "raw_tracepoint", "raw_tracepoint"]);
        }
        ns.run(|| connections("127.0.0.1:0".parse().unwrap(), None, 2, Closer::Client));
        ns.wait_quiescent();
        let (code, out, err) = t.signal(sig);
        assert_eq!(code, Some(0), "{sig}: {err}");
        assert_eq!(out.lines().count(), 2 * 10 + 2, "{out}");
        let summary = err.lines().find(|l| l.contains(" events seen, ")).unwrap_or_default();
        assert!(summary.starts_with("twreset: 22 events seen, 0 lost"), "{sig}: {err}");
        assert!(summary.ends_with(" recovered after nesting"), "{sig}: {summary}");
        // 2 connections of 10 transitions and their listener's 2, all from sock_ops (>= 6.12).
        assert_from_sock_ops(&err, 22);
        assert_programs_freed(&ours, sig.as_ref());
    }
}

#[test]
fn closed_pipe_exits_quietly_with_0() {
    if !privileged("closed_pipe") {
        return;
    }
    let ns = NetNs::new("pipe");
    let mut child = Command::new(bin())
        .args(["trace", "--json", "--netns", ns.path().to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("Ctrl-C to stop") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "twreset exited before it was ready");
    }
    let stop = AtomicBool::new(false);
    let status = std::thread::scope(|s| {
        s.spawn(|| {
            ns.run(|| {
                while !stop.load(Ordering::Relaxed) {
                    connections("127.0.0.1:0".parse().unwrap(), None, 5, Closer::Client);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        });
        // Like `| head -1`: read one line, then close the pipe while events keep coming.
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        assert!(first.starts_with('{'), "{first}");
        drop(reader);
        let deadline = Instant::now() + twreset_tests::poll_deadline();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        stop.store(true, Ordering::Relaxed);
        status
    });
    let status = status.expect("twreset kept running after its stdout closed");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("Broken pipe") && !err.contains("panicked") && !err.contains("error"), "{err}");
}

#[test]
fn traces_without_tracefs() {
    if !privileged("traces_without_tracefs") {
        return;
    }
    // A private mount namespace without tracefs (the host's mounts stay untouched): raw
    // tracepoints attach by name, so trace works and leaves the mounts as they were.
    let script = format!(
        "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug/tracing 2>/dev/null; \
         test ! -d /sys/kernel/tracing/events || exit 97; \
         timeout --preserve-status -s INT 10 {} trace --json >/dev/null; rc=$?; \
         test ! -d /sys/kernel/tracing/events || exit 98; exit $rc",
        bin().display()
    );
    let out =
        Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(97), "could not unmount tracefs in the test's mount namespace");
    assert_ne!(out.status.code(), Some(98), "twreset mounted tracefs: {err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("events seen"), "{err}");
}
