//! Keep-alive connections to an app's instances ([`h1::Link`]s, driven by
//! whichever request holds one; an idle one by no one), pooled per
//! endpoint and lane.
//!
//! Invariants:
//! - A connection carries one request at a time; it goes back to the pool
//!   only after its response ended cleanly and neither side asked to close.
//! - At most `max_concurrency` connections per instance are kept (open,
//!   in use or idle): a connection returned past that is closed. A request
//!   opens one past it only when more requests than that are leased on one
//!   instance (fewer instances ready than configured, during a restart).
//! - An idle connection is dropped after [`IDLE_KEEP`], under the shortest
//!   keep-alive timeout common app servers use (Node's 5 s), so the pool
//!   rarely sends on a connection the app is closing; the one it does send
//!   on is found by the retry in `super::AppUpstream::exchange`. A gone
//!   instance's connections are closed by its death and dropped here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio_util::either::Either;

use super::h1;
use crate::supervisor::RuntimeLease;
use crate::upstream::{connect_runtime, connect_runtime_tcp, UpstreamError};

/// How long an idle connection is kept.
pub(super) const IDLE_KEEP: Duration = Duration::from_secs(4);
/// How often idle connections are looked over while there are any.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub(super) struct Pool {
    /// `max_concurrency`: connections kept per instance.
    max: usize,
    /// [`IDLE_KEEP`] (shorter in tests).
    idle_keep: Duration,
    slots: Mutex<HashMap<u64, Slot>>,
    /// A sweeper task runs (only while something is idle).
    sweeping: AtomicBool,
}

/// One instance (endpoint id): its idle connections and counters.
#[derive(Default)]
struct Slot {
    idle: Vec<Idle>,
    counters: Arc<Counters>,
}

/// An instance's counters, shared by its connections (no lock).
#[derive(Default)]
pub(super) struct Counters {
    /// Connections open (in use or idle).
    open: AtomicUsize,
    /// Response heads it sent: an instance that answers is not stuck.
    answered: AtomicU64,
}

impl Counters {
    pub(super) fn answered(&self) -> u64 {
        self.answered.load(Ordering::Acquire)
    }

    pub(super) fn answer(&self) {
        self.answered.fetch_add(1, Ordering::AcqRel);
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// One connection to an instance.
pub(super) struct Conn {
    pub(super) link: h1::Link,
    lane: usize,
    /// Taken from the pool (it served a request before): a failure before
    /// any response byte may be the app closing it while idle.
    pub(super) reused: bool,
    open: Open,
}

impl Conn {
    pub(super) fn counters(&self) -> &Arc<Counters> {
        &self.open.0
    }
}

/// Counts the connection open while it lives.
struct Open(Arc<Counters>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    pub(super) fn new(max: usize) -> Arc<Self> {
        Self::with_idle_keep(max, IDLE_KEEP)
    }

    pub(super) fn with_idle_keep(max: usize, idle_keep: Duration) -> Arc<Self> {
        Arc::new(Pool {
            max: max.max(1),
            idle_keep,
            slots: Mutex::new(HashMap::new()),
            sweeping: AtomicBool::new(false),
        })
    }

    /// The instance's counters.
    pub(super) fn counters(&self, endpoint: u64) -> Arc<Counters> {
        self.lock().entry(endpoint).or_default().counters.clone()
    }

    /// An idle connection to the lease's instance opened on this lane, or
    /// (when the instance has all the connections it may have) of another
    /// lane, else a new one. One the app closed meanwhile is passed over.
    pub(super) async fn checkout(&self, lease: &RuntimeLease) -> Result<Conn, UpstreamError> {
        loop {
            let (pooled, old) = self.take_idle(lease.endpoint().id);
            drop(old); // closed outside the lock
            match pooled {
                Some(idle) if !idle.conn.link.idle_usable() => continue,
                Some(Idle { mut conn, .. }) => {
                    conn.reused = true;
                    return Ok(conn);
                }
                // Boxed: see `AppUpstream::exchange`.
                None => return Box::pin(self.connect(lease)).await,
            }
        }
    }

    /// The idle connection [`checkout`](Self::checkout) takes, and those
    /// past [`IDLE_KEEP`] (to be dropped outside the lock).
    fn take_idle(&self, endpoint: u64) -> (Option<Idle>, Vec<Idle>) {
        let lane = crate::lanes::current();
        let mut slots = self.lock();
        let slot = slots.entry(endpoint).or_default();
        // Kept in the order they came back: the old ones are a prefix.
        let fresh = slot
            .idle
            .iter()
            .position(|i| i.since.elapsed() < self.idle_keep);
        let old: Vec<Idle> = slot
            .idle
            .drain(..fresh.unwrap_or(slot.idle.len()))
            .collect();
        let open = slot.counters.open.load(Ordering::Acquire);
        let full = open.saturating_sub(old.len()) >= self.max;
        let own = |i: &Idle| i.conn.lane == lane;
        let pooled = if full {
            crate::upstream::take_newest(&mut slot.idle, own)
        } else {
            let at = slot.idle.iter().rposition(own);
            at.map(|at| slot.idle.remove(at))
        };
        (pooled, old)
    }

    /// A new connection to the lease's instance.
    pub(super) async fn connect(&self, lease: &RuntimeLease) -> Result<Conn, UpstreamError> {
        let refused = |e: &dyn std::fmt::Display| {
            let at = match lease.tcp() {
                Some(addr) => addr.to_string(),
                None => lease.socket().display().to_string(),
            };
            UpstreamError::BadGateway(format!(
                "cannot connect to app instance pid {} at {at}: {e}",
                lease.endpoint().pid
            ))
        };
        let stream = match lease.tcp() {
            Some(addr) => {
                let tcp = connect_runtime_tcp(addr, lease.peer_uid())
                    .await
                    .map_err(|e| refused(&e))?;
                let _ = tcp.set_nodelay(true);
                Either::Right(tcp)
            }
            None => Either::Left(
                connect_runtime(lease.socket(), lease.peer_uid())
                    .await
                    .map_err(|e| refused(&e))?,
            ),
        };
        let counters = self.counters(lease.endpoint().id);
        counters.open.fetch_add(1, Ordering::AcqRel);
        Ok(Conn {
            link: h1::Link::new(stream),
            lane: crate::lanes::current(),
            reused: false,
            open: Open(counters),
        })
    }

    /// Keeps a connection whose response ended cleanly for the next request
    /// to `endpoint`, unless the instance has enough connections.
    pub(super) fn checkin(self: &Arc<Self>, endpoint: u64, mut conn: Conn) {
        if !conn.link.idle_usable() {
            return;
        }
        conn.link.shrink();
        let refused = {
            let mut slots = self.lock();
            let slot = slots.entry(endpoint).or_default();
            if slot.counters.open.load(Ordering::Acquire) > self.max || slot.idle.len() >= self.max
            {
                Some(conn)
            } else {
                slot.idle.push(Idle {
                    conn,
                    since: Instant::now(),
                });
                None
            }
        };
        drop(refused);
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// Idle connections, all instances.
    #[cfg(test)]
    pub(super) fn idle(&self) -> usize {
        self.lock().values().map(|s| s.idle.len()).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes the idle connections that are too old or closed, returned to be
/// dropped outside the lock.
fn expire(idle: &mut Vec<Idle>, keep_for: Duration) -> Vec<Idle> {
    if idle.is_empty() {
        return Vec::new();
    }
    let mut stale = Vec::new();
    for i in std::mem::take(idle) {
        if i.since.elapsed() < keep_for && i.conn.link.idle_usable() {
            idle.push(i);
        } else {
            stale.push(i);
        }
    }
    stale
}

/// Drops idle connections past [`IDLE_KEEP`] and instances with no
/// connection left, every [`SWEEP_EVERY`], until nothing is idle (or the
/// pool is gone with its upstream).
async fn sweep(pool: Weak<Pool>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let mut stale = Vec::new();
        let mut slots = pool.lock();
        for slot in slots.values_mut() {
            stale.extend(expire(&mut slot.idle, pool.idle_keep));
        }
        slots.retain(|_, s| !s.idle.is_empty() || s.counters.open.load(Ordering::Acquire) > 0);
        let idle = slots.values().any(|s| !s.idle.is_empty());
        if !idle {
            pool.sweeping.store(false, Ordering::Release);
        }
        drop(slots);
        drop(stale);
        if !idle {
            return;
        }
    }
}
