//! WebSockets in the ASGI worker, over a raw socket with frames written by
//! hand (RFC 6455): the handshake, echo, fragmentation with a ping between
//! fragments, oversize (1009), invalid UTF-8 (1007), close codes both ways,
//! refusal (403) and the denial response, a client that never reads (the
//! app's `send` waits; memory stays bounded), a client that vanishes, the
//! drain (1001), and an app whose call is not a coroutine function (an
//! awaitable that is no coroutine is served; a call that raises is a 500).

mod common;

use common::ws::{Ws, TIMEOUT};
use common::Worker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

async fn ws_worker(extra: &[&str]) -> Worker {
    let args: Vec<&str> = ["--interface", "asgi"]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    Worker::start("asgi_ws:app", &args).await
}

#[tokio::test]
async fn echo_text_and_bytes_with_the_scope_and_a_subprotocol() {
    let w = ws_worker(&[]).await;
    let (mut ws, head) =
        Ws::handshake(&w, "/echo", "Sec-WebSocket-Protocol: chat, superchat\r\n").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("sec-websocket-protocol: chat\r\n"), "{head}");
    assert!(head.contains("x-ws: yes"), "{head}");
    ws.frame(true, 1, b"scope").await;
    let (fin, op, p) = ws.read_frame().await.unwrap();
    assert!(fin && op == 1);
    let s: serde_json::Value = serde_json::from_slice(&p).unwrap();
    assert_eq!(s["scheme"], "ws");
    assert_eq!(s["subprotocols"], serde_json::json!(["chat", "superchat"]));
    ws.frame(true, 2, &[0, 1, 2, 255]).await;
    assert_eq!(
        ws.read_frame().await.unwrap(),
        (true, 2, vec![0, 1, 2, 255])
    );
    let big = vec![b'a'; 200_000];
    ws.frame(true, 1, &big).await;
    assert_eq!(ws.read_frame().await.unwrap().2.len(), 200_000);
    ws.frame(true, 8, &[0x03, 0xe8]).await; // 1000
    assert_eq!(ws.close_frame().await.0, 1000);
    assert!(ws.closed().await);
    let code = std::fs::read_to_string(w.wait_marker("disconnect", TIMEOUT).await).unwrap();
    assert_eq!(code, "1000");
    w.assert_clean_log();
}

#[tokio::test]
async fn fragments_with_a_ping_between_them_make_one_message() {
    let w = ws_worker(&[]).await;
    let mut ws = Ws::open(&w, "/echo").await;
    ws.frame(false, 1, b"hel").await;
    ws.frame(true, 9, b"are you there").await;
    assert_eq!(
        ws.read_frame().await.unwrap(),
        (true, 10, b"are you there".to_vec()),
        "pong first"
    );
    ws.frame(false, 0, b"lo ").await;
    ws.frame(true, 0, "wörld".as_bytes()).await;
    assert_eq!(
        ws.read_frame().await.unwrap(),
        (true, 1, "hello wörld".as_bytes().to_vec())
    );
    w.assert_clean_log();
}

#[tokio::test]
async fn oversize_is_1009_and_invalid_utf8_is_1007() {
    let w = ws_worker(&["--ws-max-message", "1000"]).await;
    let mut ws = Ws::open(&w, "/echo").await;
    ws.frame(false, 2, &[0; 600]).await;
    ws.frame(true, 0, &[0; 600]).await;
    assert_eq!(ws.close_frame().await.0, 1009);
    assert!(ws.closed().await);
    let mut ws = Ws::open(&w, "/echo").await;
    ws.frame(true, 1, &[b'o', b'k', 0xff, 0xfe]).await;
    assert_eq!(ws.close_frame().await.0, 1007);
    assert!(ws.closed().await);
    // A text message split inside a UTF-8 sequence is fine.
    let mut ws = Ws::open(&w, "/echo").await;
    let e = "é".as_bytes();
    ws.frame(false, 1, &e[..1]).await;
    ws.frame(true, 0, &e[1..]).await;
    assert_eq!(ws.read_frame().await.unwrap().2, e);
    w.assert_clean_log();
}

#[tokio::test]
async fn close_codes_refusal_and_denial() {
    let w = ws_worker(&[]).await;
    let mut ws = Ws::open(&w, "/close").await;
    assert_eq!(ws.close_frame().await, (4001, "bye".into()));
    ws.frame(true, 8, &[0x0f, 0xa1]).await; // the client answers 4001
    assert!(ws.closed().await);
    let code = std::fs::read_to_string(w.wait_marker("close-disconnect", TIMEOUT).await).unwrap();
    assert_eq!(code, "4001");
    let (mut ws, head) = Ws::handshake(&w, "/reject", "").await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(ws.closed().await);
    let (_, head) = Ws::handshake(&w, "/deny", "").await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(head.contains("content-type: text/plain"), "{head}");
    // A bad handshake never reaches the app.
    let mut s = UnixStream::connect(&w.socket).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    w.assert_clean_log();
}

#[tokio::test]
async fn a_client_that_never_reads_makes_the_apps_send_wait() {
    let w = ws_worker(&[]).await;
    let ws = Ws::open(&w, "/flood").await;
    // The app sends 64 KiB messages as fast as it may; the client reads
    // nothing. Once the socket buffers are full, send() must wait.
    let flood = w.wait_marker("flood", TIMEOUT).await;
    let last = common::sends_stalled_at(&flood).await;
    assert!(last < 32 << 20, "{last} bytes went into buffers");
    let status = std::fs::read_to_string(format!("/proc/{}/status", w.child.id())).unwrap();
    let rss: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    assert!(
        rss < 80 << 10,
        "RSS {rss} KiB with a client that never reads"
    );
    // The client vanishes: the app's blocked send ends with an error it sees.
    drop(ws);
    w.wait_marker("flood-ended", TIMEOUT).await;
    w.assert_clean_log();
}

#[tokio::test]
async fn a_vanishing_client_is_a_disconnect_1006() {
    let w = ws_worker(&[]).await;
    let mut ws = Ws::open(&w, "/echo").await;
    ws.frame(true, 1, b"hi").await;
    assert_eq!(ws.read_frame().await.unwrap().2, b"hi");
    drop(ws);
    let code = std::fs::read_to_string(w.wait_marker("disconnect", TIMEOUT).await).unwrap();
    assert_eq!(code, "1006");
    w.assert_clean_log();
}

#[tokio::test]
async fn pings_keep_it_alive_and_a_silent_peer_is_dropped() {
    let w = ws_worker(&["--ws-ping-interval", "1", "--ws-ping-timeout", "1"]).await;
    let mut ws = Ws::open(&w, "/echo").await;
    let (_, op, _) = ws.read_frame().await.unwrap();
    assert_eq!(op, 9, "a ping after a second of silence");
    // No pong: dropped within the timeout.
    assert!(ws.closed().await, "still open without a pong");
    w.wait_marker("disconnect", TIMEOUT).await;
}

#[tokio::test]
async fn drain_closes_websockets_with_1001_after_the_grace() {
    let mut w = ws_worker(&["--graceful-timeout", "3"]).await;
    let mut ws = Ws::open(&w, "/echo").await;
    w.signal(libc::SIGTERM);
    // Still served during the grace.
    ws.frame(true, 1, b"still here").await;
    assert_eq!(ws.read_frame().await.unwrap().2, b"still here");
    let (code, _) = ws.close_frame().await;
    assert_eq!(code, 1001);
    ws.frame(true, 8, &[0x03, 0xe9]).await;
    let status = w.wait_exit(TIMEOUT).await;
    assert!(status.success(), "{status}\n{}", w.stderr());
}

#[tokio::test]
async fn an_idle_websocket_is_closed_1001_and_an_app_error_is_1011() {
    let w = ws_worker(&["--ws-idle-timeout", "1", "--ws-ping-interval", "0"]).await;
    let mut ws = Ws::open(&w, "/echo").await;
    assert_eq!(ws.close_frame().await, (1001, "idle timeout".into()));
    let mut ws = Ws::open(&w, "/raise").await;
    assert_eq!(ws.close_frame().await.0, 1011);
    let log = w.stderr();
    assert!(log.contains("RuntimeError: boom-in-websocket"), "{log}");
}

#[tokio::test]
async fn an_app_call_that_returns_no_coroutine_is_served_and_one_that_raises_is_a_500() {
    let w = Worker::start("asgi_ws:calls", &["--interface", "asgi"]).await;
    let mut ws = Ws::open(&w, "/future").await;
    ws.frame(true, 1, b"through a task").await;
    assert_eq!(ws.read_frame().await.unwrap().2, b"through a task");
    let (_, head) = Ws::handshake(&w, "/sync-raise", "").await;
    assert!(head.starts_with("http/1.1 500"), "{head}");
    let log = w.stderr();
    assert!(
        log.contains("RuntimeError: boom-before-the-coroutine"),
        "{log}"
    );
}
