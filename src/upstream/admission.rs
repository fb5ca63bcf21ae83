//! A counting gate for requests to a site's processes (Python: processes ×
//! threads; `[app]` instances) whose freed places go to a waiter of the
//! freeing router lane first. (PHP counts its connections in
//! `upstream::php::places`, which also writes a waiting request onto the
//! connection whose answer frees its place.)
//!
//! Why not `tokio::sync::Semaphore`: it hands a freed permit to the oldest
//! waiter wherever it waits. When a site is at capacity, that waiter is on
//! the other lane about half the time, and waking a task of another lane's
//! runtime is an `eventfd` write and a wake-up of that lane's thread: with
//! 32 clients on a 30-thread site, 0.36 `write`s per request (8,452 in 5 s,
//! against 324 with 24 clients). Here a freed place goes to the oldest
//! waiter of the freeing lane, so the woken task runs on the thread that is
//! already awake, unless a waiter of another lane came more than
//! [`PREFER_OWN_FOR`] before it (or the freeing lane has none): no waiter is
//! passed over for one that came more than that after it, so the unfairness
//! between lanes is bounded, and a lane with waiters but nothing in flight
//! (so nothing of its own to free) is served by the others.
//!
//! The bound is on the difference of the two waiters' ages, not on the
//! other's age alone: in a deep queue every waiter has waited longer than
//! any small bound, and comparing ages with the bound alone sent nearly
//! every freed place to the other lane (measured, `[app]` Node hello at
//! 256 clients on 100 places, two lanes: 0.94 `eventfd` writes per request,
//! against none on one lane).
//!
//! Invariants: `free + granted permits == capacity`; a waiter is in exactly
//! one queue until it is granted (under the lock) or gives up; a waiter that
//! gives up after being granted passes its place on, so no place is lost;
//! `free > 0` only while nobody waits.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;

/// How long a waiter of another lane may be passed over for the freeing
/// lane's own.
pub const PREFER_OWN_FOR: Duration = Duration::from_millis(1);

pub struct Admission {
    capacity: usize,
    /// [`PREFER_OWN_FOR`] (a parameter for the tests, which must not
    /// depend on how fast a busy machine runs them).
    prefer_own_for: Duration,
    state: Mutex<State>,
}

struct State {
    free: usize,
    /// Waiters per lane (few lanes: a list, not a map), oldest first.
    queues: Vec<(usize, VecDeque<Arc<Waiter>>)>,
    waiting: usize,
}

struct Waiter {
    lane: usize,
    since: Instant,
    granted: AtomicBool,
    waker: AtomicWaker,
}

/// One place; freed when dropped.
pub struct Permit {
    admission: Arc<Admission>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.release_on(crate::lanes::current());
    }
}

impl Admission {
    pub fn new(capacity: usize) -> Arc<Self> {
        Self::with_bound(capacity, PREFER_OWN_FOR)
    }

    fn with_bound(capacity: usize, prefer_own_for: Duration) -> Arc<Self> {
        Arc::new(Admission {
            capacity,
            prefer_own_for,
            state: Mutex::new(State {
                free: capacity,
                queues: Vec::new(),
                waiting: 0,
            }),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Places not held by anyone.
    pub fn available(&self) -> usize {
        self.lock().free
    }

    /// Waits for a place (cancel by dropping the future).
    pub fn acquire(self: &Arc<Self>) -> Acquire {
        self.acquire_on(crate::lanes::current())
    }

    fn acquire_on(self: &Arc<Self>, lane: usize) -> Acquire {
        let mut st = self.lock();
        if st.free > 0 {
            st.free -= 1;
            return Acquire {
                admission: self.clone(),
                waiter: None,
                ready: true,
            };
        }
        let waiter = Arc::new(Waiter {
            lane,
            since: Instant::now(),
            granted: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        st.queue(lane).push_back(waiter.clone());
        st.waiting += 1;
        Acquire {
            admission: self.clone(),
            waiter: Some(waiter),
            ready: false,
        }
    }

    /// Frees a place: to the oldest waiter of `lane`, or of another lane if
    /// that one came more than `prefer_own_for` before it or `lane` has none.
    fn release_on(&self, lane: usize) {
        let mut st = self.lock();
        let Some(waiter) = st.next_waiter(lane, self.prefer_own_for) else {
            st.free += 1;
            return;
        };
        st.waiting -= 1;
        waiter.granted.store(true, Ordering::Release);
        drop(st);
        waiter.waker.wake();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn queue(&mut self, lane: usize) -> &mut VecDeque<Arc<Waiter>> {
        let i = match self.queues.iter().position(|(l, _)| *l == lane) {
            Some(i) => i,
            None => {
                self.queues.push((lane, VecDeque::new()));
                self.queues.len() - 1
            }
        };
        &mut self.queues[i].1
    }

    fn next_waiter(&mut self, lane: usize, prefer_own_for: Duration) -> Option<Arc<Waiter>> {
        if self.waiting == 0 {
            return None;
        }
        let oldest_other = self
            .queues
            .iter()
            .filter(|(l, _)| *l != lane)
            .filter_map(|(l, q)| q.front().map(|w| (*l, w.since)))
            .min_by_key(|&(_, since)| since);
        let own = self.queue(lane).front().map(|w| w.since);
        let from = match (oldest_other, own) {
            (Some((other, _)), None) => other,
            (Some((other, since)), Some(own))
                if own.saturating_duration_since(since) > prefer_own_for =>
            {
                other
            }
            _ => lane,
        };
        self.queue(from).pop_front()
    }
}

/// The wait for a place.
pub struct Acquire {
    admission: Arc<Admission>,
    /// `None` once the place is ours (or was free at once).
    waiter: Option<Arc<Waiter>>,
    ready: bool,
}

impl Future for Acquire {
    type Output = Permit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        if !self.ready {
            let waiter = self.waiter.as_ref().expect("waiting");
            waiter.waker.register(cx.waker());
            if !waiter.granted.load(Ordering::Acquire) {
                return Poll::Pending;
            }
            self.waiter = None;
        }
        self.ready = false; // the permit leaves with this poll
        Poll::Ready(Permit {
            admission: self.admission.clone(),
        })
    }
}

impl Acquire {
    /// The permit at once if a place was free, else the wait for one (the
    /// caller then need not start a clock or a timer for a wait that is not).
    pub fn immediate(mut self) -> Result<Permit, Acquire> {
        if !self.ready {
            return Err(self);
        }
        self.ready = false; // the permit leaves here
        Ok(Permit {
            admission: self.admission.clone(),
        })
    }
}

impl Drop for Acquire {
    /// Giving up: leave the queue, or pass on a place granted meanwhile.
    fn drop(&mut self) {
        if self.ready {
            // Free at once but never polled: the place goes back.
            self.admission.release_on(crate::lanes::current());
            return;
        }
        let Some(waiter) = self.waiter.take() else {
            return; // the permit was handed out
        };
        let mut st = self.admission.lock();
        if waiter.granted.load(Ordering::Acquire) {
            drop(st);
            self.admission.release_on(crate::lanes::current());
            return;
        }
        let queue = st.queue(waiter.lane);
        if let Some(i) = queue.iter().position(|w| Arc::ptr_eq(w, &waiter)) {
            queue.remove(i);
            st.waiting -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    /// Lanes 1 and 2 as the tests name them (real lanes are threads).
    fn acquire(a: &Arc<Admission>, lane: usize) -> Acquire {
        a.acquire_on(lane)
    }

    fn release(a: &Arc<Admission>, permit: Permit, lane: usize) {
        std::mem::forget(permit);
        a.release_on(lane);
    }

    #[test]
    fn places_are_bounded_and_waiters_of_a_lane_are_served_in_order() {
        let a = Admission::new(2);
        let p1 = acquire(&a, 1).now_or_never().unwrap();
        let _p2 = acquire(&a, 1).now_or_never().unwrap();
        assert_eq!(a.available(), 0);
        let mut first = acquire(&a, 1);
        let mut second = acquire(&a, 1);
        assert!((&mut first).now_or_never().is_none());
        assert!((&mut second).now_or_never().is_none());
        release(&a, p1, 1);
        assert!((&mut second).now_or_never().is_none(), "FIFO within a lane");
        let p3 = (&mut first).now_or_never().expect("granted");
        drop(first);
        assert_eq!(a.available(), 0, "the place went to the waiter, not back");
        release(&a, p3, 1);
        assert!(second.now_or_never().is_some());
    }

    #[test]
    fn immediate_hands_out_a_free_place_or_the_wait_for_one() {
        let a = Admission::new(1);
        let held = acquire(&a, 1).immediate().ok().expect("a place was free");
        assert_eq!(a.available(), 0);
        let Err(mut wait) = acquire(&a, 1).immediate() else {
            panic!("no place was free");
        };
        assert!((&mut wait).now_or_never().is_none());
        drop(held); // released on the test thread's lane (0), to lane 1's waiter
        let granted = wait.now_or_never().expect("the freed place");
        assert_eq!(a.available(), 0);
        drop(granted);
        assert_eq!(
            a.available(),
            1,
            "a permit from immediate() gives its place back"
        );
    }

    #[test]
    fn a_freed_place_goes_to_the_freeing_lanes_waiter_unless_another_waited_too_long() {
        // A bound no busy machine reaches between two lines.
        let a = Admission::with_bound(1, Duration::from_secs(3600));
        let held = acquire(&a, 1).now_or_never().unwrap();
        let mut other = acquire(&a, 2); // older
        let mut own = acquire(&a, 1);
        release(&a, held, 1);
        let _held = (&mut own)
            .now_or_never()
            .expect("the freeing lane's own waiter first");
        assert!((&mut other).now_or_never().is_none());
        // Older by more than the bound (the sleep lasts at least that long),
        // the other lane's waiter comes first.
        let a = Admission::with_bound(1, Duration::from_nanos(1));
        let held = acquire(&a, 1).now_or_never().unwrap();
        let mut other = acquire(&a, 2);
        std::thread::sleep(Duration::from_millis(1));
        let mut own_again = acquire(&a, 1);
        release(&a, held, 1);
        let held = (&mut other)
            .now_or_never()
            .expect("waited too long to be passed over");
        assert!((&mut own_again).now_or_never().is_none());
        // A lane with nobody waiting hands its place to another lane's waiter.
        release(&a, held, 2);
        assert!(own_again.now_or_never().is_some());
    }

    #[test]
    fn waiters_that_all_waited_past_the_bound_are_served_on_their_lane_by_age() {
        // A deep queue: every waiter has waited longer than the bound (the
        // sleep lasts at least that long), the freeing lane's oldest came
        // first: it is served, not the other lane's.
        let a = Admission::with_bound(1, Duration::from_nanos(1));
        let held = acquire(&a, 1).now_or_never().unwrap();
        let mut own = acquire(&a, 1);
        let mut other = acquire(&a, 2);
        std::thread::sleep(Duration::from_millis(1));
        release(&a, held, 1);
        let held = (&mut own)
            .now_or_never()
            .expect("the freeing lane's older waiter");
        assert!((&mut other).now_or_never().is_none());
        // Now the other lane's waiter is the oldest of all: it comes next,
        // whichever lane frees.
        let mut own_later = acquire(&a, 1);
        release(&a, held, 1);
        let _held = (&mut other).now_or_never().expect("the oldest of all");
        assert!((&mut own_later).now_or_never().is_none());
    }

    #[test]
    fn giving_up_leaves_the_queue_or_passes_a_granted_place_on() {
        let a = Admission::new(1);
        let held = acquire(&a, 1).now_or_never().unwrap();
        let mut gone = acquire(&a, 1);
        assert!((&mut gone).now_or_never().is_none());
        drop(gone); // gave up while waiting
        let mut granted_then_gone = acquire(&a, 1);
        assert!((&mut granted_then_gone).now_or_never().is_none());
        let last = acquire(&a, 1);
        release(&a, held, 1);
        drop(granted_then_gone); // granted, never polled again
        assert!(last.now_or_never().is_some(), "the place was passed on");
        // Free at once but dropped unpolled: the place comes back.
        let b = Admission::new(1);
        drop(acquire(&b, 1));
        assert_eq!(b.available(), 1);
    }

    #[tokio::test]
    async fn a_waiter_is_woken_when_a_place_frees() {
        let a = Admission::new(1);
        let held = a.acquire().await;
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.acquire().await }
        });
        tokio::task::yield_now().await;
        drop(held);
        let permit = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        drop(permit);
        assert_eq!(a.available(), 1);
    }
}
