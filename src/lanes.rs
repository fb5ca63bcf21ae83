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
//! lane and one of them gets it). The lane that wakes first takes a whole
//! burst of new connections, so a lane keeps a connection it accepted only
//! while no other lane has two fewer open ([`Spread`]); else the socket
//! moves to the least busy lane (one cross-thread spawn; measured: WSGI
//! 64 KiB +15 % over leaving bursts where they land). A connection never
//! moves after that. The supervisor, the admin API and reloads stay on the
//! main runtime.
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
    spread: Spread,
}

/// Where new connections go: each lane's handle and open connections.
#[derive(Clone)]
pub struct Spread {
    seats: Arc<[Seat]>,
}

struct Seat {
    id: usize,
    handle: Handle,
    open: AtomicUsize,
}

/// One connection counted on the lane chosen for it, until dropped.
pub struct Placed {
    seats: Arc<[Seat]>,
    index: usize,
}

/// A lane keeps a connection it accepted unless another lane has more
/// than this many fewer open connections.
const SLACK: usize = 1;

struct Lane {
    id: usize,
    handle: Handle,
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
    /// Starts `count` lanes (at least one), threads named `router-N`. On
    /// an error, the lanes already started are stopped when dropped.
    pub fn start(count: usize) -> io::Result<Lanes> {
        let count = count.max(1);
        // The lanes share what one runtime's blocking pool had.
        let blocking = (BLOCKING_THREADS / count).max(MIN_BLOCKING_THREADS);
        let mut lanes = Vec::new();
        for _ in 0..count {
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            lanes.push(Lane::start(id, blocking)?);
        }
        let seats = lanes
            .iter()
            .map(|l| Seat {
                id: l.id,
                handle: l.handle.clone(),
                open: AtomicUsize::new(0),
            })
            .collect();
        Ok(Lanes {
            lanes,
            spread: Spread { seats },
        })
    }

    /// A handle to spawn on each lane.
    pub fn handles(&self) -> impl Iterator<Item = &Handle> {
        self.lanes.iter().map(|l| &l.handle)
    }

    /// Where new connections go.
    pub fn spread(&self) -> Spread {
        self.spread.clone()
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

impl Spread {
    /// The lane for a connection accepted on the calling lane: this one,
    /// unless another lane has more than [`SLACK`] fewer open connections
    /// (then the least busy). Whoever wakes first accepts a burst of
    /// connections; this spreads them so that no lane idles while another
    /// carries them all.
    pub fn place(&self) -> Placed {
        let open = |i: usize| self.seats[i].open.load(Ordering::Relaxed);
        let least = (0..self.seats.len()).min_by_key(|&i| open(i)).unwrap_or(0);
        let here = self.seats.iter().position(|s| s.id == current());
        let index = match here {
            Some(h) if open(h) <= open(least) + SLACK => h,
            _ => least,
        };
        self.seats[index].open.fetch_add(1, Ordering::Relaxed);
        Placed {
            seats: self.seats.clone(),
            index,
        }
    }
}

impl Placed {
    /// Whether the connection stays on the calling lane.
    pub fn is_here(&self) -> bool {
        self.seats[self.index].id == current()
    }

    /// The chosen lane, to spawn the connection's task on.
    pub fn handle(&self) -> &Handle {
        &self.seats[self.index].handle
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.seats[self.index].open.fetch_sub(1, Ordering::Relaxed);
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
        std::thread::Builder::new()
            .name(format!("router-{id}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name(format!("router-{id}-io"))
                    .max_blocking_threads(blocking_threads)
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
    async fn new_connections_stay_on_their_lane_until_another_has_two_fewer() {
        let lanes = Lanes::start(2).unwrap();
        let spread = lanes.spread();
        let stays = on(&lanes, async move {
            let mut held = Vec::new();
            let mut stays = Vec::new();
            for _ in 0..6 {
                let placed = spread.place();
                stays.push(placed.is_here());
                held.push(placed);
            }
            // The other lane's connections end: 4/0, the next one moves (4/1).
            held.retain(|p| p.is_here());
            let moved = spread.place();
            stays.push(moved.is_here());
            // Three of this lane's end: 1/1, the next one stays.
            held.truncate(1);
            stays.push(spread.place().is_here());
            stays
        })
        .await;
        // Open here/there: 1/0, 2/0, 2/1 (moved), 3/1, 3/2 (moved), 4/2.
        assert_eq!(stays, [true, true, false, true, false, true, false, true]);
        lanes.stop().await;
    }
}
