//! HTTP/1 edge cases against the real binary, each sent by a raw client over
//! a socket: a client that half-closes after its request, request-target
//! forms (authority-form, `CONNECT`, asterisk-form, `OPTIONS *`), and
//! trailer fields that must never reach an application.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::edge::{RawConn, RawResponse};
use common::front::{self_signed, tls_connect, H2};
use common::{Binary, TestConfig, TestUser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The WSGI app of `py.test`: a slow answer, an echo, a counter that shows
/// whether a request ran, a slow stream that records how far it got, and
/// what the app sees of a request.
const APP: &str = r#"
import time

marks = 0
streamed = None


class Stream:
    """200 chunks of 1 KiB, 20 ms apart; close() records how many went."""

    def __init__(self):
        self.sent = 0

    def __iter__(self):
        while self.sent < 200:
            self.sent += 1
            yield b"x" * 1024
            time.sleep(0.02)

    def close(self):
        global streamed
        streamed = self.sent


def application(environ, start_response):
    global marks
    path = environ.get("PATH_INFO", "")
    body = b"py"
    if path == "/slow":
        time.sleep(float(environ.get("QUERY_STRING") or "0.5"))
        body = b"slept"
    elif path == "/echo":
        body = environ["wsgi.input"].read()
    elif path == "/mark":
        marks += 1
        body = b"marks=%d" % marks
    elif path == "/marks":
        body = b"marks=%d" % marks
    elif path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Stream()
    elif path == "/streamed":
        body = ("streamed=%s" % streamed).encode()
    elif path == "/env":
        lines = ["%s=%s" % (k, v) for k, v in sorted(environ.items())
                 if k.startswith("HTTP_") or k in ("CONTENT_LENGTH", "SERVER_NAME")]
        lines.append("body=%s" % environ["wsgi.input"].read().decode())
        body = "\n".join(lines).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
"#;

/// polyhost with `www.test` (static) and `py.test` (the app above, one
/// thread, the default site, also over TLS), plain and TLS listeners, h2c,
/// and a metrics listener.
struct Edges {
    bin: Binary,
    tls: SocketAddr,
    metrics: SocketAddr,
    _cfg: TestConfig,
    _user: TestUser,
}

impl Edges {
    async fn start() -> Edges {
        let cfg = TestConfig::new();
        let user = TestUser::new();
        common::edge::site(&cfg);
        cfg.write_cert("py", &self_signed(&["py.test"]));
        cfg.write("apps/edges.py", APP);
        common::python_test_site(
            &cfg,
            "py",
            &user,
            "edges",
            "default = true\n[tls]\ncert = \"certs/py.pem\"\nkey = \"certs/py.key\"\nredirect_http = false",
            "threads = 1",
        );
        cfg.main_extra(
            "h2c = true\ntls_listen = [\"127.0.0.1:0\"]\n[metrics]\nlisten = \"127.0.0.1:0\"",
        );
        let bin = Binary::start(&cfg.main(), &[]).await;
        let tls = bin.logged_addr("listening (TLS)").await;
        let metrics = bin.logged_addr("metrics listening").await;
        let edges = Edges {
            tls,
            metrics,
            bin,
            _cfg: cfg,
            _user: user,
        };
        let r = common::get(edges.bin.addr, "py.test", "/").await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "py"),
            "{}",
            edges.bin.log()
        );
        edges
    }

    /// `py.test`'s requests in flight, as the router counts them.
    async fn in_flight(&self) -> String {
        let m = common::get(self.metrics, "x", "/metrics").await.text();
        let line = m
            .lines()
            .find(|l| l.starts_with("polyhost_requests_in_flight{site=\"py\"}"));
        line.and_then(|l| l.split_whitespace().last())
            .unwrap_or("-")
            .to_owned()
    }

    /// Waits (bounded) until `py.test` has `n` requests in flight.
    async fn wait_in_flight(&self, n: &str) {
        let seen = std::cell::RefCell::new(String::new());
        let reached = common::eventually(Duration::from_secs(10), || async {
            let now = self.in_flight().await;
            *seen.borrow_mut() = now;
            *seen.borrow() == n
        })
        .await;
        assert!(
            reached,
            "py.test never had {n} requests in flight (last: {})",
            seen.borrow()
        );
    }

    async fn stop(self) {
        let log = self.bin.log();
        assert!(!log.contains("panicked"), "{log}");
        assert!(self.bin.terminate().await.success(), "{log}");
    }

    async fn text(&self, path: &str) -> String {
        common::get(self.bin.addr, "py.test", path).await.text()
    }
}

/// The `addr=` of the first log line that mentions `what`.
/// Sends `request` on a new connection, shuts down the sending side, and
/// reads one response (`None`: closed without one).
async fn half_closed(addr: SocketAddr, request: &str) -> Option<RawResponse> {
    let mut c = RawConn::connect(addr).await;
    c.send(request).await;
    c.shut_write().await;
    c.response(false).await
}

/// Over TLS: `first` answered (then an idle spell: the connection parks),
/// then `request`, the client's `close_notify` and its FIN; everything read
/// until the server closes.
async fn tls_exchange(e: &Edges, first: Option<&str>, request: &str) -> String {
    let mut tls = tls_connect(e.tls, "py.test", &["http/1.1"]).await.unwrap();
    if let Some(first) = first {
        tls.write_all(first.as_bytes()).await.unwrap();
        let mut seen = String::new();
        common::read_until_count(
            &mut tls,
            &mut seen,
            "\r\n\r\npy",
            1,
            Duration::from_secs(10),
        )
        .await;
        // An idle spell: the connection parks (drops hyper's state) after 50 ms.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tls.write_all(request.as_bytes()).await.unwrap();
    tls.shutdown().await.unwrap(); // close_notify, then the FIN
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_last_request_is_answered() {
    let e = Edges::start().await;
    let addr = e.bin.addr;
    // /slow answers after 0.5 s: the client's FIN is read long before.
    let cases: &[(&str, &str, &str)] = &[
        ("HTTP/1.0", "GET /slow HTTP/1.0\r\nHost: py.test\r\n\r\n", "slept"),
        ("HTTP/1.0, no Host", "GET /slow HTTP/1.0\r\n\r\n", "slept"),
        (
            "Connection: close",
            "GET /slow HTTP/1.1\r\nHost: py.test\r\nConnection: close\r\n\r\n",
            "slept",
        ),
        (
            "a body",
            "POST /echo HTTP/1.1\r\nHost: py.test\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
            "hello",
        ),
        ("static", "GET / HTTP/1.0\r\nHost: www.test\r\n\r\n", "site www\n"),
    ];
    for (what, request, body) in cases {
        let r = half_closed(addr, request).await;
        let r = r.unwrap_or_else(|| panic!("{what}: no answer\n{}", e.bin.log()));
        assert_eq!((r.status, r.text().as_str()), (200, *body), "{what}");
    }

    // Pipelined: a keep-alive request, then the last one, then the FIN.
    let mut c = RawConn::connect(addr).await;
    c.send("GET / HTTP/1.1\r\nHost: www.test\r\n\r\nGET /slow HTTP/1.1\r\nHost: py.test\r\nConnection: close\r\n\r\n").await;
    c.shut_write().await;
    let first = c.response(false).await.expect("the first answer");
    assert_eq!(first.text(), "site www\n");
    let last = c.response(false).await.expect("the last answer");
    assert_eq!((last.status, last.text().as_str()), (200, "slept"));
    assert!(c.closed().await);

    // A parked connection (idle after a keep-alive answer) that gets its
    // last request and a FIN.
    let mut c = RawConn::connect(addr).await;
    c.send("GET / HTTP/1.1\r\nHost: www.test\r\n\r\n").await;
    assert_eq!(c.response(false).await.unwrap().status, 200);
    // An idle spell: the connection parks (drops hyper's state) after 50 ms.
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send("GET /slow HTTP/1.0\r\nHost: py.test\r\n\r\n").await;
    c.shut_write().await;
    let r = c.response(false).await.expect("an answer after parking");
    assert_eq!((r.status, r.text().as_str()), (200, "slept"));

    // A parked connection whose client only half-closes: closed, no answer.
    let mut c = RawConn::connect(addr).await;
    c.send("GET / HTTP/1.1\r\nHost: www.test\r\n\r\n").await;
    assert_eq!(c.response(false).await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.shut_write().await;
    assert!(c.closed().await, "{}", c.seen());

    // Over TLS the client's close_notify is its half-close: fresh, and parked.
    let last = "GET /slow HTTP/1.1\r\nHost: py.test\r\nConnection: close\r\n\r\n";
    for first in [None, Some("GET / HTTP/1.1\r\nHost: py.test\r\n\r\n")] {
        let reply = tls_exchange(&e, first, last).await;
        let reply = reply.rsplit("HTTP/1.1 ").next().unwrap_or("");
        assert!(
            reply.starts_with("200 ") && reply.ends_with("slept"),
            "TLS, parked first: {}: {reply:?}",
            first.is_some()
        );
    }

    // A request that asked to keep the connection open, then the FIN: the
    // client went away (see `a_client_that_goes_away_is_still_noticed`).
    let mut c = RawConn::connect(addr).await;
    c.send("GET /slow HTTP/1.1\r\nHost: py.test\r\n\r\n").await;
    c.shut_write().await;
    assert!(c.closed().await, "{}", c.seen());
    common::edge::still_serving(addr).await;
    e.stop().await;
}

#[tokio::test]
async fn a_client_that_goes_away_is_still_noticed() {
    let e = Edges::start().await;
    let addr = e.bin.addr;
    let slow = "GET /slow?2.5 HTTP/1.1\r\nHost: py.test\r\nConnection: close\r\n\r\n";

    // A keep-alive request waits for the only thread; its client leaves:
    // the request never runs.
    let mut busy = RawConn::connect(addr).await;
    busy.send(slow).await;
    e.wait_in_flight("1").await;
    let mut gone = RawConn::connect(addr).await;
    gone.send("GET /mark HTTP/1.1\r\nHost: py.test\r\n\r\n")
        .await;
    e.wait_in_flight("2").await;
    drop(gone);
    e.wait_in_flight("1").await;
    assert_eq!(busy.response(false).await.unwrap().text(), "slept");
    assert_eq!(e.text("/marks").await, "marks=0");

    // The same wait after a half-close that ends the last request: answered.
    let mut busy = RawConn::connect(addr).await;
    busy.send(slow).await;
    e.wait_in_flight("1").await;
    let mut last = RawConn::connect(addr).await;
    last.send("GET /mark HTTP/1.0\r\nHost: py.test\r\n\r\n")
        .await;
    last.shut_write().await;
    e.wait_in_flight("2").await;
    assert_eq!(busy.response(false).await.unwrap().text(), "slept");
    let r = last
        .response(false)
        .await
        .expect("the half-closed client's answer");
    assert_eq!(r.text(), "marks=1");

    // A half-closed client that then leaves in the middle of a streamed
    // answer: the first write its kernel refuses ends the response, and
    // the app's iterable is closed long before its 200 chunks.
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /stream HTTP/1.1\r\nHost: py.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    c.shutdown().await.unwrap();
    let mut seen = String::new();
    common::read_until_count(&mut c, &mut seen, "xxxx", 1, Duration::from_secs(10)).await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    drop(c);
    let streamed = std::cell::RefCell::new(String::new());
    let ended = common::eventually(Duration::from_secs(10), || async {
        let now = e.text("/streamed").await;
        *streamed.borrow_mut() = now;
        *streamed.borrow() != "streamed=None"
    })
    .await;
    let streamed = streamed.into_inner();
    assert!(ended, "the stream still runs: {streamed}");
    let sent: u32 = streamed["streamed=".len()..].parse().unwrap();
    assert!(sent < 100, "{sent} of 200 chunks made for nobody");
    e.stop().await;
}

#[tokio::test]
async fn request_target_forms_are_checked_before_routing() {
    let e = Edges::start().await;
    let addr = e.bin.addr;
    let close = "Connection: close\r\n";
    // Authority-form without CONNECT, asterisk-form without OPTIONS: 400
    // (py.test, the default site, would answer them).
    for (line, host) in [
        ("GET py.test:443 HTTP/1.1", "py.test"),
        ("POST py.test:80 HTTP/1.1", "py.test"),
        ("OPTIONS py.test:80 HTTP/1.1", "py.test"),
        ("GET * HTTP/1.1", "py.test"),
        ("DELETE * HTTP/1.1", "www.test"),
    ] {
        let mut c = RawConn::connect(addr).await;
        c.send(&format!(
            "{line}\r\nHost: {host}\r\nContent-Length: 0\r\n{close}\r\n"
        ))
        .await;
        let r = c.response(false).await.unwrap();
        assert_eq!(r.status, 400, "{line}: {r:?}");
    }

    // CONNECT: 405 with Allow, then the connection closes; the bytes a
    // tunnel would carry are never read as a request.
    for line in ["CONNECT py.test:443 HTTP/1.1", "CONNECT / HTTP/1.1"] {
        let mut c = RawConn::connect(addr).await;
        c.send(&format!(
            "{line}\r\nHost: py.test:443\r\n\r\nGET /mark HTTP/1.1\r\nHost: py.test\r\n\r\n"
        ))
        .await;
        let r = c.response(false).await.unwrap();
        assert_eq!(r.status, 405, "{line}: {r:?}");
        assert!(
            r.header("allow").is_some_and(|a| a.contains("GET")),
            "{r:?}"
        );
        assert_eq!(r.header("connection"), Some("close"), "{r:?}");
        assert!(c.closed().await, "{line}: more after the 405: {}", c.seen());
    }
    assert_eq!(e.text("/marks").await, "marks=0");

    // OPTIONS *: the router answers for the server; the connection stays.
    let mut c = RawConn::connect(addr).await;
    for request in [
        "OPTIONS * HTTP/1.1\r\nHost: py.test\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: nowhere.test\r\n\r\n",
    ] {
        c.send(request).await;
        let r = c.response(false).await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, ""), "{r:?}");
        assert_eq!(r.header("content-length"), Some("0"));
        assert!(
            r.header("allow").is_some_and(|a| a.contains("OPTIONS")),
            "{r:?}"
        );
    }
    c.send("GET / HTTP/1.1\r\nHost: www.test\r\n\r\n").await;
    assert_eq!(c.response(false).await.unwrap().text(), "site www\n");
    let r = half_closed(addr, "OPTIONS * HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = half_closed(addr, "OPTIONS * HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 400, "no Host in HTTP/1.1");

    // HTTP/2 (h2c): the same answers, nothing breaks the connection.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut h2 = H2::handshake(stream).await;
    let req = |method: &str, uri: http::Uri| {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap()
    };
    let star = |scheme| {
        http::Uri::builder()
            .scheme(scheme)
            .authority("py.test")
            .path_and_query("*")
            .build()
            .unwrap()
    };
    let r = h2
        .send(req("CONNECT", "py.test:443".parse().unwrap()))
        .await;
    assert_eq!(r.status, 405, "h2 CONNECT");
    assert!(r.header("allow").is_some());
    let r = h2.send(req("OPTIONS", star("http"))).await;
    assert_eq!(
        (r.status, r.header("allow").is_some()),
        (200, true),
        "h2 OPTIONS *"
    );
    let r = h2.send(req("GET", star("http"))).await;
    assert_eq!(r.status, 400, "h2 GET *");
    let r = h2.get("http://py.test/").await;
    assert_eq!((r.status, r.text().as_str()), (200, "py"));
    assert_eq!(e.text("/marks").await, "marks=0");
    e.stop().await;
}

/// A chunked request whose trailer section repeats head fields (and adds one):
/// `Content-Length`, `Host` and `Transfer-Encoding` there must never be
/// taken for the head's (RFC 9110 §6.5.1). Nothing of a trailer reaches the
/// application: the router drops the trailer section for every runtime.
const TRAILED: &str = "POST /env HTTP/1.1\r\nHost: HOST\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nTrailer: Content-Length, Host, X-Check\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 999\r\nHost: evil.test\r\nTransfer-Encoding: gzip\r\nX-Forwarded-For: 6.6.6.6\r\nX-Check: trailer-value\r\n\r\n";

/// What no application may see of [`TRAILED`]'s trailer.
fn assert_no_trailer(what: &str, env: &str, host: &str) {
    for line in [
        "CONTENT_LENGTH=5".to_owned(),
        format!("HTTP_HOST={host}"),
        "body=hello".into(),
    ] {
        assert!(env.lines().any(|l| l == line), "{what}: no {line}:\n{env}");
    }
    for leak in [
        "999",
        "evil",
        "gzip",
        "6.6.6.6",
        "trailer-value",
        "TRANSFER_ENCODING",
        "X_CHECK",
    ] {
        assert!(
            !env.contains(leak),
            "{what}: {leak} reached the app:\n{env}"
        );
    }
}

#[tokio::test]
async fn trailer_fields_never_reach_the_app() {
    let cfg = TestConfig::new();
    let (php_user, py_user) = (TestUser::new(), TestUser::new());
    cfg.write(
        "www/pa/env.php",
        r#"<?php
header('Content-Type: text/plain');
$lines = [];
foreach ($_SERVER as $k => $v) {
    if (str_starts_with($k, 'HTTP_') || $k === 'CONTENT_LENGTH') $lines[] = "$k=$v";
}
sort($lines);
$lines[] = 'body=' . file_get_contents('php://input');
echo implode("\n", $lines);
"#,
    );
    cfg.write(
        "vhosts/pa.toml",
        &format!(
            "hosts = [\"pa.test\"]\nroot = \"www/pa\"\nuser = \"{}\"\n[php]\nmax_children = 2\n",
            php_user.name
        ),
    );
    cfg.write("apps/edges.py", APP);
    common::python_test_site(&cfg, "py", &py_user, "edges", "", "");
    cfg.main_extra("h2c = true");
    let bin = Binary::start(&cfg.main(), &[]).await;
    let addr = bin.addr;

    for (host, path) in [("py.test", "/env"), ("pa.test", "/env.php")] {
        let request = TRAILED.replace("HOST", host).replace("/env", path);
        let mut c = RawConn::connect(addr).await;
        c.send(&request).await;
        let r = c.response(false).await.unwrap();
        assert_eq!(r.status, 200, "{host}: {r:?}\n{}", bin.log());
        assert_no_trailer(host, &r.text(), host);
    }

    // HTTP/2 trailers (h2c): the same.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for (host, path) in [("py.test", "/env"), ("pa.test", "/env.php")] {
        let mut trailer = http::HeaderMap::new();
        trailer.insert("content-length", "999".parse().unwrap());
        trailer.insert("host", "evil.test".parse().unwrap());
        trailer.insert("x-check", "trailer-value".parse().unwrap());
        let frames: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(http_body::Frame::data(Bytes::from_static(b"hello"))),
            Ok(http_body::Frame::trailers(trailer)),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let req = http::Request::post(format!("http://{host}{path}"))
            .body(body)
            .unwrap();
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        let env = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let env = String::from_utf8_lossy(&env);
        assert_eq!(status, 200, "h2 {host}: {env}");
        // HTTP/2 sends no length for a streamed body: the runtime counts it.
        assert_no_trailer(&format!("h2 {host}"), &env, host);
    }
    assert!(bin.terminate().await.success());
}
