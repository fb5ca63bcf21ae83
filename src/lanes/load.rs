//! How busy a lane is: the time its thread spends running, from waking up
//! to parking again, as tokio's park hooks see it ([`Meter`]). A lane that
//! never parks (always work ready) counts as busy all along; time it spends
//! runnable but preempted by another process counts too, which is what the
//! balancer wants to know: whether the lane keeps up with its connections.
//!
//! Cost: one clock read when the lane wakes and one when it parks (vDSO,
//! tens of nanoseconds), nothing per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Instant;

/// The clock the meters count on (nanoseconds from the first reading).
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Now on the meters' clock; never 0 (which means "parked").
pub(super) fn now_ns() -> u64 {
    u64::try_from(ORIGIN.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// One lane's running time. Written by its own thread (the park hooks),
/// read by the balancer on another.
#[derive(Default)]
pub struct Meter {
    /// Running time of the spells that ended (ns).
    busy: AtomicU64,
    /// Since when the lane runs (ns on the meters' clock); 0 while parked.
    running_since: AtomicU64,
}

impl Meter {
    /// The lane woke up (and at its thread's start).
    pub fn woke(&self) {
        self.running_since.store(now_ns(), Ordering::Relaxed);
    }

    /// The lane is about to park.
    pub fn parks(&self) {
        let since = self.running_since.swap(0, Ordering::Relaxed);
        if since != 0 {
            self.busy
                .fetch_add(now_ns().saturating_sub(since), Ordering::Relaxed);
        }
    }

    /// Running time up to `now` (ns on the meters' clock), the spell under
    /// way included. A reading that races with the lane parking may count
    /// a spell twice or not at all: the balancer bounds what it computes.
    pub fn busy_at(&self, now: u64) -> u64 {
        let since = self.running_since.load(Ordering::Relaxed);
        let running = if since == 0 {
            0
        } else {
            now.saturating_sub(since)
        };
        self.busy.load(Ordering::Relaxed) + running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_spell_counts_until_the_lane_parks_and_no_longer() {
        let meter = Meter::default();
        let t0 = now_ns();
        assert_eq!(meter.busy_at(t0), 0, "never woke");
        meter.woke();
        let since = meter.running_since.load(Ordering::Relaxed);
        assert_eq!(
            meter.busy_at(since + 1_000),
            1_000,
            "running: counted up to now"
        );
        meter.parks();
        let spell = meter.busy.load(Ordering::Relaxed);
        assert_eq!(
            meter.busy_at(now_ns() + 5_000_000),
            spell,
            "parked: nothing more counts"
        );
        meter.parks();
        assert_eq!(meter.busy_at(now_ns()), spell, "a second park adds nothing");
    }
}
