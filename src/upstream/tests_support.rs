//! What the upstreams' unit tests share: a stand-in [`RuntimeHandle`] that
//! leases a test's socket (or loopback port) and counts leases taken,
//! released and recycled, and small helpers for responses and waits.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::Response;
use http_body_util::BodyExt;

use super::{BoxError, ResponseBody, UpstreamError};
use crate::supervisor::{LeaseError, RuntimeHandle, RuntimeLease};

#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) leased: AtomicUsize,
    pub(crate) released: AtomicUsize,
    pub(crate) recycled: AtomicUsize,
}

impl Counts {
    /// (leased, released, recycled).
    pub(crate) fn get(&self) -> (usize, usize, usize) {
        let load = |n: &AtomicUsize| n.load(Ordering::SeqCst);
        (
            load(&self.leased),
            load(&self.released),
            load(&self.recycled),
        )
    }
}

/// Counts its lease's release.
struct Release(Arc<Counts>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.released.fetch_add(1, Ordering::SeqCst);
    }
}

/// Leases `socket` (or `tcp`, when set), or fails as `fail` says.
pub(crate) struct StandIn {
    pub(crate) socket: PathBuf,
    pub(crate) tcp: Option<std::net::SocketAddr>,
    pub(crate) fail: Option<fn() -> LeaseError>,
    pub(crate) counts: Arc<Counts>,
}

impl RuntimeHandle for StandIn {
    fn ready(&self) -> BoxFuture<'_, Result<RuntimeLease, LeaseError>> {
        Box::pin(async move {
            if let Some(fail) = self.fail {
                return Err(fail());
            }
            self.counts.leased.fetch_add(1, Ordering::SeqCst);
            let counts = self.counts.clone();
            let lease = RuntimeLease::with_recycle(
                self.socket.clone(),
                Release(self.counts.clone()),
                move |_| {
                    counts.recycled.fetch_add(1, Ordering::SeqCst);
                },
            );
            Ok(match self.tcp {
                Some(addr) => lease.with_tcp(addr),
                None => lease,
            })
        })
    }
}

/// A response's whole body.
pub(crate) async fn body(resp: Response<ResponseBody>) -> Result<Bytes, BoxError> {
    Ok(resp.into_body().collect().await?.to_bytes())
}

/// Waits (up to 10 s) until `cond` holds.
pub(crate) async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) fn expect_err(result: Result<Response<ResponseBody>, UpstreamError>) -> UpstreamError {
    match result {
        Ok(resp) => panic!("expected an error, got {}", resp.status()),
        Err(e) => e,
    }
}

/// A request's context: site `blog.test` (no root), mounted at `/app`.
pub(crate) fn context(client: &str, scheme: super::Scheme) -> super::RequestContext {
    super::RequestContext {
        site: Arc::new(crate::config::tests_support::site("/nonexistent")),
        client: client.parse().unwrap(),
        local: "127.0.0.1:80".parse().unwrap(),
        scheme,
        host: "blog.test".into(),
        mount_prefix: "/app".into(),
        files: None,
    }
}

/// A GET in a task of its own: its status and whole body.
pub(crate) fn spawn_get(
    upstream: Arc<dyn super::Upstream>,
    ctx: super::RequestContext,
    path: &'static str,
) -> tokio::task::JoinHandle<(u16, Bytes)> {
    tokio::spawn(async move {
        let req = http::Request::get(path).body(super::full_body("")).unwrap();
        match upstream.handle(req, &ctx).await {
            Ok(resp) => (resp.status().as_u16(), body(resp).await.unwrap()),
            Err(e) => (e.status().as_u16(), Bytes::new()),
        }
    })
}
