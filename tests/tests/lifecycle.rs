//! Session lifecycle: SIGINT/SIGTERM end with status 0 and a summary, a closed pipe ends quietly,
//! and no program is left in the kernel afterwards. Runs as its own test binary (alone).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use twreset_tests::{Closer, NetNs, Running, bin, connections, privileged};

/// Our state program as the kernel names it (BPF_OBJ_NAME_LEN truncates to 15 characters).
fn state_programs() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some("inet_sock_set_s"))
        .count()
}

#[test]
fn sigterm_and_sigint_exit_0_with_summary_and_detach() {
    if !privileged("sigterm") {
        return;
    }
    let before = state_programs();
    let ns = NetNs::new("life");
    let path = ns.path();
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut t = Running::start(&["trace", "--json", "--netns", path.to_str().unwrap()], "Ctrl-C to stop");
        assert_eq!(state_programs(), before + 1, "program loaded while tracing");
        ns.run(|| connections("127.0.0.1:0".parse().unwrap(), None, 2, Closer::Client));
        std::thread::sleep(Duration::from_millis(200));
        let (code, out, err) = t.signal(sig);
        assert_eq!(code, Some(0), "{sig}: {err}");
        assert_eq!(out.lines().count(), 2 * 10 + 2, "{out}");
        let summary = err.lines().last().unwrap();
        assert!(summary.starts_with("twreset: 22 events seen, 0 lost"), "{sig}: {summary}");
        assert_eq!(state_programs(), before, "{sig}: program left in the kernel");
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
        let deadline = Instant::now() + Duration::from_secs(20);
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
