//! What a group's actor receives: [`Cmd`]s from its handle and its leases,
//! [`Event`]s from the tasks that watch its processes
//! ([`super::watch`]). Shared by both sides so that each points one way
//! (handle → mailbox ← group, watch → mailbox), not at each other.
//!
//! Invariant: every process the actor started reports exactly one end
//! (`Exited` or `Stopped`) with its id.

use std::process::ExitStatus;
use std::time::Duration;

use tokio::sync::oneshot;

/// How long a stopped process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Asked of the actor by its handle and by leases.
pub(super) enum Cmd {
    Start,
    Recycle { endpoint: u64, reason: String },
    RestartAll,
    Stop(oneshot::Sender<()>),
}

/// Told to the actor about one of its processes, by id.
pub(super) enum Event {
    Ready {
        id: u64,
    },
    NotReady {
        id: u64,
        why: String,
    },
    /// `oom_kills`: counted in the process's cgroup, read before it was removed.
    Exited {
        id: u64,
        status: std::io::Result<ExitStatus>,
        oom_kills: u64,
    },
    Stopped {
        id: u64,
    },
    Drained {
        id: u64,
    },
}
