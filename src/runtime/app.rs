//! The `[app]` launcher: any program that serves HTTP/1.1, started as the
//! site user with the site's environment (issue 22).
//!
//! - `listen = "socket"`: polyhost binds and listens on the instance's Unix
//!   socket (so requests wait in its backlog while the program starts or
//!   restarts) and hands it over as **fd 3** in systemd's convention:
//!   `LISTEN_FDS=1`, `LISTEN_PID` = the program's own pid (written after
//!   the fork: `isolation::spawn`'s `pid_env`), `LISTEN_FDNAMES=http`, and
//!   `POLYHOST_LISTEN_FD=3` as a plain hint.
//! - `listen = "port"`: the program binds `HOST:PORT` (`127.0.0.1` and a
//!   port polyhost picked for this start); nothing is bound by polyhost,
//!   and readiness also checks that the port's listener is the site user's
//!   (`supervisor::port`).
//!
//! Readiness is an HTTP probe ([`Probe::Http`]): `GET <ready>` answered
//! 2xx/3xx, or without `ready` any HTTP answer to `OPTIONS *`. stdout and
//! stderr go to the site's error log; when an instance crashes or is never
//! ready, [`AppLauncher::diagnose`] adds the last lines it wrote there.
//!
//! Invariant: the program was resolved to an absolute path by validation
//! (`config::site::app`); nothing here looks anything up, so the router
//! process builds the same launcher without reading anything root-only.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::config::{AppConfig, AppListen, SiteConfig, StartPolicy, DEFAULT_APP_PATH};
use crate::supervisor::{Command, Launcher, Lifecycle, Listen, Probe, ProcessSocket};

/// The descriptor a socket-activated program gets its listener at
/// (`SD_LISTEN_FDS_START`).
pub const LISTEN_FD: i32 = 3;

/// The listen backlog of an instance's socket: what a restart can hold
/// (as php-fpm's).
const BACKLOG: u32 = 511;

/// At most this many lines, and this many bytes, of a program's output go
/// into a crash's reason.
const TAIL_LINES: usize = 10;
const TAIL_BYTES: usize = 2048;

/// Processes whose error-log offset is remembered at most: those running
/// (a process that ends is forgotten: [`Launcher::forget`], or told once
/// by [`Launcher::diagnose`]), at least twice the 64 `processes` a site may
/// have (a rolling restart runs both generations); past it, the oldest go
/// first.
const REMEMBERED: usize = 256;

pub struct AppLauncher {
    config: AppConfig,
    env: Vec<(String, String)>,
    /// The site's error log (the instances' stdout and stderr).
    error_log: PathBuf,
    /// Per process socket name: the error log's length when it started.
    started_at: Mutex<VecDeque<(PathBuf, u64)>>,
}

impl AppLauncher {
    /// `home`: the site user's home (`HOME`); `tmp`: the site's private
    /// temporary directory (`TMPDIR`, unless the site's env names one).
    pub fn new(
        site: &SiteConfig,
        config: &AppConfig,
        home: Option<&Path>,
        tmp: &Path,
        error_log: &Path,
    ) -> Self {
        AppLauncher {
            env: environment(site, config, home, tmp),
            config: config.clone(),
            error_log: error_log.to_path_buf(),
            started_at: Mutex::new(VecDeque::new()),
        }
    }

    /// The launcher in the router process (`privsep`): only its runtime,
    /// lifecycle and listen mode are read there.
    pub fn attached(site: &SiteConfig, config: &AppConfig) -> Self {
        AppLauncher::new(site, config, None, Path::new("/"), Path::new(""))
    }

    /// The error log's length when the process on `socket` started, no
    /// longer remembered.
    fn take_start(&self, socket: &Path) -> Option<u64> {
        let mut started = self.started_at.lock().unwrap_or_else(|p| p.into_inner());
        let at = started.iter().position(|(s, _)| s == socket)?;
        started.remove(at).map(|(_, len)| len)
    }

    fn remember_start(&self, socket: &Path) {
        let len = std::fs::metadata(&self.error_log).map_or(0, |m| m.len());
        let mut started = self.started_at.lock().unwrap_or_else(|p| p.into_inner());
        started.retain(|(s, _)| s != socket);
        if started.len() >= REMEMBERED {
            started.pop_front();
        }
        started.push_back((socket.to_path_buf(), len));
    }
}

/// The instances' environment: defaults, the site's `[env]`, `[app.env]`,
/// then what polyhost sets for the listen mode (not overridable).
fn environment(
    site: &SiteConfig,
    config: &AppConfig,
    home: Option<&Path>,
    tmp: &Path,
) -> Vec<(String, String)> {
    let tmp = tmp.display().to_string();
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_APP_PATH.into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TMPDIR".into(), tmp),
    ];
    if let Some(home) = home {
        env.push(("HOME".into(), home.display().to_string()));
    }
    let set = |env: &mut Vec<(String, String)>, k: &str, v: String| {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_owned(), v));
    };
    for (k, v) in site.env.iter().chain(config.env.iter()) {
        set(&mut env, k, v.clone());
    }
    match config.listen {
        AppListen::Socket => {
            set(&mut env, "LISTEN_FDS", "1".into());
            set(&mut env, "LISTEN_FDNAMES", "http".into());
            set(&mut env, "POLYHOST_LISTEN_FD", LISTEN_FD.to_string());
            for k in ["PORT", "HOST"] {
                env.retain(|(ek, _)| ek != k);
            }
        }
        AppListen::Port => {
            // PORT and HOST: set per start (`command`).
            for k in [
                "LISTEN_FDS",
                "LISTEN_FDNAMES",
                "LISTEN_PID",
                "POLYHOST_LISTEN_FD",
                "PORT",
                "HOST",
            ] {
                env.retain(|(ek, _)| ek != k);
            }
        }
    }
    env
}

impl Launcher for AppLauncher {
    fn runtime(&self) -> &'static str {
        "app"
    }

    fn lifecycle(&self) -> Lifecycle {
        Lifecycle {
            processes: self.config.processes as usize,
            startup_timeout: self.config.startup_timeout,
            idle_timeout: self.config.idle_timeout,
            max_requests: self.config.max_requests,
            memory_per_process: self.config.memory_per_process,
            drain_timeout: self.config.request_timeout + Duration::from_secs(1),
            eager: self.config.start == StartPolicy::Eager,
        }
    }

    fn listen(&self) -> Listen {
        let probe = Probe::Http {
            path: self.config.ready.clone(),
        };
        match self.config.listen {
            AppListen::Socket => Listen::Supervisor {
                backlog: BACKLOG,
                probe,
            },
            AppListen::Port => Listen::Port { probe },
        }
    }

    fn command(&self, socket: ProcessSocket<'_>) -> std::io::Result<Command> {
        let mut env = self.env.clone();
        let (socket_at, pid_env) = match (self.config.listen, socket.tcp) {
            (AppListen::Socket, _) => (Some(LISTEN_FD), Some("LISTEN_PID")),
            (AppListen::Port, Some(addr)) => {
                env.push(("PORT".into(), addr.port().to_string()));
                env.push(("HOST".into(), addr.ip().to_string()));
                (None, None)
            }
            (AppListen::Port, None) => {
                return Err(std::io::Error::other("no loopback port was picked"))
            }
        };
        self.remember_start(socket.path);
        Ok(Command {
            program: self.config.program.clone(),
            args: self.config.args.clone(),
            env,
            cwd: self.config.cwd.clone(),
            fds: Vec::new(),
            socket_at,
            pid_env,
        })
    }

    /// Drops the remembered start of a process that ended cleanly.
    fn forget(&self, socket: &Path) {
        self.take_start(socket);
    }

    /// The last lines the process wrote to the site's error log since it
    /// started (≤ 10 lines, ≤ 2 KiB; polyhost's own notes left out).
    fn diagnose(&self, socket: &Path) -> Option<String> {
        let from = self.take_start(socket)?;
        let tail = read_tail(&self.error_log, from).ok()?;
        let tail = last_lines(&tail);
        (!tail.is_empty()).then_some(tail)
    }
}

/// What `log` holds past `from` (from its start if it is shorter now: it
/// was rotated), at most its last 64 KiB.
fn read_tail(log: &Path, from: u64) -> std::io::Result<Vec<u8>> {
    const MAX: u64 = 64 << 10;
    let mut file = std::fs::File::open(log)?;
    let len = file.metadata()?.len();
    let from = if from > len { 0 } else { from };
    file.seek(SeekFrom::Start(from.max(len.saturating_sub(MAX))))?;
    let mut out = Vec::new();
    file.take(MAX).read_to_end(&mut out)?;
    Ok(out)
}

/// The last [`TAIL_LINES`] non-empty lines of `text` that polyhost did not
/// write itself, joined with " | ", cut to their last [`TAIL_BYTES`].
fn last_lines(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !l.contains("] polyhost: "))
        .collect();
    let joined = lines[lines.len().saturating_sub(TAIL_LINES)..].join(" | ");
    if joined.len() <= TAIL_BYTES {
        return joined;
    }
    let mut cut = joined.len() - TAIL_BYTES;
    while !joined.is_char_boundary(cut) {
        cut += 1;
    }
    format!("…{}", &joined[cut..])
}

#[cfg(test)]
mod tests;
