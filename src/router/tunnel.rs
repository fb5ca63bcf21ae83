//! A WebSocket's tunnel: after the site's worker answered `101`, the
//! router relays bytes between the client's connection and the worker's
//! without parsing them (framing, pings and close codes are the worker's:
//! see `docs/architecture.md`, "WebSockets").
//!
//! Each way is copied within the tunnel task's poll ([`Way`]) through a
//! buffer on the polling thread's stack: an idle WebSocket holds no buffer
//! (10,000 of them cost the router only their task and sockets), a message
//! costs one read and one write and no allocation. Bytes the other side
//! does not take at once are kept, and that way is not read again until
//! they are written: a side that does not read stops the copy towards it,
//! so neither a slow client nor a slow worker makes the router buffer more
//! than one read (backpressure both ways, through the sockets' own
//! buffers). Not `copy_bidirectional`: it keeps a tunnel open until both
//! sides have ended, so a worker's close (after the close handshake, or its
//! death) would wait for a client that never closes; and its buffers live
//! as long as the tunnel. The tunnel holds the
//! request's lease and admission place ([`Tunnel::hold`]) until it ends,
//! counts as an open WebSocket of its site while it lives, and writes one
//! access log line when it ends (status 101, its duration, the bytes sent to
//! the client and, last on the line, the bytes received from it).
//!
//! Invariants: no connection clock (`header_timeout`, `keepalive_timeout`)
//! applies to a tunnel; it ends when the worker closes (the client's end of
//! stream is passed on to the worker, which then closes), when the client
//! takes nothing of what the worker sends for `send_timeout` (a client that
//! never reads cannot hold the worker's place forever), or at the end of the
//! shutdown grace. A reload never ends it: an old generation's worker closes
//! its WebSockets itself (1001) when it is stopped.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::access_log::{LogFacts, SiteLogs};
use super::table::SiteStats;
use crate::upstream::Tunnel;

/// What one read takes at most: a buffer on the stack of the thread that
/// polls the tunnel, for the length of one poll (never part of the task).
const BUFFER: usize = 16 << 10;

/// A tunnel the worker accepted, with what its log line needs; handed from
/// the request (`router::service`) to its connection (`router::server`),
/// which runs it in a task of its own once hyper has sent the `101`.
pub(crate) struct Accepted {
    pub(crate) tunnel: Tunnel,
    /// As sent: 101 (HTTP/1.1), 200 (HTTP/2, RFC 8441).
    pub(crate) status: u16,
    pub(crate) log: LogFacts,
    pub(crate) logs: Arc<SiteLogs>,
    pub(crate) stats: Arc<SiteStats>,
    /// When the upgrade request arrived: the line's duration is the WebSocket's life.
    pub(crate) start: Instant,
}

/// Carries an [`Accepted`] in the `101` response's extensions (which must
/// be `Clone`), and from the request's service to its connection's task:
/// with hyper's `OnUpgrade` for a connection hyper upgrades itself (the
/// auto builder's), without for one that upgrades by hand (`parking`).
///
/// What it holds is boxed: every HTTP/1 connection keeps an empty slot for
/// its whole life (and a WebSocket's connection for the tunnel's), so the
/// slot's own allocation stays a pointer's size, not an [`Accepted`]'s
/// (~360 bytes).
#[derive(Clone)]
pub(crate) struct AcceptedSlot(Arc<Mutex<Option<Box<Handed>>>>);

/// What the slot holds.
pub(crate) type Handed = (Accepted, Option<hyper::upgrade::OnUpgrade>);

impl AcceptedSlot {
    pub(crate) fn new(accepted: Accepted) -> Self {
        AcceptedSlot(Arc::new(Mutex::new(Some(Box::new((accepted, None))))))
    }

    /// An empty slot: where a connection finds its tunnel.
    pub(crate) fn empty() -> Self {
        AcceptedSlot(Arc::new(Mutex::new(None)))
    }

    pub(crate) fn put(&self, handed: Handed) {
        *self.lock() = Some(Box::new(handed));
    }

    pub(crate) fn take(&self) -> Option<Handed> {
        self.lock().take().map(|handed| *handed)
    }

    pub(crate) fn is_full(&self) -> bool {
        self.lock().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Box<Handed>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Relays bytes between `client` (after the `101`; bytes it sent past its
/// request head first) and the worker until either side closes, the client
/// stalls for `send_timeout`, or `force` (end of the shutdown grace) fires.
///
/// Not an `async fn`: its future would keep the arguments and the parts
/// taken out of them side by side (~300 bytes more for every open
/// WebSocket); the parts are taken here and the future holds only them.
pub(crate) fn run<C, F>(
    client: C,
    accepted: Accepted,
    send_timeout: Duration,
    force: F,
) -> impl Future<Output = ()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = ()>,
{
    let Accepted {
        tunnel,
        status,
        log,
        logs,
        stats,
        start,
    } = accepted;
    let Tunnel {
        mut stream,
        read_ahead,
        hold,
    } = tunnel;
    let mut client = Metered::new(client, send_timeout);
    // Client → worker: at the client's end of stream, the worker's socket
    // is shut for writing and the tunnel waits for the worker to close (it
    // answers a vanished client's end with its own).
    let mut upstream = Way::default();
    // Worker → client: the worker's end of stream (its close after the
    // close handshake, or its death) ends the tunnel.
    let mut downstream = Way::holding(&read_ahead);
    async move {
        let _open = stats.websocket_opened(); // metrics: closed when dropped
        let mut force = std::pin::pin!(force);
        let ended = std::future::poll_fn(|cx| {
            if force.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(io::Error::other("the shutdown grace ended")));
            }
            if let Poll::Ready(Err(e)) = upstream.poll(&mut client, &mut stream, cx) {
                return Poll::Ready(Some(e));
            }
            downstream
                .poll(&mut stream, &mut client, cx)
                .map(|r| r.err())
        })
        .await;
        drop(stream);
        drop(hold); // the worker's place: free for the next request
        if let Some(e) = ended {
            tracing::debug!(error = %e, "WebSocket tunnel ended");
        }
        log.write_tunnel(&logs, status, client.sent, client.received, start);
    }
}

/// One direction of the tunnel: reads `from` and writes to `to` within one
/// poll, through a buffer on the stack ([`BUFFER`]), so an idle tunnel
/// holds no buffer at all and a message costs no allocation. Only bytes
/// that `to` did not take at once are kept, on the heap, and `from` is not
/// read again until they are written: a side that does not read stops the
/// copy towards it, and the router buffers at most one read's worth
/// (backpressure both ways, through the sockets' own buffers). Every write
/// is flushed (TLS keeps written bytes until then; a no-op on a plain
/// socket).
///
/// By hand, not `tokio::io::copy_bidirectional`: that keeps a tunnel open
/// until both sides have ended, so a worker's close (after the close
/// handshake, or its death) would wait for a client that never closes, and
/// its two 8 KiB buffers live as long as the tunnel (10,000 idle WebSockets
/// would hold 160 MiB). Both directions are polled by the tunnel's one task
/// on the two streams it owns (no `tokio::io::split` and its lock).
#[derive(Default)]
struct Way {
    /// Read and not yet written (empty, and unallocated, while idle).
    held: Vec<u8>,
    /// How much of `held` is written.
    written: usize,
    /// Written and not yet flushed.
    unflushed: bool,
    /// `from` ended: `to` is shut down, then this way is done.
    ended: bool,
    /// The end was passed on: nothing more to do.
    done: bool,
}

impl Way {
    /// A way that first writes `bytes` (what the worker sent with its `101`).
    fn holding(bytes: &[u8]) -> Self {
        Way {
            held: bytes.to_vec(),
            ..Way::default()
        }
    }

    /// Copies until `from` has nothing more now (`Pending`), or its end has
    /// been passed on to `to` (`Ready(Ok)`), or either side fails.
    fn poll<R, W>(&mut self, from: &mut R, to: &mut W, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Pending; // the other way ends the tunnel
        }
        loop {
            ready!(self.poll_held(to, cx))?;
            if self.ended {
                ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut stack = [MaybeUninit::<u8>::uninit(); BUFFER];
            let mut buf = ReadBuf::uninit(&mut stack);
            ready!(Pin::new(&mut *from).poll_read(cx, &mut buf))?;
            let read = buf.filled();
            if read.is_empty() {
                self.ended = true;
                continue;
            }
            let mut at = 0;
            while at < read.len() {
                match Pin::new(&mut *to).poll_write(cx, &read[at..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        at += n;
                        self.unflushed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // `to` is full: keep the rest, read no more until it is written.
                        self.held.extend_from_slice(&read[at..]);
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    /// Writes what is held (then frees it) and flushes what was written.
    fn poll_held<W>(&mut self, to: &mut W, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        while self.written < self.held.len() {
            let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.held[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
            self.unflushed = true;
        }
        if !self.held.is_empty() {
            self.held = Vec::new();
            self.written = 0;
        }
        if self.unflushed {
            ready!(Pin::new(&mut *to).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

/// The client's end: counts the bytes both ways, and fails a write (flush,
/// shutdown) that has made no progress for `send_timeout`.
struct Metered<C> {
    inner: C,
    sent: u64,
    received: u64,
    send_timeout: Duration,
    /// Armed while a write waits for the client.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<C> Metered<C> {
    fn new(inner: C, send_timeout: Duration) -> Self {
        Metered {
            inner,
            sent: 0,
            received: 0,
            send_timeout,
            stalled: None,
        }
    }

    /// A write that is still pending: an error once it has been for `send_timeout`.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.send_timeout;
        let clock = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match clock.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing within send_timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Metered<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.received += (buf.filled().len() - before) as u64;
        polled
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Metered<C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.pending(cx),
            Poll::Ready(Ok(n)) => {
                self.sent += n as u64;
                self.stalled = None;
                Poll::Ready(Ok(n))
            }
            ready => ready,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Pending => self.pending(cx),
            ready => ready,
        }
    }
}

#[cfg(test)]
mod tests;
