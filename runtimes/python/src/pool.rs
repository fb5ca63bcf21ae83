//! The Python thread pool: `threads` dedicated OS threads that attach to the
//! interpreter once, detach while they wait for work, and run one job at a time
//! with the GIL held. Results go back to tokio over channels owned by the job;
//! the GIL is never held across an `.await` (granian's `blocking.rs` model).

use std::panic::AssertUnwindSafe;

use pyo3::prelude::*;

/// A unit of work run on a Python thread, with the GIL held.
pub type Job = Box<dyn for<'py> FnOnce(Python<'py>) + Send + 'static>;

/// Handle to the pool; cloning is cheap. Dropping every handle stops the threads
/// once they finish their current job.
#[derive(Clone)]
pub struct Pool {
    tx: crossbeam_channel::Sender<Job>,
}

impl Pool {
    /// Starts `threads` Python threads.
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("python-{i}"))
                .spawn(move || worker(rx))?;
        }
        Ok(Self { tx })
    }

    /// Queues a job; returns it back if the pool has stopped.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        self.tx.send(job).map_err(|e| e.0)
    }
}

fn worker(rx: crossbeam_channel::Receiver<Job>) {
    Python::attach(|py| loop {
        let Ok(job) = py.detach(|| rx.recv()) else {
            return;
        };
        // A bug in our own request code must not take a serving thread down;
        // the job's channels are dropped and the request becomes a 500.
        if std::panic::catch_unwind(AssertUnwindSafe(|| job(py))).is_err() {
            eprintln!("polyhost-python: internal error while serving a request (see above)");
        }
    });
}
