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
//!   of [`SPREAD_AFTER`] ticks in a row) gives connections to the least
//!   busy lane when that one is at least [`GAP`] less busy: about half the
//!   difference in proportion to its connections, at least one.
//! - **Pack**: two lanes that hold connections, neither saturated, and
//!   together were busy less than [`PACK_BELOW`] on average over
//!   [`PACK_AFTER`] ticks: the less busy one gives all of its connections
//!   to the other. Not within [`PACK_HOLD`] of a spread; a packing undone
//!   within [`UNDONE_WITHIN`] doubles that wait (up to [`MAX_PACK_HOLD`]),
//!   so that a load that needs two lanes is not packed again and again.
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
/// A lane busy at least this share of [`SPREAD_AFTER`] ticks in a row
/// does not keep up: it found work ready nearly every time it looked
/// (measured: lanes that carry all they can 0.95–0.97; a lane waiting on a
/// single-threaded app 0.73–0.90, at times one tick at 0.95).
pub(super) const SATURATED: f64 = 0.93;
/// Ticks in a row a lane must be saturated before it gives connections away.
const SPREAD_AFTER: u32 = 3;
/// A lane at least this much less busy than a saturated one takes some of
/// its connections.
pub(super) const GAP: f64 = 0.3;
/// Two lanes that together were busy less than this, on average over
/// [`PACK_AFTER`] ticks, share one lane. Above one on purpose: two lanes
/// sharing connections pay wake-ups one lane does not (measured: Node
/// hello, 2 lanes busy 0.8–1.1 together, one lane 0.65–0.8 for the same
/// traffic); if one lane then does not keep up, the spread undoes it.
const PACK_BELOW: f64 = 1.2;
/// Ticks over which the packing condition is averaged.
const PACK_AFTER: u32 = 5;
/// Ticks after a spread before lanes are packed again...
const PACK_HOLD: u32 = 100;
/// ...doubled each time a packing had to be undone within this many ticks...
const UNDONE_WITHIN: u32 = 20;
/// ...up to this (about ten minutes).
const MAX_PACK_HOLD: u32 = 6400;

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
    /// The lane that was saturated (with a less busy one to give to) in the
    /// last ticks, and for how many in a row.
    hot: Option<usize>,
    hot_ticks: u32,
    /// Ticks in a row two lanes could have been packed, and their summed
    /// busy shares.
    calm: u32,
    calm_busy: f64,
    /// Ticks since the last spread and since the last packing.
    since_spread: u32,
    since_pack: u32,
    /// Ticks to wait after a spread before packing again.
    hold: u32,
}

impl Balance {
    pub(super) fn new() -> Balance {
        Balance {
            hot: None,
            hot_ticks: 0,
            calm: 0,
            calm_busy: 0.0,
            since_spread: PACK_HOLD,
            since_pack: u32::MAX,
            hold: PACK_HOLD,
        }
    }

    /// The move for this tick, if any.
    pub(super) fn decide(&mut self, loads: &[Load]) -> Option<Shed> {
        self.since_spread = self.since_spread.saturating_add(1);
        self.since_pack = self.since_pack.saturating_add(1);
        if let Some(shed) = self.spread(loads) {
            // A packing undone at once: the load needs two lanes; wait
            // longer before trying again. Else back to the shortest wait.
            self.hold = if self.since_pack <= UNDONE_WITHIN {
                (self.hold * 2).min(MAX_PACK_HOLD)
            } else {
                PACK_HOLD
            };
            self.since_spread = 0;
            self.calm = 0;
            return Some(shed);
        }
        let Some((shed, busy)) = pack(loads) else {
            self.calm = 0;
            return None;
        };
        if self.calm == 0 {
            self.calm_busy = 0.0;
        }
        self.calm += 1;
        self.calm_busy += busy;
        if self.calm < PACK_AFTER {
            return None;
        }
        let mean = self.calm_busy / f64::from(self.calm);
        self.calm = 0;
        if mean >= PACK_BELOW || self.since_spread < self.hold {
            return None;
        }
        self.since_pack = 0;
        Some(shed)
    }
}

impl Balance {
    /// [`spread`] once the same lane needed it [`SPREAD_AFTER`] ticks in a row.
    fn spread(&mut self, loads: &[Load]) -> Option<Shed> {
        let Some(shed) = spread(loads) else {
            self.hot = None;
            return None;
        };
        if self.hot == Some(shed.from) {
            self.hot_ticks += 1;
        } else {
            (self.hot, self.hot_ticks) = (Some(shed.from), 1);
        }
        if self.hot_ticks < SPREAD_AFTER {
            return None;
        }
        self.hot = None;
        Some(shed)
    }
}

/// The busiest lane with two connections or more, if saturated, gives to
/// the least busy lane, if that one is [`GAP`] less busy.
fn spread(loads: &[Load]) -> Option<Shed> {
    let hot = (0..loads.len())
        .filter(|&i| loads[i].open >= 2)
        .max_by(|&a, &b| loads[a].busy.total_cmp(&loads[b].busy))?;
    let cool = (0..loads.len()).filter(|&i| i != hot).min_by(|&a, &b| {
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

/// The least busy lane holding connections could give them all to the
/// busiest other one holding some, neither of them saturated: that move
/// and the two lanes' summed busy shares.
fn pack(loads: &[Load]) -> Option<(Shed, f64)> {
    let holding: Vec<usize> = (0..loads.len()).filter(|&i| loads[i].open > 0).collect();
    let from = *holding.iter().min_by(|&&a, &&b| {
        (loads[a].busy.total_cmp(&loads[b].busy)).then(loads[a].open.cmp(&loads[b].open))
    })?;
    let to = *holding
        .iter()
        .filter(|&&i| i != from)
        .max_by(|&&a, &&b| loads[a].busy.total_cmp(&loads[b].busy))?;
    if loads[to].busy >= SATURATED {
        return None;
    }
    let shed = Shed {
        from,
        to,
        count: loads[from].open,
    };
    Some((shed, loads[from].busy + loads[to].busy))
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
        if let Some(s) = shed {
            tracing::debug!(
                ?loads,
                from = s.from,
                to = s.to,
                count = s.count,
                "router threads: moving connections"
            );
        }
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
        l.iter().map(|&(busy, open)| Load { busy, open }).collect()
    }

    #[test]
    fn a_lane_saturated_for_three_ticks_gives_about_half_the_difference_to_an_idle_one() {
        let mut b = Balance::new();
        let shed = until_decided(&mut b, &[(1.0, 64), (0.0, 0)], 10);
        assert_eq!(
            shed,
            (
                SPREAD_AFTER,
                Some(Shed {
                    from: 0,
                    to: 1,
                    count: 32
                })
            )
        );
        let shed = until_decided(&mut b, &[(0.2, 10), (0.95, 40)], 10);
        assert_eq!(
            shed,
            (
                SPREAD_AFTER,
                Some(Shed {
                    from: 1,
                    to: 0,
                    count: 16
                })
            )
        );
    }

    #[test]
    fn a_lane_saturated_now_and_then_keeps_its_connections() {
        // A lane carrying a single-threaded app's traffic: busy 0.8-0.9,
        // at times one tick above the bound.
        let mut b = Balance::new();
        for busy in [0.85, 0.95, 0.88, 0.96, 0.97, 0.9, 0.95, 0.8] {
            assert_eq!(b.decide(&loads(&[(busy, 16), (0.0, 0)])), None, "{busy}");
        }
    }

    #[test]
    fn lanes_that_keep_up_or_are_both_busy_are_left_alone() {
        let mut b = Balance::new();
        for l in [
            [(0.9, 32), (0.1, 2)],   // keeps up (waits on its upstreams now and then)
            [(0.97, 30), (0.8, 34)], // both busy
            [(1.0, 1), (0.0, 0)],    // one connection cannot be split
        ] {
            assert_eq!(b.decide(&loads(&l)), None, "{l:?}");
        }
    }

    /// Ticks `l` until the balancer decides something (at most `limit`):
    /// how many ticks it took and what it decided.
    fn until_decided(b: &mut Balance, l: &[(f64, usize)], limit: u32) -> (u32, Option<Shed>) {
        for tick in 1..=limit {
            if let Some(shed) = b.decide(&loads(l)) {
                return (tick, Some(shed));
            }
        }
        (limit, None)
    }

    #[test]
    fn two_lanes_not_busy_enough_together_are_packed_after_a_calm_spell() {
        let mut b = Balance::new();
        let packed = Some(Shed {
            from: 1,
            to: 0,
            count: 8,
        });
        assert_eq!(
            until_decided(&mut b, &[(0.3, 8), (0.25, 8)], 50),
            (PACK_AFTER, packed)
        );
        // Averaged: two lanes whose sum swings across the bound are packed
        // when it is below on average (1.5, 0.7, ...: 1.18).
        let mut b = Balance::new();
        let mut last = None;
        for tick in 0..PACK_AFTER {
            let l = if tick % 2 == 0 {
                [(0.8, 8), (0.7, 8)]
            } else {
                [(0.4, 8), (0.3, 8)]
            };
            last = b.decide(&loads(&l));
        }
        assert_eq!(last, packed);
    }

    #[test]
    fn a_packing_undone_at_once_waits_twice_as_long_before_the_next() {
        let mut b = Balance::new();
        let calm = [(0.3, 8), (0.25, 8)];
        let hot = [(0.99, 16), (0.0, 0)];
        assert!(until_decided(&mut b, &calm, 50).1.is_some(), "packed");
        let spread = until_decided(&mut b, &hot, 10).1;
        assert!(spread.is_some(), "the packed lane did not keep up: spread");
        let (ticks, shed) = until_decided(&mut b, &calm, 10 * PACK_HOLD);
        assert!(shed.is_some());
        assert!(
            (2 * PACK_HOLD - 1..2 * PACK_HOLD + PACK_AFTER).contains(&ticks),
            "{ticks}"
        );
        // Undone at once again: four times.
        assert!(until_decided(&mut b, &hot, 10).1.is_some());
        let (ticks, _) = until_decided(&mut b, &calm, 10 * PACK_HOLD);
        assert!(
            (4 * PACK_HOLD - 1..4 * PACK_HOLD + PACK_AFTER).contains(&ticks),
            "{ticks}"
        );
        // A spread long after the packing: back to the shortest wait.
        for _ in 0..UNDONE_WITHIN {
            b.decide(&loads(&[(0.5, 8), (0.9, 8)]));
        }
        assert!(until_decided(&mut b, &hot, 10).1.is_some());
        let (ticks, _) = until_decided(&mut b, &calm, 10 * PACK_HOLD);
        assert!(
            (PACK_HOLD - 1..PACK_HOLD + PACK_AFTER).contains(&ticks),
            "{ticks}"
        );
    }

    #[test]
    fn a_busy_pair_or_a_spell_broken_by_a_saturated_lane_is_not_packed() {
        let mut b = Balance::new();
        let (_, shed) = until_decided(&mut b, &[(0.7, 8), (0.6, 8)], 10 * PACK_AFTER);
        assert_eq!(shed, None, "together 1.3");
        for _ in 0..PACK_AFTER - 1 {
            assert_eq!(b.decide(&loads(&[(0.3, 8), (0.2, 8)])), None);
        }
        assert_eq!(
            b.decide(&loads(&[(0.96, 8), (0.8, 8)])),
            None,
            "the spell ends"
        );
        assert_eq!(
            b.decide(&loads(&[(0.3, 8), (0.2, 8)])),
            None,
            "counts from one again"
        );
    }

    #[test]
    fn packing_goes_to_a_lane_holding_connections_never_to_an_empty_one() {
        let mut b = Balance::new();
        let l = loads(&[(0.0, 0), (0.2, 3), (0.1, 5)]);
        let mut last = None;
        for _ in 0..PACK_AFTER {
            last = b.decide(&l);
        }
        assert_eq!(
            last,
            Some(Shed {
                from: 2,
                to: 1,
                count: 5
            })
        );
    }
}
