//! Endpoints and leases: how upstreams use a running process group.
//!
//! An [`Endpoint`] is one ready process's socket with its in-flight and
//! served counters. A [`Lease`] is one request's use of an endpoint: taken
//! from the least-busy endpoint, released on drop. The supervisor reads the
//! counters to drain a process before stopping it, to recycle after
//! `max_requests`, and to find idle groups.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct Endpoint {
    /// Unique within the group (never reused).
    pub id: u64,
    pub pid: i32,
    pub socket: PathBuf,
    /// The user that listens on `socket` (the site user, for a process that
    /// listens itself): the router checks it on connect. `None` when
    /// polyhost listens (php-fpm): then there is nobody else to check.
    pub uid: Option<u32>,
    inflight: AtomicUsize,
    served: AtomicU64,
}

impl Endpoint {
    pub fn new(id: u64, pid: i32, socket: PathBuf, uid: Option<u32>) -> Self {
        Endpoint {
            id,
            pid,
            socket,
            uid,
            inflight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
        }
    }
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

/// Time of the last request start or end, on the coarse clock
/// ([`crate::clock`]: touched twice per request, read by the idle check).
#[derive(Debug)]
pub struct Activity {
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            last_ms: AtomicU64::new(crate::clock::coarse_ms()),
        }
    }
    pub fn touch(&self) {
        // Written only when the millisecond changed: every lane touches it
        // twice per request, and a store would pull the line to this CPU.
        let now = crate::clock::coarse_ms();
        if self.last_ms.load(Ordering::Relaxed) != now {
            self.last_ms.store(now, Ordering::Relaxed);
        }
    }
    pub fn idle_for(&self) -> std::time::Duration {
        let last = self.last_ms.load(Ordering::Relaxed);
        std::time::Duration::from_millis(crate::clock::coarse_ms().saturating_sub(last))
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// One request's use of an endpoint.
#[derive(Debug)]
pub struct Lease {
    endpoint: Arc<Endpoint>,
    activity: Arc<Activity>,
}

impl Lease {
    pub(crate) fn take(endpoint: Arc<Endpoint>, activity: Arc<Activity>) -> Self {
        endpoint.inflight.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        Lease { endpoint, activity }
    }
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.served.fetch_add(1, Ordering::Relaxed);
        self.endpoint.inflight.fetch_sub(1, Ordering::AcqRel);
        self.activity.touch();
    }
}

/// The least-busy endpoint (ties: the first).
pub fn least_busy(endpoints: &[Arc<Endpoint>]) -> Option<&Arc<Endpoint>> {
    endpoints.iter().min_by_key(|e| e.inflight())
}
