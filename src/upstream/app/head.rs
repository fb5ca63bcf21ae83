//! The request head as it goes to an app instance, and the response head as
//! it comes back.
//!
//! To the app: the path and query as the client sent them (the mount prefix
//! is not stripped: `X-Forwarded-Prefix` names it), HTTP/1.1, the client's
//! end-to-end headers; no hop-by-hop header but an upgrade's own
//! `Connection`/`Upgrade`; `Expect` dropped (the body is already here);
//! `Content-Length` of the spooled body; and `X-Forwarded-For`,
//! `-Proto`, `-Host`, `-Prefix` and `Forwarded` (RFC 7239) as polyhost
//! saw the request. The router already replaced what a client sent in
//! those with the real client and scheme (believing a trusted proxy's;
//! `router::proxy::resolve_forwarded`): here they are set again, whole, so
//! no client value survives. The router's own `x-polyhost-*` names were
//! stripped at its edge; nothing here adds one.

use std::net::IpAddr;

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri, Version};

use crate::upstream::hop::strip_hop_by_hop;
use crate::upstream::{RequestBody, RequestContext};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// A request head ready to send (again, on a retry).
pub(super) struct Head {
    pub(super) method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Head {
    /// The head for `parts`, with a body of `body_len` bytes; `upgrade`:
    /// the router kept the request's upgrade headers for us.
    pub(super) fn new(
        parts: &mut http::request::Parts,
        ctx: &RequestContext,
        body_len: u64,
        upgrade: bool,
    ) -> Head {
        let mut headers = std::mem::take(&mut parts.headers);
        let upgrade_to = upgrade
            .then(|| headers.get(header::UPGRADE).cloned())
            .flatten();
        let had_length = headers.contains_key(header::CONTENT_LENGTH)
            || headers.contains_key(header::TRANSFER_ENCODING);
        strip_hop_by_hop(&mut headers);
        headers.remove(header::EXPECT);
        if let Some(to) = upgrade_to {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, to);
        }
        if body_len > 0 || had_length {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
        }
        // The forwarded headers below, in one growth of the map at most.
        headers.reserve(6);
        forwarded(&mut headers, ctx);
        let uri = parts
            .uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
        Head {
            method: parts.method.clone(),
            uri,
            headers,
        }
    }

    /// The request with `body`; the head is kept for another attempt.
    pub(super) fn request(&self, body: RequestBody) -> Request<RequestBody> {
        self.build(self.headers.clone(), body)
    }

    /// The request with `body`, for the last attempt.
    pub(super) fn take_request(&mut self, body: RequestBody) -> Request<RequestBody> {
        let headers = std::mem::take(&mut self.headers);
        self.build(headers, body)
    }

    fn build(&self, headers: HeaderMap, body: RequestBody) -> Request<RequestBody> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        request
    }
}

/// Sets the forwarded headers from what polyhost saw (see the module doc).
/// Each value is written once into its own buffer, which becomes the
/// header value without a copy (this runs for every request).
fn forwarded(headers: &mut HeaderMap, ctx: &RequestContext) {
    use std::fmt::Write as _;
    let ip = ctx.client.ip();
    let proto = ctx.scheme.as_str();
    let host = headers
        .get(header::HOST)
        .cloned()
        .or_else(|| HeaderValue::from_str(&ctx.host).ok());
    let mut for_ = String::with_capacity(48);
    let _ = write!(for_, "{ip}");
    let mut rfc7239 = String::with_capacity(64);
    match ip {
        IpAddr::V4(_) => {
            let _ = write!(rfc7239, "for={for_};proto={proto}");
        }
        IpAddr::V6(_) => {
            let _ = write!(rfc7239, "for=\"[{for_}]\";proto={proto}");
        }
    }
    if let Some(host) = host.as_ref().and_then(|h| h.to_str().ok()) {
        // A quoted-string: a host with a port has a ':', no token character.
        rfc7239.push_str(";host=\"");
        rfc7239.extend(host.chars().filter(|c| !matches!(c, '"' | '\\')));
        rfc7239.push('"');
    }
    let text = |s: String| HeaderValue::from_maybe_shared(bytes::Bytes::from(s)).ok();
    if let Some(v) = text(for_) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
    let prefix = Some(&ctx.mount_prefix)
        .filter(|p| !p.is_empty())
        .and_then(|p| HeaderValue::from_str(p).ok());
    match prefix {
        Some(prefix) => headers.insert(X_FORWARDED_PREFIX, prefix),
        None => headers.remove(X_FORWARDED_PREFIX),
    };
    match text(rfc7239) {
        Some(v) => headers.insert(header::FORWARDED, v),
        None => headers.remove(header::FORWARDED),
    };
}

/// Whether the connection may carry another request after this response:
/// HTTP/1.1 and no `Connection: close` (before the hop-by-hop strip).
pub(super) fn keeps_alive(parts: &http::response::Parts) -> bool {
    parts.version == Version::HTTP_11
        && !parts.headers.get_all(header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        })
}
