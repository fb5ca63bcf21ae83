//! Routing, in process: `app::serve` on a listener bound to port 0, with
//! static sites whose index page names the site, so each answer shows which
//! site served it.

mod common;

use std::time::Duration;

use common::{get, raw, raw_status, Client, InProcess, TestConfig};

fn sites() -> TestConfig {
    let cfg = TestConfig::new();
    cfg.static_site("exact", &["example.test", "www.example.test"], "");
    cfg.static_site("wild", &["*.example.test"], "");
    cfg.static_site("deep", &["*.api.example.test"], "");
    cfg.static_site("fallback", &["fallback.test"], "default = true");
    cfg
}

#[tokio::test]
async fn host_matching_exact_then_longest_wildcard_then_default() {
    let cfg = sites();
    let server = InProcess::start(&cfg).await;
    let cases = [
        ("example.test", "site exact"),
        ("WWW.Example.TEST:8080", "site exact"),
        ("example.test.", "site exact"),
        ("shop.example.test", "site wild"),
        ("a.b.example.test", "site wild"),
        ("v1.api.example.test", "site deep"),
        ("unknown.test", "site fallback"),
        ("127.0.0.1", "site fallback"),
    ];
    for (host, want) in cases {
        let resp = get(server.addr, host, "/").await;
        assert_eq!(resp.status, 200, "{host}");
        assert_eq!(resp.text().trim(), want, "{host}");
    }
    server.stop().await;
}

#[tokio::test]
async fn unknown_host_without_default_site_is_421() {
    let cfg = TestConfig::new();
    cfg.static_site("only", &["only.test"], "");
    let server = InProcess::start(&cfg).await;
    let resp = get(server.addr, "other.test", "/").await;
    assert_eq!(resp.status, 421);
    assert!(resp.text().contains("no site"), "{}", resp.text());
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    server.stop().await;
}

#[tokio::test]
async fn http10_without_host_goes_to_default_and_http11_without_host_is_400() {
    let cfg = sites();
    let server = InProcess::start(&cfg).await;
    let reply = raw(server.addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(raw_status(&reply), 200, "{reply}");
    assert!(reply.contains("site fallback"), "{reply}");
    let reply = raw(server.addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(raw_status(&reply), 400, "{reply}");
    let reply = raw(
        server.addr,
        b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&reply), 400, "two Host headers: {reply}");
    server.stop().await;
}

#[tokio::test]
async fn keep_alive_connection_serves_many_requests_and_sites() {
    let cfg = sites();
    let server = InProcess::start(&cfg).await;
    let mut client = Client::connect(server.addr).await;
    for i in 0..20 {
        let host = if i % 2 == 0 {
            "example.test"
        } else {
            "x.example.test"
        };
        let resp = client.get(host, "/").await;
        assert_eq!(resp.status, 200);
        assert!(!client.is_closed());
    }
    server.stop().await;
}

/// More pipelined requests in one write than hyper's fresh state reads at
/// once (and more than `max_header_size`): each parking hands back what
/// hyper had read ahead, in front of what is still unread from before.
#[tokio::test]
async fn a_long_pipelined_burst_is_answered_whole_and_in_order() {
    let cfg = sites();
    let server = InProcess::start(&cfg).await;
    let s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let statuses = common::pipelined_statuses(s, "example.test", 400).await;
    assert_eq!(statuses.len(), 400, "answers: {}", statuses.len());
    assert!(
        statuses.iter().all(|l| l.starts_with("HTTP/1.1 200")),
        "{statuses:?}"
    );
    server.stop().await;
}

/// An idle HTTP/1 connection drops hyper's state between requests and
/// rebuilds it when bytes arrive: pipelined requests and a head split across
/// that pause must come through whole and in order.
#[tokio::test]
async fn pipelined_and_split_requests_survive_an_idle_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = sites();
    let server = InProcess::start(&cfg).await;
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n\
          GET / HTTP/1.1\r\nHost: x.example.test\r\n\r\n\
          GET / HTTP/1.1\r\nHost: fall",
    )
    .await
    .unwrap();
    let mut seen = String::new();
    common::read_until_count(
        &mut s,
        &mut seen,
        "HTTP/1.1 200",
        2,
        Duration::from_secs(10),
    )
    .await;
    // Idle long enough to be parked with half a head read ahead.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"back.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut seen))
        .await
        .expect("third answer")
        .unwrap();
    let order: Vec<_> = ["site exact", "site wild", "site fallback"]
        .iter()
        .map(|site| seen.find(site).unwrap_or_else(|| panic!("{site}: {seen}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{seen}");
    assert_eq!(seen.matches("HTTP/1.1 200").count(), 3, "{seen}");

    // After a pause on a kept-alive connection, the next request is served.
    let mut client = Client::connect(server.addr).await;
    assert_eq!(client.get("example.test", "/").await.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(client.get("x.example.test", "/").await.status, 200);
    assert!(!client.is_closed());
    server.stop().await;
}

#[tokio::test]
async fn access_log_records_requests_in_combined_format() {
    let cfg = sites();
    let server = InProcess::start(&cfg).await;
    let mut c = Client::connect(server.addr).await;
    let req = http::Request::builder()
        .uri("/missing?q=1")
        .header("host", "example.test")
        .header("user-agent", "polyhost-test/1")
        .header("referer", "http://ref.test/")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(c.send(req).await.status, 404);
    let log = cfg.path().join("log/exact.access.log");
    let found = common::eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(&log).unwrap_or_default().contains(
            "\"GET /missing?q=1 HTTP/1.1\" 404 10 \"http://ref.test/\" \"polyhost-test/1\"",
        )
    })
    .await;
    assert!(
        found,
        "access log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    server.stop().await;
}

#[tokio::test]
async fn body_larger_than_the_site_limit_is_413_before_reading() {
    let cfg = TestConfig::new();
    cfg.static_site("small", &["small.test"], "[limits]\nbody = \"1K\"");
    let server = InProcess::start(&cfg).await;
    let reply = raw(
        server.addr,
        b"POST / HTTP/1.1\r\nHost: small.test\r\nContent-Length: 5000000\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&reply), 413, "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn graceful_stop_finishes_then_refuses_new_connections() {
    let cfg = sites();
    let server = InProcess::start(&cfg).await;
    let addr = server.addr;
    assert_eq!(get(addr, "example.test", "/").await.status, 200);
    server.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed after stop"
    );
}

/// A client that connected just before a stop (an upgrade's handover, a
/// restart) is sending its first request: it has no response to retry on,
/// so its connection is not closed under it. The request is answered with
/// `Connection: close` and the connection then ends.
#[tokio::test]
async fn a_connection_accepted_before_a_stop_gets_its_first_request_answered() {
    first_request_answered_while_stopping(sites()).await;
}

/// The same with `h2c = true` (a plain connection may start HTTP/2).
#[tokio::test]
async fn an_h2c_capable_connection_accepted_before_a_stop_gets_its_first_request_answered() {
    let cfg = sites();
    cfg.main_extra("h2c = true");
    first_request_answered_while_stopping(cfg).await;
}

async fn first_request_answered_while_stopping(cfg: TestConfig) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = InProcess::start(&cfg).await;
    let addr = server.addr;
    let mut fresh = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A later connection answered: the earlier one left the listener's
    // (first in, first out) queue, accepted.
    assert_eq!(get(addr, "example.test", "/").await.status, 200);
    server.shutdown.cancel();
    common::wait_for(
        "the listener to close",
        Duration::from_secs(10),
        async || tokio::net::TcpStream::connect(addr).await.map(|_| ()),
        |connect| connect.is_err(),
    )
    .await
    .unwrap_err();
    // Stopping, the connection stays open for its first request a while.
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), fresh.peek(&mut byte)).await;
    assert!(
        early.is_err(),
        "the connection ended before its first request: {early:?}"
    );
    fresh
        .write_all(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), fresh.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply).to_lowercase();
    assert!(read.is_ok(), "not closed after the response: {reply}");
    assert_eq!(raw_status(&reply), 200, "{reply}");
    assert!(reply.contains("connection: close\r\n"), "{reply}");
    assert!(reply.ends_with("site exact\n"), "{reply}");
    let _ = server.task.await;
}
