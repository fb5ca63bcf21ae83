//! The command line: `serve`, `check`, and the admin commands (`status`,
//! `reload`, `reopen-logs`, `restart`, `stop`, `start`, `upgrade`) that are
//! clients of the admin API; `generate` writes the man page and completions
//! (packaging).
//! Parses arguments, sets up logging and calls the library; exit codes are
//! part of the contract with hosting panels and scripts:
//!
//! - 0: done;
//! - 1: refused or invalid (the reason on stderr; for a reload, every
//!   configuration error as `FILE: KEY: MESSAGE`, one per line; also when the
//!   caller may not use the admin socket);
//! - 2: cannot run, or polyhost is not reachable.

mod cluster;
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
    /// Main configuration file [default: ./polyhost.toml, or
    /// /etc/polyhost/polyhost.toml where there is none in the current
    /// directory (the Debian package's)].
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
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
    /// Replace the running polyhost by the binary it was started from (after
    /// a package upgrade) without dropping a request; SIGUSR2 does the same.
    Upgrade {
        /// Seconds the new binary may take to be ready (its sites started).
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Reopen every site's access and error log and php-fpm's logs (after
    /// log rotation moved them away); SIGUSR1 to polyhost does the same.
    ReopenLogs,
    /// Write the man page (polyhost.8) and shell completions (bash, zsh,
    /// fish) into DIR: run when the Debian package is built.
    #[command(hide = true)]
    Generate { dir: PathBuf },
    /// The router process of a privilege-separated polyhost: started by
    /// `polyhost serve` (as root) as `router_user`, never by hand.
    #[command(hide = true)]
    Router,
    /// A polyhost cluster on etcd with HAProxy in front: sites, placement,
    /// moves, status, and the front (`docs/cluster.md`).
    Cluster(Box<cluster::ClusterArgs>),
}

/// The configuration file of the Debian package.
pub const PACKAGED_CONFIG: &str = "/etc/polyhost/polyhost.toml";

/// `--config`, or its default: `./polyhost.toml`, else the package's.
fn config_path(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        let here = PathBuf::from("polyhost.toml");
        if !here.exists() && Path::new(PACKAGED_CONFIG).exists() {
            PathBuf::from(PACKAGED_CONFIG)
        } else {
            here
        }
    })
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Cluster(args) = cli.command {
        return cluster::run(cli.config.as_deref(), *args);
    }
    let config = config_path(cli.config);
    let action = match cli.command {
        Command::Check => return check(&config),
        Command::Serve => return serve(&config),
        Command::Router => return router(),
        Command::Generate { dir } => return generate(&dir),
        Command::Status { site, json } => control::Action::Status { site, json },
        Command::Reload => control::Action::Reload,
        Command::ReopenLogs => control::Action::ReopenLogs,
        Command::Restart { site } => control::Action::Site("restart", site),
        Command::Stop { site } => control::Action::Site("stop", site),
        Command::Start { site } => control::Action::Site("start", site),
        Command::Upgrade { timeout } => control::Action::Upgrade { timeout },
        Command::Cluster(_) => unreachable!("handled above"),
    };
    control::run(&config, cli.socket.as_deref(), action)
}

/// `polyhost generate DIR`: `polyhost.8` and a `polyhost-<command>.8` for
/// each command (clap_mangen), and the completions
/// `polyhost.bash`, `_polyhost` (zsh) and `polyhost.fish` (clap_complete),
/// all made from the same clap definition as the binary's parsing.
fn generate(dir: &Path) -> ExitCode {
    match write_generated(dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "polyhost generate: cannot write into {}: {e}",
                dir.display()
            );
            ExitCode::from(2)
        }
    }
}

fn write_generated(dir: &Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    // polyhost(8), and polyhost-<command>(8) for each command it names.
    let mut pages = vec![cmd.clone()];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // clap takes a `&'static str` name without its `string` feature;
        // this one-shot command leaks a few bytes per page instead.
        let name: &'static str = format!("polyhost-{}", sub.get_name()).leak();
        pages.push(sub.clone().name(name));
    }
    for page in pages {
        let mut man = Vec::new();
        let name = page.get_name().to_owned();
        clap_mangen::Man::new(page).section("8").render(&mut man)?;
        std::fs::write(dir.join(format!("{name}.8")), man)?;
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "polyhost", dir)?;
    }
    Ok(())
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
        Err(found) => {
            eprintln!("{found}");
            // 1: refused as a whole; 3: valid, but these sites would fail
            // alone (as `reload` exits 3 when it applied all but them).
            let (what, code) = match found.errors.is_empty() {
                false => ("error(s)", 1),
                true => ("problem(s) of sites that would fail alone", 3),
            };
            let count = found.errors.len() + found.failing_sites.len();
            eprintln!("polyhost check: {count} {what} in {}", path.display());
            ExitCode::from(code)
        }
    }
}

fn serve(path: &Path) -> ExitCode {
    crate::privsep::upgrade::remember_binary();
    // Started by an upgrade: the predecessor's listeners, taken before
    // anything else opens a descriptor.
    let inherited = match crate::privsep::upgrade::take_inherited() {
        None => None,
        Some(Ok(inherited)) => Some(inherited),
        Some(Err(e)) => {
            eprintln!("polyhost: upgrade: {e}");
            return ExitCode::from(2);
        }
    };
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
        crate::notify::spawn_watchdog();
        let (listeners, inherited) = match inherited {
            Some(mut inherited) => (inherited.listeners()?, Some(inherited.into_parts())),
            None => (crate::app::bind_all(&config.server).await?, None),
        };
        if crate::privsep::supervisor_end::applies() {
            // Root: the router runs as `router_user` in a process of its own.
            let (hup, usr1, usr2) = (signals.hup, signals.usr1, signals.usr2);
            crate::privsep::supervisor_end::serve_split(
                config,
                listeners,
                inherited,
                shutdown,
                |server| {
                    tokio::spawn(reload_on_sighup(hup, server.clone()));
                    tokio::spawn(reopen_logs_on_sigusr1(usr1, server.clone()));
                    tokio::spawn(upgrade_on_sigusr2(usr2, server.clone()));
                },
            )
            .await?;
            return Ok(());
        }
        if inherited.is_some() {
            anyhow::bail!("an upgrade needs polyhost serve run as root");
        }
        tracing::warn!("polyhost serve runs as one process (not root): the router is not separated from the supervisor");
        // Before any site starts: a second polyhost on the same socket stops here.
        let admin = crate::admin::bind(&config.server).await?;
        let cluster = config.server.cluster.clone();
        let server = crate::app::Server::start(config).await?;
        let admin = crate::admin::serve(admin, server.clone(), shutdown.clone());
        tokio::spawn(reload_on_sighup(signals.hup, server.clone()));
        tokio::spawn(reopen_logs_on_sigusr1(signals.usr1, server.clone()));
        crate::notify::ready(&server.summary());
        crate::acme::spawn(server.clone(), shutdown.clone());
        let node = crate::cluster::node::spawn(server.clone(), cluster, shutdown.clone());
        crate::app::serve_with(server, listeners, shutdown.clone()).await?;
        crate::cluster::node::stopped(node).await;
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
        // SIGUSR1 (e.g. `systemctl kill -s USR1` to every process of the
        // unit) must not end the router: the supervisor has it reopen its
        // logs (`ToRouter::ReopenLogs`), the handler only keeps it alive.
        let _usr1 = signals.usr1;
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
        // A line stderr cannot take is lost, nothing more: by default the
        // subscriber reports the failed write with `eprintln!`, which
        // panics when stderr itself is what failed (a log pipe whose reader
        // went away), so the task that logged died there: a router whose
        // supervisor was killed never stopped, a SIGTERM never stopped
        // polyhost.
        .log_internal_errors(false)
        .try_init();
}

/// The signals `polyhost serve` handles.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
    usr2: Signal,
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
            usr1: install(SignalKind::user_defined1(), "SIGUSR1")?,
            usr2: install(SignalKind::user_defined2(), "SIGUSR2")?,
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

/// Reopens every site log on every SIGUSR1 (log rotation; errors are
/// logged).
async fn reopen_logs_on_sigusr1(mut usr1: Signal, server: std::sync::Arc<crate::app::Server>) {
    while usr1.recv().await.is_some() {
        tracing::info!("SIGUSR1: reopening the logs");
        if let Err(e) = server.reopen_logs().await {
            tracing::error!("cannot reopen the logs: {e}");
        }
    }
}

/// Replaces this polyhost by the binary it was started from on every
/// SIGUSR2 (nginx's convention; the outcome is logged).
async fn upgrade_on_sigusr2(mut usr2: Signal, server: std::sync::Arc<crate::app::Server>) {
    while usr2.recv().await.is_some() {
        tracing::info!("SIGUSR2: upgrading to the binary polyhost was started from");
        if let Err(e) = server.upgrade(crate::app::upgrade::DEFAULT_TIMEOUT).await {
            tracing::error!("upgrade refused: {e}");
        }
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT (the service manager is told
/// `STOPPING=1` first).
async fn stop_on_signal(mut term: Signal, mut int: Signal, shutdown: CancellationToken) {
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    // Stop first, then say so: nothing said may keep it from stopping.
    shutdown.cancel();
    tracing::info!("{name}: stopping, letting in-flight requests finish");
    crate::notify::stopping(&format!(
        "{name}: stopping, letting in-flight requests finish"
    ));
}
