//! WebSockets end to end: a client, the router's tunnel, the real
//! `polyhost-python` worker (`--interface asgi`, which frames RFC 6455) and
//! a raw ASGI app (`tests/apps/asgiapp.py`), under real users and cgroups.
//! The router's side alone, with a stand-in worker, is
//! `tests/websocket_tunnel.rs`; the worker's protocol cases are
//! `runtimes/python/tests/websocket.rs`.

mod common;

use std::time::{Duration, Instant};

use common::ws::{self, ACCEPT};
use common::{eventually, file_text, get, InProcess, TestConfig, TestUser};

/// An ASGI site `name` serving `asgiapp:app`.
fn asgi_site(cfg: &TestConfig, name: &str, user: &TestUser, python: &str) {
    cfg.write("apps/asgiapp.py", include_str!("apps/asgiapp.py"));
    common::python_test_site(
        cfg,
        name,
        user,
        "asgiapp:app",
        "",
        &format!("interface = \"asgi\"\n{python}"),
    );
}

async fn open_sockets(server: &InProcess, site: &str) -> u64 {
    server.site(site).await.websockets_open
}

/// A WebSocket to `/echo` of `host`, open (101 checked).
async fn connect(server: &InProcess, host: &str) -> ws::Upgraded {
    let c = ws::open(server.addr, host, "/echo", b"").await;
    assert_eq!(c.status, 101, "{}", c.head);
    assert_eq!(c.header("sec-websocket-accept"), Some(ACCEPT), "{}", c.head);
    c
}

async fn echo_text(c: &mut ws::Upgraded, text: &str) {
    c.send_frame(1, text.as_bytes()).await;
    let (op, payload) = c.read_frame().await;
    assert_eq!((op, String::from_utf8_lossy(&payload).as_ref()), (1, text));
}

/// The close frame's status code.
fn close_code(payload: &[u8]) -> u16 {
    assert!(
        payload.len() >= 2,
        "a close frame without a code: {payload:?}"
    );
    u16::from_be_bytes([payload[0], payload[1]])
}

#[tokio::test]
async fn text_and_bytes_echo_through_the_tunnel_and_the_app_closes_with_its_code() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    asgi_site(&cfg, "chat", &user, "mount = \"/app\"");
    let server = InProcess::start(&cfg).await;

    let r = get(server.addr, "chat.test", "/app/hello").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().starts_with("asgi root_path=/app path=/app/hello"),
        "{}",
        r.text()
    );

    let mut c = ws::open(server.addr, "chat.test", "/app/echo", b"").await;
    assert_eq!(c.status, 101, "{}", c.head);
    assert_eq!(c.header("sec-websocket-accept"), Some(ACCEPT), "{}", c.head);
    echo_text(&mut c, "héllo").await;
    c.send_frame(2, &[0, 1, 2, 255]).await;
    assert_eq!(c.read_frame().await, (2, vec![0, 1, 2, 255]));
    let big = "x".repeat(200_000);
    echo_text(&mut c, &big).await;
    assert_eq!(open_sockets(&server, "chat").await, 1);

    c.send_frame(1, b"close:4001").await;
    let (op, payload) = c.read_frame().await;
    assert_eq!((op, close_code(&payload)), (8, 4001), "{payload:?}");
    assert_eq!(&payload[2..], b"bye");
    c.send_frame(8, &payload[..2]).await;
    assert!(
        c.read_to_close(Duration::from_secs(10)).await.is_some(),
        "the worker did not close"
    );
    let closed = eventually(Duration::from_secs(10), || async {
        open_sockets(&server, "chat").await == 0
    })
    .await;
    assert!(closed, "still counted open");
    let log = cfg.path().join("log/chat.access.log");
    let text = common::wait_for(
        "the WebSocket's access log line",
        Duration::from_secs(10),
        async || file_text(&log),
        |log| log.0.contains("\"GET /app/echo HTTP/1.1\" 101 "),
    )
    .await;
    assert_eq!(text.0.matches(" 101 ").count(), 1, "{}", text.0);

    let mut denied = ws::open(server.addr, "chat.test", "/app/deny", b"").await;
    assert_eq!(denied.status, 403, "{}", denied.head);
    let _ = denied.read_to_close(Duration::from_secs(5)).await;
    assert_eq!(open_sockets(&server, "chat").await, 0);
    server.stop().await;
}

#[tokio::test]
async fn a_restart_of_its_site_closes_a_websocket_with_1001_and_leaves_the_neighbours_open() {
    let cfg = TestConfig::new();
    let (ua, ub) = (TestUser::new(), TestUser::new());
    asgi_site(&cfg, "alpha", &ua, "request_timeout = \"2s\"");
    asgi_site(&cfg, "beta", &ub, "request_timeout = \"2s\"");
    let server = InProcess::start(&cfg).await;
    let mut a = connect(&server, "alpha.test").await;
    let mut b = connect(&server, "beta.test").await;
    echo_text(&mut a, "a1").await;
    echo_text(&mut b, "b1").await;

    asgi_site(
        &cfg,
        "alpha",
        &ua,
        "request_timeout = \"2s\"\nenv = { GENERATION = \"2\" }",
    );
    let reloaded = Instant::now();
    let report = server.server.reload().await.expect("reload");
    assert_eq!(report.restarted, vec!["alpha".to_owned()], "{report:?}");
    // The old generation's WebSocket is not cut by the reload...
    echo_text(&mut a, "a2").await;
    // ...its worker closes it, 1001, after the drain and the grace.
    let (op, payload) = tokio::time::timeout(Duration::from_secs(30), a.read_frame())
        .await
        .expect("no close frame within 30 s of the reload");
    assert_eq!((op, close_code(&payload)), (8, 1001), "{payload:?}");
    assert!(
        reloaded.elapsed() >= Duration::from_secs(2),
        "{:?}",
        reloaded.elapsed()
    );
    echo_text(&mut b, "b2").await;
    assert_eq!(open_sockets(&server, "beta").await, 1);
    let mut a2 = connect(&server, "alpha.test").await;
    echo_text(&mut a2, "new generation").await;
    server.stop().await;
}

#[tokio::test]
async fn a_killed_worker_ends_its_websockets_restarts_and_the_neighbour_stays_open() {
    let cfg = TestConfig::new();
    let (ua, ub) = (TestUser::new(), TestUser::new());
    asgi_site(&cfg, "alpha", &ua, "");
    asgi_site(&cfg, "beta", &ub, "");
    let server = InProcess::start(&cfg).await;
    let mut a = connect(&server, "alpha.test").await;
    let mut b = connect(&server, "beta.test").await;
    echo_text(&mut a, "a1").await;
    let pids = server.site("alpha").await.pids;
    assert_eq!(pids.len(), 1, "{pids:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        a.read_to_close(Duration::from_secs(10)).await.is_some(),
        "the WebSocket outlived its worker"
    );
    let closed = eventually(Duration::from_secs(10), || async {
        open_sockets(&server, "alpha").await == 0
    })
    .await;
    assert!(closed, "still counted open after its worker died");
    let restarted = eventually(Duration::from_secs(20), || async {
        ws::open(server.addr, "alpha.test", "/echo", b"")
            .await
            .status
            == 101
    })
    .await;
    assert!(restarted, "no new worker took WebSockets");
    echo_text(&mut b, "b after the neighbour's crash").await;
    assert_eq!(open_sockets(&server, "beta").await, 1);
    server.stop().await;
}

#[tokio::test]
async fn an_http2_websocket_reaches_the_app_through_the_real_worker() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = TestConfig::new();
    cfg.main_extra("h2c = true");
    let user = TestUser::new();
    asgi_site(&cfg, "chat", &user, "");
    let server = InProcess::start(&cfg).await;
    let resp = ws::H2Ws::connect(server.addr)
        .await
        .websocket("chat.test", "/echo")
        .await;
    assert_eq!(resp.status(), 200, "{resp:?}");
    let mut tunnel = hyper_util::rt::TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    tunnel.write_all(&ws::frame(1, b"h2 hello")).await.unwrap();
    let mut head = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(10), tunnel.read_exact(&mut head))
        .await
        .expect("no frame within 10 s")
        .unwrap();
    assert_eq!(
        (head[0], head[1]),
        (0x81, 8),
        "an unmasked final text frame of 8 bytes"
    );
    let mut payload = [0u8; 8];
    tunnel.read_exact(&mut payload).await.unwrap();
    assert_eq!(&payload, b"h2 hello");
    assert_eq!(open_sockets(&server, "chat").await, 1);
    drop(tunnel);
    server.stop().await;
}
