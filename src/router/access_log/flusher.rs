//! The one flusher of every site log: a thread that, twice a second, writes
//! what each *active* log holds and closes the descriptor of a log that got
//! no line for [`CLOSE_AFTER`].
//!
//! A log is active from its first line after a quiet period until the
//! flusher closes it; only active logs are visited, so a tick costs what
//! the sites that log cost, not one timer or task per file (10,000 idle
//! sites: nothing at all). The list holds logs weakly: a log dropped (its
//! site gone) flushes itself in `Drop` and leaves the list at the next tick.
//!
//! Lock order: a log's own lock, then the list's (a line that activates a
//! log); the flusher never holds both.

use std::sync::{Mutex, Once, Weak};
use std::time::Duration;

use super::file::LogFile;

/// How often pending lines are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// A log's descriptor is closed after this long without a line (and
/// reopened by the next one, with the same checks, ownership and mode as
/// at site setup). Long enough that a site with steady traffic keeps its
/// descriptor (a reopen costs five system calls), short enough that an
/// idle site holds none for long.
pub const CLOSE_AFTER: Duration = Duration::from_secs(15);

/// [`CLOSE_AFTER`] in flusher ticks.
pub(super) const CLOSE_TICKS: u32 = (CLOSE_AFTER.as_millis() / FLUSH_EVERY.as_millis()) as u32;

/// The active logs.
static ACTIVE: Mutex<Vec<Weak<LogFile>>> = Mutex::new(Vec::new());

/// Held by a tick and by [`reopen_all`]: a tick takes the list out while it
/// visits it, and a reopen must see every active log.
static VISIT: Mutex<()> = Mutex::new(());

/// Hands a log that just became active to the flusher (its thread is
/// started on first use).
pub(super) fn activate(log: Weak<LogFile>) {
    ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).push(log);
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        let started = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(|| loop {
                std::thread::sleep(FLUSH_EVERY);
                tick();
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the log flusher: site log lines are written only when a log's buffer fills, or at shutdown");
        }
    });
}

/// One round: every active log writes what it holds; those that are done
/// (closed after [`CLOSE_AFTER`], or dropped) leave the list.
fn tick() {
    let _visit = VISIT.lock().unwrap_or_else(|p| p.into_inner());
    let logs = std::mem::take(&mut *ACTIVE.lock().unwrap_or_else(|p| p.into_inner()));
    let still: Vec<Weak<LogFile>> = logs
        .into_iter()
        .filter(|log| log.upgrade().is_some_and(|log| log.tick()))
        .collect();
    ACTIVE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(still);
}

/// Writes every active log's pending lines now (at shutdown: nothing is
/// left in memory when the process exits).
pub fn flush_all() {
    let logs: Vec<Weak<LogFile>> = ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for log in logs.iter().filter_map(Weak::upgrade) {
        log.flush();
    }
}

/// Writes every active log's pending lines to the file its descriptor
/// names, then closes that descriptor: the next line opens the log again by
/// its path (log rotation: the file renamed away keeps every line written
/// before this returns, the file at the path gets every later one). A log
/// without a descriptor has nothing to do: its next line opens the path.
pub fn reopen_all() {
    let _visit = VISIT.lock().unwrap_or_else(|p| p.into_inner());
    let logs: Vec<Weak<LogFile>> = ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for log in logs.iter().filter_map(Weak::upgrade) {
        log.reopen();
    }
}
