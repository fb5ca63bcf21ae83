//! The seam between the upstreams and the supervisor: a [`RuntimeHandle`]
//! gives one request a [`RuntimeLease`] on a ready process of a site's
//! runtime (starting the runtime if it is idle), or says in supervisor
//! terms why it cannot ([`LeaseError`]). Every runtime's upstream leases
//! the same way; the upstreams map a [`LeaseError`] to a status in one
//! place (`impl From<LeaseError> for UpstreamError`).
//!
//! Invariants: a lease is released when it drops, however the request ends
//! (no upstream releases by hand); dropping the lease that makes a process
//! reach `max_requests` asks its group to recycle it at once; nothing here
//! knows HTTP.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::endpoint::{self, Endpoint};
use super::mailbox::Cmd;

/// Why a runtime gave no lease. `group` names it as "<site> <runtime>".
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The group was stopped (site removed, polyhost stopping).
    #[error("{group} is stopped")]
    Stopped { group: String },
    /// The group gave up (crash loop, start failure) and is not retrying yet.
    #[error("{group} failed: {reason}")]
    Failed { group: String, reason: String },
    /// No process became ready within the startup timeout.
    #[error("{group} did not become ready within {after:?}")]
    StartTimedOut { group: String, after: Duration },
    /// The site's application itself is broken: its last process failed to
    /// load it (the site owner's fault, not the supervisor's).
    #[error("{group}: {reason}")]
    AppBroken { group: String, reason: String },
}

/// A site's runtime as an upstream sees it: something that leases a ready
/// process per request. The supervisor's `GroupHandle` implements it; tests
/// may stand in a fixed socket.
pub trait RuntimeHandle: Send + Sync + 'static {
    /// Waits until the runtime is ready (starting it if it is stopped or
    /// scaled to zero, bounded by the startup timeout) and returns a lease
    /// on one of its processes, held for the whole request.
    fn ready(&self) -> BoxFuture<'_, Result<RuntimeLease, LeaseError>>;

    /// A lease at once when a ready process takes one (the common case),
    /// without the boxed future of [`ready`](Self::ready); `None`: ask
    /// `ready`, which waits. Never starts anything or fails.
    fn try_ready(&self) -> Option<RuntimeLease> {
        None
    }
}

/// One request's use of a runtime's process: where to connect, who must
/// listen there, and a release (in-flight counting for draining, idle
/// tracking and recycling) when it drops.
pub struct RuntimeLease {
    endpoint: Arc<Endpoint>,
    held: Held,
}

enum Held {
    /// A process of a supervised group.
    Group {
        lease: Option<endpoint::Lease>,
        group: Arc<Recycler>,
    },
    /// A runtime polyhost does not supervise: the guard is dropped with the
    /// lease, and a recycle goes to `on_recycle` if there is one.
    Detached {
        #[allow(dead_code)]
        guard: Box<dyn Send + Sync>,
        on_recycle: Option<Box<dyn Fn(String) + Send + Sync>>,
    },
}

impl RuntimeLease {
    /// A lease on `socket` of a runtime polyhost does not supervise (tests,
    /// or a server started elsewhere); `guard` is dropped with the lease.
    pub fn new(socket: std::path::PathBuf, guard: impl Send + Sync + 'static) -> Self {
        Self::detached(socket, Box::new(guard), None)
    }

    /// Like [`new`](Self::new), and [`recycle`](Self::recycle) calls
    /// `on_recycle` with its reason (a test's stand-in counts them).
    pub fn with_recycle(
        socket: std::path::PathBuf,
        guard: impl Send + Sync + 'static,
        on_recycle: impl Fn(String) + Send + Sync + 'static,
    ) -> Self {
        Self::detached(socket, Box::new(guard), Some(Box::new(on_recycle)))
    }

    /// The same lease, connecting to the loopback port `addr` instead of
    /// its socket (a stand-in for an `[app] listen = "port"` instance).
    pub fn with_tcp(mut self, addr: std::net::SocketAddr) -> Self {
        let e = &self.endpoint;
        let endpoint = Endpoint::new(e.id, e.pid, e.socket.clone(), e.uid).with_tcp(addr);
        self.endpoint = Arc::new(endpoint);
        self
    }

    fn detached(
        socket: std::path::PathBuf,
        guard: Box<dyn Send + Sync>,
        on_recycle: Option<Box<dyn Fn(String) + Send + Sync>>,
    ) -> Self {
        RuntimeLease {
            endpoint: Arc::new(Endpoint::new(0, 0, socket, None)),
            held: Held::Detached { guard, on_recycle },
        }
    }

    /// A lease on a group's process, taken by the group's handle.
    pub(super) fn of_group(lease: endpoint::Lease, group: Arc<Recycler>) -> Self {
        RuntimeLease {
            endpoint: lease.endpoint().clone(),
            held: Held::Group {
                lease: Some(lease),
                group,
            },
        }
    }

    /// The process: its id in its group (a key that is never reused), pid,
    /// socket and listening user.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The socket to connect to.
    pub fn socket(&self) -> &Path {
        &self.endpoint.socket
    }

    /// The user the process behind the socket must run as, if any (see
    /// `upstream::connect_runtime`).
    pub fn peer_uid(&self) -> Option<u32> {
        self.endpoint.uid
    }

    /// The loopback port to connect to instead of [`socket`](Self::socket),
    /// for a process that binds its own port (`[app] listen = "port"`).
    pub fn tcp(&self) -> Option<std::net::SocketAddr> {
        self.endpoint.tcp
    }

    /// Asks the group to replace this lease's process gracefully (a stuck
    /// request); for a runtime polyhost does not supervise, only its
    /// `on_recycle` hears it ([`with_recycle`](Self::with_recycle)).
    pub fn recycle(&self, reason: impl Into<String>) {
        match &self.held {
            Held::Group { group, .. } => group.recycle(self.endpoint.id, reason.into()),
            Held::Detached {
                on_recycle: Some(hook),
                ..
            } => hook(reason.into()),
            Held::Detached { .. } => {}
        }
    }
}

/// Ends the request's lease; a process that reached `max_requests` is
/// recycled right away rather than at the next periodic check.
impl Drop for RuntimeLease {
    fn drop(&mut self) {
        let Held::Group { lease, group } = &mut self.held else {
            return;
        };
        drop(lease.take());
        if group
            .max_requests
            .is_some_and(|max| self.endpoint.served() == max)
        {
            group.recycle(
                self.endpoint.id,
                format!(
                    "served {max} requests (max_requests)",
                    max = self.endpoint.served()
                ),
            );
        }
    }
}

/// What a lease needs of its group: where to ask for a recycle, and after
/// how many requests.
pub(super) struct Recycler {
    pub(super) cmds: crate::supervisor::mailbox::Sender<Cmd>,
    pub(super) max_requests: Option<u64>,
}

impl Recycler {
    pub(super) fn recycle(&self, endpoint: u64, reason: String) {
        let _ = self.cmds.send(Cmd::Recycle { endpoint, reason });
    }
}
