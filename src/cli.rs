//! The command line: `serve`, `check`, `--version`. Parses arguments, sets
//! up logging and calls the library; exit codes are part of the contract
//! with hosting panels (0 done, 1 refused or invalid, 2 cannot run).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config;

#[derive(Parser, Debug)]
#[command(
    name = "polyhost",
    version,
    about = "Hosting supervisor: PHP and Python sites behind one router"
)]
pub struct Cli {
    /// Main configuration file.
    #[arg(long, short, global = true, default_value = "polyhost.toml")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve every site in the foreground until SIGTERM or SIGINT.
    Serve,
    /// Validate the configuration and every vhost file; print all errors.
    Check,
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check => check(&cli.config),
        Command::Serve => serve(&cli.config),
    }
}

fn check(path: &Path) -> ExitCode {
    match crate::check::check(path) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "polyhost check: {} error(s) in {}",
                errors.len(),
                path.display()
            );
            ExitCode::from(1)
        }
    }
}

fn serve(path: &Path) -> ExitCode {
    let config = match config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "polyhost: not starting: {} error(s) in the configuration",
                errors.len()
            );
            return ExitCode::from(1);
        }
    };
    init_logging(&config.server.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("polyhost: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let listeners = crate::app::bind_all(&config.server).await?;
        let server = crate::app::Server::start(config).await?;
        tokio::spawn(reload_on_sighup(server.clone()));
        crate::app::serve_with(server, listeners, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("polyhost: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Reloads the configuration on every SIGHUP (errors are logged; the running
/// configuration stays).
async fn reload_on_sighup(server: std::sync::Arc<crate::app::Server>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; reload through the admin API");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        let _ = server.reload().await;
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop polyhost with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping, letting in-flight requests finish"),
        _ = int.recv() => tracing::info!("SIGINT: stopping, letting in-flight requests finish"),
    }
    shutdown.cancel();
}
