//! Which lane gives connections to which, decided every [`TICK`] from how
//! busy each lane was during the last tick ([`super::load`]) and how many
//! connections it holds. The lanes act on it themselves: a connection of a
//! lane that is to give some away moves when it is next between requests
//! (`router::server::parking`), so a move never cuts a request.
//!
//! The aim is as few lanes as keep up with their connections. A lane that
//! is busy now and then batches its work (one wake-up serves several
//! requests) and leaves the other CPUs to the sites' own processes; two
//! half-busy lanes each sleep and wake for nearly every request and land on
//! the CPU of the app they proxy to (measured in `docs/performance.md`,
//! "Where connections sit"). Two rules:
//!
//! - **Spread**: a lane that does not keep up (busy at least [`SATURATED`]
//!   of the tick) gives connections to the least busy lane when that one is
//!   at least [`GAP`] less busy: about half the difference in proportion to
//!   its connections, at least one. Acts at once.
//! - **Pack**: two lanes that hold connections and together were busy less
//!   than [`PACK_BELOW`] for [`PACK_AFTER`] ticks in a row: the less busy one
//!   gives all of its connections to the other. Not within [`PACK_HOLD`] of
//!   a spread, so that a load near the bounds settles instead of swinging.
//!
//! Invariant: a decision names two distinct lanes and at most the giving
//! lane's connections; [`Balance::decide`] is pure, so its rules are tested
//! on numbers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::load::now_ns;
use super::placement::Seat;

/// How often the lanes' loads are read and a move decided.
pub(super) const TICK: Duration = Duration::from_millis(100);
/// A lane busy at least this share of a tick does not keep up.
pub(super) const SATURATED: f64 = 0.85;
/// A lane at least this much less busy than a saturated one takes some of
/// its connections.
pub(super) const GAP: f64 = 0.3;
/// Two lanes that together are busy less than this share one lane.
const PACK_BELOW: f64 = 0.7;
/// Ticks in a row the packing condition must hold.
const PACK_AFTER: u32 = 5;
/// Ticks after a spread before lanes are packed again.
const PACK_HOLD: u32 = 100;

/// One lane as the balancer sees it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Load {
    /// Share of the last tick it was running (0 to 1).
    pub busy: f64,
    /// Connections it holds.
    pub open: usize,
}

/// Lane `from` gives `count` connections to lane `to` (indices).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Shed {
    pub from: usize,
    pub to: usize,
    pub count: usize,
}

/// The balancer's memory between ticks.
pub(super) struct Balance {
    /// Ticks in a row the packing condition held.
    calm: u32,
    /// Ticks since the last spread.
    since_spread: u32,
}

impl Balance {
    pub(super) fn new() -> Balance {
        Balance {
            calm: 0,
            since_spread: PACK_HOLD,
        }
    }

    /// The move for this tick, if any.
    pub(super) fn decide(&mut self, loads: &[Load]) -> Option<Shed> {
        self.since_spread = self.since_spread.saturating_add(1);
        if let Some(shed) = spread(loads) {
            self.since_spread = 0;
            self.calm = 0;
            return Some(shed);
        }
        let Some(shed) = pack(loads) else {
            self.calm = 0;
            return None;
        };
        self.calm += 1;
        if self.calm < PACK_AFTER || self.since_spread < PACK_HOLD {
            return None;
        }
        self.calm = 0;
        Some(shed)
    }
}

/// The busiest lane with two connections or more, if saturated, gives to
/// the least busy lane, if that one is [`GAP`] less busy.
fn spread(loads: &[Load]) -> Option<Shed> {
    let hot = (0..loads.len())
        .filter(|&i| loads[i].open >= 2)
        .max_by(|&a, &b| loads[a].busy.total_cmp(&loads[b].busy))?;
    let cool = (0..loads.len())
        .filter(|&i| i != hot)
        .min_by(|&a, &b| {
            (loads[a].busy.total_cmp(&loads[b].busy)).then(loads[a].open.cmp(&loads[b].open))
        })?;
    let (h, c) = (loads[hot], loads[cool]);
    if h.busy < SATURATED || c.busy + GAP > h.busy {
        return None;
    }
    // Connections carry the load about evenly: move the share that would
    // bring both to the middle.
    let share = (h.busy - c.busy) / (2.0 * h.busy);
    let count = ((h.open as f64 * share).round() as usize).clamp(1, h.open / 2);
    Some(Shed {
        from: hot,
        to: cool,
        count,
    })
}

/// The least busy lane holding connections gives them all to the busiest
/// other one holding some, if both together are busy less than
/// [`PACK_BELOW`].
fn pack(loads: &[Load]) -> Option<Shed> {
    let holding: Vec<usize> = (0..loads.len()).filter(|&i| loads[i].open > 0).collect();
    let from = *holding.iter().min_by(|&&a, &&b| {
        (loads[a].busy.total_cmp(&loads[b].busy)).then(loads[a].open.cmp(&loads[b].open))
    })?;
    let to = *holding
        .iter()
        .filter(|&&i| i != from)
        .max_by(|&&a, &&b| loads[a].busy.total_cmp(&loads[b].busy))?;
    if loads[from].busy + loads[to].busy >= PACK_BELOW {
        return None;
    }
    Some(Shed {
        from,
        to,
        count: loads[from].open,
    })
}

/// Reads the lanes' loads every [`TICK`] and tells them what to move,
/// until dropped (aborted by `Lanes`).
pub(super) async fn run(seats: Arc<[Seat]>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut then = now_ns();
    let mut busy_then: Vec<u64> = seats.iter().map(|s| s.meter.busy_at(then)).collect();
    let mut balance = Balance::new();
    loop {
        tick.tick().await;
        let now = now_ns();
        let wall = now.saturating_sub(then).max(1) as f64;
        let loads: Vec<Load> = seats
            .iter()
            .zip(busy_then.iter_mut())
            .map(|(seat, before)| {
                let busy = seat.meter.busy_at(now);
                let share = (busy.saturating_sub(*before) as f64 / wall).clamp(0.0, 1.0);
                *before = busy;
                seat.note_busy(share);
                Load {
                    busy: share,
                    open: seat.open.load(Ordering::Relaxed),
                }
            })
            .collect();
        then = now;
        let shed = balance.decide(&loads);
        for (i, seat) in seats.iter().enumerate() {
            match shed {
                Some(s) if s.from == i => seat.shed(s.count, s.to),
                _ => seat.shed(0, i),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(l: &[(f64, usize)]) -> Vec<Load> {
        l.iter()
            .map(|&(busy, open)| Load { busy, open })
            .collect()
    }

    #[test]
    fn a_saturated_lane_gives_about_half_the_difference_to_an_idle_one() {
        let mut b = Balance::new();
        let shed = b.decide(&loads(&[(1.0, 64), (0.0, 0)]));
        assert_eq!(shed, Some(Shed { from: 0, to: 1, count: 32 }));
        let shed = b.decide(&loads(&[(0.2, 10), (0.95, 40)]));
        assert_eq!(shed, Some(Shed { from: 1, to: 0, count: 16 }));
    }

    #[test]
    fn lanes_that_keep_up_or_are_both_busy_are_left_alone() {
        let mut b = Balance::new();
        for l in [
            [(0.8, 32), (0.1, 2)], // keeps up
            [(0.95, 30), (0.9, 34)], // both busy
            [(1.0, 1), (0.0, 0)],    // one connection cannot be split
        ] {
            assert_eq!(b.decide(&loads(&l)), None, "{l:?}");
        }
    }

    #[test]
    fn two_lightly_busy_lanes_are_packed_after_a_calm_spell_and_not_right_after_a_spread() {
        let mut b = Balance::new();
        let calm = loads(&[(0.3, 8), (0.25, 8)]);
        for tick in 1..PACK_AFTER {
            assert_eq!(b.decide(&calm), None, "tick {tick}: not calm long enough yet");
        }
        assert_eq!(b.decide(&calm), Some(Shed { from: 1, to: 0, count: 8 }));
        // A lane that cannot keep up spreads at once, then packing waits.
        assert!(b.decide(&loads(&[(0.99, 16), (0.0, 0)])).is_some());
        for tick in 0..PACK_HOLD - 1 {
            assert_eq!(b.decide(&calm), None, "tick {tick} after the spread");
        }
        assert_eq!(b.decide(&calm), Some(Shed { from: 1, to: 0, count: 8 }));
    }

    #[test]
    fn a_busy_pair_or_a_spell_broken_by_load_is_not_packed() {
        let mut b = Balance::new();
        for _ in 0..3 * PACK_AFTER {
            assert_eq!(b.decide(&loads(&[(0.4, 8), (0.35, 8)])), None, "together 0.75");
        }
        for _ in 0..PACK_AFTER - 1 {
            assert_eq!(b.decide(&loads(&[(0.3, 8), (0.2, 8)])), None);
        }
        assert_eq!(b.decide(&loads(&[(0.5, 8), (0.3, 8)])), None, "the spell ends");
        assert_eq!(b.decide(&loads(&[(0.3, 8), (0.2, 8)])), None, "counts from one again");
    }

    #[test]
    fn packing_goes_to_a_lane_holding_connections_never_to_an_empty_one() {
        let mut b = Balance::new();
        let l = loads(&[(0.0, 0), (0.2, 3), (0.1, 5)]);
        let mut last = None;
        for _ in 0..PACK_AFTER {
            last = b.decide(&l);
        }
        assert_eq!(last, Some(Shed { from: 2, to: 1, count: 5 }));
    }
}
