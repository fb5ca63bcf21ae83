//! The Python upstream: HTTP/1.1 over Unix sockets to a site's
//! `polyhost-python` workers.
//!
//! Per request: spool the body (a slow upload holds no Python thread) →
//! admission (at most processes × threads requests at the workers; the rest
//! wait up to `queue_timeout`, then 503) → a lease on the least-busy ready
//! worker (starting the site if it is scaled to zero) → a pooled keep-alive
//! connection → the request, with metadata in `x-polyhost-*` headers → the
//! response head within `request_timeout` (else 504, and the stuck worker is
//! recycled) → the body pumped by a task into a bounded buffer, so the worker
//! is released as soon as it has written (up to ~2 MiB) even if the client
//! is slow.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::spool::spool;
use super::{BoxError, RequestBody, RequestContext, ResponseBody, Upstream, UpstreamError};
use crate::config::PythonConfig;
use crate::metrics::SiteStats;
use crate::supervisor::{GroupHandle, Lease};

/// Frames buffered between a worker and a slow client (≈ 2 MiB at 64 KiB frames).
const PUMP_FRAMES: usize = 32;

pub struct PythonUpstream {
    group: GroupHandle,
    queue_timeout: Duration,
    request_timeout: Duration,
    admission: Arc<Semaphore>,
    capacity: usize,
    /// Requests admitted to this upstream that hold no lease yet (spooling,
    /// queued, waiting for a worker): stopping waits for them.
    waiting: AtomicUsize,
    pool: Arc<ConnPool>,
    stats: Arc<SiteStats>,
}

impl PythonUpstream {
    pub fn new(group: GroupHandle, config: &PythonConfig, stats: Arc<SiteStats>) -> Self {
        let capacity = (config.processes * config.threads) as usize;
        PythonUpstream {
            group,
            queue_timeout: config.queue_timeout,
            request_timeout: config.request_timeout,
            admission: Arc::new(Semaphore::new(capacity)),
            capacity,
            waiting: AtomicUsize::new(0),
            pool: Arc::new(ConnPool::default()),
            stats,
        }
    }

    pub fn group(&self) -> &GroupHandle {
        &self.group
    }

    /// Worker threads in use and in total (admission permits).
    pub fn threads(&self) -> (u64, u64) {
        let busy = self
            .capacity
            .saturating_sub(self.admission.available_permits());
        (busy as u64, self.capacity as u64)
    }

    /// Waits until no request is between admission and its lease (bounded by
    /// the queue timeout), so that stopping the workers afterwards fails no
    /// request that was routed here before a reload swapped the table.
    pub async fn settle(&self) {
        let deadline = Instant::now() + self.queue_timeout + Duration::from_secs(1);
        let mut quiet = 0;
        while quiet < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(25)).await;
            quiet = if self.waiting.load(Ordering::Acquire) == 0 {
                quiet + 1
            } else {
                0
            };
        }
    }

    async fn serve(
        &self,
        req: Request<RequestBody>,
        ctx: &RequestContext,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let waiting = Waiting::enter(&self.waiting);
        let limit = ctx.site.limits.body;
        let (parts, body) = req.into_parts();
        let body = spool(body, limit).await?;
        let queued = Instant::now();
        let permit =
            tokio::time::timeout(self.queue_timeout, self.admission.clone().acquire_owned()).await;
        self.stats.queued(queued.elapsed());
        let permit = permit
            .map_err(|_| UpstreamError::QueueTimeout(self.queue_timeout))?
            .map_err(|_| UpstreamError::Unavailable("site is stopping".into()))?;
        let lease = self.group.lease().await?;
        drop(waiting);
        let mut sender = self.pool.get(&lease).await?;

        let mut head = Request::builder()
            .method(parts.method.clone())
            .uri(parts.uri.path_and_query().map_or("/", |pq| pq.as_str()));
        if let Some(h) = head.headers_mut() {
            copy_end_to_end(&parts.headers, h);
            add_metadata(h, ctx);
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let upstream_req = head
            .body(body.into_body())
            .map_err(|e| UpstreamError::BadRequest(e.to_string()))?;

        let sent =
            tokio::time::timeout(self.request_timeout, sender.send_request(upstream_req)).await;
        let resp = match sent {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                return Err(UpstreamError::BadGateway(format!(
                    "worker pid {} broke the connection: {e}",
                    lease.endpoint().pid
                )))
            }
            Err(_) => {
                self.group.recycle(
                    lease.endpoint().id,
                    format!(
                        "a request ran past request_timeout ({:?})",
                        self.request_timeout
                    ),
                );
                return Err(UpstreamError::Timeout(self.request_timeout));
            }
        };
        let (parts, body) = resp.into_parts();
        let (tx, rx) = mpsc::channel(PUMP_FRAMES);
        tokio::spawn(pump(
            body,
            tx,
            sender,
            lease,
            permit,
            self.pool.clone(),
            self.group.clone(),
        ));
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        Ok(Response::from_parts(
            parts,
            StreamBody::new(stream).boxed_unsync(),
        ))
    }
}

impl Upstream for PythonUpstream {
    fn kind(&self) -> &'static str {
        "python"
    }

    fn handle<'a>(
        &'a self,
        req: Request<RequestBody>,
        ctx: &'a RequestContext,
    ) -> BoxFuture<'a, Result<Response<ResponseBody>, UpstreamError>> {
        Box::pin(async move {
            let limit = ctx.site.limits.body;
            self.serve(req, ctx).await.map_err(|e| match e {
                UpstreamError::BadRequest(msg) if msg.contains("length limit") => {
                    UpstreamError::BodyTooLarge { limit }
                }
                e => e,
            })
        })
    }
}

/// Counts a request in [`PythonUpstream::waiting`] while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads the worker's response into the client's buffer; returns the
/// connection to the pool when the response was read to the end.
async fn pump(
    mut body: hyper::body::Incoming,
    tx: mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
    sender: SendRequest<RequestBody>,
    lease: Lease,
    permit: OwnedSemaphorePermit,
    pool: Arc<ConnPool>,
    group: GroupHandle,
) {
    let complete = loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if tx.send(Ok(frame)).await.is_err() {
                    break false; // the client went away; the connection is dropped
                }
            }
            Some(Err(e)) => {
                let _ = tx.send(Err(Box::new(e))).await;
                break false;
            }
            None => break true,
        }
    };
    drop(permit);
    if complete {
        pool.put(lease.endpoint().id, sender);
    }
    group.release(lease);
}

/// Keep-alive connections per worker endpoint.
#[derive(Default)]
struct ConnPool {
    idle: Mutex<HashMap<u64, Vec<SendRequest<RequestBody>>>>,
}

impl ConnPool {
    async fn get(&self, lease: &Lease) -> Result<SendRequest<RequestBody>, UpstreamError> {
        let endpoint = lease.endpoint();
        loop {
            let pooled = self
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&endpoint.id)
                .and_then(Vec::pop);
            match pooled {
                Some(mut s) if !s.is_closed() => {
                    if s.ready().await.is_ok() {
                        return Ok(s);
                    }
                }
                Some(_) => continue,
                None => break,
            }
        }
        let stream = tokio::net::UnixStream::connect(&endpoint.socket)
            .await
            .map_err(|e| {
                UpstreamError::BadGateway(format!(
                    "cannot connect to worker pid {} at {}: {e}",
                    endpoint.pid,
                    endpoint.socket.display()
                ))
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::BadGateway(format!("worker handshake failed: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn put(&self, endpoint: u64, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, v| {
            v.retain(|s| !s.is_closed());
            !v.is_empty()
        });
        idle.entry(endpoint).or_default().push(sender);
    }
}

/// Copies the client's headers for the worker. The router has already
/// removed hop-by-hop headers (`router::proxy`), and removes them from the
/// worker's response too; Content-Length is set from the spooled body.
fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if name != header::CONTENT_LENGTH {
            to.append(name.clone(), value.clone());
        }
    }
}

fn add_metadata(h: &mut HeaderMap, ctx: &RequestContext) {
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::try_from(value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    put("x-polyhost-remote-addr", ctx.client.to_string());
    put("x-polyhost-scheme", ctx.scheme.as_str().to_owned());
    put("x-polyhost-script-name", ctx.mount_prefix.clone());
    put("x-polyhost-server-name", ctx.host.clone());
    put("x-polyhost-server-port", ctx.local.port().to_string());
}
