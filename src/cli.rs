//! The command line: `serve`, `check`, and the admin commands (`status`,
//! `reload`, `restart`, `stop`, `start`) that are clients of the admin API.
//! Parses arguments, sets up logging and calls the library; exit codes are
//! part of the contract with hosting panels and scripts:
//!
//! - 0: done;
//! - 1: refused or invalid (the reason on stderr; for a reload, every
//!   configuration error as `FILE: KEY: MESSAGE`, one per line; also when the
//!   caller may not use the admin socket);
//! - 2: cannot run, or polyhost is not reachable.

mod control;
mod render;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, Signal, SignalKind};
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
    /// Admin socket to talk to (default: `[admin] socket` of --config).
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve every site in the foreground until SIGTERM or SIGINT.
    Serve,
    /// Validate the configuration and every vhost file; print all errors.
    Check,
    /// Show every site (or one) of the running polyhost.
    Status {
        /// Only this site, in detail.
        site: Option<String>,
        /// Print the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-read the configuration and apply the difference; on any error
    /// nothing changes and every error is printed (exit 1).
    Reload,
    /// Replace a site's processes, new ones first (no request fails).
    Restart { site: String },
    /// Stop a site's processes; its requests get 503 until `start`.
    Stop { site: String },
    /// Start a site stopped with `stop`.
    Start { site: String },
    /// The router process of a privilege-separated polyhost: started by
    /// `polyhost serve` (as root) as `router_user`, never by hand.
    #[command(hide = true)]
    Router,
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let action = match cli.command {
        Command::Check => return check(&cli.config),
        Command::Serve => return serve(&cli.config),
        Command::Router => return router(),
        Command::Status { site, json } => control::Action::Status { site, json },
        Command::Reload => control::Action::Reload,
        Command::Restart { site } => control::Action::Site("restart", site),
        Command::Stop { site } => control::Action::Site("stop", site),
        Command::Start { site } => control::Action::Site("start", site),
    };
    control::run(&cli.config, cli.socket.as_deref(), action)
}

fn check(path: &Path) -> ExitCode {
    // Not errors: `serve` starts with them (see `config::env`).
    for ignored in config::ignored_env() {
        eprintln!("warning: {ignored}");
    }
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
    let ignored = config::ignored_env();
    let config = match config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for ignored in &ignored {
                eprintln!("warning: {ignored}");
            }
            eprintln!("{errors}");
            eprintln!(
                "polyhost: not starting: {} error(s) in the configuration",
                errors.len()
            );
            return ExitCode::from(1);
        }
    };
    init_logging(&config.server.log_level);
    for ignored in &ignored {
        tracing::warn!("{ignored}");
    }
    match crate::isolation::raise_nofile_limit() {
        Ok((before, after)) if after > before => {
            tracing::info!(
                before,
                after,
                "raised the open-file limit (RLIMIT_NOFILE) to its hard limit"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)"),
    }
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
    let result: anyhow::Result<()> = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        // Installed before anything is bound or started: a signal during
        // start-up must not kill polyhost with the default action.
        let signals = Signals::install()?;
        tokio::spawn(stop_on_signal(signals.term, signals.int, shutdown.clone()));
        let listeners = crate::app::bind_all(&config.server).await?;
        if crate::privsep::supervisor_end::applies() {
            // Root: the router runs as `router_user` in a process of its own.
            let hup = signals.hup;
            crate::privsep::supervisor_end::serve_split(config, listeners, shutdown, |server| {
                tokio::spawn(reload_on_sighup(hup, server.clone()));
            })
            .await?;
            return Ok(());
        }
        tracing::warn!("polyhost serve runs as one process (not root): the router is not separated from the supervisor");
        // Before any site starts: a second polyhost on the same socket stops here.
        let admin = crate::admin::bind(&config.server).await?;
        let server = crate::app::Server::start(config).await?;
        let admin = crate::admin::serve(admin, server.clone(), shutdown.clone());
        tokio::spawn(reload_on_sighup(signals.hup, server.clone()));
        crate::acme::spawn(server.clone(), shutdown.clone());
        crate::app::serve_with(server, listeners, shutdown.clone()).await?;
        shutdown.cancel();
        let _ = admin.await;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("polyhost: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `polyhost router` (see `privsep::router_end`): exit 0 when the
/// supervisor or a signal stopped it, 1 when the supervisor went away, 2
/// when it cannot run.
fn router() -> ExitCode {
    if nix::unistd::getuid().is_root() || nix::unistd::geteuid().is_root() {
        eprintln!(
            "polyhost router: refusing to run as root (polyhost serve starts it as router_user)"
        );
        return ExitCode::from(2);
    }
    init_logging("info");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("polyhost router: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let ended = runtime.block_on(async {
        let stop = CancellationToken::new();
        let signals = Signals::install()?;
        tokio::spawn(stop_on_signal(signals.term, signals.int, stop.clone()));
        Ok::<_, anyhow::Error>(crate::privsep::router_end::run(stop).await?)
    });
    use crate::privsep::router_end::Ended;
    match ended {
        Ok(Ended::Shutdown | Ended::Stopped) => ExitCode::SUCCESS,
        Ok(Ended::SupervisorGone) => ExitCode::from(1),
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("polyhost router: {e:#}");
            ExitCode::from(2)
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

/// The signals `polyhost serve` handles.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| anyhow::anyhow!("cannot install the {name} handler: {e}"))
        };
        Ok(Signals {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            hup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }
}

/// Reloads the configuration on every SIGHUP (errors are logged; the running
/// configuration stays).
async fn reload_on_sighup(mut hup: Signal, server: std::sync::Arc<crate::app::Server>) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        let _ = server.reload().await;
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn stop_on_signal(mut term: Signal, mut int: Signal, shutdown: CancellationToken) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping, letting in-flight requests finish"),
        _ = int.recv() => tracing::info!("SIGINT: stopping, letting in-flight requests finish"),
    }
    shutdown.cancel();
}
