//! The Python upstream: HTTP/1.1 over Unix sockets to a site's
//! `polyhost-python` workers.
//!
//! Per request: spool the body (a slow upload holds no Python thread) →
//! admission (at most processes × threads requests at the workers; the rest
//! wait up to `queue_timeout`, then 503) → a lease on the least-busy ready
//! worker (starting the site if it is scaled to zero) → a pooled keep-alive
//! connection (driven in the request's own task, `wire`) → the request,
//! with metadata in `x-polyhost-*` headers → the
//! response head within `request_timeout` (else 504, and the stuck worker is
//! recycled) → the body pumped by a task into a bounded buffer, so the worker
//! is released as soon as it has written (up to ~2 MiB) even if the client
//! is slow.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::mpsc;

use wire::{Framing, WireError, WorkerConn};

use super::admission::Permit;
use super::gate::{Admitted, Gate};
use super::spool::Spooled;
use super::{
    BoxError, RequestBody, RequestContext, ResponseBody, Upgrade, Upstream, UpstreamError,
};
use crate::config::PythonConfig;
use crate::metrics::SiteStats;
use crate::supervisor::{RuntimeHandle, RuntimeLease};

mod upgrade;
mod wire;

/// Responses up to this size (with a Content-Length) are read whole at once.
const INLINE_MAX: u64 = 256 << 10;

/// Frames buffered between a worker and a slow client (≈ 2 MiB at 64 KiB frames).
const PUMP_FRAMES: usize = 32;

pub struct PythonUpstream {
    /// Spool, admission (processes × threads), lease.
    gate: Gate,
    request_timeout: Duration,
    /// An ASGI site: WebSocket upgrades go to its workers (`upgrade`).
    tunnels: bool,
    pool: Arc<ConnPool>,
}

impl PythonUpstream {
    pub fn new(
        runtime: Arc<dyn RuntimeHandle>,
        config: &PythonConfig,
        stats: Arc<SiteStats>,
    ) -> Self {
        let capacity = (config.processes * config.per_process()) as usize;
        PythonUpstream {
            gate: Gate::new(runtime, capacity, config.queue_timeout, stats),
            request_timeout: config.request_timeout,
            tunnels: config.asgi().is_some(),
            pool: Arc::new(ConnPool::default()),
        }
    }

    /// Worker threads in use and in total (admission permits).
    pub fn threads(&self) -> (u64, u64) {
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
        let Admitted {
            body,
            permit,
            lease,
        } = self.gate.admit(body, ctx).await?;
        if parts.extensions.get::<Upgrade>().is_some() {
            return self.upgrade(&parts, body, permit, lease, ctx).await;
        }
        let mut conn = self.pool.get(&lease).await?;
        let head_request = parts.method == http::Method::HEAD;
        let mut request = outgoing(&parts, body, ctx);
        let exchange = async {
            match conn.send(&mut request).await {
                // Pooled connections are not probed before use (a system
                // call per request); the rare one a worker closed is found here.
                Err(WireError::Stale(_)) => {
                    conn = self.pool.connect(&lease).await?;
                    conn.send(&mut request).await
                }
                sent => sent,
            }
            .map_err(|e| self.broken(&lease, "broke the connection", e))?;
            conn.read_head(head_request)
                .await
                .map_err(|e| self.broken(&lease, "broke the connection", e))
        };
        let head = self.within_timeout(&lease, "a request", exchange).await?;
        let mut response = Response::new(());
        *response.status_mut() = head.status;
        *response.headers_mut() = head.headers;
        let (parts, ()) = response.into_parts();
        // A response of known, small size is read here at once: the worker
        // is released without a pump task and a channel hop per request.
        if let Some(len) = head.framing.exact_len().filter(|&n| n <= INLINE_MAX) {
            let read = if conn.buffered() as u64 >= len {
                Ok(conn.read_exact_body(len).await) // no wait: no timer
            } else {
                tokio::time::timeout(self.request_timeout, conn.read_exact_body(len)).await
            };
            let bytes = match read {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(e)) => return Err(self.broken(&lease, "broke off its response", e)),
                Err(_) => {
                    lease.recycle("a response body stalled past request_timeout");
                    return Err(UpstreamError::Timeout(self.request_timeout));
                }
            };
            drop(permit);
            self.pool.put(lease.endpoint().id, conn);
            drop(lease);
            return Ok(Response::from_parts(parts, super::full_body(bytes)));
        }
        let body = pumped(conn, head.framing, lease, permit, self.pool.clone());
        Ok(Response::from_parts(parts, body))
    }

    /// Runs a request's exchange with its worker within `request_timeout`;
    /// past it, the worker is recycled (`what` ran past) and the answer is a
    /// timeout.
    async fn within_timeout<T>(
        &self,
        lease: &RuntimeLease,
        what: &str,
        exchange: impl std::future::Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, UpstreamError> {
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                lease.recycle(format!(
                    "{what} ran past request_timeout ({:?})",
                    self.request_timeout
                ));
                Err(UpstreamError::Timeout(self.request_timeout))
            }
        }
    }

    fn broken(&self, lease: &RuntimeLease, what: &str, e: WireError) -> UpstreamError {
        UpstreamError::BadGateway(format!("worker pid {} {what}: {e}", lease.endpoint().pid))
    }
}

impl Upstream for PythonUpstream {
    fn kind(&self) -> &'static str {
        "python"
    }

    fn request_timeout(&self) -> Option<Duration> {
        Some(self.request_timeout)
    }

    fn tunnels(&self) -> bool {
        self.tunnels
    }

    fn handle<'a>(
        &'a self,
        req: Request<RequestBody>,
        ctx: &'a RequestContext,
    ) -> BoxFuture<'a, Result<Response<ResponseBody>, UpstreamError>> {
        Box::pin(self.serve(req, ctx))
    }
}

/// The request as it goes to a worker: its head, with the router's
/// metadata for the worker (`x-polyhost-*`), and its spooled body.
fn outgoing(parts: &http::request::Parts, body: Spooled, ctx: &RequestContext) -> wire::Outgoing {
    wire::Outgoing::new(
        wire::encode_head(
            parts,
            &wire::Metadata {
                remote_addr: ctx.client,
                scheme: ctx.scheme.as_str(),
                script_name: &ctx.mount_prefix,
                server_name: &ctx.host,
                server_port: ctx.local.port(),
            },
            body.len(),
        ),
        body,
    )
}

/// A response body read from the worker by a [`pump`] task into a bounded
/// buffer, so the worker is released as soon as it has written.
fn pumped(
    conn: WorkerConn,
    framing: Framing,
    lease: RuntimeLease,
    permit: Permit,
    pool: Arc<ConnPool>,
) -> ResponseBody {
    let (tx, rx) = mpsc::channel(PUMP_FRAMES);
    tokio::spawn(pump(conn, framing, tx, lease, permit, pool));
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    StreamBody::new(stream).boxed_unsync()
}

/// Reads the worker's response into the client's buffer; returns the
/// connection to the pool when the response was read to the end.
async fn pump(
    mut conn: WorkerConn,
    mut framing: Framing,
    tx: mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
    lease: RuntimeLease,
    permit: Permit,
    pool: Arc<ConnPool>,
) {
    let complete = loop {
        match conn.next_data(&mut framing).await {
            Ok(Some(data)) => {
                if tx.send(Ok(Frame::data(data))).await.is_err() {
                    break false; // the client went away; the connection is dropped
                }
            }
            Ok(None) => break true,
            Err(e) => {
                let _ = tx.send(Err(Box::new(e))).await;
                break false;
            }
        }
    };
    drop(permit);
    if complete {
        pool.put(lease.endpoint().id, conn);
    }
    drop(lease); // released (and max_requests checked) here, as the response ends
}

/// Keep-alive connections per worker endpoint and router lane. A request
/// takes one of its own lane's, or opens a new one: a connection taken from
/// another lane had to be moved to this lane's event loop (two `epoll_ctl`s
/// and a wake-up of the other lane; under WSGI hello, 3 % of the router's
/// time went there), while a worker serves any number of connections and
/// an idle one holds none of its threads.
#[derive(Default)]
struct ConnPool {
    idle: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    /// By (endpoint, lane).
    conns: HashMap<(u64, usize), Vec<WorkerConn>>,
    /// Returns since the last sweep of dead connections.
    puts: u32,
}

/// Idle connections kept per endpoint and lane (more than a worker's threads is waste).
const IDLE_PER_LANE: usize = 64;
/// Every this many returns, connections the workers closed are dropped
/// (endpoints of recycled processes never come back).
const SWEEP_EVERY: u32 = 1024;

impl ConnPool {
    /// A pooled connection of this lane to the lease's worker (not probed:
    /// see [`WorkerConn::send`]), or a new one.
    async fn get(&self, lease: &RuntimeLease) -> Result<WorkerConn, UpstreamError> {
        let key = (lease.endpoint().id, crate::lanes::current());
        let pooled = self.lock().conns.get_mut(&key).and_then(Vec::pop);
        match pooled {
            Some(conn) => Ok(conn),
            None => self.connect(lease).await,
        }
    }

    /// A new connection to the lease's worker.
    async fn connect(&self, lease: &RuntimeLease) -> Result<WorkerConn, UpstreamError> {
        let endpoint = lease.endpoint();
        let stream = super::connect_runtime(&endpoint.socket, endpoint.uid)
            .await
            .map_err(|e| {
                UpstreamError::BadGateway(format!(
                    "cannot connect to worker pid {} at {}: {e}",
                    endpoint.pid,
                    endpoint.socket.display()
                ))
            })?;
        Ok(WorkerConn::new(stream))
    }

    /// Pools a connection whose response ended cleanly. Whether the worker
    /// closed it meanwhile shows when it is next used; every
    /// [`SWEEP_EVERY`] returns, closed ones are dropped.
    fn put(&self, endpoint: u64, conn: WorkerConn) {
        if !conn.ended_cleanly() {
            return;
        }
        let mut state = self.lock();
        state.puts += 1;
        if state.puts >= SWEEP_EVERY {
            state.puts = 0;
            state.conns.retain(|_, conns| {
                conns.retain(WorkerConn::is_reusable);
                !conns.is_empty()
            });
        }
        let conns = state.conns.entry((endpoint, conn.lane())).or_default();
        if conns.len() < IDLE_PER_LANE {
            conns.push(conn);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests;
