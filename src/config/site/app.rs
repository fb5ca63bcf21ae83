//! A site's `[app]` table, validated: any program that serves HTTP/1.1 on a
//! socket polyhost hands it (socket activation, `listen = "socket"`) or on a
//! loopback port it binds itself (`listen = "port"`), and its instances'
//! settings ([`AppConfig`]). Issue 22.
//!
//! CONTRACT (session 12): the types below are shared by the launcher
//! (`runtime/app.rs`), the upstream (`upstream/app/`) and the tests. Their
//! validation (`validate_app`) is the launcher helper's.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::StartPolicy;

/// `[app]`, validated.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AppConfig {
    /// The program, resolved: an absolute path (a bare name was looked up in
    /// the site's `PATH`; a relative path with a `/` was joined to `cwd`).
    pub program: PathBuf,
    /// The arguments after the program, as written (no shell).
    pub args: Vec<String>,
    /// The instances' working directory: absolute, inside the site's root.
    pub cwd: PathBuf,
    /// Instances, each its own process (group).
    pub processes: u64,
    pub listen: AppListen,
    /// Mount prefix without trailing slash ("" for `/`).
    pub mount: String,
    /// An HTTP path that must answer 2xx/3xx before an instance gets
    /// traffic; `None`: any HTTP answer to a probe request will do.
    pub ready: Option<String>,
    pub start: StartPolicy,
    pub startup_timeout: Duration,
    /// Requests in flight per instance (above: wait up to `queue_timeout`, then 503).
    pub max_concurrency: u64,
    pub queue_timeout: Duration,
    pub request_timeout: Duration,
    pub max_requests: Option<u64>,
    pub memory_per_process: Option<u64>,
    pub idle_timeout: Option<Duration>,
    /// `[app.env]`: on top of the site's `env`.
    pub env: BTreeMap<String, String>,
}

/// How an instance receives its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AppListen {
    /// polyhost binds and listens on a Unix socket and hands it over as
    /// fd 3 (`LISTEN_FDS=1`, systemd's convention).
    Socket,
    /// The program binds `127.0.0.1:$PORT` itself (a port polyhost picked).
    Port,
}
