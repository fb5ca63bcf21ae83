//! A WebSocket echo load generator over a Unix socket, to compare the ASGI
//! worker with other servers on this machine:
//!
//! `cargo run --release --example ws_bench -- SOCKET PATH CONNECTIONS SECONDS [BYTES]`
//!
//! Each connection sends one masked text message of BYTES (default 64) and
//! waits for its echo, round trip after round trip; prints round trips/s.
//! Requests only the given local socket, bounded in time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

async fn connect(socket: &str, path: &str) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(socket).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&head).into_owned(),
        ));
    }
    Ok(s)
}

/// A masked text frame of `n` bytes of `a` (n < 126).
fn frame(n: usize) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x81, 0x80 | n as u8];
    f.extend_from_slice(&mask);
    f.extend((0..n).map(|i| b'a' ^ mask[i % 4]));
    f
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (socket, path, conns, secs, bytes) = match args.as_slice() {
        [_, s, p, c, t] => (s.clone(), p.clone(), c, t, 64usize),
        [_, s, p, c, t, b] => (s.clone(), p.clone(), c, t, b.parse().expect("BYTES")),
        _ => {
            eprintln!("usage: ws_bench SOCKET PATH CONNECTIONS SECONDS [BYTES]");
            std::process::exit(2);
        }
    };
    assert!(bytes < 126, "BYTES must be below 126 (one short frame)");
    let conns: usize = conns.parse().expect("CONNECTIONS");
    let secs: u64 = secs.parse().expect("SECONDS");
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let msg = frame(bytes);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut s = connect(&socket, &path).await.expect("handshake");
        let (done, msg) = (done.clone(), msg.clone());
        tasks.push(tokio::spawn(async move {
            let mut echo = vec![0u8; 2 + bytes];
            while Instant::now() < deadline {
                if s.write_all(&msg).await.is_err() || s.read_exact(&mut echo).await.is_err() {
                    return;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    let n = done.load(Ordering::Relaxed);
    let took = started.elapsed().as_secs_f64();
    println!("{n} round trips in {took:.2}s: {:.0}/s", n as f64 / took);
}
