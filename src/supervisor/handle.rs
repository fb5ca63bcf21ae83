//! What the rest of polyhost sees of a process group: its published
//! [`Snapshot`] and the [`GroupHandle`] upstreams lease processes through
//! (starting an idle group on demand), and that the supervisor and status
//! use to restart, recycle and stop it. The actor behind it is `group`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::endpoint::{least_busy, Activity, Endpoint, Lease};
use super::group::Cmd;
use crate::upstream::{RuntimeHandle, RuntimeLease, UpstreamError};

#[derive(Clone, Debug, PartialEq, Eq)]
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

/// The handle upstreams, the supervisor and status use. Cloning is cheap.
#[derive(Clone)]
pub struct GroupHandle {
    pub site: Arc<str>,
    pub runtime: &'static str,
    pub(super) tx: mpsc::UnboundedSender<Cmd>,
    pub(super) snapshot: watch::Receiver<Arc<Snapshot>>,
    pub(super) activity: Arc<Activity>,
    pub(super) startup_timeout: Duration,
    pub(super) max_requests: Option<u64>,
}

impl GroupHandle {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// A lease on the least-busy ready process, starting the group if it is
    /// idle and waiting (up to the startup timeout) for a process to be ready.
    /// A process closed for draining between our read of the snapshot and
    /// the lease (scale to zero, recycling) is skipped: the request takes
    /// another one, or starts the group again, and is never sent to a
    /// process that is stopping.
    pub async fn lease(&self) -> Result<Lease, UpstreamError> {
        self.activity.touch();
        let current = self.snapshot();
        if let Some(e) = least_busy(&current.endpoints) {
            if let Some(lease) = Lease::try_take(e.clone(), self.activity.clone()) {
                return Ok(lease);
            }
        }
        self.lease_slow().await
    }

    /// [`lease`](Self::lease) when no published process took it at once.
    async fn lease_slow(&self) -> Result<Lease, UpstreamError> {
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
                _ if snap.app_error.is_some() => UpstreamError::AppFailed(format!(
                    "{} {}: {}",
                    self.site,
                    self.runtime,
                    snap.app_error.as_deref().unwrap_or_default()
                )),
                GroupState::Failed(why) => UpstreamError::Unavailable(format!(
                    "{} {} failed: {why}",
                    self.site, self.runtime
                )),
                _ => self.stopped(),
            });
        }
    }

    fn stopped(&self) -> UpstreamError {
        UpstreamError::Unavailable(format!("{} {} is stopped", self.site, self.runtime))
    }

    fn not_ready(&self) -> UpstreamError {
        UpstreamError::Unavailable(format!(
            "{} {} did not become ready within {:?}",
            self.site, self.runtime, self.startup_timeout
        ))
    }

    /// Ends a request's lease; a process that reached `max_requests` is
    /// recycled right away rather than at the next periodic check.
    pub fn release(&self, lease: Lease) {
        let endpoint = lease.endpoint().clone();
        drop(lease);
        if self
            .max_requests
            .is_some_and(|max| endpoint.served() == max)
        {
            self.recycle(
                endpoint.id,
                format!(
                    "served {max} requests (max_requests)",
                    max = endpoint.served()
                ),
            );
        }
    }

    /// Starts the group now (eager start) without waiting.
    pub fn start(&self) {
        let _ = self.tx.send(Cmd::Start);
    }

    /// Replaces one process gracefully (new one first, then drain the old).
    pub fn recycle(&self, endpoint: u64, reason: impl Into<String>) {
        let _ = self.tx.send(Cmd::Recycle {
            endpoint,
            reason: reason.into(),
        });
    }

    /// Replaces every process gracefully (rolling restart).
    pub fn restart(&self) {
        let _ = self.tx.send(Cmd::RestartAll);
    }

    /// Drains and stops every process; returns when they are gone.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Upstreams that only need "a ready socket for this request" (PHP) use the
/// group through the [`RuntimeHandle`] seam; the lease is released (and
/// `max_requests` checked) when the request's [`RuntimeLease`] drops.
impl RuntimeHandle for GroupHandle {
    fn ready(&self) -> futures_util::future::BoxFuture<'_, Result<RuntimeLease, UpstreamError>> {
        Box::pin(async move {
            let lease = self.lease().await?;
            let socket = lease.endpoint().socket.clone();
            let uid = lease.endpoint().uid;
            Ok(RuntimeLease::new(
                socket,
                ReleaseOnDrop {
                    group: self.clone(),
                    lease: Some(lease),
                },
            )
            .with_peer_uid(uid))
        })
    }
}

struct ReleaseOnDrop {
    group: GroupHandle,
    lease: Option<Lease>,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.group.release(lease);
        }
    }
}
