//! A small keep-alive load generator for HTTP/1.1 over a Unix socket, to
//! compare the worker with other servers on this machine:
//!
//! `cargo run --release --example bench -- SOCKET PATH CONNECTIONS SECONDS`
//!
//! Requests only the given local socket, bounded in time; prints req/s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, path, conns, secs] = args.as_slice() else {
        eprintln!("usage: bench SOCKET PATH CONNECTIONS SECONDS");
        std::process::exit(2);
    };
    let conns: usize = conns.parse().expect("CONNECTIONS");
    let secs: u64 = secs.parse().expect("SECONDS");
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (socket, path) = (socket.clone(), path.clone());
        let (done, errors) = (done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::UnixStream::connect(&socket)
                .await
                .expect("connect");
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(
                    stream,
                ))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            while Instant::now() < deadline {
                if sender.ready().await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let req = http::Request::get(path.as_str())
                    .header("host", "bench.test")
                    .body(Empty::new())
                    .unwrap();
                match sender.send_request(req).await {
                    Ok(resp) if resp.status().is_success() => {
                        let _ = resp.into_body().collect().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let t0 = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    let n = done.load(Ordering::Relaxed);
    let el = t0.elapsed().as_secs_f64();
    println!(
        "{n} requests in {el:.2}s: {:.0} req/s, {} errors",
        n as f64 / el,
        errors.load(Ordering::Relaxed)
    );
}
