//! How many serving threads wait for requests at once.
//!
//! Every thread parked in `epoll_wait` is one the kernel may wake for the
//! next request, and a woken thread that then waits for the GIL is woken a
//! second time. With a fast app the GIL serialises the Python part anyway, so
//! fifteen threads taking turns cost two context switches per request where
//! two threads cost almost none (measured: 1.0 vs 0.13 per request). So at
//! most [`EAGER`] threads listen; the others sit on a bench. A thread back
//! from a request listens if there is room, else it sits down.
//!
//! Blocking apps (a request that sleeps, or waits on a database) need more
//! threads: when nobody has listened for [`PROMOTE_AFTER`] (every listener
//! took a request and none came back), the watchdog thread calls one thread
//! off the bench, and again after each further interval while that lasts.
//! So concurrency grows to `--threads` in steps of a few milliseconds, and
//! shrinks again as threads come back.
//!
//! Invariants: a thread is listening, benched, or busy with a request; the
//! watchdog only ticks while somebody sits on the bench and nobody listens,
//! and sleeps on a condition variable otherwise (an idle worker costs no
//! wake-ups).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Threads that may wait for requests at once.
pub const EAGER: usize = 2;
/// How long a request may wait with nobody listening before a benched thread is called.
pub const PROMOTE_AFTER: Duration = Duration::from_millis(2);

#[derive(Default)]
struct State {
    listening: usize,
    benched: usize,
    /// Benched threads called up but not yet listening.
    called: usize,
    /// Counts every start of listening, so the watchdog sees whether anyone
    /// listened between two ticks.
    epoch: u64,
    /// Counts the moments the last listener left while threads were benched.
    vacancies: u64,
    /// The watchdog is ticking (else it waits to be told of a vacancy).
    ticking: bool,
}

pub struct Pacer {
    state: Mutex<State>,
    bench: Condvar,
    vacancy: Condvar,
    eager: usize,
}

impl Pacer {
    /// For `threads` serving threads.
    pub fn new(threads: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            bench: Condvar::new(),
            vacancy: Condvar::new(),
            eager: EAGER.min(threads).max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until this thread may listen (call without the GIL).
    pub fn start_listening(&self) {
        let mut st = self.lock();
        if st.listening >= self.eager {
            if st.called > 0 {
                // Take the place the watchdog made (the called thread, when it
                // wakes, finds it taken and sits down again).
                st.called -= 1;
            } else {
                st.benched += 1;
                loop {
                    st = self.bench.wait(st).unwrap_or_else(|p| p.into_inner());
                    if st.called > 0 {
                        st.called -= 1;
                        break;
                    }
                    if st.listening < self.eager {
                        break;
                    }
                }
                st.benched -= 1;
            }
        }
        st.listening += 1;
        st.epoch += 1;
    }

    /// This thread stopped listening: it has a request (or an accept) to handle.
    pub fn stop_listening(&self) {
        let mut st = self.lock();
        st.listening -= 1;
        if st.listening == 0 && st.benched > 0 {
            st.vacancies += 1;
            if !st.ticking {
                st.ticking = true;
                self.vacancy.notify_one();
            }
        }
    }

    /// The watchdog: calls a benched thread whenever nobody has listened
    /// for [`PROMOTE_AFTER`]; stops ticking after a tick without vacancy.
    /// Runs forever on its own thread.
    pub fn watch(&self) {
        let mut st = self.lock();
        loop {
            while !st.ticking {
                st = self.vacancy.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            let (epoch, vacancies) = (st.epoch, st.vacancies);
            drop(st);
            std::thread::sleep(PROMOTE_AFTER);
            st = self.lock();
            if st.listening == 0 && st.epoch == epoch && st.benched > st.called {
                st.called += 1;
                self.bench.notify_one();
            } else if st.vacancies == vacancies && st.listening > 0 {
                st.ticking = false;
            }
        }
    }
}
