//! The FastCGI parameters of one request, as nginx's `fastcgi_params` sends
//! them (plus `SCRIPT_FILENAME`, `PATH_INFO`, `HTTPS`).
//!
//! Invariants: `PATH_INFO` is always empty (no path-info guessing);
//! `HTTP_PROXY` is never sent (httpoxy); client headers whose names contain
//! `_` are dropped (they would alias a dash header's `HTTP_*` name, as nginx's
//! `underscores_in_headers off`); `Content-Type`/`Content-Length` go only as
//! `CONTENT_TYPE`/`CONTENT_LENGTH`.

use std::net::IpAddr;

use http::{header, request::Parts, Version};

use crate::upstream::{RequestContext, Scheme};

/// `SERVER_SOFTWARE`.
pub const SERVER_SOFTWARE: &str = concat!("polyhost/", env!("CARGO_PKG_VERSION"));

/// The script a request runs, as [`super::script`] resolved it.
pub struct ScriptParams<'a> {
    /// Absolute path of the script (`SCRIPT_FILENAME`).
    pub filename: &'a str,
    /// URL path of the script (`SCRIPT_NAME`, `DOCUMENT_URI`).
    pub script_name: &'a str,
    /// Document root (`DOCUMENT_ROOT`).
    pub document_root: &'a str,
}

/// Builds the parameter list (names are unique; order is stable).
pub fn build(
    parts: &Parts,
    ctx: &RequestContext,
    script: &ScriptParams<'_>,
    content_length: Option<u64>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut p: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(32);
    let mut put = |k: &str, v: &[u8]| p.push((k.as_bytes().to_vec(), v.to_vec()));
    let request_uri = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    put("SCRIPT_FILENAME", script.filename.as_bytes());
    put("SCRIPT_NAME", script.script_name.as_bytes());
    put("PATH_INFO", b"");
    put("DOCUMENT_ROOT", script.document_root.as_bytes());
    put("DOCUMENT_URI", script.script_name.as_bytes());
    put("REQUEST_URI", request_uri.as_bytes());
    put("QUERY_STRING", parts.uri.query().unwrap_or("").as_bytes());
    put("REQUEST_METHOD", parts.method.as_str().as_bytes());
    put(
        "CONTENT_TYPE",
        parts
            .headers
            .get(header::CONTENT_TYPE)
            .map_or(&b""[..], |v| v.as_bytes()),
    );
    put(
        "CONTENT_LENGTH",
        content_length
            .map(|n| n.to_string())
            .unwrap_or_default()
            .as_bytes(),
    );
    put("SERVER_NAME", ctx.host.as_bytes());
    put("SERVER_PORT", ctx.local.port().to_string().as_bytes());
    put("SERVER_ADDR", ip(ctx.local.ip()).as_bytes());
    put("SERVER_PROTOCOL", protocol(parts.version).as_bytes());
    put("SERVER_SOFTWARE", SERVER_SOFTWARE.as_bytes());
    put("GATEWAY_INTERFACE", b"CGI/1.1");
    put("REMOTE_ADDR", ip(ctx.client.ip()).as_bytes());
    put("REMOTE_PORT", ctx.client.port().to_string().as_bytes());
    if ctx.scheme == Scheme::Https {
        put("HTTPS", b"on");
    }
    put("REQUEST_SCHEME", ctx.scheme.as_str().as_bytes());
    put("REDIRECT_STATUS", b"200");

    let mut have_host = false;
    for name in parts.headers.keys() {
        let n = name.as_str();
        if n.contains('_') || n == "proxy" || n == "content-type" || n == "content-length" {
            continue;
        }
        have_host |= name == header::HOST;
        let sep: &[u8] = if name == header::COOKIE { b"; " } else { b", " };
        let mut value = Vec::new();
        for (i, v) in parts.headers.get_all(name).iter().enumerate() {
            if i > 0 {
                value.extend_from_slice(sep);
            }
            value.extend_from_slice(v.as_bytes());
        }
        let key: String = "HTTP_"
            .chars()
            .chain(n.chars().map(|c| {
                if c == '-' {
                    '_'
                } else {
                    c.to_ascii_uppercase()
                }
            }))
            .collect();
        p.push((key.into_bytes(), value));
    }
    if !have_host {
        // HTTP/2 carries the host in the URI authority, not a Host header.
        let host = parts
            .uri
            .authority()
            .map_or(ctx.host.as_str(), |a| a.as_str());
        p.push((b"HTTP_HOST".to_vec(), host.as_bytes().to_vec()));
    }
    p
}

fn ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or_else(|| v6.to_string(), |v4| v4.to_string()),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::upstream::php::tests_support::site;

    fn params(
        req: http::Request<()>,
        scheme: Scheme,
        len: Option<u64>,
    ) -> BTreeMap<String, String> {
        let ctx = RequestContext {
            site: Arc::new(site("/srv/www")),
            client: "[::ffff:10.0.0.9]:51000".parse().unwrap(),
            local: "127.0.0.1:8443".parse().unwrap(),
            scheme,
            host: "example.test".into(),
            mount_prefix: String::new(),
        };
        let (parts, ()) = req.into_parts();
        let script = ScriptParams {
            filename: "/srv/www/index.php",
            script_name: "/index.php",
            document_root: "/srv/www",
        };
        let list = build(&parts, &ctx, &script, len);
        let map: BTreeMap<_, _> = list
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8(k.clone()).unwrap(),
                    String::from_utf8(v.clone()).unwrap(),
                )
            })
            .collect();
        assert_eq!(map.len(), list.len(), "duplicate parameter names");
        map
    }

    #[test]
    fn params_like_nginx() {
        let req = http::Request::post("/pretty/url?a=1&b=2")
            .header("host", "Example.test:8443")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("content-length", "3")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("x-custom", "v1")
            .header("x-custom", "v2")
            .header("proxy", "http://evil:1")
            .header("x_forwarded_for", "spoof")
            .body(())
            .unwrap();
        let got = params(req, Scheme::Https, Some(3));
        let want: BTreeMap<String, String> = [
            ("SCRIPT_FILENAME", "/srv/www/index.php"),
            ("SCRIPT_NAME", "/index.php"),
            ("PATH_INFO", ""),
            ("DOCUMENT_ROOT", "/srv/www"),
            ("DOCUMENT_URI", "/index.php"),
            ("REQUEST_URI", "/pretty/url?a=1&b=2"),
            ("QUERY_STRING", "a=1&b=2"),
            ("REQUEST_METHOD", "POST"),
            ("CONTENT_TYPE", "application/x-www-form-urlencoded"),
            ("CONTENT_LENGTH", "3"),
            ("SERVER_NAME", "example.test"),
            ("SERVER_PORT", "8443"),
            ("SERVER_ADDR", "127.0.0.1"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("SERVER_SOFTWARE", SERVER_SOFTWARE),
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("REMOTE_ADDR", "10.0.0.9"),
            ("REMOTE_PORT", "51000"),
            ("HTTPS", "on"),
            ("REQUEST_SCHEME", "https"),
            ("REDIRECT_STATUS", "200"),
            ("HTTP_HOST", "Example.test:8443"),
            ("HTTP_COOKIE", "a=1; b=2"),
            ("HTTP_X_CUSTOM", "v1, v2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn http2_without_host_header_and_plain_http() {
        let req = http::Request::get("https://example.test/")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        let got = params(req, Scheme::Http, None);
        assert_eq!(got["HTTP_HOST"], "example.test");
        assert_eq!(got["SERVER_PROTOCOL"], "HTTP/2.0");
        assert_eq!(got["REQUEST_SCHEME"], "http");
        assert_eq!(got["CONTENT_LENGTH"], "");
        assert_eq!(got["QUERY_STRING"], "");
        assert!(!got.contains_key("HTTPS"));
    }
}
