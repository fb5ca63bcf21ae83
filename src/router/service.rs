//! One request's way through the router: host → site, path → mount, body
//! limit, upstream, error mapping, access log. This is the only place that
//! turns an [`UpstreamError`] into a response.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::ControlFlow::{self, Break, Continue};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};

use super::access_log::LogFacts;
use super::outgoing::{self, LoggedBody};
use super::proxy;
use super::table::{RoutingTable, SiteRoute};
use super::target::{self, Target};
use super::tunnel::{Accepted, AcceptedSlot};
use super::vhost::normalize_host;
use crate::config::FrontConfig;
use crate::metrics::InFlight;
use crate::sendfile::FileQueue;
use crate::upstream::{
    plain_response, BodyError, BoxError, Fault, RequestBody, RequestContext, ResponseBody, Scheme,
    TunnelSlot, Upgrade, Upstream, UpstreamError,
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

/// A request once the router has done its own part ([`handle`]): answered
/// already, or waiting for its site's upstream.
///
/// Split so that what a request holds while its upstream works is one
/// small value ([`Pending`]), not the whole routing path's state: the
/// request's future is boxed per request (`server::conn_service`), and a
/// future of several KiB costs a copy of itself and an allocation beyond
/// the allocator's per-thread cache on every request.
// Not boxed: a `Pending` is the common case, and a box of its own would
// be one more allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Routed {
    /// Answered by the router (`None` once taken by [`respond`](Self::respond)).
    Answered(Option<Response<LoggedBody>>),
    /// Handed to a site's upstream.
    Upstream(Pending),
}

impl Routed {
    /// The response: the router's at once, or the upstream's when it comes.
    pub async fn respond(&mut self) -> Response<LoggedBody> {
        match self {
            Routed::Answered(resp) => resp.take().expect("a request is answered once"),
            Routed::Upstream(pending) => pending.respond().await,
        }
    }
}

/// A request handed to its site's upstream: what the upstream is called
/// with, and what its answer is finished with.
pub struct Pending {
    req: Option<Request<RequestBody>>,
    upstream: Arc<dyn Upstream>,
    ctx: RequestContext,
    /// Why the router cut the request's body, once it did (`LimitedBody`).
    cut: Option<Arc<OnceLock<BodyError>>>,
    site: Option<SiteRequest>,
}

impl Pending {
    async fn respond(&mut self) -> Response<LoggedBody> {
        let req = self.req.take().expect("a request is answered once");
        let answer = self.upstream.handle(req, &self.ctx).await;
        let site = self.site.take().expect("a request is answered once");
        let response = match answer {
            Ok(response) => response,
            Err(e) => {
                let e = self.cut_or(e, &site.route);
                error_response(e, &site.route, &site.log)
            }
        };
        site.finish(response)
    }

    /// A body the router cut answers as what it is, whatever error the
    /// upstream made of it (php-fpm may close first, say).
    fn cut_or(&self, e: UpstreamError, site: &SiteRoute) -> UpstreamError {
        let Some(&cut) = self.cut.as_ref().and_then(|cut| cut.get()) else {
            return e;
        };
        let client = self.ctx.client;
        match cut {
            BodyError::TooLarge { limit } => {
                tracing::info!(%client, site = %site.config.name, limit, "request body above limits.body (while streaming): 413")
            }
            BodyError::Stalled(timeout) => {
                tracing::info!(%client, site = %site.config.name, ?timeout, "request body stalled longer than body_timeout (or the runtime's shorter request_timeout): 408")
            }
        }
        cut.into()
    }
}

/// A request that reached a site: what its response is finished with
/// (framed, counted, logged).
struct SiteRequest {
    route: Arc<SiteRoute>,
    log: LogFacts,
    start: Instant,
    in_flight: InFlight, // metrics
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

impl SiteRequest {
    /// The response as it goes out: its upgrade (a `101` with its tunnel),
    /// its headers checked, its framing settled, counted in the site's
    /// metrics, with the access log line to be written when its body ends.
    fn finish(self, mut response: Response<ResponseBody>) -> Response<LoggedBody> {
        let SiteRequest {
            route: site,
            log,
            start,
            in_flight,
        } = self;
        let tunnel = response.extensions_mut().remove::<TunnelSlot>();
        let dropped = proxy::sanitize_response(response.headers_mut());
        if !dropped.is_empty() {
            site.logs.error(&format!(
                "dropped response headers with CR, LF or NUL in their value: {dropped:?}"
            ));
            tracing::warn!(site = %site.config.name, headers = ?dropped, "dropped response headers with CR, LF or NUL in their value");
        }
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return switching(response, tunnel, log, &site, start);
        }
        let framing = frame_response(&mut response, &log, &site);
        site.stats
            .record(response.status().as_u16(), start.elapsed()); // metrics
        drop(in_flight); // metrics
        outgoing::wrap(response, log, framing, start, site.logs.clone())
    }
}

/// A `101`: with the tunnel its upstream opened, it goes out with its
/// upgrade headers (which `sanitize_response` removed as hop-by-hop) and the
/// tunnel for the connection to run once hyper sent it (`router::tunnel`);
/// its access log line is written when the tunnel ends. A `101` without a
/// tunnel (an application's, through a runtime that carries none) is a 502:
/// no response may turn a connection into something the router does not
/// relay and account for.
fn switching(
    mut response: Response<ResponseBody>,
    tunnel: Option<TunnelSlot>,
    log: LogFacts,
    site: &SiteRoute,
    start: Instant,
) -> Response<LoggedBody> {
    let Some(tunnel) = tunnel.and_then(|slot| slot.take()) else {
        site.logs.error(&format!(
            "{} {}: 502: a 101 response without an upgrade",
            log.method, log.uri
        ));
        tracing::warn!(site = %site.config.name, method = %log.method, uri = %log.uri, "101 from an upstream that opened no tunnel: 502");
        site.stats.record(502, start.elapsed()); // metrics
        let response = plain_response(StatusCode::BAD_GATEWAY, "Bad Gateway");
        return outgoing::wrap(
            response,
            log,
            proxy::ResponseFraming::AsIs,
            start,
            site.logs.clone(),
        );
    };
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_LENGTH);
    if log.version() == Version::HTTP_2 {
        // RFC 8441: a 2xx opens the stream's tunnel; no upgrade headers.
        headers.remove(header::SEC_WEBSOCKET_ACCEPT);
        *response.status_mut() = StatusCode::OK;
    } else {
        let upgrade = http::HeaderValue::from_static("upgrade");
        headers.insert(header::CONNECTION, upgrade);
        headers.insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
    }
    *response.body_mut() = crate::upstream::empty_body();
    let status = response.status().as_u16();
    site.stats.record(status, start.elapsed()); // metrics
    response
        .extensions_mut()
        .insert(AcceptedSlot::new(Accepted {
            tunnel,
            status,
            log: log.detached(),
            logs: site.logs.clone(),
            stats: site.stats.clone(),
            start,
        }));
    response.map(LoggedBody::plain)
}

/// Applies [`proxy::response_framing`]: a bodiless response loses its body;
/// a declared length the body contradicts turns the response into a 502
/// (nothing of it has been sent), logged to the site's error log.
fn frame_response(
    response: &mut Response<ResponseBody>,
    log: &LogFacts,
    site: &SiteRoute,
) -> proxy::ResponseFraming {
    let body = response.body();
    let body_len = if body.is_end_stream() {
        Some(0)
    } else {
        body.size_hint().exact()
    };
    let status = response.status();
    match proxy::response_framing(&log.method, status, response.headers_mut(), body_len) {
        Ok(proxy::ResponseFraming::NoBody) => {
            if !response.body().is_end_stream() {
                *response.body_mut() = crate::upstream::empty_body();
            }
            proxy::ResponseFraming::NoBody
        }
        Ok(framing) => framing,
        Err(why) => {
            site.logs
                .error(&format!("{} {}: 502: {why}", log.method, log.uri));
            tracing::warn!(site = %site.config.name, method = %log.method, uri = %log.uri, error = %why, "response framing refused: 502");
            *response = plain_response(StatusCode::BAD_GATEWAY, "Bad Gateway");
            proxy::ResponseFraming::AsIs
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
    let Some((prefix, upstream)) = site.mounts.lookup(parts.uri.path()) else {
        return Err(UpstreamError::NotFound);
    };
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
        Some(cut) => LimitedBody {
            inner: Box::pin(Limited::new(
                body,
                usize::try_from(limit).unwrap_or(usize::MAX),
            )),
            limit,
            cut: cut.clone(),
            timeout: body_timeout,
            timer: None,
        }
        .boxed_unsync(),
    };
    Ok(Call::Upstream {
        req: Request::from_parts(parts, body),
        upstream: upstream.clone(),
        ctx,
        cut,
    })
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

/// The request body as upstreams read it: at most `limits.body` bytes, and
/// no wait longer than `body_timeout` for the next bytes (a slow upload
/// cannot hold a connection forever). Either failure is the body's error, a
/// [`BodyError`] that upstreams recognise by type, and is kept in `cut`, so
/// whatever error the upstream makes of it, the client gets 413 or 408.
///
/// A request's trailer section (chunked HTTP/1.1, HTTP/2) is dropped here,
/// whole: no runtime has a place for trailer fields (WSGI and FastCGI know
/// only the head), and a trailer's `Content-Length`, `Host` or
/// `Transfer-Encoding` (RFC 9110 §6.5.1) must never reach a runtime as if the
/// head had said it. hyper hands the fields on unfiltered.
struct LimitedBody<B> {
    inner: Pin<Box<Limited<B>>>,
    /// `limits.body`, which `inner` enforces.
    limit: u64,
    /// Why the router cut the body, once it did.
    cut: Arc<OnceLock<BodyError>>,
    timeout: Duration,
    /// Armed while the body is waiting for the client.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> LimitedBody<B> {
    /// Remembers why the body was cut and makes it the body's error.
    fn cut(&self, why: BodyError) -> BoxError {
        let _ = self.cut.set(why);
        Box::new(why)
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut polled = self.inner.as_mut().poll_frame(cx);
        if matches!(&polled, Poll::Ready(Some(Ok(frame))) if frame.is_trailers()) {
            // The last frame; what follows is the body's end.
            polled = self.inner.as_mut().poll_frame(cx);
        }
        match &polled {
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(self.cut(BodyError::Stalled(timeout)))));
                }
            }
            Poll::Ready(Some(Err(e))) if e.is::<LengthLimitError>() => {
                let limit = self.limit;
                return Poll::Ready(Some(Err(self.cut(BodyError::TooLarge { limit }))));
            }
            Poll::Ready(_) => self.timer = None,
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

/// Maps an upstream failure to its response (its status:
/// [`UpstreamError::status`], by who failed), logging every fault but the
/// client's to the site's error log (with the method and target the client
/// sent: `log`, the request's access log facts).
fn error_response(e: UpstreamError, site: &SiteRoute, log: &LogFacts) -> Response<ResponseBody> {
    let status = e.status();
    let fault = e.fault();
    if fault != Fault::Client {
        site.logs
            .error(&format!("{} {}: {status}: {e}", log.method, log.uri));
        tracing::warn!(site = %site.config.name, method = %log.method, uri = %log.uri, %status, ?fault, error = %e, "request failed");
    }
    let mut resp = plain_response(status, status.canonical_reason().unwrap_or("error"));
    if matches!(e, UpstreamError::MethodNotAllowed) {
        resp.headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
    }
    resp
}
