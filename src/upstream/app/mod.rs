//! STUB (launcher helper's placeholder until the UPSTREAM helper's
//! `upstream/app/` lands; theirs replaces this file): the `[app]` upstream,
//! one HTTP/1.1 request per fresh connection to a leased instance, through
//! hyper's client connection API. No pooling, admission, retries, upgrades
//! or forwarded-header work beyond the router's.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body_util::BodyExt;

use super::{BoxError, RequestBody, RequestContext, ResponseBody, Upstream, UpstreamError};
use crate::config::AppConfig;
use crate::metrics::SiteStats;
use crate::supervisor::{RuntimeHandle, RuntimeLease};

pub struct AppUpstream {
    runtime: Arc<dyn RuntimeHandle>,
    request_timeout: Duration,
}

impl AppUpstream {
    pub fn new(runtime: Arc<dyn RuntimeHandle>, app: &AppConfig, _stats: Arc<SiteStats>) -> Self {
        AppUpstream {
            runtime,
            request_timeout: app.request_timeout,
        }
    }

    /// Waits until no request is queued here (nothing queues in this stub).
    pub async fn settle(&self) {}

    async fn forward(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let lease = self.runtime.ready().await?;
        let bad = |e: &dyn std::fmt::Display| UpstreamError::BadGateway(e.to_string());
        let response = match lease.tcp() {
            Some(addr) => {
                let io = tokio::net::TcpStream::connect(addr).await.map_err(|e| bad(&e))?;
                send(hyper_util::rt::TokioIo::new(io), req, lease).await
            }
            None => {
                let io = super::connect_runtime(lease.socket(), lease.peer_uid())
                    .await
                    .map_err(|e| bad(&e))?;
                send(hyper_util::rt::TokioIo::new(io), req, lease).await
            }
        }?;
        Ok(response.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()))
    }
}

/// One request on a new connection; the lease is held until the
/// connection ends (after the response body).
async fn send<T>(
    io: T,
    req: Request<RequestBody>,
    lease: RuntimeLease,
) -> Result<Response<hyper::body::Incoming>, UpstreamError>
where
    T: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
{
    let bad = |e: hyper::Error| UpstreamError::BadGateway(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(bad)?;
    tokio::spawn(async move {
        let _ = conn.await;
        drop(lease);
    });
    sender.send_request(req).await.map_err(bad)
}

impl Upstream for AppUpstream {
    fn kind(&self) -> &'static str {
        "app"
    }

    fn request_timeout(&self) -> Option<Duration> {
        Some(self.request_timeout)
    }

    fn handle<'a>(
        &'a self,
        req: Request<RequestBody>,
        _ctx: &'a RequestContext,
    ) -> BoxFuture<'a, Result<Response<ResponseBody>, UpstreamError>> {
        Box::pin(async move {
            tokio::time::timeout(self.request_timeout, self.forward(req))
                .await
                .unwrap_or(Err(UpstreamError::Timeout(self.request_timeout)))
        })
    }
}
