//! The kernel ABI twreset relies on, checked against the running kernel: tracepoint field
//! offsets (tracefs format file) and the struct offsets read from BTF.

use twreset_common::{AF_INET, AF_INET6, tp_state};
use twreset_tests::privileged;

const FORMAT: &str = "/sys/kernel/tracing/events/sock/inet_sock_set_state/format";

fn ensure_tracefs() {
    if !std::path::Path::new(FORMAT).exists() {
        let st = std::process::Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]).status();
        assert!(st.is_ok_and(|s| s.success()), "cannot mount tracefs");
    }
}

/// (offset, size) of `field` in the format file.
fn field(format: &str, name: &str) -> (usize, usize) {
    for line in format.lines() {
        let line = line.trim();
        let Some(decl) = line.strip_prefix("field:") else { continue };
        let decl_name = decl.split(';').next().unwrap();
        let ident = decl_name.rsplit([' ', '*']).next().unwrap();
        let ident = ident.split('[').next().unwrap();
        if ident != name {
            continue;
        }
        let num = |key: &str| -> usize {
            let part = line.split(';').find(|p| p.trim().starts_with(key)).unwrap();
            part.trim()[key.len()..].trim().parse().unwrap()
        };
        return (num("offset:"), num("size:"));
    }
    panic!("field {name} not in format file:\n{format}");
}

#[test]
fn state_tracepoint_offsets_match_running_kernel() {
    if !privileged("state_tracepoint_offsets") {
        return;
    }
    ensure_tracefs();
    let format = std::fs::read_to_string(FORMAT).expect("read tracepoint format");
    let want = [
        ("skaddr", tp_state::SKADDR, 8),
        ("oldstate", tp_state::OLDSTATE, 4),
        ("newstate", tp_state::NEWSTATE, 4),
        ("sport", tp_state::SPORT, 2),
        ("dport", tp_state::DPORT, 2),
        ("family", tp_state::FAMILY, 2),
        ("protocol", tp_state::PROTOCOL, 2),
        ("saddr", tp_state::SADDR, 4),
        ("daddr", tp_state::DADDR, 4),
        ("saddr_v6", tp_state::SADDR_V6, 16),
        ("daddr_v6", tp_state::DADDR_V6, 16),
    ];
    for (name, off, size) in want {
        assert_eq!(field(&format, name), (off, size), "field {name}");
    }
    assert_eq!((AF_INET, AF_INET6), (libc::AF_INET as u16, libc::AF_INET6 as u16));
}

#[test]
fn timer_tracepoint_offsets_match_running_kernel() {
    use twreset_common::tp_timer;
    if !privileged("timer_tracepoint_offsets") {
        return;
    }
    ensure_tracefs();
    let fmt = |e: &str| std::fs::read_to_string(format!("/sys/kernel/tracing/events/timer/{e}/format")).unwrap();
    let start = fmt("timer_start");
    assert_eq!(field(&start, "timer"), (tp_timer::START_TIMER, 8));
    assert_eq!(field(&start, "function"), (tp_timer::START_FUNCTION, 8));
    assert_eq!(field(&start, "expires"), (tp_timer::START_EXPIRES, 8));
    assert_eq!(field(&start, "now"), (tp_timer::START_NOW, 8));
    let expire = fmt("timer_expire_entry");
    assert_eq!(field(&expire, "timer"), (tp_timer::EXPIRE_TIMER, 8));
    assert_eq!(field(&expire, "function"), (tp_timer::EXPIRE_FUNCTION, 8));
    assert_eq!(field(&fmt("timer_cancel"), "timer"), (tp_timer::CANCEL_TIMER, 8));
}
