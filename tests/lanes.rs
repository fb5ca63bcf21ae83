//! Router threads (lanes) and where connections sit: connections of two
//! lightly busy lanes are packed onto one between requests (`lanes::balance`),
//! and a connection that moves loses nothing: keep-alive requests and a
//! pipelined burst go on being answered, in order, on the same socket.

mod admin_support;
mod common;

use std::time::{Duration, Instant};

use admin_support::Served;
use common::{read_until_count, Client, TestConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How long the test waits for a first move and the requests after it: a
/// hang bound for a busy machine, not a speed goal (a move is normally
/// seen within a few seconds).
const PATIENCE: Duration = Duration::from_secs(60);

/// The counter of moved connections in the metrics text.
async fn moved(served: &Served) -> f64 {
    let (status, text) = served.api("GET", "/metrics").await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("polyhost_connections_moved_total "))
        .unwrap_or_else(|| panic!("no polyhost_connections_moved_total in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Three pipelined GETs in one write (a missing file between two that
/// exist); all three answered, in order, each body whole.
async fn pipelined_three(stream: &mut TcpStream) {
    let burst = ["/", "/missing", "/"]
        .map(|p| format!("GET {p} HTTP/1.1\r\nHost: www.test\r\n\r\n"))
        .concat();
    stream.write_all(burst.as_bytes()).await.unwrap();
    let mut seen = String::new();
    read_until_count(stream, &mut seen, "site www\n", 2, Duration::from_secs(20)).await;
    let statuses: Vec<&str> = seen.lines().filter(|l| l.starts_with("HTTP/1.1")).collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 200 OK"
        ],
        "{seen}"
    );
    assert!(
        seen.ends_with("site www\n"),
        "nothing after the last body: {seen}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn light_traffic_on_two_router_threads_is_packed_onto_one_between_requests_and_nothing_is_cut(
) {
    let cfg = TestConfig::new(); // router_threads = 2
    cfg.static_site("www", &["www.test"], "");
    let served = Served::start(&cfg).await;
    let before = moved(&served).await;

    // Connections land on whichever lane woke first: opened in rounds
    // until some sit on each lane and get packed (each round, both lanes
    // are idle and either may take them).
    let mut clients: Vec<Client> = Vec::new();
    let mut raw: Vec<TcpStream> = Vec::new();
    let started = Instant::now();
    let give_up = started + PATIENCE;
    let mut requests = 0usize;
    let mut moved_at: Option<usize> = None;
    for round in 0.. {
        if moved_at.is_none() && round % 100 == 0 {
            for _ in 0..8 {
                clients.push(Client::connect(served.addr).await);
            }
            raw.push(TcpStream::connect(served.addr).await.unwrap());
        }
        for c in &mut clients {
            let r = c.get("www.test", "/").await;
            assert_eq!(
                (r.status, &r.body[..]),
                (200, &b"site www\n"[..]),
                "request {requests}"
            );
            requests += 1;
        }
        for s in &mut raw {
            pipelined_three(s).await;
            requests += 3;
        }
        // Light load: the lanes sleep between rounds.
        tokio::time::sleep(Duration::from_millis(5)).await;
        if round % 20 == 19 {
            let now = moved(&served).await - before;
            match moved_at {
                None if now > 0.0 => moved_at = Some(requests),
                // Served on after the move, on both kinds of connection.
                Some(at) if requests > at + 500 => break,
                _ => {}
            }
        }
        assert!(
            Instant::now() < give_up,
            "gave up after {PATIENCE:?} waiting for a move and 500 requests after it: {} keep-alive and {} pipelining connections, {requests} requests answered, moved: {}",
            clients.len(),
            raw.len(),
            moved(&served).await - before
        );
    }
    assert!(
        clients.iter().all(|c| !c.is_closed()),
        "a moved connection was closed"
    );
    eprintln!(
        "moved {} connections in {:?}; {requests} requests answered",
        moved(&served).await - before,
        started.elapsed()
    );
    served.stop().await;
}
