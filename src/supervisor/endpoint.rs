//! Endpoints and leases: how upstreams use a running process group.
//!
//! An [`Endpoint`] is one ready process's socket with its in-flight and
//! served counters. A [`Lease`] is one request's use of an endpoint: taken
//! from the least-busy endpoint, released on drop. The supervisor reads the
//! counters to drain a process before stopping it, to recycle after
//! `max_requests`, and to find idle groups.
//!
//! Invariant: once [`Endpoint::close`] has returned and [`Endpoint::inflight`]
//! then reads 0, no lease on the endpoint exists or will ever be taken, so
//! its process can be stopped without cutting a request. A request that
//! loses that race (`Lease::try_take` returns `None`) takes another
//! endpoint, or starts the group again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// Set when the process is unpublished to be stopped: no new lease.
    closed: AtomicBool,
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
            closed: AtomicBool::new(false),
        }
    }
    /// Leases held now. Sequentially consistent with [`close`](Self::close)
    /// and `Lease::try_take` (see the module's invariant).
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }
    /// Refuses every lease from now on (the process is about to be drained
    /// and stopped). Unpublish the endpoint first, so a request that finds
    /// it closed finds a snapshot without it.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
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
    /// A lease on `endpoint`, or `None` if it was closed. The count goes up
    /// before `closed` is read, and [`Endpoint::close`] is written before a
    /// drain reads the count (all `SeqCst`): either this sees the endpoint
    /// closed, or the drain sees this lease and waits for it.
    pub(crate) fn try_take(endpoint: Arc<Endpoint>, activity: Arc<Activity>) -> Option<Self> {
        endpoint.inflight.fetch_add(1, Ordering::SeqCst);
        if endpoint.closed.load(Ordering::SeqCst) {
            endpoint.inflight.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        activity.touch();
        Some(Lease { endpoint, activity })
    }
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.served.fetch_add(1, Ordering::Relaxed);
        self.endpoint.inflight.fetch_sub(1, Ordering::SeqCst);
        self.activity.touch();
    }
}

/// The least-busy endpoint (ties: the first).
pub fn least_busy(endpoints: &[Arc<Endpoint>]) -> Option<&Arc<Endpoint>> {
    endpoints.iter().min_by_key(|e| e.inflight())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::{Activity, Endpoint, Lease};

    #[test]
    fn a_closed_endpoint_gives_no_lease_and_counts_none() {
        let e = Arc::new(Endpoint::new(1, 1, "/x.sock".into(), None));
        let activity = Arc::new(Activity::new());
        let held = Lease::try_take(e.clone(), activity.clone()).expect("open");
        e.close();
        assert!(Lease::try_take(e.clone(), activity.clone()).is_none());
        assert_eq!(e.inflight(), 1, "the lease taken before close is counted");
        drop(held);
        assert_eq!(
            (e.inflight(), e.served()),
            (0, 1),
            "a refused take serves nothing"
        );
    }

    /// The drain's side of the race, many times over: a lease that
    /// succeeded is always seen by a drain that closed the endpoint and then
    /// found it idle — never a lease on a process the drain let go.
    #[test]
    fn no_lease_survives_a_drain_that_saw_none() {
        for _ in 0..2000 {
            let e = Arc::new(Endpoint::new(1, 1, "/x.sock".into(), None));
            let activity = Arc::new(Activity::new());
            let stopped = Arc::new(AtomicBool::new(false));
            let lost = Arc::new(AtomicUsize::new(0));
            let taker = {
                let (e, activity, stopped, lost) =
                    (e.clone(), activity.clone(), stopped.clone(), lost.clone());
                std::thread::spawn(move || {
                    if let Some(lease) = Lease::try_take(e, activity) {
                        if stopped.load(Ordering::SeqCst) {
                            lost.fetch_add(1, Ordering::SeqCst);
                        }
                        drop(lease);
                    }
                })
            };
            e.close();
            while e.inflight() > 0 {
                std::hint::spin_loop();
            }
            stopped.store(true, Ordering::SeqCst);
            taker.join().unwrap();
            assert_eq!(lost.load(Ordering::SeqCst), 0);
        }
    }
}
