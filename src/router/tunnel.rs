//! A WebSocket's tunnel: after the site's worker answered `101`, the
//! router relays bytes between the client's connection and the worker's
//! without parsing them (framing, pings and close codes are the worker's:
//! see `docs/architecture.md`, "WebSockets").
//!
//! Each way goes through one buffer ([`relay`]: 1 KiB while idle, 16 KiB
//! while bytes flow): a side that does not read stops the copy towards it,
//! and the other side is then not read either, so neither a slow client nor
//! a slow worker makes the router buffer more (backpressure both ways,
//! through the sockets' own buffers). Not `copy_bidirectional`: it keeps a
//! tunnel open until both sides have ended, so a worker's close (after the
//! close handshake, or its death) would wait for a client that never
//! closes; and its buffers live as long as the tunnel. The tunnel holds the
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
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

use super::access_log::{LogFacts, SiteLogs};
use super::table::SiteStats;
use crate::upstream::Tunnel;

/// Each direction's buffer while bytes flow.
const BUFFER: usize = 16 << 10;
/// Each direction's buffer while it waits (part of the tunnel's task).
const IDLE_BUFFER: usize = 1 << 10;

/// A tunnel the worker accepted, with what its log line needs; handed from
/// the request (`router::service`) to its connection (`router::server`),
/// which runs it once hyper has sent the `101`.
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
#[derive(Clone)]
pub(crate) struct AcceptedSlot(Arc<Mutex<Option<Handed>>>);

/// What the slot holds.
pub(crate) type Handed = (Accepted, Option<hyper::upgrade::OnUpgrade>);

impl AcceptedSlot {
    pub(crate) fn new(accepted: Accepted) -> Self {
        AcceptedSlot(Arc::new(Mutex::new(Some((accepted, None)))))
    }

    /// An empty slot: where a connection finds its tunnel.
    pub(crate) fn empty() -> Self {
        AcceptedSlot(Arc::new(Mutex::new(None)))
    }

    pub(crate) fn put(&self, handed: Handed) {
        *self.lock() = Some(handed);
    }

    pub(crate) fn take(&self) -> Option<Handed> {
        self.lock().take()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.lock().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Handed>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Relays bytes between `client` (after the `101`; bytes it sent past its
/// request head first) and the worker until either side closes, the client
/// stalls for `send_timeout`, or `force` (end of the shutdown grace) fires.
pub(crate) async fn run<C>(
    client: C,
    accepted: Accepted,
    send_timeout: Duration,
    force: impl Future<Output = ()>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
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
        stream,
        read_ahead,
        hold,
    } = tunnel;
    let _open = stats.websocket_opened(); // metrics: closed when dropped
    let (mut from_client, mut to_client) = tokio::io::split(Metered::new(client, send_timeout));
    let (from_worker, mut to_worker) = tokio::io::split(stream);
    let ended = {
        // Client → worker: at the client's end of stream, the worker's
        // socket is shut for writing and the tunnel waits for the worker to
        // close (it answers a vanished client's end with its own).
        let upstream = async {
            relay(&mut from_client, &mut to_worker).await?;
            to_worker.shutdown().await
        };
        // Worker → client: the worker's end of stream (its close after the
        // close handshake, or its death) ends the tunnel.
        let downstream = async {
            relay(&mut read_ahead.chain(from_worker), &mut to_client).await?;
            to_client.shutdown().await
        };
        tokio::pin!(upstream, downstream, force);
        let mut client_ended = false;
        loop {
            tokio::select! {
                r = &mut downstream => break r.err(),
                r = &mut upstream, if !client_ended => match r {
                    Ok(()) => client_ended = true,
                    Err(e) => break Some(e),
                },
                () = &mut force => break Some(io::Error::other("the shutdown grace ended")),
            }
        }
    };
    drop(to_worker);
    drop(hold); // the worker's place: free for the next request
    if let Some(e) = ended {
        tracing::debug!(error = %e, "WebSocket tunnel ended");
    }
    let client = from_client.unsplit(to_client);
    log.write_tunnel(&logs, status, client.sent, client.received, start);
}

/// Copies `from` to `to` until `from` ends. A direction waits for bytes
/// with a 1 KiB buffer; a read that fills it takes a 16 KiB one from the
/// heap for as long as bytes keep coming without a wait, then frees it:
/// an idle WebSocket holds no large buffer (10,000 of them would otherwise
/// hold 320 MiB), a busy one copies 16 KiB at a time. Every write is flushed
/// (TLS keeps written bytes until then). By hand, not `tokio::io::copy`:
/// its buffer lives as long as the copy.
async fn relay<R, W>(from: &mut R, to: &mut W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut idle = [0u8; IDLE_BUFFER];
    loop {
        let n = from.read(&mut idle).await?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&idle[..n]).await?;
        to.flush().await?;
        if n < IDLE_BUFFER {
            continue;
        }
        let mut busy = vec![0u8; BUFFER];
        loop {
            // Whatever is there now; a wait goes back to the small buffer.
            let ready = std::future::poll_fn(|cx| {
                let mut buf = ReadBuf::new(&mut busy);
                match Pin::new(&mut *from).poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Ready(None),
                    Poll::Ready(r) => Poll::Ready(Some(r.map(|()| buf.filled().len()))),
                }
            })
            .await;
            match ready {
                None => break,
                Some(Ok(0)) => return Ok(()),
                Some(Ok(n)) => {
                    to.write_all(&busy[..n]).await?;
                    to.flush().await?;
                }
                Some(Err(e)) => return Err(e),
            }
        }
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
