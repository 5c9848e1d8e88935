//! Fresh-machine set-up: pinned toolchains, rust-src, bpf-linker built against the nightly's own
//! libLLVM, and Debian packages. Idempotent: a second run only checks.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// What the build steps need to know once the machine is ready.
pub struct Tools {
    pub root: PathBuf,
    pub stable: String,
    pub nightly: String,
    /// Directory holding `bpf-linker`, put first on PATH for the eBPF build.
    pub linker_bin: PathBuf,
}

/// Debian packages the tests and the tool's runtime checks use: `ip`/`ss` (iproute2), `tmux` (the
/// `top` screen test), `setpriv` (util-linux, the unprivileged-user test), `bpftrace` (bench peer),
/// `podman`, `runc` and `busybox-static` (the real-container tests in tests/tests/identity run a
/// container from a busybox root filesystem with runc; crun refuses hybrid cgroup hosts),
/// `promtool` (prometheus: the alert rules in deploy/prometheus; the agent test runs its server), `systemd-analyze` (systemd: the unit
/// in deploy/systemd), `python3` and `pip3` (python3-pip: [`ensure_python_packages`]).
/// Each as (package, a command it installs).
const DEB_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ss"),
    ("tmux", "tmux"),
    ("util-linux", "setpriv"),
    ("bpftrace", "bpftrace"),
    ("podman", "podman"),
    ("runc", "runc"),
    ("busybox-static", "busybox"),
    ("prometheus", "promtool"),
    ("systemd", "systemd-analyze"),
    ("python3", "python3"),
    ("python3-pip", "pip3"),
];

/// Services Debian starts when their package is installed, which the tests do not want running: a
/// Prometheus server on :9090 (the suite starts its own, on its own port, when it needs one). Stopped
/// and disabled only right after this bootstrap installed the package, and only under systemd.
const DEB_SERVICES_NOT_WANTED: &[(&str, &str)] =
    &[("prometheus", "prometheus.service"), ("prometheus-node-exporter", "prometheus-node-exporter.service")];

/// PyPI packages the tests use, as (module to import, requirement to install): `kubernetes-validate`
/// validates deploy/kubernetes offline against the API schemas it bundles (1.25 to 1.37 in 1.37.0,
/// the versions tests/tests/deploy.rs names), and brings PyYAML.
const PYPI_PACKAGES: &[(&str, &str)] = &[("kubernetes_validate", "kubernetes-validate==1.37.0")];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

fn pinned_channel(file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let doc: toml::Table = text.parse().with_context(|| format!("parsing {}", file.display()))?;
    doc.get("toolchain")
        .and_then(|t| t.get("channel"))
        .and_then(|c| c.as_str())
        .map(str::to_owned)
        .with_context(|| format!("{}: no toolchain.channel", file.display()))
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Built tools live in cargo's home (shared by every clone and work tree), not in the checkout.
pub fn tools_dir() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("twreset-tools")
}

fn toolchain_installed(name: &str) -> bool {
    Command::new("rustup")
        .args(["run", name, "rustc", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn ensure_toolchain(name: &str, components: &[&str]) -> Result<()> {
    if toolchain_installed(name) {
        let have = output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", name]))?;
        if components.iter().all(|c| have.lines().any(|l| l.starts_with(c))) {
            return Ok(());
        }
    }
    eprintln!("xtask: installing toolchain {name} with {components:?}");
    let mut cmd = Command::new("rustup");
    cmd.args(["toolchain", "install", name, "--profile", "minimal"]);
    for c in components {
        cmd.args(["--component", c]);
    }
    run(&mut cmd)
}

/// Build bpf-linker against the pinned nightly's own libLLVM (no matching LLVM exists in Debian).
fn ensure_bpf_linker(root: &Path, nightly: &str) -> Result<PathBuf> {
    let tools = tools_dir().join(format!("bpf-linker-{nightly}"));
    let bin = tools.join("bin");
    let linker = bin.join("bpf-linker");
    if linker.exists() && Command::new(&linker).arg("--version").output().map(|o| o.status.success()).unwrap_or(false) {
        return Ok(bin);
    }
    let sysroot = PathBuf::from(output(Command::new("rustup").args(["run", nightly, "rustc", "--print", "sysroot"]))?);
    let libdir = sysroot.join("lib");
    let llvm = std::fs::read_dir(&libdir)
        .with_context(|| format!("listing {}", libdir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
        .with_context(|| format!("no libLLVM.so.* in {}", libdir.display()))?;
    let prefix = tools.join("llvm-prefix");
    let plib = prefix.join("lib");
    std::fs::create_dir_all(&plib)?;
    for name in ["libLLVM.so".to_owned(), llvm.file_name().unwrap().to_string_lossy().into_owned()] {
        let link = plib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!("xtask: building bpf-linker against {} (about a minute, once)", llvm.display());
    let stable = pinned_channel(&root.join("twreset/rust-toolchain.toml"))?;
    run(Command::new("rustup")
        .args(["run", &stable, "cargo", "install", "--locked", "bpf-linker", "--version", "0.13.0", "--root"])
        .arg(&tools)
        .env("LLVM_PREFIX", &prefix)
        .env("RUSTFLAGS", format!("-C link-args=-Wl,-rpath,{}", libdir.display())))?;
    Ok(bin)
}

/// Debian packages only the bench uses, installed by it and only when missing: `perf` (linux-perf)
/// samples what each tracer costs the host. The bench goes on without them (those figures n/a).
const BENCH_DEB_PACKAGES: &[(&str, &str)] =
    &[("linux-perf", "perf"), ("prometheus-node-exporter", "prometheus-node-exporter")];

pub fn ensure_bench_packages() {
    if let Err(e) = ensure_packages(BENCH_DEB_PACKAGES) {
        eprintln!("xtask: could not install {BENCH_DEB_PACKAGES:?}: {e:#}");
    }
}

fn ensure_debian_packages() -> Result<()> {
    ensure_packages(DEB_PACKAGES)
}

pub fn ensure_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, bin)| {
            Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
        })
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages {missing:?}");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    for (pkg, service) in DEB_SERVICES_NOT_WANTED {
        if missing.contains(pkg) && Path::new("/run/systemd/system").is_dir() {
            eprintln!("xtask: stopping and disabling {service}, started by installing {pkg}");
            if let Err(e) = run(Command::new("systemctl").args(["disable", "--now", service])) {
                eprintln!("xtask: could not stop {service}: {e:#}");
            }
        }
    }
    Ok(())
}

fn python_imports(module: &str) -> bool {
    Command::new("python3").args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success())
}

/// PyPI packages ([`PYPI_PACKAGES`]) for the python3 on PATH, installed only when their module does not
/// import. A Debian python3 refuses system-wide pip installs (PEP 668, "externally-managed-environment"):
/// then the install is repeated with `--break-system-packages`.
fn ensure_python_packages() -> Result<()> {
    for (module, requirement) in PYPI_PACKAGES {
        if python_imports(module) {
            continue;
        }
        eprintln!("xtask: installing PyPI package {requirement}");
        let pip = || {
            let mut cmd = Command::new("python3");
            cmd.args(["-m", "pip", "install", "--quiet", requirement]);
            cmd
        };
        let out = pip().output().with_context(|| format!("spawning {:?}", pip()))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if !err.contains("externally-managed-environment") {
                bail!("{:?} failed: {}", pip(), err.trim());
            }
            run(pip().arg("--break-system-packages"))?;
        }
        if !python_imports(module) {
            bail!("{requirement} installed, but python3 still cannot import {module}");
        }
    }
    Ok(())
}

pub fn all() -> Result<Tools> {
    let root = workspace_root();
    let stable = pinned_channel(&root.join("twreset/rust-toolchain.toml"))?;
    let nightly = pinned_channel(&root.join("twreset-ebpf/rust-toolchain.toml"))?;
    ensure_toolchain(&stable, &["clippy", "rustfmt"])?;
    ensure_toolchain(&nightly, &["rust-src"])?;
    let linker_bin = ensure_bpf_linker(&root, &nightly)?;
    ensure_debian_packages()?;
    ensure_python_packages()?;
    Ok(Tools { root, stable, nightly, linker_bin })
}
