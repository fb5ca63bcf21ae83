//! Large static files against the real binary, where the router sends them
//! with `sendfile` (plain HTTP/1) or reads them (TLS): every byte as on
//! disk, on a kept-alive connection mixing large, small, ranged and HEAD
//! responses (a stand-in's zeroes never arrive), and a file that shrinks
//! while it is sent cuts the response rather than passing a short body off
//! as whole.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::front::{h1_over, self_signed, send_h1, tls_connect};
use common::{request, Binary, Client, TestConfig};
use http_body_util::BodyExt;
use tokio::net::TcpStream;

/// Bytes that differ at every offset of a 251-byte cycle: a range sent
/// from a wrong offset, or zeroes, show.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// 3 MiB + 17: several `sendfile` ranges, the last one short.
const BIG: usize = 3 * 1024 * 1024 + 17;

struct Server {
    bin: Binary,
    tls: std::net::SocketAddr,
    cfg: TestConfig,
}

async fn start() -> Server {
    let cfg = TestConfig::new();
    cfg.tls_site(
        "www",
        &["www.test"],
        "",
        "redirect_http = false",
        &self_signed(&["www.test"]),
    );
    std::fs::write(cfg.path().join("www/www/big.bin"), pattern(BIG)).unwrap();
    cfg.write("www/www/small.txt", "small");
    cfg.main_extra("tls_listen = [\"127.0.0.1:0\"]");
    let bin = Binary::start(&cfg.main(), &[]).await;
    let tls = bin.logged_addr("listening (TLS)").await;
    Server { bin, tls, cfg }
}

fn ranged(path: &str, range: &str) -> http::Request<http_body_util::Full<Bytes>> {
    let mut req = request("GET", "www.test", path);
    req.headers_mut()
        .insert(http::header::RANGE, range.parse().unwrap());
    req
}

fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    assert!(
        first.is_none(),
        "{what}: differs from the file at byte {first:?}"
    );
}

#[tokio::test]
async fn large_files_arrive_byte_for_byte_over_plain_http1_and_tls() {
    let s = start().await;
    let want = pattern(BIG);

    let mut plain = Client::connect(s.bin.addr).await;
    for round in 0..2 {
        let r = plain.get("www.test", "/big.bin").await;
        assert_eq!(r.status, 200, "{}", s.bin.log());
        assert_same(&format!("plain GET, round {round}"), &r.body, &want);
        let r = plain.get("www.test", "/small.txt").await;
        assert_eq!((r.status, r.text().as_str()), (200, "small"));
        // Across a range boundary of the sender, from an odd offset.
        let r = plain
            .send(ranged("/big.bin", "bytes=1048570-2197160"))
            .await;
        assert_eq!(r.status, 206);
        assert_same("plain range", &r.body, &want[1048570..=2197160]);
        let r = plain.send(request("HEAD", "www.test", "/big.bin")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-length"], BIG.to_string().as_str());
        assert!(r.body.is_empty());
    }
    assert!(!plain.is_closed(), "the kept-alive connection was closed");

    let tls = tls_connect(s.tls, "www.test", &["http/1.1"]).await.unwrap();
    let mut over_tls = h1_over(tls).await;
    let r = send_h1(&mut over_tls, request("GET", "www.test", "/big.bin")).await;
    assert_eq!(r.status, 200);
    assert_same("TLS GET", &r.body, &want);
    let r = send_h1(&mut over_tls, ranged("/big.bin", "bytes=5-70000")).await;
    assert_same("TLS range", &r.body, &want[5..=70000]);

    let log = s.bin.log();
    assert!(
        !log.contains("panicked") && !log.contains("out of step"),
        "{log}"
    );
    assert!(s.bin.terminate().await.success());
}

#[tokio::test]
async fn a_file_that_shrinks_while_sent_cuts_the_response() {
    let s = start().await;
    // 64 MiB: far more than loopback's socket buffers hold while the
    // client reads nothing, so most of it is still to be sent at the cut.
    const HUGE: usize = 64 * 1024 * 1024;
    let path = s.cfg.path().join("www/www/huge.bin");
    std::fs::write(&path, pattern(HUGE)).unwrap();

    let stream = TcpStream::connect(s.bin.addr).await.unwrap();
    let mut sender = h1_over(stream).await;
    sender.ready().await.unwrap();
    let resp = sender
        .send_request(request("GET", "www.test", "/huge.bin"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1024 * 1024)
        .unwrap();
    let mut got = first.to_vec();
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match body.frame().await {
                Some(Ok(frame)) => got.extend_from_slice(&frame.into_data().unwrap_or_default()),
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    })
    .await
    .expect("the response neither ended nor was cut within 60 s");
    assert!(
        ended.is_err(),
        "a body of {} bytes passed off as complete",
        got.len()
    );
    assert!(got.len() < HUGE, "all {} bytes arrived", got.len());
    // Up to the new end, the file's bytes. Past it, what was already on
    // its way (the socket holds page-cache pages by reference, as with any
    // `sendfile`): the old bytes, or zeroes where the kernel cleared the
    // truncated part of a page it could not drop, never anything else.
    let cut = 1024 * 1024;
    let want = pattern(got.len());
    assert_same("what arrived before the new end", &got[..cut], &want[..cut]);
    let other = (cut..got.len()).find(|&i| got[i] != want[i] && got[i] != 0);
    assert!(
        other.is_none(),
        "byte {other:?} is neither the file's nor zero"
    );
    // The server goes on serving.
    let r = common::get(s.bin.addr, "www.test", "/small.txt").await;
    assert_eq!((r.status, r.text().as_str()), (200, "small"));
    assert!(s.bin.terminate().await.success());
}
