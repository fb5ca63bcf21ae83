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

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{recv, MsgFlags};
use tokio::net::UnixStream;

use crate::upstream::admission::{Acquire, Admission};

struct Idle {
    path: PathBuf,
    stream: UnixStream,
    since: Instant,
    /// The router lane `stream` is registered with (see `lanes`).
    lane: usize,
}

pub struct ConnPool {
    permits: Arc<Admission>,
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
    pub fn new(max: usize, idle_timeout: Duration, keep_alive: bool) -> Arc<Self> {
        Arc::new(ConnPool {
            permits: Admission::new(max.max(1)),
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
    pub fn take(&self, path: &Path) -> Option<UnixStream> {
        let lane = crate::lanes::current();
        let mut idle = self.lock();
        while let Some(c) = crate::upstream::take_newest(&mut idle, |c| c.lane == lane) {
            if c.path == path && c.since.elapsed() < self.idle_timeout && is_open(&c.stream) {
                if let Ok(stream) = crate::lanes::rehome(c.stream, c.lane) {
                    return Some(stream);
                }
            }
        }
        None
    }

    /// Returns a connection whose last exchange completed cleanly.
    pub fn put(self: &Arc<Self>, path: PathBuf, stream: UnixStream) {
        if !self.keep_alive {
            return; // closed: the php-fpm child is free for the next connection
        }
        self.lock().push(Idle {
            path,
            stream,
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

    #[tokio::test]
    async fn dead_and_foreign_connections_are_not_reused_and_idle_ones_are_reaped() {
        let pool = ConnPool::new(4, Duration::from_millis(50), true);
        let (alive, _alive_peer) = UnixStream::pair().unwrap();
        let (dead, dead_peer) = UnixStream::pair().unwrap();
        let (chatty, chatty_peer) = UnixStream::pair().unwrap();
        chatty_peer.try_write(b"x").unwrap();
        pool.put("/s".into(), alive);
        pool.put("/s".into(), chatty);
        pool.put("/s".into(), dead);
        drop(dead_peer);
        // Newest first: `dead` (peer closed) and `chatty` (unexpected bytes) are dropped.
        let got = pool.take(Path::new("/s")).expect("the live connection");
        assert_eq!(pool.idle_count(), 0);
        pool.put("/s".into(), got);
        assert!(pool.take(Path::new("/new-generation.sock")).is_none());
        assert_eq!(
            pool.idle_count(),
            0,
            "connections to an older socket are dropped"
        );

        let (c, _peer) = UnixStream::pair().unwrap();
        pool.put("/s".into(), c);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while pool.idle_count() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "idle connection never reaped"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_lane_takes_its_own_connection_first_and_can_take_another_lanes() {
        use crate::lanes::Lanes;
        let pool = ConnPool::new(4, Duration::from_secs(60), true);
        let put_on = |lanes: &Lanes| {
            let pool = pool.clone();
            let lane = lanes.handles().next().unwrap().clone();
            async move {
                lane.spawn(async move {
                    let (stream, peer) = UnixStream::pair().unwrap();
                    pool.put("/s".into(), stream);
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
                    let mut stream = pool.take(Path::new("/s")).expect("an idle connection");
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
