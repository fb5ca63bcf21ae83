//! One request's way through the router: host → site, path → mount, body
//! limit, upstream, error mapping, access log. This is the only place that
//! turns an [`UpstreamError`] into a response.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};

use super::access_log::{format_combined, AccessRecord, SiteLogs};
use super::table::{RoutingTable, SiteRoute};
use super::vhost::normalize_host;
use crate::upstream::{
    plain_response, BoxError, RequestContext, ResponseBody, Scheme, UpstreamError,
};

/// Per-connection facts every request on it shares.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub local: SocketAddr,
    pub scheme: Scheme,
}

/// Headers that carry router→runtime metadata; never accepted from clients.
pub const RESERVED_HEADER_PREFIX: &str = "x-polyhost-";

/// Serves one request against the current routing table.
pub async fn handle<B>(
    req: Request<B>,
    conn: ConnInfo,
    table: Arc<RoutingTable>,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let start = Instant::now();
    let host = request_host(&req);
    if host.is_none() && req.version() >= Version::HTTP_11 {
        return plain_response(StatusCode::BAD_REQUEST, "missing or invalid Host header");
    }
    let Some(site) = table.vhosts.lookup(host.as_deref()) else {
        return plain_response(
            StatusCode::MISDIRECTED_REQUEST,
            "no site is configured for this host name",
        );
    };
    let site = site.clone();
    let log = LogFacts::of(&req, conn.client, &site);
    let in_flight = site.stats.begin(); // metrics
    let response = route(req, conn, host.unwrap_or_default(), &site).await;
    site.stats
        .record(response.status().as_u16(), start.elapsed()); // metrics
    drop(in_flight); // metrics
    log.wrap(response, start, site.logs.clone())
}

async fn route<B>(
    mut req: Request<B>,
    conn: ConnInfo,
    host: String,
    site: &SiteRoute,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let limit = site.config.limits.body;
    if content_length(req.headers()).is_some_and(|len| len > limit) {
        return error_response(UpstreamError::BodyTooLarge { limit }, site, &req);
    }
    strip_reserved(req.headers_mut());
    let Some((prefix, upstream)) = site.mounts.lookup(req.uri().path()) else {
        return error_response(UpstreamError::NotFound, site, &req);
    };
    let ctx = RequestContext {
        site: site.config.clone(),
        client: conn.client,
        local: conn.local,
        scheme: conn.scheme,
        host,
        mount_prefix: prefix.to_owned(),
    };
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).boxed_unsync();
    let head = Request::from_parts(parts.clone(), ());
    match upstream
        .handle(Request::from_parts(parts, body), &ctx)
        .await
    {
        Ok(resp) => resp,
        Err(e) => error_response(e, site, &head),
    }
}

/// The authority of the URI (HTTP/2, absolute-form) or the Host header.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    if let Some(auth) = req.uri().authority() {
        return normalize_host(auth.as_str());
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next()?;
    if hosts.next().is_some() {
        return None; // two Host headers: refuse rather than guess
    }
    normalize_host(first.to_str().ok()?)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn strip_reserved(headers: &mut HeaderMap) {
    let reserved: Vec<_> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(RESERVED_HEADER_PREFIX))
        .cloned()
        .collect();
    for k in reserved {
        headers.remove(k);
    }
}

/// Maps an upstream failure to its response, logging server-side faults to
/// the site's error log.
fn error_response<B>(
    e: UpstreamError,
    site: &SiteRoute,
    req: &Request<B>,
) -> Response<ResponseBody> {
    let status = e.status();
    if status.is_server_error() {
        site.logs
            .error(&format!("{} {}: {status}: {e}", req.method(), req.uri()));
        tracing::warn!(site = %site.config.name, method = %req.method(), uri = %req.uri(), %status, error = %e, "request failed");
    }
    let mut resp = plain_response(status, status.canonical_reason().unwrap_or("error"));
    if matches!(e, UpstreamError::MethodNotAllowed) {
        resp.headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
    }
    resp
}

/// What the access log line needs from the request, taken before the request
/// is handed to the upstream.
struct LogFacts {
    client: std::net::IpAddr,
    method: http::Method,
    target: String,
    version: Version,
    referer: Option<String>,
    user_agent: Option<String>,
}

impl LogFacts {
    fn of<B>(req: &Request<B>, client: SocketAddr, _site: &SiteRoute) -> Self {
        let header = |name| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        LogFacts {
            client: client.ip(),
            method: req.method().clone(),
            target: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().to_string(), |pq| pq.to_string()),
            version: req.version(),
            referer: header(header::REFERER),
            user_agent: header(header::USER_AGENT),
        }
    }

    /// Wraps the response body so the line is written when the body is done
    /// (or dropped by a client that went away), with the bytes really sent.
    fn wrap(
        self,
        resp: Response<ResponseBody>,
        start: Instant,
        logs: Arc<SiteLogs>,
    ) -> Response<ResponseBody> {
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        let body = LoggedBody {
            inner: body,
            bytes: 0,
            pending: Some((self, status, start, logs)),
        };
        Response::from_parts(parts, body.boxed_unsync())
    }
}

struct LoggedBody {
    inner: ResponseBody,
    bytes: u64,
    pending: Option<(LogFacts, u16, Instant, Arc<SiteLogs>)>,
}

impl LoggedBody {
    fn finish(&mut self) {
        if let Some((facts, status, start, logs)) = self.pending.take() {
            let record = AccessRecord {
                client: facts.client,
                method: facts.method.as_str(),
                target: &facts.target,
                version: facts.version,
                status,
                bytes: self.bytes,
                referer: facts.referer.as_deref(),
                user_agent: facts.user_agent.as_deref(),
                duration: start.elapsed(),
            };
            logs.access
                .line(&format_combined(&record, SystemTime::now()));
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.finish();
    }
}
