//! Entry point: parse, dispatch, map errors to exit codes (2 usage, 1 runtime, 0 on a closed pipe).

use std::process::ExitCode;

use clap::Parser;
use twreset::{
    api::client::{Agent, ClientError},
    cli::{Cli, Command},
    cmd,
    cmd::UsageError,
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

/// The one warning line of a command that finds no agent answering on its socket.
fn fallback(e: &ClientError) {
    eprintln!("twreset: warning: {e}; running directly");
}

/// A 400 from the agent is a usage error (exit 2), as the same mistake on a direct run.
fn agent_error(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Status { status: http::StatusCode::BAD_REQUEST, message } => UsageError(message).into(),
        e => e.into(),
    }
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
            if let Some(agent) = Agent::locate(&args.agent) {
                match cmd::tw::via_agent(&agent, &args, &mut std::io::stdout().lock()).await {
                    Err(e) if e.unavailable() => fallback(&e),
                    r => return r.map(|()| ExitCode::SUCCESS).map_err(agent_error),
                }
            }
            let cfg = cmd::tw::TwConfig::try_from(args)?;
            // Before loading: a signal while loading ends the settle, not the process.
            let stop = shutdown_signal()?;
            let feed = twreset::session::kernel_feed(&cfg.scope)?;
            cmd::tw::run(&cfg, feed, &cmd::tw::ns_names(), &mut std::io::stdout().lock(), stop).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Top(args) => {
            let agent = Agent::locate(&args.agent);
            let cfg = cmd::top::TopConfig::try_from(args)?;
            cmd::top::ensure_terminal()?;
            let shutdown = shutdown_signal()?;
            if let Some(agent) = agent {
                match cmd::top::via_agent(&cfg, &agent).await {
                    Err(e) if e.unavailable() => fallback(&e),
                    Err(e) => return Err(agent_error(e)),
                    Ok((source, names)) => {
                        cmd::top::run(&cfg, source, &names, shutdown).await?;
                        return Ok(ExitCode::SUCCESS);
                    }
                }
            }
            let feed = twreset::session::kernel_feed(&cfg.scope)?;
            let source = cmd::top::direct(&cfg, feed).await?;
            cmd::top::run(&cfg, source, &cmd::tw::ns_names(), shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Kill(args) => {
            if let Some(agent) = Agent::locate(&args.agent) {
                match cmd::kill::via_agent(&agent, &args).await {
                    Err(cmd::kill::KillCmdError::Agent(e))
                        if e.unavailable() && !matches!(e, ClientError::Timeout { .. }) =>
                    {
                        fallback(&e)
                    }
                    Err(cmd::kill::KillCmdError::Usage(e)) => return Err(e.into()),
                    Err(cmd::kill::KillCmdError::Agent(e)) => return Err(agent_error(e)),
                    r => return Ok(if r? { ExitCode::SUCCESS } else { ExitCode::FAILURE }),
                }
            }
            let ok = cmd::kill::run(cmd::kill::KillConfig::try_from(args)?)?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Doctor(args) => Ok(ExitCode::from(cmd::doctor::run(cmd::doctor::DoctorConfig::try_from(args)?)?)),
        Command::Agent(args) => {
            let (config, source) = cmd::agent::load(args)?;
            twreset::agent::run(config, source, shutdown_signal()?).await?;
            Ok(ExitCode::SUCCESS)
        }
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
    let cli = Cli::parse();
    // A daemon's log is its record: the agent logs at info unless TWRESET_LOG says otherwise.
    let default = if matches!(cli.command, Command::Agent(_)) { "info" } else { "error" };
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(default.parse().expect("a valid level"))
        .with_env_var("TWRESET_LOG")
        .from_env_lossy();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
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
