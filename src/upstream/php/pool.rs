//! Keep-alive FastCGI connections to one site's php-fpm socket.
//!
//! Invariants:
//! - At most `max` connections (the pool's [`Places`] capacity) serve
//!   requests at once: a request holds a [`Place`] for as long
//!   as its connection is in use, and opens a new connection only when no
//!   idle one is left and no successor is on its way. With keep-alive
//!   (`static` and `ondemand` pools: [`Reuse`]) `max` is `max_children`:
//!   php-fpm ties one child to each open connection, so more would starve
//!   it. An `ondemand` pool's fresh connections are watched until a child
//!   reads them ([`ConnPool::watch_fresh`], `warm::watch`): its master can
//!   leave one in the backlog. Without keep-alive (`dynamic`: one
//!   connection per request) the caller may admit more than the children:
//!   the surplus waits in php-fpm's listen backlog, its request written,
//!   and pins no child (`super::BACKLOG_DEPTH`).
//! - A connection goes back to the pool only after its response was read to
//!   `FCGI_END_REQUEST` and its request was written whole (the exchange
//!   decides); an idle connection is dropped when the peer closed it, when
//!   it belongs to an older socket path (a new runtime generation), or when
//!   it has been idle for `idle_timeout` (so ondemand children can exit).
//! - A connection whose php-fpm child has served `max_requests` requests
//!   (counted per connection: [`Conn::served`]) is retired when its last
//!   response ends and never reused: that child closes it and exits right
//!   after the response (see "Keep-alive and recycled children" in
//!   docs/php.md). A child may have served requests on an earlier
//!   connection the pool closed (idle, a POST's fresh connection), so the
//!   count can be short; then the peek at [`ConnPool::take`] or the
//!   exchange's one retry catch the close.
//! - When a connection's last request goes out, the pool opens its
//!   *successor* ([`ConnPool::warm_successor`], `warm`): a connection that
//!   enters the pool only once a live child (the spare php-fpm runs for
//!   this) has accepted it, so no request ever waits in php-fpm's backlog
//!   for a child to be forked. At most one successor per retiring
//!   connection; the one extra connection pins the spare child, which is
//!   not admitted otherwise. A request that finds no idle connection while
//!   a successor is on its way waits for the first connection back in the
//!   pool ([`ConnPool::take_or_wait`]) instead of opening one. A request
//!   re-sent on a fresh connection (its kept-alive one had closed) can add
//!   one beside a successor: the idle list never holds more than
//!   `max_children` (a surplus connection is closed when put back).
//! - The place of a retired connection is *parked* while its successor is
//!   on its way and nothing is idle (`successor`): queued requests take
//!   whichever connection frees first, in their order, and the successor
//!   comes with the place to the request then at the head of the queue; no
//!   queued request waits for a successor alone while other connections
//!   free up. A parked place is freed when its successor comes to nothing.
//! - A connection whose exchange ended cleanly while requests queue for a
//!   place goes with its place to the next of them ([`ConnPool::finish`]),
//!   that request's records written onto it first, so its child never
//!   waits for that request's task; never one whose child is retiring.
//!   A queued request without records (POST, large body) gets the place
//!   only, the connection going back to the pool.
//! - A connection put back goes to the longest-waiting request (preferring
//!   one of the putting lane) before the idle list; a successor's end
//!   (`successor::Warming`, however its task ends) lets waiting requests
//!   look again when no other successor is on its way.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{recv, MsgFlags};
use tokio::net::UnixStream;

use bytes::Bytes;

use super::places::{Admit, Handed, Place, Places};
use crate::metrics::{PhpPoolCounters, PhpPoolStats, PoolEvent};

struct Idle {
    path: PathBuf,
    conn: Conn,
    since: Instant,
    /// The router lane `stream` is registered with (see `lanes`).
    lane: usize,
}

/// A connection to php-fpm and how many requests its child answered on it.
pub struct Conn {
    pub stream: UnixStream,
    /// Requests completed on this connection (0: just opened).
    pub served: u64,
}

/// What a pool did with its connections (status, tests, `/metrics`).
pub type PoolStats = PhpPoolStats;

/// Idle connections and the requests waiting for one, under one lock.
#[derive(Default)]
struct State {
    idle: Vec<Idle>,
    /// Requests in [`ConnPool::take_or_wait`]'s wait (their lane), oldest
    /// first: a connection put back goes to the first of them still
    /// waiting on the putting lane (no wake-up of another lane's thread, as
    /// in `places`), else to the oldest, not to the idle list (first
    /// come, first served, as in php-fpm's backlog). A sender dropped
    /// unsent tells its request to look again.
    waiting: std::collections::VecDeque<(usize, tokio::sync::oneshot::Sender<Idle>)>,
    /// Successors on their way that no retired connection's place waits
    /// for (`successor`).
    unmatched: usize,
    /// Places of retired connections, each kept for a successor on its way
    /// (`successor`): the successor comes with it to the next queued
    /// request, which meanwhile takes whichever connection frees first.
    parked: Vec<Place>,
}

pub struct ConnPool {
    /// The places (`max`) and the requests queued for one.
    places: Arc<Places>,
    /// php-fpm's `pm.max_requests` (0: children are never recycled).
    max_requests: u64,
    counters: Arc<PhpPoolCounters>,
    state: Mutex<State>,
    /// Successors connected whose probe no child has read yet.
    warming: AtomicUsize,
    /// Bumped by [`ConnPool::close_idle`]: a successor of an older epoch is
    /// closed, not pooled.
    epoch: AtomicU64,
    idle_timeout: Duration,
    reaper_running: AtomicBool,
    /// Where the reaper runs: the runtime that built the pool (the main
    /// one), not the router lane of the first request (lanes stop first).
    reaper_runtime: Option<tokio::runtime::Handle>,
    keep_alive: bool,
    /// php-fpm forks on demand (`ondemand`): a fresh connection can be left
    /// in its backlog, so each is watched until a child reads it
    /// ([`ConnPool::watch_fresh`]).
    on_demand: bool,
}

/// How a pool uses its connections to php-fpm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reuse {
    /// One connection per request (`dynamic`): the surplus beyond the
    /// children waits in php-fpm's backlog.
    None,
    /// Kept alive; php-fpm runs every child all the time (`static`).
    Pinned,
    /// Kept alive; php-fpm forks children as connections arrive
    /// (`ondemand`): fresh connections are watched (`warm::watch`).
    OnDemand,
}

impl ConnPool {
    /// `reuse`: whether connections stay open between requests, and whether
    /// php-fpm forks children on demand (then a fresh connection can be
    /// left in its backlog: see [`ConnPool::watch_fresh`]).
    /// `max_requests`: php-fpm's `pm.max_requests`, after which a child
    /// closes its connection and exits (0: never).
    pub fn new(
        max: usize,
        idle_timeout: Duration,
        reuse: Reuse,
        max_requests: u64,
        counters: Arc<PhpPoolCounters>,
    ) -> Arc<Self> {
        Arc::new(ConnPool {
            places: Places::new(max.max(1)),
            max_requests,
            counters,
            state: Mutex::new(State::default()),
            warming: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            idle_timeout,
            reaper_running: AtomicBool::new(false),
            reaper_runtime: tokio::runtime::Handle::try_current().ok(),
            keep_alive: reuse != Reuse::None,
            on_demand: reuse == Reuse::OnDemand,
        })
    }

    /// The right to use one connection, at once or queued (see `places`).
    /// `request`: the whole request, when it may be written onto a
    /// kept-alive connection for it while it waits (called only if it does).
    pub fn admit(&self, request: impl FnOnce() -> Option<Bytes>) -> Admit {
        self.places
            .admit(|| if self.keep_alive { request() } else { None })
    }

    /// An idle, still-open connection to `path`, newest first, one opened
    /// on the calling router lane if there is one (else moved here).
    pub fn take(&self, path: &Path) -> Option<Conn> {
        let conn = self.take_idle(path)?;
        self.counters.count(PoolEvent::Reused);
        Some(conn)
    }

    /// [`ConnPool::take`] without counting it (the caller hands it on).
    ///
    /// Only the pop is under the pool's lock: the look at the connection
    /// (`adopt`: a `recv` peek, an `epoll_ctl` move to this lane, the
    /// `close` of a dead one) happens after it is released. Holding the
    /// lock over those system calls made the other lane's lock wait
    /// (`futex`, a thread put to sleep) on 0.2 of the requests (`perf` on
    /// the router's `futex` calls under PHP hello, docs/performance.md).
    fn take_idle(&self, path: &Path) -> Option<Conn> {
        let lane = crate::lanes::current();
        loop {
            let c = crate::upstream::take_newest(&mut self.lock().idle, |c| c.lane == lane)?;
            if let Some(conn) = self.adopt(c, path) {
                return Some(conn);
            }
        }
    }

    /// `c` as this request's connection, if it is one to `path`, not idle
    /// too long, still open, and movable to the calling lane.
    fn adopt(&self, c: Idle, path: &Path) -> Option<Conn> {
        if c.path != path || c.since.elapsed() >= self.idle_timeout {
            return None;
        }
        if !is_open(&c.conn.stream) {
            self.counters.count(PoolEvent::FoundClosed);
            return None;
        }
        let stream = crate::lanes::rehome(c.conn.stream, c.lane).ok()?;
        Some(Conn {
            stream,
            served: c.conn.served,
        })
    }

    /// A connection handed to a queued request ([`ConnPool::finish`]),
    /// moved to the calling lane, with how much of its request is on it;
    /// `None` (closed) if it is to another socket than `path` (a new
    /// runtime generation since: the request goes to the new one).
    pub fn adopt_handed(&self, h: Handed, path: &Path) -> Option<(Conn, usize)> {
        if h.path != path {
            return None;
        }
        let stream = crate::lanes::rehome(h.conn.stream, h.lane).ok()?;
        let conn = Conn {
            stream,
            served: h.conn.served,
        };
        Some((conn, h.written))
    }

    /// Returns a connection whose last exchange completed cleanly (`conn`'s
    /// count not yet including it). A connection whose child has now served
    /// `max_requests` is retired instead: its child is closing it.
    pub fn put(self: &Arc<Self>, path: PathBuf, mut conn: Conn) {
        if !self.keep_alive {
            return; // closed: the php-fpm child is free for the next connection
        }
        conn.served += 1;
        if self.max_requests > 0 && conn.served >= self.max_requests {
            self.counters.count(PoolEvent::Retired);
            return; // the child exits; php-fpm starts its replacement
        }
        self.push_idle(path, conn);
    }

    /// Ends a request whose exchange on `conn` completed cleanly, freeing
    /// its `place`. While requests are queued, the connection goes with the
    /// place to the next of them (see `places`), its request written onto it
    /// here and now, so the php-fpm child reads it without waiting for
    /// that request's task; one queued without a request (a POST, a large
    /// body) gets the place, the connection going back to the pool. A
    /// connection whose child has now served `max_requests` is retired, its
    /// place kept for its successor while none is idle (`successor`).
    pub fn finish(self: &Arc<Self>, path: PathBuf, mut conn: Conn, place: Place) {
        if !self.keep_alive {
            return; // closed; `place` is freed
        }
        if self.max_requests > 0 && conn.served + 1 >= self.max_requests {
            self.put(path.clone(), conn); // retired
            self.pass_retired_place(path, place);
            return;
        }
        conn.served += 1;
        self.hand_on(path, conn, place);
    }

    /// Gives `conn`, which may serve a request, with `place` to the next
    /// queued request (its request written onto it now), else makes it
    /// idle and frees `place`.
    fn hand_on(self: &Arc<Self>, path: PathBuf, conn: Conn, place: Place) {
        let lane = crate::lanes::current();
        let Some(waiter) = self.places.next_waiter(lane) else {
            self.push_idle(path, conn);
            return; // `place` is freed (to a waiter that came meanwhile)
        };
        let handed = match &waiter.request {
            Some(request) => {
                let written = write_now(&conn.stream, request);
                self.counters.count(PoolEvent::Handed);
                Some(Handed {
                    path,
                    conn,
                    lane,
                    written,
                })
            }
            None => {
                self.push_idle(path, conn);
                None
            }
        };
        // Refused (the request gave up just now): dropped, the connection
        // closes (the request on it is one nobody waits for) and the place
        // goes to the next waiter.
        let _ = Places::grant(waiter, place, handed);
    }

    /// Hands `conn` to the longest-waiting request, else makes it idle.
    fn push_idle(self: &Arc<Self>, path: PathBuf, conn: Conn) {
        let mut item = Idle {
            path,
            conn,
            since: Instant::now(),
            lane: crate::lanes::current(),
        };
        let mut state = self.lock();
        loop {
            let own = state
                .waiting
                .iter()
                .position(|(lane, _)| *lane == item.lane);
            let Some((_, waiter)) = state.waiting.remove(own.unwrap_or(0)) else {
                break;
            };
            match waiter.send(item) {
                Ok(()) => return,
                Err(back) => item = back, // that request gave up
            }
        }
        if state.idle.len() >= self.places.capacity() {
            // One too many: a successor and the fresh connection a re-sent
            // request opened beside it (its kept-alive one had closed).
            return;
        }
        state.idle.push(item);
        drop(state);
        self.start_reaper();
    }

    /// Tells every waiting request to look again (a successor is done).
    fn wake_waiters(&self) {
        self.lock().waiting.clear();
    }

    /// Like [`ConnPool::take`], but while a successor is on its way
    /// ([`ConnPool::warm_successor`]) and nothing is idle, waits for the
    /// first connection back in the pool (a successor accepted, or another
    /// request's connection) rather than returning `None`: a connection
    /// opened now would wait in php-fpm's backlog for a child that is not
    /// forked yet, while the children that are pinned free up within a
    /// request's time. `None`: nothing idle and no successor coming.
    pub async fn take_or_wait(&self, path: &Path) -> Option<Conn> {
        let mut counted = false;
        loop {
            if let Some(c) = self.take(path) {
                return Some(c);
            }
            let handed = {
                let mut state = self.lock();
                if !state.idle.is_empty() {
                    continue; // put back since `take`: take it
                }
                // Under the lock: a successor's end decrements first, then
                // clears `waiting` under the lock, so no wait outlives it.
                if self.warming.load(Ordering::SeqCst) == 0 {
                    return None;
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                state.waiting.push_back((crate::lanes::current(), tx));
                rx
            };
            if !counted {
                counted = true;
                self.counters.count(PoolEvent::Waited);
            }
            if let Ok(c) = handed.await {
                if let Some(conn) = self.adopt(c, path) {
                    self.counters.count(PoolEvent::Reused);
                    return Some(conn);
                }
            }
        }
    }

    /// Whether the next request on a connection that has served `served`
    /// is its child's last (then open its successor).
    pub fn is_last(&self, served: u64) -> bool {
        self.keep_alive && self.max_requests > 0 && served + 1 >= self.max_requests
    }

    /// Watches a connection just opened with its request written (see
    /// `warm::watch`), when php-fpm forks children on demand: a connection
    /// no child reads in time is one the master left in its backlog.
    pub fn watch_fresh(&self, stream: impl std::os::fd::AsFd, socket: &Path) {
        if self.on_demand {
            super::warm::watch(stream, socket);
        }
    }

    /// A request opened a connection of its own.
    pub fn count_opened(&self) {
        self.counters.count(PoolEvent::Opened);
    }

    /// One reaper task per pool while it has idle connections: closes them
    /// after `idle_timeout`, so ondemand php-fpm children can exit.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let runtime = self.reaper_runtime.clone();
        let Some(rt) = runtime.or_else(|| tokio::runtime::Handle::try_current().ok()) else {
            self.reaper_running.store(false, Ordering::Release);
            return;
        };
        let pool = Arc::downgrade(self);
        let every = self.idle_timeout.max(Duration::from_millis(100));
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                pool.reap();
                if pool.idle_count() == 0 {
                    pool.reaper_running.store(false, Ordering::Release);
                    // A put may have raced with the store: look again.
                    if pool.idle_count() == 0 || pool.reaper_running.swap(true, Ordering::AcqRel) {
                        return;
                    }
                }
            }
        });
    }

    /// Closes idle connections that have been idle for `idle_timeout`.
    pub fn reap(&self) {
        self.lock()
            .idle
            .retain(|c| c.since.elapsed() < self.idle_timeout);
    }

    /// Closes every idle connection (runtime stopping or restarting), and
    /// every successor still on its way once it is accepted.
    pub fn close_idle(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.lock().idle.clear();
    }

    /// A request is sent again: its kept-alive connection was closed.
    pub fn count_resent(&self) {
        self.counters.count(PoolEvent::Resent);
    }

    /// What the pool (and the site's earlier pools) did so far.
    pub fn stats(&self) -> PoolStats {
        self.counters.snapshot()
    }

    /// Number of idle connections (for status and tests).
    pub fn idle_count(&self) -> usize {
        self.lock().idle.len()
    }

    /// Requests queued for a place now (for tests).
    pub fn queued_count(&self) -> usize {
        self.places.queued()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes what the socket takes of `request` now, without waiting: the
/// connection's previous answer was just read whole, so its buffer is
/// empty and a request of a few KiB goes in whole. 0 on any error: the
/// exchange writes the rest and sees the error itself.
fn write_now(stream: &UnixStream, request: &[u8]) -> usize {
    nix::sys::socket::send(
        stream.as_raw_fd(),
        request,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    )
    .unwrap_or(0)
}

/// A kept-alive connection has nothing to read between requests: data or
/// end of file means php-fpm closed it (child recycled) or broke protocol.
pub(super) fn is_open(stream: &UnixStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        recv(
            stream.as_raw_fd(),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
        ),
        Err(nix::errno::Errno::EAGAIN)
    )
}

mod successor;
#[cfg(test)]
mod tests;
