//! The client against a scripted peer on a real socket pair: responses cut
//! into pieces at every byte boundary that matters (split reads), chunked
//! bodies with extensions and trailers, bodies to the end of the
//! connection, malformed heads, the bytes after a `101`, and an idle link
//! the peer closes or writes to.

use std::future::poll_fn;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::either::Either;

use super::*;
use crate::upstream::tests_support::until;

fn pair() -> (Link, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    (Link::new(Either::Left(ours)), theirs)
}

/// The peer writes `pieces` one by one, a pause between them (so the
/// link reads them apart), then closes if `close`.
fn script(mut peer: UnixStream, pieces: Vec<Vec<u8>>, close: bool) {
    tokio::spawn(async move {
        for piece in pieces {
            peer.write_all(&piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if !close {
            // Held open until the test's link goes.
            let _ = peer.read(&mut [0u8; 1]).await;
        }
    });
}

/// Every cut of `bytes` into two pieces, and byte by byte.
fn cuts(bytes: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let mut all: Vec<Vec<Vec<u8>>> = (1..bytes.len())
        .map(|at| vec![bytes[..at].to_vec(), bytes[at..].to_vec()])
        .collect();
    all.push(bytes.iter().map(|&b| vec![b]).collect());
    all
}

/// The body's data and trailers, read to the end, or why it failed.
async fn read_body(
    link: &mut Link,
    framing: Framing,
) -> Result<(Vec<u8>, Option<HeaderMap>), String> {
    let mut decoder = Decoder::new(framing);
    let (mut data, mut trailers) = (Vec::new(), None);
    while let Some(frame) = poll_fn(|cx| decoder.poll_frame(link, cx)).await? {
        match frame.into_data() {
            Ok(bytes) => data.extend_from_slice(&bytes),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    assert!(decoder.is_done());
    Ok((data, trailers))
}

#[tokio::test]
async fn a_response_split_anywhere_reads_the_same() {
    let cases: [(&[u8], Framing, &str); 3] = [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
            Framing::Length(5),
            "hello",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              3;ext=1\r\nhel\r\n2\r\nlo\r\n0\r\nX-Sum: 5\r\n\r\n",
            Framing::Chunked,
            "hello",
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            Framing::Length(5),
            "hello",
        ),
    ];
    for (bytes, framing, want) in cases {
        for pieces in cuts(bytes) {
            let (mut link, peer) = pair();
            script(peer, pieces.clone(), false);
            let head = link.read_head(false).await.unwrap();
            assert_eq!(head.parts.status, StatusCode::OK);
            assert_eq!(head.framing, framing, "{pieces:?}");
            let (data, trailers) = read_body(&mut link, framing).await.unwrap();
            assert_eq!(data, want.as_bytes(), "{pieces:?}");
            if framing == Framing::Chunked {
                assert_eq!(trailers.unwrap()["x-sum"], "5");
            }
            assert!(link.idle_usable(), "nothing left over: {pieces:?}");
        }
    }
}

#[tokio::test]
async fn the_connections_own_fields_are_settled_not_kept() {
    let (mut link, peer) = pair();
    let bytes = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
                  Transfer-Encoding: chunked\r\nContent-Length: 3\r\nX-App: 1\r\n\r\n0\r\n\r\n";
    script(peer, vec![bytes.to_vec()], false);
    let head = link.read_head(false).await.unwrap();
    assert!(!head.close);
    assert_eq!(head.framing, Framing::Chunked, "chunked wins over a length");
    let names: Vec<_> = head.parts.headers.keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["x-app"]);
    for (bytes, close) in [
        (&b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"[..], true),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", true),
        (
            b"HTTP/1.1 204 No Content\r\nConnection: x-a, keep-alive\r\nX-A: 1\r\n\r\n",
            false,
        ),
    ] {
        let (mut link, peer) = pair();
        script(peer, vec![bytes.to_vec()], false);
        let head = link.read_head(false).await.unwrap();
        assert_eq!(head.close, close, "{:?}", String::from_utf8_lossy(bytes));
    }
}

#[tokio::test]
async fn a_body_to_the_end_of_the_connection_is_read_whole() {
    let bytes = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end";
    for pieces in cuts(bytes) {
        let (mut link, peer) = pair();
        script(peer, pieces, true);
        let head = link.read_head(false).await.unwrap();
        assert_eq!(head.framing, Framing::Eof);
        let (data, _) = read_body(&mut link, Framing::Eof).await.unwrap();
        assert_eq!(data, b"until the end");
    }
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_that_says_so() {
    for (bytes, framing) in [
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"[..],
            Framing::Length(10),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            Framing::Chunked,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            Framing::Chunked,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiXX",
            Framing::Chunked,
        ),
    ] {
        let (mut link, peer) = pair();
        script(peer, vec![bytes.to_vec()], true);
        let head = link.read_head(false).await.unwrap();
        assert_eq!(head.framing, framing);
        let err = read_body(&mut link, framing).await.unwrap_err();
        assert!(
            err.starts_with("closed") || err.starts_with("sent"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn malformed_heads_fail_with_a_reason_and_not_silently() {
    let many: String = (0..=MAX_FIELDS)
        .map(|i| format!("X-{i}: {i}\r\n"))
        .collect();
    let many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
    let big = format!("HTTP/1.1 200 OK\r\nX-Big: {}", "a".repeat(MAX_HEAD));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec(),
            "malformed response head",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_vec(),
            "conflicting",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n".to_vec(),
            "bad Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Le".to_vec(),
            "within its response head",
        ),
        (many.into_bytes(), "more than 100 fields"),
        (big.into_bytes(), "over 65536 bytes"),
    ];
    for (bytes, why) in cases {
        let (mut link, peer) = pair();
        script(peer, vec![bytes], true);
        let failure = link.read_head(false).await.err().unwrap();
        assert!(!failure.silent);
        assert!(failure.why.contains(why), "{} / {why}", failure.why);
    }
}

#[tokio::test]
async fn a_close_before_any_byte_is_silent() {
    let (mut link, peer) = pair();
    drop(peer);
    let failure = link.read_head(false).await.err().unwrap();
    assert!(failure.silent, "{}", failure.why);
}

#[tokio::test]
async fn the_bytes_after_a_101_head_go_with_the_tunnel() {
    let bytes = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi";
    for pieces in cuts(bytes).into_iter().filter(|p| p.len() == 2) {
        let (mut link, peer) = pair();
        let whole = pieces[0].len() > bytes.len() - 4;
        script(peer, pieces, false);
        let head = link.read_head(false).await.unwrap();
        assert_eq!(head.parts.status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(head.framing, Framing::Empty);
        let (mut stream, read_ahead) = link.into_tunnel();
        let mut rest = read_ahead.to_vec();
        while rest.len() < 4 {
            let mut more = [0u8; 4];
            let n = stream.read(&mut more).await.unwrap();
            rest.extend_from_slice(&more[..n]);
        }
        assert_eq!(rest, b"\x81\x02hi");
        if whole {
            assert!(!read_ahead.is_empty());
        }
    }
}

#[tokio::test]
async fn a_head_request_or_a_304_has_no_body_whatever_its_length() {
    for (bytes, head_request) in [
        (&b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"[..], true),
        (
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
            false,
        ),
    ] {
        let (mut link, peer) = pair();
        script(peer, vec![bytes.to_vec()], false);
        let head = link.read_head(head_request).await.unwrap();
        assert_eq!(head.framing, Framing::Empty);
        assert_eq!(head.parts.headers["content-length"], "10");
    }
}

#[tokio::test]
async fn an_idle_link_the_peer_closes_or_writes_to_is_not_usable() {
    for unasked in [None, Some(&b"surprise"[..])] {
        let (link, mut peer) = pair();
        assert!(link.idle_usable());
        match unasked {
            Some(bytes) => peer.write_all(bytes).await.unwrap(),
            None => drop(peer),
        }
        until("the link seen closed or written to", || !link.idle_usable()).await;
    }
}

#[tokio::test]
async fn an_answer_before_the_whole_body_was_taken_stops_the_sending() {
    let (mut link, mut peer) = pair();
    tokio::spawn(async move {
        let mut first = [0u8; 16];
        peer.read_exact(&mut first).await.unwrap();
        peer.write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        // Reads nothing more, and keeps the connection open.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(peer);
    });
    let body = vec![b'x'; 16 << 20];
    assert!(link.send(&body).await.unwrap(), "the answer came first");
    let head = link.read_head(false).await.unwrap();
    assert_eq!(head.parts.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!link.idle_usable(), "a link cut mid-request is not kept");
}
