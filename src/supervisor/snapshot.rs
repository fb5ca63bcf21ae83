//! What a process group publishes for the rest of polyhost: its
//! [`GroupState`] and a [`Snapshot`] of its ready endpoints and counters.
//! Written only by the group's actor (`group`), read by its handle, the
//! upstreams' leases and status.
//!
//! Invariant: `Snapshot::endpoints` holds only processes that serve on
//! their socket and are neither draining nor stopping.

use std::sync::Arc;

use super::endpoint::Endpoint;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GroupState {
    /// No process: not started yet, or scaled to zero.
    Idle,
    Starting,
    Running,
    /// Crash loop or start failure; requests get 503.
    Failed(String),
    /// Stopped for good (site removed or polyhost stopping).
    Stopped,
}

impl GroupState {
    pub fn label(&self) -> &'static str {
        match self {
            GroupState::Idle => "idle",
            GroupState::Starting => "starting",
            GroupState::Running => "running",
            GroupState::Failed(_) => "failed",
            GroupState::Stopped => "stopped",
        }
    }
}

/// What the group publishes; upstreams and status read it.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub state: GroupState,
    pub generation: u64,
    /// Ready processes that take new requests.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Every live process (ready, starting or draining).
    pub pids: Vec<i32>,
    pub restarts: u64,
    pub oom_kills: u64,
    pub last_error: Option<String>,
    /// Set while the application itself is broken (its last process failed
    /// to load it); cleared when a process becomes ready.
    pub app_error: Option<String>,
}

impl Snapshot {
    /// Whether `other` says the same: the same state and counters, and the
    /// very same endpoints (by identity: an endpoint's counters are live).
    pub fn same_as(&self, other: &Snapshot) -> bool {
        self.state == other.state
            && self.generation == other.generation
            && self.endpoints.len() == other.endpoints.len()
            && self
                .endpoints
                .iter()
                .zip(&other.endpoints)
                .all(|(a, b)| Arc::ptr_eq(a, b))
            && self.pids == other.pids
            && self.restarts == other.restarts
            && self.oom_kills == other.oom_kills
            && self.last_error == other.last_error
            && self.app_error == other.app_error
    }
}

/// Names one process group across processes (`privsep`): a site's runtime
/// in one generation. The supervisor's generation numbers only grow while
/// it runs, so a key is never reused.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct GroupKey {
    pub site: String,
    /// "php" or "python" (`Launcher::runtime`).
    pub runtime: String,
    pub generation: u64,
}

impl std::fmt::Display for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} (generation {})",
            self.site, self.runtime, self.generation
        )
    }
}
