//! Build steps: the eBPF object on the pinned nightly, the release binary on the pinned stable,
//! and the commands that use them (run, test, lint, bench).

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::bootstrap::{Tools, run};

/// Environment variable through which `twreset/build.rs` learns where the eBPF object is.
pub const OBJ_ENV: &str = "TWRESET_EBPF_OBJ";

/// `CARGO_TARGET_DIR` if set (parallel work trees), else `<root>/target`.
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}

fn path_with(dir: &Path) -> String {
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default())
}

pub fn cargo(toolchain: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", toolchain, "cargo"]);
    // The outer `cargo xtask` (default stable) leaks these into children; they would pin the wrong rustc.
    for var in ["RUSTC", "RUSTDOC", "CARGO", "RUSTUP_TOOLCHAIN", "CARGO_MANIFEST_DIR"] {
        cmd.env_remove(var);
    }
    cmd
}

/// Build the eBPF object in release mode (debug builds upset the verifier) and return its path.
pub fn ebpf(t: &Tools) -> Result<PathBuf> {
    run(cargo(&t.nightly)
        .current_dir(t.root.join("twreset-ebpf"))
        .args(["build", "--release", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .env("PATH", path_with(&t.linker_bin))
        .env("CARGO_TARGET_DIR", target_dir(&t.root))
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf"))
    .context("building the eBPF object")?;
    Ok(target_dir(&t.root).join("bpfel-unknown-none/release/twreset"))
}

/// Build the self-contained release binary and return its path.
pub fn release(t: &Tools) -> Result<PathBuf> {
    let obj = ebpf(t)?;
    run(cargo(&t.stable)
        .current_dir(&t.root)
        .args(["build", "--release", "--package", "twreset", "--bin", "twreset"])
        .env(OBJ_ENV, &obj))
    .context("building twreset")?;
    Ok(target_dir(&t.root).join("release/twreset"))
}

pub fn run_tool(t: &Tools, args: &[String]) -> Result<()> {
    let bin = release(t)?;
    let status = Command::new(&bin).args(args).status().with_context(|| format!("running {}", bin.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

/// The bench (the `twreset-bench` crate, with the churn generator) built on the pinned stable
/// next to the binary it measures (`TWRESET_BENCH_BIN` names another one, used as it is), the
/// Debian packages only the bench uses, then the bench itself with `args`: xtask's process
/// becomes the bench's, so Ctrl-C reaches it as before.
pub fn bench(t: &Tools, kernel: Option<&str>, args: &[String]) -> Result<()> {
    let help = args.iter().any(|a| a == "-h" || a == "--help");
    let twreset = match std::env::var_os("TWRESET_BENCH_BIN") {
        Some(p) => PathBuf::from(p),
        None if help => target_dir(&t.root).join("release/twreset"),
        None => release(t)?,
    };
    run(cargo(&t.stable).current_dir(&t.root).args(["build", "--release", "--package", "twreset-bench"]))
        .context("building the bench")?;
    if !help {
        crate::bootstrap::ensure_bench_packages();
    }
    let bin = target_dir(&t.root).join("release/twreset-bench");
    if let Some(k) = kernel {
        return crate::vm_bench::bench(t, k, &twreset, &bin, args);
    }
    let err = Command::new(&bin).args(args).env("TWRESET_BENCH_BIN", &twreset).exec();
    Err(err).with_context(|| format!("running {}", bin.display()))
}

/// Lints (rustfmt, clippy with warnings denied), unit tests, then integration tests against the
/// real binary and the real kernel.
pub fn test(t: &Tools, extra: &[String]) -> Result<()> {
    let bin = release(t)?;
    if extra.is_empty() {
        lint(t).context("lints failed")?;
    }
    let obj = target_dir(&t.root).join("bpfel-unknown-none/release/twreset");
    let mut cmd = cargo(&t.stable);
    cmd.current_dir(&t.root)
        .args(["test", "--release", "--workspace", "--exclude", "twreset-ebpf", "--no-fail-fast", "--"])
        .args(extra)
        .env(OBJ_ENV, &obj)
        .env("TWRESET_BIN", &bin);
    run(&mut cmd).context("tests failed")
}

pub fn lint(t: &Tools) -> Result<()> {
    crate::deps::check(&t.root.join("twreset"))?;
    crate::layout::check(&t.root)?;
    let obj = ebpf(t)?;
    run(cargo(&t.stable).current_dir(&t.root).args(["fmt", "--all", "--check"]))?;
    run(cargo(&t.stable)
        .current_dir(&t.root)
        .args(["clippy", "--workspace", "--exclude", "twreset-ebpf", "--all-targets", "--", "-D", "warnings"])
        .env(OBJ_ENV, &obj))
}
