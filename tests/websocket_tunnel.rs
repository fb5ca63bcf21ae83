//! The router's side of WebSockets (ASGI-CONTRACT), in process with the
//! real router, supervisor, users and cgroups, and a stand-in for the
//! worker (`tests/apps/wsworker.py`: answers the upgrade with 101, then
//! echoes raw bytes; the router never parses frames, so these tests need
//! none). What the real worker does with frames is `tests/asgi_websocket.rs`.

mod common;

use std::time::{Duration, Instant};

use common::ws::{self, ACCEPT, KEY};
use common::{eventually, file_text, get, raw, raw_status, InProcess, TestConfig, TestUser};

/// An ASGI site `name` whose worker is the stand-in.
fn ws_site(cfg: &TestConfig, name: &str, user: &TestUser, python: &str) {
    stand_in_site(
        cfg,
        name,
        user,
        "",
        &format!("interface = \"asgi\"\n{python}"),
    );
}

/// A Python site `name` whose worker is the stand-in.
/// `site_extra` goes before the `[python]` table.
fn stand_in_site(cfg: &TestConfig, name: &str, user: &TestUser, site_extra: &str, python: &str) {
    let worker = cfg.write("apps/wsworker.py", include_str!("apps/wsworker.py"));
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    cfg.write(&format!("www/{name}/index.html"), "static\n");
    cfg.write(
        &format!("vhosts/{name}.toml"),
        &format!(
            "hosts = [\"{name}.test\"]\nroot = \"www/{name}\"\nuser = \"{}\"\n{site_extra}\n[python]\napp = \"stand.in:app\"\nworker = \"{}\"\n{python}\n",
            user.name,
            worker.display()
        ),
    );
    common::open_up(cfg.path());
}

/// Reads the stand-in's greeting after its 101: the request head it got.
async fn greeting(c: &mut ws::Upgraded) -> String {
    let mut seen = Vec::new();
    while !seen.ends_with(b"\n\n") {
        seen.extend(c.read_exactly(1).await);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

async fn echo(c: &mut ws::Upgraded, what: &[u8]) {
    c.send(what).await;
    assert_eq!(c.read_exactly(what.len()).await, what, "echo of {what:?}");
}

async fn open_sockets(server: &InProcess, site: &str) -> u64 {
    server.site(site).await.websockets_open
}

#[tokio::test]
async fn an_upgrade_to_an_asgi_site_is_tunnelled_counted_and_logged_once_at_close() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    ws_site(&cfg, "chat", &user, "");
    let server = InProcess::start(&cfg).await;

    // Bytes the client sends right behind its request reach the worker too.
    let mut c = ws::open(server.addr, "chat.test", "/room?x=1", b"early").await;
    assert_eq!(c.status, 101, "{}", c.head);
    assert_eq!(c.header("upgrade"), Some("websocket"), "{}", c.head);
    assert_eq!(
        c.header("connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("upgrade")
    );
    assert_eq!(c.header("sec-websocket-accept"), Some(ACCEPT));
    let head = greeting(&mut c).await.to_ascii_lowercase();
    for kept in [
        "get /room?x=1 http/1.1",
        "connection: upgrade",
        "upgrade: websocket",
        &format!("sec-websocket-key: {}", KEY.to_ascii_lowercase()),
        "sec-websocket-version: 13",
        "x-polyhost-remote-addr: 127.0.0.1",
    ] {
        assert!(head.contains(kept), "the worker got no {kept:?}: {head}");
    }
    assert_eq!(c.read_exactly(5).await, b"early");
    echo(&mut c, b"hello").await;
    echo(&mut c, &vec![b'z'; 300_000]).await;
    assert_eq!(open_sockets(&server, "chat").await, 1);
    let metrics = polyhost::admin::metrics::scrape(&server.server).await;
    for line in [
        "polyhost_websockets_open{site=\"chat\"} 1",
        "polyhost_websockets_total{site=\"chat\"} 1",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }
    let status = server.site("chat").await;
    assert_eq!(status.interface.as_deref(), Some("asgi"));

    // Plain requests still reach the same site.
    let r = get(server.addr, "chat.test", "/plain").await;
    assert_eq!(r.status, 200, "{}", r.text());

    drop(c);
    let closed = eventually(Duration::from_secs(10), || async {
        open_sockets(&server, "chat").await == 0
    })
    .await;
    assert!(
        closed,
        "the WebSocket still counted open after the client left"
    );
    let log = cfg.path().join("log/chat.access.log");
    let text = common::wait_for(
        "the WebSocket's line in the access log",
        Duration::from_secs(10),
        async || file_text(&log),
        |log| log.0.contains(" 101 "),
    )
    .await
    .0;
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(" 101 ")).collect();
    assert_eq!(lines.len(), 1, "{text}");
    // Sent to the client: greeting + "early" + the echoes; received: "early" + the echoes.
    let fields: Vec<&str> = lines[0].split(' ').collect();
    let received: u64 = fields.last().unwrap().parse().unwrap();
    assert_eq!(received, 5 + 5 + 300_000, "{}", lines[0]);
    assert!(
        lines[0].contains("\"GET /room?x=1 HTTP/1.1\" 101 "),
        "{}",
        lines[0]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_refused_upgrade_is_relayed_as_a_response() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    ws_site(&cfg, "chat", &user, "");
    let server = InProcess::start(&cfg).await;
    let mut c = ws::open(server.addr, "chat.test", "/deny", b"").await;
    assert_eq!(c.status, 403, "{}", c.head);
    assert_eq!(c.header("upgrade"), None, "{}", c.head);
    let body = c.read_exactly(6).await;
    assert_eq!(body, b"denied");
    assert_eq!(open_sockets(&server, "chat").await, 0);
    // The client's connection is still HTTP: another request is answered.
    c.send(b"GET /next HTTP/1.1\r\nHost: chat.test\r\nConnection: close\r\n\r\n")
        .await;
    let rest = c
        .read_to_close(Duration::from_secs(10))
        .await
        .expect("the next request was not answered");
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.starts_with("HTTP/1.1 200 OK") && rest.contains("pid="),
        "{rest}"
    );
    server.stop().await;
}

#[tokio::test]
async fn open_websockets_count_against_max_concurrency_until_they_close() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    ws_site(
        &cfg,
        "chat",
        &user,
        "processes = 1\nmax_concurrency = 2\nqueue_timeout = \"1s\"",
    );
    let server = InProcess::start(&cfg).await;
    let mut a = ws::open(server.addr, "chat.test", "/a", b"").await;
    let mut b = ws::open(server.addr, "chat.test", "/b", b"").await;
    assert_eq!((a.status, b.status), (101, 101));
    greeting(&mut a).await;
    greeting(&mut b).await;
    let started = Instant::now();
    let r = get(server.addr, "chat.test", "/third").await;
    assert_eq!(
        r.status,
        503,
        "two WebSockets fill max_concurrency = 2: {}",
        r.text()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "503 only after queue_timeout"
    );
    drop(a);
    let freed = eventually(Duration::from_secs(10), || async {
        get(server.addr, "chat.test", "/third").await.status == 200
    })
    .await;
    assert!(freed, "a closed WebSocket gave its place back");
    echo(&mut b, b"still here").await;
    server.stop().await;
}

#[tokio::test]
async fn connection_clocks_never_end_an_idle_tunnel() {
    let cfg = TestConfig::new();
    cfg.main_extra("[limits]\nheader_timeout = \"1s\"\nkeepalive_timeout = \"1s\"");
    let user = TestUser::new();
    ws_site(&cfg, "chat", &user, "");
    let server = InProcess::start(&cfg).await;
    let mut c = ws::open(server.addr, "chat.test", "/", b"").await;
    greeting(&mut c).await;
    // Idle past both the header and the keep-alive timeouts, twice over.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    echo(&mut c, b"after a quiet spell").await;
    // Half a message (a head started): no header clock either.
    c.send(b"GET / HTT").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.read_exactly(9).await, b"GET / HTT");
    assert_eq!(open_sockets(&server, "chat").await, 1);
    server.stop().await;
}

/// The tunnel runs in a task of its own once its connection's task has
/// ended, and still holds the connection's place in the limits until it
/// ends (the test process's connections are all one local client).
#[tokio::test]
async fn a_tunnel_keeps_its_connections_place_in_the_limits_until_it_ends() {
    let cfg = TestConfig::new();
    cfg.main_extra("[limits]\nmax_connections_per_ip = 1");
    let user = TestUser::new();
    ws_site(&cfg, "chat", &user, "");
    let server = InProcess::start(&cfg).await;
    let plain = b"GET / HTTP/1.1\r\nHost: chat.test\r\nConnection: close\r\n\r\n";
    let mut c = ws::open(server.addr, "chat.test", "/", b"").await;
    assert_eq!(c.status, 101, "{}", c.head);
    greeting(&mut c).await;
    let beside = raw(server.addr, plain).await;
    assert!(
        beside.is_empty() || raw_status(&beside) == 503,
        "a second connection was admitted beside the tunnel: {beside:?}"
    );
    echo(&mut c, b"still tunnelled").await;
    drop(c);
    common::wait_for(
        "a connection served once the tunnel ended",
        Duration::from_secs(10),
        async || raw(server.addr, plain).await,
        |reply| raw_status(reply) == 200,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn an_h2c_listener_tunnels_http1_upgrades_too() {
    let cfg = TestConfig::new();
    cfg.main_extra("h2c = true");
    let user = TestUser::new();
    ws_site(&cfg, "chat", &user, "");
    let server = InProcess::start(&cfg).await;
    let mut c = ws::open(server.addr, "chat.test", "/", b"early").await;
    assert_eq!(c.status, 101, "{}", c.head);
    greeting(&mut c).await;
    assert_eq!(c.read_exactly(5).await, b"early");
    echo(&mut c, b"over the auto builder").await;
    assert_eq!(open_sockets(&server, "chat").await, 1);
    drop(c);
    let closed = eventually(Duration::from_secs(10), || async {
        open_sockets(&server, "chat").await == 0
    })
    .await;
    assert!(closed);
    server.stop().await;
}

#[tokio::test]
async fn a_reload_of_another_site_never_touches_a_tunnel_and_its_own_restart_leaves_the_close_to_the_worker(
) {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    ws_site(&cfg, "chat", &user, "request_timeout = \"2s\"");
    cfg.static_site("other", &["other.test"], "");
    let server = InProcess::start(&cfg).await;
    let mut c = ws::open(server.addr, "chat.test", "/", b"").await;
    greeting(&mut c).await;

    cfg.static_site("other", &["other.test", "other2.test"], "");
    cfg.static_site("third", &["third.test"], "");
    server.server.reload().await.expect("reload");
    echo(&mut c, b"after the others' reload").await;
    assert_eq!(open_sockets(&server, "chat").await, 1);

    // A new generation of this site: the tunnel lives on until the old
    // worker, stopped after its drain (request_timeout + 1 s), closes it
    // itself (the real worker: close 1001; the stand-in: "GOING AWAY").
    ws_site(
        &cfg,
        "chat",
        &user,
        "request_timeout = \"2s\"\nenv = { GENERATION = \"2\" }",
    );
    let reloaded = Instant::now();
    let report = server.server.reload().await.expect("reload");
    assert_eq!(report.restarted, vec!["chat".to_owned()], "{report:?}");
    echo(&mut c, b"the router did not cut it").await;
    let rest = c
        .read_to_close(Duration::from_secs(20))
        .await
        .expect("the old worker's close never came");
    assert_eq!(String::from_utf8_lossy(&rest), "GOING AWAY");
    assert!(
        reloaded.elapsed() >= Duration::from_secs(2),
        "closed {:?} after the reload: before the drain",
        reloaded.elapsed()
    );
    // The new generation takes new WebSockets.
    let mut d = ws::open(server.addr, "chat.test", "/", b"").await;
    assert_eq!(d.status, 101, "{}", d.head);
    greeting(&mut d).await;
    drop(d);
    server.stop().await;
}

#[tokio::test]
async fn an_upgrade_to_a_wsgi_or_static_site_is_a_plain_request_on_a_connection_that_stays_http() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    // The stand-in would answer 101 to an upgrade it saw: as a WSGI site's
    // worker it must see none (and a 101 from it could only be a 502).
    stand_in_site(&cfg, "wsgi", &user, "", "");
    cfg.static_site("www", &["www.test"], "");
    let server = InProcess::start(&cfg).await;
    for host in ["wsgi.test", "www.test"] {
        let mut c = ws::open(server.addr, host, "/", b"").await;
        assert_eq!(c.status, 200, "{host}: {}", c.head);
        assert_eq!(c.header("upgrade"), None, "{host}: {}", c.head);
        let len: usize = c.header("content-length").unwrap().parse().unwrap();
        let body = String::from_utf8_lossy(&c.read_exactly(len).await).to_ascii_lowercase();
        if host == "wsgi.test" {
            assert!(body.starts_with("pid="), "{body}");
            assert!(
                !body.contains("upgrade") && body.contains("sec-websocket-key"),
                "the WSGI worker got the upgrade headers: {body}"
            );
        }
        // Still HTTP: the next request on the connection is answered.
        c.send(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
            .await;
        let rest = c
            .read_to_close(Duration::from_secs(10))
            .await
            .expect("the next request was not answered");
        assert!(
            String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200 OK"),
            "{host}: {}",
            String::from_utf8_lossy(&rest)
        );
    }
    assert_eq!(open_sockets(&server, "wsgi").await, 0);
    let status = server.site("wsgi").await;
    assert_eq!(status.interface.as_deref(), Some("wsgi"));
    server.stop().await;
}

#[tokio::test]
async fn a_websocket_over_tls_is_tunnelled_with_the_bytes_sent_behind_the_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = TestConfig::new();
    let user = TestUser::new();
    let cert = common::front::self_signed(&["chat.test"]);
    cfg.write_cert("chat", &cert);
    stand_in_site(
        &cfg,
        "chat",
        &user,
        "[tls]\ncert = \"certs/chat.pem\"\nkey = \"certs/chat.key\"",
        "interface = \"asgi\"",
    );
    common::init_logging();
    let config = cfg.load();
    let state_dir = config.server.state_dir.clone();
    let _sweep = common::CgroupSweep::new(&state_dir);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = polyhost::app::Server::start(config).await.unwrap();
    let task = tokio::spawn(polyhost::app::serve_with(
        server.clone(),
        polyhost::router::Listeners {
            http: Vec::new(),
            https: vec![listener],
        },
        shutdown.clone(),
    ));

    let mut tls = common::front::tls_connect(addr, "chat.test", &[])
        .await
        .unwrap();
    let mut out = ws::upgrade_request("chat.test", "/tls").into_bytes();
    out.extend_from_slice(b"early");
    tls.write_all(&out).await.unwrap();
    let mut seen = Vec::new();
    let want = b"early";
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        while !seen.ends_with(want) {
            let n = tls.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {:?} within 10 s", String::from_utf8_lossy(&seen)));
    let seen = String::from_utf8_lossy(&seen).into_owned();
    assert!(
        seen.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("sec-websocket-accept: {ACCEPT}")),
        "{seen}"
    );
    assert!(
        seen.to_ascii_lowercase()
            .contains("x-polyhost-scheme: https"),
        "{seen}"
    );
    tls.write_all(b"over tls").await.unwrap();
    let mut echo = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut echo))
        .await
        .expect("no echo within 10 s")
        .unwrap();
    assert_eq!(&echo, b"over tls");
    let status = server.status().await;
    let chat = status.sites.iter().find(|s| s.name == "chat").unwrap();
    assert_eq!(chat.websockets_open, 1);
    drop(tls);
    shutdown.cancel();
    task.await.unwrap().unwrap();
    common::check_hygiene(&state_dir);
}

#[tokio::test]
async fn an_http2_websocket_rfc_8441_is_tunnelled_beside_other_streams_and_refused_elsewhere() {
    use bytes::Bytes;
    use http_body_util::Empty;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = TestConfig::new();
    cfg.main_extra("h2c = true");
    let user = TestUser::new();
    ws_site(&cfg, "chat", &user, "");
    cfg.static_site("www", &["www.test"], "");
    let server = InProcess::start(&cfg).await;
    let mut h2 = ws::H2Ws::connect(server.addr).await;
    let resp = h2.websocket("chat.test", "/room").await;
    assert_eq!(resp.status(), 200, "{resp:?}");
    assert!(
        resp.headers().get("sec-websocket-accept").is_none(),
        "{resp:?}"
    );
    let mut tunnel = hyper_util::rt::TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        while !seen.ends_with(b"\n\n") {
            let n = tunnel.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("no greeting within 10 s");
    let head = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    assert!(
        head.starts_with("head get /room http/1.1") && head.contains("upgrade: websocket"),
        "the worker got no HTTP/1.1 upgrade: {head}"
    );
    tunnel.write_all(b"over h2").await.unwrap();
    let mut echo = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(10), tunnel.read_exact(&mut echo))
        .await
        .expect("no echo within 10 s")
        .unwrap();
    assert_eq!(&echo, b"over h2");
    assert_eq!(open_sockets(&server, "chat").await, 1);
    // Other streams of the same connection are served meanwhile, and a
    // WebSocket to a site that does not tunnel is a CONNECT: 405.
    let get = http::Request::get("http://www.test/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    h2.sender.ready().await.unwrap();
    assert_eq!(h2.sender.send_request(get).await.unwrap().status(), 200);
    let refused = h2.websocket("www.test", "/room").await;
    assert_eq!(refused.status(), 405);
    drop(tunnel);
    let closed = eventually(Duration::from_secs(10), || async {
        open_sockets(&server, "chat").await == 0
    })
    .await;
    assert!(
        closed,
        "the HTTP/2 WebSocket still counted open after its stream closed"
    );
    server.stop().await;
}

/// An HTTP/2 WebSocket takes a place of its own in the connection limits
/// (the test process's connections are all one local client): with two
/// places, the connection and one WebSocket fill them, a second WebSocket
/// on the same connection gets `503`, and once the first one closed a new
/// one is admitted.
#[tokio::test]
async fn an_http2_websocket_holds_a_place_in_the_connection_limits_until_it_closes() {
    let cfg = TestConfig::new();
    cfg.main_extra("h2c = true\n[limits]\nmax_connections_per_ip = 2");
    let user = TestUser::new();
    ws_site(&cfg, "chat", &user, "");
    let server = InProcess::start(&cfg).await;
    let mut h2 = ws::H2Ws::connect(server.addr).await;
    let first = h2.websocket("chat.test", "/room").await;
    assert_eq!(first.status(), 200, "{first:?}");
    let tunnel = hyper::upgrade::on(first).await.unwrap();
    let second = h2.websocket("chat.test", "/room").await;
    assert_eq!(
        second.status(),
        503,
        "a second WebSocket beyond max_connections_per_ip: {second:?}"
    );
    drop(tunnel);
    common::wait_for(
        "a WebSocket admitted once the first one closed",
        Duration::from_secs(10),
        async || h2.websocket("chat.test", "/room").await.status(),
        |status| *status == 200,
    )
    .await;
    server.stop().await;
}
