//! ASGI 3.0 over HTTP (`--interface asgi`), with the real binary and a
//! conformance app that checks every scope and message (an assertion in
//! the app shows in the error log, which each test checks is clean):
//! the scope, a 50 MiB body streamed, a streamed response, a client that
//! goes away mid-response, HEAD, keep-alive, lifespan (state, failure,
//! shutdown on drain), request_timeout, errors, and the loop-lag watchdog.

mod common;

use std::time::Duration;

use common::{empty, request, send_on, ClientBody, RawConn, Worker};
use http::StatusCode;
use http_body_util::BodyExt;

const ASGI: &[&str] = &["--interface", "asgi"];

async fn conformance() -> Worker {
    Worker::start("asgi_conformance:app", ASGI).await
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}", String::from_utf8_lossy(body));
    })
}

#[tokio::test]
async fn the_http_scope_is_complete_and_carries_the_routers_metadata() {
    let w = conformance().await;
    let r = w
        .send(
            request("GET", "/shop/caf%C3%A9/x?q=1&r=%20")
                .header("X-Custom", "v1")
                .header("x-polyhost-remote-addr", "203.0.113.9:4567")
                .header("x-polyhost-scheme", "https")
                .header("x-polyhost-script-name", "/shop")
                .header("x-polyhost-server-name", "example.test")
                .header("x-polyhost-server-port", "8443")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let s = json(&r.body);
    assert_eq!(s["type"], "http");
    assert_eq!(s["asgi"]["version"], "3.0");
    assert_eq!(s["asgi"]["spec_version"], "2.4");
    assert_eq!(s["http_version"], "1.1");
    assert_eq!(s["method"], "GET");
    assert_eq!(s["scheme"], "https");
    assert_eq!(s["path"], "/shop/café/x");
    assert_eq!(s["raw_path"], "/shop/caf%C3%A9/x");
    assert_eq!(s["query_string"], "q=1&r=%20");
    assert_eq!(s["root_path"], "/shop");
    assert_eq!(s["client"], serde_json::json!(["203.0.113.9", 4567]));
    assert_eq!(s["server"], serde_json::json!(["example.test", 8443]));
    assert_eq!(
        s["state"],
        serde_json::json!({"answer": 42}),
        "lifespan state"
    );
    let headers = s["headers"].as_array().unwrap();
    assert!(
        headers.contains(&serde_json::json!(["x-custom", "v1"])),
        "{headers:?}"
    );
    assert!(headers.contains(&serde_json::json!(["host", "example.test"])));
    assert!(
        !headers
            .iter()
            .any(|h| h[0].as_str().unwrap().starts_with("x-polyhost-")),
        "reserved fields leak: {headers:?}"
    );
    let ext = s["extensions"].as_array().unwrap();
    assert!(
        ext.contains(&serde_json::json!("http.response.trailers")),
        "{ext:?}"
    );
    w.assert_clean_log();
}

#[tokio::test]
async fn a_50_mib_body_is_streamed_to_the_app_not_buffered() {
    let w = conformance().await;
    const SIZE: usize = 50 << 20;
    let chunk = bytes::Bytes::from(vec![b'z'; 1 << 20]);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<bytes::Bytes>, _>>(2);
    tokio::spawn(async move {
        for _ in 0..SIZE / chunk.len() {
            if tx
                .send(Ok(hyper::body::Frame::data(chunk.clone())))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let body: ClientBody = http_body_util::StreamBody::new(tokio_stream_from(rx)).boxed();
    let r = w.send(request("POST", "/upload").body(body).unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let s = json(&r.body);
    assert_eq!(s["len"], SIZE);
    assert_eq!(s["sha256"], sha256_of_z(SIZE));
    assert!(s["messages"].as_u64().unwrap() > 10, "not streamed: {s}");
    assert!(
        s["max_chunk"].as_u64().unwrap() <= 4 << 20,
        "a message held too much: {s}"
    );
    // The process never held the body: its peak RSS stays far below 50 MiB more than a hello.
    let hwm = peak_rss_kib(&w);
    eprintln!("peak RSS after the 50 MiB upload: {hwm} KiB");
    assert!(hwm < 60 << 10, "peak RSS {hwm} KiB: the body was buffered");
    w.assert_clean_log();
}

/// sha256 of `n` bytes of `z`, by Python (no extra crate for one digest).
fn sha256_of_z(n: usize) -> String {
    let out = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            &format!("import hashlib;print(hashlib.sha256(b'z'*{n}).hexdigest())"),
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn peak_rss_kib(w: &Worker) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", w.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn a_chunked_request_body_and_a_streamed_chunked_response() {
    let w = conformance().await;
    let mut c = RawConn::connect(&w).await;
    c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: t\r\n\r\n")
        .await;
    let r = c.read_response(false).await;
    assert_eq!(r.status, 200);
    assert_eq!(json(&r.body)["len"], 11);
    c.send(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let r = c.read_response(false).await;
    assert!(r.head.contains("transfer-encoding: chunked"), "{}", r.head);
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        "part 0\npart 1\npart 2\npart 3\npart 4\n"
    );
    // Keep-alive: the same connection serves HEAD next, without a body.
    c.send(b"HEAD /scope HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let r = c.read_response(true).await;
    assert_eq!(r.status, 200);
    assert!(r.head.contains("x-head: yes"), "{}", r.head);
    assert!(
        r.head.contains("content-length: "),
        "HEAD announces the length: {}",
        r.head
    );
    c.send(b"GET /scope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let r = c.read_response(false).await;
    assert_eq!(
        json(&r.body)["method"],
        "GET",
        "nothing of HEAD's body was left on the wire"
    );
    assert!(c.closed().await);
    w.assert_clean_log();
}

#[tokio::test]
async fn a_client_that_goes_away_mid_response_is_an_http_disconnect() {
    let w = conformance().await;
    let mut conn = w.connect().await;
    conn.ready().await.unwrap();
    let resp = conn
        .send_request(request("GET", "/forever").body(empty()).unwrap())
        .await
        .unwrap();
    let mut body = resp.into_body();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    drop(body);
    drop(conn);
    w.wait_marker("disconnected", Duration::from_secs(20)).await;
    assert_eq!(
        w.get("/scope").await.status,
        StatusCode::OK,
        "the worker lives on"
    );
    w.assert_clean_log();
}

#[tokio::test]
async fn lifespan_shutdown_runs_on_drain() {
    let mut w = conformance().await;
    assert_eq!(w.get("/scope").await.status, StatusCode::OK);
    w.signal(libc::SIGTERM);
    let status = w.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}\n{}", w.stderr());
    assert!(
        w.marker("shutdown").exists(),
        "lifespan.shutdown never came:\n{}",
        w.stderr()
    );
    assert!(!w.socket.exists(), "the socket file is removed at stop");
    w.assert_clean_log();
}

#[tokio::test]
async fn a_failing_lifespan_startup_is_an_app_that_does_not_start() {
    for (app, mode, said) in [
        (
            "asgi_faults:lifespan_fails",
            "auto",
            "database unreachable at db:5432",
        ),
        ("asgi_faults:lifespan_raises", "on", "startup exploded"),
        (
            "asgi_faults:no_lifespan",
            "on",
            "this app knows no lifespan",
        ),
    ] {
        let mut w = Worker::spawn(app, &["--interface", "asgi", "--lifespan", mode]);
        let status = w.wait_exit(Duration::from_secs(20)).await;
        assert_eq!(
            status.code(),
            Some(polyhost_protocol::exit::APP_IMPORT_FAILED),
            "{app}: {status}\n{}",
            w.stderr()
        );
        assert!(
            w.stderr().contains(said),
            "{app}: stderr lacks {said:?}:\n{}",
            w.stderr()
        );
        assert!(
            !w.socket.exists(),
            "{app}: the socket was bound before startup succeeded"
        );
    }
    // auto: an app that knows no lifespan is served without it.
    let w = Worker::start("asgi_faults:no_lifespan", ASGI).await;
    assert_eq!(w.get("/").await.text(), "ok");
    assert!(
        w.stderr().contains("lifespan is not supported"),
        "{}",
        w.stderr()
    );
}

#[tokio::test]
async fn request_timeout_cancels_the_task_answers_504_and_the_process_lives() {
    let w = Worker::start(
        "asgi_faults:app",
        &["--interface", "asgi", "--request-timeout", "1"],
    )
    .await;
    // /hang never answers by itself: a 504 is the timeout's.
    let r = w.get("/hang").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.text());
    w.wait_marker("cancelled", Duration::from_secs(10)).await;
    assert_eq!(w.get("/").await.text(), "ok", "the process survives");
    // Started responses cannot become 504: the connection is closed instead.
    let mut c = RawConn::connect(&w).await;
    c.send(b"GET /hang-started HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let (status, _) = c.read_head().await;
    assert_eq!(status, 200);
    let mut conn = w.connect().await;
    let r = send_on(&mut conn, request("GET", "/").body(empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        w.stderr().contains("request_timeout (1s) for GET /hang"),
        "{}",
        w.stderr()
    );
}

#[tokio::test]
async fn app_errors_are_500_with_the_traceback_in_the_log() {
    let w = Worker::start("asgi_faults:app", ASGI).await;
    let r = w.get("/error").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let log = w.stderr();
    assert!(
        log.contains("error in the application for GET /error"),
        "{log}"
    );
    assert!(log.contains("RuntimeError: boom-in-async-app"), "{log}");
    let r = w.get("/bad-header").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        w.stderr()
            .contains("ValueError: ASGI headers must be an iterable of [name, value] byte strings"),
        "{}",
        w.stderr()
    );
    assert_eq!(w.get("/").await.text(), "ok");
}

#[tokio::test]
async fn a_blocking_call_shows_in_the_log_with_its_traceback() {
    let w = Worker::start("asgi_faults:app", ASGI).await;
    let r = w.get("/block").await;
    assert_eq!(r.text(), "blocked");
    let log = w.stderr();
    assert!(log.contains("the event loop has not run for"), "{log}");
    assert!(
        log.contains("time.sleep(2.5)"),
        "the blocking line is shown:\n{log}"
    );
    assert!(log.contains("asgi_faults.py"), "{log}");
}

#[tokio::test]
async fn concurrent_requests_share_the_loop() {
    // Twenty requests that each wait until all twenty are in flight: only
    // one loop serving them all at once lets any of them finish so.
    let w = Worker::start("asgi_faults:app", ASGI).await;
    let replies = futures_util::future::join_all((0..20).map(|_| w.get("/slow?n=20"))).await;
    for r in replies {
        assert_eq!(r.text(), "slow done, 20 in flight");
    }
}

#[tokio::test]
async fn one_request_over_max_concurrency_is_503() {
    let w = Worker::start(
        "asgi_faults:app",
        &["--interface", "asgi", "--max-concurrency", "1"],
    )
    .await;
    let hold = w.get("/hold");
    let over = async {
        // Sent while /hold runs (it sleeps 3 s after writing the marker).
        w.wait_marker("holding", Duration::from_secs(20)).await;
        w.get("/").await
    };
    let (hold, over) = tokio::join!(hold, over);
    assert_eq!(hold.text(), "held");
    assert_eq!(over.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        over.text().contains("over max-concurrency"),
        "{}",
        over.text()
    );
    assert_eq!(w.get("/").await.text(), "ok", "capacity is back");
}

#[tokio::test]
async fn trailers_and_pathsend() {
    let w = Worker::start("asgi_faults:app", ASGI).await;
    let mut c = RawConn::connect(&w).await;
    c.send(b"GET /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n")
        .await;
    let (status, head) = c.read_head().await;
    assert_eq!(status, 200);
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let rest = c.read_until(b"\r\n\r\n").await;
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "4\r\ndata\r\n0\r\nx-checksum: abc\r\n\r\n"
    );
    let r = w.get("/pathsend").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 600_000, "in 256 KiB pieces");
    assert_eq!(r.headers["content-length"], "600000");
    w.assert_clean_log();
}

#[tokio::test]
async fn a_client_that_never_reads_makes_the_apps_send_wait() {
    let w = Worker::start("asgi_faults:app", ASGI).await;
    let mut c = RawConn::connect(&w).await;
    c.send(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let flood = w.wait_marker("flood", Duration::from_secs(20)).await;
    let last = common::sends_stalled_at(&flood).await;
    assert!(last < 32 << 20, "{last} bytes went into buffers");
    drop(c);
    w.wait_marker("flood-ended", Duration::from_secs(20)).await;
    w.assert_clean_log();
}

#[tokio::test]
async fn a_task_that_swallows_its_cancellation_ends_the_process() {
    let mut w = Worker::start(
        "asgi_faults:app",
        &["--interface", "asgi", "--request-timeout", "1"],
    )
    .await;
    let r = w.get("/stubborn").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    w.wait_marker("swallowed", Duration::from_secs(10)).await;
    let status = w.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1), "{status}\n{}", w.stderr());
    assert!(
        w.stderr().contains("still runs 5 s later"),
        "{}",
        w.stderr()
    );
}

#[tokio::test]
async fn drain_lets_a_running_request_finish() {
    let mut w = Worker::start("asgi_faults:app", ASGI).await;
    let hold = w.get("/hold");
    let stop = async {
        w.wait_marker("holding", Duration::from_secs(20)).await;
        w.signal(libc::SIGTERM);
    };
    let (r, ()) = tokio::join!(hold, stop);
    assert_eq!(r.text(), "held");
    let status = w.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}\n{}", w.stderr());
}
