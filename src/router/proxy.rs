//! Proxy hygiene at the edge, both ways: message framing that could smuggle
//! a second request (conflicting `Content-Length`, `Content-Length` with
//! `Transfer-Encoding`), hop-by-hop headers (RFC 9110 §7.6.1), the
//! `X-Forwarded-*`/`Forwarded` headers (believed only from
//! `trusted_proxies`, otherwise replaced by what polyhost saw), response
//! header values that could split a response, and the framing of every
//! response ([`response_framing`]): the router, not the upstream, decides
//! where a response ends.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};

use crate::config::FrontConfig;
use crate::upstream::hop::any_of;
pub use crate::upstream::hop::strip_hop_by_hop;
use crate::upstream::Scheme;

/// Client-supplied proxy headers; only a trusted proxy may set them.
const FORWARDED: [HeaderName; 6] = [
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-real-ip"),
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Refuses requests whose body length is ambiguous (a smuggling vector
/// through any proxy in front of or behind polyhost).
///
/// `Content-Length` with `Transfer-Encoding` does not reach this check
/// today: hyper's HTTP/1 parser drops the `Content-Length` (whichever comes
/// first), reads the body as chunked and closes the connection after the
/// answer (RFC 9112 §6.3 allows that instead of a 400), and HTTP/2 has no
/// `Transfer-Encoding`. The check stays for a parser that hands both on.
pub fn check_framing(headers: &HeaderMap) -> Result<(), &'static str> {
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        if lengths.next().is_some() {
            return Err("more than one Content-Length header");
        }
        let v = first.as_bytes();
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return Err("Content-Length is not a number");
        }
        if headers.contains_key(header::TRANSFER_ENCODING) {
            return Err("both Content-Length and Transfer-Encoding");
        }
    }
    Ok(())
}

/// How a request asks for a WebSocket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebSocketAsk {
    /// HTTP/1.1 (RFC 6455 §4.1): a `GET` whose `Connection` names `upgrade`
    /// and whose `Upgrade` names `websocket` (both case-insensitive).
    Upgrade,
    /// HTTP/2 extended CONNECT (RFC 8441): `CONNECT` with the `:protocol`
    /// pseudo-header `websocket`.
    ExtendedConnect,
}

/// Whether `req` opens a WebSocket, and how. Its other requirements (the
/// version, the key) are the worker's to check.
pub fn websocket_ask<B>(req: &http::Request<B>) -> Option<WebSocketAsk> {
    if req.version() == http::Version::HTTP_2 {
        let protocol = req.extensions().get::<hyper::ext::Protocol>();
        let websocket = protocol.is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        return (req.method() == Method::CONNECT && websocket)
            .then_some(WebSocketAsk::ExtendedConnect);
    }
    if req.version() != http::Version::HTTP_11 || req.method() != Method::GET {
        return None;
    }
    let has_token = |name: HeaderName, token: &[u8]| {
        req.headers().get_all(name).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
        })
    };
    (has_token(header::CONNECTION, b"upgrade") && has_token(header::UPGRADE, b"websocket"))
        .then_some(WebSocketAsk::Upgrade)
}

/// Cleans a response before it reaches the client: hop-by-hop headers go,
/// and so does any value with CR, LF or NUL (hyper writes values as they
/// are). Returns the names of dropped unsafe headers, for the log.
pub fn sanitize_response(headers: &mut HeaderMap) -> Vec<HeaderName> {
    strip_hop_by_hop(headers);
    let bad: Vec<HeaderName> = headers
        .iter()
        .filter(|(_, v)| v.as_bytes().iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)))
        .map(|(k, _)| k.clone())
        .collect();
    for k in &bad {
        headers.remove(k);
    }
    bad
}

/// How the router frames a response body (see [`response_framing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFraming {
    /// The body goes out as it is; hyper frames it from the body itself
    /// (its exact length, or chunked), and any `Content-Length` the
    /// response carries says that same length.
    AsIs,
    /// Nothing may follow the head (`HEAD`, 204, 304, a 2xx to `CONNECT`):
    /// the body is dropped unsent.
    NoBody,
    /// The upstream declared this `Content-Length` for a body whose length
    /// shows only as it streams: the router sends exactly that many bytes,
    /// or cuts the response and the connection (`router::service`).
    Declared(u64),
}

/// Decides how a response is framed and makes its `Content-Length` header
/// agree. hyper's release build trusts a `Content-Length` header over the
/// body it is handed, so a length an upstream (site code) declared is never
/// passed on unchecked: a wrong one would end the response early on the
/// wire and make its remaining bytes the answer to the client's next
/// request, or make the client wait for bytes that never come.
///
/// `body_len` is the body's exact length when it is known now (a body held
/// whole, a file). A declared length that contradicts it, or one that is
/// not a single number, is an error: nothing has been sent yet, so the
/// caller answers 502 instead. A body without a declared length is left to
/// hyper. A response that has no body keeps a `HEAD`'s valid declared length
/// (the length a `GET` would have) and loses any other.
pub fn response_framing(
    method: &Method,
    status: StatusCode,
    headers: &mut HeaderMap,
    body_len: Option<u64>,
) -> Result<ResponseFraming, String> {
    let bodiless_status = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || (method == Method::CONNECT && status.is_success());
    if bodiless_status {
        // RFC 9110 §8.6: no Content-Length in a 204 (or a 2xx to CONNECT);
        // a 304's would only describe another response, which hyper drops anyway.
        headers.remove(header::CONTENT_LENGTH);
        return Ok(ResponseFraming::NoBody);
    }
    let declared = declared_length(headers);
    if method == Method::HEAD {
        if declared.is_err() {
            headers.remove(header::CONTENT_LENGTH);
        }
        return Ok(ResponseFraming::NoBody);
    }
    match (declared?, body_len) {
        (None, _) => Ok(ResponseFraming::AsIs),
        (Some(n), Some(len)) if n == len => Ok(ResponseFraming::AsIs),
        (Some(n), Some(len)) => Err(format!(
            "the response declares Content-Length {n} but its body has {len} bytes"
        )),
        (Some(n), None) => {
            // The single value hyper will write, in canonical form.
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            Ok(ResponseFraming::Declared(n))
        }
    }
}

/// The response's `Content-Length`: `None` without one; an error unless it
/// is exactly one field holding only digits.
fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, String> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("the response has more than one Content-Length".into());
    }
    let v = first.as_bytes();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(format!(
            "the response's Content-Length {first:?} is not a number"
        ));
    }
    std::str::from_utf8(v)
        .ok()
        .and_then(|t| t.parse().ok())
        .map(Some)
        .ok_or_else(|| format!("the response's Content-Length {first:?} is too large"))
}

/// The client and scheme a request really comes from: the peer itself, or,
/// when the peer is a trusted proxy (`peer_trusted`: in `trusted_proxies`,
/// and not a site's own socket), what its `X-Forwarded-For` /
/// `X-Forwarded-Proto` (or `Forwarded`) say. Afterwards the request carries
/// exactly one `X-Forwarded-For` and `X-Forwarded-Proto`, with those values,
/// and no other proxy headers.
pub fn resolve_forwarded(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    peer_trusted: bool,
    scheme: Scheme,
    front: &FrontConfig,
) -> (SocketAddr, Scheme) {
    let (client, scheme) = if peer_trusted {
        from_proxy_headers(headers, peer, scheme, front)
    } else {
        (peer, scheme)
    };
    if any_of(headers, &FORWARDED) {
        for name in &FORWARDED {
            headers.remove(name);
        }
    }
    headers.insert(
        X_FORWARDED_FOR,
        crate::upstream::client_ip::ip_text(client.ip()),
    );
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme.as_str()));
    (client, scheme)
}

fn from_proxy_headers(
    headers: &HeaderMap,
    peer: SocketAddr,
    scheme: Scheme,
    front: &FrontConfig,
) -> (SocketAddr, Scheme) {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let mut hops: Vec<(Option<IpAddr>, Option<String>)> = Vec::new();
    let xff = values("x-forwarded-for");
    if !xff.is_empty() {
        let protos = values("x-forwarded-proto");
        hops = xff.iter().map(|f| (parse_node(f), None)).collect();
        if let (Some(last), Some(p)) = (hops.last_mut(), protos.last()) {
            last.1 = Some(p.clone());
        }
    } else {
        for element in values("forwarded") {
            let mut node = (None, None);
            for pair in element.split(';') {
                let Some((k, v)) = pair.split_once('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "for" => node.0 = parse_node(v),
                    "proto" => node.1 = Some(v.to_owned()),
                    _ => {}
                }
            }
            hops.push(node);
        }
    }
    // The nearest hop's scheme is what our trusted proxy saw.
    let scheme = match hops
        .iter()
        .rev()
        .find_map(|h| h.1.as_deref())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("https") => Scheme::Https,
        Some("http") => Scheme::Http,
        _ => scheme,
    };
    // Right to left: skip our own trusted proxies; the first other address
    // is the client. Stop at anything unparsable.
    let mut client = peer.ip();
    for (ip, _) in hops.iter().rev() {
        let Some(ip) = ip else { break };
        client = *ip;
        if !front.is_trusted_proxy(*ip) {
            break;
        }
    }
    let port = if client == peer.ip() { peer.port() } else { 0 };
    (SocketAddr::new(client, port), scheme)
}

/// `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`, `[2001:db8::1]:80`, `2001:db8::1`.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            s.strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .and_then(|(ip, _)| ip.parse().ok())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IpCidr;

    fn front(trusted: &[&str]) -> FrontConfig {
        FrontConfig {
            trusted_proxies: trusted.iter().map(|t| IpCidr::parse(t).unwrap()).collect(),
            ..FrontConfig::default()
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn check(trusted: &[&str], peer: &str, pairs: &[(&str, &str)], want: (&str, Scheme)) {
        let mut h = headers(pairs);
        let peer: SocketAddr = format!("{peer}:5000").parse().unwrap();
        let front = front(trusted);
        let trusted = front.is_trusted_proxy(peer.ip());
        let (client, scheme) = resolve_forwarded(&mut h, peer, trusted, Scheme::Http, &front);
        assert_eq!(
            (client.ip().to_string().as_str(), scheme),
            want,
            "{pairs:?}"
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), want.0);
        assert_eq!(h.get("x-forwarded-proto").unwrap(), want.1.as_str());
        assert!(h.get("forwarded").is_none() && h.get("x-real-ip").is_none());
    }

    #[test]
    fn forwarded_headers_only_from_trusted_proxies() {
        use Scheme::*;
        let spoof = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "6.6.6.6"),
        ];
        check(&[], "192.0.2.9", &spoof, ("192.0.2.9", Http));
        check(&["10.0.0.0/8"], "192.0.2.9", &spoof, ("192.0.2.9", Http));
        check(&["10.0.0.0/8"], "10.0.0.1", &spoof, ("6.6.6.6", Https));
        // The client's own claim sits left of the real client: ignored.
        check(
            &["10.0.0.0/8"],
            "10.0.0.1",
            &[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.2")],
            ("198.51.100.7", Http),
        );
        check(
            &["10.0.0.1"],
            "10.0.0.1",
            &[("forwarded", "for=\"[2001:db8::7]:4711\";proto=https")],
            ("2001:db8::7", Https),
        );
        check(
            &["10.0.0.1"],
            "10.0.0.1",
            &[("x-forwarded-for", "garbage")],
            ("10.0.0.1", Http),
        );
    }

    #[test]
    fn framing() {
        assert!(check_framing(&headers(&[("content-length", "5")])).is_ok());
        assert!(check_framing(&headers(&[
            ("content-length", "5"),
            ("content-length", "5")
        ]))
        .is_err());
        assert!(check_framing(&headers(&[("content-length", "+5")])).is_err());
        assert!(check_framing(&headers(&[
            ("content-length", "5"),
            ("transfer-encoding", "chunked")
        ]))
        .is_err());
    }

    #[test]
    fn response_framing_owns_the_content_length() {
        use ResponseFraming::*;
        let get = Method::GET;
        let ok = StatusCode::OK;
        // (method, status, Content-Length fields, body length now) → framing
        // (`Err(())`: refused), the Content-Length after.
        type Case<'a> = (
            &'a Method,
            StatusCode,
            &'a [&'a str],
            Option<u64>,
            Result<ResponseFraming, ()>,
            Option<&'a str>,
        );
        let cases: &[Case] = &[
            (&get, ok, &[], Some(5), Ok(AsIs), None),
            (&get, ok, &[], None, Ok(AsIs), None),
            (&get, ok, &["5"], Some(5), Ok(AsIs), Some("5")),
            (&get, ok, &["2"], Some(70), Err(()), Some("2")),
            (&get, ok, &["100"], Some(5), Err(()), Some("100")),
            (&get, ok, &["007"], None, Ok(Declared(7)), Some("7")),
            (&get, ok, &["2", "2"], None, Err(()), Some("2")),
            (&get, ok, &["2, 2"], None, Err(()), Some("2, 2")),
            (&get, ok, &["-1"], None, Err(()), Some("-1")),
            (
                &get,
                ok,
                &["99999999999999999999999"],
                None,
                Err(()),
                Some("99999999999999999999999"),
            ),
            (
                &Method::HEAD,
                ok,
                &["1234"],
                Some(0),
                Ok(NoBody),
                Some("1234"),
            ),
            (&Method::HEAD, ok, &["x"], Some(0), Ok(NoBody), None),
            (
                &get,
                StatusCode::NO_CONTENT,
                &["5"],
                Some(70),
                Ok(NoBody),
                None,
            ),
            (
                &get,
                StatusCode::NOT_MODIFIED,
                &["5"],
                None,
                Ok(NoBody),
                None,
            ),
            (&Method::CONNECT, ok, &["5"], None, Ok(NoBody), None),
        ];
        for (i, (method, status, lengths, body_len, want, cl_after)) in cases.iter().enumerate() {
            let mut h = HeaderMap::new();
            for l in *lengths {
                h.append(header::CONTENT_LENGTH, HeaderValue::from_str(l).unwrap());
            }
            let got = response_framing(method, *status, &mut h, *body_len).map_err(|_| ());
            assert_eq!(&got, want, "case {i}");
            assert_eq!(
                h.get(header::CONTENT_LENGTH).map(|v| v.to_str().unwrap()),
                *cl_after,
                "case {i}"
            );
        }
    }

    #[test]
    fn headers_without_hop_by_hop_fields_are_left_as_they_are() {
        let mut h = headers(&[("host", "a.test"), ("x-kept", "1"), ("accept", "*/*")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }
}
