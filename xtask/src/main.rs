//! Project automation: bootstrap a fresh machine, build the eBPF object and the binary, run, test, bench.
//!
//! Builds on the machine's default stable (1.95); installs and invokes the pinned toolchains itself.

mod bootstrap;
mod build;
mod deps;
mod layout;
mod matrix;
mod mounts;
mod vm;
mod vm_bench;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "twreset build, run and test automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install pinned toolchains, rust-src, bpf-linker and the Debian packages the tests need.
    Bootstrap,
    /// Build the eBPF object only.
    BuildEbpf,
    /// Build the self-contained release binary target/release/twreset (eBPF embedded).
    Build,
    /// Build, then run target/release/twreset with the given arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, then run the whole test suite (unit + integration, real kernel).
    Test {
        /// Run the integration suite in qemu VMs on Debian kernels instead of on this machine's
        /// kernel: 5.10, 6.1, 6.12, a comma-separated list, or all (see docs/internals/kernels.md).
        #[arg(long, value_name = "KERNEL")]
        kernel: Option<String>,
        /// With --kernel: every test (full, minus scale tests) or the CI set (ci).
        #[arg(long, value_enum, default_value = "full", requires = "kernel")]
        vm_set: vm::VmSet,
        /// Extra arguments passed to the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Render docs/internals/kernels.md's kernel x command tables from docs/kernels/{ci,full}/*.json (what
    /// `test --kernel` does after a run).
    KernelTable,
    /// Lints: rustfmt check and clippy with warnings denied, userspace and eBPF.
    Lint,
    /// Benchmarks against the peers (bpftrace, ss -K, node-exporter): builds twreset and the
    /// `twreset-bench` crate, then runs it with these arguments (`bench --help` lists them; see
    /// docs/guide/bench.md).
    #[command(disable_help_flag = true)]
    Bench {
        /// Run the bench inside a qemu VM on a Debian kernel of the matrix (5.10, 6.1, 6.12; see
        /// docs/internals/kernels.md), by default its tracing section only (`TWRESET_BENCH_ONLY`).
        #[arg(long, value_name = "KERNEL")]
        kernel: Option<String>,
        /// Arguments of the bench binary, e.g. `--quick`, `--agent-sockets 1000000`, `--soak 30m`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Bootstrap => bootstrap::all().map(|_| ()),
        Cmd::BuildEbpf => bootstrap::all().and_then(|t| build::ebpf(&t).map(|_| ())),
        Cmd::Build => bootstrap::all().and_then(|t| build::release(&t).map(|_| ())),
        Cmd::Run { args } => bootstrap::all().and_then(|t| build::run_tool(&t, &args)),
        Cmd::Test { kernel: Some(k), vm_set, args } => bootstrap::all().and_then(|t| vm::test(&t, &k, vm_set, &args)),
        Cmd::Test { kernel: None, args, .. } => bootstrap::all().and_then(|t| {
            mounts::without_tracefs()?;
            build::test(&t, &args)
        }),
        Cmd::KernelTable => matrix::render(&bootstrap::workspace_root()),
        Cmd::Lint => bootstrap::all().and_then(|t| build::lint(&t)),
        Cmd::Bench { kernel, args } => bootstrap::all().and_then(|t| build::bench(&t, kernel.as_deref(), &args)),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
