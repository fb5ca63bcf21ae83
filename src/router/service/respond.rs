//! What a request holds while its site's upstream works ([`Pending`], in
//! [`Routed`]), and how a response to a site's request is finished on its
//! way out: its upgrade, its headers checked, its framing, the site's
//! metrics, the access log line ([`SiteRequest::finish`]); an upstream's
//! failure becomes its status here ([`error_response`]).
//!
//! Invariant: a request that reached a site is counted in flight until
//! its response is finished or its future dropped (`SiteRequest`'s guard).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use http::{header, Request, Response, StatusCode, Version};
use http_body::Body;

use super::super::access_log::LogFacts;
use super::super::outgoing::{self, LoggedBody};
use super::super::proxy;
use super::super::table::SiteRoute;
use super::super::tunnel::{Accepted, AcceptedSlot};
use crate::metrics::InFlight;
use crate::upstream::{
    plain_response, BodyError, Fault, RequestBody, RequestContext, ResponseBody, TunnelSlot,
    Upstream, UpstreamError,
};

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
    pub(super) req: Option<Request<RequestBody>>,
    pub(super) upstream: Arc<dyn Upstream>,
    pub(super) ctx: RequestContext,
    /// Why the router cut the request's body, once it did (`LimitedBody`).
    pub(super) cut: Option<Arc<OnceLock<BodyError>>>,
    pub(super) site: Option<SiteRequest>,
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
pub(super) struct SiteRequest {
    pub(super) route: Arc<SiteRoute>,
    pub(super) log: LogFacts,
    pub(super) start: Instant,
    pub(super) in_flight: InFlight, // metrics
}

impl SiteRequest {
    /// The response as it goes out: its upgrade (a `101` with its tunnel),
    /// its headers checked, its framing settled, counted in the site's
    /// metrics, with the access log line to be written when its body ends.
    pub(super) fn finish(self, mut response: Response<ResponseBody>) -> Response<LoggedBody> {
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

/// Maps an upstream failure to its response (its status:
/// [`UpstreamError::status`], by who failed), logging every fault but the
/// client's to the site's error log (with the method and target the client
/// sent: `log`, the request's access log facts).
pub(super) fn error_response(
    e: UpstreamError,
    site: &SiteRoute,
    log: &LogFacts,
) -> Response<ResponseBody> {
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
