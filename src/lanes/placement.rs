//! Where connections sit: each lane's seat (its handle, open connections,
//! last measured load and what it is to give away), where a new connection
//! goes ([`Placement::place`]) and how a connection claims a move
//! ([`Placed::claim_move`]).
//!
//! A new connection stays on the lane that accepted it unless that lane
//! does not keep up (busy at least `balance::SATURATED` during the last
//! tick) and another is at least `balance::GAP` less busy: then it goes to
//! the least busy lane (one cross-thread spawn). So a burst of connections
//! lands where the lanes' wake-ups put it, and the balancer (`balance`)
//! moves connections later, between requests, if their lanes do not keep
//! up or could be packed.
//!
//! Invariant: every [`Placed`] counts one connection on exactly one seat,
//! from its making to its drop (a move makes the new one before the old
//! one is dropped).

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;

use super::balance::{GAP, SATURATED};
use super::current;
use super::load::Meter;

/// One lane as placement and the balancer see it.
pub(super) struct Seat {
    pub(super) id: usize,
    pub(super) handle: Handle,
    pub(super) open: AtomicUsize,
    pub(super) meter: Arc<Meter>,
    /// How busy the lane was during the last tick, in thousandths.
    busy: AtomicU32,
    /// Connections the lane is to give away now...
    pub(super) shed: AtomicUsize,
    /// ...and the seat (index) that takes them.
    shed_to: AtomicUsize,
}

impl Seat {
    pub(super) fn new(id: usize, handle: Handle, meter: Arc<Meter>) -> Seat {
        Seat {
            id,
            handle,
            open: AtomicUsize::new(0),
            meter,
            busy: AtomicU32::new(0),
            shed: AtomicUsize::new(0),
            shed_to: AtomicUsize::new(0),
        }
    }

    /// The balancer's reading of the last tick (a share, 0 to 1).
    pub(super) fn note_busy(&self, share: f64) {
        self.busy
            .store((share * 1000.0).round() as u32, Ordering::Relaxed);
    }

    /// The balancer's decision for this lane until the next tick: give
    /// `count` connections to seat `to` (0: none).
    pub(super) fn shed(&self, count: usize, to: usize) {
        self.shed_to.store(to, Ordering::Relaxed);
        self.shed.store(count, Ordering::Release);
    }

    fn busy(&self) -> u32 {
        self.busy.load(Ordering::Relaxed)
    }
}

/// Where new connections go, and where moving ones go.
#[derive(Clone)]
pub struct Placement {
    pub(super) seats: Arc<[Seat]>,
}

/// One connection counted on the lane chosen for it, until dropped.
pub struct Placed {
    seats: Arc<[Seat]>,
    index: usize,
}

/// [`SATURATED`] and [`GAP`] in the seats' thousandths.
fn thousandths(share: f64) -> u32 {
    (share * 1000.0).round() as u32
}

impl Placement {
    /// The lane for a connection accepted on the calling lane: this one,
    /// unless it did not keep up during the last tick and another lane was
    /// at least [`GAP`] less busy (then the least busy one).
    pub fn place(&self) -> Placed {
        let seats = &self.seats;
        let least = (0..seats.len())
            .min_by_key(|&i| (seats[i].busy(), seats[i].open.load(Ordering::Relaxed)))
            .unwrap_or(0);
        let here = seats.iter().position(|s| s.id == current());
        let index = match here {
            Some(h)
                if seats[h].busy() < thousandths(SATURATED)
                    || seats[least].busy() + thousandths(GAP) > seats[h].busy() =>
            {
                h
            }
            _ => least,
        };
        Placed::on(seats.clone(), index)
    }
}

impl Placed {
    fn on(seats: Arc<[Seat]>, index: usize) -> Placed {
        seats[index].open.fetch_add(1, Ordering::Relaxed);
        Placed { seats, index }
    }

    /// Whether the connection stays on the calling lane.
    pub fn is_here(&self) -> bool {
        self.seats[self.index].id == current()
    }

    /// The chosen lane, to spawn the connection's task on.
    pub fn handle(&self) -> &Handle {
        &self.seats[self.index].handle
    }

    /// Whether the connection's lane is giving connections away now (one
    /// atomic load: asked between every two requests).
    pub fn lane_sheds(&self) -> bool {
        self.seats[self.index].shed.load(Ordering::Relaxed) > 0
    }

    /// Takes one of the connections its lane is to give away: the place on
    /// the lane that takes it (the caller moves the connection there and
    /// drops `self`), or `None` if the lane gives none away now.
    pub fn claim_move(&self) -> Option<Placed> {
        let seat = &self.seats[self.index];
        seat.shed
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| n.checked_sub(1))
            .ok()?;
        let to = seat.shed_to.load(Ordering::Relaxed);
        (to != self.index && to < self.seats.len()).then(|| Placed::on(self.seats.clone(), to))
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.seats[self.index].open.fetch_sub(1, Ordering::Relaxed);
    }
}
