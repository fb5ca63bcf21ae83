//! The `[app]` upstream: HTTP/1.1 reverse proxy to a site's app instances
//! (any program that serves HTTP: Node, Puma, gunicorn, Go, ...), through
//! hyper's client connection API (`hyper::client::conn::http1`), on the
//! instance's Unix socket or, for `listen = "port"`, its loopback port.
//!
//! Per request: the body spooled, a place in admission (processes ×
//! `max_concurrency`; above, wait up to `queue_timeout`, then 503) and a
//! lease on the least-busy ready instance (`upstream::gate`) → a pooled
//! keep-alive connection to it or a new one (`pool`) → the request head
//! rewritten (`head`: hop-by-hop out, forwarded headers in) → the response
//! head within `request_timeout` → the body streamed as the client takes it
//! (`body`), the connection, place and lease held until it ends. A
//! WebSocket upgrade goes on a connection of its own and becomes a
//! `upstream::Tunnel` (`upgrade`).
//!
//! Invariants:
//! - Every failure is an [`UpstreamError`] by who failed: no connection,
//!   a broken connection or a response hyper cannot parse is a 502 for that
//!   request only; no head within `request_timeout` is a 504; no place
//!   within `queue_timeout` a 503.
//! - A request that fails on a reused connection before the instance sent
//!   any byte of its response (the app closed an idle keep-alive
//!   connection as the request went out) is sent once more, on a new
//!   connection; its spooled body is replayed. This is what lets a rolling
//!   restart lose no request.
//! - A 504 recycles the instance when it answered no request since this
//!   one started (stuck, not just one slow request).
//! - The lease and admission place live exactly as long as the request's
//!   response body (or its tunnel).

mod body;
mod head;
mod pool;
mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use self::body::{AppBody, Done};
use self::head::Head;
use self::pool::{Conn, Counters, Pool};
use super::gate::{Admitted, Gate};
use super::spool::Spooled;
use super::{RequestBody, RequestContext, ResponseBody, Upgrade, Upstream, UpstreamError};
use crate::config::AppConfig;
use crate::metrics::SiteStats;
use crate::supervisor::{RuntimeHandle, RuntimeLease};

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
        let (mut parts, body) = req.into_parts();
        let upgrade = parts.extensions.get::<Upgrade>().is_some();
        let Admitted {
            body,
            permit,
            lease,
        } = self.gate.admit(body, ctx).await?;
        let mut head = Head::new(&mut parts, ctx, body.len(), upgrade);
        let counters = self.pool.counters(lease.endpoint().id);
        let answered = counters.answered();
        let exchange = self.exchange(&lease, &mut head, &body, upgrade);
        let (response, conn) = match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(sent) => sent?,
            Err(_) => return Err(self.timed_out(&lease, &counters, answered)),
        };
        conn.counters().answer();
        drop(body);
        if upgrade {
            return self.upgraded(response, conn, lease, permit).await;
        }
        let done = Done {
            conn: Some(conn),
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
        head: &mut Head,
        body: &Spooled,
        upgrade: bool,
    ) -> Result<(Response<Incoming>, Conn), UpstreamError> {
        let mut conn = if upgrade {
            self.pool.connect(lease).await?
        } else {
            self.pool.checkout(lease).await?
        };
        loop {
            let mark = conn.bytes_read();
            let request = match conn.reused {
                true => head.request(body.replay().await?),
                false => head.take_request(body.replay().await?),
            };
            match conn.send(request).await {
                Ok(response) => return Ok((response, conn)),
                Err(e) if conn.reused && conn.bytes_read() == mark => {
                    tracing::debug!(error = %e, pid = lease.endpoint().pid,
                        "a kept-alive connection to an app instance failed before its answer; sending again");
                    conn = self.pool.connect(lease).await?;
                }
                Err(e) => {
                    return Err(UpstreamError::BadGateway(format!(
                        "app instance pid {} broke the connection: {e}",
                        lease.endpoint().pid
                    )))
                }
            }
        }
    }

    /// The response to the client: its head cleaned, its body streamed
    /// ([`AppBody`]); the connection is pooled again after a body read to
    /// its end if neither side closes it.
    fn relay(&self, response: Response<Incoming>, mut done: Done) -> Response<ResponseBody> {
        let (mut parts, incoming) = response.into_parts();
        // A 101 to a request that asked for no upgrade (the router answers
        // it with 502) leaves the connection to hyper's upgrade: not pooled.
        if !head::keeps_alive(&parts) || parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
            done.conn = None;
        }
        super::hop::strip_hop_by_hop(&mut parts.headers);
        if incoming.is_end_stream() {
            done.finish(true);
            return Response::from_parts(parts, super::empty_body());
        }
        let body = AppBody::new(incoming, done, self.request_timeout);
        Response::from_parts(parts, body.boxed_unsync())
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
