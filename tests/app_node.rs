//! `[app]` sites on Node.js (Debian's `nodejs`) against the real binary run
//! as root (supervisor + router process): an Express app (from npm) on the
//! socket polyhost hands it as fd 3, with a POST body, a streamed
//! response, a WebSocket (`ws`), an env var from `[app.env]`, the
//! forwarded headers, as the site user in the site's cgroup; and what the
//! app's own code (or its user at a shell) cannot reach: another site's
//! socket and files.

mod admin_support;
mod app_support;
mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use app_support::{express_site, field, sockets_of, stop_clean, wait_serving};
use bytes::Bytes;
use common::{get, runuser, ws, Binary, Client, TestConfig, TestUser};
use http_body_util::{BodyExt, Full};

/// The first `[app]` start may take a while on a loaded machine (node
/// loading express): a hang bound, not a speed goal.
const START: Duration = Duration::from_secs(60);

#[tokio::test]
async fn express_on_fd_3_serves_post_stream_websocket_and_env_as_the_site_user() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    express_site(
        &cfg,
        "node",
        &user,
        "ready = \"/healthz\"",
        &[("GREETING", "hello from app.env")],
        "",
    );
    let bin = Binary::start(&cfg.main(), &[]).await;
    wait_serving(&bin, &cfg, "node.test", "/healthz", START).await;

    // The site user, in the site's cgroup (under this polyhost's parent).
    let who = get(bin.addr, "node.test", "/whoami").await;
    assert_eq!(who.status, 200, "{}", who.text());
    let who = who.text();
    assert_eq!(field(&who, "uid"), user.uid.to_string(), "{who}");
    let parent = polyhost::supervisor::cgroup_parent_name(
        &std::fs::canonicalize(cfg.path().join("state")).unwrap(),
    );
    let cgroup = field(&who, "cgroup");
    assert!(
        cgroup.contains(&format!("/{parent}/")) && cgroup.contains("node"),
        "not in the site's cgroup under {parent}: {cgroup}"
    );

    // Socket activation as systemd does it, and [app.env].
    let env = async |name: &str| {
        get(bin.addr, "node.test", &format!("/env?name={name}"))
            .await
            .text()
    };
    assert_eq!(env("GREETING").await, "hello from app.env");
    assert_eq!(env("LISTEN_FDS").await, "1");
    assert_eq!(env("LISTEN_FDNAMES").await, "http");
    assert_eq!(env("LISTEN_PID").await, field(&who, "pid"), "its own pid");

    // A POST body (1 MiB, not text) comes back whole.
    let body: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let mut client = Client::connect(bin.addr).await;
    let r = client
        .send(
            http::Request::post("/echo")
                .header("host", "node.test")
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-body-length"), Some("1048576"));
    assert!(r.body == body, "the echo differs from what was sent");
    // The same connection again (keep-alive through the router).
    let r = client.get("node.test", "/stream?n=20&ms=5").await;
    let expected: String = (0..20).map(|i| format!("chunk {i}\n")).collect();
    assert_eq!(r.text(), expected + "done\n");

    first_chunk_arrives_before_the_response_ends(bin.addr).await;
    websocket_echo(bin.addr).await;
    forwarded_headers(bin.addr).await;

    let log = cfg.path().join("log/node.access.log");
    common::wait_for(
        "the app's requests in the site's access log",
        Duration::from_secs(10),
        async || common::file_text(&log),
        |t| t.0.contains("/whoami") && t.0.contains("/echo"),
    )
    .await;
    stop_clean(bin, &cfg, &[&user]).await;
}

/// A response the app writes over a minute (600 chunks, 100 ms apart):
/// its first chunk reaches the client while the app is still writing.
async fn first_chunk_arrives_before_the_response_ends(addr: std::net::SocketAddr) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(common::request("GET", "node.test", "/stream?n=600&ms=100"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .expect("no part of the streamed response within 30 s: buffered whole?")
        .unwrap()
        .unwrap();
    let data = frame.into_data().unwrap();
    assert!(
        data.starts_with(b"chunk 0\n") && !data.ends_with(b"done\n"),
        "{data:?}"
    );
}

/// The `ws` package's server behind the router: text and binary echoes.
async fn websocket_echo(addr: std::net::SocketAddr) {
    let mut up = ws::open(addr, "node.test", "/ws", b"").await;
    assert_eq!(up.status, 101, "{}", up.head);
    assert_eq!(up.header("sec-websocket-accept"), Some(ws::ACCEPT));
    up.send_frame(1, b"hello over ws").await;
    assert_eq!(up.read_frame().await, (1, b"hello over ws".to_vec()));
    let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    up.send_frame(2, &big).await;
    assert_eq!(up.read_frame().await, (2, big));
    up.send_frame(8, &[0x03, 0xe8]).await;
    let (opcode, _) = up.read_frame().await;
    assert_eq!(opcode, 8, "the app answers the close");
}

/// What the app sees: the client's address, scheme and host from the
/// router (what the client claimed replaced), no hop-by-hop header.
async fn forwarded_headers(addr: std::net::SocketAddr) {
    let mut client = Client::connect(addr).await;
    let r = client
        .send(
            http::Request::get("/headers")
                .header("host", "node.test")
                .header("x-forwarded-for", "6.6.6.6")
                .header("connection", "x-hop")
                .header("x-hop", "must not pass")
                .header("x-end-to-end", "kept")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let header = |name: &str| seen.get(name).and_then(|v| v.as_str()).unwrap_or("");
    assert_eq!(header("x-forwarded-for"), "127.0.0.1", "{seen}");
    assert_eq!(header("x-forwarded-proto"), "http", "{seen}");
    assert_eq!(header("x-forwarded-host"), "node.test", "{seen}");
    assert_eq!(header("x-end-to-end"), "kept", "{seen}");
    assert_eq!(header("x-hop"), "", "{seen}");
    assert!(header("forwarded").contains("for="), "{seen}");
}

#[tokio::test]
async fn an_app_cannot_reach_another_sites_socket_or_files() {
    let cfg = TestConfig::new();
    let (ua, ub) = (TestUser::new(), TestUser::new());
    express_site(&cfg, "app-a", &ua, "", &[], "");
    express_site(&cfg, "app-b", &ub, "", &[], "");
    let secret = cfg.write("www/app-b/secret.txt", "b's secret");
    std::os::unix::fs::chown(&secret, Some(ub.uid), None).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bin = Binary::start(&cfg.main(), &[]).await;
    wait_serving(&bin, &cfg, "app-a.test", "/healthz", START).await;
    wait_serving(&bin, &cfg, "app-b.test", "/healthz", START).await;

    let path = format!("/read?f={}", secret.display());
    let a = get(bin.addr, "app-a.test", &path).await;
    assert_eq!(a.text(), "denied: EACCES");
    let b = get(bin.addr, "app-b.test", &path).await;
    assert_eq!(b.text(), "b's secret");
    let (read, out) = runuser(&ua.name, &["cat", &secret.display().to_string()]);
    assert!(!read && !out.contains("b's secret"), "{out}");

    // b's instance socket(s): a's code and a's user at a shell get no connection.
    let sockets = sockets_of(&cfg.path().join("state"), "app-b");
    assert!(!sockets.is_empty(), "no socket of app-b under state/");
    for sock in &sockets {
        let r = get(
            bin.addr,
            "app-a.test",
            &format!("/connect?path={}", sock.display()),
        )
        .await;
        assert!(
            r.text().starts_with("denied: "),
            "{}: {}",
            sock.display(),
            r.text()
        );
        let (connected, out) = runuser(
            &ua.name,
            &[
                "/usr/bin/python3",
                "-c",
                "import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])",
                &sock.display().to_string(),
            ],
        );
        assert!(!connected, "{}: {out}", sock.display());
    }
    stop_clean(bin, &cfg, &[&ua, &ub]).await;
}

#[tokio::test]
async fn an_app_mounted_beside_php_sees_its_path_unchanged_and_its_prefix() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    cfg.write(
        "www/mixed/index.php",
        "<?php echo 'php here uri=' . $_SERVER['REQUEST_URI'];",
    );
    express_site(
        &cfg,
        "mixed",
        &user,
        "mount = \"/api\"\nready = \"/healthz\"",
        &[],
        "[php]\nmax_children = 2",
    );
    let bin = Binary::start(&cfg.main(), &[]).await;
    let r = wait_serving(&bin, &cfg, "mixed.test", "/", START).await;
    assert_eq!(r, "php here uri=/");
    let r = get(bin.addr, "mixed.test", "/api/things?id=7").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (404, "unrouted path=/api/things?id=7 prefix=/api"),
        "the app sees its mount prefix"
    );
    let site = app_support::status(&cfg, "mixed").await;
    assert_eq!(site.runtime, "php+app", "{site:?}");
    stop_clean(bin, &cfg, &[&user]).await;
}
