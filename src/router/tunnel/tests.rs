//! The tunnel against real sockets: a TCP pair for the client, a Unix pair
//! for the worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

use super::{run, Accepted};
use crate::router::access_log::{LogFacts, SiteLogs};
use crate::router::table::SiteStats;
use crate::upstream::Tunnel;

/// Set when the tunnel's hold (its lease) is dropped.
struct Released(Arc<AtomicBool>);

impl Drop for Released {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

struct Setup {
    client: TcpStream,
    router_side: TcpStream,
    worker: UnixStream,
    accepted: Accepted,
    stats: Arc<SiteStats>,
    released: Arc<AtomicBool>,
    logs: Arc<SiteLogs>,
    _dir: tempfile::TempDir,
}

async fn setup(read_ahead: &'static [u8]) -> Setup {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (router_side, _) = listener.accept().await.unwrap();
    let (router_worker, worker) = UnixStream::pair().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let logs = Arc::new(SiteLogs::open(dir.path(), "ws"));
    let stats = Arc::new(SiteStats::default());
    let released = Arc::new(AtomicBool::new(false));
    let req = http::Request::get("/chat").body(()).unwrap();
    let accepted = Accepted {
        tunnel: Tunnel {
            stream: Box::new(router_worker),
            read_ahead: Bytes::from_static(read_ahead),
            hold: Box::new(Released(released.clone())),
        },
        status: 101,
        log: LogFacts::of(&req, "10.1.2.3:4000".parse().unwrap()),
        logs: logs.clone(),
        stats: stats.clone(),
        start: Instant::now(),
    };
    Setup {
        client,
        router_side,
        worker,
        accepted,
        stats,
        released,
        logs,
        _dir: dir,
    }
}

fn access_log(logs: &SiteLogs) -> String {
    logs.access.flush();
    std::fs::read_to_string(logs.access.path()).unwrap()
}

#[tokio::test]
async fn relays_both_ways_then_logs_and_releases_once_closed() {
    let mut s = setup(b"early").await;
    let stats = s.stats.clone();
    let tunnel = tokio::spawn(run(
        s.router_side,
        s.accepted,
        Duration::from_secs(5),
        std::future::pending(),
    ));
    // Bytes the worker sent with its 101 come first.
    let mut got = [0u8; 5];
    s.client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"early");
    s.client.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    s.worker.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
    assert_eq!(stats.websockets_open(), 1, "open while the tunnel lives");
    s.worker.write_all(b"pong!").await.unwrap();
    let mut got = [0u8; 5];
    s.client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"pong!");
    // The worker closes: the client sees the end, the tunnel ends.
    drop(s.worker);
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.client.read_to_end(&mut rest))
        .await
        .expect("the client saw no end after the worker closed")
        .unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    drop(s.client);
    tokio::time::timeout(Duration::from_secs(5), tunnel)
        .await
        .expect("the tunnel did not end after both sides closed")
        .unwrap();
    assert!(
        s.released.load(Ordering::SeqCst),
        "the lease was not released"
    );
    assert_eq!((stats.websockets_open(), stats.websockets_total()), (0, 1));
    let log = access_log(&s.logs);
    assert!(
        log.contains("\"GET /chat HTTP/1.1\" 101 10 ") && log.trim_end().ends_with(" 4"),
        "one line: 10 bytes sent, 4 received: {log:?}"
    );
    assert_eq!(log.lines().count(), 1, "{log:?}");
}

#[tokio::test]
async fn a_client_that_reads_nothing_ends_the_tunnel_after_send_timeout() {
    let s = setup(b"").await;
    let mut worker = s.worker;
    let tunnel = tokio::spawn(run(
        s.router_side,
        s.accepted,
        Duration::from_millis(300),
        std::future::pending(),
    ));
    // The worker writes until the client's socket buffers are full and
    // the tunnel's write stalls; the client never reads.
    let chunk = vec![7u8; 64 << 10];
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut written = 0u64;
        while worker.write_all(&chunk).await.is_ok() {
            written += chunk.len() as u64;
        }
        written
    });
    let ended = tokio::time::timeout(Duration::from_secs(20), tunnel).await;
    assert!(
        ended.is_ok(),
        "the tunnel was still open 20 s after the client stopped reading"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "ended before send_timeout"
    );
    let written = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("the worker's writes did not fail once the tunnel was gone")
        .unwrap();
    // Bounded: what the sockets hold plus one 16 KiB buffer, not all the worker wrote.
    assert!(written < 64 << 20, "the worker wrote {written} bytes");
    assert!(s.released.load(Ordering::SeqCst));
    assert_eq!(s.stats.websockets_open(), 0);
    drop(s.client);
}

#[tokio::test]
async fn the_end_of_the_shutdown_grace_ends_it() {
    let s = setup(b"").await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tunnel = tokio::spawn(run(
        s.router_side,
        s.accepted,
        Duration::from_secs(30),
        async move {
            let _ = rx.await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!tunnel.is_finished(), "an idle tunnel ended on its own");
    assert_eq!(s.stats.websockets_open(), 1);
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), tunnel)
        .await
        .expect("the tunnel outlived the shutdown grace")
        .unwrap();
    assert!(s.released.load(Ordering::SeqCst));
    drop((s.client, s.worker));
}

#[tokio::test]
async fn the_workers_close_ends_it_while_the_client_stays_and_a_client_end_is_passed_on() {
    // The worker closes first (after a close handshake, or dead): the
    // tunnel ends although the client keeps its connection open.
    let s = setup(b"").await;
    let tunnel = tokio::spawn(run(
        s.router_side,
        s.accepted,
        Duration::from_secs(30),
        std::future::pending(),
    ));
    drop(s.worker);
    tokio::time::timeout(Duration::from_secs(5), tunnel)
        .await
        .expect("the tunnel waited for the client after the worker closed")
        .unwrap();
    assert!(s.released.load(Ordering::SeqCst));
    let mut client = s.client;
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();

    // The client ends first (half-close): the worker sees the end and may
    // still send until it closes.
    let s = setup(b"").await;
    let tunnel = tokio::spawn(run(
        s.router_side,
        s.accepted,
        Duration::from_secs(30),
        std::future::pending(),
    ));
    let (mut client, mut worker) = (s.client, s.worker);
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), worker.read_to_end(&mut got))
        .await
        .expect("the client's end did not reach the worker")
        .unwrap();
    assert!(!tunnel.is_finished(), "ended before the worker closed");
    worker.write_all(b"last words").await.unwrap();
    drop(worker);
    let mut last = Vec::new();
    client.read_to_end(&mut last).await.unwrap();
    assert_eq!(last, b"last words");
    tokio::time::timeout(Duration::from_secs(5), tunnel)
        .await
        .expect("the tunnel outlived both ends")
        .unwrap();
}

#[tokio::test]
async fn a_large_burst_goes_through_whole_and_in_order_both_ways() {
    let s = setup(b"").await;
    let tunnel = tokio::spawn(run(
        s.router_side,
        s.accepted,
        Duration::from_secs(30),
        std::future::pending(),
    ));
    // 1 MiB + 7 bytes of a pattern that shows any loss, repeat or reorder.
    let data: Vec<u8> = (0..(1 << 20) + 7).map(|i: u32| (i % 251) as u8).collect();
    let (mut client, mut worker) = (s.client, s.worker);
    let up = {
        let data = data.clone();
        tokio::spawn(async move {
            client.write_all(&data).await.unwrap();
            let mut back = vec![0u8; data.len()];
            client.read_exact(&mut back).await.unwrap();
            assert!(back == data, "worker → client bytes differ");
            client
        })
    };
    let mut got = vec![0u8; data.len()];
    tokio::time::timeout(Duration::from_secs(20), worker.read_exact(&mut got))
        .await
        .expect("the burst did not reach the worker")
        .unwrap();
    assert!(got == data, "client → worker bytes differ");
    worker.write_all(&got).await.unwrap();
    let client = tokio::time::timeout(Duration::from_secs(20), up)
        .await
        .expect("the burst did not come back")
        .unwrap();
    drop((client, worker));
    tokio::time::timeout(Duration::from_secs(5), tunnel)
        .await
        .unwrap()
        .unwrap();
    let log = access_log(&s.logs);
    let want = format!(" 101 {} ", data.len());
    assert!(
        log.contains(&want) && log.trim_end().ends_with(&data.len().to_string()),
        "{log}"
    );
}
