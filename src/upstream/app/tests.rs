//! [`AppUpstream`] against a fake app (`fake`): a Unix socket (or a
//! loopback port) in the test that reads HTTP/1.1 requests and answers each
//! with bytes the test scripted, so odd framings (close-delimited, chunked with
//! trailers, 1xx, 101) and misbehaviour (closing, hanging) are exact. It is
//! leased by a stand-in [`RuntimeHandle`] that counts leases taken,
//! released and recycled. Every test checks that every lease was released.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use super::*;
use crate::config::{AppListen, StartPolicy};
use crate::upstream::tests_support::{
    body, context, expect_err, spawn_get, until, Counts, StandIn,
};
use crate::upstream::{full_body, Scheme, TunnelSlot};

mod fake;
mod pool;

use fake::{echo_server, Answer, FakeApp, OK};

// --- the upstream under test ---

fn app_config() -> AppConfig {
    AppConfig {
        program: "/bin/true".into(),
        args: vec![],
        cwd: "/".into(),
        processes: 1,
        listen: AppListen::Socket,
        mount: "/app".into(),
        ready: None,
        start: StartPolicy::OnDemand,
        startup_timeout: Duration::from_secs(5),
        max_concurrency: 4,
        queue_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        max_requests: None,
        memory_per_process: None,
        idle_timeout: None,
        env: Default::default(),
    }
}

struct Setup {
    upstream: Arc<AppUpstream>,
    ctx: RequestContext,
    counts: Arc<Counts>,
}

fn setup(app: &FakeApp, tune: impl FnOnce(&mut AppConfig)) -> Setup {
    let mut config = app_config();
    tune(&mut config);
    let counts = Arc::new(Counts::default());
    let runtime = StandIn {
        socket: app.socket.clone(),
        tcp: app.tcp,
        fail: None,
        counts: counts.clone(),
    };
    let upstream = AppUpstream::new(Arc::new(runtime), &config, Arc::default());
    let ctx = context("192.0.2.7:4000", Scheme::Https);
    Setup {
        upstream: Arc::new(upstream),
        ctx,
        counts,
    }
}

impl Setup {
    async fn send(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        self.upstream.handle(req, &self.ctx).await
    }

    async fn get(&self, path: &str) -> Result<Response<ResponseBody>, UpstreamError> {
        self.send(Request::get(path).body(full_body("")).unwrap())
            .await
    }

    /// A GET in a task of its own: its status and whole body.
    fn spawn_get(&self, path: &'static str) -> tokio::task::JoinHandle<(u16, Bytes)> {
        spawn_get(self.upstream.clone(), self.ctx.clone(), path)
    }

    fn recycled(&self) -> usize {
        self.counts.recycled.load(Ordering::SeqCst)
    }

    /// Waits until every lease taken was released (a response body's end
    /// lets its lease go).
    async fn all_released(&self) {
        let c = &self.counts;
        until("every lease released", || {
            c.leased.load(Ordering::SeqCst) == c.released.load(Ordering::SeqCst)
        })
        .await;
        assert_eq!(self.upstream.places().0, 0, "an admission place was kept");
    }
}

// --- the tests ---

#[tokio::test]
async fn a_kept_alive_connection_serves_the_next_request() {
    let app = FakeApp::start(|_| Answer::Reply(OK));
    let s = setup(&app, |_| {});
    for _ in 0..3 {
        let resp = s.get("/app/").await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body(resp).await.unwrap(), "ok");
    }
    assert_eq!(app.connections(), 1, "one connection for three requests");
    s.all_released().await;
}

#[tokio::test]
async fn a_request_on_a_connection_the_app_closed_is_sent_again_on_a_new_one() {
    // The first request keeps the connection; the app closes it as the
    // second arrives (its keep-alive timeout); the retry is answered.
    let app = FakeApp::start(|n| match n {
        0 => Answer::Reply(OK),
        1 => Answer::Close,
        _ => Answer::Reply(b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone"),
    });
    let s = setup(&app, |_| {});
    assert_eq!(body(s.get("/app/").await.unwrap()).await.unwrap(), "ok");
    // Larger than the in-memory spool: replayed from its file.
    let upload = vec![b'x'; crate::upstream::spool::MEMORY_LIMIT + 12345];
    let req = Request::put("/app/upload")
        .header("content-length", upload.len())
        .body(full_body(upload.clone()))
        .unwrap();
    let resp = s.send(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(body(resp).await.unwrap(), "done");
    assert_eq!(app.connections(), 2);
    let seen = app.seen();
    assert_eq!(seen.len(), 3, "the request was sent twice");
    assert!(seen[1].body.is_empty() || seen[1].body == upload);
    assert_eq!(
        seen[2].body.len(),
        upload.len(),
        "the whole body was replayed"
    );
    assert!(seen[2].body == upload);
    s.all_released().await;
}

#[tokio::test]
async fn a_post_the_app_received_is_never_sent_twice() {
    // The app reads the POST whole on a kept-alive connection and closes it
    // without a byte of answer (a worker killed after its commit): a 502,
    // and the app saw it once. A GET failing the same way goes again.
    let app = FakeApp::start(|n| match n {
        0 | 2 => Answer::Reply(OK),
        1 | 3 => Answer::Close,
        _ => Answer::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain"),
    });
    let s = setup(&app, |_| {});
    assert_eq!(body(s.get("/app/").await.unwrap()).await.unwrap(), "ok");
    let req = Request::post("/app/pay")
        .header("content-length", "6")
        .body(full_body("amount"))
        .unwrap();
    let err = expect_err(s.send(req).await);
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY, "{err}");
    let posts = |seen: &[fake::Seen]| seen.iter().filter(|r| r.head.starts_with("POST")).count();
    assert_eq!(
        posts(&app.seen()),
        1,
        "the POST reached the app once: {:?}",
        app.seen()
    );
    // The same failure on a GET: sent again on a new connection, answered.
    assert_eq!(body(s.get("/app/").await.unwrap()).await.unwrap(), "ok");
    let resp = s.get("/app/again").await.unwrap();
    assert_eq!(body(resp).await.unwrap(), "again");
    let seen = app.seen();
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(posts(&seen), 1);
    s.all_released().await;
}

#[tokio::test]
async fn a_new_connection_that_breaks_is_a_502_and_not_sent_again() {
    let app = FakeApp::start(|_| Answer::Close);
    let s = setup(&app, |_| {});
    let err = expect_err(s.get("/app/").await);
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY, "{err}");
    assert_eq!(app.seen().len(), 1, "no retry on a new connection");
    // A reused connection is retried once, never twice.
    let app = FakeApp::start(|n| {
        if n == 0 {
            Answer::Reply(OK)
        } else {
            Answer::Close
        }
    });
    let s = setup(&app, |_| {});
    assert_eq!(body(s.get("/app/").await.unwrap()).await.unwrap(), "ok");
    let err = expect_err(s.get("/app/").await);
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY, "{err}");
    assert_eq!(app.seen().len(), 3, "the first, and the second twice");
    s.all_released().await;
}

#[tokio::test]
async fn a_refused_connection_is_a_502() {
    // A Unix socket nobody listens on any more.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gone.sock");
    drop(UnixListener::bind(&socket).unwrap());
    let app = FakeApp {
        socket,
        tcp: None,
        log: Arc::default(),
        _dir: dir,
    };
    let s = setup(&app, |_| {});
    let err = expect_err(s.get("/app/").await);
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY, "{err}");
    assert!(err.to_string().contains("cannot connect"), "{err}");
    // A loopback port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = port.local_addr().unwrap();
    drop(port);
    let app = FakeApp {
        tcp: Some(addr),
        ..FakeApp::start(|_| Answer::Reply(OK))
    };
    let s = setup(&app, |_| {});
    let err = expect_err(s.get("/app/").await);
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY, "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    s.all_released().await;
}

#[tokio::test]
async fn a_response_that_is_not_http_is_a_502() {
    let garbage: [&'static [u8]; 3] = [
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Le",
    ];
    for bytes in garbage {
        let app = FakeApp::start(move |_| Answer::ReplyAndClose(bytes));
        let s = setup(&app, |_| {});
        let err = expect_err(s.get("/app/").await);
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY, "{err}");
        assert_eq!(app.seen().len(), 1, "not sent again: the app answered");
        s.all_released().await;
    }
}

/// hyper's limit on a response head's fields (`pool`): 100 pass, 101 are a 502.
#[tokio::test]
async fn a_response_head_of_100_fields_passes_and_of_101_is_a_502() {
    for (fields, want) in [(100, StatusCode::OK), (101, StatusCode::BAD_GATEWAY)] {
        // Content-Length is one of the fields.
        let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
        for i in 0..fields - 1 {
            head.push_str(&format!("X-F{i}: {i}\r\n"));
        }
        head.push_str("\r\nok");
        let bytes: &'static [u8] = Box::leak(head.into_bytes().into_boxed_slice());
        let app = FakeApp::start(move |_| Answer::Reply(bytes));
        let s = setup(&app, |_| {});
        let status = match s.get("/app/").await {
            Ok(resp) => resp.status(),
            Err(e) => e.status(),
        };
        assert_eq!(status, want, "{fields} fields");
        s.all_released().await;
    }
}

#[tokio::test]
async fn an_instance_on_a_loopback_port_is_reached_there() {
    let app = FakeApp::start_tcp(|_| Answer::Reply(OK)).await;
    let s = setup(&app, |c| c.listen = AppListen::Port);
    for _ in 0..2 {
        assert_eq!(body(s.get("/app/").await.unwrap()).await.unwrap(), "ok");
    }
    assert_eq!(app.connections(), 1);
    s.all_released().await;
}

#[tokio::test]
async fn a_close_delimited_body_is_read_to_the_end_and_its_connection_not_kept() {
    let app = FakeApp::start(|n| match n {
        0 => Answer::ReplyAndClose(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
        ),
        _ => Answer::Reply(OK),
    });
    let s = setup(&app, |_| {});
    let resp = s.get("/app/").await.unwrap();
    assert_eq!(resp.headers().get("content-length"), None);
    assert_eq!(body(resp).await.unwrap(), "until the end");
    assert_eq!(body(s.get("/app/").await.unwrap()).await.unwrap(), "ok");
    assert_eq!(app.connections(), 2);
    assert_eq!(
        app.seen().len(),
        2,
        "nothing was sent on the closed connection"
    );
    s.all_released().await;
}

#[tokio::test]
async fn a_chunked_body_with_trailers_is_streamed_and_its_connection_kept() {
    let app = FakeApp::start(|n| match n {
        0 => Answer::Reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n",
        ),
        _ => Answer::Reply(OK),
    });
    let s = setup(&app, |_| {});
    let resp = s.get("/app/").await.unwrap();
    assert_eq!(resp.headers().get("transfer-encoding"), None, "hop-by-hop");
    assert_eq!(resp.headers().get("trailer"), None, "hop-by-hop");
    assert_eq!(body(resp).await.unwrap(), "hello world");
    assert_eq!(body(s.get("/app/").await.unwrap()).await.unwrap(), "ok");
    assert_eq!(app.connections(), 1);
    s.all_released().await;
}

#[tokio::test]
async fn informational_responses_are_passed_over_for_the_final_one() {
    let app = FakeApp::start(|_| {
        Answer::Reply(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )
    });
    let s = setup(&app, |_| {});
    for _ in 0..2 {
        let resp = s.get("/app/").await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body(resp).await.unwrap(), "ok");
    }
    assert_eq!(app.connections(), 1);
    s.all_released().await;
}

#[tokio::test]
async fn a_head_response_has_no_body_and_keeps_its_length() {
    let app = FakeApp::start(|n| match n {
        0 => Answer::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
        _ => Answer::Reply(OK),
    });
    let s = setup(&app, |_| {});
    let req = Request::head("/app/").body(full_body("")).unwrap();
    let resp = s.send(req).await.unwrap();
    assert_eq!(resp.headers()["content-length"], "10");
    assert_eq!(body(resp).await.unwrap(), "");
    assert_eq!(body(s.get("/app/").await.unwrap()).await.unwrap(), "ok");
    assert_eq!(app.connections(), 1, "the HEAD's connection was kept");
    assert!(app.seen()[0].head.starts_with("HEAD /app/ HTTP/1.1\r\n"));
    s.all_released().await;
}

#[tokio::test]
async fn a_101_becomes_a_tunnel_that_carries_bytes_both_ways_and_holds_the_lease() {
    const SWITCH: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
        Upgrade: websocket\r\nSec-WebSocket-Accept: x\r\n\r\nearly";
    tunnel_both_ways(FakeApp::start(|_| Answer::Upgrade(SWITCH))).await;
    tunnel_both_ways(FakeApp::start_tcp(|_| Answer::Upgrade(SWITCH)).await).await;
}

/// An upgrade to `app`: its tunnel carries bytes both ways and holds the
/// lease and place until it is dropped.
async fn tunnel_both_ways(app: FakeApp) {
    let s = setup(&app, |_| {});
    let mut req = Request::get("/app/ws")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(full_body(""))
        .unwrap();
    req.extensions_mut().insert(Upgrade);
    let resp = s.send(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()["sec-websocket-accept"], "x");
    let seen = app.seen().remove(0);
    assert_eq!(seen.header("connection"), Some("upgrade"));
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_eq!(
        seen.header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    let slot = resp.extensions().get::<TunnelSlot>().expect("a tunnel");
    let mut tunnel = slot.take().unwrap();
    assert_eq!(tunnel.read_ahead, "early");
    assert_eq!(s.upstream.places().0, 1, "the tunnel holds its place");
    tunnel.stream.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tunnel.stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");
    assert_eq!(
        s.counts.released.load(Ordering::SeqCst),
        0,
        "the lease is held"
    );
    drop(tunnel);
    s.all_released().await;
}

#[tokio::test]
async fn an_upgrade_the_app_refuses_is_a_plain_response() {
    let app =
        FakeApp::start(|_| Answer::Reply(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno"));
    let s = setup(&app, |_| {});
    let mut req = Request::get("/app/ws")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(full_body(""))
        .unwrap();
    req.extensions_mut().insert(Upgrade);
    let resp = s.send(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.extensions().get::<TunnelSlot>().is_none());
    assert_eq!(body(resp).await.unwrap(), "no");
    s.all_released().await;
}

#[tokio::test]
async fn no_answer_within_request_timeout_is_a_504_and_recycles_a_stuck_instance() {
    let app = FakeApp::start(|_| Answer::Hang);
    let s = setup(&app, |c| c.request_timeout = Duration::from_millis(200));
    let err = expect_err(s.get("/app/slow").await);
    assert_eq!(err.status(), StatusCode::GATEWAY_TIMEOUT, "{err}");
    assert_eq!(s.recycled(), 1, "it answered nothing meanwhile: stuck");
    s.all_released().await;
}

#[tokio::test]
async fn one_slow_request_does_not_recycle_an_instance_that_answers_others() {
    let (open, gate) = watch::channel(false);
    let app = FakeApp::start(move |n| match n {
        0 => Answer::Hang,
        _ => Answer::ReplyWhenOpen(gate.clone(), OK),
    });
    let s = setup(&app, |c| c.request_timeout = Duration::from_millis(500));
    let slow = s.spawn_get("/app/slow");
    until("the slow request", || app.seen().len() == 1).await;
    let fast = s.spawn_get("/app/fast");
    until("the fast request", || app.seen().len() == 2).await;
    open.send(true).unwrap();
    assert_eq!(fast.await.unwrap(), (200, Bytes::from("ok")));
    assert_eq!(slow.await.unwrap().0, 504);
    assert_eq!(
        s.recycled(),
        0,
        "the instance answered another request meanwhile"
    );
    s.all_released().await;
}

#[tokio::test]
async fn a_request_waits_for_a_place_up_to_queue_timeout_then_503() {
    let (open, gate) = watch::channel(false);
    let app = FakeApp::start(move |_| Answer::ReplyWhenOpen(gate.clone(), OK));
    let s = setup(&app, |c| {
        c.max_concurrency = 1;
        c.queue_timeout = Duration::from_millis(200);
    });
    assert_eq!(s.upstream.places(), (0, 1));
    let first = s.spawn_get("/app/1");
    until("the first request at the app", || app.seen().len() == 1).await;
    let err = expect_err(s.get("/app/2").await);
    assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE, "{err}");
    open.send(true).unwrap();
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(
        app.seen().len(),
        1,
        "the refused request never reached the app"
    );
    s.all_released().await;
}

#[tokio::test]
async fn headers_are_cleaned_both_ways_and_forwarded_headers_say_what_polyhost_saw() {
    let app = FakeApp::start(|_| {
        Answer::Reply(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
              X-Hop: 1\r\nX-End: 2\r\nContent-Length: 2\r\n\r\nok",
        )
    });
    let s = setup(&app, |_| {});
    let req = Request::post("/app/a%20b?q=1")
        .version(http::Version::HTTP_2)
        .header("host", "blog.test:8443")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop")
        .header("keep-alive", "timeout=1")
        .header("te", "trailers")
        .header("expect", "100-continue")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-prefix", "/evil")
        .header("x-forwarded-host", "evil.test")
        .header("forwarded", "for=6.6.6.6")
        .header("proxy-authorization", "Basic eDp5")
        .header("content-length", "3")
        .body(full_body("abc"))
        .unwrap();
    let resp = s.send(req).await.unwrap();
    for hop in ["connection", "keep-alive", "x-hop"] {
        assert_eq!(resp.headers().get(hop), None, "{hop} reached the client");
    }
    assert_eq!(resp.headers()["x-end"], "2");
    assert_eq!(body(resp).await.unwrap(), "ok");
    let seen = app.seen().remove(0);
    assert!(
        seen.head.starts_with("POST /app/a%20b?q=1 HTTP/1.1\r\n"),
        "{}",
        seen.head
    );
    for gone in ["connection", "x-secret", "keep-alive", "te", "expect"] {
        assert_eq!(
            seen.header(gone),
            None,
            "{gone} reached the app:\n{}",
            seen.head
        );
    }
    let expected = [
        ("host", "blog.test:8443"),
        ("x-forwarded-for", "192.0.2.7"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "blog.test:8443"),
        ("x-forwarded-prefix", "/app"),
        (
            "forwarded",
            "for=192.0.2.7;proto=https;host=\"blog.test:8443\"",
        ),
        ("proxy-authorization", "Basic eDp5"),
        ("content-length", "3"),
    ];
    for (name, value) in expected {
        assert_eq!(seen.header(name), Some(value), "{name}:\n{}", seen.head);
    }
    assert_eq!(
        seen.head.matches("x-forwarded-for").count(),
        1,
        "{}",
        seen.head
    );
    assert_eq!(seen.body, b"abc");
    s.all_released().await;
}

#[tokio::test]
async fn an_ipv6_client_is_quoted_in_forwarded_and_a_root_mount_sends_no_prefix() {
    let app = FakeApp::start(|_| Answer::Reply(OK));
    let mut s = setup(&app, |_| {});
    s.ctx.client = "[2001:db8::1]:5000".parse().unwrap();
    s.ctx.scheme = Scheme::Http;
    s.ctx.mount_prefix = "".into();
    let req = Request::get("/").body(full_body("")).unwrap();
    body(s.send(req).await.unwrap()).await.unwrap();
    let seen = app.seen().remove(0);
    assert_eq!(
        seen.header("forwarded"),
        Some("for=\"[2001:db8::1]\";proto=http;host=\"blog.test\"")
    );
    assert_eq!(seen.header("x-forwarded-for"), Some("2001:db8::1"));
    assert_eq!(seen.header("x-forwarded-prefix"), None);
    assert_eq!(seen.header("content-length"), None, "a GET without a body");
    s.all_released().await;
}

#[tokio::test]
async fn a_response_body_that_stalls_past_request_timeout_is_cut() {
    let app =
        FakeApp::start(|_| Answer::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"));
    let s = setup(&app, |c| c.request_timeout = Duration::from_millis(200));
    let resp = s.get("/app/").await.unwrap();
    let err = body(resp).await.unwrap_err();
    assert!(err.to_string().contains("request_timeout"), "{err}");
    s.all_released().await;
}
