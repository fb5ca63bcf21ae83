//! Proxy hygiene at the edge, each case sent by a real client over a
//! socket: request smuggling attempts, hop-by-hop and forwarded headers from
//! untrusted and trusted peers, and response heads from a misbehaving worker
//! that must never reach the client. After each, polyhost still serves a
//! normal client.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::edge::{chunked, site, still_serving};
use common::front::{Echo, Front};
use common::{raw, raw_status, Client, TestConfig};

#[tokio::test]
async fn request_smuggling_attempts_are_rejected() {
    let cfg = TestConfig::new();
    site(&cfg);
    let front = Front::start(&cfg, vec![]).await;
    let cases: &[(&str, &[u8])] = &[
        (
            "two different Content-Length",
            b"POST / HTTP/1.1\r\nHost: www.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "Content-Length list",
            b"POST / HTTP/1.1\r\nHost: www.test\r\nContent-Length: 5, 6\r\n\r\nhello!",
        ),
        (
            "signed Content-Length",
            b"POST / HTTP/1.1\r\nHost: www.test\r\nContent-Length: +5\r\n\r\nhello",
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: www.test\r\nX-Folded: a\r\n b\r\n\r\n",
        ),
        (
            "space before colon",
            b"GET / HTTP/1.1\r\nHost: www.test\r\nTransfer-Encoding : chunked\r\n\r\n",
        ),
        (
            "unknown transfer coding",
            b"POST / HTTP/1.1\r\nHost: www.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "chunked not last",
            b"POST / HTTP/1.1\r\nHost: www.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            b"POST / HTTP/1.0\r\nHost: www.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
    ];
    for (what, bytes) in cases {
        let reply = raw(front.http, bytes).await;
        assert_eq!(raw_status(&reply), 400, "{what}: {reply}");
        assert_eq!(
            reply.matches("HTTP/1.").count(),
            1,
            "{what}: one response, then close: {reply}"
        );
    }
    // Content-Length with Transfer-Encoding: hyper drops the Content-Length,
    // reads the body as chunked and closes the connection after answering
    // (RFC 9112 §6.3), so the request hidden in the body is never served.
    let both: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: www.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: www.test\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: www.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: www.test\r\n\r\n",
    ];
    for bytes in both {
        let reply = raw(front.http, bytes).await;
        assert_eq!(
            reply.matches("HTTP/1.").count(),
            1,
            "one response, then close: {reply}"
        );
        assert!(reply.contains("connection: close"), "{reply}");
    }
    // Two equal Content-Length headers are one unambiguous length.
    let reply = raw(
        front.http,
        b"GET / HTTP/1.1\r\nHost: www.test\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(
        (raw_status(&reply), reply.matches("HTTP/1.").count()),
        (200, 1),
        "{reply}"
    );
    still_serving(front.http).await;
    front.stop().await;
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[tokio::test]
async fn hop_by_hop_and_forwarded_headers_from_untrusted_and_trusted_peers() {
    for trusted in [false, true] {
        let cfg = TestConfig::new();
        cfg.static_site("app", &["app.test"], "");
        if trusted {
            cfg.main_extra("trusted_proxies = [\"127.0.0.0/8\"]");
        }
        let echo: Arc<dyn polyhost::upstream::Upstream> = Arc::new(Echo {
            respond_with: vec![
                ("connection", "x-up-private"),
                ("x-up-private", "1"),
                ("keep-alive", "timeout=99"),
                ("proxy-connection", "keep-alive"),
                ("x-kept", "1"),
            ],
            ..Echo::default()
        });
        let front = Front::start(&cfg, vec![("app", echo)]).await;
        let mut c = Client::connect(front.http).await;
        let req = http::Request::builder()
            .uri("/")
            .header("host", "app.test")
            // From an untrusted peer, naming the forwarded headers in
            // Connection must not remove the ones the router sets.
            .header(
                "connection",
                if trusted {
                    "x-secret"
                } else {
                    "x-secret, x-forwarded-for, x-forwarded-proto"
                },
            )
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("proxy-connection", "keep-alive")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.test")
            .header("forwarded", "for=7.7.7.7;proto=https")
            .header("x-real-ip", "6.6.6.6")
            .header("x-polyhost-scheme", "https")
            .header("x-end-to-end", "kept")
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let r = c.send(req).await;
        assert_eq!(r.status, 200);
        let text = r.text();
        let seen = lines(&text);
        for gone in [
            "x-secret: 1",
            "keep-alive: timeout=5",
            "te: trailers",
            "proxy-connection: keep-alive",
            "x-forwarded-host: evil.test",
            "forwarded: for=7.7.7.7;proto=https",
            "x-real-ip: 6.6.6.6",
            "x-polyhost-scheme: https",
        ] {
            assert!(
                !seen.contains(&gone),
                "trusted={trusted}: {gone} reached the app:\n{text}"
            );
        }
        assert!(!text.contains("\nconnection:"), "{text}");
        assert!(seen.contains(&"x-end-to-end: kept"), "{text}");
        assert!(seen.contains(&"host: app.test"), "{text}");
        let (client, scheme) = if trusted {
            ("6.6.6.6", "https")
        } else {
            ("127.0.0.1", "http")
        };
        assert!(
            seen.contains(&format!("client: {client}").as_str()),
            "trusted={trusted}:\n{text}"
        );
        assert!(
            seen.contains(&format!("scheme: {scheme}").as_str()),
            "trusted={trusted}:\n{text}"
        );
        assert!(
            seen.contains(&format!("x-forwarded-for: {client}").as_str()),
            "{text}"
        );
        assert!(
            seen.contains(&format!("x-forwarded-proto: {scheme}").as_str()),
            "{text}"
        );
        assert_eq!(text.matches("x-forwarded-for:").count(), 1, "{text}");
        // The response: hop-by-hop headers from the upstream do not reach the client.
        for gone in ["x-up-private", "keep-alive", "proxy-connection"] {
            assert!(
                r.header(gone).is_none(),
                "{gone} reached the client: {:?}",
                r.headers
            );
        }
        assert_eq!(r.header("x-kept"), Some("1"));
        // The access log names the real client too.
        let log = cfg.path().join("log/app.access.log");
        let logged = common::eventually(Duration::from_secs(5), || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .starts_with(&format!("{client} - - ["))
        })
        .await;
        assert!(
            logged,
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        front.stop().await;
    }
}

/// A Python site whose "worker" is `tests/apps/fakeworker.py`: raw HTTP on
/// the worker socket, through the real Python upstream.
fn fake_python_site(cfg: &TestConfig, user: &common::TestUser, extra: &str) {
    let worker = cfg.write("apps/fakeworker.py", include_str!("apps/fakeworker.py"));
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    cfg.write("www/py/index.html", "static\n");
    cfg.write(
        "vhosts/py.toml",
        &format!(
            "hosts = [\"py.test\"]\nroot = \"www/py\"\nuser = \"{}\"\n{extra}\n[python]\napp = \"fake\"\nworker = \"{}\"\n",
            user.name,
            worker.display()
        ),
    );
    common::open_up(cfg.path());
}

#[tokio::test]
async fn through_the_python_upstream_bad_response_heads_never_reach_the_client_and_limits_hold() {
    let cfg = TestConfig::new();
    let user = common::TestUser::new();
    fake_python_site(&cfg, &user, "[limits]\nbody = \"1K\"");
    let server = common::InProcess::start(&cfg).await;
    let addr = server.addr;

    // What the worker receives: hop-by-hop headers gone, forwarded headers replaced.
    let reply = raw(
        addr,
        b"GET /echo HTTP/1.1\r\nHost: py.test\r\nConnection: close, x-secret\r\nX-Secret: 1\r\nTE: trailers\r\nX-Forwarded-For: 6.6.6.6\r\nX-Polyhost-Scheme: https\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&reply), 200, "{reply}");
    let lower = reply.to_ascii_lowercase();
    assert!(!lower.contains("x-secret"), "{reply}");
    assert!(!lower.contains("te: trailers"), "{reply}");
    assert!(!lower.contains("6.6.6.6"), "{reply}");
    assert!(lower.contains("x-polyhost-scheme: http\r\n"), "{reply}");
    assert!(lower.contains("x-forwarded-for: 127.0.0.1"), "{reply}");

    // A folded header line or a bare CR in a value from the upstream: 502,
    // and nothing of it reaches the client.
    for path in ["/fold", "/cr"] {
        let reply = raw(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: py.test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(raw_status(&reply), 502, "{path}: {reply}");
        assert!(!reply.contains("evil"), "{path}: {reply}");
    }

    // A chunked body beyond limits.body, through the real upstream: 413.
    let reply = raw(addr, &chunked("POST", "py.test", "/echo", 4000)).await;
    assert_eq!(raw_status(&reply), 413, "{reply}");
    let reply = raw(addr, &chunked("POST", "py.test", "/echo", 500)).await;
    assert_eq!(raw_status(&reply), 200, "{reply}");
    server.stop().await;
}

/// Three sites for the tests of what site code can make the router send:
/// `pa.test` (PHP, scripts written here), `py.test` (WSGI, the app below) and
/// `pb.test` (static, answers `site pb`). Returns the site users.
fn runtime_sites(cfg: &TestConfig) -> (common::TestUser, common::TestUser) {
    let (php_user, py_user) = (common::TestUser::new(), common::TestUser::new());
    const INJECT: &str = r#""HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED""#;
    // Output buffering off, so flush() sends a FastCGI record at once and
    // the response streams (the head goes out before PHP is done).
    const UNBUFFERED: &str = "while (ob_get_level()) ob_end_flush();";
    for (name, body) in [
        ("inject", format!("header('Content-Length: 2'); echo 'ok'; echo {INJECT};")),
        ("inject-stream", format!("{UNBUFFERED} header('Content-Length: 2'); echo 'ok'; flush(); usleep(300000); echo {INJECT};")),
        ("cross-stream", format!("{UNBUFFERED} header('Content-Length: 4'); echo 'ab'; flush(); usleep(300000); echo 'cd' . {INJECT};")),
        ("short", "header('Content-Length: 100'); echo 'short';".into()),
        ("short-stream", format!("{UNBUFFERED} header('Content-Length: 100'); echo 'short'; flush(); usleep(300000);")),
        ("exact", "header('Content-Length: 5'); echo 'hello';".into()),
        ("exact-stream", format!("{UNBUFFERED} header('Content-Length: 10'); echo 'hello'; flush(); usleep(300000); echo 'world';")),
        ("head", "header('Content-Length: 1234'); echo 'x';".into()),
        ("nocontent", format!("http_response_code(204); header('Content-Length: 5'); echo {INJECT};")),
        ("notmod", format!("http_response_code(304); header('Content-Length: 5'); echo 'xxxxx' . {INJECT};")),
        ("env", "echo 'HTTP_PROXY=' . ($_SERVER['HTTP_PROXY'] ?? getenv('HTTP_PROXY') ?: 'none');".into()),
    ] {
        cfg.write(&format!("www/pa/{name}.php"), &format!("<?php {body}"));
    }
    cfg.write("www/pa/style.css", "body{}\n");
    cfg.write(
        "vhosts/pa.toml",
        &format!(
            "hosts = [\"pa.test\"]\nroot = \"www/pa\"\nuser = \"{}\"\n[php]\nmax_children = 2\n",
            php_user.name
        ),
    );
    cfg.write(
        "apps/edgeapp.py",
        r#"
def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/frame":
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok", b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED"]
    if path == "/frame-stream":
        def chunks():
            yield b"ok"
            yield b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED"
        start_response("200 OK", [("Content-Length", "2")])
        return chunks()
    if path == "/env":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [("HTTP_PROXY=%s" % environ.get("HTTP_PROXY", "none")).encode()]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"py"]
"#,
    );
    common::python_test_site(cfg, "py", &py_user, "edgeapp", "", "");
    cfg.static_site("pb", &["pb.test"], "");
    common::open_up(cfg.path());
    (php_user, py_user)
}

/// httpoxy: a client's `Proxy:` header would reach the application as
/// `HTTP_PROXY`, which HTTP client libraries (PHP's Guzzle, Python's
/// `requests` under CGI) take for their outgoing proxy. The router removes it
/// for every runtime.
#[tokio::test]
async fn the_proxy_request_header_reaches_no_runtime() {
    let cfg = TestConfig::new();
    let _users = runtime_sites(&cfg);
    let server = common::InProcess::start(&cfg).await;
    for (host, path) in [("pa.test", "/env.php"), ("py.test", "/env")] {
        for name in ["Proxy", "proxy", "PROXY"] {
            let reply = raw(
                server.addr,
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{name}: http://evil.test:3128\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await;
            assert_eq!(raw_status(&reply), 200, "{host}{path}: {reply}");
            assert!(
                reply.ends_with("HTTP_PROXY=none"),
                "{host}{path} with {name}: {reply}"
            );
        }
    }
    server.stop().await;
}

/// Site code that lies about its response's length: the router must keep
/// every response to its own framing, whatever `Content-Length` PHP or a WSGI
/// app declares, so the bytes after it never become the answer to the
/// client's next request (for another site: `pb.test`). Each case runs on a
/// raw keep-alive connection that trusts the framing it is given.
#[tokio::test]
async fn site_code_cannot_frame_the_next_response_on_a_keep_alive_connection() {
    let cfg = TestConfig::new();
    let _users = runtime_sites(&cfg);
    let server = common::InProcess::start(&cfg).await;

    /// What the first response must be: a whole answer (status, body, the
    /// Content-Length it says), or cut (head, fewer bytes than it
    /// declared, then the connection closed). A streamed script that the
    /// router happens to read only once it is done (a busy machine) is
    /// refused whole instead: a 502, as for the unstreamed ones.
    enum Want {
        Answer(u16, &'static str, Option<&'static str>),
        Cut,
    }
    use Want::*;
    let cases: &[(&str, &str, &str, Want)] = &[
        (
            "GET",
            "pa.test",
            "/inject.php",
            Answer(502, "Bad Gateway\n", Some("12")),
        ),
        ("GET", "pa.test", "/inject-stream.php", Cut),
        ("GET", "pa.test", "/cross-stream.php", Cut),
        (
            "GET",
            "pa.test",
            "/short.php",
            Answer(502, "Bad Gateway\n", Some("12")),
        ),
        ("GET", "pa.test", "/short-stream.php", Cut),
        (
            "GET",
            "pa.test",
            "/exact.php",
            Answer(200, "hello", Some("5")),
        ),
        (
            "GET",
            "pa.test",
            "/exact-stream.php",
            Answer(200, "helloworld", Some("10")),
        ),
        (
            "HEAD",
            "pa.test",
            "/head.php",
            Answer(200, "", Some("1234")),
        ),
        ("GET", "pa.test", "/nocontent.php", Answer(204, "", None)),
        ("GET", "pa.test", "/notmod.php", Answer(304, "", None)),
        (
            "GET",
            "pa.test",
            "/style.css",
            Answer(200, "body{}\n", Some("7")),
        ),
        ("GET", "py.test", "/frame", Answer(200, "ok", Some("2"))),
        (
            "GET",
            "py.test",
            "/frame-stream",
            Answer(200, "ok", Some("2")),
        ),
    ];
    let mut cuts = 0;
    for (method, host, path, want) in cases {
        let what = format!("{method} {host}{path}");
        let mut c = common::edge::RawConn::connect(server.addr).await;
        c.send(&format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"))
            .await;
        let first = c
            .response(*method == "HEAD")
            .await
            .unwrap_or_else(|| panic!("{what}: no response head: {:?}", c.seen()));
        match want {
            Answer(status, body, length) => {
                assert_eq!(
                    (
                        first.status,
                        first.text().as_str(),
                        first.header("content-length")
                    ),
                    (*status, *body, *length),
                    "{what}: {first:?}"
                );
                assert!(first.complete, "{what}: {first:?}");
            }
            Cut if first.status == 502 && first.complete => {}
            Cut => {
                assert_eq!(first.status, 200, "{what}: {first:?}");
                assert!(!first.complete, "{what}: not cut: {first:?}");
                assert!(
                    c.closed().await,
                    "{what}: bytes after the cut: {:?}",
                    c.seen()
                );
                cuts += 1;
                continue;
            }
        }
        // The connection goes on: the next answer is the other site's own.
        c.send("GET / HTTP/1.1\r\nHost: pb.test\r\nConnection: close\r\n\r\n")
            .await;
        let second = c
            .response(false)
            .await
            .unwrap_or_else(|| panic!("{what}: no second response: {:?}", c.seen()));
        assert_eq!(
            (second.status, second.text().as_str()),
            (200, "site pb\n"),
            "{what}: the next request got another answer: {second:?}"
        );
        assert!(
            c.closed().await,
            "{what}: bytes after the answers: {:?}",
            c.seen()
        );
    }
    // The lies are logged for the site (logs are flushed twice a second).
    let log_path = cfg.path().join("log/pa.error.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let logged = common::eventually(Duration::from_secs(5), || async {
        let log = log();
        log.contains("declares Content-Length 2 but its body has")
            && (cuts == 0 || log.contains("response cut, connection closed"))
    })
    .await;
    assert!(logged, "{}", log());
    server.stop().await;
}
