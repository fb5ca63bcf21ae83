//! One request's way through the router: host → site, path → mount, body
//! limit, upstream, error mapping, access log. This is the only place that
//! turns an [`UpstreamError`] into a response.
//!
//! - this file: the router's own part, before the request's future is made
//!   ([`handle`]: checks, site, mount, the call to the upstream);
//! - `respond`: what the request holds while its upstream works
//!   ([`Routed`], [`Pending`]) and how its response is finished (upgrade,
//!   header checks, framing, metrics, access log; errors → statuses);
//! - `request_body`: the body as upstreams read it (`LimitedBody`).

use std::net::SocketAddr;
use std::ops::ControlFlow::{self, Break, Continue};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::{BodyExt, Empty};

mod request_body;
mod respond;

use self::request_body::LimitedBody;
use self::respond::{error_response, SiteRequest};
pub use self::respond::{Pending, Routed};
use super::access_log::LogFacts;
use super::outgoing::LoggedBody;
use super::proxy;
use super::table::{RoutingTable, SiteRoute};
use super::target::{self, Target};
use super::vhost::normalize_host;
use crate::config::FrontConfig;
use crate::sendfile::FileQueue;
use crate::upstream::{
    plain_response, BodyError, BoxError, RequestBody, RequestContext, ResponseBody, Scheme,
    Upgrade, Upstream, UpstreamError,
};
use proxy::WebSocketAsk;

use super::conn::client::Client;

/// Per-connection facts every request on it shares.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub local: SocketAddr,
    pub scheme: Scheme,
    /// The peer is a trusted proxy (decided at accept: `router::server`):
    /// its forwarded headers are believed.
    pub trusted: bool,
    /// Whom the connection limits count it as (decided at accept); an
    /// HTTP/2 WebSocket stream takes a place of its own as this client.
    pub who: Client,
}

/// Server-wide settings a request is checked against.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub front: FrontConfig,
    /// Port of the first TLS listener, for HTTP → HTTPS redirects; `None`: no TLS.
    pub https_port: Option<u16>,
}

/// Routes one request against the routing table: the router's checks, its
/// site, its mount, and either the router's answer or the call to the
/// mount's upstream ([`Routed`]). The body goes out as it is (no box of its
/// own): it writes the access log line of a request that reached a site.
pub fn handle<B>(
    mut req: Request<B>,
    conn: ConnInfo,
    files: Option<FileQueue>,
    table: &RoutingTable,
    options: &Options,
) -> Routed
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let start = Instant::now();
    match checked_host(&mut req, &conn, table, options) {
        Continue(host) => route_site(req, conn, files, host, table, options, start),
        Break(resp) => Routed::Answered(Some(resp.map(LoggedBody::plain))),
    }
}

/// The checks before a site is looked up: the host to route on (`None`:
/// HTTP/1.0 without one, the default site's), or the answer that ends the
/// request here.
fn checked_host<B>(
    req: &mut Request<B>,
    conn: &ConnInfo,
    table: &RoutingTable,
    options: &Options,
) -> ControlFlow<Response<ResponseBody>, Option<String>> {
    let limits = &options.front.limits;
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > limits.max_uri_length {
        tracing::info!(client = %conn.client, length = target_len, limit = limits.max_uri_length, "request target longer than max_uri_length: 414");
        return Break(plain_response(
            StatusCode::URI_TOO_LONG,
            "request target too long",
        ));
    }
    if req.headers().len() > limits.max_headers {
        tracing::info!(client = %conn.client, headers = req.headers().len(), limit = limits.max_headers, "more than max_headers header fields: 431");
        return Break(plain_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many header fields",
        ));
    }
    if let Err(why) = proxy::check_framing(req.headers()) {
        tracing::info!(client = %conn.client, reason = why, "ambiguous request framing: 400");
        let mut resp = plain_response(StatusCode::BAD_REQUEST, why);
        if req.version() < Version::HTTP_2 {
            // What follows on this connection cannot be trusted to be a request.
            resp.headers_mut()
                .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        }
        return Break(resp);
    }
    // An HTTP/2 WebSocket (RFC 8441) is the one CONNECT that is routed:
    // to an upstream that tunnels, or refused there (`route`).
    let target = match proxy::websocket_ask(req) {
        Some(WebSocketAsk::ExtendedConnect) => Target::Route,
        _ => target::classify(req.method(), req.uri()),
    };
    if let Some(resp) = acme_challenge(req, table) {
        return Break(resp);
    }
    match target {
        Target::Route | Target::ServerOptions => {}
        Target::Connect => {
            tracing::debug!(client = %conn.client, uri = %req.uri(), "CONNECT: 405");
            return Break(connect_refused(req.version()));
        }
        Target::Refused(why) => {
            tracing::info!(client = %conn.client, method = %req.method(), uri = %req.uri(), reason = why, "request target form: 400");
            return Break(plain_response(StatusCode::BAD_REQUEST, why));
        }
    }
    let Some((host, authority)) = request_host(req) else {
        if req.version() >= Version::HTTP_11 {
            return Break(plain_response(
                StatusCode::BAD_REQUEST,
                "missing or invalid Host header",
            ));
        }
        if target == Target::ServerOptions {
            return Break(server_options());
        }
        return Continue(None);
    };
    if target == Target::ServerOptions {
        return Break(server_options());
    }
    // The app sees the host that was routed on, whatever the client sent.
    if let Some(v) = authority.and_then(|a| http::HeaderValue::from_str(&a).ok()) {
        req.headers_mut().insert(header::HOST, v);
    }
    Continue(Some(host))
}

fn route_site<B>(
    mut req: Request<B>,
    conn: ConnInfo,
    files: Option<FileQueue>,
    host: Option<String>,
    table: &RoutingTable,
    options: &Options,
    start: Instant,
) -> Routed
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Some(site) = table.vhosts.lookup(host.as_deref()) else {
        let resp = plain_response(
            StatusCode::MISDIRECTED_REQUEST,
            "no site is configured for this host name",
        );
        return Routed::Answered(Some(resp.map(LoggedBody::plain)));
    };
    let route = site.clone();
    // Read before the hop-by-hop headers go: kept for an upstream that tunnels.
    let upgrade = proxy::websocket_ask(&req);
    // Hop-by-hop first: a client's `Connection: x-forwarded-for` must not
    // remove the forwarded headers the router sets next.
    proxy::strip_hop_by_hop(req.headers_mut());
    let (client, scheme) = proxy::resolve_forwarded(
        req.headers_mut(),
        conn.client,
        conn.trusted,
        conn.scheme,
        &options.front,
    );
    let conn = ConnInfo {
        client,
        scheme,
        ..conn
    };
    let host = host.unwrap_or_default();
    let site = SiteRequest {
        log: LogFacts::of(&req, conn.client),
        in_flight: route.stats.begin(), // metrics
        route,
        start,
    };
    if let Some(resp) = https_redirect(&req, &conn, &host, &site.route, options) {
        return Routed::Answered(Some(site.finish(resp)));
    }
    match mount_call(req, conn, files, host, &site.route, options, upgrade) {
        Ok(Call::Answered(resp)) => Routed::Answered(Some(site.finish(resp))),
        Ok(Call::Upstream {
            req,
            upstream,
            ctx,
            cut,
        }) => Routed::Upstream(Pending {
            req: Some(req),
            upstream,
            ctx,
            cut,
            site: Some(site),
        }),
        Err(e) => {
            let resp = error_response(e, &site.route, &site.log);
            Routed::Answered(Some(site.finish(resp)))
        }
    }
}

/// `405` to `CONNECT`: the router tunnels nothing. HTTP/1 closes after it.
fn connect_refused(version: Version) -> Response<ResponseBody> {
    let mut resp = plain_response(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported");
    let headers = resp.headers_mut();
    headers.insert(header::ALLOW, target::ALLOW);
    if version < Version::HTTP_2 {
        headers.insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    resp
}

/// The answer to an ACME HTTP-01 validation request, for whatever host:
/// before site routing, so a site's redirect or application never sees it.
fn acme_challenge<B>(req: &Request<B>, table: &RoutingTable) -> Option<Response<ResponseBody>> {
    if table.acme_challenges.http01.is_empty() {
        return None;
    }
    let token = req
        .uri()
        .path()
        .strip_prefix("/.well-known/acme-challenge/")?;
    let Some(answer) = table.acme_challenges.http01.get(token) else {
        return Some(plain_response(StatusCode::NOT_FOUND, "no such challenge"));
    };
    let mut resp = Response::new(crate::upstream::full_body(answer.clone()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    Some(resp)
}

/// `200` to `OPTIONS *`, which asks about the server, not a resource.
fn server_options() -> Response<ResponseBody> {
    let mut resp = Response::new(crate::upstream::empty_body());
    let headers = resp.headers_mut();
    headers.insert(header::ALLOW, target::ALLOW);
    headers.insert(header::CONTENT_LENGTH, http::HeaderValue::from_static("0"));
    resp
}

/// `301` to `https://` for a site with `tls.redirect_http` reached over plain HTTP.
fn https_redirect<B>(
    req: &Request<B>,
    conn: &ConnInfo,
    host: &str,
    site: &SiteRoute,
    options: &Options,
) -> Option<Response<ResponseBody>> {
    let port = options.https_port?;
    let tls = site.config.tls.as_ref()?;
    // Without a certificate yet (ACME), https:// would fail: no redirect.
    if !tls.redirect_http || tls.pair.is_none() || conn.scheme == Scheme::Https || host.is_empty() {
        return None;
    }
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let value = http::HeaderValue::from_str(&location).ok()?;
    let mut resp = plain_response(StatusCode::MOVED_PERMANENTLY, "moved to https");
    resp.headers_mut().insert(header::LOCATION, value);
    Some(resp)
}

/// What a request's mount makes of it: an answer of the router's, or the
/// call to the mount's upstream.
#[allow(clippy::large_enum_variant)] // made and taken apart at once, never stored
enum Call {
    Answered(Response<ResponseBody>),
    Upstream {
        req: Request<RequestBody>,
        upstream: Arc<dyn Upstream>,
        ctx: RequestContext,
        cut: Option<Arc<OnceLock<BodyError>>>,
    },
}

/// The request as its mount's upstream takes it: the body limit checked
/// (and, for a body to come, enforced as it streams: [`LimitedBody`]), the
/// reserved headers gone, its context.
fn mount_call<B>(
    req: Request<B>,
    conn: ConnInfo,
    files: Option<FileQueue>,
    host: String,
    site: &SiteRoute,
    options: &Options,
    upgrade: Option<WebSocketAsk>,
) -> Result<Call, UpstreamError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let limit = site.config.limits.body;
    if content_length(req.headers()).is_some_and(|len| len > limit) {
        tracing::info!(client = %conn.client, site = %site.config.name, limit, "request body above limits.body (Content-Length): 413");
        return Err(UpstreamError::BodyTooLarge { limit });
    }
    let (mut parts, body) = req.into_parts();
    strip_reserved(&mut parts.headers);
    // A `.`/`..` segment reaches no upstream, an app's no more than the
    // root's (the one verdict: `docroot::dot_segment_verdict`).
    if let Some(refused) = crate::docroot::dot_segment_verdict(parts.uri.path()) {
        return Err(refused.into());
    }
    let Some(mounted) = site.mounts.lookup(parts.uri.path()) else {
        return Err(UpstreamError::NotFound);
    };
    // Chosen on the decoded path, which the client's does not start with
    // (`router::mount`): the upstream gets that one.
    if let Some(path) = mounted.forward {
        parts.uri = with_path(std::mem::take(&mut parts.uri), &path)?;
    }
    let (prefix, upstream) = (mounted.prefix, mounted.upstream);
    // A stalled body is cut at body_timeout, or sooner at the runtime's
    // request_timeout: a request may not outlive that by not sending its body
    // (a Python body is read before any worker's clock starts).
    let body_timeout = match upstream.request_timeout() {
        Some(t) => t.min(options.front.limits.body_timeout),
        None => options.front.limits.body_timeout,
    };
    let ctx = RequestContext {
        site: site.config.clone(),
        client: conn.client,
        local: conn.local,
        scheme: conn.scheme,
        host,
        mount_prefix: prefix.clone(),
        files,
    };
    match upgrade {
        Some(ask) if upstream.tunnels() => as_upgrade(&mut parts, ask),
        // No site sees CONNECT: only a tunnelling upstream gets a WebSocket.
        Some(WebSocketAsk::ExtendedConnect) => {
            return Ok(Call::Answered(connect_refused(Version::HTTP_2)))
        }
        _ => {}
    }
    // Most requests have no body: nothing to limit or time, and no
    // allocations for the wrappers (an empty body is boxed for free).
    let cut = (!body.is_end_stream()).then(|| Arc::new(OnceLock::new()));
    let body = match &cut {
        None => Empty::new().map_err(|never| match never {}).boxed_unsync(),
        Some(cut) => LimitedBody::new(body, limit, cut.clone(), body_timeout).boxed_unsync(),
    };
    Ok(Call::Upstream {
        req: Request::from_parts(parts, body),
        upstream: upstream.clone(),
        ctx,
        cut,
    })
}

/// `uri` with its path replaced by `path` (already encoded), its query kept.
fn with_path(uri: http::Uri, path: &str) -> Result<http::Uri, UpstreamError> {
    let mut parts = uri.into_parts();
    let target = match parts.path_and_query.as_ref().and_then(|pq| pq.query()) {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    // `docroot::RelPath::to_request_path` encodes what a URI may not hold,
    // so this holds; were it refused, the request is refused with it,
    // never forwarded as sent.
    target
        .parse()
        .ok()
        .and_then(|pq| {
            parts.path_and_query = Some(pq);
            http::Uri::from_parts(parts).ok()
        })
        .ok_or_else(|| UpstreamError::BadRequest("the decoded request path is no URI path".into()))
}

/// A WebSocket for an upstream that tunnels, in the HTTP/1.1 form the
/// worker takes (`ASGI-CONTRACT`): its upgrade headers back (the hop-by-hop
/// strip removed them), and the mark (`upstream::Upgrade`). An HTTP/2 one
/// (RFC 8441) becomes a `GET` with a `Sec-WebSocket-Key` of the router's: the
/// key only proves that a server speaks WebSocket, which the worker is
/// known to (its `Sec-WebSocket-Accept` is not passed on: RFC 8441 has none).
fn as_upgrade(parts: &mut http::request::Parts, ask: WebSocketAsk) {
    if ask == WebSocketAsk::ExtendedConnect {
        parts.method = http::Method::GET;
        parts.version = Version::HTTP_11;
        parts.headers.insert(
            header::SEC_WEBSOCKET_KEY,
            http::HeaderValue::from_static("cG9seWhvc3QtaDItd3MhIQ=="),
        );
    }
    let headers = &mut parts.headers;
    headers.insert(
        header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    headers.insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
    parts.extensions.insert(Upgrade);
}

/// The authority of the URI (HTTP/2, absolute-form) or the Host header:
/// normalised for routing, and as sent when the Host header must be set to
/// it (`None`: the Host header already says exactly that).
fn request_host<B>(req: &Request<B>) -> Option<(String, Option<String>)> {
    if let Some(auth) = req.uri().authority() {
        return normalize_host(auth.as_str()).map(|h| (h, Some(auth.as_str().to_owned())));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next()?;
    if hosts.next().is_some() {
        return None; // two Host headers: refuse rather than guess
    }
    let raw = first.to_str().ok()?;
    let trimmed = raw.trim();
    let set = (trimmed.len() != raw.len()).then(|| trimmed.to_owned());
    normalize_host(raw).map(|h| (h, set))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// `Proxy`: never a real request header, but CGI and WSGI turn it into
/// `HTTP_PROXY`, which HTTP client libraries take for their proxy setting
/// ("httpoxy").
const PROXY: http::HeaderName = http::HeaderName::from_static("proxy");

/// Removes the request headers no runtime may receive: the router's own
/// `x-polyhost-*` metadata (`polyhost_protocol::header`), and `Proxy`. For
/// every runtime, here alone: no runtime strips them again.
pub(crate) fn strip_reserved(headers: &mut HeaderMap) {
    let reserved: Vec<_> = headers
        .keys()
        .filter(|k| **k == PROXY || polyhost_protocol::header::is_reserved(k.as_str().as_bytes()))
        .cloned()
        .collect();
    for k in reserved {
        headers.remove(k);
    }
}
