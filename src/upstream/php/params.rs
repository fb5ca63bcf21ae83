//! The FastCGI parameters of one request, as nginx's `fastcgi_params` sends
//! them (plus `SCRIPT_FILENAME`, `PATH_INFO`, `PATH_TRANSLATED`, `HTTPS`).
//!
//! Invariants: `PATH_INFO` and `PATH_TRANSLATED` (root + path info) are
//! sent only for a path with path info, as [`super::script`] split it (an
//! empty `PATH_INFO` would make php-fpm's `PHP_SELF` empty; the pool's
//! `cgi.discard_path = 1` keeps `PATH_TRANSLATED` from naming the script);
//! client headers whose names contain `_` are dropped (they would alias a dash
//! header's `HTTP_*` name, as nginx's `underscores_in_headers off`);
//! `Content-Type`/`Content-Length` go only as `CONTENT_TYPE`/`CONTENT_LENGTH`.
//! (`Proxy`, which would become `HTTP_PROXY` — httpoxy — never gets here:
//! the router removes it for every runtime, `router::service`.)

use std::io::Write;
use std::net::IpAddr;

use bytes::{BufMut, BytesMut};
use http::header::{GetAll, HeaderValue};
use http::{header, request::Parts, Version};

use super::fcgi;

use crate::upstream::{RequestContext, Scheme};

/// `SERVER_SOFTWARE`.
pub const SERVER_SOFTWARE: &str = concat!("polyhost/", env!("CARGO_PKG_VERSION"));

/// The script a request runs, as [`super::script`] resolved it.
pub struct ScriptParams<'a> {
    /// URL path of the script (`SCRIPT_NAME`), from `/`.
    pub script_name: &'a str,
    /// The rest of the path (`PATH_INFO`): empty or from `/`.
    /// `DOCUMENT_URI` is `script_name` + `path_info`.
    pub path_info: &'a str,
    /// Document root (`DOCUMENT_ROOT`), without a trailing `/`;
    /// `SCRIPT_FILENAME` is the root followed by `script_name`.
    pub document_root: &'a str,
}

/// Appends the request's PARAMS stream (records and terminator) to `buf`,
/// each pair encoded straight into it: no list, no per-pair allocation.
/// Names are unique; the order is stable.
pub fn encode(
    buf: &mut BytesMut,
    parts: &Parts,
    ctx: &RequestContext,
    script: &ScriptParams<'_>,
    content_length: Option<u64>,
) {
    fcgi::params_stream(buf, |buf| pairs(buf, parts, ctx, script, content_length));
}

fn pairs(
    buf: &mut BytesMut,
    parts: &Parts,
    ctx: &RequestContext,
    script: &ScriptParams<'_>,
    content_length: Option<u64>,
) {
    let request_uri = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let (root, name, info) = (
        script.document_root.as_bytes(),
        script.script_name.as_bytes(),
        script.path_info.as_bytes(),
    );
    fcgi::put_param_parts(buf, b"SCRIPT_FILENAME", &[root, name]);
    fcgi::put_param_parts(buf, b"DOCUMENT_URI", &[name, info]);
    if !info.is_empty() {
        fcgi::put_param(buf, b"PATH_INFO", info);
        fcgi::put_param_parts(buf, b"PATH_TRANSLATED", &[root, info]);
    }
    let mut put = |k: &str, v: &[u8]| fcgi::put_param(buf, k.as_bytes(), v);
    put("SCRIPT_NAME", name);
    put("DOCUMENT_ROOT", root);
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
    let mut n = Digits::default();
    put(
        "CONTENT_LENGTH",
        content_length.map_or(&b""[..], |len| n.of(len)),
    );
    put("SERVER_NAME", ctx.host.as_bytes());
    put("SERVER_PORT", n.of(ctx.local.port().into()));
    let mut addr = IpText::default();
    put("SERVER_ADDR", addr.of(ctx.local.ip()));
    put("SERVER_PROTOCOL", protocol(parts.version).as_bytes());
    put("SERVER_SOFTWARE", SERVER_SOFTWARE.as_bytes());
    put("GATEWAY_INTERFACE", b"CGI/1.1");
    put("REMOTE_ADDR", addr.of(ctx.client.ip()));
    put("REMOTE_PORT", n.of(ctx.client.port().into()));
    if ctx.scheme == Scheme::Https {
        put("HTTPS", b"on");
    }
    put("REQUEST_SCHEME", ctx.scheme.as_str().as_bytes());
    put("REDIRECT_STATUS", b"200");

    let mut have_host = false;
    for name in parts.headers.keys() {
        let n = name.as_str();
        if n.contains('_') || n == "content-type" || n == "content-length" {
            continue;
        }
        have_host |= name == header::HOST;
        let sep: &[u8] = if name == header::COOKIE { b"; " } else { b", " };
        header_param(buf, n, parts.headers.get_all(name), sep);
    }
    if !have_host {
        // HTTP/2 carries the host in the URI authority, not a Host header.
        let host = parts
            .uri
            .authority()
            .map_or(ctx.host.as_str(), |a| a.as_str());
        fcgi::put_param(buf, b"HTTP_HOST", host.as_bytes());
    }
}

/// `HTTP_<NAME>` = the header's values joined by `sep`, written in place
/// (the lengths are known before the bytes).
fn header_param(buf: &mut BytesMut, name: &str, values: GetAll<'_, HeaderValue>, sep: &[u8]) {
    let (mut value_len, mut count) = (0usize, 0usize);
    for v in values.iter() {
        value_len += v.len();
        count += 1;
    }
    value_len += sep.len() * count.saturating_sub(1);
    let name_len = "HTTP_".len() + name.len();
    if name_len > fcgi::MAX_PARAM_LEN || value_len > fcgi::MAX_PARAM_LEN {
        return;
    }
    fcgi::put_param_len(buf, name_len);
    fcgi::put_param_len(buf, value_len);
    buf.put_slice(b"HTTP_");
    buf.extend(name.bytes().map(|c| match c {
        b'-' => b'_',
        c => c.to_ascii_uppercase(),
    }));
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            buf.put_slice(sep);
        }
        buf.put_slice(v.as_bytes());
    }
}

/// A decimal number as text, without allocating.
#[derive(Default)]
struct Digits([u8; 20]);

impl Digits {
    fn of(&mut self, mut n: u64) -> &[u8] {
        let mut i = self.0.len();
        loop {
            i -= 1;
            self.0[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                return &self.0[i..];
            }
        }
    }
}

/// An IP address as text (an IPv4-mapped IPv6 address as IPv4), without
/// allocating.
struct IpText([u8; 48]);

impl Default for IpText {
    fn default() -> Self {
        IpText([0; 48])
    }
}

impl IpText {
    fn of(&mut self, ip: IpAddr) -> &[u8] {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let mut cursor = std::io::Cursor::new(&mut self.0[..]);
        // The longest IPv6 text is 45 bytes: this cannot fail.
        let _ = write!(cursor, "{ip}");
        let len = usize::try_from(cursor.position()).unwrap_or(0);
        &self.0[..len]
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
    use crate::config::tests_support::site;

    fn params(
        req: http::Request<()>,
        scheme: Scheme,
        len: Option<u64>,
    ) -> BTreeMap<String, String> {
        params_of(req, scheme, len, "/index.php", "")
    }

    fn params_of(
        req: http::Request<()>,
        scheme: Scheme,
        len: Option<u64>,
        script_name: &str,
        path_info: &str,
    ) -> BTreeMap<String, String> {
        let ctx = RequestContext {
            site: Arc::new(site("/srv/www")),
            client: "[::ffff:10.0.0.9]:51000".parse().unwrap(),
            local: "127.0.0.1:8443".parse().unwrap(),
            scheme,
            host: "example.test".into(),
            mount_prefix: "".into(),
            files: None,
        };
        let (parts, ()) = req.into_parts();
        let script = ScriptParams {
            script_name,
            path_info,
            document_root: "/srv/www",
        };
        let mut buf = BytesMut::new();
        encode(&mut buf, &parts, &ctx, &script, len);
        let list = decode(&buf);
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

    /// The pairs of a whole PARAMS stream, as php-fpm reads them.
    fn decode(mut stream: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut body = Vec::new();
        loop {
            assert_eq!(&stream[..4], &[1, fcgi::PARAMS, 0, 1], "record header");
            let len = u16::from_be_bytes([stream[4], stream[5]]) as usize;
            let padding = stream[6] as usize;
            if len == 0 {
                assert_eq!(stream.len(), 8, "nothing after the terminator");
                break;
            }
            assert_eq!((len + padding) % 8, 0, "records are padded to 8");
            body.extend_from_slice(&stream[8..8 + len]);
            stream = &stream[8 + len + padding..];
        }
        let mut body = &body[..];
        let len = |b: &mut &[u8]| {
            if b[0] < 0x80 {
                let n = b[0] as usize;
                *b = &b[1..];
                n
            } else {
                let n = u32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]]) as usize;
                *b = &b[4..];
                n
            }
        };
        let mut pairs = Vec::new();
        while !body.is_empty() {
            let (n, v) = (len(&mut body), len(&mut body));
            pairs.push((body[..n].to_vec(), body[n..n + v].to_vec()));
            body = &body[n + v..];
        }
        pairs
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
            .header("x_forwarded_for", "spoof")
            .body(())
            .unwrap();
        let got = params(req, Scheme::Https, Some(3));
        let want: BTreeMap<String, String> = [
            ("SCRIPT_FILENAME", "/srv/www/index.php"),
            ("SCRIPT_NAME", "/index.php"),
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

    /// With path info (decoded, as the script resolver split it): PATH_INFO,
    /// PATH_TRANSLATED = root + path info, DOCUMENT_URI the whole path;
    /// REQUEST_URI stays as the client sent it.
    #[test]
    fn path_info() {
        let req = http::Request::get("/wiki/index.php/Caf%C3%A9/x?a=1")
            .body(())
            .unwrap();
        let got = params_of(req, Scheme::Http, None, "/wiki/index.php", "/Café/x");
        let pick = |k: &str| got.get(k).map(String::as_str);
        assert_eq!(pick("SCRIPT_NAME"), Some("/wiki/index.php"));
        assert_eq!(pick("SCRIPT_FILENAME"), Some("/srv/www/wiki/index.php"));
        assert_eq!(pick("PATH_INFO"), Some("/Café/x"));
        assert_eq!(pick("PATH_TRANSLATED"), Some("/srv/www/Café/x"));
        assert_eq!(pick("DOCUMENT_URI"), Some("/wiki/index.php/Café/x"));
        assert_eq!(pick("REQUEST_URI"), Some("/wiki/index.php/Caf%C3%A9/x?a=1"));
        // Without path info neither is sent (an empty PATH_INFO would make
        // php-fpm's PHP_SELF empty).
        let got = params(
            http::Request::get("/").body(()).unwrap(),
            Scheme::Http,
            None,
        );
        assert!(!got.contains_key("PATH_INFO") && !got.contains_key("PATH_TRANSLATED"));
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

    #[test]
    fn addresses_ports_and_long_headers() {
        let cookie = "c".repeat(70_000); // beyond one record
        let req = http::Request::get("/")
            .header("host", "example.test")
            .header("cookie", &cookie)
            .header("content-length", "0")
            .body(())
            .unwrap();
        let mut ctx_params = params(req, Scheme::Http, Some(0));
        assert_eq!(ctx_params.remove("HTTP_COOKIE").unwrap(), cookie);
        assert_eq!(ctx_params["CONTENT_LENGTH"], "0");
        let mut ip = IpText::default();
        assert_eq!(ip.of("::1".parse().unwrap()), b"::1");
        assert_eq!(
            ip.of("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap()),
            b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert_eq!(
            ip.of("::ffff:192.168.100.200".parse().unwrap()),
            b"192.168.100.200"
        );
        let mut n = Digits::default();
        assert_eq!(n.of(0), b"0");
        assert_eq!(n.of(u64::MAX), u64::MAX.to_string().as_bytes());
    }
}
