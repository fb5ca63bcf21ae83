//! The places of one PHP pool (at most `max_children` kept-alive
//! connections in use, or `dynamic`'s connections with their backlog) and
//! the requests queued for one.
//!
//! Why not `upstream::admission`: there a freed place wakes a waiting
//! request, which later takes a connection and writes its request: the
//! php-fpm child that just answered sleeps until that request's task has
//! been scheduled (behind every other ready task of its router lane, and on
//! another lane's thread when the oldest waiter is there), while behind
//! nginx the next request already waits in php-fpm's listen backlog. Here
//! a request that has to wait leaves its FastCGI records with its place in
//! the queue, and the pool writes them onto a kept-alive connection the
//! moment its previous answer has been read (`ConnPool::finish`): the
//! child reads its next request at once, and the waiting request only
//! reads the answer (docs/php.md, "Queued requests are written at once").
//!
//! Which waiter a freed place goes to: the oldest of the freeing router
//! lane (its connection is registered there: no wake-up of another lane's
//! thread, no move of the connection), unless another lane's oldest waiter
//! came more than [`PREFER_OWN_FOR`] before it. Unlike a bound on the wait
//! itself, this keeps a saturated pool's hand-offs on their lanes (every
//! waiter then waits longer than any fixed bound) while no request is
//! passed over for one that came that much later.
//!
//! Invariants: `free + places held + places in flight to a waiter ==
//! capacity`; a waiter is in the queue until it is granted (under the lock)
//! or gives up; a [`Grant`] sent to a waiter that gave up comes back to the
//! sender, who passes its place on; `free > 0` only while nobody waits.

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::pool::Conn;

/// How much earlier another lane's waiter must have come to be served
/// before the freeing lane's own.
pub const PREFER_OWN_FOR: Duration = Duration::from_millis(1);

pub struct Places {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    free: usize,
    /// Oldest first.
    waiters: VecDeque<Waiter>,
    next_id: u64,
}

impl State {
    fn pop(&mut self, lane: usize) -> Option<Waiter> {
        let own = self.waiters.iter().position(|w| w.lane == lane);
        let at = match (own, self.waiters.front()) {
            (Some(i), Some(oldest)) if oldest.since + PREFER_OWN_FOR >= self.waiters[i].since => i,
            _ => 0,
        };
        self.waiters.remove(at)
    }
}

/// A request queued for a place.
pub struct Waiter {
    id: u64,
    lane: usize,
    since: Instant,
    /// Its whole FastCGI request, when it may be written onto a kept-alive
    /// connection for it (replayable: see `exchange`).
    pub request: Option<Bytes>,
    tx: oneshot::Sender<Grant>,
}

/// A place; freed (to the next waiter) when dropped.
pub struct Place {
    places: Arc<Places>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.places.release();
    }
}

/// What a waiting request gets: its place, and possibly a kept-alive
/// connection with (the first `written` bytes of) its request on it.
pub struct Grant {
    pub place: Place,
    pub handed: Option<Handed>,
}

/// A kept-alive connection handed over with the request written onto it.
pub struct Handed {
    /// The socket it is connected to (the lease of its previous request).
    pub path: PathBuf,
    pub conn: Conn,
    /// The router lane its stream is registered with.
    pub lane: usize,
    /// How much of the waiter's request is on it (all, unless the socket
    /// buffer was full or the write failed).
    pub written: usize,
}

/// A place at once, or the wait for one.
pub enum Admit {
    Now(Place),
    Wait(Wait),
}

impl Places {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Places {
            capacity,
            state: Mutex::new(State {
                free: capacity,
                ..State::default()
            }),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Requests queued for a place now (tests).
    pub fn queued(&self) -> usize {
        self.lock().waiters.len()
    }

    /// A place, or a place in the queue; `request` is called (under the
    /// lock) only when the request has to wait.
    pub fn admit(self: &Arc<Self>, request: impl FnOnce() -> Option<Bytes>) -> Admit {
        let mut st = self.lock();
        if st.free > 0 {
            st.free -= 1;
            return Admit::Now(Place {
                places: self.clone(),
            });
        }
        let (tx, rx) = oneshot::channel();
        st.next_id += 1;
        let id = st.next_id;
        st.waiters.push_back(Waiter {
            id,
            lane: crate::lanes::current(),
            since: Instant::now(),
            request: request(),
            tx,
        });
        Admit::Wait(Wait {
            places: self.clone(),
            id,
            rx,
        })
    }

    /// The waiter a place freed on `lane` goes to (see the module doc).
    pub fn next_waiter(&self, lane: usize) -> Option<Waiter> {
        self.lock().pop(lane)
    }

    /// Gives `place` (with `handed`, if any) to `waiter`; if it gave up,
    /// the grant comes back (dropped, its place goes to the next waiter).
    pub fn grant(waiter: Waiter, place: Place, handed: Option<Handed>) -> Result<(), Grant> {
        waiter.tx.send(Grant { place, handed })
    }

    /// A place is free: to the next waiter, else free (under one lock, so
    /// no request queues while a place is free).
    fn release(self: &Arc<Self>) {
        let waiter = {
            let mut st = self.lock();
            match st.pop(crate::lanes::current()) {
                Some(w) => w,
                None => {
                    st.free += 1;
                    return;
                }
            }
        };
        // Refused (that request gave up just now): dropping the grant
        // passes its place on.
        let _ = Self::grant(
            waiter,
            Place {
                places: self.clone(),
            },
            None,
        );
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The wait for a place (cancel by dropping it).
pub struct Wait {
    places: Arc<Places>,
    id: u64,
    rx: oneshot::Receiver<Grant>,
}

impl Future for Wait {
    type Output = Grant;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Grant> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(grant)) => Poll::Ready(grant),
            // Not sent: every waiter taken out of the queue is granted
            // (`release`, `ConnPool::finish`); the request's timeout ends it.
            Poll::Ready(Err(_)) => Poll::Pending,
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Wait {
    /// Giving up: leave the queue; a grant already sent is passed on when
    /// its `Place` (and connection) drop with the channel.
    fn drop(&mut self) {
        let mut st = self.places.lock();
        if let Some(i) = st.waiters.iter().position(|w| w.id == self.id) {
            st.waiters.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn waiter(gate: &Arc<Places>) -> Wait {
        match gate.admit(|| None) {
            Admit::Wait(w) => w,
            Admit::Now(_) => panic!("a place was free"),
        }
    }

    /// Queued with a lane and an arrival time of the test's choosing.
    fn queued(gate: &Arc<Places>, lane: usize, since: Instant) -> Wait {
        let w = waiter(gate);
        let mut st = gate.lock();
        let last = st.waiters.back_mut().unwrap();
        (last.lane, last.since) = (lane, since);
        drop(st);
        w
    }

    #[test]
    fn places_are_counted_and_a_freed_one_goes_to_a_waiter() {
        let gate = Places::new(1);
        let Admit::Now(place) = gate.admit(|| None) else {
            panic!("one place is free")
        };
        let mut w = waiter(&gate);
        assert!((&mut w).now_or_never().is_none());
        drop(place);
        let grant = (&mut w).now_or_never().expect("granted");
        assert!(grant.handed.is_none());
        drop(w);
        // A waiter that gives up leaves the queue; its granted place is passed on.
        let mut second = waiter(&gate);
        let third = waiter(&gate);
        drop(third);
        drop(grant);
        let grant = (&mut second).now_or_never().expect("granted");
        let fourth = waiter(&gate);
        drop(fourth);
        drop(grant);
        let Admit::Now(_place) = gate.admit(|| None) else {
            panic!("the place is free again")
        };
        assert_eq!(gate.lock().free, 0, "the place just taken is the only one");
    }

    #[test]
    fn a_freed_place_stays_on_its_lane_unless_another_lane_came_much_earlier() {
        let gate = Places::new(1);
        let Admit::Now(_place) = gate.admit(|| None) else {
            panic!("one place is free")
        };
        let t0 = Instant::now();
        // Lane 2 came first, but lane 1's waiter came within the bound.
        let _a = queued(&gate, 2, t0);
        let _b = queued(&gate, 1, t0 + PREFER_OWN_FOR / 2);
        assert_eq!(gate.next_waiter(1).map(|w| w.lane), Some(1));
        // Lane 1's next came later than the bound after lane 2's: lane 2 first.
        let _c = queued(&gate, 1, t0 + PREFER_OWN_FOR * 3);
        assert_eq!(gate.next_waiter(1).map(|w| w.lane), Some(2));
        // Nobody of lane 3: the oldest.
        assert_eq!(gate.next_waiter(3).map(|w| w.lane), Some(1));
        assert!(gate.next_waiter(1).is_none());
    }
}
