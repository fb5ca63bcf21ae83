//! What the router threads' kept small files (`upstream::static_files::hot`)
//! hold and did, server-wide: counted per thread, summed at scrape time.
//!
//! Each router thread keeps its own files and counts in its own
//! [`ThreadCounts`]: only that thread writes them (a plain load and store,
//! no atomic read-modify-write, no cache line shared with another lane on
//! the request path); a scrape reads every thread's. A thread that ends
//! folds its counters into the retired totals and leaves the list, so
//! counters never go back and the list holds live threads only.
//!
//! Invariants:
//! - Counters (answers, stored, changed, evicted) only grow; the gauges
//!   (files, bytes) are what live threads hold now.
//! - Only the owning thread writes its [`ThreadCounts`]; [`snapshot`] may
//!   read a thread's counters mid-request (each value is whole, the set may
//!   be a few requests apart: good enough for a scrape).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// One thread's counts (see the module docs for who writes them).
#[derive(Debug, Default)]
pub struct ThreadCounts {
    answers: AtomicU64,
    stored: AtomicU64,
    changed: AtomicU64,
    evicted: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
}

/// Sums over every thread, live and ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KeptSnapshot {
    /// Requests answered from a kept file (checked unchanged).
    pub answers: u64,
    /// Files read into memory to be kept.
    pub stored: u64,
    /// Kept files found changed (or gone) at a request's check, and dropped.
    pub changed: u64,
    /// Kept files dropped to make room (a thread's budget).
    pub evicted: u64,
    /// Files kept now.
    pub files: u64,
    /// Bytes kept now (files, their paths and headers).
    pub bytes: u64,
}

/// Live threads' counts.
static THREADS: Mutex<Vec<Arc<ThreadCounts>>> = Mutex::new(Vec::new());

/// What ended threads counted.
static RETIRED: Mutex<KeptSnapshot> = Mutex::new(KeptSnapshot {
    answers: 0,
    stored: 0,
    changed: 0,
    evicted: 0,
    files: 0,
    bytes: 0,
});

/// Adds one to a counter only its owning thread writes.
fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Relaxed) + 1, Relaxed);
}

impl ThreadCounts {
    /// A new thread's counts, listed for [`snapshot`] until [`retire`](Self::retire).
    pub fn register() -> Arc<ThreadCounts> {
        let counts = Arc::new(ThreadCounts::default());
        lock(&THREADS).push(counts.clone());
        counts
    }

    pub fn answered(&self) {
        bump(&self.answers);
    }

    pub fn stored(&self) {
        bump(&self.stored);
    }

    pub fn changed(&self) {
        bump(&self.changed);
    }

    pub fn evicted(&self) {
        bump(&self.evicted);
    }

    /// What the thread holds now.
    pub fn holding(&self, files: usize, bytes: usize) {
        self.files.store(files as u64, Relaxed);
        self.bytes.store(bytes as u64, Relaxed);
    }

    /// This thread's own counts.
    pub fn own(&self) -> KeptSnapshot {
        KeptSnapshot {
            answers: self.answers.load(Relaxed),
            stored: self.stored.load(Relaxed),
            changed: self.changed.load(Relaxed),
            evicted: self.evicted.load(Relaxed),
            files: self.files.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
        }
    }

    /// The thread ends: its counters go to the retired totals (what it
    /// held goes with it).
    pub fn retire(self: &Arc<Self>) {
        let mut threads = lock(&THREADS);
        threads.retain(|t| !Arc::ptr_eq(t, self));
        let own = self.own();
        let mut retired = lock(&RETIRED);
        retired.answers += own.answers;
        retired.stored += own.stored;
        retired.changed += own.changed;
        retired.evicted += own.evicted;
    }
}

/// Every thread's counts summed, ended threads' included.
pub fn snapshot() -> KeptSnapshot {
    let threads = lock(&THREADS);
    let mut sum = *lock(&RETIRED);
    for t in threads.iter().map(|t| t.own()) {
        sum.answers += t.answers;
        sum.stored += t.stored;
        sum.changed += t.changed;
        sum.evicted += t.evicted;
        sum.files += t.files;
        sum.bytes += t.bytes;
    }
    sum
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The other tests of the crate keep files too: compare differences.
    fn delta(before: KeptSnapshot, after: KeptSnapshot) -> (u64, u64, u64, u64) {
        (
            after.answers - before.answers,
            after.stored - before.stored,
            after.changed - before.changed,
            after.evicted - before.evicted,
        )
    }

    #[test]
    fn counts_of_live_and_ended_threads_add_up_and_held_bytes_leave_with_their_thread() {
        // Serialized against other snapshots of this test module only; other
        // threads may count meanwhile, so the checks below allow more.
        let before = snapshot();
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let counts = ThreadCounts::register();
            counts.stored();
            counts.answered();
            counts.answered();
            counts.changed();
            counts.evicted();
            counts.holding(3, 7_000_000_000);
            tx.send(()).unwrap();
            go_rx.recv().unwrap();
            counts.retire();
        });
        rx.recv().unwrap();
        let live = snapshot();
        let (answers, stored, changed, evicted) = delta(before, live);
        assert!(
            answers >= 2 && stored >= 1 && changed >= 1 && evicted >= 1,
            "{live:?}"
        );
        assert!(
            live.bytes >= 7_000_000_000,
            "the live thread's bytes are counted: {live:?}"
        );
        go_tx.send(()).unwrap();
        thread.join().unwrap();
        let after = snapshot();
        let (answers, stored, changed, evicted) = delta(before, after);
        assert!(
            answers >= 2 && stored >= 1 && changed >= 1 && evicted >= 1,
            "counters stay: {after:?}"
        );
        assert!(
            after.bytes < 7_000_000_000,
            "an ended thread holds nothing: {after:?}"
        );
    }
}
