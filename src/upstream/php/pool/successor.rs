//! Successors: the connection opened while a connection's last request
//! runs, pooled once a live php-fpm child has read its probe (`warm`), and
//! the place of the connection it replaces.
//!
//! The place of a retired connection does not go to a queued request while
//! its successor is still on its way and nothing is idle: that request
//! would wait for the successor alone (a spare child woken, scheduled, its
//! `accept` and read: milliseconds on a busy machine, tens at worst) while
//! the other connections free up within a request's time and go to the
//! requests queued behind it. The place is *parked* instead; queued
//! requests take whichever connection frees first, in their order, and
//! the successor, once ready, comes with the parked place to the request
//! at the head of the queue, its request written onto it at once (as
//! `ConnPool::finish` hands a connection on).
//!
//! Invariants (under the pool's lock): successors on their way ==
//! `unmatched` + `parked.len()`; a place is parked only while no connection
//! is idle; every successor's end (ready, failed, closed pool, task
//! dropped) takes one parked place if there is one, else one `unmatched`,
//! so no place stays parked past the end of the successor it waits for.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{Conn, ConnPool, Place, PoolEvent};

impl ConnPool {
    /// Opens the successor of a connection whose last request is going out
    /// (see the module doc): connected to `socket` (served by `uid`), pooled
    /// once a child has read its probe (`warm`), within `timeout`, else
    /// closed. Runs in a task of its own on the caller's runtime.
    pub fn warm_successor(self: &Arc<Self>, socket: PathBuf, uid: Option<u32>, timeout: Duration) {
        let epoch = self.epoch.load(Ordering::SeqCst);
        self.warming.fetch_add(1, Ordering::SeqCst);
        self.lock().unmatched += 1;
        // Ends the warm-up however the task ends (even dropped unfinished,
        // its runtime stopping), so no request waits for it past then.
        let mut warming = Warming {
            pool: self.clone(),
            pooled: false,
        };
        tokio::spawn(async move {
            let pool = warming.pool.clone();
            let on_demand = pool.on_demand;
            let opened = tokio::time::timeout(
                timeout,
                crate::upstream::php::warm::open(&socket, uid, on_demand),
            )
            .await;
            match opened {
                Ok(Ok(stream)) if pool.epoch.load(Ordering::SeqCst) == epoch => {
                    pool.counters.count(PoolEvent::Warmed);
                    warming.pooled();
                    pool.successor_ready(socket, Conn { stream, served: 0 });
                }
                Ok(Ok(_closed_pool)) => {}
                Ok(Err(_)) | Err(_) => pool.counters.count(PoolEvent::WarmFailed),
            }
        });
    }

    /// The place of a connection just retired: parked for a successor on
    /// its way while nothing is idle; else it goes on with an idle
    /// connection, if there is one, or is freed.
    pub(super) fn pass_retired_place(self: &Arc<Self>, path: PathBuf, place: Place) {
        {
            let mut state = self.lock();
            if state.unmatched > 0 && state.idle.is_empty() {
                state.unmatched -= 1;
                state.parked.push(place);
                return;
            }
        }
        match self.take_idle(&path) {
            Some(conn) => self.hand_on(path, conn, place),
            None => drop(place),
        }
    }

    /// A successor a live child holds: with a parked place, to the next
    /// queued request (unless a request already holding a place waits for
    /// a connection: then to it, the parked place freed); else pooled.
    fn successor_ready(self: &Arc<Self>, path: PathBuf, conn: Conn) {
        let (place, connless) = {
            let mut state = self.lock();
            let place = state.parked.pop();
            if place.is_none() {
                state.unmatched = state.unmatched.saturating_sub(1);
            }
            (place, !state.waiting.is_empty())
        };
        match place {
            Some(place) if !connless => self.hand_on(path, conn, place),
            place => {
                self.push_idle(path, conn);
                drop(place);
            }
        }
    }

    /// A successor that came to nothing: the place parked for it, if any.
    fn successor_failed(&self) -> Option<Place> {
        let mut state = self.lock();
        let place = state.parked.pop();
        if place.is_none() {
            state.unmatched = state.unmatched.saturating_sub(1);
        }
        place
    }
}

/// A successor on its way ([`ConnPool::warm_successor`]); its drop ends it.
struct Warming {
    pool: Arc<ConnPool>,
    /// It went into the pool (or to a waiting request).
    pooled: bool,
}

impl Warming {
    fn pooled(&mut self) {
        self.pooled = true;
    }
}

impl Drop for Warming {
    fn drop(&mut self) {
        // Freed before the waiters look again: the request it goes to
        // looks too (and opens a connection if none is idle).
        let parked = (!self.pooled).then(|| self.pool.successor_failed());
        drop(parked);
        // Waiting requests keep their turn while other successors are on
        // their way; when none is left, or this one came to nothing, they
        // look again (and open a connection if none is idle).
        if self.pool.warming.fetch_sub(1, Ordering::SeqCst) == 1 || !self.pooled {
            self.pool.wake_waiters();
        }
    }
}
