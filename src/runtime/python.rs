//! The `polyhost-python` launcher: the command line, environment and
//! lifecycle of a Python site's worker processes (see
//! `runtimes/python/README.md` for the worker's side).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{AsgiConfig, PythonConfig, SiteConfig};
use crate::supervisor::{Command, Launcher, Lifecycle, Listen, ProcessSocket, STOP_GRACE};

pub struct PythonLauncher {
    site: String,
    config: PythonConfig,
    worker: PathBuf,
    cwd: PathBuf,
    env: Vec<(String, String)>,
}

impl PythonLauncher {
    /// `tmp`: the site's private temporary directory, the workers'
    /// `TMPDIR`, `TEMP` and `TMP` (Python's `tempfile` takes the first that
    /// is set), unless the site's `[env]` names its own.
    pub fn new(site: &SiteConfig, config: &PythonConfig, home: Option<&Path>, tmp: &Path) -> Self {
        let tmp = tmp.display().to_string();
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("LANG".into(), "C.UTF-8".into()),
            ("PYTHONUNBUFFERED".into(), "1".into()),
            ("TMPDIR".into(), tmp.clone()),
            ("TEMP".into(), tmp.clone()),
            ("TMP".into(), tmp),
        ];
        if let Some(home) = home {
            env.push(("HOME".into(), home.display().to_string()));
        }
        for (k, v) in site.env.iter().chain(config.env.iter()) {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        PythonLauncher {
            site: site.name.to_string(),
            worker: config.worker.clone().unwrap_or_else(default_worker),
            cwd: site
                .root
                .clone()
                .or_else(|| config.path.first().cloned())
                .unwrap_or_else(|| PathBuf::from("/")),
            config: config.clone(),
            env,
        }
    }

    pub fn worker(&self) -> &Path {
        &self.worker
    }
}

/// `polyhost-python` next to the running `polyhost` binary, or where the
/// Debian package puts it beside a `bin/` (`/usr/bin/polyhost` →
/// `/usr/lib/polyhost/polyhost-python`): the first that exists, else the
/// one next to it (which `check` then reports missing).
pub fn default_worker() -> PathBuf {
    let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    else {
        return PathBuf::from("/usr/lib/polyhost/polyhost-python");
    };
    worker_beside(&dir, |p| p.exists())
}

/// The worker for a `polyhost` in `dir` (see [`default_worker`]).
fn worker_beside(dir: &Path, exists: impl Fn(&Path) -> bool) -> PathBuf {
    let next_to = dir.join("polyhost-python");
    let packaged = dir.join("../lib/polyhost/polyhost-python");
    if !exists(&next_to) && exists(&packaged) {
        // Named without `..`: it shows in status, check and the process list.
        return dir.parent().map_or(packaged, |prefix| {
            prefix.join("lib/polyhost/polyhost-python")
        });
    }
    next_to
}

/// The ASGI flags of the worker's command line (`ASGI-CONTRACT`: only an
/// ASGI site's worker gets them; a WSGI site's command line is as before).
/// Durations go in whole seconds, rounded up, at least 1 when not zero.
///
/// `--graceful-timeout`: after SIGTERM the worker keeps its WebSockets open
/// this long, then closes them with 1001 and runs lifespan shutdown (≤ 1 s
/// more); the supervisor sends SIGKILL [`STOP_GRACE`] after SIGTERM, so this
/// is half of that: the close frames go out before the kill. (SIGTERM comes
/// only after the drain waited up to `request_timeout` + 1 s for the
/// process's requests and WebSockets to end.)
fn asgi_args(asgi: &AsgiConfig, request_timeout: Duration) -> Vec<String> {
    let secs = |d: Option<Duration>| match d {
        None => 0,
        Some(d) if d.is_zero() => 0,
        Some(d) => d.as_secs() + u64::from(d.subsec_nanos() > 0),
    };
    let ws = &asgi.websocket;
    [
        ("--interface", "asgi".to_owned()),
        ("--graceful-timeout", (STOP_GRACE.as_secs() / 2).to_string()),
        ("--max-concurrency", asgi.max_concurrency.to_string()),
        ("--lifespan", asgi.lifespan.as_str().to_owned()),
        ("--request-timeout", secs(Some(request_timeout)).to_string()),
        ("--ws-max-message", ws.max_message.to_string()),
        ("--ws-ping-interval", secs(ws.ping_interval).to_string()),
        ("--ws-ping-timeout", secs(Some(ws.ping_timeout)).to_string()),
        ("--ws-idle-timeout", secs(ws.idle_timeout).to_string()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_owned(), value])
    .collect()
}

impl Launcher for PythonLauncher {
    fn app_error(&self, status: &std::process::ExitStatus) -> bool {
        status.code() == Some(polyhost_protocol::exit::APP_IMPORT_FAILED)
    }

    fn runtime(&self) -> &'static str {
        "python"
    }

    fn lifecycle(&self) -> Lifecycle {
        Lifecycle {
            processes: self.config.processes as usize,
            startup_timeout: self.config.startup_timeout,
            idle_timeout: self.config.idle_timeout,
            max_requests: self.config.max_requests,
            memory_per_process: self.config.memory_per_process,
            drain_timeout: self.config.request_timeout + Duration::from_secs(1),
            eager: false,
        }
    }

    /// The worker listens on its socket once the app is imported: until
    /// then a connection is refused, which is how the supervisor sees it
    /// ready (and why a worker that cannot import its app never is).
    fn listen(&self) -> Listen {
        Listen::Process
    }

    fn command(&self, socket: ProcessSocket<'_>) -> std::io::Result<Command> {
        let mut args = vec![
            "--socket-fd".to_owned(),
            socket.fd.to_string(),
            "--app".to_owned(),
            format!("{}:{}", self.config.module, self.config.callable),
            "--threads".to_owned(),
            self.config.threads.to_string(),
            "--site".to_owned(),
            self.site.clone(),
            "--processes-hint".to_owned(),
            self.config.processes.to_string(),
        ];
        for p in &self.config.path {
            args.push("--path".into());
            args.push(p.display().to_string());
        }
        if let Some(home) = &self.config.home {
            args.push("--home".into());
            args.push(home.display().to_string());
        }
        if let Some(asgi) = self.config.asgi() {
            args.extend(asgi_args(asgi, self.config.request_timeout));
        }
        Ok(Command {
            program: self.worker.clone(),
            args,
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            fds: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Lifespan, WebSocketConfig};

    #[test]
    fn the_worker_is_found_next_to_polyhost_or_where_the_package_puts_it() {
        let bin = Path::new("/usr/bin");
        let only_packaged = |p: &Path| p == Path::new("/usr/bin/../lib/polyhost/polyhost-python");
        assert_eq!(
            super::worker_beside(bin, only_packaged),
            Path::new("/usr/lib/polyhost/polyhost-python")
        );
        let dev = Path::new("/src/target/release");
        assert_eq!(
            super::worker_beside(dev, |_| true),
            Path::new("/src/target/release/polyhost-python")
        );
        assert_eq!(
            super::worker_beside(dev, |_| false),
            Path::new("/src/target/release/polyhost-python"),
            "missing everywhere: the one next to polyhost, which check reports"
        );
    }

    #[test]
    fn asgi_flags_round_durations_up_to_whole_seconds() {
        let asgi = AsgiConfig {
            max_concurrency: 7,
            lifespan: Lifespan::On,
            websocket: WebSocketConfig {
                max_message: 1024,
                ping_interval: Some(Duration::from_millis(1500)),
                ping_timeout: Duration::from_millis(1),
                idle_timeout: None,
            },
        };
        assert_eq!(
            asgi_args(&asgi, Duration::from_secs(60)).join(" "),
            "--interface asgi --graceful-timeout 5 --max-concurrency 7 --lifespan on --request-timeout 60 \
             --ws-max-message 1024 --ws-ping-interval 2 --ws-ping-timeout 1 --ws-idle-timeout 0"
        );
    }
}
