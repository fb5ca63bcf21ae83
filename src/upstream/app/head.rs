//! The request head as it goes to an app instance, written straight from
//! the request's parts into the link's write buffer (no `HeaderMap` edited,
//! no value copied: the fields the app gets are the client's, skipped or
//! written; ours are formatted in place).
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

use http::header::{self, HeaderName};
use http::{HeaderMap, Method};

use crate::upstream::client_ip::ip_text;
use crate::upstream::RequestContext;

/// The client's fields that never reach the app: hop-by-hop ones (RFC 9110
/// §7.6.1; an upgrade's own are written again), `Expect` (the body is
/// already here), and the forwarded ones (written again from what polyhost
/// saw). `Content-Length` and `Transfer-Encoding` are settled apart.
static DROPPED: [HeaderName; 13] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::EXPECT,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-prefix"),
    header::FORWARDED,
];

/// A request's head, to be written for an app instance.
pub(super) struct Head<'a> {
    parts: &'a http::request::Parts,
    ctx: &'a RequestContext,
    /// The spooled body's length.
    body_len: u64,
    /// The router kept the request's upgrade headers for us.
    upgrade: bool,
}

impl<'a> Head<'a> {
    pub(super) fn new(
        parts: &'a http::request::Parts,
        ctx: &'a RequestContext,
        body_len: u64,
        upgrade: bool,
    ) -> Head<'a> {
        Head {
            parts,
            ctx,
            body_len,
            upgrade,
        }
    }

    pub(super) fn is_head(&self) -> bool {
        self.parts.method == Method::HEAD
    }

    /// Whether sending the request twice has the effect of sending it once
    /// (RFC 9110 9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE).
    pub(super) fn is_idempotent(&self) -> bool {
        self.parts.method.is_idempotent()
    }

    /// Writes the head into `buf` (a link's write buffer, cleared first):
    /// what is sent, and sent again on a retry.
    pub(super) fn write(&self, buf: &mut Vec<u8>) {
        let headers = &self.parts.headers;
        let target = self
            .parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str());
        let method = self.parts.method.as_str();
        buf.clear();
        buf.reserve(method.len() + target.len() + 64 * (headers.len() + 6));
        buf.extend_from_slice(method.as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(target.as_bytes());
        buf.extend_from_slice(b" HTTP/1.1\r\n");
        let named = headers.contains_key(header::CONNECTION);
        let mut had_length = false;
        for (name, value) in headers {
            let dropped = DROPPED.contains(name) || (named && connection_names(headers, name));
            if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
                had_length = true;
            } else if !dropped {
                field(buf, name.as_str(), value.as_bytes());
            }
        }
        if let Some(to) = headers.get(header::UPGRADE).filter(|_| self.upgrade) {
            field(buf, "connection", b"upgrade");
            field(buf, "upgrade", to.as_bytes());
        }
        if self.body_len > 0 || had_length {
            field(
                buf,
                "content-length",
                itoa::Buffer::new().format(self.body_len).as_bytes(),
            );
        }
        self.forwarded(buf);
        buf.extend_from_slice(b"\r\n");
    }

    /// Writes the forwarded fields from what polyhost saw (see the module
    /// doc): the client's own were skipped.
    fn forwarded(&self, buf: &mut Vec<u8>) {
        let ip = self.ctx.client.ip();
        let proto = self.ctx.scheme.as_str();
        let host = match self.parts.headers.get(header::HOST) {
            Some(h) => Some(h.as_bytes()),
            None => Some(self.ctx.host.as_bytes()).filter(|h| h.iter().all(|&b| field_byte(b))),
        };
        // The address as text from the per-thread cache (`core::fmt` of the
        // address, twice per request, was 0.8 % of the router's samples
        // under Node hello).
        let ip_text = ip_text(ip);
        field(buf, "x-forwarded-for", ip_text.as_bytes());
        field(buf, "x-forwarded-proto", proto.as_bytes());
        if let Some(host) = host {
            field(buf, "x-forwarded-host", host);
        }
        let prefix = self.ctx.mount_prefix.as_bytes();
        if !prefix.is_empty() && prefix.iter().all(|&b| field_byte(b)) {
            field(buf, "x-forwarded-prefix", prefix);
        }
        // An IPv6 address is bracketed and quoted (RFC 7239 §6).
        let (open, close): (&[u8], &[u8]) = match ip {
            std::net::IpAddr::V4(_) => (b"", b""),
            std::net::IpAddr::V6(_) => (b"\"[", b"]\""),
        };
        buf.extend_from_slice(b"forwarded: for=");
        buf.extend_from_slice(open);
        buf.extend_from_slice(ip_text.as_bytes());
        buf.extend_from_slice(close);
        buf.extend_from_slice(b";proto=");
        buf.extend_from_slice(proto.as_bytes());
        // A quoted-string (a host with a port has a ':', no token
        // character), only of a host that is visible ASCII.
        if let Some(host) =
            host.filter(|h| h.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)))
        {
            buf.extend_from_slice(b";host=\"");
            buf.extend(host.iter().filter(|&&b| b != b'"' && b != b'\\'));
            buf.push(b'"');
        }
        buf.extend_from_slice(b"\r\n");
    }
}

/// `name: value\r\n`.
fn field(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value);
    buf.extend_from_slice(b"\r\n");
}

/// A byte a header value may hold (as `http::HeaderValue` checks).
fn field_byte(b: u8) -> bool {
    b == b'\t' || (b >= b' ' && b != 0x7f)
}

/// Whether `Connection` names `name` (a hop-by-hop field of the client's
/// connection), but `Content-Length` and `Host` (end-to-end framing).
fn connection_names(headers: &HeaderMap, name: &HeaderName) -> bool {
    if name == header::HOST {
        return false;
    }
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|t| {
            t.trim_ascii()
                .eq_ignore_ascii_case(name.as_str().as_bytes())
        })
    })
}
