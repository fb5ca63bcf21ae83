//! TLS and HTTP/2 at the front door: certificates chosen by SNI like hosts
//! (exact, wildcard, default site), ALPN `h2`, a new routing table serving
//! new certificates to new connections while old ones keep going, the
//! HTTP→HTTPS redirect, `https` reaching the app, h2c only when configured,
//! `polyhost check` naming a bad certificate pair, and HTTP/1.1 over TLS
//! served across parking (idle spells, pipelining, a long pipelined burst,
//! a request sent with the handshake's last flight).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::front::{
    h1_over, self_signed, send_h1, served_cert, tls_client_config, tls_connect, Echo, Front, H2,
};
use common::{raw, raw_status, request, TestConfig};

struct Certs {
    alpha: common::front::Cert,
    wild: common::front::Cert,
    fallback: common::front::Cert,
}

/// alpha.test (own cert), *.wild.test (own cert), fallback (default, own cert),
/// plain.test (no TLS).
fn sites() -> (TestConfig, Certs) {
    let cfg = TestConfig::new();
    let certs = Certs {
        alpha: self_signed(&["alpha.test"]),
        wild: self_signed(&["*.wild.test"]),
        fallback: self_signed(&["fallback.test"]),
    };
    cfg.tls_site("alpha", &["alpha.test"], "", "", &certs.alpha);
    cfg.tls_site("wild", &["*.wild.test"], "", "", &certs.wild);
    cfg.tls_site(
        "fallback",
        &["fallback.test"],
        "default = true",
        "",
        &certs.fallback,
    );
    cfg.static_site("plain", &["plain.test"], "");
    (cfg, certs)
}

#[tokio::test]
async fn sni_picks_the_site_certificate_and_unknown_names_get_the_default_site_certificate() {
    let (cfg, certs) = sites();
    let front = Front::start(&cfg, vec![]).await;
    let cases = [
        ("alpha.test", &certs.alpha, "site alpha"),
        ("ALPHA.test", &certs.alpha, "site alpha"),
        ("shop.wild.test", &certs.wild, "site wild"),
        ("unknown.test", &certs.fallback, "site fallback"),
        // A site without [tls]: the default site's certificate, the site's content.
        ("plain.test", &certs.fallback, "site plain"),
    ];
    // No SNI at all (a client connecting by address): the default site's certificate.
    let tls = tls_connect(front.https, "127.0.0.1", &[]).await.unwrap();
    assert!(served_cert(&tls) == certs.fallback.der, "no SNI");
    for (sni, cert, body) in cases {
        let tls = tls_connect(front.https, sni, &["http/1.1"]).await.unwrap();
        assert!(served_cert(&tls) == cert.der, "{sni}: wrong certificate");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let mut h1 = h1_over(tls).await;
        let r = send_h1(&mut h1, request("GET", sni, "/")).await;
        assert_eq!((r.status, r.text().trim()), (200, body), "{sni}");
    }
    front.stop().await;
}

#[tokio::test]
async fn no_certificate_for_the_name_and_no_default_refuses_the_handshake() {
    let cfg = TestConfig::new();
    cfg.tls_site(
        "alpha",
        &["alpha.test"],
        "",
        "",
        &self_signed(&["alpha.test"]),
    );
    let front = Front::start(&cfg, vec![]).await;
    assert!(tls_connect(front.https, "other.test", &[]).await.is_err());
    assert!(tls_connect(front.https, "alpha.test", &[]).await.is_ok());
    front.stop().await;
}

#[tokio::test]
async fn http2_is_negotiated_with_alpn_and_routes_by_authority() {
    let (cfg, _) = sites();
    let front = Front::start(&cfg, vec![]).await;
    let tls = tls_connect(front.https, "alpha.test", &["h2", "http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h2 = H2::handshake(tls).await;
    // One connection, several requests; HTTP/2 has no Host header: the
    // authority routes (here also to a site whose certificate differs).
    for _ in 0..3 {
        let r = h2.get("https://alpha.test/").await;
        assert_eq!((r.status, r.text().trim()), (200, "site alpha"));
    }
    let r = h2.get("https://x.wild.test/").await;
    assert_eq!((r.status, r.text().trim()), (200, "site wild"));
    let r = h2.get("https://alpha.test/missing").await;
    assert_eq!(r.status, 404);
    front.stop().await;
}

#[tokio::test]
async fn the_app_sees_https_and_the_host_over_tls_and_h2() {
    let cfg = TestConfig::new();
    let cert = self_signed(&["app.test"]);
    cfg.tls_site("app", &["app.test"], "", "", &cert);
    let echo: Arc<dyn polyhost::upstream::Upstream> = Arc::new(Echo::default());
    let front = Front::start(&cfg, vec![("app", echo)]).await;

    let tls = tls_connect(front.https, "app.test", &["h2"]).await.unwrap();
    let mut h2 = H2::handshake(tls).await;
    let r = h2.get("https://app.test/x?y=1").await;
    let text = r.text();
    assert!(text.contains("scheme: https\n"), "{text}");
    assert!(text.contains("host: app.test\n"), "{text}");
    assert!(text.contains("version: HTTP/2.0\n"), "{text}");
    // The Host header the app sees is the authority that was routed on.
    assert!(text.contains("\nhost: app.test\n"), "{text}");
    assert!(text.contains("x-forwarded-proto: https\n"), "{text}");

    let tls = tls_connect(front.https, "app.test", &["http/1.1"])
        .await
        .unwrap();
    let mut h1 = h1_over(tls).await;
    let r = send_h1(&mut h1, request("GET", "app.test", "/")).await;
    assert!(r.text().contains("scheme: https\n"), "{}", r.text());
    front.stop().await;
}

#[tokio::test]
async fn plain_http_is_redirected_to_https_keeping_host_path_and_query() {
    let (cfg, _) = sites();
    cfg.tls_site(
        "stay",
        &["stay.test"],
        "",
        "redirect_http = false",
        &self_signed(&["stay.test"]),
    );
    let front = Front::start(&cfg, vec![]).await;
    let r = common::get(front.http, "alpha.test", "/a/b?c=d&e").await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some(format!("https://alpha.test:{}/a/b?c=d&e", front.https.port()).as_str())
    );
    // redirect_http = false, and sites without [tls]: served over plain HTTP.
    assert_eq!(common::get(front.http, "stay.test", "/").await.status, 200);
    assert_eq!(common::get(front.http, "plain.test", "/").await.status, 200);
    front.stop().await;
}

#[tokio::test]
async fn a_new_routing_table_serves_the_new_certificate_while_old_connections_keep_working() {
    let (cfg, certs) = sites();
    let front = Front::start(&cfg, vec![]).await;
    let old = tls_connect(front.https, "alpha.test", &["http/1.1"])
        .await
        .unwrap();
    assert!(served_cert(&old) == certs.alpha.der);
    let mut old = h1_over(old).await;
    assert_eq!(
        send_h1(&mut old, request("GET", "alpha.test", "/"))
            .await
            .status,
        200
    );

    // The panel renews the certificate; a reload swaps in a new table.
    let renewed = self_signed(&["alpha.test", "www.alpha.test"]);
    cfg.write_cert("alpha", &renewed);
    let still_old = tls_connect(front.https, "alpha.test", &[]).await.unwrap();
    assert!(
        served_cert(&still_old) == certs.alpha.der,
        "no reload yet: old certificate"
    );
    front.reload(&cfg);

    let new = tls_connect(front.https, "alpha.test", &["http/1.1"])
        .await
        .unwrap();
    assert!(
        served_cert(&new) == renewed.der,
        "new connections get the new certificate"
    );
    let mut new = h1_over(new).await;
    assert_eq!(
        send_h1(&mut new, request("GET", "alpha.test", "/"))
            .await
            .status,
        200
    );
    // The connection made before the reload was not dropped.
    for _ in 0..3 {
        let r = send_h1(&mut old, request("GET", "alpha.test", "/")).await;
        assert_eq!((r.status, r.text().trim()), (200, "site alpha"));
    }
    front.stop().await;
}

#[tokio::test]
async fn h2c_only_when_configured() {
    let (cfg, _) = sites();
    let front = Front::start(&cfg, vec![]).await;
    // Without h2c, the HTTP/2 preface is not HTTP/1.1: refused.
    let reply = raw(front.http, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    assert!(
        !reply.contains("HTTP/2") || raw_status(&reply) >= 400,
        "{reply:?}"
    );
    front.stop().await;

    cfg.main_extra("h2c = true");
    let front = Front::start(&cfg, vec![]).await;
    let tcp = tokio::net::TcpStream::connect(front.http).await.unwrap();
    let mut h2 = tokio::time::timeout(Duration::from_secs(5), H2::handshake(tcp))
        .await
        .unwrap();
    let r = h2.get("http://plain.test/").await;
    assert_eq!((r.status, r.text().trim()), (200, "site plain"));
    // HTTP/1.1 still works on the same listener.
    assert_eq!(common::get(front.http, "plain.test", "/").await.status, 200);
    front.stop().await;
}

#[tokio::test]
async fn polyhost_reload_serves_a_renewed_certificate_without_dropping_connections() {
    let (cfg, certs) = sites();
    let server = polyhost::app::Server::start(cfg.load()).await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = https.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(polyhost::app::serve_with(
        server.clone(),
        polyhost::router::Listeners {
            http: vec![http],
            https: vec![https],
        },
        shutdown.clone(),
    ));
    let tls = tls_connect(addr, "x.wild.test", &["h2"]).await.unwrap();
    assert!(served_cert(&tls) == certs.wild.der);
    let mut old = H2::handshake(tls).await;
    assert_eq!(old.get("https://x.wild.test/").await.status, 200);

    // A renewed certificate whose key does not match yet: the reload is refused.
    let renewed = self_signed(&["*.wild.test"]);
    cfg.write("certs/wild.pem", &renewed.cert_pem);
    let refused = server.reload().await;
    assert!(refused.is_err(), "mismatched pair must refuse the reload");
    let tls = tls_connect(addr, "x.wild.test", &[]).await.unwrap();
    assert!(
        served_cert(&tls) == certs.wild.der,
        "still the old certificate"
    );

    cfg.write("certs/wild.key", &renewed.key_pem);
    server.reload().await.unwrap();
    let tls = tls_connect(addr, "x.wild.test", &["h2"]).await.unwrap();
    assert!(
        served_cert(&tls) == renewed.der,
        "new connections: the renewed certificate"
    );
    let mut new = H2::handshake(tls).await;
    assert_eq!(new.get("https://x.wild.test/").await.status, 200);
    assert_eq!(
        old.get("https://x.wild.test/").await.status,
        200,
        "old connection kept"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn check_names_the_site_file_and_key_of_a_bad_certificate_pair() {
    let cfg = TestConfig::new();
    let a = self_signed(&["a.test"]);
    let b = self_signed(&["b.test"]);
    cfg.tls_site("good", &["good.test"], "", "", &a);
    // Certificate of one pair, key of another.
    cfg.write("certs/mixed.pem", &a.cert_pem);
    cfg.write("certs/mixed.key", &b.key_pem);
    cfg.static_site(
        "mixed",
        &["mixed.test"],
        "[tls]\ncert = \"certs/mixed.pem\"\nkey = \"certs/mixed.key\"",
    );
    cfg.static_site(
        "missing",
        &["missing.test"],
        "[tls]\ncert = \"certs/nope.pem\"\nkey = \"certs/mixed.key\"",
    );
    cfg.write("certs/garbage.pem", "not a certificate\n");
    cfg.static_site(
        "garbage",
        &["garbage.test"],
        "[tls]\ncert = \"certs/garbage.pem\"\nkey = \"certs/mixed.key\"",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_polyhost"))
        .args(["check", "--config"])
        .arg(cfg.main())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = |site: &str| {
        stderr
            .lines()
            .find(|l| l.contains(&format!("vhosts/{site}.toml")))
            .unwrap_or_else(|| panic!("no error for {site}:\n{stderr}"))
            .to_owned()
    };
    assert!(line("mixed").contains(": tls.key: "), "{stderr}");
    assert!(
        line("mixed").contains("does not match the certificate"),
        "{stderr}"
    );
    assert!(line("missing").contains(": tls.cert: "), "{stderr}");
    assert!(line("garbage").contains(": tls.cert: "), "{stderr}");
    assert!(!stderr.contains("vhosts/good.toml"), "{stderr}");
}

#[tokio::test]
async fn idle_http2_connections_close_after_keepalive_timeout_not_header_timeout() {
    for h2c in [false, true] {
        let (cfg, _) = sites();
        cfg.main_extra(&format!(
            "h2c = {h2c}\n[limits]\nheader_timeout = \"1s\"\nkeepalive_timeout = \"3s\""
        ));
        let front = Front::start(&cfg, vec![]).await;
        // The client pings while idle: frames between requests are no request head.
        let every = Duration::from_millis(300);
        let (mut h2, url) = if h2c {
            let tcp = tokio::net::TcpStream::connect(front.http).await.unwrap();
            (
                H2::handshake_pinging(tcp, every).await,
                "http://plain.test/",
            )
        } else {
            let tls = tls_connect(front.https, "alpha.test", &["h2"])
                .await
                .unwrap();
            (
                H2::handshake_pinging(tls, every).await,
                "https://alpha.test/",
            )
        };
        assert_eq!(h2.get(url).await.status, 200);
        // Past header_timeout, with pings in between: still open.
        tokio::time::sleep(Duration::from_millis(1800)).await;
        assert!(!h2.is_closed(), "h2c={h2c}");
        assert_eq!(h2.get(url).await.status, 200);
        let idle = std::time::Instant::now();
        let closed = common::eventually(Duration::from_secs(8), || async { h2.is_closed() }).await;
        assert!(closed, "h2c={h2c}: idle HTTP/2 connection closed");
        let took = idle.elapsed();
        assert!(took >= Duration::from_millis(2500), "h2c={h2c}: {took:?}");
        front.stop().await;
    }
}

#[tokio::test]
async fn the_binary_serves_tls_listen_addresses() {
    let (cfg, certs) = sites();
    cfg.main_extra("tls_listen = [\"127.0.0.1:0\"]");
    let bin = common::Binary::start(&cfg.main(), &[]).await;
    let addr = bin.logged_addr("listening (TLS)").await;
    let tls = tls_connect(addr, "alpha.test", &["h2"]).await.unwrap();
    assert!(served_cert(&tls) == certs.alpha.der);
    let mut h2 = H2::handshake(tls).await;
    let r = h2.get("https://alpha.test/").await;
    assert_eq!((r.status, r.text().trim()), (200, "site alpha"));
    // Plain HTTP to a TLS site: redirected to the TLS port.
    let r = common::get(bin.addr, "alpha.test", "/x").await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some(format!("https://alpha.test:{}/x", addr.port()).as_str())
    );
    assert!(bin.terminate().await.success());
}

/// A client that opened a TLS connection and stalls in its handshake (a
/// preconnect, a slow client) holds a stop no longer than a plain
/// connection waiting for its first request may (2 s), not for the whole
/// `header_timeout` (20 s here).
#[tokio::test]
async fn a_stalled_tls_handshake_does_not_hold_a_stop_for_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let (cfg, _) = sites();
    // A grace longer than the test's bound, so only the handshake's own
    // limit at a stop can end the stop in time.
    let main = std::fs::read_to_string(cfg.main()).unwrap();
    let main = main.replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"30s\"");
    assert!(main.contains("\"30s\""), "{main}");
    std::fs::write(cfg.main(), main).unwrap();
    cfg.main_extra("tls_listen = [\"127.0.0.1:0\"]\n[limits]\nheader_timeout = \"20s\"");
    let bin = common::Binary::start(&cfg.main(), &[]).await;
    let addr = bin.logged_addr("listening (TLS)").await;
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A TLS record's first bytes, then nothing.
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    // A later connection's handshake done: the stalled one was accepted
    // before it (the listener's queue is first in, first out).
    tls_connect(addr, "alpha.test", &[]).await.unwrap();
    let stop = std::time::Instant::now();
    let status = bin.terminate().await;
    let took = stop.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_secs(10),
        "the stop waited {took:?} for a stalled handshake"
    );
    drop(stalled);
}

/// A request written in the same segment as the client's handshake
/// `Finished`: the handshake reads it from the socket into rustls, so the
/// connection must not wait for the socket before serving it. Blocking
/// rustls on a std socket, to control what goes into one write.
fn request_with_the_handshake(addr: std::net::SocketAddr, host: &str) -> String {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let mut tls = rustls::ClientConnection::new(tls_client_config(&["http/1.1"]), name).unwrap();
    while tls.is_handshaking() {
        if tls.wants_write() {
            tls.write_tls(&mut tcp).unwrap();
        } else {
            tls.read_tls(&mut tcp).unwrap();
            tls.process_new_packets().unwrap();
        }
    }
    // The client's Finished is still queued: the request joins it.
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.writer().write_all(request.as_bytes()).unwrap();
    let mut flight = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut flight).unwrap();
    }
    tcp.write_all(&flight).unwrap();
    let mut reply = Vec::new();
    loop {
        match tls.read_tls(&mut tcp) {
            Ok(0) => break,
            Ok(_) => {
                tls.process_new_packets().unwrap();
                let _ = tls.reader().read_to_end(&mut reply); // WouldBlock: more to come
            }
            Err(e) => panic!(
                "no answer: {e} (so far: {:?})",
                String::from_utf8_lossy(&reply)
            ),
        }
    }
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test]
async fn http1_over_tls_is_served_across_parking() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (cfg, _certs) = sites();
    let front = Front::start(&cfg, vec![]).await;
    let addr = front.https;
    let reply = tokio::task::spawn_blocking(move || request_with_the_handshake(addr, "alpha.test"))
        .await
        .unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("site alpha"),
        "{reply}"
    );

    // Two pipelined requests, an idle spell (the connection is parked), a third.
    let mut tls = tls_connect(addr, "alpha.test", &["http/1.1"])
        .await
        .unwrap();
    let get = "GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n";
    tls.write_all(format!("{get}{get}").as_bytes())
        .await
        .unwrap();
    let mut seen = String::new();
    common::read_until_count(&mut tls, &mut seen, "site alpha", 2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest))
        .await
        .expect("the answer after the idle spell")
        .ok(); // a peer that closes without close_notify is fine here
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.starts_with("HTTP/1.1 200") && rest.contains("site alpha"),
        "{rest}"
    );

    // A burst longer than hyper reads at once, through TLS.
    let tls = tls_connect(addr, "alpha.test", &["http/1.1"])
        .await
        .unwrap();
    let statuses = common::pipelined_statuses(tls, "alpha.test", 400).await;
    assert_eq!(statuses.len(), 400, "answers: {}", statuses.len());
    assert!(
        statuses.iter().all(|l| l.starts_with("HTTP/1.1 200")),
        "{statuses:?}"
    );
    front.stop().await;
}
