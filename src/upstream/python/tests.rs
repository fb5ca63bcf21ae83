//! [`PythonUpstream`] against a fake worker: a Unix socket in the test that
//! speaks just enough HTTP/1.1 and misbehaves on demand (closes, hangs,
//! breaks off a body), leased by a stand-in [`RuntimeHandle`] that counts
//! leases taken, released and recycled. No real process runs.
//!
//! Every test ends with every lease released: whatever way a request ends,
//! its lease drops.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use polyhost_protocol::header as reserved;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::*;
use crate::config::StartPolicy;
use crate::supervisor::LeaseError;
use crate::upstream::tests_support::{
    body, context, expect_err, spawn_get, until, Counts, StandIn,
};
use crate::upstream::{full_body, Fault, Scheme};

// --- the fake worker ---

/// What the fake worker does with one request.
enum Answer {
    /// Writes these bytes and waits for the next request on the connection
    /// (a short or empty answer is a worker that hangs).
    Reply(Vec<u8>),
    /// Writes these bytes, then closes the connection.
    ReplyAndClose(Vec<u8>),
    /// Writes these bytes once the gate is open, then serves on.
    ReplyWhenOpen(watch::Receiver<bool>, Vec<u8>),
}

/// A request as the fake worker read it.
struct Seen {
    head: String,
    body: Vec<u8>,
}

impl Seen {
    /// The value of header `name` (lower case), if sent.
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

#[derive(Default)]
struct WorkerLog {
    seen: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
    /// Connections the worker closed.
    closed: AtomicUsize,
}

struct FakeWorker {
    socket: PathBuf,
    log: Arc<WorkerLog>,
    _dir: tempfile::TempDir,
}

type Script = Arc<dyn Fn(usize) -> Answer + Send + Sync>;

impl FakeWorker {
    /// Listens on a fresh socket; `script(n)` answers the n-th request
    /// (from 0, counted over all connections).
    fn start(script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> FakeWorker {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("worker.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let log = Arc::new(WorkerLog::default());
        let script: Script = Arc::new(script);
        let served = Arc::new(AtomicUsize::new(0));
        let accept_log = log.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accept_log.connections.fetch_add(1, Ordering::SeqCst);
                let (log, script, served) = (accept_log.clone(), script.clone(), served.clone());
                tokio::spawn(async move {
                    serve_connection(stream, &log, &script, &served).await;
                    log.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        FakeWorker {
            socket,
            log,
            _dir: dir,
        }
    }

    fn seen(&self) -> usize {
        self.log.seen.lock().unwrap().len()
    }

    fn connections(&self) -> usize {
        self.log.connections.load(Ordering::SeqCst)
    }
}

/// Serves requests on one connection until the script closes it or the
/// router does.
async fn serve_connection(
    mut stream: UnixStream,
    log: &WorkerLog,
    script: &Script,
    served: &AtomicUsize,
) {
    let mut buf = Vec::new();
    while let Some(seen) = read_request(&mut stream, &mut buf).await {
        log.seen.lock().unwrap().push(seen);
        let (bytes, close) = match script(served.fetch_add(1, Ordering::SeqCst)) {
            Answer::Reply(bytes) => (bytes, false),
            Answer::ReplyAndClose(bytes) => (bytes, true),
            Answer::ReplyWhenOpen(mut gate, bytes) => {
                let _ = gate.wait_for(|open| *open).await;
                (bytes, false)
            }
        };
        if stream.write_all(&bytes).await.is_err() || close {
            return;
        }
    }
}

/// Reads one request (head and `content-length` body); `None` once the
/// router closed the connection.
async fn read_request(stream: &mut UnixStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(stream, buf).await?;
    };
    let head = String::from_utf8(buf.drain(..end).collect()).unwrap();
    let mut seen = Seen { head, body: vec![] };
    let len: usize = seen.header("content-length").unwrap().parse().unwrap();
    while buf.len() < len {
        fill(stream, buf).await?;
    }
    seen.body = buf.drain(..len).collect();
    Some(seen)
}

async fn fill(stream: &mut UnixStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16 << 10];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// A complete `200 OK` response with `body`.
fn ok(body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

// --- the upstream under test ---

struct Setup {
    upstream: Arc<PythonUpstream>,
    ctx: RequestContext,
    counts: Arc<Counts>,
}

fn python_config() -> PythonConfig {
    PythonConfig {
        module: "app".into(),
        callable: "application".into(),
        path: vec![],
        home: None,
        mount: "/app".into(),
        processes: 1,
        threads: 2,
        start: StartPolicy::OnDemand,
        queue_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        startup_timeout: Duration::from_secs(5),
        max_requests: None,
        memory_per_process: None,
        idle_timeout: None,
        worker: None,
        env: Default::default(),
        interface: crate::config::PythonInterface::Wsgi,
    }
}

/// An upstream on `worker` with [`python_config`] as `tune` changes it.
fn setup(worker: &FakeWorker, tune: impl FnOnce(&mut PythonConfig)) -> Setup {
    setup_failing(worker, None, tune)
}

fn setup_failing(
    worker: &FakeWorker,
    fail: Option<fn() -> LeaseError>,
    tune: impl FnOnce(&mut PythonConfig),
) -> Setup {
    let mut config = python_config();
    tune(&mut config);
    let counts = Arc::new(Counts::default());
    let runtime = StandIn {
        socket: worker.socket.clone(),
        tcp: None,
        fail,
        counts: counts.clone(),
    };
    let upstream = PythonUpstream::new(Arc::new(runtime), &config, Arc::default());
    let ctx = context("127.0.0.1:1", Scheme::Http);
    Setup {
        upstream: Arc::new(upstream),
        ctx,
        counts,
    }
}

impl Setup {
    async fn get(&self, path: &str) -> Result<Response<ResponseBody>, UpstreamError> {
        let req = Request::get(path).body(full_body("")).unwrap();
        self.upstream.handle(req, &self.ctx).await
    }

    /// A GET in a task of its own: its status and whole body.
    fn spawn_get(&self, path: &'static str) -> tokio::task::JoinHandle<(u16, Bytes)> {
        spawn_get(self.upstream.clone(), self.ctx.clone(), path)
    }

    /// Every lease taken was released, and none was recycled.
    fn all_released(&self) -> (usize, usize) {
        let (leased, released, recycled) = self.counts.get();
        assert_eq!(leased, released, "a lease was not released");
        (leased, recycled)
    }
}

// --- the tests ---

#[tokio::test]
async fn a_request_reaches_the_worker_with_its_metadata_and_the_answer_comes_back() {
    let worker = FakeWorker::start(|_| {
        Answer::Reply(
            b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\n\
              Set-Cookie: b=2\r\nContent-Length: 5\r\n\r\nhello"
                .to_vec(),
        )
    });
    let s = setup(&worker, |_| {});
    let req = Request::post("/app/x?q=1")
        .header("x-custom", "yes")
        .body(full_body("ping"))
        .unwrap();
    let resp = s.upstream.handle(req, &s.ctx).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    let cookies: Vec<_> = resp.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(body(resp).await.unwrap(), "hello");

    let seen = worker.log.seen.lock().unwrap();
    let req = &seen[0];
    assert!(
        req.head.starts_with("POST /app/x?q=1 HTTP/1.1\r\n"),
        "{}",
        req.head
    );
    assert_eq!(req.header("x-custom"), Some("yes"));
    assert_eq!(req.header(reserved::REMOTE_ADDR), Some("127.0.0.1:1"));
    assert_eq!(req.header(reserved::SCHEME), Some("http"));
    assert_eq!(req.header(reserved::SCRIPT_NAME), Some("/app"));
    assert_eq!(req.header(reserved::SERVER_NAME), Some("blog.test"));
    assert_eq!(req.header(reserved::SERVER_PORT), Some("80"));
    assert_eq!(req.header("content-length"), Some("4"));
    assert_eq!(req.body, b"ping");
    drop(seen);
    assert_eq!(s.all_released(), (1, 0));
    assert_eq!(s.upstream.threads(), (0, 2), "the permit is back");
}

#[tokio::test]
async fn sequential_requests_reuse_one_pooled_connection() {
    let worker = FakeWorker::start(|n| Answer::Reply(ok(format!("r{n}").as_bytes())));
    let s = setup(&worker, |_| {});
    for n in 0..3 {
        let resp = s.get("/app/").await.unwrap();
        assert_eq!(body(resp).await.unwrap(), format!("r{n}"));
    }
    assert_eq!(worker.connections(), 1);
    assert_eq!(s.all_released(), (3, 0));
}

#[tokio::test]
async fn a_pooled_connection_the_worker_closed_is_replaced_and_the_request_succeeds() {
    // The first answer says keep-alive, then the worker closes while idle.
    let worker = FakeWorker::start(|n| match n {
        0 => Answer::ReplyAndClose(ok(b"first")),
        _ => Answer::Reply(ok(b"second")),
    });
    let s = setup(&worker, |_| {});
    assert_eq!(body(s.get("/app/").await.unwrap()).await.unwrap(), "first");
    until("the worker's close", || {
        worker.log.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    let resp = s.get("/app/").await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body(resp).await.unwrap(), "second");
    assert_eq!(worker.connections(), 2);
    assert_eq!(
        worker.seen(),
        2,
        "the request went out once, on the new connection"
    );
    assert_eq!(s.all_released(), (2, 0));
}

#[tokio::test]
async fn a_worker_that_closes_without_answering_is_a_bad_gateway() {
    let worker = FakeWorker::start(|_| Answer::ReplyAndClose(vec![]));
    let s = setup(&worker, |_| {});
    let e = expect_err(s.get("/app/").await);
    assert!(matches!(e, UpstreamError::BadGateway(_)), "{e:?}");
    assert_eq!(e.fault(), Fault::Site);
    assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
    assert!(e.to_string().contains("without answering"), "{e}");
    assert_eq!(s.all_released(), (1, 0));
    assert_eq!(s.upstream.threads(), (0, 2));
}

#[tokio::test]
async fn a_response_broken_off_mid_body_fails_small_or_pumped() {
    // Small (read inline): the request fails with a 502.
    let worker = FakeWorker::start(|_| {
        Answer::ReplyAndClose(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf".to_vec())
    });
    let s = setup(&worker, |_| {});
    let e = expect_err(s.get("/app/").await);
    assert_eq!(e.status(), StatusCode::BAD_GATEWAY, "{e}");
    assert!(e.to_string().contains("broke off its response"), "{e}");
    assert_eq!(s.all_released(), (1, 0));

    // Large (pumped): the head went out already, so the body ends in an error.
    let mut cut = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n".to_vec();
    cut.extend_from_slice(&[b'x'; 300 << 10]);
    let worker = FakeWorker::start(move |_| Answer::ReplyAndClose(cut.clone()));
    let s = setup(&worker, |_| {});
    let resp = s.get("/app/").await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let err = body(resp).await.unwrap_err();
    assert!(err.to_string().contains("closed the connection"), "{err}");
    assert_eq!(s.all_released(), (1, 0));
    assert_eq!(s.upstream.threads(), (0, 2));
}

#[tokio::test]
async fn no_response_head_within_request_timeout_is_a_504_and_recycles_the_worker() {
    let worker = FakeWorker::start(|_| Answer::Reply(vec![])); // hangs
    let s = setup(&worker, |c| c.request_timeout = Duration::from_millis(150));
    let started = Instant::now();
    let e = expect_err(s.get("/app/").await);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(matches!(e, UpstreamError::Timeout(_)), "{e:?}");
    assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(s.all_released(), (1, 1), "one lease, recycled once");
    assert_eq!(s.upstream.threads(), (0, 2));
}

#[tokio::test]
async fn a_small_body_that_stalls_past_request_timeout_is_a_504_and_recycles() {
    let worker = FakeWorker::start(|_| {
        Answer::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf".to_vec())
    });
    let s = setup(&worker, |c| c.request_timeout = Duration::from_millis(150));
    let e = expect_err(s.get("/app/").await);
    assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT, "{e}");
    assert_eq!(s.all_released(), (1, 1));
}

#[tokio::test]
async fn a_lease_error_is_a_503_and_a_broken_app_a_500() {
    let worker = FakeWorker::start(|_| Answer::Reply(ok(b"never")));
    fn group() -> String {
        "blog python".into()
    }
    fn reason() -> String {
        "crash loop".into()
    }
    let cases: [(fn() -> LeaseError, u16); 4] = [
        (|| LeaseError::Stopped { group: group() }, 503),
        (
            || LeaseError::Failed {
                group: group(),
                reason: reason(),
            },
            503,
        ),
        (
            || LeaseError::StartTimedOut {
                group: group(),
                after: Duration::from_secs(5),
            },
            503,
        ),
        (
            || LeaseError::AppBroken {
                group: group(),
                reason: reason(),
            },
            500,
        ),
    ];
    for (fail, status) in cases {
        let s = setup_failing(&worker, Some(fail), |_| {});
        let e = expect_err(s.get("/app/").await);
        assert_eq!(e.status().as_u16(), status, "{e}");
        assert_eq!(e.fault(), Fault::Site, "{e:?}");
        assert!(e.to_string().contains("blog python"), "{e}");
        assert_eq!(s.all_released(), (0, 0));
        assert_eq!(s.upstream.threads(), (0, 2), "the permit is back");
    }
    assert_eq!(worker.connections(), 0);
}

#[tokio::test]
async fn when_every_thread_is_busy_a_request_waits_up_to_queue_timeout() {
    let (open, gate) = watch::channel(false);
    let worker = FakeWorker::start(move |_| Answer::ReplyWhenOpen(gate.clone(), ok(b"done")));
    let s = setup(&worker, |c| c.queue_timeout = Duration::from_millis(300));
    let held = [s.spawn_get("/app/1"), s.spawn_get("/app/2")];
    until("two requests at the worker", || worker.seen() == 2).await;
    assert_eq!(s.upstream.threads(), (2, 2));

    // A third waits for a place, then gives up.
    let started = Instant::now();
    let e = expect_err(s.get("/app/3").await);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(matches!(e, UpstreamError::QueueTimeout(_)), "{e:?}");
    assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(worker.seen(), 2, "it never reached the worker");

    // A fourth waits, and is admitted when a place frees.
    let waiter = s.spawn_get("/app/4");
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(worker.seen(), 2, "no place yet");
    open.send(true).unwrap();
    for task in held {
        assert_eq!(task.await.unwrap(), (200, Bytes::from("done")));
    }
    assert_eq!(waiter.await.unwrap(), (200, Bytes::from("done")));
    assert_eq!(worker.seen(), 3);
    assert_eq!(s.all_released(), (3, 0));
    assert_eq!(s.upstream.threads(), (0, 2));
}

#[tokio::test]
async fn a_large_response_is_pumped_whole_and_its_connection_pooled() {
    let large: Vec<u8> = (0..(1usize << 20)).map(|i| (i % 251) as u8).collect();
    let expected = Bytes::from(large.clone());
    let chunked = {
        let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for piece in large.chunks(100_000) {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    };
    let worker = FakeWorker::start(move |n| match n {
        0 => Answer::Reply(ok(&large)),
        _ => Answer::Reply(chunked.clone()),
    });
    let s = setup(&worker, |_| {});
    for _ in 0..2 {
        let resp = s.get("/app/big").await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let got = body(resp).await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the body arrived changed");
        assert_eq!(
            s.counts.get().1,
            s.counts.get().0,
            "released as the body ends"
        );
    }
    // The pump returned the connection once the body was read to its end.
    assert_eq!(worker.connections(), 1);
    assert_eq!(s.all_released(), (2, 0));
    assert_eq!(s.upstream.threads(), (0, 2));
}

#[tokio::test]
async fn a_client_that_drops_a_pumped_body_releases_the_lease() {
    let mut big = b"HTTP/1.1 200 OK\r\nContent-Length: 4194304\r\n\r\n".to_vec();
    big.resize(big.len() + (4 << 20), b'y');
    let worker = FakeWorker::start(move |_| Answer::Reply(big.clone()));
    let s = setup(&worker, |_| {});
    let resp = s.get("/app/big").await.unwrap();
    drop(resp); // the client went away before reading
    until("the lease's release", || {
        let (leased, released, _) = s.counts.get();
        leased == released
    })
    .await;
    until("the permit's return", || s.upstream.threads() == (0, 2)).await;
    assert_eq!(s.all_released(), (1, 0));
}
