//! The `[app]` upstream: HTTP/1.1 reverse proxy to a site's app instances
//! (any program that serves HTTP: Node, Puma, gunicorn, Go, ...), through a
//! small HTTP/1.1 client of our own (`h1`, driven in the request's task),
//! on the instance's Unix socket or, for `listen = "port"`, its loopback
//! port.
//!
//! Per request: the body spooled, a place in admission (processes ×
//! `max_concurrency`; above, wait up to `queue_timeout`, then 503) and a
//! lease on the least-busy ready instance (`upstream::gate`) → a pooled
//! keep-alive connection to it or a new one (`pool`) → the request head
//! rewritten (`head`: hop-by-hop out, forwarded headers in) and written
//! into the connection's buffer with a small body (one write) → the
//! response head within `request_timeout` → a body that came whole with the
//! head handed over at once (the connection pooled again right away), any
//! other streamed as the client takes it (`body`), the connection, place
//! and lease held until it ends. A
//! WebSocket upgrade goes on a connection of its own and becomes a
//! `upstream::Tunnel` (`upgrade`).
//!
//! Invariants:
//! - Every failure is an [`UpstreamError`] by who failed: no connection,
//!   a broken connection or a malformed response (`h1::Failure` says why)
//!   is a 502 for that request only; no head within `request_timeout` is a 504; no place
//!   within `queue_timeout` a 503.
//! - A request that fails on a reused connection before the instance sent
//!   any byte of its response (the app closed an idle keep-alive
//!   connection as the request went out) is sent once more, on a new
//!   connection; its spooled body is replayed. This is what lets a rolling
//!   restart lose no request. A request whose method is not idempotent
//!   (POST, PATCH, ...) goes again only if it never got out whole (a write
//!   failed: the app had closed its end before it could read all of it); once
//!   delivered, the app may have acted on it before it died (a worker
//!   killed by its own timeout after the commit), so a second copy could
//!   run it twice: a 502 instead, as nginx does.
//! - A 504 recycles the instance when it answered no request since this
//!   one started (stuck, not just one slow request).
//! - The lease and admission place live exactly as long as the request's
//!   response body (or its tunnel).

mod body;
mod h1;
mod head;
mod pool;
mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;

use self::body::{AppBody, Done};
use self::h1::{Decoder, Failure, Framing, ResponseHead};
use self::head::Head;
use self::pool::{Conn, Counters, Pool};
use super::gate::{Admitted, Gate};
use super::spool::Spooled;
use super::{RequestBody, RequestContext, ResponseBody, Upgrade, Upstream, UpstreamError};
use crate::config::AppConfig;
use crate::metrics::SiteStats;
use crate::supervisor::{RuntimeHandle, RuntimeLease};

/// Request bodies up to this size go out in one write with the head.
const INLINE_BODY: usize = 16 << 10;

pub struct AppUpstream {
    /// Spool, admission (processes × max_concurrency), lease.
    gate: Gate,
    request_timeout: Duration,
    pool: Arc<Pool>,
}

impl AppUpstream {
    pub fn new(runtime: Arc<dyn RuntimeHandle>, app: &AppConfig, stats: Arc<SiteStats>) -> Self {
        let per_instance = app.max_concurrency.max(1);
        let capacity = app.processes.max(1).saturating_mul(per_instance);
        AppUpstream {
            gate: Gate::new(
                runtime,
                usize::try_from(capacity).unwrap_or(usize::MAX),
                app.queue_timeout,
                stats,
            ),
            request_timeout: app.request_timeout,
            pool: Pool::new(usize::try_from(per_instance).unwrap_or(usize::MAX)),
        }
    }

    /// Requests at the instances and the most there may be.
    pub fn places(&self) -> (u64, u64) {
        self.gate.places()
    }

    /// Waits until no request is between admission and its lease (see
    /// [`Gate::settle`]).
    pub async fn settle(&self) {
        self.gate.settle().await
    }

    async fn serve(
        &self,
        req: Request<RequestBody>,
        ctx: &RequestContext,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let (parts, body) = req.into_parts();
        let upgrade = parts.extensions.get::<Upgrade>().is_some();
        let Admitted {
            body,
            permit,
            lease,
        } = self.gate.admit(body, ctx).await?;
        let head = Head::new(&parts, ctx, body.len(), upgrade);
        let counters = self.pool.counters(lease.endpoint().id);
        let answered = counters.answered();
        let exchange = self.exchange(&lease, &head, &body, upgrade);
        let (response, conn) = match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(sent) => sent?,
            Err(_) => return Err(self.timed_out(&lease, &counters, answered)),
        };
        conn.counters().answer();
        drop(body);
        if upgrade {
            return Ok(self.upgraded(response, conn, lease, permit));
        }
        if response.parts.status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(UpstreamError::BadGateway(format!(
                "app instance pid {} answered 101 to a request that asked for no upgrade",
                lease.endpoint().pid
            )));
        }
        let keep = !response.close && response.framing != Framing::Eof;
        let done = Done {
            conn,
            keep,
            lease,
            permit,
            pool: self.pool.clone(),
        };
        Ok(self.relay(response, done))
    }

    /// Sends the request on a pooled connection (a new one for an upgrade)
    /// and waits for the response head; once more on a new connection when
    /// a reused one failed before any byte of the response.
    async fn exchange(
        &self,
        lease: &RuntimeLease,
        head: &Head<'_>,
        body: &Spooled,
        upgrade: bool,
    ) -> Result<(ResponseHead, Conn), UpstreamError> {
        // A new connection's future (connect, the peer's credentials) is
        // boxed where it is rare, here and in `checkout`: inline, it would
        // size every request's future for it (`router::service::Routed`).
        let mut conn = if upgrade {
            Box::pin(self.pool.connect(lease)).await?
        } else {
            self.pool.checkout(lease).await?
        };
        head.write(&mut conn.link.write);
        let inline = match body {
            Spooled::Memory(b) if b.len() <= INLINE_BODY => {
                conn.link.write.extend_from_slice(b);
                true
            }
            _ => false,
        };
        let is_head = head.is_head();
        loop {
            let (f, delivered) = match send(&mut conn, body, inline, is_head).await {
                Ok(response) => return Ok((response, conn)),
                Err(Sent::Local(e)) => return Err(e),
                Err(Sent::Unsent(f)) => (f, false),
                Err(Sent::Delivered(f)) => (f, true),
            };
            if conn.reused && f.silent && (!delivered || head.is_idempotent()) {
                tracing::debug!(error = %f.why, pid = lease.endpoint().pid,
                    "a kept-alive connection to an app instance failed before its answer; sending again");
                let written = std::mem::take(&mut conn.link.write);
                conn = Box::pin(self.pool.connect(lease)).await?;
                conn.link.write = written;
                continue;
            }
            let why = format!("app instance pid {} {}", lease.endpoint().pid, f.why);
            tracing::warn!("{why}");
            return Err(UpstreamError::BadGateway(why));
        }
    }

    /// The response to the client: its head cleaned, its body handed over
    /// whole when it came with the head, else streamed ([`AppBody`]); the
    /// connection is pooled again after a body read to its end if neither
    /// side closes it.
    fn relay(&self, response: ResponseHead, mut done: Done) -> Response<ResponseBody> {
        let ResponseHead {
            mut parts, framing, ..
        } = response;
        super::hop::strip_hop_by_hop(&mut parts.headers);
        let whole = match framing {
            Framing::Length(n) => done.conn.link.take_whole(n),
            _ => None,
        };
        let body = match (framing, whole) {
            (Framing::Empty, _) => super::empty_body(),
            (_, Some(bytes)) => super::full_body(bytes),
            _ => {
                let body = AppBody::new(Decoder::new(framing), done, self.request_timeout);
                return Response::from_parts(parts, body.boxed_unsync());
            }
        };
        done.finish(true);
        Response::from_parts(parts, body)
    }

    /// No response head within `request_timeout`: a 504, and the instance
    /// is recycled if it answered nothing since the request started.
    fn timed_out(&self, lease: &RuntimeLease, counters: &Counters, before: u64) -> UpstreamError {
        if counters.answered() == before {
            lease.recycle(format!(
                "answered no request within request_timeout ({:?})",
                self.request_timeout
            ));
        }
        UpstreamError::Timeout(self.request_timeout)
    }
}

/// Why an attempt failed: the app's side (maybe sent again, see
/// `exchange`), or ours.
enum Sent {
    /// A write failed: the request did not get out whole.
    Unsent(Failure),
    /// The request went out whole; the connection broke, or the answer was
    /// malformed.
    Delivered(Failure),
    Local(UpstreamError),
}

/// One attempt on `conn`: the head (with the body when `inline`), the rest
/// of the body, the response head.
async fn send(
    conn: &mut Conn,
    body: &Spooled,
    inline: bool,
    is_head: bool,
) -> Result<ResponseHead, Sent> {
    let answered = conn.link.send_head().await.map_err(sent_broken)?;
    if !inline && !answered {
        match body {
            Spooled::Memory(b) => {
                conn.link.send(b).await.map_err(sent_broken)?;
            }
            // Boxed: a body spooled to a file is rare, its replay's state large.
            Spooled::File { .. } => Box::pin(send_file(conn, body)).await?,
        }
    }
    conn.link.read_head(is_head).await.map_err(Sent::Delivered)
}

/// The rest of a body spooled to a file, after the head.
async fn send_file(conn: &mut Conn, body: &Spooled) -> Result<(), Sent> {
    let mut replay = body.replay().await.map_err(Sent::Local)?;
    while let Some(frame) = replay.frame().await {
        let frame =
            frame.map_err(|e| Sent::Local(UpstreamError::LocalIo(std::io::Error::other(e))))?;
        let data = frame.data_ref().map_or(&[][..], |d| &d[..]);
        if conn.link.send(data).await.map_err(sent_broken)? {
            break;
        }
    }
    Ok(())
}

/// A write that failed: the connection broke before the app answered
/// (maybe sent again on a new connection).
fn sent_broken(e: std::io::Error) -> Sent {
    Sent::Unsent(Failure::new(
        true,
        format!("broke the connection as the request went out: {e}"),
    ))
}

impl Upstream for AppUpstream {
    fn kind(&self) -> &'static str {
        "app"
    }

    fn request_timeout(&self) -> Option<Duration> {
        Some(self.request_timeout)
    }

    fn tunnels(&self) -> bool {
        true
    }

    fn handle<'a>(
        &'a self,
        req: Request<RequestBody>,
        ctx: &'a RequestContext,
    ) -> BoxFuture<'a, Result<Response<ResponseBody>, UpstreamError>> {
        Box::pin(self.serve(req, ctx))
    }
}

#[cfg(test)]
mod tests;
