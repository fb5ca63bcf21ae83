//! The two clocks of a connection ([`Activity`]): a request head must
//! arrive within `header_timeout` of its first byte (or of accept), and a
//! connection with no request in flight is closed after `keepalive_timeout`.
//! (How many connections a client may hold: `router::client`.)
//!
//! Cheap: a few atomics per connection, one timer in the
//! connection's own task, no thread. [`Activity::parkable`] tells the
//! connection when an HTTP/1 connection is idle with everything sent, so it
//! can let go of hyper's state and buffers until the next request
//! (`router::server`).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
    /// ([`TrackedIo`]).
    last_request: AtomicBool,
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
    fn read_waits(&self, waits: bool) {
        self.read_waits.store(waits, Ordering::Relaxed);
    }

    fn bytes_read(&self) {
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
    /// the request has a body, which [`ReadToEnd`] reports read. `last`: the
    /// client said it sends no more requests on this connection (see
    /// [`TrackedIo`] for what its end of stream then means).
    pub fn request_started(self: &Arc<Self>, has_body: bool, last: bool) -> RequestGuard {
        self.body_unread.store(has_body, Ordering::Relaxed);
        self.last_request.store(last, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NONE, Ordering::Release);
        RequestGuard(self.clone())
    }

    /// A write to the client could not proceed (its receive window is full).
    fn write_pending(&self) {
        if self.write_blocked.load(Ordering::Relaxed) == NONE {
            self.write_blocked.store(self.now_ms(), Ordering::Release);
        }
    }

    /// A write to the client made progress.
    fn write_progress(&self) {
        self.unflushed.store(true, Ordering::Relaxed);
        if self.write_blocked.load(Ordering::Relaxed) != NONE {
            self.write_blocked.store(NONE, Ordering::Release);
        }
    }

    /// The writer flushed: everything it had buffered is in the socket.
    fn flushed(&self) {
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
    fn half_closed_ok(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0 && self.last_request.load(Ordering::Relaxed)
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

/// A request body that tells its connection's [`Activity`] when it has
/// been read to its end.
pub struct ReadToEnd<B> {
    inner: B,
    activity: Arc<Activity>,
}

impl<B> ReadToEnd<B> {
    pub fn new(inner: B, activity: Arc<Activity>) -> Self {
        ReadToEnd { inner, activity }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for ReadToEnd<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let last = match &polled {
            Poll::Ready(None) => true,
            // Trailers are always the last frame.
            Poll::Ready(Some(Ok(frame))) => frame.is_trailers() || self.inner.is_end_stream(),
            _ => false,
        };
        if last {
            self.activity.body_unread.store(false, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
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

/// A connection's I/O that tells its [`Activity`] when bytes arrive, and
/// replays bytes read ahead by an HTTP state that was dropped
/// ([`TrackedIo::unread`]).
///
/// It also decides what the client's end of stream (a FIN; over TLS, its
/// `close_notify`) means while a request is answered. On the wire a client
/// that shut down only its sending side (`nc -N`, health checkers, scripts)
/// looks exactly like one that closed the connection and left, until a
/// write to it is refused. hyper takes an end of stream in the middle of a
/// request for a client gone and drops the request, which cancels its work
/// (a request still queued for a Python worker never runs, a streamed
/// response stops). That stays so for a request that asked to keep the
/// connection open: browsers and HTTP libraries never half-close, they
/// close when they give up. A request that said it is the connection's
/// last (HTTP/1.0 without keep-alive, `Connection: close`: what half-closing
/// clients send) is answered instead: its end of stream is held back from
/// hyper until the request is done, and a client that in fact left is
/// noticed at the first write its kernel refuses (a reset), which ends the
/// response and drops the upstream's work. hyper's own `half_close` option
/// is all or nothing per connection, hence this.
pub struct TrackedIo<I> {
    inner: I,
    activity: Arc<Activity>,
    /// Read before, not yet consumed: served before the socket.
    unread: Bytes,
    /// h2c: look at the first bytes for the HTTP/2 preface.
    sniff: bool,
    /// The client's end of stream was read (the socket is not read again).
    eof: bool,
}

/// How a cleartext HTTP/2 (prior knowledge) connection starts.
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

impl<I> TrackedIo<I> {
    pub fn new(inner: I, activity: Arc<Activity>) -> Self {
        TrackedIo {
            inner,
            activity,
            unread: Bytes::new(),
            sniff: false,
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &I {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut I {
        &mut self.inner
    }

    /// Puts back bytes that were read but not consumed (pipelined requests
    /// hyper had read ahead): the next reads return them first, then what
    /// was still unread from an earlier put-back (hyper's fresh state reads
    /// 8 KiB at first, a put-back may hold up to `max_header_size`), then
    /// the socket. Always a copy: even an empty slice of hyper's read buffer
    /// would keep all of its 8 KiB alive.
    pub fn unread(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut all = bytes::BytesMut::with_capacity(bytes.len() + self.unread.len());
        all.extend_from_slice(bytes);
        all.extend_from_slice(&self.unread);
        self.unread = all.freeze();
    }

    pub fn has_unread(&self) -> bool {
        !self.unread.is_empty()
    }

    /// Marks the connection multiplexed if it starts with the HTTP/2 preface
    /// (for plain listeners with `h2c = true`).
    pub fn sniff_h2c(mut self) -> Self {
        self.sniff = true;
        self
    }
}

impl<I> TrackedIo<I> {
    /// A read after the client's end of stream: the end, or, while the
    /// connection's last request is answered, nothing yet (no wake-up will
    /// come from the socket; hyper reads again once the response moved).
    fn end_of_stream(&self) -> Poll<io::Result<()>> {
        if self.activity.half_closed_ok() {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn note_write(&self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Pending => self.activity.write_pending(),
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.write_progress(),
            Poll::Ready(_) => {}
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for TrackedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.advance(n);
            if n > 0 {
                self.activity.read_waits(false);
                self.activity.bytes_read();
            }
            return Poll::Ready(Ok(()));
        }
        if self.eof {
            return self.end_of_stream();
        }
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(())))
            && buf.filled().len() == before
            && buf.remaining() > 0
        {
            self.eof = true;
            return self.end_of_stream();
        }
        match &polled {
            Poll::Pending => self.activity.read_waits(true),
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.activity.read_waits(false),
            Poll::Ready(_) => {}
        }
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            if self.sniff {
                self.sniff = false;
                if buf.filled()[before..].starts_with(H2_PREFACE_START) {
                    self.activity.set_multiplexed();
                }
            }
            self.activity.bytes_read();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TrackedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(&polled);
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(polled, Poll::Ready(Ok(()))) {
            self.activity.flushed();
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

/// Logs an event at most once per second, counting what it left out, so a
/// flood of refused connections costs no flood of log lines.
pub struct Throttle {
    last: AtomicU64,
    suppressed: AtomicU64,
    start: Instant,
}

impl Throttle {
    pub fn new() -> Self {
        Throttle {
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    /// `Some(n)`: log now, `n` events were left out since the last line.
    pub fn allow(&self) -> Option<u64> {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX) + 1000;
        let last = self.last.load(Ordering::Acquire);
        if now.saturating_sub(last) >= 1000
            && self
                .last
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::AcqRel))
        } else {
            self.suppressed.fetch_add(1, Ordering::AcqRel);
            None
        }
    }
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

    /// What a read of a client that has sent its end of stream gives:
    /// `Some(true)` the end, `Some(false)` bytes, `None` nothing yet.
    fn read(io: &mut TrackedIo<&'static [u8]>) -> Option<bool> {
        use tokio::io::AsyncRead;
        let mut space = [0u8; 16];
        let mut buf = ReadBuf::new(&mut space);
        let waker = std::task::Waker::noop();
        match Pin::new(io).poll_read(&mut Context::from_waker(waker), &mut buf) {
            Poll::Ready(Ok(())) => Some(buf.filled().is_empty()),
            Poll::Ready(Err(e)) => panic!("{e}"),
            Poll::Pending => None,
        }
    }

    #[test]
    fn the_end_of_stream_waits_only_while_the_last_request_is_answered() {
        let a = Activity::new();
        let mut io = TrackedIo::new(&b"GET"[..], a.clone());
        assert_eq!(read(&mut io), Some(false), "bytes first");
        assert_eq!(read(&mut io), Some(true), "no request: the end");
        let keep_alive = a.request_started(false, false);
        assert_eq!(
            read(&mut io),
            Some(true),
            "a keep-alive request: the client left"
        );
        drop(keep_alive);
        let last = a.request_started(true, true);
        assert_eq!(read(&mut io), None, "the last request: held back");
        assert_eq!(read(&mut io), None, "still");
        drop(last);
        assert_eq!(read(&mut io), Some(true), "answered: the end");
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
}
