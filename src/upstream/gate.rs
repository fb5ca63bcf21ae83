//! The way in to a site's processes that speak HTTP to the router (Python's
//! workers, `[app]` instances): the request body spooled (a slow upload
//! holds no process), a place in [`Admission`] (waiting up to
//! `queue_timeout`, then 503), a [`RuntimeLease`] on a ready process
//! (starting the runtime if it is scaled to zero).
//!
//! Invariant: a request is counted as waiting from the moment it enters
//! until it holds its lease or gives up, so [`Gate::settle`] (before the
//! processes of a replaced generation are stopped) fails no request that
//! was routed here before a reload swapped the table.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admission::{Admission, Permit};
use super::spool::{spool, Spooled};
use super::{RequestBody, RequestContext, UpstreamError};
use crate::metrics::SiteStats;
use crate::supervisor::{RuntimeHandle, RuntimeLease};

pub struct Gate {
    runtime: Arc<dyn RuntimeHandle>,
    admission: Arc<Admission>,
    queue_timeout: Duration,
    /// Requests admitted that hold no lease yet (spooling, queued, waiting
    /// for a process).
    waiting: AtomicUsize,
    stats: Arc<SiteStats>,
}

/// A request let in: its spooled body, its place and its lease.
pub struct Admitted {
    pub body: Spooled,
    pub permit: Permit,
    pub lease: RuntimeLease,
}

impl Gate {
    /// A gate of `capacity` places in front of `runtime`.
    pub fn new(
        runtime: Arc<dyn RuntimeHandle>,
        capacity: usize,
        queue_timeout: Duration,
        stats: Arc<SiteStats>,
    ) -> Self {
        Gate {
            runtime,
            admission: Admission::new(capacity),
            queue_timeout,
            waiting: AtomicUsize::new(0),
            stats,
        }
    }

    /// Places in use and in total.
    pub fn places(&self) -> (u64, u64) {
        let capacity = self.admission.capacity();
        let busy = capacity.saturating_sub(self.admission.available());
        (busy as u64, capacity as u64)
    }

    /// The request's way to a process: its body spooled, a place (waiting
    /// up to `queue_timeout`), a lease on a ready process.
    pub async fn admit(
        &self,
        body: RequestBody,
        ctx: &RequestContext,
    ) -> Result<Admitted, UpstreamError> {
        let waiting = Waiting::enter(&self.waiting);
        let body = spool(body, ctx.site.limits.body).await?;
        let permit = match self.admission.acquire().immediate() {
            Ok(permit) => {
                self.stats.queued(Duration::ZERO);
                permit
            }
            Err(wait) => {
                let queued = Instant::now();
                let permit = tokio::time::timeout(self.queue_timeout, wait).await;
                self.stats.queued(queued.elapsed());
                permit.map_err(|_| UpstreamError::QueueTimeout(self.queue_timeout))?
            }
        };
        let lease = match self.runtime.try_ready() {
            Some(lease) => lease,
            None => self.runtime.ready().await?,
        };
        drop(waiting);
        Ok(Admitted {
            body,
            permit,
            lease,
        })
    }

    /// Waits until no request is between admission and its lease (bounded by
    /// the queue timeout), so that stopping the processes afterwards fails no
    /// request that was routed here before a reload swapped the table.
    pub async fn settle(&self) {
        let deadline = Instant::now() + self.queue_timeout + Duration::from_secs(1);
        let mut quiet = 0;
        while quiet < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(25)).await;
            quiet = if self.waiting.load(Ordering::Acquire) == 0 {
                quiet + 1
            } else {
                0
            };
        }
    }
}

/// Counts a request in [`Gate::waiting`] while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
