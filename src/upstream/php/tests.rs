//! The upstream against a fake FastCGI server that misbehaves in the ways a
//! real php-fpm rarely does (garbage, truncation, silence).
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use super::*;
use crate::config::PhpMode;
use crate::supervisor::RuntimeLease;
use crate::upstream::{full_body, Scheme};

struct Fixed(PathBuf);

impl RuntimeHandle for Fixed {
    fn ready(&self) -> BoxFuture<'_, Result<RuntimeLease, crate::supervisor::LeaseError>> {
        Box::pin(async move { Ok(RuntimeLease::new(self.0.clone(), ())) })
    }
}

struct NoStatic;

impl Upstream for NoStatic {
    fn kind(&self) -> &'static str {
        "static"
    }
    fn handle<'a>(
        &'a self,
        _: Request<RequestBody>,
        _: &'a RequestContext,
    ) -> BoxFuture<'a, Result<Response<ResponseBody>, UpstreamError>> {
        Box::pin(async { Ok(Response::new(full_body("static"))) })
    }
}

fn record(kind: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![1, kind, 0, 1];
    v.extend_from_slice(&(content.len() as u16).to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(content);
    v
}

fn end() -> Vec<u8> {
    record(fcgi::END_REQUEST, &[0; 8])
}

/// Serves one connection: reads the request up to the end of STDIN,
/// writes `answer`, then closes (or, with `hold`, keeps it open).
async fn fake_fpm(socket: &Path, answer: Vec<u8>, hold: bool) {
    fake_fpm_parts(socket, vec![(Duration::ZERO, answer)], hold).await;
}

/// Like [`fake_fpm`], answering in parts, each after its pause.
async fn fake_fpm_parts(socket: &Path, parts: Vec<(Duration, Vec<u8>)>, hold: bool) {
    let listener = UnixListener::bind(socket).unwrap();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let stdin_end = [1, fcgi::STDIN, 0, 1, 0, 0, 0, 0];
        while !seen.windows(8).any(|w| w == stdin_end) {
            let mut buf = [0u8; 4096];
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        for (pause, part) in parts {
            tokio::time::sleep(pause).await;
            let _ = conn.write_all(&part).await;
        }
        if hold {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    });
}

/// An upstream for `root`/a.php against the fake server at `socket`.
fn upstream(root: &Path, socket: PathBuf, mode: PhpMode) -> (PhpUpstream, RequestContext) {
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(root.join("a.php"), "<?php").unwrap();
    let mut site = crate::config::tests_support::site(root.to_str().unwrap());
    let php = site.php.as_mut().unwrap();
    php.request_timeout = Duration::from_millis(300);
    php.mode = mode;
    let up = PhpUpstream::new(
        &site,
        Arc::new(Fixed(socket)),
        Arc::new(NoStatic),
        Arc::new(|_: &str| {}),
        Default::default(),
    )
    .unwrap();
    let ctx = RequestContext {
        site: Arc::new(site),
        client: "127.0.0.1:1".parse().unwrap(),
        local: "127.0.0.1:2".parse().unwrap(),
        scheme: Scheme::Http,
        host: "blog.test".into(),
        mount_prefix: "".into(),
        files: None,
    };
    (up, ctx)
}

/// One case: what the fake server answers → the status the client sees,
/// and whether the body ends cleanly.
async fn check(answer: Vec<u8>, hold: bool, want: Result<(u16, bool), u16>) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("php.sock");
    fake_fpm(&socket, answer.clone(), hold).await;
    let (up, ctx) = upstream(&dir.path().join("root"), socket, PhpMode::Dynamic);
    let req = Request::get("/a.php").body(full_body("")).unwrap();
    let got = match up.handle(req, &ctx).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            Ok((status, resp.into_body().collect().await.is_ok()))
        }
        Err(e) => Err(e.status().as_u16()),
    };
    assert_eq!(got, want, "answer {:?}", String::from_utf8_lossy(&answer));
}

#[tokio::test]
async fn misbehaving_fastcgi_servers() {
    let ok = [record(fcgi::STDOUT, b"Status: 201\r\n\r\nhi"), end()].concat();
    check(ok, false, Ok((201, true))).await;
    check(b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), false, Err(502)).await;
    check(vec![], false, Err(502)).await;
    check(
        [record(fcgi::STDOUT, b"no end of headers"), end()].concat(),
        false,
        Err(502),
    )
    .await;
    check(
        [record(fcgi::STDOUT, b"Status: 99\r\n\r\n"), end()].concat(),
        false,
        Err(502),
    )
    .await;
    check(
        [record(fcgi::STDOUT, b"X: 1\r\n\r\n")[..12].to_vec()].concat(),
        false,
        Err(502),
    )
    .await;
    check(record(fcgi::PARAMS, b""), false, Err(502)).await;
    check(
        record(fcgi::END_REQUEST, &[0, 0, 0, 0, 3, 0, 0, 0]),
        false,
        Err(502),
    )
    .await;
    // Silence: 504 after request_timeout.
    check(vec![], true, Err(504)).await;
    // Head, then the connection drops: the body fails rather than ending short.
    check(
        record(fcgi::STDOUT, b"X: 1\r\n\r\npart"),
        false,
        Ok((200, false)),
    )
    .await;
    // Head, then silence: the body fails after the read timeout.
    check(
        record(fcgi::STDOUT, b"X: 1\r\n\r\npart"),
        true,
        Ok((200, false)),
    )
    .await;
}

/// A response that is complete when its head is in comes whole (its
/// length known, its connection back in the pool before the client
/// reads a byte), in the records' own buffers (one frame each: a long page
/// is never copied into one buffer); one whose rest comes later, or that
/// is longer than the exchange buffers, streams to the end.
#[tokio::test]
async fn small_answers_come_whole_and_slow_or_large_ones_stream() {
    let hi = || [record(fcgi::STDOUT, b"X: 1\r\n\r\nhi"), end()].concat();
    let big_parts = 10;
    let big: Vec<u8> = (0..big_parts)
        .flat_map(|i| record(fcgi::STDOUT, &[b'a' + i as u8; 1000]))
        .collect();
    let three: Vec<u8> = (0..3)
        .flat_map(|i| record(fcgi::STDOUT, &[b'x' + i as u8; 700]))
        .collect();
    type Parts = Vec<(Duration, Vec<u8>)>;
    // (name, what the server writes, the size hint the body has, the body,
    // the frames it comes in)
    type Case = (&'static str, Parts, Option<u64>, Vec<u8>, usize);
    let cases: Vec<Case> = vec![
        (
            "whole",
            vec![(Duration::ZERO, hi())],
            Some(2),
            b"hi".to_vec(),
            1,
        ),
        (
            "whole in several records",
            vec![(
                Duration::ZERO,
                [record(fcgi::STDOUT, b"X: 1\r\n\r\n"), three, end()].concat(),
            )],
            Some(2100),
            (0..3).flat_map(|i| [b'x' + i as u8; 700]).collect(),
            3,
        ),
        (
            "rest later",
            vec![
                (Duration::ZERO, record(fcgi::STDOUT, b"X: 1\r\n\r\nhi")),
                (
                    Duration::from_millis(50),
                    [record(fcgi::STDOUT, b" there"), end()].concat(),
                ),
            ],
            None,
            b"hi there".to_vec(),
            2,
        ),
        (
            "more than the channel holds",
            vec![(
                Duration::ZERO,
                [record(fcgi::STDOUT, b"X: 1\r\n\r\n"), big, end()].concat(),
            )],
            None,
            (0..big_parts)
                .flat_map(|i| [b'a' + i as u8; 1000])
                .collect(),
            big_parts,
        ),
    ];
    for (name, parts, exact, want, frames) in cases {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("php.sock");
        fake_fpm_parts(&socket, parts, true).await;
        let (up, ctx) = upstream(&dir.path().join("root"), socket, PhpMode::Static);
        let req = Request::get("/a.php").body(full_body("")).unwrap();
        let resp = up.handle(req, &ctx).await.unwrap();
        assert_eq!(resp.body().size_hint().exact(), exact, "{name}");
        assert_eq!(
            up.idle_connections(),
            usize::from(exact.is_some()),
            "{name}: pooled before the body is read only when it came whole"
        );
        let mut body = resp.into_body();
        let (mut got, mut seen) = (Vec::new(), 0);
        while let Some(frame) = body.frame().await {
            got.extend_from_slice(&frame.unwrap().into_data().unwrap());
            seen += 1;
        }
        assert_eq!(&got[..], &want[..], "{name}");
        assert_eq!(seen, frames, "{name}: one frame per record");
        assert_eq!(up.idle_connections(), 1, "{name}: pooled after a clean end");
    }
}
