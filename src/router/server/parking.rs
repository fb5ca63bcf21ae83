//! HTTP/1 connections that park between requests, plain or over TLS.
//!
//! hyper's state (its read and write buffers, the dispatcher) exists only
//! while a request is read or answered, and shortly after. Once a
//! connection has been idle for [`PARK_AFTER`] with the response sent —
//! and hyper's last read found the socket empty, so a pipelined burst is
//! never cut — the state is dropped and the task waits on the bare socket
//! ([`park`]), holding only the socket and, over TLS, rustls' session. Bytes
//! hyper read ahead are put back in front of what is still unread; records
//! rustls already holds end the wait at once. After a WebSocket's `101`
//! the socket is handed back ([`Upgraded`]) and its tunnel runs in a task of
//! its own: the connection's task, sized for serving HTTP, ends.
//!
//! A plain connection whose lane gives connections away (`crate::lanes`,
//! the balancer) claims a move at once when it is between requests in the
//! same sense (nothing in flight, all sent, nothing read ahead in hyper),
//! without waiting for [`PARK_AFTER`]: its socket, the bytes put back and
//! its service are handed back ([`Handed::Moves`]) to go on on the other
//! lane.
//!
//! Why the delay: a busy keep-alive client sends its next request within a
//! fraction of a millisecond, and parking at once rebuilt hyper's state and
//! re-registered the connection's clocks and shutdown waits for every
//! request.
//!
//! Invariants: a parked connection closes when its clock (header or
//! keep-alive timeout) runs out or the server shuts down, and closing it
//! never waits on a client past `header_timeout` or the shutdown grace.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::watch::{watch, Ended, Served};
use super::{ConnService, Proto, Shared};
use crate::lanes::Placed;
use crate::router::conn::{Activity, Expiry, PlainSocket, TrackedIo};
use crate::router::service::ConnInfo;
use crate::router::tunnel::{self, AcceptedSlot};
use crate::sendfile::FileQueue;
use crate::upstream::BoxError;

/// How long an HTTP/1 connection stays idle before it parks.
pub(super) const PARK_AFTER: Duration = Duration::from_millis(50);

type Http1<T> = http1::Connection<TokioIo<TrackedIo<T>>, ConnService>;

/// What an HTTP/1 connection that can be parked runs on: the plain socket,
/// or TLS over it.
pub(super) trait Transport:
    AsyncRead + AsyncWrite + PlainSocket + Unpin + Send + 'static
{
    /// The socket a parked connection waits on.
    fn socket(&self) -> &TcpStream;
    /// Whether something was already received and decoded above the socket
    /// (TLS records rustls holds, not read by anyone, or the client's
    /// `close_notify`): waiting for the socket would then hang a request
    /// that has arrived. An error: the session is broken, close it.
    fn buffered(&mut self) -> std::io::Result<bool>;
}

impl Transport for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }

    fn buffered(&mut self) -> std::io::Result<bool> {
        Ok(false)
    }
}

impl Transport for tokio_rustls::server::TlsStream<TrackedIo<TcpStream>> {
    fn socket(&self) -> &TcpStream {
        self.get_ref().0.get_ref()
    }

    fn buffered(&mut self) -> std::io::Result<bool> {
        let state = self
            .get_mut()
            .1
            .process_new_packets()
            .map_err(std::io::Error::other)?;
        Ok(state.plaintext_bytes_to_read() > 0 || state.peer_has_closed())
    }
}

/// An HTTP/1 connection's hyper state, while it is busy.
struct Http1Conn<'a, T: Transport> {
    conn: Box<Http1<T>>,
    activity: Arc<Activity>,
    /// A graceful close was asked for (shutdown, timeout or parking).
    closing: bool,
    /// Where a WebSocket's `101` leaves its tunnel (`ConnService::handoff`).
    handoff: AcceptedSlot,
    /// When to look whether the connection has been idle for
    /// [`PARK_AFTER`]; made the first time it is idle, then moved on only
    /// when it fires early (not once per request).
    park_clock: Option<Pin<Box<Sleep>>>,
    /// The connection's place on its lane, if it may move to another
    /// (plain HTTP/1: `crate::lanes::Placed::claim_move`).
    lane: Option<&'a Placed>,
    /// The place it claimed on the lane it moves to, once between requests.
    moving_to: Option<Placed>,
}

impl<T: Transport> Http1Conn<'_, T> {
    /// Whether the connection has been parkable for [`PARK_AFTER`] (else
    /// its clock is set to wake the task when it will have been).
    fn idle_long_enough(&mut self, cx: &mut Context<'_>) -> bool {
        let due = Instant::from_std(self.activity.idle_since()) + PARK_AFTER;
        let clock = self
            .park_clock
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        loop {
            if clock.as_mut().poll(cx).is_pending() {
                return false;
            }
            if Instant::now() >= due {
                return true;
            }
            clock.as_mut().reset(due); // fired for an earlier idle spell
        }
    }

    /// Whether the connection, between requests, claimed a move to another
    /// lane (its lane gives connections away: `crate::lanes`).
    fn claims_move(&mut self) -> bool {
        if self.moving_to.is_none() {
            if let Some(lane) = self.lane.filter(|l| l.lane_sheds()) {
                self.moving_to = lane.claim_move();
            }
        }
        self.moving_to.is_some()
    }
}

impl<T: Transport> Served for Http1Conn<'_, T> {
    fn poll_served(&mut self, cx: &mut Context<'_>) -> Poll<Result<Ended, BoxError>> {
        // As a future, hyper flushes and shuts the socket down when done;
        // after a 101 it stops without shutting it down (an upgrade by hand).
        if let Poll::Ready(r) = Pin::new(&mut *self.conn).poll(cx) {
            let ended = if self.handoff.is_full() {
                Ended::Upgraded
            } else {
                Ended::Closed
            };
            return Poll::Ready(r.map(|()| ended).map_err(Into::into));
        }
        if self.closing || !self.activity.parkable() {
            return Poll::Pending;
        }
        if !self.claims_move() && !self.idle_long_enough(cx) {
            return Poll::Pending;
        }
        // Idle between requests with the last response in the socket: hyper
        // closes an idle connection at once on a graceful shutdown, and
        // without shutting the socket down it is handed back (with any bytes
        // it read ahead) by `into_parts`.
        self.graceful_shutdown();
        match self.conn.poll_without_shutdown(cx) {
            Poll::Ready(Ok(())) if self.moving_to.is_some() => Poll::Ready(Ok(Ended::Moves)),
            Poll::Ready(Ok(())) => Poll::Ready(Ok(Ended::Parked)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            // Not idle in hyper's eyes after all: it closes once done, as
            // after a keep-alive timeout.
            Poll::Pending => Poll::Pending,
        }
    }

    fn graceful_shutdown(&mut self) {
        if !self.closing {
            self.closing = true;
            Pin::new(&mut *self.conn).graceful_shutdown();
        }
    }
}

/// How serving an HTTP/1 connection ended with its socket still open.
pub(super) enum Handed<T: Transport> {
    /// After a WebSocket's `101`: the socket is the tunnel's.
    Upgraded(Upgraded<T>),
    /// Between two requests, to go on on another lane.
    Moves(Moving<T>),
}

/// An HTTP/1 connection between requests on its way to another lane: its
/// socket (with any bytes read ahead put back), its service (the
/// connection's identity, clocks and file queue) and its place there.
pub(super) struct Moving<T: Transport> {
    pub(super) io: TrackedIo<T>,
    pub(super) service: ConnService,
    pub(super) to: Placed,
}

/// HTTP/1.x, plain or over TLS: hyper's state exists only while a request
/// is read or answered; in between, the task waits on the bare socket
/// ([`park`]). Returns the connection after a WebSocket's `101`, for its
/// tunnel, or between requests when it claimed a move to another lane
/// (only with `lane`: a plain connection's place).
pub(super) async fn http1_parking<T: Transport>(
    io: TrackedIo<T>,
    conn: ConnInfo,
    files: Option<FileQueue>,
    activity: Arc<Activity>,
    shared: Arc<Shared>,
    lane: Option<&Placed>,
) -> Option<Handed<T>> {
    let service = ConnService {
        conn,
        activity,
        shared,
        handoff: AcceptedSlot::empty(),
        manual: true,
        files,
    };
    http1_serve(io, service, lane).await
}

/// [`http1_parking`] with the connection's service already made (a
/// connection that moved here keeps its own).
pub(super) async fn http1_serve<T: Transport>(
    mut io: TrackedIo<T>,
    mut service: ConnService,
    lane: Option<&Placed>,
) -> Option<Handed<T>> {
    let (activity, shared) = (service.activity.clone(), service.shared.clone());
    let (files, handoff, conn) = (service.files.clone(), service.handoff.clone(), service.conn);
    let limits = &shared.options.front.limits;
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_size);
    if files.is_some() {
        // Body chunks kept as they are, never copied into one buffer: a
        // file's stand-in must reach the socket's writer (`sendfile`).
        builder.writev(true);
    }
    if let Some(n) = super::hyper_max_headers(limits.max_headers) {
        builder.max_headers(n);
    }
    loop {
        let ready = match io.get_mut().buffered() {
            Ok(buffered) => buffered || io.has_unread(),
            Err(e) => {
                tracing::debug!(client = %conn.client, error = %e, "TLS error while idle");
                return None;
            }
        };
        if !ready && !park(io.get_ref().socket(), &conn, &activity, &shared).await {
            close_parked(&mut io, &shared).await;
            return None;
        }
        let mut served = Http1Conn {
            conn: Box::new(builder.serve_connection(TokioIo::new(io), service)),
            activity: activity.clone(),
            closing: false,
            park_clock: None,
            handoff: handoff.clone(),
            lane,
            moving_to: None,
        };
        let ended = watch(&mut served, &conn, Proto::Http1, &activity, &shared).await?;
        if let Ended::Closed = ended {
            return None;
        }
        let parts = served.conn.into_parts();
        io = parts.io.into_inner();
        io.unread(&parts.read_buf);
        service = parts.service;
        match ended {
            Ended::Parked | Ended::Moves => {
                if let Some(files) = &files {
                    // Parked when all was written: nothing can be queued.
                    files.clear();
                }
                if let Some(to) = served.moving_to.take() {
                    return Some(Handed::Moves(Moving { io, service, to }));
                }
            }
            // hyper sent the 101 and stopped: the socket (with any bytes
            // the client sent after its request) is the tunnel's. hyper's
            // read buffer (what `read_buf` shares) is freed here, not kept
            // for the tunnel's life.
            Ended::Upgraded => {
                return handoff
                    .take()
                    .map(|(accepted, _)| Handed::Upgraded(Upgraded { io, accepted }));
            }
            Ended::Closed => return None,
        }
    }
}

/// An HTTP/1 connection after a WebSocket's `101`: its socket (with the
/// bytes the client sent after its request put back in front) and the
/// tunnel to run on it.
pub(super) struct Upgraded<T: Transport> {
    io: TrackedIo<T>,
    accepted: tunnel::Accepted,
}

impl<T: Transport> Upgraded<T> {
    /// Runs the tunnel in a task of its own on this lane (the calling
    /// thread's runtime), tracked like a connection so the shutdown waits
    /// for it and its grace ends it. The connection's task then ends: its
    /// state, sized for serving HTTP (hyper's connection, the service, the
    /// clocks' waits), is freed, and an idle WebSocket holds only the
    /// tunnel's. `place` is what the connection held for its life (its
    /// place in the limits, its lane's count, the open-connection metric):
    /// the tunnel holds it until it ends.
    pub(super) fn spawn<P: Send + 'static>(self, shared: Arc<Shared>, place: P) {
        let tracker = shared.tracker.clone();
        tracker.spawn(async move {
            let Upgraded { io, accepted } = self;
            let send_timeout = shared.options.front.limits.send_timeout;
            tunnel::run(io, accepted, send_timeout, shared.force.wait()).await;
            drop(place); // after the tunnel's log line, as the connection's end
        });
    }
}

/// Closes a parked connection politely (TLS: `close_notify`), but never
/// waits on a client that takes nothing: at most `header_timeout`, and not
/// past the end of the shutdown grace.
async fn close_parked<T: Transport>(io: &mut TrackedIo<T>, shared: &Shared) {
    tokio::select! {
        _ = tokio::time::timeout(shared.options.front.limits.header_timeout, io.shutdown()) => {}
        _ = shared.force.wait() => {}
    }
}

/// An HTTP/1 connection between requests: waits, holding only the socket,
/// until it is readable (`true`), or closes it (`false`) when its clock runs
/// out or the server shuts down.
async fn park(socket: &TcpStream, conn: &ConnInfo, activity: &Activity, shared: &Shared) -> bool {
    let limits = &shared.options.front.limits;
    let Some((deadline, expiry)) = activity.deadline(
        limits.header_timeout,
        limits.keepalive_timeout,
        limits.send_timeout,
    ) else {
        return true; // cannot happen: nothing is in flight while parked
    };
    // Stopping closes a connection between requests; one with no request
    // yet waits a little longer for its first (see `server`'s docs).
    let stopping = async {
        shared.stopping.wait().await;
        if activity.fresh() {
            let grace = super::first_request_at_stop(limits.header_timeout);
            tokio::time::sleep(grace).await;
        }
    };
    tokio::select! {
        r = socket.readable() => r.is_ok(),
        _ = stopping => false,
        _ = tokio::time::sleep_until(deadline.into()) => {
            match expiry {
                Expiry::Header => {
                    if let Some(left_out) = shared.timeout_log.allow() {
                        tracing::info!(client = %conn.client, also_closed = left_out, timeout = ?limits.header_timeout, "closing connection: no complete request head within header_timeout");
                    }
                }
                Expiry::Idle | Expiry::Send => {
                    tracing::debug!(client = %conn.client, "closing idle keep-alive connection");
                }
            }
            false
        }
    }
}
