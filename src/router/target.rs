//! The form of a request's target (RFC 9112 §3.2), decided before a request
//! is routed: only origin-form (`/path`) and absolute-form
//! (`http://host/path`) reach a site. The router tunnels nothing, so
//! `CONNECT` is refused; authority-form (`host:port`) belongs to `CONNECT`
//! alone; asterisk-form (`*`) to `OPTIONS`, which asks about the server as a
//! whole and is answered here.
//!
//! HTTP/2 requests come in the same shapes (hyper builds the same `Uri` from
//! `:authority` and `:path`), so they get the same answers. The h2 layer
//! itself already refuses a non-`CONNECT` request without `:scheme` and
//! `:path` (a stream reset), so authority-form reaches the router only from
//! HTTP/1.

use http::{HeaderValue, Method, Uri};

/// The methods polyhost serves, for `Allow` in the router's own answers to
/// `OPTIONS *` and `CONNECT`. A site may accept others (an app sees any
/// method but `CONNECT`); no list could name them all, so this names the
/// common ones.
pub const ALLOW: HeaderValue =
    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");

/// What the router does with a request, by its method and target form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Origin-form or absolute-form: routed to a site.
    Route,
    /// `CONNECT`, in any form: `405` with [`ALLOW`], and the connection
    /// closed (HTTP/1): a client may send its tunnel's bytes right after the
    /// request, and they must not be read as requests.
    Connect,
    /// `OPTIONS *`: `200` with [`ALLOW`], from the router.
    ServerOptions,
    /// A target form the method may not have: `400`.
    Refused(&'static str),
}

/// Classifies a request; a few comparisons, no allocation.
pub fn classify(method: &Method, uri: &Uri) -> Target {
    if method == Method::CONNECT {
        return Target::Connect;
    }
    if uri.scheme().is_none() && uri.authority().is_some() {
        return Target::Refused("authority-form request target without CONNECT");
    }
    if uri.path() == "*" {
        return if method == Method::OPTIONS {
            Target::ServerOptions
        } else {
            Target::Refused("asterisk-form request target without OPTIONS")
        };
    }
    Target::Route
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short name for each answer, for the table below.
    fn name(t: Target) -> &'static str {
        match t {
            Target::Route => "route",
            Target::Connect => "405",
            Target::ServerOptions => "200",
            Target::Refused(_) => "400",
        }
    }

    #[test]
    fn each_form_with_each_kind_of_method() {
        let cases = [
            ("GET", "/", "route"),
            ("GET", "/a*", "route"),
            ("OPTIONS", "/x", "route"),
            ("GET", "http://a.test/x", "route"),
            ("GET", "http://a.test", "route"),
            ("GET", "a.test:443", "400"),
            ("POST", "a.test:80", "400"),
            ("OPTIONS", "a.test:80", "400"),
            ("CONNECT", "a.test:443", "405"),
            ("CONNECT", "/", "405"),
            ("OPTIONS", "*", "200"),
            ("GET", "*", "400"),
            ("DELETE", "*", "400"),
        ];
        for (method, target, want) in cases {
            let uri: Uri = target.parse().unwrap();
            let got = classify(&method.parse().unwrap(), &uri);
            assert_eq!(name(got), want, "{method} {target}: {got:?}");
        }
    }

    #[test]
    fn an_http2_asterisk_carries_scheme_and_authority() {
        // What the h2 layer builds from `:scheme`, `:authority`, `:path: *`.
        let uri = Uri::builder()
            .scheme("https")
            .authority("a.test")
            .path_and_query("*")
            .build()
            .unwrap();
        assert_eq!(classify(&Method::OPTIONS, &uri), Target::ServerOptions);
        assert!(matches!(classify(&Method::GET, &uri), Target::Refused(_)));
    }
}
