//! A binary upgrade as the control operations see it: the [`Upgrader`]
//! hook the privilege-separated supervisor installs on the [`Server`]
//! (`privsep::upgrade` does the work), what it answers ([`Upgraded`]) and
//! why it refused ([`UpgradeError`]). Without the hook (polyhost run as one
//! process, not root) an upgrade is refused.
//!
//! [`Server`]: super::Server

use std::time::Duration;

use futures_util::future::BoxFuture;

/// How long a new binary may take to say it is ready, unless the caller
/// says otherwise (`polyhost upgrade --timeout`; SIGUSR2 uses this).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts the new binary and hands over to it.
pub trait Upgrader: Send + Sync + 'static {
    /// Resolves once the new binary said it is ready (this process then
    /// stops accepting and drains), or with why the old one keeps serving.
    fn upgrade(&self, timeout: Duration) -> BoxFuture<'_, Result<Upgraded, UpgradeError>>;
}

/// A successful upgrade.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Upgraded {
    /// The pid of the old supervisor (this one, now draining).
    pub old_pid: u32,
    /// The pid of the new supervisor, now serving.
    pub new_pid: u32,
    /// The binary that runs now.
    pub binary: String,
}

/// Why an upgrade did not happen; the old polyhost serves on, untouched.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "binary upgrades need polyhost serve run as root (privilege-separated); restart it instead"
    )]
    Unsupported,
    #[error("an upgrade is under way already; wait for it to end")]
    Busy,
    #[error("the previous polyhost (pid {0}) is still draining; try again once it exited")]
    PredecessorRunning(i32),
    #[error("polyhost is shutting down")]
    ShuttingDown,
    #[error("cannot start the new binary {binary}: {reason}")]
    Start { binary: String, reason: String },
    #[error("the new binary {binary} (pid {pid}) failed before it was ready: {reason}; it was stopped and this polyhost serves on")]
    Failed {
        binary: String,
        pid: i32,
        reason: String,
    },
}
