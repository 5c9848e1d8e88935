//! Entry point: parse, dispatch, map errors to exit codes (2 usage, 1 runtime, 0 on a closed pipe).

use std::process::ExitCode;

use clap::Parser;
use twreset::{
    cli::{Cli, Command, UsageError},
    cmd,
};

/// SIGINT or SIGTERM. The handlers are installed when this is called, not when the future is
/// first polled, so a signal that arrives while the program is still loading ends the session
/// cleanly instead of killing the process.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Trace(args) => {
            let cfg = cmd::trace::TraceConfig::try_from(args)?;
            let s = cmd::trace::run(cfg, shutdown_signal()?).await?;
            eprintln!(
                "twreset: {} events seen, {} lost ({}){}; {} recovered after nesting",
                s.events,
                s.loss.lost(),
                s.loss.breakdown(),
                if s.decode_errors > 0 { format!(", {} undecodable", s.decode_errors) } else { String::new() },
                s.loss.recovered,
            );
            if s.loss.tw_born > 0 {
                eprintln!(
                    "twreset: {} TIME_WAIT creations no timer event reported came from sock_ops (tw_born)",
                    s.loss.tw_born
                );
            }
            if s.sock_ops {
                eprintln!("twreset: {} transitions came from sock_ops", s.loss.sock_ops);
            }
            tracing::debug!("kernel side sent {} events", s.loss.sent);
            Ok(ExitCode::SUCCESS)
        }
        Command::Tw(args) => {
            let cfg = cmd::tw::TwConfig::try_from(args)?;
            // Before loading: a signal while loading ends the settle, not the process.
            let stop = shutdown_signal()?;
            let feed = twreset::twfeed::kernel_feed(&cfg.scope)?;
            cmd::tw::run(&cfg, feed, &cmd::tw::ns_names(), &mut std::io::stdout().lock(), stop).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Top(args) => {
            let cfg = cmd::top::TopConfig::try_from(args)?;
            cmd::top::ensure_terminal()?;
            let shutdown = shutdown_signal()?;
            let feed = twreset::twfeed::kernel_feed(&cfg.scope)?;
            cmd::top::run(&cfg, feed, &cmd::tw::ns_names(), shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Kill(args) => {
            let ok = cmd::kill::run(cmd::kill::KillConfig::try_from(args)?)?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Doctor(args) => Ok(ExitCode::from(cmd::doctor::run(cmd::doctor::DoctorConfig::try_from(args)?)?)),
    }
}

fn main() -> ExitCode {
    // Large buffers (sock_diag dumps, table growth) come and go in the millions of bytes: a fixed
    // mmap threshold hands each one back to the kernel when freed, instead of glibc's adaptive
    // threshold moving them onto a heap that fragments and keeps RSS at its peak.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("TWRESET_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("twreset: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("twreset: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("twreset: {e:#}");
            ExitCode::FAILURE
        }
    }
}
