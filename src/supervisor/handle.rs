//! What the rest of polyhost sees of a process group: its published
//! [`Snapshot`] and the [`GroupHandle`] upstreams lease processes through
//! (the [`RuntimeHandle`] seam, starting an idle group on demand), and that
//! the supervisor and status use to restart, recycle and stop it. The actor
//! behind it is `group`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use futures_util::future::BoxFuture;

use super::endpoint::{least_busy, Activity, Lease};
use super::lease::{LeaseError, Recycler, RuntimeHandle, RuntimeLease};
use super::mailbox::Cmd;
use super::snapshot::{GroupState, Snapshot};

/// The handle upstreams, the supervisor and status use. Cloning is cheap.
#[derive(Clone)]
pub struct GroupHandle {
    pub site: Arc<str>,
    pub runtime: &'static str,
    pub(super) tx: crate::supervisor::mailbox::Sender<Cmd>,
    pub(super) snapshot: watch::Receiver<Arc<Snapshot>>,
    pub(super) activity: Arc<Activity>,
    pub(super) startup_timeout: Duration,
    /// What its leases recycle through (and `max_requests`).
    pub(super) recycler: Arc<Recycler>,
}

impl GroupHandle {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// A lease on the least-busy ready process (see [`take`](Self::take)),
    /// released when it drops.
    pub async fn lease(&self) -> Result<RuntimeLease, LeaseError> {
        let lease = self.take().await?;
        Ok(RuntimeLease::of_group(lease, self.recycler.clone()))
    }

    /// Starts the group if need be and waits until a process serves (up to
    /// the startup timeout): a reload's warm-up. Takes and gives back a
    /// lease without counting it towards `max_requests` recycling.
    pub async fn wait_ready(&self) -> Result<(), LeaseError> {
        self.take().await.map(drop)
    }

    /// A lease on the least-busy ready process, starting the group if it is
    /// idle and waiting (up to the startup timeout) for a process to be ready.
    /// A process closed for draining between our read of the snapshot and
    /// the lease (scale to zero, recycling) is skipped: the request takes
    /// another one, or starts the group again, and is never sent to a
    /// process that is stopping.
    async fn take(&self) -> Result<Lease, LeaseError> {
        match self.take_now() {
            Some(lease) => Ok(lease),
            None => self.lease_slow().await,
        }
    }

    /// A lease on the least-busy published process, if it takes one now.
    fn take_now(&self) -> Option<Lease> {
        self.activity.touch();
        let current = self.snapshot.borrow();
        let e = least_busy(&current.endpoints)?;
        Lease::try_take(e.clone(), self.activity.clone())
    }

    /// [`take`](Self::take) when no published process took it at once.
    async fn lease_slow(&self) -> Result<Lease, LeaseError> {
        let deadline = tokio::time::Instant::now() + self.startup_timeout;
        let mut rx = self.snapshot.clone();
        loop {
            let current = rx.borrow_and_update().clone();
            if let Some(e) = least_busy(&current.endpoints) {
                if let Some(lease) = Lease::try_take(e.clone(), self.activity.clone()) {
                    return Ok(lease);
                }
                // Closed after it was published: the actor publishes a
                // snapshot without it before closing it, so this waits for
                // nothing but is bounded anyway.
                let gone = e.clone();
                let newer = tokio::time::timeout_at(
                    deadline,
                    rx.wait_for(|s| !s.endpoints.iter().any(|x| Arc::ptr_eq(x, &gone))),
                )
                .await;
                match newer {
                    Ok(Ok(_)) => continue,
                    Ok(Err(_)) => return Err(self.stopped()),
                    Err(_) => return Err(self.not_ready()),
                }
            }
            if matches!(current.state, GroupState::Idle | GroupState::Failed(_)) {
                let _ = self.tx.send(Cmd::Start);
            }
            let waited = tokio::time::timeout_at(
                deadline,
                rx.wait_for(|s| {
                    !s.endpoints.is_empty()
                        || s.app_error.is_some()
                        || matches!(s.state, GroupState::Failed(_) | GroupState::Stopped)
                }),
            )
            .await;
            let snap = match waited {
                Ok(Ok(s)) => s.clone(),
                Ok(Err(_)) => return Err(self.stopped()),
                Err(_) => return Err(self.not_ready()),
            };
            if !snap.endpoints.is_empty() {
                continue;
            }
            return Err(match &snap.state {
                _ if snap.app_error.is_some() => LeaseError::AppBroken {
                    group: self.name(),
                    reason: snap.app_error.clone().unwrap_or_default(),
                },
                GroupState::Failed(why) => LeaseError::Failed {
                    group: self.name(),
                    reason: why.clone(),
                },
                _ => self.stopped(),
            });
        }
    }

    /// "<site> <runtime>", as errors name the group.
    fn name(&self) -> String {
        format!("{} {}", self.site, self.runtime)
    }

    fn stopped(&self) -> LeaseError {
        LeaseError::Stopped { group: self.name() }
    }

    fn not_ready(&self) -> LeaseError {
        LeaseError::StartTimedOut {
            group: self.name(),
            after: self.startup_timeout,
        }
    }

    /// Starts the group now (eager start) without waiting.
    pub fn start(&self) {
        let _ = self.tx.send(Cmd::Start);
    }

    /// Replaces one process gracefully (new one first, then drain the old).
    pub fn recycle(&self, endpoint: u64, reason: impl Into<String>) {
        self.recycler.recycle(endpoint, reason.into());
    }

    /// Replaces every process gracefully (rolling restart).
    pub fn restart(&self) {
        let _ = self.tx.send(Cmd::RestartAll);
    }

    /// Sends `signal` to each of its processes (their leaders) that is not
    /// being stopped.
    pub fn signal_processes(&self, signal: nix::sys::signal::Signal) {
        let _ = self.tx.send(Cmd::Signal(signal));
    }

    /// The group's published snapshots, as they change (the privilege-
    /// separated supervisor forwards them to the router process).
    pub fn watch_snapshot(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.clone()
    }

    /// The router process used the group `idle` ago (a request started or
    /// ended then): the idle check (scale to zero) counts it as activity.
    pub fn note_remote_activity(&self, idle: Duration) {
        self.activity.touch_ago(idle);
    }

    /// Drains and stops every process; returns when they are gone.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Every runtime's upstream leases through this seam; the lease is
/// released (and `max_requests` checked) when it drops.
impl RuntimeHandle for GroupHandle {
    fn ready(&self) -> BoxFuture<'_, Result<RuntimeLease, LeaseError>> {
        Box::pin(self.lease())
    }

    fn try_ready(&self) -> Option<RuntimeLease> {
        let lease = self.take_now()?;
        Some(RuntimeLease::of_group(lease, self.recycler.clone()))
    }
}
