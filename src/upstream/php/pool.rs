//! Keep-alive FastCGI connections to one site's php-fpm socket.
//!
//! Invariants:
//! - At most `max_children` connections exist at once (idle + in use): a
//!   request holds a [`Semaphore`] permit for as long as its connection is in
//!   use, and a new connection is opened only when no idle one is left.
//!   php-fpm ties one child to each open connection, so more would starve it.
//! - A connection goes back to the pool only after its response was read to
//!   `FCGI_END_REQUEST` and its request was written whole (the exchange
//!   decides); an idle connection is dropped when the peer closed it, when
//!   it belongs to an older socket path (a new runtime generation), or when
//!   it has been idle for `idle_timeout` (so ondemand children can exit).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{recv, MsgFlags};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

struct Idle {
    path: PathBuf,
    stream: UnixStream,
    since: Instant,
}

pub struct ConnPool {
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Idle>>,
    idle_timeout: Duration,
}

impl ConnPool {
    pub fn new(max: usize, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(ConnPool {
            permits: Arc::new(Semaphore::new(max.max(1))),
            idle: Mutex::new(Vec::new()),
            idle_timeout,
        })
    }

    /// Waits for the right to use one connection.
    pub async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().acquire_owned().await.ok()
    }

    /// An idle, still-open connection to `path`, newest first.
    pub fn take(&self, path: &Path) -> Option<UnixStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            if c.path == path && c.since.elapsed() < self.idle_timeout && is_open(&c.stream) {
                return Some(c.stream);
            }
        }
        None
    }

    /// Returns a connection whose last exchange completed cleanly.
    pub fn put(self: &Arc<Self>, path: PathBuf, stream: UnixStream) {
        self.lock().push(Idle {
            path,
            stream,
            since: Instant::now(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let pool = Arc::downgrade(self);
            let after = self.idle_timeout;
            rt.spawn(async move {
                tokio::time::sleep(after).await;
                if let Some(pool) = pool.upgrade() {
                    pool.reap();
                }
            });
        }
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
