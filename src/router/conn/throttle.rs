//! [`Throttle`]: at most one log line per second for an event that can
//! come in floods (refused connections, timeouts, malformed requests).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

/// Logs an event at most once per second, counting what it left out, so a
/// flood of refused connections costs no flood of log lines.
pub struct Throttle {
    last: AtomicU64,
    suppressed: AtomicU64,
    start: Instant,
}

impl Throttle {
    pub fn new() -> Self {
        Throttle {
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    /// `Some(n)`: log now, `n` events were left out since the last line.
    pub fn allow(&self) -> Option<u64> {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX) + 1000;
        let last = self.last.load(Ordering::Acquire);
        if now.saturating_sub(last) >= 1000
            && self
                .last
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::AcqRel))
        } else {
            self.suppressed.fetch_add(1, Ordering::AcqRel);
            None
        }
    }
}
