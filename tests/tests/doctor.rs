//! `twreset doctor` against real namespaces: sysctls set to good and bad values, real TIME_WAIT
//! sockets near port exhaustion, a sysctl.d file setting tcp_tw_recycle, and capability probes
//! checked against what the kernel really does. Every number is compared with `ss`, sysctl or
//! /proc/net/netstat.

use std::{
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
};

use serde_json::Value;
use twreset_tests::{Closer, NetNs, Running, connections, kernel_at_least, privileged, twreset};

use twreset_tests::TempDir;

/// `twreset doctor --json --netns NS` with an empty sysctl dir (the host's /etc stays out of it):
/// (exit code, report).
fn doctor(ns: &NetNs, sysctl_dir: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    let path = ns.path();
    let mut args =
        vec!["doctor", "--json", "--netns", path.to_str().unwrap(), "--sysctl-dir", sysctl_dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, out, err) = twreset(&args);
    let v: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("doctor JSON: {e}\nstdout: {out}\nstderr: {err}"));
    (code, v)
}

fn the_ns(v: &Value) -> &Value {
    let list = v["namespaces"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{v:#}");
    &list[0]
}

fn finding<'a>(ns: &'a Value, code: &str) -> &'a Value {
    let hits: Vec<&Value> = ns["findings"].as_array().unwrap().iter().filter(|f| f["code"] == code).collect();
    assert_eq!(hits.len(), 1, "expected one {code} finding in {:#}", ns["findings"]);
    hits[0]
}

fn severity(ns: &Value, code: &str) -> String {
    finding(ns, code)["severity"].as_str().unwrap().to_owned()
}

/// `ss -s` "timewait N" of the namespace.
fn ss_s_timewait(ns: &NetNs) -> u64 {
    let text = ns.exec(&["ss", "-s"]);
    let at = text.find("timewait ").unwrap_or_else(|| panic!("no timewait in ss -s: {text}"));
    text[at + 9..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// `n` client-closed connections to `port` on 127.0.0.1: the client sockets end in TIME_WAIT.
fn time_wait_to(ns: &NetNs, port: u16, n: usize) {
    let server = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port);
    ns.run(|| connections(server, None, n, Closer::Client));
}

#[test]
fn good_sysctls_give_ok_findings_and_exit_0() {
    if !privileged("good_sysctls_give_ok_findings_and_exit_0") {
        return;
    }
    let ns = NetNs::new("doc-good");
    for (k, v) in [
        ("net.ipv4.ip_local_port_range", "32768 60999"),
        ("net.ipv4.tcp_tw_reuse", "1"),
        ("net.ipv4.tcp_timestamps", "1"),
        ("net.ipv4.tcp_fin_timeout", "60"),
        ("net.ipv4.tcp_rfc1337", "0"),
        ("net.ipv4.tcp_max_tw_buckets", "262144"),
    ] {
        ns.sysctl(k, v);
    }
    let dir = TempDir::new("good");
    let (code, v) = doctor(&ns, &dir.0, &[]);
    let n = the_ns(&v);
    assert_eq!(n["label"], ns.name.as_str());
    // Settings are read inside the namespace: compare with sysctl(8) run there.
    assert_eq!(n["settings"]["ip_local_port_range"], serde_json::json!([32768, 60999]));
    assert_eq!(n["ports_per_destination"], 28232);
    for key in
        ["tcp_tw_reuse", "tcp_timestamps", "tcp_fin_timeout", "tcp_rfc1337", "tcp_max_tw_buckets", "tcp_tw_reuse_delay"]
    {
        // tcp_tw_reuse_delay is newer than 5.10 and 6.1: absent there, and doctor says null.
        if !Path::new(&format!("/proc/sys/net/ipv4/{key}")).exists() {
            assert!(n["settings"][key].is_null(), "{key} is absent on this kernel: {}", n["settings"]);
            continue;
        }
        let want: u64 = ns.read_sysctl(&format!("net.ipv4.{key}")).parse().unwrap();
        assert_eq!(n["settings"][key], want, "{key}");
    }
    for f in n["findings"].as_array().unwrap() {
        assert_eq!(f["severity"], "ok", "{f:#}");
    }
    assert!(finding(n, "tcp_tw_reuse")["message"].as_str().unwrap().contains("outgoing connect() only"));
    assert!(finding(n, "tcp_fin_timeout")["message"].as_str().unwrap().contains("does not change TIME_WAIT"));
    assert_eq!(n["rst_kill_possible"], true);
    assert_eq!(v["exit_code"], 0);
    assert_eq!(code, Some(0));
}

#[test]
fn bad_sysctls_are_flagged_with_their_severity() {
    if !privileged("bad_sysctls_are_flagged_with_their_severity") {
        return;
    }
    let ns = NetNs::new("doc-bad");
    for (k, v) in [
        ("net.ipv4.ip_local_port_range", "40000 40999"),
        ("net.ipv4.tcp_tw_reuse", "1"),
        ("net.ipv4.tcp_timestamps", "0"),
        ("net.ipv4.tcp_fin_timeout", "10"),
        ("net.ipv4.tcp_rfc1337", "1"),
        ("net.ipv4.tcp_max_tw_buckets", "10"),
    ] {
        ns.sysctl(k, v);
    }
    // 15 active closes with room for 10 TIME_WAIT sockets: 5 overflow (the kernel counts them).
    time_wait_to(&ns, 8080, 15);
    let dir = TempDir::new("bad");
    let (code, v) = doctor(&ns, &dir.0, &[]);
    let n = the_ns(&v);
    assert_eq!(severity(n, "port_range"), "warning");
    assert_eq!(severity(n, "tcp_tw_reuse"), "ok");
    assert_eq!(severity(n, "tcp_timestamps"), "warning");
    assert!(finding(n, "tcp_timestamps")["message"].as_str().unwrap().contains("no effect"));
    assert_eq!(severity(n, "tcp_fin_timeout"), "info");
    assert!(finding(n, "tcp_fin_timeout")["message"].as_str().unwrap().contains("does NOT shorten TIME_WAIT"));
    // Where SOCK_DESTROY kills TIME_WAIT (>= 6.0) rfc1337 only rules out the RST fallback;
    // before 6.0 nothing can kill TIME_WAIT sockets then.
    let destroy_tw = v["kernel"]["capabilities"]["sock_destroy_time_wait"]["available"] == true;
    assert_eq!(destroy_tw, kernel_at_least(6, 0), "{}", v["kernel"]["capabilities"]);
    assert_eq!(severity(n, "tcp_rfc1337"), if destroy_tw { "info" } else { "warning" });
    assert_eq!(n["rst_kill_possible"], false);
    assert_eq!(severity(n, "tcp_max_tw_buckets"), "critical");
    let overflow = ns.tcp_ext("TCPTimeWaitOverflow");
    assert_eq!(overflow, 5);
    assert_eq!(n["counters"]["tcp_time_wait_overflow"], overflow);
    assert_eq!(severity(n, "tcp_time_wait_overflow"), "warning");
    assert_eq!(n["counters"]["timewait_total"], 10);
    assert_eq!(n["counters"]["time_wait"], ns.ss_state("time-wait").len() as u64);
    assert_eq!(v["worst"], "critical");
    assert_eq!(v["exit_code"], 1);
    assert_eq!(code, Some(1));

    // Back to good values: the same namespace, same sockets, the bad findings are gone.
    ns.sysctl("net.ipv4.tcp_timestamps", "1");
    ns.sysctl("net.ipv4.tcp_rfc1337", "0");
    ns.sysctl("net.ipv4.tcp_max_tw_buckets", "262144");
    let (_, v) = doctor(&ns, &dir.0, &[]);
    let n = the_ns(&v);
    assert_eq!(severity(n, "tcp_timestamps"), "ok");
    assert_eq!(severity(n, "tcp_rfc1337"), "ok");
    assert_eq!(severity(n, "tcp_max_tw_buckets"), "ok");
}

#[test]
fn near_port_exhaustion_names_the_destination_and_percentage() {
    if !privileged("near_port_exhaustion_names_the_destination_and_percentage") {
        return;
    }
    let ns = NetNs::new("doc-press");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40099");
    assert_eq!(ns.read_sysctl("net.ipv4.tcp_tw_reuse"), "0");
    time_wait_to(&ns, 8080, 95);
    let tw = ns.ss_state("time-wait");
    assert_eq!(tw.len(), 95, "the kernel holds 95 TIME_WAIT sockets");
    let dir = TempDir::new("press");
    let (code, v) = doctor(&ns, &dir.0, &[]);
    let n = the_ns(&v);

    // Counts agree with ss: `ss -tan state time-wait` and `ss -s` timewait.
    assert_eq!(n["counters"]["time_wait"], tw.len() as u64);
    assert_eq!(n["counters"]["timewait_total"], ss_s_timewait(&ns));

    let d = &n["destinations"][0];
    assert_eq!(d["local"], "127.0.0.1");
    assert_eq!(d["remote"], "127.0.0.1");
    assert_eq!(d["remote_port"], 8080);
    assert_eq!(d["sockets"], 95);
    assert_eq!(d["time_wait"], 95);
    assert_eq!(d["pressure_pct"], 95.0);
    assert_eq!(d["reuse_applies"], false);
    let f = finding(n, "port_pressure");
    assert_eq!(f["severity"], "critical");
    assert!(
        f["message"].as_str().unwrap().starts_with("port pressure 95% to 127.0.0.1:8080 from 127.0.0.1: 95 of 100"),
        "{f:#}"
    );
    let action = f["action"].as_str().unwrap();
    assert!(action.contains("enable tcp_tw_reuse=1"), "{action}");
    assert!(action.contains(&format!("`twreset kill --netns {} 127.0.0.1:8080`", ns.path().display())), "{action}");
    assert_eq!(code, Some(1));

    // tcp_tw_reuse=2 covers loopback: the TIME_WAIT ports are free for connect() again.
    ns.sysctl("net.ipv4.tcp_tw_reuse", "2");
    let (code, v) = doctor(&ns, &dir.0, &[]);
    let n = the_ns(&v);
    assert_eq!(n["destinations"][0]["reuse_applies"], true);
    assert!(n["findings"].as_array().unwrap().iter().all(|f| f["code"] != "port_pressure"));
    assert_eq!(code, Some(0));
}

#[test]
fn tw_recycle_in_a_sysctl_file_is_reported() {
    if !privileged("tw_recycle_in_a_sysctl_file_is_reported") {
        return;
    }
    let ns = NetNs::new("doc-recycle");
    let dir = TempDir::new("recycle");
    let conf = dir.0.join("90-tuning.conf");
    std::fs::write(&conf, "# folk advice\nnet.ipv4.tcp_tw_reuse = 1\nnet.ipv4.tcp_tw_recycle = 1\n").unwrap();
    std::fs::write(dir.0.join("README"), "net.ipv4.tcp_tw_recycle = 1\n").unwrap(); // not *.conf: ignored
    let (code, v) = doctor(&ns, &dir.0, &[]);
    assert!(!Path::new("/proc/sys/net/ipv4/tcp_tw_recycle").exists(), "this kernel has no tcp_tw_recycle");
    let lines = v["kernel"]["tcp_tw_recycle_config"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["path"], conf.to_str().unwrap());
    assert_eq!(lines[0]["line"], 3);
    assert_eq!(lines[0]["value"], "1");
    let f = finding(&v["kernel"], "tcp_tw_recycle_config");
    assert_eq!(f["severity"], "warning");
    assert!(f["message"].as_str().unwrap().contains(&format!("{}:3", conf.display())));
    assert!(f["message"].as_str().unwrap().contains("removed in Linux 4.12"));
    let n = the_ns(&v);
    assert_eq!(n["settings"]["tcp_tw_recycle"], Value::Null);
    assert_eq!(severity(n, "tcp_tw_recycle"), "ok");
    // A warning alone does not fail the run.
    assert_eq!(code, Some(0));

    // A file can be named directly, next to a directory; both are scanned.
    let single = std::env::temp_dir().join(format!("twr-doctor-single-{}.conf", std::process::id()));
    std::fs::write(&single, "net/ipv4/tcp_tw_recycle=0\n").unwrap();
    let (_, v) = doctor(&ns, &dir.0, &["--sysctl-dir", single.to_str().unwrap()]);
    std::fs::remove_file(&single).unwrap();
    let lines = v["kernel"]["tcp_tw_recycle_config"].as_array().unwrap();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!((lines[1]["path"].as_str(), lines[1]["value"].as_str()), (single.to_str(), Some("0")));

    // Without --sysctl-dir the standard places are scanned.
    let path = ns.path();
    let (_, out, _) = twreset(&["doctor", "--json", "--netns", path.to_str().unwrap()]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let scanned: Vec<&str> =
        v["kernel"]["sysctl_paths"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(
        scanned,
        [
            "/etc/sysctl.conf",
            "/etc/sysctl.d",
            "/run/sysctl.d",
            "/usr/local/lib/sysctl.d",
            "/usr/lib/sysctl.d",
            "/lib/sysctl.d"
        ]
    );

    // Without the file there is no such finding.
    std::fs::remove_file(&conf).unwrap();
    let (_, v) = doctor(&ns, &dir.0, &[]);
    assert!(v["kernel"]["tcp_tw_recycle_config"].as_array().unwrap().is_empty());
}

#[test]
fn capability_probes_match_what_the_kernel_does() {
    if !privileged("capability_probes_match_what_the_kernel_does") {
        return;
    }
    let ns = NetNs::new("doc-caps");
    let dir = TempDir::new("caps");
    let (_, v) = doctor(&ns, &dir.0, &[]);
    let caps = &v["kernel"]["capabilities"];

    assert_eq!(caps["btf"]["available"], Path::new("/sys/kernel/btf/vmlinux").exists());

    // TIME_WAIT timer symbols: what /proc/kallsyms really shows (non-zero addresses as root).
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap();
    let visible = ["tw_timer_handler", "inet_twsk_deschedule_put"].iter().all(|name| {
        kallsyms.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 3 && f[2] == *name && f[0].chars().any(|c| c != '0')
        })
    });
    assert_eq!(caps["timewait_timer"]["available"], visible, "{caps:#}");

    // fentry: doctor reports what loading one did. This project's 6.18 machines refuse it (EPERM,
    // docs/internals/kernel-abi.md), Debian's kernels in the VM matrix allow it.
    let fentry = &caps["bpf_fentry"];
    assert!(fentry["detail"].as_str().unwrap().contains("BPF_PROG_LOAD of an fentry program"), "{fentry:#}");
    if fentry["available"] == true {
        assert!(fentry["errno"].is_null(), "{fentry:#}");
    } else {
        assert_eq!(fentry["errno"], "EPERM");
        assert_eq!(finding(&v["kernel"], "bpf_fentry")["severity"], "info");
    }

    // tracepoint: doctor says it loads, and twreset trace really attaches one.
    assert_eq!(caps["bpf_tracepoint"]["available"], true, "{caps:#}");
    // trace prints this line only after its programs are loaded and attached. (Its exit
    // status is not checked: a SIGINT that lands before trace installs its handler kills it.)
    let trace = Running::start(&["trace", "--netns", ns.path().to_str().unwrap()], "tracing TCP state transitions");
    drop(trace);

    // SOCK_DESTROY: doctor says whether TIME_WAIT sockets can be destroyed; `ss -K` agrees.
    let sd = &caps["sock_destroy_time_wait"];
    let can = sd["available"] == true;
    assert_eq!(can, kernel_at_least(6, 0), "{sd:#}");
    time_wait_to(&ns, 8081, 3);
    assert_eq!(ns.ss_state("time-wait").len(), 3);
    // `ss -K` exits 0 even when the kernel refuses.
    ns.exec(&["ss", "-K", "state", "time-wait", "dport", "=", ":8081"]);
    let left = ns.ss_state("time-wait").len();
    assert_eq!(left, if can { 0 } else { 3 }, "doctor says SOCK_DESTROY on TIME_WAIT: {can}; ss -K left {left}");
}

#[test]
fn human_output_has_sections_and_one_line_per_finding() {
    if !privileged("human_output_has_sections_and_one_line_per_finding") {
        return;
    }
    let ns = NetNs::new("doc-human");
    let dir = TempDir::new("human");
    let path = ns.path();
    let (code, out, err) =
        twreset(&["doctor", "--netns", path.to_str().unwrap(), "--sysctl-dir", dir.0.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("== kernel "), "{out}");
    assert!(out.contains(&format!("== namespace {} ({})", ns.name, path.display())), "{out}");
    assert!(out.contains("settings: ip_local_port_range="));
    let (_, v) = doctor(&ns, &dir.0, &[]);
    if v["kernel"]["capabilities"]["bpf_fentry"]["available"] == false {
        assert!(out.lines().any(|l| l.starts_with("  [info    ] fentry unavailable")), "{out}");
    }
    assert!(out.contains("paths on this kernel:\n  trace: "), "{out}");
    assert!(out.lines().any(|l| l.starts_with("  [ok      ] tcp_tw_recycle does not exist")), "{out}");
    let findings = v["kernel"]["findings"].as_array().unwrap().len() + the_ns(&v)["findings"].as_array().unwrap().len();
    assert_eq!(out.lines().filter(|l| l.starts_with("  [")).count(), findings);
}

#[test]
fn all_netns_covers_named_namespaces() {
    if !privileged("all_netns_covers_named_namespaces") {
        return;
    }
    let ns = NetNs::new("doc-all");
    ns.sysctl("net.ipv4.ip_local_port_range", "41000 41999");
    let dir = TempDir::new("all");
    let (_, out, err) = twreset(&["doctor", "--all-netns", "--json", "--sysctl-dir", dir.0.to_str().unwrap()]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {err}"));
    let list = v["namespaces"].as_array().unwrap();
    assert_eq!(list[0]["label"], "current");
    let mine = list.iter().find(|n| n["label"] == ns.name.as_str()).unwrap_or_else(|| panic!("{} missing", ns.name));
    assert_eq!(mine["settings"]["ip_local_port_range"], serde_json::json!([41000, 41999]));
    let mut cookies: Vec<u64> = list.iter().map(|n| n["cookie"].as_u64().unwrap()).collect();
    cookies.sort_unstable();
    cookies.dedup();
    assert_eq!(cookies.len(), list.len(), "each namespace reported once");
}

#[test]
fn bad_netns_is_a_usage_error() {
    if !privileged("bad_netns_is_a_usage_error") {
        return;
    }
    let (code, out, err) = twreset(&["doctor", "--netns", "/etc/hostname"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(out.is_empty());
    assert!(err.starts_with("twreset: ") && err.contains("not a network namespace"), "{err}");
}

#[test]
fn orphaned_fin_wait2_is_counted_apart_and_matches_ss() {
    if !privileged("orphaned_fin_wait2_is_counted_apart_and_matches_ss") {
        return;
    }
    let ns = NetNs::new("doc-fw2");
    // The client half-closes, the server never answers with its FIN, the client closes: an
    // orphan that tcp_close() hands to a TIME_WAIT socket in substate FIN_WAIT2.
    let _server_side = ns.run(|| {
        let l = TcpListener::bind("127.0.0.1:8090").unwrap();
        let c = TcpStream::connect("127.0.0.1:8090").unwrap();
        let (a, _) = l.accept().unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        wait_for(|| ns_state_here("fin-wait-2") == 1);
        drop(c);
        a
    });
    time_wait_to(&ns, 8091, 4);
    let fw2 = ns.ss_state("fin-wait-2").len() as u64;
    let tw = ns.ss_state("time-wait").len() as u64;
    assert_eq!((fw2, tw), (1, 4));
    let dir = TempDir::new("fw2");
    let (_, v) = doctor(&ns, &dir.0, &[]);
    let c = &the_ns(&v)["counters"];
    assert_eq!(c["fin_wait2_timewait"], fw2);
    assert_eq!(c["time_wait"], tw);
    assert_eq!(c["timewait_total"], fw2 + tw);
    assert_eq!(c["timewait_total"], ss_s_timewait(&ns));
    assert!(finding(the_ns(&v), "tcp_fin_timeout")["message"].as_str().unwrap().contains("1 such sockets now"));
}

/// Sockets in `state` in the calling thread's namespace, through sock_diag as `ss` sees them.
fn ns_state_here(state: &str) -> usize {
    let out = std::process::Command::new("ss").args(["-Htan", "state", state]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn wait_for(mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "condition not reached within 5 s");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn ipv6_destination_pressure() {
    if !privileged("ipv6_destination_pressure") {
        return;
    }
    let ns = NetNs::new("doc-v6");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40009");
    let server: SocketAddr = "[::1]:8443".parse().unwrap();
    ns.run(|| connections(server, None, 5, Closer::Client));
    assert_eq!(ns.ss_state("time-wait").len(), 5);
    let dir = TempDir::new("v6");
    let (code, v) = doctor(&ns, &dir.0, &[]);
    let n = the_ns(&v);
    let d = &n["destinations"][0];
    assert_eq!(
        (d["local"].as_str(), d["remote"].as_str(), d["remote_port"].as_u64()),
        (Some("::1"), Some("::1"), Some(8443))
    );
    assert_eq!(d["pressure_pct"], 50.0);
    let f = finding(n, "port_pressure");
    assert_eq!(f["severity"], "info");
    assert!(f["message"].as_str().unwrap().starts_with("port pressure 50% to [::1]:8443"), "{f:#}");
    assert_eq!(n["counters"]["time_wait"], 5);
    assert_eq!(code, Some(0));
}

#[test]
fn repeated_netns_reports_each_in_order() {
    if !privileged("repeated_netns_reports_each_in_order") {
        return;
    }
    let (a, b) = (NetNs::new("doc-rep-a"), NetNs::new("doc-rep-b"));
    a.sysctl("net.ipv4.ip_local_port_range", "42000 42999");
    b.sysctl("net.ipv4.ip_local_port_range", "43000 43999");
    let dir = TempDir::new("rep");
    let (pa, pb) = (a.path(), b.path());
    let (code, out, err) = twreset(&[
        "doctor",
        "--json",
        "--netns",
        pa.to_str().unwrap(),
        "--netns",
        pb.to_str().unwrap(),
        "--sysctl-dir",
        dir.0.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let list = v["namespaces"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!((list[0]["label"].as_str(), list[1]["label"].as_str()), (Some(a.name.as_str()), Some(b.name.as_str())));
    assert_eq!(list[0]["settings"]["ip_local_port_range"], serde_json::json!([42000, 42999]));
    assert_eq!(list[1]["settings"]["ip_local_port_range"], serde_json::json!([43000, 43999]));
    assert_ne!(list[0]["cookie"], list[1]["cookie"]);
}

#[test]
fn unprivileged_run_blames_privilege_not_the_kernel() {
    if !privileged("unprivileged_run_blames_privilege_not_the_kernel") {
        return;
    }
    let dir = TempDir::new("unpriv");
    let bin = twreset_tests::bin();
    // tracefs mounted (root-only) in a mount namespace of the test's own: doctor run as nobody
    // must call it there, not missing. Whether the host has it mounted does not matter.
    let script = format!(
        "umount -l /sys/kernel/tracing 2>/dev/null; mount -t tracefs nodev /sys/kernel/tracing || exit 97; \
         exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all {} doctor --json --sysctl-dir {}",
        bin.display(),
        dir.0.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    assert_ne!(out.status.code(), Some(97), "could not mount tracefs in the test's mount namespace");
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let caps = &v["kernel"]["capabilities"];
    // The kernel refuses BPF to an unprivileged user; doctor must not call that a kernel limit.
    assert_eq!(caps["bpf_tracepoint"]["available"], false);
    assert_eq!(caps["bpf_tracepoint"]["errno"], "EPERM");
    assert!(caps["bpf_fentry"]["detail"].as_str().unwrap().contains("missing privilege"), "{caps:#}");
    // tracefs is mounted (root-only), not missing.
    assert_eq!(caps["tracefs"]["available"], true, "{caps:#}");
    if kernel_at_least(6, 0) {
        assert!(caps["sock_destroy_time_wait"]["detail"].as_str().unwrap().contains("CAP_NET_ADMIN"), "{caps:#}");
    }
    // The namespace facts (sysctls, counters, sock_diag dump) need no privilege.
    assert_eq!(v["namespaces"][0]["label"], "current");
    assert!(v["namespaces"][0]["counters"]["timewait_total"].is_u64());
    assert!(v["namespaces"][0]["settings"]["ip_local_port_range"].is_array());
}

/// On a fresh machine tracefs is often not mounted: doctor says so (and how to mount it) rather
/// than calling the kernel unable.
#[test]
fn missing_tracefs_is_reported_as_not_mounted() {
    if !privileged("missing_tracefs_is_reported_as_not_mounted") {
        return;
    }
    let dir = TempDir::new("notracefs");
    let script = format!(
        "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null; \
         if grep -qw tracefs /proc/self/mountinfo; then exit 97; fi; exec {} doctor --json --sysctl-dir {}",
        twreset_tests::bin().display(),
        dir.0.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    assert_ne!(out.status.code(), Some(97), "could not unmount tracefs in the test's mount namespace");
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let t = &v["kernel"]["capabilities"]["tracefs"];
    assert_eq!(t["available"], false, "{t:#}");
    assert!(t["detail"].as_str().unwrap().contains("tracefs"), "{t:#}");
}

/// A namespace with no name (a pod's, say): a process's only, reached through
/// `/proc/PID/ns/net`. The process is killed on drop, which frees the namespace.
struct Unnamed {
    child: std::process::Child,
}

impl Unnamed {
    fn new() -> Self {
        let child = std::process::Command::new("unshare").args(["-n", "sleep", "600"]).spawn().expect("spawn unshare");
        let mine = std::fs::read_link("/proc/self/ns/net").unwrap();
        let link = format!("/proc/{}/ns/net", child.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read_link(&link).is_ok_and(|l| l != mine) {
            assert!(std::time::Instant::now() < deadline, "unshare -n: no namespace of its own within 10 s");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Self { child }
    }

    fn path(&self) -> std::path::PathBuf {
        format!("/proc/{}/ns/net", self.child.id()).into()
    }

    fn sysctl(&self, key: &str, value: &str) {
        let file = format!("/proc/sys/{}", key.replace('.', "/"));
        twreset_tests::run_in(&self.path(), || std::fs::write(&file, value))
            .unwrap_or_else(|e| panic!("{key} = {value}: {e}"));
    }
}

impl Drop for Unnamed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One port-pressure model with each namespace's own ports: a namespace without a name, whose
/// range is narrower than the host's and partly reserved, gets the pressure of its own 15 ports
/// in `tw --by dest --all-netns` (which used to fall back to the host's range there) and in
/// `doctor --all-netns`, the two agreeing.
#[test]
fn unnamed_namespace_pressure_uses_its_own_ports_in_tw_and_doctor() {
    if !privileged("unnamed_namespace_pressure_uses_its_own_ports_in_tw_and_doctor") {
        return;
    }
    let ns = Unnamed::new();
    let path = ns.path();
    let status = std::process::Command::new("nsenter")
        .args([&format!("--net={}", path.display()), "ip", "link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(status.success(), "lo up");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0");
    ns.sysctl("net.ipv4.tcp_max_tw_buckets", "262144");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40019");
    ns.sysctl("net.ipv4.ip_local_reserved_ports", "40010-40014");
    // Six client-closed connections (TIME_WAIT) and one held open (connected), to 127.0.0.1:8091.
    let server = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 8091);
    let tw = twreset_tests::run_in(&path, || connections(server, None, 6, Closer::Client));
    let held = twreset_tests::run_in(&path, || {
        let l = TcpListener::bind(server).unwrap();
        let c = TcpStream::connect(server).unwrap();
        let (a, _) = l.accept().unwrap();
        (l, c, a)
    });
    let ports: Vec<u16> = tw.iter().map(|(c, _)| c.port()).chain([held.1.local_addr().unwrap().port()]).collect();
    assert!(ports.iter().all(|p| (40000..40010).contains(p) || (40015..40020).contains(p)), "{ports:?}");
    let cookie = twreset_tests::netns_id(&path);
    let host_range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    assert_ne!(host_range.split_whitespace().collect::<Vec<_>>(), ["40000", "40019"], "the host's range differs");

    let (code, out, err) = twreset(&["tw", "--by", "dest", "--all-netns", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).expect("one JSON document");
    let rows: Vec<&Value> = v["rows"].as_array().unwrap().iter().filter(|r| r["netns_cookie"] == cookie).collect();
    assert_eq!(rows.len(), 1, "one destination in the unnamed namespace: {v:#}");
    let r = rows[0];
    assert_eq!((r["raddr"].as_str(), r["rport"].as_u64()), (Some("127.0.0.1"), Some(8091)), "{r}");
    assert_eq!((r["time_wait"].as_u64(), r["connected"].as_u64(), r["holding"].as_u64()), (Some(6), Some(1), Some(7)));
    // 40000-40019 less the five reserved: 15 ports, not the host's.
    assert_eq!(r["port_range"], 15, "{r}");
    assert_eq!(r["pressure"], 0.4667, "{r}");

    let dir = TempDir::new("unnamed");
    let (_, out, err) = twreset(&["doctor", "--json", "--all-netns", "--sysctl-dir", dir.0.to_str().unwrap()]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("doctor JSON: {e}\nstderr: {err}"));
    let list: Vec<&Value> = v["namespaces"].as_array().unwrap().iter().filter(|n| n["cookie"] == cookie).collect();
    assert_eq!(list.len(), 1, "the unnamed namespace once: {v:#}");
    let n = list[0];
    assert_eq!(n["ports_per_destination"], 15);
    let d = &n["destinations"][0];
    assert_eq!((d["remote"].as_str(), d["remote_port"].as_u64()), (Some("127.0.0.1"), Some(8091)), "{d}");
    assert_eq!((d["sockets"].as_u64(), d["time_wait"].as_u64()), (Some(7), Some(6)), "{d}");
    assert_eq!(d["pressure_pct"], 46.7, "7 of 15 ports, as tw's 0.4667");
    drop(held);
}
