//! What a runtime (php-fpm, polyhost-python) tells the supervisor about how
//! its processes are started. The supervisor owns when and under which
//! confinement, and binds every process's socket
//! ([`sockets`](super::sockets)); the launcher owns what is executed and
//! how the process is told which descriptors it inherited.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The command for one process of a runtime.
#[derive(Debug)]
pub struct Command {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The whole environment (nothing is inherited).
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// Descriptors the process inherits besides its socket (e.g. a sealed
    /// config), at the numbers they have here; polyhost closes its copies
    /// once the process has started.
    pub fds: Vec<OwnedFd>,
    /// The number the process gets its socket at (socket activation: 3);
    /// `None`: the number it has here ([`ProcessSocket::fd`]).
    pub socket_at: Option<RawFd>,
    /// A variable set to the process's own pid in its environment, written
    /// after the fork (`LISTEN_PID`).
    pub pid_env: Option<&'static str>,
}

/// Who calls `listen(2)` on the socket polyhost binds for a process, and so
/// how polyhost sees that the process is ready to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// polyhost listens before the process starts; the process only accepts
    /// (php-fpm never calls `listen` on a socket it inherits). A connection
    /// succeeds at once, so readiness is an answer to `probe`.
    Supervisor { backlog: u32, probe: Probe },
    /// polyhost only binds; the process listens once it can serve
    /// (polyhost-python: after importing the app). Until then a connection is
    /// refused, so readiness is a connection that succeeds.
    Process,
    /// polyhost binds nothing: the process binds a loopback port polyhost
    /// picked ([`ProcessSocket::tcp`]) and listens on it. Ready when `probe`
    /// is answered there and the listening socket is the site user's.
    Port { probe: Probe },
}

/// A request a process answers only once it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A FastCGI `FCGI_GET_VALUES` record, answered with
    /// `FCGI_GET_VALUES_RESULT` by a php-fpm child that accepted it.
    FastCgiGetValues,
    /// An HTTP/1.1 request: `GET path` answered 2xx or 3xx; without a
    /// path, `OPTIONS *` answered with any HTTP status line (the process
    /// speaks HTTP).
    Http { path: Option<String> },
}

/// Where a process serves: the socket polyhost bound for it — its path
/// (for logs and the router) and the descriptor number polyhost holds it
/// at — or, for [`Listen::Port`], the loopback address it binds itself
/// (then nothing is bound at `path`, and `fd` is -1).
#[derive(Clone, Copy, Debug)]
pub struct ProcessSocket<'a> {
    pub path: &'a Path,
    pub fd: RawFd,
    pub tcp: Option<SocketAddr>,
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
    /// "php", "python" or "app": for logs, status and socket names.
    fn runtime(&self) -> &'static str;

    fn lifecycle(&self) -> Lifecycle;

    /// Runs before a generation's first process starts (write generated
    /// configs, create directories). Runs as root in polyhost.
    fn prepare(&self) -> io::Result<()> {
        Ok(())
    }

    /// Who listens on the process's socket (and how readiness is seen).
    fn listen(&self) -> Listen;

    /// The command for a process that serves on `socket`, which it inherits
    /// (may prepare per-process things, such as a config naming the socket).
    fn command(&self, socket: ProcessSocket<'_>) -> io::Result<Command>;

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

    /// The process on `socket` ended without a failure (stopped, drained,
    /// recycled): what was kept for [`diagnose`](Self::diagnose) can go.
    fn forget(&self, _socket: &Path) {}
}
