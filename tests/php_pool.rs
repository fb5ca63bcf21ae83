//! The PHP pool against a real php-fpm 8.2 master (the `php_fpm` fixture,
//! as in `tests/php.rs`) under load and failure: streaming in both
//! directions with bounded memory, php-fpm dying mid-request, request
//! timeouts, at most `max_children` connections, recycled workers, and the
//! socket's permissions.

mod php_fpm;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use polyhost::upstream::{BoxError, Upstream};

use php_fpm::harness::{body, harness};
use php_fpm::SiteOptions;

/// Tests that move tens of MiB take turns, so the memory bound of one is not
/// disturbed by another's buffers.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn multipart_upload_of_20_mib_streams_through() {
    let _heavy = HEAVY.lock().await;
    let h = harness(SiteOptions::default());
    let size = 20 << 20;
    let content: Vec<u8> = (0..size).map(|i: usize| (i * 31 % 251) as u8).collect();
    let file = h.fpm.dir.path().join("upload.bin");
    std::fs::write(&file, &content).unwrap();
    let md5 = std::process::Command::new("md5sum")
        .arg(&file)
        .output()
        .unwrap();
    let md5 = String::from_utf8(md5.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    let boundary = "----polyhost-test-boundary";
    let head = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n");
    let tail = format!("\r\n--{boundary}--\r\n");
    let total = head.len() + content.len() + tail.len();
    // The body arrives in 256 KiB chunks, as from a client.
    let mut chunks: Vec<Result<http_body::Frame<Bytes>, BoxError>> =
        vec![Ok(http_body::Frame::data(Bytes::from(head)))];
    chunks.extend(
        content
            .chunks(256 << 10)
            .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c)))),
    );
    chunks.push(Ok(http_body::Frame::data(Bytes::from(tail))));
    drop(content);
    let stream_body = StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync();
    let req = Request::post("/upload.php")
        .header("host", "site.test")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .header("content-length", total)
        .body(stream_body)
        .unwrap();
    let v = h.json(req).await;
    assert_eq!(v["error"], 0, "{v}");
    assert_eq!(v["size"], size as u64);
    assert_eq!(v["md5"], md5.as_str());
    assert_eq!(v["name"], "a.bin");
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn a_100_mib_response_streams_with_bounded_memory() {
    let _heavy = HEAVY.lock().await;
    let h = harness(SiteOptions::default());
    let ctx = h.ctx();
    let before = rss_bytes();
    let resp = h
        .upstream
        .handle(Request::get("/big.php").body(body("")).unwrap(), &ctx)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (mut total, mut peak) = (0u64, before);
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            assert!(data.iter().all(|&b| b == b'x'));
            total += data.len() as u64;
        }
        peak = peak.max(rss_bytes());
    }
    assert_eq!(total, 100 << 20);
    let growth = peak.saturating_sub(before);
    assert!(
        growth < 40 << 20,
        "RSS grew by {} MiB while streaming 100 MiB",
        growth >> 20
    );
}

#[tokio::test]
async fn php_fpm_killed_mid_request_gives_502_not_a_hang() {
    let h = harness(SiteOptions::default());
    let ctx = h.ctx();
    let started = h.fpm.paths.tmp.join("started");
    let request = h
        .upstream
        .handle(Request::get("/sleep.php").body(body("")).unwrap(), &ctx);
    let kill = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !started.exists() {
            assert!(Instant::now() < deadline, "the script never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // SIGKILL the master, then its children: php-fpm children outlive a
        // killed master, so the supervisor stops a pool as a group (cgroup);
        // the fixture's process group stands in for that.
        let pid = nix::unistd::Pid::from_raw(h.fpm.master_pid());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    };
    let (result, ()) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(request, kill)
    })
    .await
    .expect("the request hung after php-fpm was killed");
    let err = result.expect_err("a killed php-fpm cannot answer");
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY, "{err}");
    // And a new request fails fast too (nothing listens any more).
    let err = h.get("/x.php").await.unwrap_err();
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY, "{err}");
}

#[tokio::test]
async fn request_timeout_gives_504_and_frees_the_connection() {
    let h = harness(SiteOptions {
        request_timeout: Duration::from_secs(1),
        max_children: 1,
        ..Default::default()
    });
    let err = h.get("/sleep.php").await.unwrap_err();
    assert_eq!(err.status(), StatusCode::GATEWAY_TIMEOUT, "{err}");
    // The only permit came back; php-fpm itself ends the stuck worker
    // (request_terminate_timeout), so the next request gets a child.
    let (status, _, body) = h.get("/x.php").await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"x ran"[..]));
}

#[tokio::test]
async fn at_most_max_children_connections_and_503_when_none_is_free() {
    // Not shorter: a dynamic pool starts with one child and php-fpm adds
    // the second up to a second later, on its maintenance tick.
    let h = harness(SiteOptions {
        request_timeout: Duration::from_secs(3),
        max_children: 2,
        ..Default::default()
    });
    let results = futures_util::future::join_all((0..8).map(|_| h.get("/x.php"))).await;
    for r in results {
        let (status, _, body) = r.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"x ran"[..]));
    }
    let idle = h.upstream.idle_connections();
    assert!(
        (1..=2).contains(&idle),
        "{idle} idle connections for max_children = 2"
    );

    // Two responses whose bodies nobody reads hold both connections.
    let ctx = h.ctx();
    let a = h
        .upstream
        .handle(Request::get("/big.php").body(body("")).unwrap(), &ctx)
        .await
        .unwrap();
    let b = h
        .upstream
        .handle(Request::get("/big.php").body(body("")).unwrap(), &ctx)
        .await
        .unwrap();
    let err = h.get("/x.php").await.unwrap_err();
    assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE, "{err}");
    // A client that goes away half-way frees its connection (discarded, not reused).
    drop((a, b));
    let (status, _, _) = h.get("/x.php").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(h.upstream.idle_connections() <= 2);
}

/// More concurrent GETs than children: each that has to wait is written
/// onto a kept-alive connection as soon as that connection's answer ends
/// (`handed`), and gets its own answer; no connection beyond the children,
/// none re-sent.
#[tokio::test]
async fn queued_requests_are_handed_connections_with_their_request_written() {
    let h = harness(SiteOptions {
        max_children: 2,
        max_requests: 0,
        ..Default::default()
    });
    for round in 0..5 {
        let results = futures_util::future::join_all((0..12).map(|_| h.get("/x.php"))).await;
        for r in results {
            let (status, _, body) = r.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!((status, &body[..]), (StatusCode::OK, &b"x ran"[..]));
        }
    }
    let stats = h.upstream.pool_stats();
    assert!(
        stats.handed > 0,
        "no queued request was handed a connection: {stats:?}"
    );
    assert_eq!((stats.opened, stats.resent), (2, 0), "{stats:?}");
    assert!(h.upstream.idle_connections() <= 2);
}

#[tokio::test]
async fn workers_recycled_after_max_requests_do_not_fail_requests() {
    // Each child exits after 2 requests and closes its kept-alive connection;
    // the pool must notice instead of sending the next request into it.
    let h = harness(SiteOptions {
        max_children: 1,
        max_requests: 2,
        ..Default::default()
    });
    for i in 0..40 {
        let req = if i % 3 == 0 {
            // A POST is never sent on a kept-alive connection (it could not be retried).
            Request::post("/x.php").body(body("a=1")).unwrap()
        } else {
            Request::get("/x.php").body(body("")).unwrap()
        };
        let (status, _, body) = h
            .send(req)
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"x ran"[..]),
            "request {i}"
        );
    }
    assert!(h.upstream.idle_connections() <= 1);
}

#[tokio::test]
async fn socket_permissions_and_a_master_started_as_root() {
    use std::os::unix::fs::MetadataExt;
    for master_as_root in [false, true] {
        let h = harness(SiteOptions {
            master_as_root,
            ..Default::default()
        });
        let user = &h.fpm.user;
        let sock = std::fs::metadata(h.fpm.socket()).unwrap();
        assert_eq!(
            (sock.uid(), sock.gid(), sock.mode() & 0o777),
            (user.uid, user.gid, 0o660),
            "socket (master as root: {master_as_root})"
        );
        let dir = std::fs::metadata(&h.fpm.paths.site_dir).unwrap();
        assert_eq!(
            (dir.uid(), dir.gid(), dir.mode() & 0o777),
            (user.uid, user.gid, 0o700),
            "site dir: nothing in it is for the site's group"
        );
        let v = h
            .json(Request::get("/info.php").body(body("")).unwrap())
            .await;
        assert_eq!(
            v["user"],
            user.name.as_str(),
            "PHP runs as the site user (master as root: {master_as_root})"
        );
    }
}
