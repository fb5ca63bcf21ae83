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
//!
//! With a router process (`privsep`), the router's leases live in that
//! process: the supervisor's endpoint carries what the router last reported
//! (`remote` counters, included in [`Endpoint::inflight`] and
//! [`Endpoint::served`]) and a **router hold**, set before the endpoint is
//! first told to the router ([`Endpoint::hold_for_router`]) and released
//! when the router says it holds no lease on it any more, or dies. The
//! drain waits for both ([`Endpoint::is_idle`]). `hold_for_router` and
//! `close` are a Dekker pair (each stores, then reads the other's flag, all
//! `SeqCst`): an endpoint is either never told to the router, or its drain
//! sees the hold and waits for the router.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct Endpoint {
    /// Unique within the group (never reused).
    pub id: u64,
    pub pid: i32,
    pub socket: PathBuf,
    /// The user that listens on `socket` or `tcp` (the site user, for a
    /// process that listens itself): the router checks it on connect.
    /// `None` when polyhost listens (php-fpm): then there is nobody else to
    /// check.
    pub uid: Option<u32>,
    /// Where the router connects instead of `socket`: a loopback port the
    /// process bound itself (`[app] listen = "port"`). The supervisor checked
    /// that `uid` owns the listener before it made the endpoint ready; the
    /// router checks every new connection's (`upstream::connect_runtime_tcp`).
    pub tcp: Option<std::net::SocketAddr>,
    inflight: AtomicUsize,
    served: AtomicU64,
    /// Set when the process is unpublished to be stopped: no new lease.
    closed: AtomicBool,
    /// The router process's requests on it now, as it last reported.
    remote_inflight: AtomicUsize,
    /// Requests the router finished on it since it was told of it, as it
    /// last reported.
    remote_served: AtomicU64,
    /// Told to the router, which has not said it let go of it yet.
    router_held: AtomicBool,
}

impl Endpoint {
    pub fn new(id: u64, pid: i32, socket: PathBuf, uid: Option<u32>) -> Self {
        Endpoint {
            id,
            pid,
            socket,
            uid,
            tcp: None,
            inflight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            remote_inflight: AtomicUsize::new(0),
            remote_served: AtomicU64::new(0),
            router_held: AtomicBool::new(false),
        }
    }
    /// The endpoint of a process that listens on a loopback port (see [`Endpoint::tcp`]).
    pub fn with_tcp(mut self, addr: std::net::SocketAddr) -> Self {
        self.tcp = Some(addr);
        self
    }

    /// Leases held now, here and (as last reported) in the router process. Sequentially consistent with [`close`](Self::close)
    /// and `Lease::try_take` (see the module's invariant).
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst) + self.remote_inflight.load(Ordering::SeqCst)
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
    /// Requests finished on it, here and (as last reported) in the router.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed) + self.remote_served.load(Ordering::Relaxed)
    }

    /// No request on it, nor a router that may still send one: a drained
    /// process may stop.
    pub fn is_idle(&self) -> bool {
        self.inflight() == 0 && !self.router_held()
    }

    /// Marks the endpoint as told to the router, unless it is closed
    /// already (then it must not be told: returns `false`). See the module
    /// doc for the pairing with [`close`](Self::close).
    pub fn hold_for_router(&self) -> bool {
        self.router_held.store(true, Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            self.router_held.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// The router said it holds no lease on the endpoint and takes none
    /// (so none is in flight there either).
    pub fn release_router_hold(&self) {
        self.remote_inflight.store(0, Ordering::SeqCst);
        self.router_held.store(false, Ordering::SeqCst);
    }

    pub fn router_held(&self) -> bool {
        self.router_held.load(Ordering::SeqCst)
    }

    /// What the router reported: requests on it now, and finished since it
    /// was told of it (absolute values).
    pub fn set_remote(&self, in_flight: usize, served: u64) {
        self.remote_inflight.store(in_flight, Ordering::SeqCst);
        self.remote_served.store(served, Ordering::Relaxed);
    }

    /// The router process is gone: it holds nothing, and what it served is
    /// kept in the endpoint's own count (`max_requests` still sees it; a new
    /// router reports from zero).
    pub fn clear_router(&self) {
        let served = self.remote_served.swap(0, Ordering::Relaxed);
        self.served.fetch_add(served, Ordering::Relaxed);
        self.remote_inflight.store(0, Ordering::SeqCst);
        self.router_held.store(false, Ordering::SeqCst);
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
    /// A request started or ended `ago` (reported by the router process):
    /// moves the last activity forward, never back.
    pub fn touch_ago(&self, ago: std::time::Duration) {
        let at = crate::clock::coarse_ms().saturating_sub(ago.as_millis() as u64);
        self.last_ms.fetch_max(at, Ordering::Relaxed);
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

    #[test]
    fn router_counts_and_hold_make_an_endpoint_busy_until_released() {
        let e = Endpoint::new(1, 1, "/x.sock".into(), None);
        assert!(e.is_idle());
        assert!(e.hold_for_router());
        assert!(!e.is_idle(), "held by the router");
        e.set_remote(2, 7);
        assert_eq!((e.inflight(), e.served()), (2, 7));
        e.set_remote(0, 9);
        e.release_router_hold();
        assert!(e.is_idle());
        e.set_remote(1, 3);
        e.clear_router();
        assert_eq!(
            (e.inflight(), e.served(), e.router_held()),
            (0, 3, false),
            "a dead router's served requests are kept"
        );
        e.close();
        assert!(!e.hold_for_router(), "a closed endpoint is never told");
        assert!(e.is_idle());
    }

    /// `hold_for_router` against a drain: either the endpoint is not told
    /// to the router, or the drain sees it held.
    #[test]
    fn a_drain_sees_every_hold_that_was_told() {
        for _ in 0..2000 {
            let e = Arc::new(Endpoint::new(1, 1, "/x.sock".into(), None));
            let told = {
                let e = e.clone();
                std::thread::spawn(move || e.hold_for_router())
            };
            e.close();
            let drain_saw_held = e.router_held();
            let told = told.join().unwrap();
            assert!(
                !told || drain_saw_held,
                "told to the router after the drain looked"
            );
        }
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
