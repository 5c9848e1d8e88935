//! Bad input and missing privileges: one clear line on stderr, exit 2 (usage) or 1 (runtime),
//! never a panic or a backtrace.

use std::process::Command;

use twreset_tests::{bin, privileged, twreset};

fn assert_clean_failure(args: &[&str], code: i32, needle: &str) {
    let (got, out, err) = twreset(args);
    assert_eq!(got, Some(code), "twreset {args:?}: stderr {err}");
    assert!(out.is_empty(), "stdout must stay empty on error: {out}");
    assert!(err.contains(needle), "twreset {args:?}: expected {needle:?} in {err:?}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "panic: {err}");
}

#[test]
fn usage_errors_exit_2() {
    assert_clean_failure(&["trace", "--peer", "10.0.0.300"], 2, "not an IP address");
    assert_clean_failure(&["trace", "--peer", "10.0.0.0/33"], 2, "/33 is too long for IPv4");
    assert_clean_failure(&["trace", "--peer", "fd00::/129"], 2, "/129 is too long for IPv6");
    assert_clean_failure(&["trace", "--port", "70000"], 2, "port 70000 is out of range");
    assert_clean_failure(&["trace", "--port", "0"], 2, "port 0 is out of range");
    assert_clean_failure(&["trace", "--state", "bogus"], 2, "unknown TCP state \"bogus\"");
    assert_clean_failure(&["trace", "--netns", "/etc/hostname"], 2, "not a network namespace");
    assert_clean_failure(&["trace", "--netns", "/nonexistent/ns"], 2, "cannot open");
    assert_clean_failure(&["trace", "--netns", "/proc/self/ns/net", "--all-netns"], 2, "cannot be used with");
    assert_clean_failure(&["frobnicate"], 2, "unrecognized subcommand");
}

#[test]
fn missing_btf_is_a_runtime_error() {
    if !privileged("missing_btf") {
        return;
    }
    let out = Command::new(bin()).args(["trace"]).env("TWRESET_BTF", "/nonexistent/vmlinux").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("kernel BTF not found") && err.contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn unprivileged_user_gets_one_clear_line() {
    if !privileged("unprivileged_user") {
        return;
    }
    // Drop to nobody with no capabilities at all.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(bin())
        .arg("trace")
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("permission denied") && err.contains("CAP_BPF"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}
