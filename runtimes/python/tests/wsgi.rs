//! PEP 3333 conformance against the real binary and CPython: validated apps,
//! environ, app errors, streaming both ways, the file fast path.

mod common;

use std::convert::Infallible;

use bytes::Bytes;
use common::{empty, full, request, send_on, Worker};
use futures_util::stream;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

async fn validated() -> Worker {
    Worker::start("validated", &["--threads", "2"]).await
}

#[tokio::test]
async fn validated_apps_are_served_without_violations() {
    let w = validated().await;
    let own_source = std::fs::read(common::apps_dir().join("validated.py")).unwrap();
    let cases: &[(&str, &[u8])] = &[
        ("/plain", b"hello world"),
        ("/stream", b"chunk0\nchunk1\nchunk2\n"),
        ("/writer", b"written directly\nand returned"),
        ("/filewrap", &own_source),
    ];
    for &(path, want) in cases {
        let r = w.get(path).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{path}: {}\n{}",
            r.text(),
            w.stderr()
        );
        assert_eq!(&r.body[..], want, "{path}");
    }
    w.assert_clean_log();
}

#[tokio::test]
async fn exc_info_replaces_headers_not_yet_sent() {
    let w = validated().await;
    let r = w.get("/excinfo").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.text(), "app error page");
    w.assert_clean_log();
}

#[tokio::test]
async fn head_sends_no_body() {
    let w = validated().await;
    let r = w
        .send(request("HEAD", "/plain").body(empty()).unwrap())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
    assert_eq!(r.headers["content-type"], "text/plain");
    w.assert_clean_log();

    let w = Worker::start("plain", &[]).await;
    let mut conn = w.connect().await;
    let r = send_on(
        &mut conn,
        request("HEAD", "/head_gen").body(empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
    // A list body's length is known, so HEAD announces it.
    let full_len = w.get("/env").await.body.len();
    let r = send_on(&mut conn, request("HEAD", "/env").body(empty()).unwrap()).await;
    assert!(r.body.is_empty());
    let head_len: usize = r.headers["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // The environ differs only in REQUEST_METHOD ("HEAD" vs "GET").
    assert_eq!(head_len, full_len + 1);
    // The connection is still usable after a HEAD with a generator body.
    let r = send_on(
        &mut conn,
        request("POST", "/echo").body(full("again")).unwrap(),
    )
    .await;
    assert_eq!(r.text(), "again");
}

/// 50 MiB of lines of varying length, sent chunked in odd-sized pieces.
#[tokio::test]
async fn chunked_upload_of_50_mib_is_read_by_readline() {
    let w = validated().await;
    const TOTAL: usize = 50 * 1024 * 1024;
    let mut data = Vec::with_capacity(TOTAL + 300);
    let mut lines = 0usize;
    let mut i = 0usize;
    while data.len() < TOTAL {
        let len = (i * 7919) % 300;
        data.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, len));
        data.push(b'\n');
        lines += 1;
        i += 1;
    }
    // A last line without a newline counts too.
    data.extend_from_slice(b"tail");
    lines += 1;
    let data = Bytes::from(data);
    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..data.len())
        .step_by(65_537)
        .map(|start| {
            Ok(Frame::data(
                data.slice(start..(start + 65_537).min(data.len())),
            ))
        })
        .collect();
    let body = StreamBody::new(stream::iter(chunks)).boxed();
    let req = request("POST", "/upload").body(body).unwrap();
    let r = w.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", w.stderr());
    assert_eq!(r.text(), format!("{} {}", data.len(), lines));
    w.assert_clean_log();
}

#[tokio::test]
async fn sized_reads_with_content_length_and_chunked() {
    let w = validated().await;
    let text = "abcdefghijklmnopqrstuvwxyz0123456789";
    let want = text
        .as_bytes()
        .chunks(7)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("|");
    let r = w
        .send(request("POST", "/read_sized").body(full(text)).unwrap())
        .await;
    assert_eq!(r.text(), want);
    let pieces: Vec<Result<Frame<Bytes>, Infallible>> = text
        .as_bytes()
        .chunks(5)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = StreamBody::new(stream::iter(pieces)).boxed();
    let r = w
        .send(request("POST", "/read_sized").body(body).unwrap())
        .await;
    assert_eq!(r.text(), want);
    w.assert_clean_log();
}

async fn environ(w: &Worker, req: http::Request<common::ClientBody>) -> serde_like::Map {
    let r = w.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", w.stderr());
    serde_like::parse(&r.text())
}

#[tokio::test]
async fn environ_from_reserved_headers() {
    let w = Worker::start("plain", &["--threads", "3", "--processes-hint", "2"]).await;
    let req = request("GET", "/app/env?a=1&b=%20")
        .header("x-polyhost-remote-addr", "[2001:db8::1]:5678")
        .header("x-polyhost-scheme", "https")
        .header("x-polyhost-script-name", "/app")
        .header("x-polyhost-server-name", "example.test")
        .header("x-polyhost-server-port", "8443")
        .header("x-custom", "one")
        .header("x-custom", "two")
        .header("x_forged", "nope")
        .header("content-type", "text/plain")
        .body(full("body"))
        .unwrap();
    let env = environ(&w, req).await;
    let check = |k: &str, v: &str| assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}");
    check("REQUEST_METHOD", "GET");
    check("SCRIPT_NAME", "/app");
    check("PATH_INFO", "/env");
    check("QUERY_STRING", "a=1&b=%20");
    check("REQUEST_URI", "/app/env?a=1&b=%20");
    check("REMOTE_ADDR", "2001:db8::1");
    check("REMOTE_PORT", "5678");
    check("SERVER_NAME", "example.test");
    check("SERVER_PORT", "8443");
    check("SERVER_PROTOCOL", "HTTP/1.1");
    check("wsgi.url_scheme", "https");
    check("HTTPS", "on");
    check("HTTP_HOST", "example.test");
    check("HTTP_X_CUSTOM", "one,two");
    check("CONTENT_TYPE", "text/plain");
    check("CONTENT_LENGTH", "4");
    check("wsgi.multithread", "true");
    check("wsgi.multiprocess", "true");
    check("wsgi.run_once", "false");
    check("wsgi.input_terminated", "true");
    check("wsgi.version", "[1, 0]");
    for k in env.keys() {
        assert!(!k.starts_with("HTTP_X_POLYHOST"), "{k} leaked into environ");
        assert!(!k.starts_with("HTTP_X_FORGED"), "{k} leaked into environ");
    }
    assert!(!env.contains_key("HTTP_CONTENT_TYPE"));
    assert!(!env.contains_key("HTTP_CONTENT_LENGTH"));
}

#[tokio::test]
async fn path_info_is_percent_decoded_latin1() {
    let w = Worker::start("plain", &["--threads", "1"]).await;
    let r = w.get("/caf%C3%A9%20x").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // PATH_INFO is "/café x" decoded as latin-1 ("cafÃ© x"); the app
    // encodes it back to latin-1, so the raw UTF-8 bytes return.
    assert_eq!(&r.body[..], b"no route /caf\xc3\xa9 x");
    let env = environ(&w, request("GET", "/env").body(empty()).unwrap()).await;
    assert_eq!(env["SCRIPT_NAME"], "");
    assert_eq!(env["wsgi.url_scheme"], "http");
    assert_eq!(env["wsgi.multithread"], "false");
    assert_eq!(env["wsgi.multiprocess"], "false");
    assert_eq!(env["REMOTE_ADDR"], "127.0.0.1");
    assert_eq!(env["SERVER_NAME"], "example.test");
    assert_eq!(env["SERVER_PORT"], "80");
    assert!(!env.contains_key("HTTPS"));
}

#[tokio::test]
async fn app_errors_become_500_and_the_worker_lives_on() {
    let w = Worker::start("plain", &["--threads", "1"]).await;
    let cases = [
        ("/error", "boom-before-start"),
        ("/bad_status", "invalid status"),
        ("/interim_status", "is informational (1xx)"),
        ("/non_bytes", "must yield bytes"),
        ("/bad_header", "not latin-1"),
        ("/second_call", "second time without exc_info"),
    ];
    let mut conn = w.connect().await;
    for (path, needle) in cases {
        let r = send_on(&mut conn, request("GET", path).body(empty()).unwrap()).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        let log = w.stderr();
        assert!(log.contains(needle), "{path}: {needle:?} not in\n{log}");
        assert!(
            log.contains(&format!("GET {path}")),
            "{path} not named in\n{log}"
        );
        // Still serving, on the same connection.
        let r = send_on(
            &mut conn,
            request("POST", "/echo").body(full("alive")).unwrap(),
        )
        .await;
        assert_eq!(r.text(), "alive");
    }
    // Logged once each.
    assert_eq!(
        w.stderr()
            .matches("RuntimeError: boom-before-start")
            .count(),
        1
    );
}

#[tokio::test]
async fn error_mid_stream_aborts_the_response() {
    let w = Worker::start("plain", &["--threads", "1"]).await;
    let mut conn = w.connect().await;
    conn.ready().await.unwrap();
    // The head may or may not arrive before the abort; the message must not
    // end cleanly either way.
    match conn
        .send_request(request("GET", "/midstream").body(empty()).unwrap())
        .await
    {
        Ok(resp) => {
            assert_eq!(resp.status(), StatusCode::OK);
            assert!(
                resp.into_body().collect().await.is_err(),
                "the body must not end cleanly"
            );
        }
        Err(e) => assert!(e.is_incomplete_message(), "{e}"),
    }
    assert!(w.stderr().contains("boom-midstream"));
    let r = w.get("/env").await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn input_readline_limits_readlines_and_iteration() {
    let w = Worker::start("plain", &["--threads", "1"]).await;
    let body = "abcdef\nline2\nline3\nline4\nline5";
    let pieces: Vec<Result<Frame<Bytes>, Infallible>> = body
        .as_bytes()
        .chunks(4)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let chunked = StreamBody::new(stream::iter(pieces)).boxed();
    for b in [full(body), chunked] {
        let r = w.send(request("POST", "/lines").body(b).unwrap()).await;
        // readline(3), readline(), readlines(1) takes one line, iteration
        // takes the other three (the last without a newline), then EOF.
        assert_eq!(r.text(), "abc|def\n|1|3||", "{}", w.stderr());
    }
}

#[tokio::test]
async fn wsgi_errors_reason_phrase_and_content_length() {
    let w = Worker::start("plain", &["--threads", "1"]).await;
    let r = w.get("/log_errors").await;
    assert_eq!(r.status.as_u16(), 299);
    // The body is cut to the app's Content-Length.
    assert_eq!(r.text(), "abc");
    let log = w.stderr();
    assert!(log.contains("to-the-error-log\nline-a\nline-b\n"), "{log}");
    // A body shorter than its Content-Length is an app error: 500, no bad framing.
    let mut conn = w.connect().await;
    let r = send_on(
        &mut conn,
        request("GET", "/short_body").body(empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(w.stderr().contains("Content-Length"), "{}", w.stderr());
    let r = send_on(
        &mut conn,
        request("POST", "/echo").body(full("ok")).unwrap(),
    )
    .await;
    assert_eq!(r.text(), "ok");
}

#[tokio::test]
async fn exc_info_after_headers_reraises_and_aborts() {
    let w = Worker::start("plain", &["--threads", "1"]).await;
    let mut conn = w.connect().await;
    conn.ready().await.unwrap();
    match conn
        .send_request(request("GET", "/excinfo_late").body(empty()).unwrap())
        .await
    {
        Ok(resp) => {
            assert_eq!(resp.status(), StatusCode::OK);
            assert!(
                resp.into_body().collect().await.is_err(),
                "must not end cleanly"
            );
        }
        Err(e) => assert!(e.is_incomplete_message(), "{e}"),
    }
    let log = w.stderr();
    assert!(log.contains("KeyError: 'late-failure'"), "{log}");
    assert!(!log.contains("never sent"));
}

/// Raw HTTP/1.1 on one connection, so only the worker's behaviour is tested:
/// the app answers without reading the body (and keeps the environ); the
/// worker must drain the body and keep the connection usable.
#[tokio::test]
async fn unread_body_and_kept_environ_do_not_stall_keep_alive() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let w = Worker::start("plain", &["--threads", "1"]).await;
    let stream = tokio::net::UnixStream::connect(&w.socket).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut exchange = async |path: &str, body: &[u8]| -> String {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        wr.write_all(head.as_bytes()).await.unwrap();
        wr.write_all(body).await.unwrap();
        let mut len = 0;
        loop {
            let mut line = String::new();
            rd.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut buf = vec![0; len];
        rd.read_exact(&mut buf).await.unwrap();
        String::from_utf8(buf).unwrap()
    };
    for i in 1..=3 {
        assert_eq!(
            exchange("/keep_environ", &vec![b'z'; 100_000 * i]).await,
            "kept"
        );
    }
    assert_eq!(exchange("/echo", b"next").await, "next");
}

#[tokio::test]
async fn file_wrapper_fast_path_serves_from_the_current_position() {
    let w = Worker::start("plain", &[]).await;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(w.marker("data.bin"), &data).unwrap();
    let r = w.get("/fastfile").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-length"], data.len().to_string());
    assert!(r.body == data[..], "whole file differs");
    let r = w.get("/fastfile?10").await;
    assert_eq!(r.headers["content-length"], (data.len() - 10).to_string());
    assert!(r.body == data[10..], "file from offset 10 differs");
    assert!(!w.stderr().contains("Traceback"), "{}", w.stderr());
}

/// Tiny parser for the app's flat JSON object of strings, bools and ints (and
/// one list), so the tests need no JSON crate.
mod serde_like {
    pub type Map = std::collections::HashMap<String, String>;

    pub fn parse(s: &str) -> Map {
        let mut map = Map::new();
        let mut chars = s
            .trim()
            .trim_start_matches('{')
            .trim_end_matches('}')
            .chars()
            .peekable();
        loop {
            while matches!(chars.peek(), Some(' ' | ',')) {
                chars.next();
            }
            let Some(key) = string(&mut chars) else { break };
            while matches!(chars.peek(), Some(' ' | ':')) {
                chars.next();
            }
            let value = if chars.peek() == Some(&'"') {
                string(&mut chars).unwrap()
            } else {
                let mut v = String::new();
                let mut depth = 0;
                while let Some(&c) = chars.peek() {
                    if c == '[' {
                        depth += 1;
                    } else if c == ']' {
                        depth -= 1;
                    } else if c == ',' && depth == 0 {
                        break;
                    }
                    v.push(c);
                    chars.next();
                }
                v
            };
            map.insert(key, value);
        }
        map
    }

    fn string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
        if chars.next()? != '"' {
            return None;
        }
        let mut out = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Some(out),
                '\\' => match chars.next()? {
                    'u' => {
                        let hex: String = chars.by_ref().take(4).collect();
                        out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                    }
                    'n' => out.push('\n'),
                    c => out.push(c),
                },
                c => out.push(c),
            }
        }
        None
    }
}
