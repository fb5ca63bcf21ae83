//! The Python thread pool: `threads` dedicated OS threads that attach to the
//! interpreter once, detach while they wait for work, and run one job at a time
//! with the GIL held. Results go back to tokio over channels owned by the job;
//! the GIL is never held across an `.await` (granian's `blocking.rs` model).
//!
//! Dispatch is LIFO and direct: a job goes to the thread that became idle
//! most recently, through that thread's own slot, so under light load one or
//! two threads stay hot and the GIL does not travel between fifteen; a job
//! that finds no idle thread waits in a FIFO backlog that busy threads drain.
//! Waiting is a condition variable, never a spin (a shared channel whose
//! receive backs off with `sched_yield` cost a context switch or more per
//! request: see `docs/performance.md`).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use pyo3::prelude::*;

/// A unit of work run on a Python thread, with the GIL held.
pub type Job = Box<dyn for<'py> FnOnce(Python<'py>) + Send + 'static>;

/// Handle to the pool; cloning is cheap. Dropping every handle stops the
/// threads once they finish their current job and the backlog.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
    _closer: Arc<Closer>,
}

struct Shared {
    state: Mutex<State>,
    closed: AtomicBool,
}

struct State {
    /// Idle threads, most recently idle last.
    idle: Vec<Arc<Slot>>,
    backlog: VecDeque<Job>,
}

/// Where one idle thread waits for the job handed to it.
struct Slot {
    job: Mutex<Option<Job>>,
    ready: Condvar,
}

/// Closes the pool when the last [`Pool`] handle goes.
struct Closer(Arc<Shared>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        let idle = std::mem::take(&mut lock(&self.0.state).idle);
        for slot in idle {
            let _guard = lock(&slot.job);
            slot.ready.notify_one();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    /// Starts `threads` Python threads.
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                idle: Vec::with_capacity(threads),
                backlog: VecDeque::new(),
            }),
            closed: AtomicBool::new(false),
        });
        for i in 0..threads {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("python-{i}"))
                .spawn(move || worker(shared))?;
        }
        Ok(Self {
            _closer: Arc::new(Closer(shared.clone())),
            shared,
        })
    }

    /// Hands a job to the most recently idle thread, or queues it; returns
    /// it back if the pool has stopped.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(job);
        }
        let mut state = lock(&self.shared.state);
        match state.idle.pop() {
            Some(slot) => {
                drop(state);
                *lock(&slot.job) = Some(job);
                slot.ready.notify_one();
            }
            None => state.backlog.push_back(job),
        }
        Ok(())
    }
}

fn worker(shared: Arc<Shared>) {
    let slot = Arc::new(Slot {
        job: Mutex::new(None),
        ready: Condvar::new(),
    });
    Python::attach(|py| loop {
        let Some(job) = py.detach(|| next_job(&shared, &slot)) else {
            return;
        };
        // A bug in our own request code must not take a serving thread down;
        // the job's channels are dropped and the request becomes a 500.
        if std::panic::catch_unwind(AssertUnwindSafe(|| job(py))).is_err() {
            eprintln!("polyhost-python: internal error while serving a request (see above)");
        }
    });
}

/// The next job for this thread: from the backlog, or handed to its slot
/// after it registered as idle. `None` once the pool is closed and drained.
fn next_job(shared: &Shared, slot: &Arc<Slot>) -> Option<Job> {
    {
        let mut state = lock(&shared.state);
        if let Some(job) = state.backlog.pop_front() {
            return Some(job);
        }
        if shared.closed.load(Ordering::Acquire) {
            return None;
        }
        state.idle.push(slot.clone());
    }
    let mut job = lock(&slot.job);
    loop {
        if let Some(job) = job.take() {
            return Some(job);
        }
        if shared.closed.load(Ordering::Acquire) {
            return None;
        }
        job = slot.ready.wait(job).unwrap_or_else(|p| p.into_inner());
    }
}
