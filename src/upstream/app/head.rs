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

use std::fmt::Write;
use std::net::IpAddr;

use bytes::Bytes;

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};

use crate::upstream::hop::strip_hop_by_hop;
use crate::upstream::RequestContext;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// A request head ready to write.
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

    /// Writes the head onto the wire format into `buf` (a link's write
    /// buffer): what is sent, and sent again on a retry.
    pub(super) fn write(&self, buf: &mut Vec<u8>) {
        let target = self.uri.path_and_query().map_or("/", |pq| pq.as_str());
        super::h1::write_head(buf, &self.method, target, &self.headers);
    }
}

/// Sets the forwarded headers from what polyhost saw (see the module doc).
/// `Forwarded` is written once, on the stack, and copied into one buffer
/// that `X-Forwarded-For` is a slice of (the client address inside it):
/// one allocation for both (this runs for every request).
fn forwarded(headers: &mut HeaderMap, ctx: &RequestContext) {
    let ip = ctx.client.ip();
    let proto = ctx.scheme.as_str();
    let host = headers
        .get(header::HOST)
        .cloned()
        .or_else(|| HeaderValue::from_str(&ctx.host).ok());
    let mut buf = StackText::new();
    let (open, close) = match ip {
        IpAddr::V4(_) => ("for=", ""),
        IpAddr::V6(_) => ("for=\"[", "]\""),
    };
    let _ = buf.write_str(open);
    let at = buf.len();
    let _ = write!(buf, "{ip}");
    let ip_text = at..buf.len();
    let _ = write!(buf, "{close};proto={proto}");
    if let Some(host) = host.as_ref().and_then(|h| h.to_str().ok()) {
        // A quoted-string: a host with a port has a ':', no token character.
        let _ = buf.write_str(";host=\"");
        for part in host.split(['"', '\\']) {
            let _ = buf.write_str(part);
        }
        let _ = buf.write_str("\"");
    }
    let all = Bytes::copy_from_slice(buf.as_bytes());
    if let Ok(v) = HeaderValue::from_maybe_shared(all.slice(ip_text)) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    let rfc7239 = HeaderValue::from_maybe_shared(all).ok();
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
    match rfc7239 {
        Some(v) => headers.insert(header::FORWARDED, v),
        None => headers.remove(header::FORWARDED),
    };
}

/// Text written on the stack; what does not fit makes [`StackText::as_bytes`]
/// fall back to the heap. By hand: `std` has no fixed-capacity
/// `fmt::Write` target, and a crate for these few lines is not worth it.
struct StackText {
    buf: [u8; 256],
    len: usize,
    /// Set once the text outgrew `buf`: all of it, on the heap.
    spilled: Option<String>,
}

impl StackText {
    fn new() -> StackText {
        StackText {
            buf: [0; 256],
            len: 0,
            spilled: None,
        }
    }

    /// The text written so far.
    fn as_bytes(&self) -> &[u8] {
        match &self.spilled {
            Some(s) => s.as_bytes(),
            None => &self.buf[..self.len],
        }
    }

    /// Its length in bytes.
    fn len(&self) -> usize {
        self.as_bytes().len()
    }
}

impl Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if let Some(spilled) = &mut self.spilled {
            spilled.push_str(s);
            return Ok(());
        }
        match self.buf.get_mut(self.len..self.len + s.len()) {
            Some(room) => {
                room.copy_from_slice(s.as_bytes());
                self.len += s.len();
            }
            None => {
                let mut spilled = String::with_capacity(self.len + s.len());
                spilled.push_str(std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default());
                spilled.push_str(s);
                self.spilled = Some(spilled);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod stack_text_tests {
    use super::*;

    #[test]
    fn long_text_spills_to_the_heap_whole() {
        for len in [0, 1, 200, 255, 256, 257, 1000] {
            let mut t = StackText::new();
            let part = "h".repeat(len);
            let _ = write!(t, "for=1.2.3.4;host=\"{part}\"");
            let _ = t.write_str(";x");
            let want = format!("for=1.2.3.4;host=\"{part}\";x");
            assert_eq!(t.as_bytes(), want.as_bytes(), "{len}");
            assert_eq!(t.len(), want.len(), "{len}");
            let mut t = StackText::new();
            let _ = t.write_str("again");
            assert_eq!(t.as_bytes(), b"again");
        }
    }
}
