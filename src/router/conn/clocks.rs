//! The clocks of one client connection ([`Activity`]): a request head must
//! arrive within `header_timeout` of its first byte (or of accept), a
//! connection with no request in flight is closed after `keepalive_timeout`,
//! and one whose client takes nothing of a response for `send_timeout` is
//! closed. The connection's I/O (`conn::io`) reports bytes and writes here;
//! `router::server::watch` reads the deadlines and acts on them.
//!
//! Cheap: a few atomics per connection, one timer in the
//! connection's own task, no thread. [`Activity::parkable`] tells the
//! connection when an HTTP/1 connection is idle with everything sent, so it
//! can let go of hyper's state and buffers until the next request
//! (`router::server::parking`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;

const NONE: u64 = u64::MAX;

/// The state of one connection's clocks, shared by its I/O (bytes read),
/// its service (requests in flight) and its watcher (the deadlines).
pub struct Activity {
    start: Instant,
    /// `start` on the coarse clock (what [`Self::now_ms`] counts from).
    start_ms: u64,
    in_flight: AtomicUsize,
    /// When the first byte of the next request head arrived (ms since start).
    head_started: AtomicU64,
    /// When the last request finished (ms since start).
    idle_since: AtomicU64,
    /// HTTP/2: bytes arrive between requests (WINDOW_UPDATE, PING), so they
    /// do not start a head; only the first request is due within the header timeout.
    multiplexed: AtomicBool,
    /// Since when a write to the client has been waiting (ms since start);
    /// `NONE` while writes make progress.
    write_blocked: AtomicU64,
    /// Bytes were written since the writer last flushed (hyper flushes its
    /// socket only once its own buffer is empty).
    unflushed: AtomicBool,
    /// The last request's body was not read to its end (hyper then drains
    /// or closes; the connection is not idle in its eyes).
    body_unread: AtomicBool,
    /// The HTTP state's last read found nothing to read (it waits on the
    /// socket). Until then it may hold pipelined requests in its own buffer
    /// even with nothing in flight (hyper yields every few requests).
    read_waits: AtomicBool,
    /// The request in flight is the connection's last (HTTP/1.0 without
    /// keep-alive, or `Connection: close`): the client's end of stream
    /// while it is answered is a half-close, not a client gone
    /// ([`super::TrackedIo`]).
    last_request: AtomicBool,
    /// A request head was parsed on this connection (the first one started).
    requested: AtomicBool,
}

/// What the watcher should do when its deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The request head did not arrive in time: close the connection.
    Header,
    /// Nothing in flight for the keep-alive timeout: close it gracefully.
    Idle,
    /// The client took nothing of the response for the send timeout (it
    /// stopped reading): close the connection.
    Send,
}

impl Activity {
    /// A new connection: its first request head is due within the header timeout.
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            start: Instant::now(),
            start_ms: crate::clock::coarse_ms(),
            in_flight: AtomicUsize::new(0),
            head_started: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            multiplexed: AtomicBool::new(false),
            write_blocked: AtomicU64::new(NONE),
            unflushed: AtomicBool::new(false),
            body_unread: AtomicBool::new(false),
            read_waits: AtomicBool::new(false),
            last_request: AtomicBool::new(false),
            requested: AtomicBool::new(false),
        })
    }

    /// Milliseconds since the connection started, on the coarse clock (read
    /// a few times per request; the deadlines need no finer than a tick).
    fn now_ms(&self) -> u64 {
        crate::clock::coarse_ms()
            .saturating_sub(self.start_ms)
            .min(NONE - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// The connection speaks HTTP/2: bytes between requests (pings, window
    /// updates) do not start a request head.
    pub fn set_multiplexed(&self) {
        self.multiplexed.store(true, Ordering::Release);
    }

    /// The HTTP state's read found nothing (`true`) or got bytes (`false`).
    pub(super) fn read_waits(&self, waits: bool) {
        self.read_waits.store(waits, Ordering::Relaxed);
    }

    pub(super) fn bytes_read(&self) {
        if self.multiplexed.load(Ordering::Relaxed) {
            return;
        }
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == NONE
        {
            self.head_started.store(self.now_ms(), Ordering::Release);
        }
    }

    /// A request head was parsed; the guard ends the request when dropped
    /// (with the response body, or when the client goes away). `has_body`:
    /// the request has a body, which [`super::ReadToEnd`] reports read. `last`: the
    /// client said it sends no more requests on this connection (see
    /// [`super::TrackedIo`] for what its end of stream then means).
    pub fn request_started(self: &Arc<Self>, has_body: bool, last: bool) -> RequestGuard {
        self.body_unread.store(has_body, Ordering::Relaxed);
        self.last_request.store(last, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NONE, Ordering::Release);
        if !self.requested.load(Ordering::Relaxed) {
            self.requested.store(true, Ordering::Release);
        }
        RequestGuard(self.clone())
    }

    /// No request has started on this connection yet: its client connected
    /// to send one (a shutdown waits for it a little, `router::server`).
    pub fn fresh(&self) -> bool {
        !self.requested.load(Ordering::Acquire)
    }

    /// A write to the client could not proceed (its receive window is full).
    pub(super) fn write_pending(&self) {
        if self.write_blocked.load(Ordering::Relaxed) == NONE {
            self.write_blocked.store(self.now_ms(), Ordering::Release);
        }
    }

    /// A write to the client made progress.
    pub(super) fn write_progress(&self) {
        self.unflushed.store(true, Ordering::Relaxed);
        if self.write_blocked.load(Ordering::Relaxed) != NONE {
            self.write_blocked.store(NONE, Ordering::Release);
        }
    }

    /// The writer flushed: everything it had buffered is in the socket.
    pub(super) fn flushed(&self) {
        self.unflushed.store(false, Ordering::Relaxed);
    }

    /// An HTTP/1 connection between requests: nothing in flight, the last
    /// request's body read to its end, no byte of the next request read,
    /// the HTTP state waiting on the socket (so nothing pipelined is left in
    /// its buffer), every byte of the last response handed to the socket.
    /// Its HTTP state can be dropped and rebuilt when bytes arrive.
    pub fn parkable(&self) -> bool {
        self.read_waits.load(Ordering::Relaxed)
            && !self.multiplexed.load(Ordering::Relaxed)
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == NONE
            && !self.unflushed.load(Ordering::Relaxed)
            && !self.body_unread.load(Ordering::Relaxed)
    }

    /// Whether the client's end of stream is to be kept from the HTTP state
    /// for now: the connection's last request is being answered.
    pub(super) fn half_closed_ok(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0 && self.last_request.load(Ordering::Relaxed)
    }

    /// The last request's body was read to its end ([`super::ReadToEnd`]).
    pub(super) fn body_read(&self) {
        self.body_unread.store(false, Ordering::Relaxed);
    }

    /// When the last request finished (the connection's start if none did).
    pub fn idle_since(&self) -> Instant {
        self.at(self.idle_since.load(Ordering::Acquire))
    }

    /// The next deadline and what it means. While a request is in flight the
    /// only deadline is the send timeout, and only while the client takes
    /// nothing (a long poll waiting for its answer has none).
    pub fn deadline(
        &self,
        header: Duration,
        keepalive: Duration,
        send: Duration,
    ) -> Option<(Instant, Expiry)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return match self.write_blocked.load(Ordering::Acquire) {
                NONE => None,
                t => Some((self.at(t) + send, Expiry::Send)),
            };
        }
        match self.head_started.load(Ordering::Acquire) {
            NONE => Some((
                self.at(self.idle_since.load(Ordering::Acquire)) + keepalive,
                Expiry::Idle,
            )),
            t => Some((self.at(t) + header, Expiry::Header)),
        }
    }
}

/// A request in flight on a connection.
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now_ms(), Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether an HTTP/1 request says it is its connection's last: HTTP/1.0
/// without `keep-alive`, or `close` among its `Connection` options (as hyper
/// decides whether to keep the connection). One header lookup; HTTP/2 none.
pub fn last_request<B>(req: &Request<B>) -> bool {
    let version = req.version();
    if version >= http::Version::HTTP_2 {
        return false;
    }
    let mut keep_alive = version == http::Version::HTTP_11;
    for value in req.headers().get_all(http::header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for option in value.split(',').map(str::trim) {
            if option.eq_ignore_ascii_case("close") {
                return true;
            }
            keep_alive |= option.eq_ignore_ascii_case("keep-alive");
        }
    }
    !keep_alive
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parkable_only_between_requests_with_everything_flushed() {
        let a = Activity::new();
        assert!(!a.parkable(), "the first head is due");
        let g = a.request_started(false, false);
        assert!(!a.parkable(), "in flight");
        a.write_progress();
        drop(g);
        assert!(!a.parkable(), "response not flushed yet");
        a.flushed();
        assert!(
            !a.parkable(),
            "pipelined requests may still be in the HTTP state's buffer"
        );
        a.read_waits(true);
        assert!(a.parkable());
        a.bytes_read();
        assert!(!a.parkable(), "the next head started");
        drop(a.request_started(true, false));
        assert!(!a.parkable(), "its body was not read");
        a.body_unread.store(false, Ordering::Relaxed);
        assert!(a.parkable());
        a.set_multiplexed();
        assert!(!a.parkable(), "HTTP/2 is never parked");
    }

    #[test]
    fn deadlines_follow_the_connection_state() {
        let a = Activity::new();
        let (h, k) = (Duration::from_secs(10), Duration::from_secs(75));
        assert_eq!(
            a.deadline(h, k, Duration::from_secs(60)).unwrap().1,
            Expiry::Header,
            "first head is due"
        );
        let g = a.request_started(false, false);
        assert!(
            a.deadline(h, k, Duration::from_secs(60)).is_none(),
            "nothing while in flight"
        );
        drop(g);
        assert_eq!(
            a.deadline(h, k, Duration::from_secs(60)).unwrap().1,
            Expiry::Idle
        );
        a.bytes_read();
        assert_eq!(
            a.deadline(h, k, Duration::from_secs(60)).unwrap().1,
            Expiry::Header
        );
        drop(a.request_started(false, false));
        a.set_multiplexed();
        a.bytes_read();
        assert_eq!(
            a.deadline(h, k, Duration::from_secs(60)).unwrap().1,
            Expiry::Idle,
            "HTTP/2 frames between requests"
        );
    }

    #[test]
    fn last_request_as_hyper_keeps_connections() {
        use http::Version;
        let cases: &[(Version, &[&str], bool)] = &[
            (Version::HTTP_11, &[], false),
            (Version::HTTP_11, &["keep-alive"], false),
            (Version::HTTP_11, &["close"], true),
            (Version::HTTP_11, &["Upgrade, CLOSE"], true),
            (Version::HTTP_11, &["x-a", "close"], true),
            (Version::HTTP_11, &["keep-alive", "close"], true),
            (Version::HTTP_10, &[], true),
            (Version::HTTP_10, &["Keep-Alive"], false),
            (Version::HTTP_10, &["keep-alive, close"], true),
            (Version::HTTP_2, &["close"], false),
        ];
        for (version, connection, last) in cases {
            let mut req = Request::new(());
            *req.version_mut() = *version;
            for c in *connection {
                req.headers_mut()
                    .append(http::header::CONNECTION, c.parse().unwrap());
            }
            assert_eq!(last_request(&req), *last, "{version:?} {connection:?}");
        }
    }
}
