//! What a runtime (php-fpm, polyhost-python) tells the supervisor about how
//! its processes are started. The supervisor owns when and under which
//! confinement; the launcher owns what is executed.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The command for one process of a runtime.
#[derive(Clone, Debug)]
pub struct Command {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The whole environment (nothing is inherited).
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
}

/// Recycling and scaling settings of one runtime.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lifecycle {
    /// Number of processes (slots) the group keeps running.
    pub processes: usize,
    pub startup_timeout: Duration,
    /// Stop every process after this long without requests (scale to zero).
    pub idle_timeout: Option<Duration>,
    /// Replace a process after it served this many requests.
    pub max_requests: Option<u64>,
    /// Replace a process whose RSS exceeds this many bytes.
    pub memory_per_process: Option<u64>,
    /// How long a draining process may take to finish its requests.
    pub drain_timeout: Duration,
    /// Start when the site is added (true) or on its first request.
    pub eager: bool,
}

pub trait Launcher: Send + Sync + 'static {
    /// "php" or "python": for logs, status and socket names.
    fn runtime(&self) -> &'static str;

    fn lifecycle(&self) -> Lifecycle;

    /// Runs before a generation's first process starts (write generated
    /// configs, create directories). Runs as root in polyhost.
    fn prepare(&self) -> io::Result<()> {
        Ok(())
    }

    /// The command for a process that must listen on `socket` (may write
    /// per-process files, such as a generated config naming the socket).
    fn command(&self, socket: &Path) -> io::Result<Command>;

    /// True when a process ended because the site's application is broken
    /// (not the runtime): its requests then get 500, not 503.
    fn app_error(&self, _status: &std::process::ExitStatus) -> bool {
        false
    }

    /// What the runtime itself logged about a failure (e.g. the tail of
    /// php-fpm's own log), added to the crash reason. Runs as root in polyhost.
    fn diagnose(&self, _socket: &Path) -> Option<String> {
        None
    }
}
