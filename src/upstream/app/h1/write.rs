//! The request head on the wire: the request line and the fields of a
//! head `super::super::head` already rewrote, into a buffer the link
//! sends (and a retry sends again, unchanged).

use http::{HeaderMap, Method};

/// Writes `METHOD target HTTP/1.1`, the fields and the blank line into
/// `buf` (cleared first; its capacity is the link's, kept across requests).
pub(in crate::upstream::app) fn write_head(
    buf: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
) {
    buf.clear();
    let fields: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    buf.reserve(method.as_str().len() + target.len() + 13 + fields + 2);
    buf.extend_from_slice(method.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(target.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
}
