//! Hop-by-hop headers (RFC 9110 §7.6.1): the fields that describe one
//! connection, not the message. The router strips them from every request
//! and response at its edge (`router::proxy`); an upstream that speaks HTTP
//! to a process (`upstream::app`) strips them again from what it sends and
//! receives, so no connection's fields cross from one side to the other.

use http::header::{self, HeaderName};
use http::HeaderMap;

/// Headers that describe one connection, not the message.
/// (Parsed once here: removing by `&str` would parse and hash the name
/// again on every request.)
const HOP_BY_HOP: [HeaderName; 8] = [
    HeaderName::from_static("connection"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("proxy-authenticate"),
    HeaderName::from_static("te"),
    HeaderName::from_static("trailer"),
    HeaderName::from_static("transfer-encoding"),
    HeaderName::from_static("upgrade"),
];

/// Removes hop-by-hop headers and the headers `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: one pass over their few fields is cheaper
    // than a hashed lookup per name (this runs twice per request).
    if !any_of(headers, &HOP_BY_HOP) {
        return;
    }
    let mut named: Vec<HeaderName> = Vec::new();
    for v in headers.get_all(header::CONNECTION) {
        if let Ok(v) = v.to_str() {
            named.extend(
                v.split(',')
                    .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok()),
            );
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    for name in named {
        // Connection may not remove end-to-end framing we rely on.
        if name != header::CONTENT_LENGTH && name != header::HOST {
            headers.remove(name);
        }
    }
}

/// Whether `headers` has a field named in `names`.
pub fn any_of(headers: &HeaderMap, names: &[HeaderName]) -> bool {
    headers.keys().any(|k| names.contains(k))
}
