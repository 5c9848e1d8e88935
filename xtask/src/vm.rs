//! `cargo xtask test --kernel 5.10|6.1|6.12|all`: run the integration suite inside qemu VMs on
//! Debian's kernels, with the host's root filesystem (virtme-ng over 9p), against the very
//! release binary and test binaries built here.
//!
//! Kernels are fetched with `apt-get download` through a private apt configuration (the host's
//! sources are never touched) and unpacked with `dpkg -x` under `$CARGO_HOME/twreset-tools/kernels`
//! (nothing goes into /boot). The guest finds their modules there (virtme-ng links
//! `/lib/modules/<release>` to the unpacked tree; the guest mounts tmpfs over /var/cache, so the
//! cache must not live there). KVM is used when a guest boots under it within a short timeout,
//! else qemu's TCG. One VM at a time, under `nice`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    bootstrap::{Tools, run},
    build, matrix,
};

/// A Debian kernel of the matrix.
#[derive(Debug)]
pub struct Kernel {
    /// What `--kernel` accepts.
    pub short: &'static str,
    /// `uname -r` in the guest, and the package `linux-image-<release>`.
    pub release: &'static str,
    /// Debian suite that has the package.
    pub suite: &'static str,
}

pub const KERNELS: &[Kernel] = &[
    Kernel { short: "5.10", release: "5.10.0-32-amd64", suite: "bullseye" },
    Kernel { short: "6.1", release: "6.1.0-47-amd64", suite: "bookworm" },
    Kernel { short: "6.12", release: "6.12.85+deb12-amd64", suite: "bookworm-backports" },
];

/// Guest size: the suite's namespaces and socket churn fit in 2 GiB; 2 vCPUs like the host under
/// KVM. Under TCG one: with two, qemu's multi-threaded TCG let a vCPU run a kernel text that the
/// other was live-patching (the static key a cgroup connect hook turns on), and Debian's 6.12
/// died on the breakpoint of the patch ("Oops: int3" in `tcp_v6_pre_connect`): a fault of the
/// emulator, not of the kernel or of twreset, and not seen with one vCPU.
const GUEST_MEMORY: &str = "2G";
const GUEST_CPUS_KVM: &str = "2";
const GUEST_CPUS_TCG: &str = "1";
/// A whole kernel's run, host side (TCG is 10-40x slower than native).
const VM_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// One test binary inside the guest.
const BINARY_TIMEOUT_S: u32 = 20 * 60;
/// A KVM guest boots in seconds; a hung one (nested virtualisation not working) is given up on.
const KVM_PROBE_TIMEOUT_S: u32 = 40;

/// The kernels `--kernel` names (`all`, or a comma-separated list).
pub fn select(spec: &str) -> Result<Vec<&'static Kernel>> {
    if spec == "all" {
        return Ok(KERNELS.iter().collect());
    }
    spec.split(',')
        .map(|s| {
            KERNELS.iter().find(|k| k.short == s || k.release == s).with_context(|| {
                let known: Vec<_> = KERNELS.iter().map(|k| k.short).collect();
                format!("--kernel {s}: unknown kernel (known: {}, or all)", known.join(", "))
            })
        })
        .collect()
}

fn kernels_dir() -> PathBuf {
    crate::bootstrap::tools_dir().join("kernels")
}

/// Debian packages and the PyPI tool a VM run needs, installed only when missing.
pub(crate) fn ensure_vm_tools() -> Result<()> {
    crate::bootstrap::ensure_packages(&[("qemu-system-x86", "qemu-system-x86_64"), ("kmod", "depmod")])?;
    if !have("vng") {
        eprintln!("xtask: installing virtme-ng (pip)");
        run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "virtme-ng"]))
            .context("pip install virtme-ng")?;
    }
    if !have("vng") {
        bail!("virtme-ng installed but `vng` is not on PATH");
    }
    Ok(())
}

fn have(bin: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {bin}")]).output().is_ok_and(|o| o.status.success())
}

/// apt-get with a private configuration: our own sources list, lists and cache directories.
fn apt(dir: &Path) -> Command {
    let mut cmd = Command::new("apt-get");
    for (k, v) in [
        ("Dir::Etc::SourceList", dir.join("sources.list")),
        ("Dir::Etc::SourceParts", dir.join("sources.list.d")),
        ("Dir::State::Lists", dir.join("lists")),
        ("Dir::Cache", dir.join("cache")),
    ] {
        cmd.arg("-o").arg(format!("{k}={}", v.display()));
    }
    cmd.args(["-o", "Acquire::Languages=none", "-o", "APT::Architectures=amd64", "-o", "APT::Sandbox::User=root"]);
    cmd
}

/// Download and unpack the kernel package once; returns the unpacked root.
pub(crate) fn fetch(k: &Kernel) -> Result<PathBuf> {
    let base = kernels_dir();
    let root = base.join("unpacked").join(k.release);
    let done = root.join(".unpacked");
    if done.exists() {
        return Ok(root);
    }
    let aptdir = base.join("apt");
    for d in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
        std::fs::create_dir_all(aptdir.join(d))?;
    }
    let key = "/usr/share/keyrings/debian-archive-keyring.gpg";
    let sources: String = KERNELS
        .iter()
        .map(|k| format!("deb [signed-by={key}] http://deb.debian.org/debian {} main\n", k.suite))
        .collect();
    let list = aptdir.join("sources.list");
    if std::fs::read_to_string(&list).ok().as_deref() != Some(&sources) {
        std::fs::write(&list, &sources)?;
        let _ = std::fs::remove_file(aptdir.join("lists/.updated"));
    }
    if !aptdir.join("lists/.updated").exists() {
        eprintln!("xtask: apt-get update (private sources: {})", list.display());
        run(apt(&aptdir).args(["update", "-qq"]))?;
        std::fs::write(aptdir.join("lists/.updated"), "")?;
    }
    let debs = base.join("debs");
    std::fs::create_dir_all(&debs)?;
    let pkg = format!("linux-image-{}", k.release);
    let find = || {
        std::fs::read_dir(&debs)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{pkg}_"))))
    };
    if find().is_none() {
        eprintln!("xtask: downloading {pkg} ({})", k.suite);
        run(apt(&aptdir).current_dir(&debs).args(["download", "-qq", &pkg]))?;
    }
    let deb = find().with_context(|| format!("{pkg}: downloaded .deb not found in {}", debs.display()))?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    std::fs::write(&done, "")?;
    Ok(root)
}

pub(crate) fn kernel_image(root: &Path, k: &Kernel) -> PathBuf {
    root.join("boot").join(format!("vmlinuz-{}", k.release))
}

/// `vng` booting `kimg` with the host's root over 9p, running `script` (a file path).
pub(crate) fn vng(kimg: &Path, kvm: bool, shared: &Path, script: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "10", "vng", "--run"]).arg(kimg);
    let cpus = if kvm { GUEST_CPUS_KVM } else { GUEST_CPUS_TCG };
    cmd.args(["--force-9p", "--cpus", cpus, "--memory", GUEST_MEMORY, "--verbose"]);
    if !kvm {
        cmd.arg("--disable-kvm");
    }
    cmd.arg("--rwdir").arg(shared).arg("--cwd").arg(cwd);
    cmd.arg("--exec").arg(format!("sh {}", script.display()));
    cmd
}

/// Run `cmd` with a wall-clock limit; its output goes to `log`. Ok(None) on timeout (killed).
pub(crate) fn run_limited(cmd: &mut Command, limit: Duration, log: &Path) -> Result<Option<bool>> {
    let f = std::fs::File::create(log)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .process_group(0)
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st.success()));
        }
        if t0.elapsed() > limit {
            // The whole group: vng, qemu and their helpers (a group we made, by its id).
            // SAFETY: kill(2) on the process group we created above.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

use std::os::unix::process::CommandExt;

/// KVM or TCG: KVM only if a guest boots under it within [`KVM_PROBE_TIMEOUT_S`]. The verdict is
/// cached per host kernel; `TWRESET_VM_ACCEL=kvm|tcg` overrides it.
pub(crate) fn use_kvm(kimg: &Path, work: &Path) -> Result<bool> {
    match std::env::var("TWRESET_VM_ACCEL").as_deref() {
        Ok("kvm") => return Ok(true),
        Ok("tcg") => return Ok(false),
        _ => {}
    }
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return Ok(false);
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cache = kernels_dir().join(format!("accel-{}", host.trim()));
    if let Ok(v) = std::fs::read_to_string(&cache) {
        return Ok(v.trim() == "kvm");
    }
    let script = work.join("kvm-probe.sh");
    let mark = work.join("kvm-probe.ok");
    let _ = std::fs::remove_file(&mark);
    std::fs::write(&script, format!("echo ok > {}\n", mark.display()))?;
    eprintln!("xtask: trying KVM ({KVM_PROBE_TIMEOUT_S} s at most)");
    let _ = run_limited(
        &mut vng(kimg, true, work, &script, work),
        Duration::from_secs(KVM_PROBE_TIMEOUT_S.into()),
        &work.join("kvm-probe.log"),
    )?;
    let kvm = mark.exists();
    eprintln!("xtask: {}", if kvm { "KVM works" } else { "KVM guest did not boot in time: using TCG (slow)" });
    std::fs::write(&cache, if kvm { "kvm" } else { "tcg" })?;
    Ok(kvm)
}

/// Build the release binary and the test binaries (release profile); returns their paths.
fn build_tests(t: &Tools) -> Result<(PathBuf, Vec<(String, PathBuf)>)> {
    let bin = build::release(t)?;
    let obj = build::target_dir(&t.root).join("bpfel-unknown-none/release/twreset");
    let out = build::cargo(&t.stable)
        .current_dir(&t.root)
        .args(["test", "--release", "--no-run", "--message-format=json-render-diagnostics"])
        .args(["--package", "twreset-tests", "--package", "twreset", "--lib", "--tests"])
        .env(build::OBJ_ENV, &obj)
        .stderr(Stdio::inherit())
        .output()
        .context("building the test binaries")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(exe), Some(name)) = (v["executable"].as_str(), v["target"]["name"].as_str()) else { continue };
        if v["profile"]["test"].as_bool() == Some(true) {
            let pkg = v["package_id"].as_str().unwrap_or_default();
            let kind = v["target"]["kind"][0].as_str().unwrap_or("test");
            let label = match (pkg.contains("twreset-tests"), kind) {
                (true, "test") => name.to_owned(),
                // The tool's lib unit tests (filtered to those reading the kernel, see
                // UNIT_ON_KERNEL); its integration tests (table memory), the binary's and the
                // harness's unit tests do not depend on the kernel.
                (false, "lib") => "twreset-lib-unit".to_owned(),
                _ => continue,
            };
            bins.push((label, PathBuf::from(exe)));
        }
    }
    bins.sort();
    bins.dedup();
    if bins.is_empty() {
        bail!("cargo built no test binaries");
    }
    Ok((bin, bins))
}

/// Scale tests left to the host suite: under TCG they take many minutes and measure the VM, not
/// the kernel (the host runs them on every `cargo xtask test`).
pub const VM_SKIP: &[(&str, &str)] =
    &[("churn_to_other_peers_during_a_large_kill", "20,000 TIME_WAIT sockets plus churn: over 10 minutes under TCG")];

/// Test binaries that check no kernel behaviour (the deploy files against systemd, promtool and
/// the Kubernetes schemas, tools that live on the host): the host suite runs them, VMs do not.
pub const HOST_ONLY: &[&str] = &["deploy"];

/// Which tests a VM runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VmSet {
    /// Every test binary, except the scale tests of [`VM_SKIP`] and the binaries of [`HOST_ONLY`].
    Full,
    /// [`CI_SET`]: loads every program and checks every command against `ss`, in CI's budget.
    Ci,
}

/// The CI set: per test binary, the tests it runs (exact names). Together they load every eBPF
/// program (state tracepoint, sock_ops, connect hooks where the kernel has them, timer programs,
/// both iterators) and check trace, tw, top, kill (SOCK_DESTROY and RST), doctor, the agent (its
/// metrics through a real Prometheus, its API, auto-relief, pod labels) and the CLI's errors
/// against `ss` and the kernel's counters.
pub const CI_SET: &[(&str, &[&str])] = &[
    (
        "trace",
        &[
            "reports_exact_transitions_of_own_sockets_and_nothing_from_bystanders",
            "sockets_older_than_the_trace_are_handed_to_sock_ops_and_reported_once",
        ],
    ),
    ("lifecycle", &["sigterm_and_sigint_exit_0_with_summary_and_detach"]),
    (
        "timewait",
        &[
            "creation_matches_ss_per_peer_both_sides_both_families",
            "early_removal_causes_sock_destroy_new_syn_and_reuse",
        ],
    ),
    ("tw", &["tw_json_equals_ss_per_peer"]),
    ("tw_live", &["early_removals_are_recorded_by_cause"]),
    (
        "kill",
        &[
            "kill_ipv6",
            "established_survive_default_and_die_with_state_established",
            "rst::rst_kills_time_wait_with_exact_sequence",
        ],
    ),
    ("top", &["top_shows_peers_regroups_and_restores_the_terminal"]),
    ("doctor", &["capability_probes_match_what_the_kernel_does", "good_sysctls_give_ok_findings_and_exit_0"]),
    ("cli_errors", &["usage_errors_exit_2"]),
    // The agent: a real Prometheus scrape equal to `ss` per peer and namespace (namespaces made
    // and deleted while it runs), and SIGTERM leaving no program behind; a kill through its API
    // equal to a direct one; a relief rule that keeps a client going; pod and container labels.
    (
        "agent",
        &[
            "agent_prometheus_answers_equal_ss_per_peer_and_namespace",
            "agent_sigterm_exits_0_and_leaves_nothing_behind",
        ],
    ),
    ("api", &["api_kill_through_agent_and_direct_agree"]),
    ("relief", &["relief_enforce_rule_keeps_the_client_going_and_spares_bystanders_and_denied"]),
    ("identity", &["k8s::a_kubernetes_shaped_node_is_labelled_selected_and_kept"]),
    ("twreset-lib-unit", &[]),
];

/// The tool's unit tests that read the running kernel (BTF offsets and tracepoint prototypes,
/// namespace identity, kallsyms, the RST iterator's offsets, sock_diag): the only ones whose
/// outcome can differ between kernels, so the only ones a VM runs (name prefixes).
const UNIT_ON_KERNEL: &[&str] = &["kernel::", "kill::rst::", "probe::", "diag::"];

/// Order in the guest: the kernel-dependent commands first, so a timeout costs the least.
const ORDER: &[&str] = &[
    "trace",
    "lifecycle",
    "timewait",
    "tw",
    "tw_live",
    "kill",
    "top",
    "doctor",
    "cli_errors",
    "agent",
    "api",
    "relief",
    "identity",
    "twreset-lib-unit",
];

fn rank(label: &str) -> usize {
    ORDER.iter().position(|o| *o == label).unwrap_or(ORDER.len())
}

/// The guest's script: run every test binary with a limit, results into `out`, then a marker.
fn guest_script(out: &Path, bin: &Path, bins: &[(String, PathBuf)], extra: &[String], set: VmSet, kvm: bool) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut extra: Vec<String> = extra.iter().map(|a| q(a)).collect();
    for (name, _) in VM_SKIP {
        extra.push(format!("--skip {}", q(name)));
    }
    let mut bins: Vec<&(String, PathBuf)> = match set {
        VmSet::Full => bins.iter().filter(|(l, _)| !HOST_ONLY.contains(&l.as_str())).collect(),
        VmSet::Ci => bins.iter().filter(|(l, _)| CI_SET.iter().any(|(b, _)| b == l)).collect(),
    };
    bins.sort_by_key(|(label, _)| rank(label));
    let mut s = String::from("#!/bin/sh\n# Generated by cargo xtask test --kernel; runs inside the VM.\n");
    s += &format!(
        "OUT={}\nexport CI=true TWRESET_BIN={}\n",
        q(&out.display().to_string()),
        q(&bin.display().to_string())
    );
    // Under TCG everything is 10-40x slower: the harness's waits for the tool grow accordingly.
    s += &format!("export TWRESET_TEST_SLOWDOWN={}\n", if kvm { 1 } else { 5 });
    s += "uname -r > \"$OUT/uname\"\n";
    s += "for m in tcp_diag inet_diag udp_diag; do modprobe $m 2>/dev/null; done\n";
    s += "\"$TWRESET_BIN\" doctor --json > \"$OUT/doctor.json\" 2> \"$OUT/doctor.err\"\n";
    for (label, path) in bins {
        let log = format!("\"$OUT/{label}.log\"");
        let mut extra = extra.clone();
        if let Some((_, names)) = CI_SET.iter().find(|(b, _)| b == label).filter(|_| set == VmSet::Ci)
            && !names.is_empty()
        {
            extra.extend(names.iter().map(|n| q(n)));
            extra.push("--exact".into());
        }
        if label == "twreset-lib-unit" {
            extra.extend(UNIT_ON_KERNEL.iter().map(|n| q(n)));
        }
        s += &format!(
            "t0=$(date +%s); timeout {BINARY_TIMEOUT_S} {} --test-threads=1 {} > {log} 2>&1; rc=$?; t1=$(date +%s)\n",
            q(&path.display().to_string()),
            extra.join(" ")
        );
        s += &format!("echo \"{label} $rc $((t1 - t0))\" >> \"$OUT/status\"\n");
    }
    s += "echo done > \"$OUT/finished\"\n";
    s
}

/// Run the suite on each kernel, one VM at a time; one summary line per kernel. Fails when any
/// kernel's run failed or could not run.
pub fn test(t: &Tools, spec: &str, set: VmSet, extra: &[String]) -> Result<()> {
    let kernels = select(spec)?;
    ensure_vm_tools()?;
    let (bin, bins) = build_tests(t)?;
    let vmdir = build::target_dir(&t.root).join("vm");
    let mut lines = Vec::new();
    let mut ok = true;
    let mut kvm = None;
    for k in kernels {
        let root = fetch(k)?;
        let kimg = kernel_image(&root, k);
        let out = vmdir.join(k.release);
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out)?;
        let kvm = match kvm {
            Some(v) => v,
            None => *kvm.insert(use_kvm(&kimg, &out)?),
        };
        let script = out.join("run.sh");
        std::fs::write(&script, guest_script(&out, &bin, &bins, extra, set, kvm))?;
        eprintln!("xtask: {} ({}): booting ({}), {} test binaries", k.short, k.release, accel(kvm), bins.len());
        let t0 = Instant::now();
        let status = run_limited(&mut vng(&kimg, kvm, &out, &script, &t.root), VM_TIMEOUT, &out.join("console.log"))?;
        let wall = t0.elapsed();
        let res = matrix::collect(k, &out, wall, accel(kvm));
        let line = match (&res, status) {
            (Ok(r), _) => r.summary_line(),
            (Err(e), None) => format!("{} {}: VM timed out after {} s: {e:#}", k.short, k.release, wall.as_secs()),
            (Err(e), Some(_)) => format!("{} {}: the guest could not run the tests: {e:#}", k.short, k.release),
        };
        eprintln!("xtask: {line}");
        ok &= res.as_ref().is_ok_and(|r| r.failed == 0);
        if let Ok(r) = res
            && extra.is_empty()
        {
            matrix::save(&t.root, &r, if set == VmSet::Ci { "ci" } else { "full" })?;
        }
        lines.push(line);
    }
    if extra.is_empty() {
        matrix::render(&t.root)?;
    }
    println!("kernel matrix:");
    for l in &lines {
        println!("  {l}");
    }
    if !ok {
        bail!("kernel matrix failed (logs under {})", vmdir.display());
    }
    Ok(())
}

fn accel(kvm: bool) -> &'static str {
    if kvm { "kvm" } else { "tcg" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_kernels() {
        assert_eq!(select("all").unwrap().len(), KERNELS.len());
        let two = select("5.10,6.12").unwrap();
        assert_eq!((two[0].release, two[1].release), ("5.10.0-32-amd64", "6.12.85+deb12-amd64"));
        assert!(select("4.19").unwrap_err().to_string().contains("known: 5.10, 6.1, 6.12"));
    }

    #[test]
    fn script_runs_every_binary_and_marks_the_end() {
        let s = guest_script(
            Path::new("/o"),
            Path::new("/b/twreset"),
            &[("kill".into(), PathBuf::from("/t/kill-1")), ("tw".into(), PathBuf::from("/t/tw-2"))],
            &["it's".into()],
            VmSet::Full,
            false,
        );
        assert!(s.contains("'/t/kill-1' --test-threads=1 'it'\\''s' --skip"), "{s}");
        assert!(s.find("/t/tw-2").unwrap() < s.find("/t/kill-1").unwrap(), "tw runs before kill: {s}");
        assert!(s.contains("echo \"tw $rc"), "{s}");
        assert!(s.trim_end().ends_with("echo done > \"$OUT/finished\""), "{s}");
        let with_deploy = [("deploy".into(), PathBuf::from("/t/deploy-4")), ("tw".into(), PathBuf::from("/t/tw-2"))];
        let full = guest_script(Path::new("/o"), Path::new("/b"), &with_deploy, &[], VmSet::Full, false);
        assert!(
            !full.contains("/t/deploy-4") && full.contains("/t/tw-2"),
            "host-only binaries stay on the host: {full}"
        );
        let bins = [("kill".into(), PathBuf::from("/t/kill-1")), ("lib".into(), PathBuf::from("/t/lib-3"))];
        let ci = guest_script(Path::new("/o"), Path::new("/b"), &bins, &[], VmSet::Ci, false);
        assert!(ci.contains("'kill_ipv6'") && ci.contains("--exact"), "{ci}");
        assert!(!ci.contains("/t/lib-3"), "binaries outside the CI set do not run: {ci}");
    }
}
