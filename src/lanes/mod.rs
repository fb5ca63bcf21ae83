//! Router lanes: the threads that serve client connections (`router-N`),
//! each running its own single-threaded tokio runtime (event loop, timers,
//! blocking pool).
//!
//! Why not one multi-threaded runtime: there, a socket event found by one
//! thread wakes a task that may run on the other, and an idle thread is
//! woken (futex, or the event loop's eventfd) to steal it: profiles of the
//! WSGI hello benchmark put 11 % of the router's time in those cross-thread
//! wake-ups. In a lane, a connection's task, its timers and the sockets it
//! opens to site workers all live on one thread, which sleeps in one
//! `epoll_wait`; no other router thread is woken on the way of a request.
//!
//! Every lane accepts from every listener (the listening socket is shared;
//! tokio offers no `EPOLLEXCLUSIVE`, so a new connection wakes every idle
//! lane and one of them gets it). Connections sit on as few lanes as keep
//! up with them ([`placement`], [`balance`]): a lane keeps what it
//! accepts unless it does not keep up; every [`balance::TICK`] the lanes'
//! busy time ([`load`]) decides whether a lane that cannot keep up gives
//! connections to a less busy one, or two lightly busy lanes are packed
//! into one. A connection moves only between two requests (an HTTP/1
//! connection, plain: `router::server::parking`), its socket re-registered
//! with the other lane's event loop. The supervisor, the admin API and
//! reloads stay on the main runtime.
//!
//! Invariants:
//! - [`current`] is the lane of the calling thread: its id (unique in the
//!   process, from 1) on a lane, 0 anywhere else (the main runtime, tests).
//! - A tokio socket is served by the event loop of the runtime it was
//!   registered in. A pooled upstream socket taken on another lane is moved
//!   there with [`rehome`] first, so its wake-ups stay on the taking lane
//!   (php-fpm's; Python worker sockets are pooled per lane and never move).
//! - Nothing that outlives the router may run on a lane: timers of the
//!   upstream pools run on the runtime that built them.
//! - [`Lanes::stop`] (after the router's connections are gone) returns
//!   once every lane's runtime is dropped, with what was still on it:
//!   response pumps of abandoned requests, blocking file reads (waited for
//!   up to 1 s).

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod balance;
mod load;
mod placement;

use load::Meter;
use placement::Seat;
pub use placement::{Placed, Placement};

thread_local! {
    static LANE: Cell<usize> = const { Cell::new(0) };
}

/// Lane ids are unique in the process (tests start several routers).
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// The lane the calling thread serves (0: not a lane).
pub fn current() -> usize {
    LANE.with(Cell::get)
}

/// How many lanes to run when `router_threads` is not set: the CPUs this
/// process may use (affinity and cgroup CPU quota included).
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Re-registers `stream`, registered on lane `from`, with the calling
/// lane's event loop (two `epoll_ctl`s), so that its wake-ups happen here.
pub fn rehome(stream: UnixStream, from: usize) -> io::Result<UnixStream> {
    if from == current() {
        return Ok(stream);
    }
    UnixStream::from_std(stream.into_std()?)
}

/// Running lanes.
pub struct Lanes {
    lanes: Vec<Lane>,
    placement: Placement,
    _balancer: Option<Balancer>,
}

/// The balancer's task (on the runtime that started the lanes), ended
/// with them.
struct Balancer(JoinHandle<()>);

impl Drop for Balancer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Lane {
    id: usize,
    handle: Handle,
    meter: Arc<Meter>,
    stop: oneshot::Sender<()>,
    stopped: oneshot::Receiver<()>,
}

/// How long a stopping lane waits for its blocking tasks (file reads).
const BLOCKING_GRACE: Duration = Duration::from_secs(1);
/// Blocking threads (file reads, temp files) of all lanes together: tokio's
/// default for one runtime, split between the lanes...
const BLOCKING_THREADS: usize = 512;
/// ...but at least this many per lane.
const MIN_BLOCKING_THREADS: usize = 16;

impl Lanes {
    /// Starts `count` lanes (at least one), threads named `router-N`, and,
    /// with two or more, their balancer on the calling runtime (none when
    /// called outside one). On an error, the lanes already started are
    /// stopped when dropped.
    pub fn start(count: usize) -> io::Result<Lanes> {
        Self::start_balanced(count, true)
    }

    /// [`Lanes::start`], with or without the balancer (tests set the
    /// lanes' loads themselves).
    fn start_balanced(count: usize, balanced: bool) -> io::Result<Lanes> {
        let count = count.max(1);
        // The lanes share what one runtime's blocking pool had.
        let blocking = (BLOCKING_THREADS / count).max(MIN_BLOCKING_THREADS);
        let mut lanes = Vec::new();
        for _ in 0..count {
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            lanes.push(Lane::start(id, blocking)?);
        }
        let seats: Arc<[Seat]> = lanes
            .iter()
            .map(|l| Seat::new(l.id, l.handle.clone(), l.meter.clone()))
            .collect();
        let balancer = match Handle::try_current() {
            Ok(runtime) if count > 1 && balanced => {
                Some(Balancer(runtime.spawn(balance::run(seats.clone()))))
            }
            _ => None,
        };
        Ok(Lanes {
            lanes,
            placement: Placement { seats },
            _balancer: balancer,
        })
    }

    /// A handle to spawn on each lane.
    pub fn handles(&self) -> impl Iterator<Item = &Handle> {
        self.lanes.iter().map(|l| &l.handle)
    }

    /// Where new connections go, and moving ones.
    pub fn placement(&self) -> Placement {
        self.placement.clone()
    }

    /// Stops every lane and waits until their runtimes are gone.
    pub async fn stop(self) {
        let mut stopped = Vec::new();
        for lane in self.lanes {
            let _ = lane.stop.send(());
            stopped.push(lane.stopped);
        }
        for s in stopped {
            let _ = s.await;
        }
    }
}

impl Lane {
    /// Starts the lane's thread, which builds its runtime itself (so that a
    /// failure never drops a runtime inside the caller's async context) and
    /// reports whether it could.
    fn start(id: usize, blocking_threads: usize) -> io::Result<Lane> {
        let (stop, stop_rx) = oneshot::channel();
        let (stopped_tx, stopped) = oneshot::channel();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let meter = Arc::new(Meter::default());
        let (parks, wakes) = (meter.clone(), meter.clone());
        std::thread::Builder::new()
            .name(format!("router-{id}"))
            .spawn(move || {
                wakes.woke();
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name(format!("router-{id}-io"))
                    .max_blocking_threads(blocking_threads)
                    .on_thread_park(move || parks.parks())
                    .on_thread_unpark(move || wakes.woke())
                    .build();
                let runtime = match runtime {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                LANE.with(|l| l.set(id));
                let _ = ready_tx.send(Ok(runtime.handle().clone()));
                let _ = runtime.block_on(stop_rx);
                runtime.shutdown_timeout(BLOCKING_GRACE);
                let _ = stopped_tx.send(());
            })?;
        let handle = ready.recv().map_err(|_| {
            io::Error::other("the router thread ended before its runtime was built")
        })??;
        Ok(Lane {
            id,
            handle,
            meter,
            stop,
            stopped,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::io::Write;

    use tokio::io::AsyncReadExt;

    use super::*;

    /// Runs `f` on the first lane of `lanes`.
    async fn on<T: Send + 'static>(
        lanes: &Lanes,
        f: impl Future<Output = T> + Send + 'static,
    ) -> T {
        let lane = lanes.handles().next().expect("one lane");
        lane.spawn(f).await.expect("the task ends")
    }

    #[tokio::test]
    async fn each_lane_knows_its_id_and_the_main_runtime_is_no_lane() {
        let lanes = Lanes::start(3).unwrap();
        let mut ids = Vec::new();
        for h in lanes.handles() {
            ids.push(h.spawn(async { current() }).await.unwrap());
        }
        assert_eq!(current(), 0);
        assert!(ids.iter().all(|&id| id > 0), "{ids:?}");
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 3, "{ids:?}");
        lanes.stop().await;
    }

    #[tokio::test]
    async fn a_socket_moved_to_another_lane_works_there_after_its_first_lane_stopped() {
        let first = Lanes::start(1).unwrap();
        let second = Lanes::start(1).unwrap();
        let (stream, from, peer) = on(&first, async {
            let (stream, peer) = UnixStream::pair().unwrap();
            let peer = peer.into_std().unwrap();
            peer.set_nonblocking(false).unwrap();
            (stream, current(), peer)
        })
        .await;
        // The first lane's event loop is gone: only a re-registered socket can still wait.
        first.stop().await;
        (&peer).write_all(b"ping").unwrap();
        let got = on(&second, async move {
            let mut stream = rehome(stream, from)?;
            let mut buf = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf)).await??;
            io::Result::Ok(buf)
        })
        .await;
        assert_eq!(&got.expect("read on the second lane"), b"ping");
        second.stop().await;
    }

    #[tokio::test]
    async fn new_connections_stay_on_their_lane_unless_it_does_not_keep_up() {
        let lanes = Lanes::start_balanced(2, false).unwrap();
        let placement = lanes.placement();
        let seats = placement.seats.clone();
        let stays = on(&lanes, async move {
            let here = seats.iter().position(|s| s.id == current()).unwrap();
            let mut stays = Vec::new();
            let mut held = Vec::new();
            for _ in 0..4 {
                let placed = placement.place();
                stays.push(placed.is_here());
                held.push(placed);
            }
            // This lane did not keep up, the other idled: the next goes there.
            seats[here].note_busy(0.95);
            seats[1 - here].note_busy(0.1);
            stays.push(placement.place().is_here());
            // Both busy: it stays.
            seats[1 - here].note_busy(0.8);
            stays.push(placement.place().is_here());
            stays
        })
        .await;
        assert_eq!(stays, [true, true, true, true, false, true]);
        lanes.stop().await;
    }

    #[tokio::test]
    async fn a_connection_claims_a_move_only_while_its_lane_gives_some_away() {
        let lanes = Lanes::start_balanced(2, false).unwrap();
        let placement = lanes.placement();
        let seats = placement.seats.clone();
        let open = |i: usize| seats[i].open.load(Ordering::Relaxed);
        let (placed, here) = on(&lanes, async move {
            let placed = placement.place();
            let here = placement.seats.iter().position(|s| s.id == current());
            (placed, here.unwrap())
        })
        .await;
        let there = 1 - here;
        assert!(!placed.lane_sheds());
        assert!(placed.claim_move().is_none());
        seats[here].shed(1, there);
        assert!(placed.lane_sheds());
        let moved = placed.claim_move().expect("one to give away");
        assert_eq!(
            (open(here), open(there)),
            (1, 1),
            "counted on both until the old one drops"
        );
        drop(placed);
        assert_eq!((open(here), open(there)), (0, 1));
        assert!(!moved.lane_sheds(), "the taking lane gives none away");
        assert_eq!(
            seats[here].shed.load(Ordering::Relaxed),
            0,
            "the one token taken"
        );
        lanes.stop().await;
    }
}
