//! Limits that hold against hostile clients, each triggered by a real client
//! over a socket: head size and field count (431), target length (414), body
//! size while streaming (413), header and keep-alive timeouts, connection
//! limits (total and per IP), HTTP/2 streams per connection, a slowloris
//! run, body and send timeouts, and the validation of the front-door keys.
//! After each, polyhost still serves a normal client. (Smuggling and header
//! hygiene: `tests/proxy.rs`.)

mod common;

use common::edge::{chunked, site, still_serving};

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::front::{self_signed, tls_connect, Echo, Front, H2};
use common::{connect_from, get_as, raw, raw_on, raw_status, Client, TestConfig, NOBODY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// At the default `max_headers` (100, hyper's own limit, which the router
/// then leaves to hyper: `router::server::hyper_max_headers`), a head of
/// exactly 100 fields is served and one of 101 is 431.
#[tokio::test]
async fn the_default_max_headers_admits_100_fields_and_refuses_101() {
    let cfg = TestConfig::new();
    site(&cfg);
    let front = Front::start(&cfg, vec![]).await;
    let head = |fields: usize| {
        // Host and Connection are two of the fields.
        let mut h = String::from("GET / HTTP/1.1\r\nHost: www.test\r\nConnection: close\r\n");
        for i in 0..fields - 2 {
            h.push_str(&format!("X-H{i}: {i}\r\n"));
        }
        h.push_str("\r\n");
        h
    };
    assert_eq!(
        raw_status(&raw(front.http, head(100).as_bytes()).await),
        200,
        "100 fields, the default max_headers"
    );
    assert_eq!(
        raw_status(&raw(front.http, head(101).as_bytes()).await),
        431,
        "101 fields, above the default max_headers"
    );
    still_serving(front.http).await;
}

#[tokio::test]
async fn oversized_heads_are_431_long_targets_414_and_others_are_still_served() {
    let cfg = TestConfig::new();
    site(&cfg);
    cfg.main_extra("[limits]\nmax_header_size = \"8K\"\nmax_headers = 20\nmax_uri_length = 1024");
    let front = Front::start(&cfg, vec![]).await;
    let addr = front.http;

    let big = format!(
        "GET / HTTP/1.1\r\nHost: www.test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(10_000)
    );
    assert_eq!(
        raw_status(&raw(addr, big.as_bytes()).await),
        431,
        "head larger than max_header_size"
    );

    let mut many = String::from("GET / HTTP/1.1\r\nHost: www.test\r\nConnection: close\r\n");
    for i in 0..30 {
        many.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(
        raw_status(&raw(addr, many.as_bytes()).await),
        431,
        "more than max_headers"
    );

    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: www.test\r\nConnection: close\r\n\r\n",
        "x".repeat(2000)
    );
    assert_eq!(
        raw_status(&raw(addr, long.as_bytes()).await),
        414,
        "target longer than max_uri_length"
    );
    let ok = format!(
        "GET /{} HTTP/1.1\r\nHost: www.test\r\nConnection: close\r\n\r\n",
        "x".repeat(900)
    );
    assert_eq!(
        raw_status(&raw(addr, ok.as_bytes()).await),
        404,
        "below the limit: routed"
    );

    // The same limits over HTTP/2.
    cfg.tls_site("sec", &["sec.test"], "", "", &self_signed(&["sec.test"]));
    front.reload(&cfg);
    let tls = tls_connect(front.https, "sec.test", &["h2"]).await.unwrap();
    let mut h2 = H2::handshake(tls).await;
    let r = h2
        .get(&format!("https://sec.test/{}", "x".repeat(2000)))
        .await;
    assert_eq!(r.status, 414);
    let mut req = http::Request::builder().uri("https://sec.test/");
    for i in 0..30 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let r = h2
        .send(req.body(http_body_util::Full::new(Bytes::new())).unwrap())
        .await;
    assert_eq!(r.status, 431);
    let r = h2.get("https://sec.test/").await;
    assert_eq!(r.status, 200, "the HTTP/2 connection still serves");

    still_serving(addr).await;
    front.stop().await;
}

#[tokio::test]
async fn chunked_bodies_beyond_the_site_limit_are_413_and_static_files_ignore_bodies() {
    let cfg = TestConfig::new();
    cfg.static_site("app", &["app.test"], "[limits]\nbody = \"1K\"");
    cfg.static_site("www", &["www.test"], "[limits]\nbody = \"1K\"");
    let echo: Arc<dyn polyhost::upstream::Upstream> = Arc::new(Echo::default());
    let front = Front::start(&cfg, vec![("app", echo)]).await;

    let reply = raw(front.http, &chunked("POST", "app.test", "/", 5000)).await;
    assert_eq!(raw_status(&reply), 413, "{reply}");
    let reply = raw(front.http, &chunked("POST", "app.test", "/", 1000)).await;
    assert_eq!(raw_status(&reply), 200, "{reply}");
    assert!(reply.contains("body-bytes: 1000\n"), "{reply}");
    // Content-Length above the limit: 413 before reading.
    let reply = raw(
        front.http,
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&reply), 413, "{reply}");
    // Static files never read the body.
    let reply = raw(front.http, &chunked("GET", "www.test", "/", 5000)).await;
    assert_eq!(raw_status(&reply), 200, "{reply}");
    front.stop().await;
}

/// Waits for the server to close `s`; returns how long that took.
async fn closed_after(s: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn header_timeout_closes_slow_heads_and_keepalive_timeout_closes_idle_connections() {
    let cfg = TestConfig::new();
    site(&cfg);
    cfg.main_extra("[limits]\nheader_timeout = \"1s\"\nkeepalive_timeout = \"3s\"");
    let front = Front::start(&cfg, vec![]).await;
    let addr = front.http;

    // Nothing sent at all: the first head is due within header_timeout.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Half a head, then silence.
    let mut partial = tokio::net::TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(b"GET / HTTP/1.1\r\nHost: www")
        .await
        .unwrap();
    for s in [&mut silent, &mut partial] {
        let took = closed_after(s, Duration::from_secs(5))
            .await
            .expect("closed");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    // A served keep-alive connection, then idle: closed after keepalive_timeout,
    // not after header_timeout.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: www.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert_eq!(raw_status(&String::from_utf8_lossy(&buf[..n])), 200);
    let took = closed_after(&mut idle, Duration::from_secs(8))
        .await
        .expect("closed when idle");
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(6),
        "{took:?}"
    );

    // Served, then half of the next head: due within header_timeout from
    // its first byte, though the connection's keep-alive clock runs longer.
    let mut slow_next = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow_next
        .write_all(b"GET / HTTP/1.1\r\nHost: www.test\r\n\r\n")
        .await
        .unwrap();
    let n = slow_next.read(&mut buf).await.unwrap();
    assert_eq!(raw_status(&String::from_utf8_lossy(&buf[..n])), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    slow_next.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let took = closed_after(&mut slow_next, Duration::from_secs(8))
        .await
        .expect("closed");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(2200),
        "{took:?}"
    );

    // A connection that keeps sending requests is not idle.
    let mut client = Client::connect(addr).await;
    for _ in 0..8 {
        assert_eq!(client.get("www.test", "/").await.status, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!client.is_closed());
    still_serving(addr).await;
    front.stop().await;
}

/// Is `s` refused: a 503 or a close, right away?
async fn refused(s: tokio::net::TcpStream) -> bool {
    let reply = raw_on(
        s,
        b"GET / HTTP/1.1\r\nHost: www.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    reply.is_empty() || raw_status(&reply) == 503
}

/// One request on `s` without closing it: true once its 200 head and body came.
async fn answered_keeping_alive(s: &mut tokio::net::TcpStream) -> bool {
    if s.write_all(b"GET / HTTP/1.1\r\nHost: www.test\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if head.starts_with("HTTP/1.1 200") && len.is_some_and(|l| body.len() >= l) {
                return true;
            }
        }
    }
}

#[tokio::test]
async fn connections_beyond_the_per_ip_limit_are_refused_and_other_clients_served() {
    let cfg = TestConfig::new();
    site(&cfg);
    cfg.main_extra("[limits]\nmax_connections_per_ip = 4\nkeepalive_timeout = \"120s\"");
    let front = Front::start(&cfg, vec![]).await;
    // Each held connection is answered once (and kept alive), so the router
    // has admitted all four before the fifth arrives: two lanes accept at
    // once, and a fifth counted before the fourth would refuse the fourth.
    let mut held = Vec::new();
    for i in 0..4 {
        let mut s = connect_from("127.0.0.1", front.http).await;
        let answered = answered_keeping_alive(&mut s).await;
        assert!(answered, "held connection {i} was answered");
        held.push(s);
    }
    assert!(
        refused(connect_from("127.0.0.1", front.http).await).await,
        "fifth from one IP"
    );
    // A client that sends nothing first reads the refusal itself: a 503, then the close.
    let mut sixth = connect_from("127.0.0.1", front.http).await;
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(3), sixth.read_to_string(&mut reply))
        .await
        .expect("closed within 3s")
        .expect("read");
    assert_eq!(raw_status(&reply), 503, "{reply:?}");
    assert!(reply.contains("Retry-After: 1"), "{reply}");
    assert!(
        refused(connect_from("127.0.0.2", front.http).await).await,
        "another loopback address of the same local user is the same client"
    );
    let r = get_as(NOBODY, "127.0.0.2", front.http, "www.test", "/").await;
    assert_eq!(
        r.status, 200,
        "another client (another local user) is served"
    );
    drop(held);
    let ok = common::eventually(Duration::from_secs(5), || async {
        let s = connect_from("127.0.0.1", front.http).await;
        !refused(s).await
    })
    .await;
    assert!(ok, "served again once its connections closed");
    front.stop().await;
}

#[tokio::test]
async fn connections_beyond_max_connections_are_refused_until_one_closes() {
    let cfg = TestConfig::new();
    site(&cfg);
    cfg.main_extra("[limits]\nmax_connections = 4\nkeepalive_timeout = \"120s\"");
    let front = Front::start(&cfg, vec![]).await;
    // Answered once each, so all four are admitted before the fifth comes.
    let mut held = Vec::new();
    for i in 1..=4 {
        let mut s = connect_from(&format!("127.0.0.{i}"), front.http).await;
        assert!(
            answered_keeping_alive(&mut s).await,
            "held connection {i} was answered"
        );
        held.push(s);
    }
    assert!(refused(connect_from("127.0.0.9", front.http).await).await);
    held.pop();
    let ok = common::eventually(Duration::from_secs(5), || async {
        !refused(connect_from("127.0.0.9", front.http).await).await
    })
    .await;
    assert!(ok, "served once a connection closed");
    front.stop().await;
}

#[tokio::test]
async fn http2_streams_per_connection_are_bounded() {
    let cfg = TestConfig::new();
    cfg.tls_site("app", &["app.test"], "", "", &self_signed(&["app.test"]));
    cfg.main_extra("[limits]\nh2_max_streams = 2");
    let echo = Arc::new(Echo::default());
    let up: Arc<dyn polyhost::upstream::Upstream> = echo.clone();
    let front = Front::start(&cfg, vec![("app", up)]).await;
    let tls = tls_connect(front.https, "app.test", &["h2"]).await.unwrap();
    let mut h2 = H2::handshake(tls).await;
    assert_eq!(
        h2.get("https://app.test/").await.status,
        200,
        "settings exchanged"
    );
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let mut c = h2.clone();
        tasks.push(tokio::spawn(async move {
            c.get("https://app.test/hold").await.status
        }));
    }
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            echo.in_flight.load(SeqCst) == 2
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(echo.in_flight.load(SeqCst), 2, "a third stream waits");
    let done = common::eventually(Duration::from_secs(10), || async {
        echo.release.notify_waiters();
        tasks.iter().all(|t| t.is_finished())
    })
    .await;
    assert!(done);
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(echo.max_in_flight.load(SeqCst), 2);
    front.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_run_does_not_stop_a_normal_client() {
    let cfg = TestConfig::new();
    site(&cfg);
    // Defaults: header_timeout 10 s, 256 connections per IP.
    let front = Front::start(&cfg, vec![]).await;
    let addr = front.http;
    let start = Instant::now();
    let mut attackers = Vec::new();
    for _ in 0..300 {
        attackers.push(tokio::spawn(async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                return true;
            };
            if s.write_all(b"GET / HTTP/1.1\r\nHost: www.test\r\n")
                .await
                .is_err()
            {
                return true;
            }
            let mut buf = [0u8; 256];
            while start.elapsed() < Duration::from_secs(14) {
                // One header byte a second; stop once the server closed us.
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return true,
                    Ok(Ok(_)) => return true, // a 503 refusal
                    Err(_) => {}
                }
                if s.write_all(b"X").await.is_err() {
                    return true;
                }
            }
            false
        }));
    }
    let mut served = 0;
    while start.elapsed() < Duration::from_secs(12) {
        let t = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(3),
            get_as(NOBODY, "127.0.0.2", addr, "www.test", "/"),
        )
        .await
        .expect("a normal client is served promptly during the attack");
        assert_eq!(r.status, 200);
        assert!(t.elapsed() < Duration::from_secs(3));
        served += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(served >= 15, "{served}");
    let mut closed = 0;
    for a in attackers {
        if a.await.unwrap() {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 300,
        "every slow connection was refused or closed by header_timeout"
    );
    still_serving(addr).await;
    front.stop().await;
}

#[test]
fn front_door_keys_are_validated_naming_file_and_key() {
    let cfg = TestConfig::new();
    site(&cfg);
    cfg.main_extra(
        "tls_listen = [\"nowhere\"]\ntrusted_proxies = [\"10.0.0.0/33\", \"192.0.2.1\"]\ntrusted_proxy_users = [\"root\", \"no-such-user-here\"]\n[limits]\nmax_header_size = \"1K\"\nheader_timeout = \"soon\"\nh2_max_streams = 0\nkeepalive_timeout = 0\nbody_timeout = \"x\"",
    );
    let errors = polyhost::config::load(&cfg.main()).unwrap_err().to_string();
    for key in [
        "polyhost.toml: tls_listen[0]: ",
        "polyhost.toml: trusted_proxies[0]: ",
        "polyhost.toml: trusted_proxy_users[1]: \"no-such-user-here\" is not a user",
        "polyhost.toml: limits.max_header_size: ",
        "polyhost.toml: limits.header_timeout: ",
        "polyhost.toml: limits.h2_max_streams: ",
        "polyhost.toml: limits.keepalive_timeout: ",
        "polyhost.toml: limits.body_timeout: ",
    ] {
        assert!(errors.contains(key), "{key} missing in:\n{errors}");
    }
    assert!(!errors.contains("trusted_proxies[1]"), "{errors}");
    assert!(!errors.contains("trusted_proxy_users[0]"), "{errors}");

    // The documented defaults.
    let cfg = TestConfig::new();
    site(&cfg);
    let limits = cfg.load().server.front.limits;
    assert_eq!(limits, polyhost::config::ServerLimits::default());
    assert_eq!(
        (
            limits.header_timeout,
            limits.keepalive_timeout,
            limits.body_timeout
        ),
        (
            Duration::from_secs(10),
            Duration::from_secs(75),
            Duration::from_secs(60)
        )
    );
    assert_eq!(
        (
            limits.max_header_size,
            limits.max_headers,
            limits.max_uri_length
        ),
        (32 << 10, 100, 8192)
    );
    assert_eq!(
        (
            limits.max_connections,
            limits.max_connections_per_ip,
            limits.h2_max_streams
        ),
        (10_000, 256, 128)
    );
}

#[tokio::test]
async fn a_stalled_request_body_is_408_after_body_timeout() {
    let cfg = TestConfig::new();
    cfg.static_site("app", &["app.test"], "");
    site(&cfg);
    cfg.main_extra("[limits]\nbody_timeout = \"1s\"");
    let echo: Arc<dyn polyhost::upstream::Upstream> = Arc::new(Echo::default());
    let front = Front::start(&cfg, vec![("app", echo)]).await;
    // Ten bytes of a hundred, then nothing.
    let mut s = tokio::net::TcpStream::connect(front.http).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let start = Instant::now();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(raw_status(&reply), 408, "{reply}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    // A body that keeps coming, slower than the timeout in total, is fine.
    let mut s = tokio::net::TcpStream::connect(front.http).await.unwrap();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 6\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for b in b"abcdef" {
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.write_all(&[*b]).await.unwrap();
    }
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(raw_status(&reply), 200, "{reply}");
    assert!(reply.contains("body-bytes: 6\n"), "{reply}");
    still_serving(front.http).await;
    front.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_the_send_timeout() {
    let cfg = TestConfig::new();
    site(&cfg);
    let big = std::fs::File::create(cfg.path().join("www/www/big.bin")).unwrap();
    big.set_len(64 << 20).unwrap();
    cfg.main_extra("[limits]\nmax_connections = 1\nsend_timeout = \"1s\"");
    let front = Front::start(&cfg, vec![]).await;
    // Ask for a large file and never read: the response fills the socket buffers.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(front.http).await.unwrap();
    stalled
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: www.test\r\n\r\n")
        .await
        .unwrap();
    // Its response has begun: it holds the only slot (the rest stays unread).
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), stalled.read_exact(&mut head))
        .await
        .expect("the response began")
        .unwrap();
    assert!(
        refused(connect_from("127.0.0.2", front.http).await).await,
        "the only slot is taken"
    );
    let freed = common::eventually(Duration::from_secs(10), || async {
        !refused(connect_from("127.0.0.2", front.http).await).await
    })
    .await;
    assert!(
        freed,
        "the stalled connection was closed after send_timeout"
    );
    drop(stalled);
    front.stop().await;
}
