//! Restart policy, as pure code: exponential backoff with a cap, reset after
//! a process has run fine for a while, and crash-loop detection that gives
//! up (the site is marked failed) instead of restarting forever.
//!
//! Time is passed in, never read here, so the policy is tested without
//! sleeping.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq)]
pub struct RestartPolicy {
    /// Delay before the first restart.
    pub initial: Duration,
    /// The delay doubles per consecutive crash up to this.
    pub max: Duration,
    /// A process that ran at least this long resets the backoff.
    pub stable_after: Duration,
    /// This many crashes within `window` make a crash loop.
    pub crash_loop_limit: usize,
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
            crash_loop_limit: 6,
            window: Duration::from_secs(60),
        }
    }
}

/// What to do after a process exited unexpectedly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    After(Duration),
    /// Crash loop: stop trying; the site is failed until restarted or reloaded.
    GiveUp,
}

/// The crash history of one process slot.
#[derive(Clone, Debug)]
pub struct RestartTracker {
    policy: RestartPolicy,
    consecutive: u32,
    recent: VecDeque<Instant>,
}

impl RestartTracker {
    pub fn new(policy: RestartPolicy) -> Self {
        RestartTracker {
            policy,
            consecutive: 0,
            recent: VecDeque::new(),
        }
    }

    /// Records a crash of a process that started at `started` and ended at `now`.
    pub fn crashed(&mut self, started: Instant, now: Instant) -> Restart {
        if now.duration_since(started) >= self.policy.stable_after {
            self.consecutive = 0;
        }
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.policy.crash_loop_limit {
            return Restart::GiveUp;
        }
        let factor = 2u32.saturating_pow(self.consecutive.min(16));
        self.consecutive += 1;
        Restart::After(
            self.policy
                .initial
                .saturating_mul(factor)
                .min(self.policy.max),
        )
    }

    /// Forgets the history (after an explicit restart or reload).
    pub fn reset(&mut self) {
        self.consecutive = 0;
        self.recent.clear();
    }
}

/// How a restart replaces a group's processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replacement {
    /// Start the new processes, then drain and stop the old ones: no request
    /// waits, but for a moment both run.
    Rolling,
    /// Stop the old processes first, then start the new ones: the site's
    /// process limit has no room for both (e.g. its code forked up to the
    /// limit), so new processes started beside the old would fail to fork.
    StopFirst,
}

/// Whether the site's process limit leaves room to start replacements beside
/// the processes they replace. `site_tasks` and `site_limit` are the site
/// cgroup's `pids.current` and `pids.max` (the same on cgroup v1 and v2;
/// `None`: no limit, or none known); `old_tasks` are the tasks of the
/// processes being replaced, which is about what their replacements need
/// (at least one).
pub fn replacement(site_tasks: u64, site_limit: Option<u64>, old_tasks: u64) -> Replacement {
    match site_limit {
        Some(limit)
            if site_tasks
                .checked_add(old_tasks.max(1))
                .is_none_or(|both| both > limit) =>
        {
            Replacement::StopFirst
        }
        _ => Replacement::Rolling,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacement_rolls_while_the_process_limit_has_room_for_both_generations() {
        use Replacement::*;
        let cases = [
            // (site tasks, site limit, old tasks) → order
            (5, None, 5, Rolling),
            (5, Some(64), 5, Rolling),
            (32, Some(64), 32, Rolling),
            (33, Some(64), 32, StopFirst),
            // A fork bomb holds the limit: nothing new can fork.
            (32, Some(32), 31, StopFirst),
            (32, Some(32), 0, StopFirst),
            // A limit that only fits one generation.
            (5, Some(8), 5, StopFirst),
            (0, Some(1), 0, Rolling),
            (u64::MAX, Some(u64::MAX), u64::MAX, StopFirst),
        ];
        for (tasks, limit, old, want) in cases {
            assert_eq!(
                replacement(tasks, limit, old),
                want,
                "tasks {tasks}, limit {limit:?}, old {old}"
            );
        }
    }

    fn policy() -> RestartPolicy {
        RestartPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            stable_after: Duration::from_secs(10),
            crash_loop_limit: 5,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut t = RestartTracker::new(RestartPolicy {
            crash_loop_limit: 100,
            ..policy()
        });
        let start = Instant::now();
        let delays: Vec<_> = (0..7)
            .map(|i| t.crashed(start, start + Duration::from_millis(i * 10)))
            .collect();
        let ms = |m| Restart::After(Duration::from_millis(m));
        assert_eq!(
            delays,
            vec![
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(2000),
                ms(2000)
            ]
        );
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let mut t = RestartTracker::new(policy());
        let t0 = Instant::now();
        t.crashed(t0, t0 + Duration::from_secs(1));
        assert_eq!(
            t.crashed(t0, t0 + Duration::from_secs(2)),
            Restart::After(Duration::from_millis(200))
        );
        let started = t0 + Duration::from_secs(3);
        assert_eq!(
            t.crashed(started, started + Duration::from_secs(11)),
            Restart::After(Duration::from_millis(100))
        );
    }

    #[test]
    fn crashes_within_the_window_are_a_crash_loop() {
        let mut t = RestartTracker::new(policy());
        let t0 = Instant::now();
        for i in 0..4 {
            assert!(matches!(
                t.crashed(t0, t0 + Duration::from_secs(i)),
                Restart::After(_)
            ));
        }
        assert_eq!(t.crashed(t0, t0 + Duration::from_secs(5)), Restart::GiveUp);
        t.reset();
        assert!(matches!(
            t.crashed(t0, t0 + Duration::from_secs(6)),
            Restart::After(_)
        ));
    }

    #[test]
    fn crashes_spread_over_more_than_the_window_are_not_a_loop() {
        let mut t = RestartTracker::new(policy());
        let t0 = Instant::now();
        for i in 0..20 {
            let now = t0 + Duration::from_secs(i * 20);
            assert!(
                matches!(
                    t.crashed(now, now + Duration::from_secs(1)),
                    Restart::After(_)
                ),
                "crash {i}"
            );
        }
    }
}
