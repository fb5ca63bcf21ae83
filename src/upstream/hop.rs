//! Hop-by-hop headers (RFC 9110 §7.6.1): the fields that describe one
//! connection, not the message. The router strips them from every request
//! and response at its edge (`router::proxy`); an upstream that speaks HTTP
//! to a process (`upstream::app`) strips them again from what it sends and
//! receives, so no connection's fields cross from one side to the other.

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};

/// Headers that describe one connection, not the message, `Connection`
/// first ([`strip_hop_by_hop`] reads it before it removes it). Parsed
/// once, and a `static`: a `const` array is built and dropped again at
/// every use.
static HOP_BY_HOP: [HeaderName; 8] = [
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
///
/// This runs on every request and every response, and most app servers
/// answer with `Connection: keep-alive` and `Keep-Alive: timeout=5` (Node,
/// Puma, ...): only the names present are removed (one pass over the
/// fields finds them; a `remove` of an absent name still hashes it), and a
/// name `Connection` lists is removed by its text, never parsed into a
/// `HeaderName` of its own (an allocation for each name `http` does not
/// know, `keep-alive` among them).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = hop_index(name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        remove_named(headers);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate().skip(1) {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Where `name` is in [`HOP_BY_HOP`], by its text: a match on the name's
/// length and bytes, not eight comparisons of `HeaderName`s for each field
/// (this runs over every field of every request and response, twice for
/// those an `[app]` relays).
fn hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "te" => 4,
        "trailer" => 5,
        "transfer-encoding" => 6,
        "upgrade" => 7,
        _ => return None,
    })
}

/// Removes every `Connection` field and the fields its tokens name, but
/// `Content-Length` and `Host` (end-to-end framing we rely on).
fn remove_named(headers: &mut HeaderMap) {
    let header::Entry::Occupied(entry) = headers.entry(header::CONNECTION) else {
        return;
    };
    let mut values = entry.remove_entry_mult().1;
    let first = values.next();
    // Collected only when there is more than one field (no allocation else).
    let rest: Vec<HeaderValue> = values.collect();
    for value in first.iter().chain(&rest) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for token in value.split(',').map(str::trim) {
            let framing = token.eq_ignore_ascii_case(header::CONTENT_LENGTH.as_str())
                || token.eq_ignore_ascii_case(header::HOST.as_str());
            if !token.is_empty() && !framing {
                headers.remove(token);
            }
        }
    }
}

/// Whether `headers` has a field named in `names`.
pub fn any_of(headers: &HeaderMap, names: &[HeaderName]) -> bool {
    headers.keys().any(|k| names.contains(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(fields: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in fields {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// Each case: the fields before, the names left after (sorted: a
    /// removal may reorder the map).
    fn check(before: &[(&str, &str)], left: &[&str]) {
        let mut h = map(before);
        strip_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, left, "{before:?}");
    }

    #[test]
    fn hop_index_names_each_field_of_the_list_and_no_other() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(name), Some(i), "{name}");
        }
        for other in [header::HOST, header::CONTENT_LENGTH, header::TE] {
            let want = HOP_BY_HOP.iter().position(|h| *h == other);
            assert_eq!(hop_index(&other), want, "{other}");
        }
        let custom = HeaderName::from_static("x-keep-alive");
        assert_eq!(hop_index(&custom), None);
    }

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_names_go() {
        // Node's answer to a kept-alive request.
        check(
            &[
                ("content-type", "text/plain"),
                ("content-length", "13"),
                ("date", "Sun, 06 Dec 2026 07:00:00 GMT"),
                ("connection", "keep-alive"),
                ("keep-alive", "timeout=5"),
            ],
            &["content-length", "content-type", "date"],
        );
        // Names listed in several Connection fields, any case, with blanks.
        check(
            &[
                ("connection", "X-One, , close"),
                ("x-one", "1"),
                ("connection", "x-two"),
                ("x-two", "2"),
                ("x-kept", "3"),
                ("close", "4"),
            ],
            &["x-kept"],
        );
        // Connection may not take the framing or the host away.
        check(
            &[
                ("connection", "Content-Length, HOST, upgrade"),
                ("content-length", "5"),
                ("host", "a.test"),
                ("upgrade", "websocket"),
                ("transfer-encoding", "chunked"),
                ("te", "trailers"),
                ("trailer", "x-sum"),
                ("proxy-connection", "keep-alive"),
                ("proxy-authenticate", "Basic"),
            ],
            &["content-length", "host"],
        );
        // Hop-by-hop fields without a Connection field; a name that is no
        // valid field name is passed over.
        check(&[("keep-alive", "timeout=5"), ("x-kept", "1")], &["x-kept"]);
        check(
            &[
                ("connection", "bad name, x-gone"),
                ("x-gone", "1"),
                ("x-kept", "1"),
            ],
            &["x-kept"],
        );
        check(&[("x-kept", "1"), ("host", "a.test")], &["host", "x-kept"]);
    }
}
