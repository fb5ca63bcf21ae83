//! The router's end of a worker connection against scripted worker bytes:
//! framing, reuse, poisoning, limits, stale pooled connections, and the
//! request head it encodes.

use super::*;

/// A connection whose worker end is a script of raw bytes.
async fn conn_answering(raw: &'static [u8]) -> WorkerConn {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    tokio::spawn(async move {
        theirs.write_all(raw).await.unwrap();
        // Keep the worker end open (a keep-alive worker does).
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    });
    WorkerConn::new(ours)
}

async fn whole_body(conn: &mut WorkerConn, mut framing: Framing) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(data) = conn.next_data(&mut framing).await.unwrap() {
        out.extend_from_slice(&data);
    }
    out
}

#[tokio::test]
async fn a_content_length_response_is_read_and_the_connection_reused() {
    let mut conn = conn_answering(
        b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    let head = conn.read_head(false).await.unwrap();
    assert_eq!(head.status, StatusCode::CREATED);
    assert_eq!(head.headers.get_all("set-cookie").iter().count(), 2);
    assert_eq!(head.framing.exact_len(), Some(5));
    assert_eq!(&conn.read_exact_body(5).await.unwrap()[..], b"hello");
    assert!(conn.is_reusable());
}

#[tokio::test]
async fn a_chunked_response_is_decoded_across_reads_with_trailers() {
    let mut conn = conn_answering(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    .await;
    let head = conn.read_head(false).await.unwrap();
    assert!(matches!(head.framing, Framing::Chunked(_)));
    assert_eq!(whole_body(&mut conn, head.framing).await, b"hello, world");
    assert!(conn.is_reusable());
}

#[tokio::test]
async fn connection_close_or_a_body_until_close_is_not_reused() {
    let mut conn =
        conn_answering(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
            .await;
    let head = conn.read_head(false).await.unwrap();
    conn.read_exact_body(head.framing.exact_len().unwrap())
        .await
        .unwrap();
    assert!(!conn.is_reusable());

    let (ours, mut theirs) = UnixStream::pair().unwrap();
    theirs
        .write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
        .await
        .unwrap();
    drop(theirs);
    let mut conn = WorkerConn::new(ours);
    let head = conn.read_head(false).await.unwrap();
    assert_eq!(whole_body(&mut conn, head.framing).await, b"until close");
    assert!(!conn.is_reusable());
}

#[tokio::test]
async fn head_requests_and_204_have_no_body_whatever_the_headers_say() {
    let mut conn = conn_answering(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n").await;
    let head = conn.read_head(true).await.unwrap();
    assert_eq!(head.framing.exact_len(), Some(0));
    assert_eq!(head.headers["content-length"], "99");
    conn.read_exact_body(0).await.unwrap();
    assert!(conn.is_reusable());
}

#[tokio::test]
async fn a_100_continue_is_skipped_and_any_other_interim_head_is_an_error_at_once() {
    let mut conn = conn_answering(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(conn.read_head(false).await.unwrap().status, StatusCode::OK);
    // No final head follows (the script keeps its end open): an error now,
    // not a wait for request_timeout.
    for raw in [
        &b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"[..],
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ] {
        let mut conn = conn_answering(raw).await;
        let head = tokio::time::timeout(std::time::Duration::from_secs(2), conn.read_head(false))
            .await
            .expect("answered at once");
        assert!(matches!(head, Err(WireError::Invalid(_))), "{raw:?}");
        assert!(!conn.is_reusable());
    }
}

#[tokio::test]
async fn garbage_from_the_worker_is_an_error_and_poisons_the_connection() {
    for raw in [
        &b"NOT HTTP\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\n\r\n",
        b"HTTP/1.1 999999 Nope\r\n\r\n",
    ] {
        let mut conn = conn_answering(raw).await;
        assert!(
            matches!(conn.read_head(false).await, Err(WireError::Invalid(_))),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
        assert!(!conn.is_reusable());
    }
    let mut conn =
        conn_answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").await;
    let head = conn.read_head(false).await.unwrap();
    let mut framing = head.framing;
    assert!(conn.next_data(&mut framing).await.is_err());
    assert!(!conn.is_reusable());
}

#[tokio::test]
async fn an_endless_head_is_refused_at_the_limit() {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    tokio::spawn(async move {
        let _ = theirs.write_all(b"HTTP/1.1 200 OK\r\n").await;
        let line = b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        while theirs.write_all(line).await.is_ok() {}
    });
    let mut conn = WorkerConn::new(ours);
    let err = conn.read_head(false).await.err().unwrap();
    assert!(
        err.to_string().contains("larger than") || err.to_string().contains("header"),
        "{err}"
    );
}

#[tokio::test]
async fn a_worker_that_closes_without_answering_is_reported_so() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    drop(theirs);
    let mut conn = WorkerConn::new(ours);
    assert!(!conn.is_reusable());
    let err = conn.read_head(false).await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "the worker closed the connection without answering"
    );
}

#[tokio::test]
async fn a_pooled_connection_the_worker_closed_is_stale_and_the_request_can_go_again() {
    let request = || {
        Outgoing::new(
            b"POST / HTTP/1.1\r\ncontent-length: 4\r\n\r\n".to_vec(),
            Spooled::Memory(Bytes::from_static(b"body")),
        )
    };
    // A fresh connection to a closed worker: a plain failure, no retry.
    let (ours, theirs) = UnixStream::pair().unwrap();
    drop(theirs);
    let mut conn = WorkerConn::new(ours);
    assert!(matches!(
        conn.send(&mut request()).await,
        Err(WireError::Io(_))
    ));

    // One exchange, then the worker closes the idle connection.
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let mut conn = WorkerConn::new(ours);
    conn.send(&mut request()).await.unwrap();
    let mut got = [0u8; 64];
    let _ = theirs.read(&mut got).await.unwrap();
    theirs
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .await
        .unwrap();
    conn.read_head(false).await.unwrap();
    conn.read_exact_body(2).await.unwrap();
    assert!(conn.ended_cleanly());
    drop(theirs);
    let mut again = request();
    assert!(matches!(
        conn.send(&mut again).await,
        Err(WireError::Stale(_))
    ));
    // The request is whole for the next connection.
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    WorkerConn::new(ours).send(&mut again).await.unwrap();
    let mut got = vec![0u8; 64];
    let n = theirs.read(&mut got).await.unwrap();
    assert_eq!(
        &got[..n],
        b"POST / HTTP/1.1\r\ncontent-length: 4\r\n\r\nbody"
    );
}

#[test]
fn the_request_head_carries_metadata_and_drops_client_sent_metadata() {
    let (mut parts, ()) = http::Request::post("http://example.test/app/x?y=1")
        .header("host", "example.test")
        .header("x-polyhost-remote-addr", "6.6.6.6:1")
        .header("X-Polyhost-Anything", "spoof")
        .header("content-length", "999")
        .header("accept", "a")
        .header("accept", "b")
        .body(())
        .unwrap()
        .into_parts();
    // Client-sent metadata is dropped once, at the router's edge, for
    // every runtime; the head is encoded from what is left.
    crate::router::service::strip_reserved(&mut parts.headers);
    let meta = Metadata {
        remote_addr: "127.0.0.1:4242".parse().unwrap(),
        scheme: "https",
        script_name: "/app",
        server_name: "example.test",
        server_port: 443,
    };
    let head = String::from_utf8(encode_head(&parts, &meta, 3)).unwrap();
    assert_eq!(
        head,
        "POST /app/x?y=1 HTTP/1.1\r\nhost: example.test\r\naccept: a\r\naccept: b\r\n\
         x-polyhost-remote-addr: 127.0.0.1:4242\r\nx-polyhost-scheme: https\r\n\
         x-polyhost-script-name: /app\r\nx-polyhost-server-name: example.test\r\n\
         x-polyhost-server-port: 443\r\ncontent-length: 3\r\n\r\n"
    );
}
