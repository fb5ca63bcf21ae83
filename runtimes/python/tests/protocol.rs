//! The worker's HTTP/1.1 and its thread model, on the wire: many connections
//! on few threads, partial heads, pipelining, framing of streamed responses,
//! `Connection: close`, bad requests, `Expect: 100-continue`, and the stop.

mod common;

use std::time::{Duration, Instant};

use common::{empty, full, request, send_on, RawConn, Worker};
use http::StatusCode;
use http_body_util::BodyExt;

#[tokio::test]
async fn forty_keep_alive_connections_on_two_threads_are_all_answered() {
    let w = Worker::start("plain", &["--threads", "2"]).await;
    let mut conns = Vec::new();
    for _ in 0..40 {
        conns.push(w.connect().await);
    }
    for round in 0..2 {
        let replies =
            futures_util::future::join_all(conns.iter_mut().enumerate().map(|(i, c)| async move {
                let body = format!("conn {i} round {round}");
                let r = send_on(
                    c,
                    request("POST", "/echo").body(full(body.clone())).unwrap(),
                )
                .await;
                (r, body)
            }))
            .await;
        for (r, want) in replies {
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.text(), want);
        }
    }
    w.assert_clean_log();
}

#[tokio::test]
async fn a_slow_stream_does_not_hold_up_other_requests() {
    let w = Worker::start("plain", &["--threads", "2"]).await;
    let mut conn = w.connect().await;
    conn.ready().await.unwrap();
    let resp = conn
        .send_request(request("GET", "/slowstream").body(empty()).unwrap())
        .await
        .unwrap();
    let mut stream = resp.into_body();
    assert!(stream.frame().await.unwrap().unwrap().is_data());
    // The stream holds one thread until its unread client goes away; the
    // other thread serves everyone else meanwhile (a worker that made them
    // wait for the stream would never answer: the timeout only bounds a hang).
    let others = async {
        for _ in 0..20 {
            assert_eq!(w.get("/env").await.status, StatusCode::OK);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), others)
        .await
        .expect("other requests waited for the stream");
    assert!(
        !w.marker("closed").exists(),
        "the stream must still be running while the others were served"
    );
    drop(stream);
    drop(conn);
    w.wait_marker("closed", Duration::from_secs(15)).await;
}

#[tokio::test]
async fn a_partial_head_does_not_pin_the_only_thread() {
    let w = Worker::start("plain", &["--threads", "1"]).await;
    let mut slow = RawConn::connect(&w).await;
    slow.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Le")
        .await;
    let mut other = RawConn::connect(&w).await;
    other
        .send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nother")
        .await;
    let r = other.read_response(false).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"other"[..]));
    slow.send(b"ngth: 4\r\n\r\nslow").await;
    let r = slow.read_response(false).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"slow"[..]));
}

#[tokio::test]
async fn back_to_back_requests_on_one_connection_are_never_lost() {
    // The next request arrives while the thread that answered the last one
    // may still own the connection: that event must not be lost (a lost
    // one leaves the request unread and this test without an answer).
    let w = Worker::start("plain", &["--threads", "2"]).await;
    let mut c = RawConn::connect(&w).await;
    for i in 0..2000 {
        let body = format!("{i}");
        let req = format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        c.send(req.as_bytes()).await;
        let r = c.read_response(false).await;
        assert_eq!((r.status, &r.body[..]), (200, body.as_bytes()));
    }
}

#[tokio::test]
async fn a_body_arriving_in_pieces_and_the_next_request_are_served() {
    // While a body arrives the connection sends no events; afterwards it
    // must again, for bytes that came meanwhile and for later requests.
    let w = Worker::start("plain", &["--threads", "2"]).await;
    let mut c = RawConn::connect(&w).await;
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nbody")
        .await;
    for piece in [&b"-in"[..], b"-pie", b"c"] {
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.send(piece).await;
    }
    let r = c.read_response(false).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"body-in-piec"[..10]));
    // Sent at once after the answer (perhaps before the thread let go),
    // then after a pause (once the connection is idle).
    c.send(b"GET /env HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.read_response(false).await.status, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nlater")
        .await;
    let r = c.read_response(false).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"later"[..]));
    w.assert_clean_log();
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let w = Worker::start("plain", &["--threads", "2"]).await;
    let mut c = RawConn::connect(&w).await;
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none\
          POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n\
          HEAD /env HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nthree",
    )
    .await;
    for want in [&b"one"[..], b"two"] {
        let r = c.read_response(false).await;
        assert_eq!((r.status, &r.body[..]), (200, want));
        assert!(r.head.contains("content-length: 3\r\n"), "{}", r.head);
    }
    let r = c.read_response(true).await;
    assert_eq!(r.status, 200);
    assert!(r.head.contains("content-length: "), "{}", r.head);
    let r = c.read_response(false).await;
    assert_eq!(&r.body[..], b"three");
}

#[tokio::test]
async fn streamed_bodies_are_chunked_for_http11_and_close_delimited_for_http10() {
    let w = Worker::start("validated", &[]).await;
    let mut c = RawConn::connect(&w).await;
    c.send(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let r = c.read_response(false).await;
    assert!(
        r.head.contains("transfer-encoding: chunked\r\n"),
        "{}",
        r.head
    );
    assert!(!r.head.contains("content-length"), "{}", r.head);
    assert_eq!(&r.body[..], b"chunk0\nchunk1\nchunk2\n");
    // Still usable afterwards.
    c.send(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(&c.read_response(false).await.body[..], b"hello world");

    let mut c = RawConn::connect(&w).await;
    c.send(b"GET /stream HTTP/1.0\r\nHost: x\r\n\r\n").await;
    let r = c.read_response(false).await;
    assert!(!r.head.contains("transfer-encoding"), "{}", r.head);
    assert!(r.head.contains("connection: close\r\n"), "{}", r.head);
    assert_eq!(&r.body[..], b"chunk0\nchunk1\nchunk2\n");
    w.assert_clean_log();

    // HTTP/1.0 keep-alive, asked for, with a known length (a list body).
    let w = Worker::start("plain", &[]).await;
    let mut c = RawConn::connect(&w).await;
    for body in ["one", "two"] {
        let req = format!(
            "POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\n{body}"
        );
        c.send(req.as_bytes()).await;
        let r = c.read_response(false).await;
        assert!(r.head.contains("connection: keep-alive\r\n"), "{}", r.head);
        assert_eq!(r.body, body.as_bytes());
    }
    // Without asking, HTTP/1.0 closes after the response.
    c.send(b"POST /echo HTTP/1.0\r\nContent-Length: 3\r\n\r\nend")
        .await;
    let r = c.read_response(false).await;
    assert!(r.head.contains("connection: close\r\n"), "{}", r.head);
    assert!(c.closed().await);
}

#[tokio::test]
async fn connection_close_and_bad_requests_end_the_connection() {
    let w = Worker::start("plain", &["--threads", "1"]).await;
    let mut c = RawConn::connect(&w).await;
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        .await;
    let r = c.read_response(false).await;
    assert_eq!(&r.body[..], b"ok");
    assert!(r.head.contains("connection: close\r\n"), "{}", r.head);
    assert!(c.closed().await, "the connection must close");

    let cases: [&[u8]; 4] = [
        b"GARBAGE\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
    ];
    for raw in cases {
        let mut c = RawConn::connect(&w).await;
        c.send(raw).await;
        let r = c.read_response(false).await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(raw));
        assert!(c.closed().await);
    }
    let mut c = RawConn::connect(&w).await;
    let mut huge = b"GET / HTTP/1.1\r\nx-big: ".to_vec();
    huge.resize(2 << 20, b'a');
    c.send_some(&huge).await;
    assert_eq!(c.read_response(false).await.status, 431);
    // The worker serves on.
    assert_eq!(w.get("/env").await.status, StatusCode::OK);
    assert!(!w.stderr().contains("Traceback"), "{}", w.stderr());
}

#[tokio::test]
async fn expect_continue_gets_an_interim_response_when_the_body_is_read() {
    let w = Worker::start("plain", &["--threads", "1"]).await;
    let mut c = RawConn::connect(&w).await;
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await;
    let (status, _) = c.read_head().await;
    assert_eq!(status, 100);
    c.send(b"hello").await;
    let r = c.read_response(false).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
    // A body that is already there needs no interim response.
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    let r = c.read_response(false).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"hi"[..]));
}

#[tokio::test]
async fn sigterm_closes_idle_connections_and_finishes_the_busy_one() {
    let mut w = Worker::start("plain", &["--threads", "2"]).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut c = RawConn::connect(&w).await;
        c.send(b"GET /env HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(c.read_response(false).await.status, 200);
        idle.push(c);
    }
    let mut busy = RawConn::connect(&w).await;
    busy.send(b"GET /sleep?1.0 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    w.wait_marker("started", Duration::from_secs(10)).await;
    w.signal(libc::SIGTERM);
    for c in &mut idle {
        assert!(c.closed().await, "an idle connection stayed open");
    }
    let r = busy.read_response(false).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"slept"[..]));
    assert!(
        busy.closed().await,
        "the busy connection must close after its response"
    );
    let status = w.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", w.stderr());
    assert!(!w.socket.exists());
}

/// More blocking requests than threads listen eagerly (two): the benched
/// threads are called up within milliseconds, so all of them overlap.
#[tokio::test]
async fn blocking_requests_overlap_on_all_threads() {
    let w = Worker::start("plain", &["--threads", "6"]).await;
    let mut conns = Vec::new();
    for _ in 0..6 {
        conns.push(w.connect().await);
    }
    let t0 = Instant::now();
    let replies = futures_util::future::join_all(
        conns
            .iter_mut()
            .map(|c| send_on(c, request("GET", "/sleep?1.0").body(empty()).unwrap())),
    )
    .await;
    let took = t0.elapsed().as_secs_f64();
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    assert!(
        took < 1.8,
        "six 1 s requests on six threads took {took:.2}s"
    );
}
