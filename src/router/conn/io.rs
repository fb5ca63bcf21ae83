//! The I/O wrappers of one client connection, each reporting to its
//! clocks (`conn::clocks::Activity`): the socket ([`TrackedIo`], which also
//! replays bytes read ahead and holds back a half-close), the request body
//! ([`ReadToEnd`]) and the response body ([`GuardedBody`]).
//!
//! Invariant: each wrapper only forwards and reports (a store to an atomic);
//! no allocation, lock or extra task per read or write.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::clocks::{Activity, RequestGuard};
use crate::router::LoggedBody;
use crate::sendfile::FileQueue;
use crate::upstream::BoxError;

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
            self.activity.body_read();
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

/// A response body that keeps its request "in flight" (for the clocks)
/// until it is sent or dropped.
pub struct GuardedBody {
    inner: LoggedBody,
    _guard: RequestGuard,
}

impl GuardedBody {
    pub fn new(inner: LoggedBody, guard: RequestGuard) -> Self {
        GuardedBody {
            inner,
            _guard: guard,
        }
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
    /// Plain HTTP/1: file ranges its response bodies queued, sent with
    /// `sendfile` in place of their stand-ins ([`crate::sendfile`]).
    files: Option<FileQueue>,
}

/// The TCP socket beneath an I/O type, if its writes go to it unchanged
/// (not through TLS): what a file range can be `sendfile`d to.
pub trait PlainSocket {
    fn plain_socket(&self) -> Option<&TcpStream> {
        None
    }
}

impl PlainSocket for TcpStream {
    fn plain_socket(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl<I> PlainSocket for tokio_rustls::server::TlsStream<I> {}

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
            files: None,
        }
    }

    /// Sends the file ranges `files` queues in place of their stand-ins
    /// (only for a plain socket under hyper's vectored HTTP/1 writer).
    pub fn sending_files(mut self, files: FileQueue) -> Self {
        self.files = Some(files);
        self
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

    /// The same connection over what `f` makes of its socket (one moved to
    /// another lane's event loop): the bytes put back, its clocks and its
    /// file queue go with it.
    pub fn try_map<J, E>(self, f: impl FnOnce(I) -> Result<J, E>) -> Result<TrackedIo<J>, E> {
        let TrackedIo {
            inner,
            activity,
            unread,
            sniff,
            eof,
            files,
        } = self;
        Ok(TrackedIo {
            inner: f(inner)?,
            activity,
            unread,
            sniff,
            eof,
            files,
        })
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

impl<I: AsyncWrite + PlainSocket + Unpin> AsyncWrite for TrackedIo<I> {
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
        if let (Some(files), Some(socket)) = (&self.files, self.inner.plain_socket()) {
            if let Some(polled) = files.poll_write(socket, cx, bufs) {
                self.note_write(&polled);
                return polled;
            }
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
