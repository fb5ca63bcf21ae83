//! The PHP upstream against a real php-fpm 8.2 master (started by the
//! `php_fpm` fixture as a throw-away user with the config polyhost
//! generates): request shapes, routing, the security rules, streaming in
//! both directions with bounded memory, stderr, and php-fpm dying mid-request.

mod php_fpm;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use polyhost::supervisor::LeaseError;
use polyhost::upstream::php::{ErrorSink, PhpUpstream, RuntimeHandle, RuntimeLease};
use polyhost::upstream::{
    full_body, BoxError, RequestBody, RequestContext, ResponseBody, Scheme, Upstream, UpstreamError,
};
use serde_json::Value;

use php_fpm::{FpmSite, SiteOptions};

/// Tests that move tens of MiB take turns, so the memory bound of one is not
/// disturbed by another's buffers.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SECRET: &str = "SECRET-SOURCE-7f3a";

fn scripts() -> Vec<(&'static str, String)> {
    vec![
        (
            "info.php",
            r#"<?php header('Content-Type: application/json'); echo json_encode([
                'get' => $_GET, 'post' => $_POST, 'cookie' => $_COOKIE,
                'custom' => $_SERVER['HTTP_X_CUSTOM'] ?? null,
                'method' => $_SERVER['REQUEST_METHOD'],
                'uri' => $_SERVER['REQUEST_URI'], 'script' => $_SERVER['SCRIPT_NAME'],
                'path_info' => $_SERVER['PATH_INFO'] ?? null, 'https' => $_SERVER['HTTPS'] ?? null,
                'remote' => $_SERVER['REMOTE_ADDR'], 'server_name' => $_SERVER['SERVER_NAME'],
                'software' => $_SERVER['SERVER_SOFTWARE'],
                'user' => posix_getpwuid(posix_geteuid())['name'],
                'env' => getenv('TRICKY'),
            ]);"#
                .into(),
        ),
        ("upload.php", r#"<?php $f = $_FILES['file']; echo json_encode(['size' => $f['size'], 'md5' => md5_file($f['tmp_name']), 'error' => $f['error'], 'name' => $f['name']]);"#.into()),
        ("status.php", "<?php header('Status: 404 Not Found'); echo 'custom not found';".into()),
        ("redirect.php", "<?php header('Location: /x');".into()),
        ("head.php", "<?php header('X-Head: yes'); echo 'body that HEAD must not return';".into()),
        ("front.php", "<?php echo 'front:' . $_SERVER['REQUEST_URI'] . '|' . $_SERVER['SCRIPT_NAME'] . '|' . ($_SERVER['PATH_INFO'] ?? '');".into()),
        ("dir/index.php", "<?php echo 'dir index';".into()),
        ("dir/index.html", "static index must lose to index.php".into()),
        ("style.css", "body {}".into()),
        ("uploads/avatar.jpg", "<?php echo \"PWNED\";".into()),
        ("x.php", format!("<?php /* {SECRET} */ echo 'x ran';")),
        ("big.php", "<?php $c = str_repeat('x', 1 << 20); for ($i = 0; $i < 100; $i++) { echo $c; flush(); }".into()),
        ("log.php", "<?php error_log('hello from php'); echo 'logged';".into()),
        ("sleep.php", "<?php touch(sys_get_temp_dir() . '/started'); sleep(30); echo 'woke';".into()),
    ]
}

struct Harness {
    fpm: FpmSite,
    upstream: PhpUpstream,
    errors: Arc<Mutex<Vec<String>>>,
    runtime: Arc<TestRuntime>,
}

/// The supervisor's part, reduced to "the socket is there".
struct TestRuntime {
    socket: PathBuf,
    done: Arc<AtomicUsize>,
}

/// Counts finished requests when a lease is dropped.
struct CountOnDrop(Arc<AtomicUsize>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl RuntimeHandle for TestRuntime {
    fn ready(&self) -> BoxFuture<'_, Result<RuntimeLease, LeaseError>> {
        Box::pin(async move {
            Ok(RuntimeLease::new(
                self.socket.clone(),
                CountOnDrop(self.done.clone()),
            ))
        })
    }
}

/// Stands in for the static-files module.
struct StaticStub;

impl Upstream for StaticStub {
    fn kind(&self) -> &'static str {
        "static"
    }
    fn handle<'a>(
        &'a self,
        _req: Request<RequestBody>,
        _ctx: &'a RequestContext,
    ) -> BoxFuture<'a, Result<Response<ResponseBody>, UpstreamError>> {
        Box::pin(async { Ok(Response::new(full_body("static"))) })
    }
}

fn harness(opts: SiteOptions) -> Harness {
    let files = scripts();
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let fpm = FpmSite::start(&files, opts);
    let runtime = Arc::new(TestRuntime {
        socket: fpm.socket().to_owned(),
        done: Arc::new(AtomicUsize::new(0)),
    });
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink_errors = errors.clone();
    let sink: ErrorSink =
        Arc::new(move |line: &str| sink_errors.lock().unwrap().push(line.to_owned()));
    let upstream =
        PhpUpstream::new(&fpm.site, runtime.clone(), Arc::new(StaticStub), sink).unwrap();
    Harness {
        fpm,
        upstream,
        errors,
        runtime,
    }
}

impl Harness {
    fn ctx(&self) -> RequestContext {
        RequestContext {
            site: self.fpm.site.clone(),
            client: "192.0.2.7:40000".parse().unwrap(),
            local: "127.0.0.1:8080".parse().unwrap(),
            scheme: Scheme::Https,
            host: "site.test".into(),
            mount_prefix: "".into(),
        }
    }

    async fn send(
        &self,
        req: Request<RequestBody>,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), UpstreamError> {
        let ctx = self.ctx();
        let resp = self.upstream.handle(req, &ctx).await?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| UpstreamError::BadGateway(e.to_string()))?
            .to_bytes();
        Ok((parts.status, parts.headers, body))
    }

    async fn get(&self, uri: &str) -> Result<(StatusCode, http::HeaderMap, Bytes), UpstreamError> {
        self.send(
            Request::get(uri)
                .header("host", "site.test")
                .body(body(""))
                .unwrap(),
        )
        .await
    }

    async fn json(&self, req: Request<RequestBody>) -> Value {
        let (status, _, body) = self.send(req).await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)))
    }
}

fn body(b: impl Into<Bytes>) -> RequestBody {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

#[tokio::test]
async fn get_query_post_cookies_headers_and_the_site_user() {
    let h = harness(SiteOptions {
        env: vec![("TRICKY".into(), "p$a\"ss;w=rd ${HOME}".into())],
        ..Default::default()
    });
    let v = h
        .json(
            Request::get("/info.php?a=1&b=two%20words")
                .header("host", "site.test")
                .header("cookie", "c1=v1; c2=v2")
                .header("x-custom", "hello")
                .body(body(""))
                .unwrap(),
        )
        .await;
    assert_eq!(v["get"], serde_json::json!({"a": "1", "b": "two words"}));
    assert_eq!(v["cookie"], serde_json::json!({"c1": "v1", "c2": "v2"}));
    assert_eq!(v["custom"], "hello");
    // (`Proxy` → HTTP_PROXY, httpoxy: removed by the router for every
    // runtime, shown through the router in tests/proxy.rs.)
    assert_eq!(v["uri"], "/info.php?a=1&b=two%20words");
    assert_eq!(v["script"], "/info.php");
    assert_eq!(
        v["path_info"],
        serde_json::Value::Null,
        "no path info, none sent"
    );
    assert_eq!(v["https"], "on");
    assert_eq!(v["remote"], "192.0.2.7");
    assert_eq!(v["server_name"], "site.test");
    assert_eq!(
        v["software"],
        concat!("polyhost/", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(v["user"], h.fpm.user.name.as_str());
    assert_eq!(
        v["env"], "p$a\"ss;w=rd ${HOME}",
        "env values reach PHP verbatim"
    );

    let form = "name=J%C3%B6rg&list%5B%5D=1&list%5B%5D=2";
    let v = h
        .json(
            Request::post("/info.php")
                .header("host", "site.test")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("content-length", form.len())
                .body(body(form))
                .unwrap(),
        )
        .await;
    assert_eq!(v["method"], "POST");
    assert_eq!(
        v["post"],
        serde_json::json!({"name": "Jörg", "list": ["1", "2"]})
    );
    // Keep-alive: the connections went back to the pool and were reused.
    assert!(h.upstream.idle_connections() >= 1);
    assert!(h.upstream.idle_connections() <= 4);
    assert_eq!(h.runtime.done.load(Ordering::SeqCst), 2);
}

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

#[tokio::test]
async fn status_redirect_head_and_missing_scripts() {
    let h = harness(SiteOptions::default());
    let (status, _, body) = h.get("/status.php").await.unwrap();
    assert_eq!(
        (status, &body[..]),
        (StatusCode::NOT_FOUND, &b"custom not found"[..])
    );

    let (status, headers, _) = h.get("/redirect.php").await.unwrap();
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(headers["location"], "/x");

    let req = Request::head("/head.php")
        .header("host", "site.test")
        .body(body_empty())
        .unwrap();
    let (status, headers, body) = h.send(req).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["x-head"], "yes");
    assert!(body.is_empty(), "HEAD returned a body: {body:?}");

    assert_eq!(h.get("/missing.php").await.unwrap_err().status(), 404);
    assert_eq!(
        h.get("/pretty/url").await.unwrap_err().status(),
        404,
        "no front controller configured"
    );
    // The pool is still healthy after all of that.
    let (status, _, body) = h.get("/dir/").await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"dir index"[..]));
}

fn body_empty() -> RequestBody {
    body("")
}

#[tokio::test]
async fn front_controller_directory_index_and_static_files() {
    let h = harness(SiteOptions {
        front_controller: Some("front.php".into()),
        ..Default::default()
    });
    let (status, _, body) = h.get("/pretty/url?page=2").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"front:/pretty/url?page=2|/front.php|");

    let (status, _, body) = h.get("/dir/").await.unwrap();
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &b"dir index"[..]),
        "index.php before index.html"
    );
    let (status, headers, _) = h.get("/dir?q=1").await.unwrap();
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers["location"], "/dir/?q=1");

    let (status, _, body) = h.get("/style.css").await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"static"[..]));
    // A missing .php is a 404 even with a front controller.
    assert_eq!(h.get("/nope.php").await.unwrap_err().status(), 404);
}

#[tokio::test]
async fn the_security_rules_hold() {
    for fc in [None, Some("front.php".to_owned())] {
        let h = harness(SiteOptions {
            front_controller: fc.clone(),
            ..Default::default()
        });
        std::fs::write(h.fpm.outside.join("evil.php"), "<?php echo \"PWNED\";").unwrap();
        std::os::unix::fs::symlink(h.fpm.outside.join("evil.php"), h.fpm.root.join("link.php"))
            .unwrap();
        std::os::unix::fs::symlink("../outside/evil.php", h.fpm.root.join("rel.php")).unwrap();
        std::os::unix::fs::symlink("../outside", h.fpm.root.join("outdir")).unwrap();
        std::fs::write(h.fpm.root.join("X.PHP"), format!("<?php /* {SECRET} */")).unwrap();
        let probes = [
            "/uploads/avatar.jpg/x.php",
            "/uploads/avatar.jpg/x.php/y",
            "/uploads/avatar.jpg%2fx.php",
            "/uploads/avatar.jpg%00.php",
            "/link.php",
            "/rel.php",
            "/outdir/evil.php",
            "/X.PHP",
            "/X.PHP/y",
            "/x.php%00.txt",
            "/x.php.",
            "/x.php%20",
            "/./x.php",
            "/uploads/../x.php",
            "/%2e%2e/outside/evil.php",
            "/.x.php",
        ];
        for uri in probes {
            let what = format!("{uri} (front controller {fc:?})");
            match h.get(uri).await {
                Ok((status, _, body)) => {
                    let text = String::from_utf8_lossy(&body);
                    assert!(
                        !text.contains("PWNED"),
                        "{what}: executed a non-script: {status} {text}"
                    );
                    assert!(
                        !text.contains(SECRET),
                        "{what}: served PHP source: {status} {text}"
                    );
                    if fc.is_some() {
                        assert!(
                            text.starts_with("front:") || status != 200,
                            "{what}: {status} {text}"
                        );
                    } else {
                        assert_ne!(status, 200, "{what}: {text}");
                    }
                }
                Err(e) => assert!(e.status().is_client_error(), "{what}: {e}"),
            }
        }
        let (status, _, body) = h.get("/x.php").await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"x ran"[..]));
        // Path info after a real script runs that script (tests/php_path_info.rs).
        let (status, _, body) = h.get("/x.php/").await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"x ran"[..]));
    }
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
async fn stderr_reaches_the_error_sink() {
    let h = harness(SiteOptions::default());
    let (status, _, body) = h.get("/log.php").await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"logged"[..]));
    let errors = h.errors.lock().unwrap().clone();
    assert!(
        errors.iter().any(|l| l.contains("hello from php")),
        "{errors:?}"
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
    let start = Instant::now();
    let err = h.get("/sleep.php").await.unwrap_err();
    assert_eq!(err.status(), StatusCode::GATEWAY_TIMEOUT, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
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

/// A body in pieces, with no length known up front (like HTTP/1.1 chunked).
fn chunked(parts: &[&str]) -> RequestBody {
    let frames: Vec<Result<http_body::Frame<Bytes>, BoxError>> = parts
        .iter()
        .map(|p| Ok(http_body::Frame::data(Bytes::copy_from_slice(p.as_bytes()))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

#[tokio::test]
async fn bodies_without_a_length_and_over_the_limit() {
    let h = harness(SiteOptions::default());
    let req = Request::post("/info.php")
        .header("host", "site.test")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(chunked(&["a=1&", "b=", "2"]))
        .unwrap();
    let v = h.json(req).await;
    assert_eq!(
        v["post"],
        serde_json::json!({"a": "1", "b": "2"}),
        "a chunked body reaches PHP whole"
    );

    // The router wraps bodies in `Limited`; an overrun is a 413 whether or
    // not the length was declared.
    for declared in [false, true] {
        let limited =
            http_body_util::Limited::new(chunked(&["a=1&", "b=2222222222"]), 8).boxed_unsync();
        let mut req =
            Request::post("/info.php").header("content-type", "application/x-www-form-urlencoded");
        if declared {
            req = req.header("content-length", "16");
        }
        let err = h.send(req.body(limited).unwrap()).await.unwrap_err();
        assert_eq!(
            err.status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "declared {declared}: {err}"
        );
    }
    // The pool is fine afterwards.
    let (status, _, _) = h.get("/x.php").await.unwrap();
    assert_eq!(status, StatusCode::OK);
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
