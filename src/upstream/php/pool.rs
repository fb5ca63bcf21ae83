//! Keep-alive FastCGI connections to one site's php-fpm socket.
//!
//! Invariants:
//! - At most `max_children` connections exist at once (idle + in use): a
//!   request holds an [`Admission`] place for as long as its connection is in
//!   use, and a new connection is opened only when no idle one is left.
//!   php-fpm ties one child to each open connection, so more would starve it.
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

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{recv, MsgFlags};
use tokio::net::UnixStream;

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

/// What a pool did with its connections since it was built (status, tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Requests sent on a kept-alive connection.
    pub reused: u64,
    /// Connections retired after their child's `max_requests`-th response.
    pub retired: u64,
    /// Idle connections found closed by php-fpm when taken (never used).
    pub found_closed: u64,
    /// Requests sent again on a fresh connection because their kept-alive
    /// one was closed by php-fpm before it answered.
    pub resent: u64,
}

#[derive(Default)]
struct Counters {
    reused: AtomicU64,
    retired: AtomicU64,
    found_closed: AtomicU64,
    resent: AtomicU64,
}

pub struct ConnPool {
    permits: Arc<Admission>,
    /// php-fpm's `pm.max_requests` (0: children are never recycled).
    max_requests: u64,
    counters: Counters,
    idle: Mutex<Vec<Idle>>,
    idle_timeout: Duration,
    reaper_running: AtomicBool,
    /// Where the reaper runs: the runtime that built the pool (the main
    /// one), not the router lane of the first request (lanes stop first).
    reaper_runtime: Option<tokio::runtime::Handle>,
    keep_alive: bool,
}

impl ConnPool {
    /// `keep_alive`: keep connections open between requests. Only safe with
    /// `pm = static`: php-fpm counts a child waiting on a kept-alive
    /// connection as idle, so `ondemand` and `dynamic` pools do not spawn
    /// children for new connections while such children exist, and requests
    /// wait until the router closes idle connections (measured: every
    /// concurrent request beyond the first waited 2 × idle_timeout).
    /// `max_requests`: php-fpm's `pm.max_requests`, after which a child
    /// closes its connection and exits (0: never).
    pub fn new(
        max: usize,
        idle_timeout: Duration,
        keep_alive: bool,
        max_requests: u64,
    ) -> Arc<Self> {
        Arc::new(ConnPool {
            permits: Admission::new(max.max(1)),
            max_requests,
            counters: Counters::default(),
            idle: Mutex::new(Vec::new()),
            idle_timeout,
            reaper_running: AtomicBool::new(false),
            reaper_runtime: tokio::runtime::Handle::try_current().ok(),
            keep_alive,
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
        let mut idle = self.lock();
        while let Some(c) = crate::upstream::take_newest(&mut idle, |c| c.lane == lane) {
            if c.path != path || c.since.elapsed() >= self.idle_timeout {
                continue;
            }
            if !is_open(&c.conn.stream) {
                self.counters.found_closed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if let Ok(stream) = crate::lanes::rehome(c.conn.stream, c.lane) {
                self.counters.reused.fetch_add(1, Ordering::Relaxed);
                return Some(Conn {
                    stream,
                    served: c.conn.served,
                });
            }
        }
        None
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
            self.counters.retired.fetch_add(1, Ordering::Relaxed);
            return; // the child exits; php-fpm starts its replacement
        }
        self.lock().push(Idle {
            path,
            conn,
            since: Instant::now(),
            lane: crate::lanes::current(),
        });
        self.start_reaper();
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
            .retain(|c| c.since.elapsed() < self.idle_timeout);
    }

    /// Closes every idle connection (runtime stopping or restarting).
    pub fn close_idle(&self) {
        self.lock().clear();
    }

    /// A request is sent again: its kept-alive connection was closed.
    pub fn count_resent(&self) {
        self.counters.resent.fetch_add(1, Ordering::Relaxed);
    }

    /// What the pool did with its connections so far.
    pub fn stats(&self) -> PoolStats {
        let c = &self.counters;
        PoolStats {
            reused: c.reused.load(Ordering::Relaxed),
            retired: c.retired.load(Ordering::Relaxed),
            found_closed: c.found_closed.load(Ordering::Relaxed),
            resent: c.resent.load(Ordering::Relaxed),
        }
    }

    /// Number of idle connections (for status and tests).
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A kept-alive connection has nothing to read between requests: data or
/// end of file means php-fpm closed it (child recycled) or broke protocol.
fn is_open(stream: &UnixStream) -> bool {
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
        let pool = ConnPool::new(4, Duration::from_millis(50), true, 0);
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
        let pool = ConnPool::new(4, Duration::from_secs(60), true, 3);
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
                found_closed: 0,
                resent: 0
            }
        );
        // Without recycling (max_requests = 0) nothing is retired.
        let pool = ConnPool::new(4, Duration::from_secs(60), true, 0);
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
        let pool = ConnPool::new(4, Duration::from_secs(60), true, 0);
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
}
