//! Keep-alive FastCGI connections to one site's php-fpm socket.
//!
//! Invariants:
//! - At most `max` connections (the pool's [`Admission`] capacity) serve
//!   requests at once: a request holds an [`Admission`] place for as long
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
//! - A connection put back goes to the longest-waiting request (preferring
//!   one of the putting lane) before the idle list; a successor's end
//!   ([`Warming`], however its task ends) lets waiting requests look again
//!   when no other successor is on its way.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{recv, MsgFlags};
use tokio::net::UnixStream;

use crate::metrics::{PhpPoolCounters, PhpPoolStats, PoolEvent};
use crate::upstream::admission::{Acquire, Admission};

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
    /// in `admission`), else to the oldest, not to the idle list (first
    /// come, first served, as in php-fpm's backlog). A sender dropped
    /// unsent tells its request to look again.
    waiting: std::collections::VecDeque<(usize, tokio::sync::oneshot::Sender<Idle>)>,
}

pub struct ConnPool {
    permits: Arc<Admission>,
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
            permits: Admission::new(max.max(1)),
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

    /// Waits for the right to use one connection.
    pub fn permit(&self) -> Acquire {
        self.permits.acquire()
    }

    /// An idle, still-open connection to `path`, newest first, one opened
    /// on the calling router lane if there is one (else moved here).
    pub fn take(&self, path: &Path) -> Option<Conn> {
        let lane = crate::lanes::current();
        let mut state = self.lock();
        while let Some(c) = crate::upstream::take_newest(&mut state.idle, |c| c.lane == lane) {
            if let Some(conn) = self.adopt(c, path) {
                return Some(conn);
            }
        }
        None
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
        self.counters.count(PoolEvent::Reused);
        Some(Conn {
            stream,
            served: c.conn.served,
        })
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
        if state.idle.len() >= self.permits.capacity() {
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

    /// Opens the successor of a connection whose last request is going out
    /// (see the module doc): connected to `socket` (served by `uid`), pooled
    /// once a child has read its probe (`warm`), within `timeout`, else
    /// closed. Runs in a task of its own on the caller's runtime.
    pub fn warm_successor(self: &Arc<Self>, socket: PathBuf, uid: Option<u32>, timeout: Duration) {
        let epoch = self.epoch.load(Ordering::SeqCst);
        self.warming.fetch_add(1, Ordering::SeqCst);
        // Ends the warm-up however the task ends (even dropped unfinished,
        // its runtime stopping), so no request waits for it past then.
        let mut warming = Warming {
            pool: self.clone(),
            pooled: false,
        };
        tokio::spawn(async move {
            let pool = warming.pool.clone();
            let on_demand = pool.on_demand;
            let opened =
                tokio::time::timeout(timeout, super::warm::open(&socket, uid, on_demand)).await;
            match opened {
                Ok(Ok(stream)) if pool.epoch.load(Ordering::SeqCst) == epoch => {
                    pool.counters.count(PoolEvent::Warmed);
                    pool.push_idle(socket, Conn { stream, served: 0 });
                    warming.pooled();
                }
                Ok(Ok(_closed_pool)) => {}
                Ok(Err(_)) | Err(_) => pool.counters.count(PoolEvent::WarmFailed),
            }
        });
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

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A successor on its way ([`ConnPool::warm_successor`]); its drop ends it.
struct Warming {
    pool: Arc<ConnPool>,
    /// It went into the pool (or to a waiting request).
    pooled: bool,
}

impl Warming {
    fn pooled(&mut self) {
        self.pooled = true;
    }
}

impl Drop for Warming {
    fn drop(&mut self) {
        // Waiting requests keep their turn while other successors are on
        // their way; when none is left, or this one came to nothing, they
        // look again (and open a connection if none is idle).
        if self.pool.warming.fetch_sub(1, Ordering::SeqCst) == 1 || !self.pooled {
            self.pool.wake_waiters();
        }
    }
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

#[cfg(test)]
mod tests {
    use std::io::Read;

    use tokio::io::AsyncWriteExt;

    use super::*;

    fn conn(stream: UnixStream) -> Conn {
        Conn { stream, served: 0 }
    }

    #[tokio::test]
    async fn dead_and_foreign_connections_are_not_reused_and_idle_ones_are_reaped() {
        let pool = ConnPool::new(
            4,
            Duration::from_millis(50),
            Reuse::Pinned,
            0,
            Default::default(),
        );
        let (alive, _alive_peer) = UnixStream::pair().unwrap();
        let (dead, dead_peer) = UnixStream::pair().unwrap();
        let (chatty, chatty_peer) = UnixStream::pair().unwrap();
        chatty_peer.try_write(b"x").unwrap();
        pool.put("/s".into(), conn(alive));
        pool.put("/s".into(), conn(chatty));
        pool.put("/s".into(), conn(dead));
        drop(dead_peer);
        // Newest first: `dead` (peer closed) and `chatty` (unexpected bytes) are dropped.
        let got = pool
            .take(Path::new("/s"))
            .expect("the live connection")
            .stream;
        assert_eq!(pool.idle_count(), 0);
        pool.put("/s".into(), conn(got));
        assert!(pool.take(Path::new("/new-generation.sock")).is_none());
        assert_eq!(
            pool.idle_count(),
            0,
            "connections to an older socket are dropped"
        );

        let (c, _peer) = UnixStream::pair().unwrap();
        pool.put("/s".into(), conn(c));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while pool.idle_count() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "idle connection never reaped"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A connection is pooled until its child's `max_requests`-th response,
    /// then retired: the request after it never meets it.
    #[tokio::test]
    async fn a_connection_is_retired_after_its_childs_last_request() {
        let pool = ConnPool::new(
            4,
            Duration::from_secs(60),
            Reuse::Pinned,
            3,
            Default::default(),
        );
        let (stream, _peer) = UnixStream::pair().unwrap();
        let mut conn = Some(conn(stream));
        for served in 1..=2 {
            pool.put("/s".into(), conn.take().unwrap());
            let got = pool.take(Path::new("/s")).expect("pooled");
            assert_eq!(got.served, served);
            conn = Some(got);
        }
        pool.put("/s".into(), conn.take().unwrap());
        assert!(pool.take(Path::new("/s")).is_none(), "retired, not pooled");
        assert_eq!(
            pool.stats(),
            PoolStats {
                reused: 2,
                retired: 1,
                ..Default::default()
            }
        );
        // Without recycling (max_requests = 0) nothing is retired.
        let pool = ConnPool::new(
            4,
            Duration::from_secs(60),
            Reuse::Pinned,
            0,
            Default::default(),
        );
        let (stream, _peer) = UnixStream::pair().unwrap();
        pool.put(
            "/s".into(),
            Conn {
                stream,
                served: 1_000_000,
            },
        );
        assert!(pool.take(Path::new("/s")).is_some());
    }

    #[tokio::test]
    async fn a_lane_takes_its_own_connection_first_and_can_take_another_lanes() {
        use crate::lanes::Lanes;
        let pool = ConnPool::new(
            4,
            Duration::from_secs(60),
            Reuse::Pinned,
            0,
            Default::default(),
        );
        let put_on = |lanes: &Lanes| {
            let pool = pool.clone();
            let lane = lanes.handles().next().unwrap().clone();
            async move {
                lane.spawn(async move {
                    let (stream, peer) = UnixStream::pair().unwrap();
                    pool.put("/s".into(), conn(stream));
                    peer.into_std().unwrap()
                })
                .await
                .unwrap()
            }
        };
        // Takes a connection on `lanes` and writes one byte through it.
        let take_on = |lanes: &Lanes| {
            let pool = pool.clone();
            let lane = lanes.handles().next().unwrap().clone();
            async move {
                lane.spawn(async move {
                    let mut stream = pool
                        .take(Path::new("/s"))
                        .expect("an idle connection")
                        .stream;
                    tokio::time::timeout(Duration::from_secs(5), stream.write_all(b"x"))
                        .await
                        .expect("writable within 5s")
                        .expect("write");
                    stream
                })
                .await
                .unwrap()
            }
        };
        let got = |peer: &mut std::os::unix::net::UnixStream| peer.read(&mut [0u8; 1]).is_ok();
        let first = Lanes::start(1).unwrap();
        let second = Lanes::start(1).unwrap();
        let mut from_first = put_on(&first).await;
        let mut from_second = put_on(&second).await;
        // The second lane's connection is the newest, but the first lane takes its own.
        let _kept = take_on(&first).await;
        assert!(got(&mut from_first) && !got(&mut from_second));
        // Only the second lane's is left: it moves here, and works after its lane stopped.
        second.stop().await;
        let _kept = take_on(&first).await;
        assert!(got(&mut from_second));
        assert_eq!(pool.idle_count(), 0);
        first.stop().await;
    }

    /// A connection's last request opens its successor, which is pooled
    /// only once the peer read its probe; meanwhile a request waits for it
    /// (or any connection put back) instead of getting `None`.
    #[tokio::test]
    async fn a_successor_is_pooled_once_accepted_and_a_request_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("fpm.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let pool = ConnPool::new(
            1,
            Duration::from_secs(60),
            Reuse::Pinned,
            2,
            Default::default(),
        );
        assert!(!pool.is_last(0) && pool.is_last(1));
        pool.warm_successor(socket.clone(), None, Duration::from_secs(30));
        let waiting = tokio::spawn({
            let (pool, socket) = (pool.clone(), socket.clone());
            async move { pool.take_or_wait(&socket).await.map(|c| c.served) }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.stats().waited == 0 {
            assert!(
                Instant::now() < deadline,
                "never waited: {:?}",
                pool.stats()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!waiting.is_finished(), "nothing accepted the successor yet");
        let (mut child, _) = listener.accept().await.unwrap();
        let mut probe = [0u8; 8];
        tokio::io::AsyncReadExt::read_exact(&mut child, &mut probe)
            .await
            .unwrap();
        let served = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the waiting request got the successor within 10 s")
            .unwrap();
        assert_eq!(served, Some(0), "a fresh child's connection");
        let stats = pool.stats();
        assert_eq!((stats.warmed, stats.waited, stats.warm_failed), (1, 1, 0));

        // No successor on its way: nothing to wait for.
        assert!(pool.take_or_wait(&socket).await.is_none());
        // A successor nobody accepts in time is closed, and its waiter let go.
        pool.warm_successor(socket.clone(), None, Duration::from_millis(100));
        let got = tokio::time::timeout(Duration::from_secs(10), pool.take_or_wait(&socket))
            .await
            .expect("let go within 10 s");
        assert!(got.is_none());
        assert_eq!(pool.stats().warm_failed, 1);
    }
}
