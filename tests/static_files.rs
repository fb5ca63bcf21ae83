//! `StaticFiles` driven with real requests over real files, symlinks and
//! sparse files in temporary directories.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use polyhost::config::{
    HostPattern, Limits, SiteConfig, SiteName, StaticConfig, DEFAULT_BODY_LIMIT,
};
use polyhost::upstream::static_files::StaticFiles;
use polyhost::upstream::{empty_body, RequestContext, Scheme, Upstream, UpstreamError};

const DIGITS: &str = "0123456789abcdefghij";

/// Tests run one at a time: the streaming test measures the process's RSS,
/// which another test's activity (a failing test printing a backtrace loads
/// debug info: tens of MiB) would disturb.
static SERIAL: Mutex<()> = Mutex::new(());

struct Site {
    _serial: MutexGuard<'static, ()>,
    _tmp: tempfile::TempDir,
    root: PathBuf,
    files: StaticFiles,
    ctx: RequestContext,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers.get(&name).map_or("", |v| v.to_str().unwrap())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn write(path: &Path, contents: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
}

/// tmp/site is the root; tmp/other-site and tmp/etc hold what traversal
/// attempts and escaping symlinks would reach.
fn site() -> Site {
    let serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("site");
    let other = tmp.path().join("other-site");
    write(&root.join("digits.txt"), DIGITS);
    write(&root.join("x"), "x at the root");
    write(&root.join("page.html"), "<h1>hi</h1>");
    write(&root.join("style.css"), "h1 {}");
    write(&root.join("app.js"), "alert(1)");
    fs::write(root.join("logo.png"), b"\x89PNG\r\n\x1a\n").unwrap();
    write(&root.join("dir/index.html"), "<p>dir index</p>");
    write(&root.join("empty-dir/.keep"), "");
    write(&root.join(".env"), "DB_PASSWORD=SECRET");
    write(&root.join(".git/config"), "[core] SECRET");
    write(&root.join("sub/.htaccess"), "Deny SECRET");
    write(&root.join("sub/ok.txt"), "sub ok");
    write(
        &root.join(".well-known/acme-challenge/tok"),
        "tok.thumbprint",
    );
    write(&other.join("secret.txt"), "SECRET of another site");
    write(&other.join("private/key.txt"), "SECRET key");
    write(&tmp.path().join("etc/passwd"), "root:SECRET");
    symlink(other.join("secret.txt"), root.join("steal.txt")).unwrap();
    symlink(other.join("private"), root.join("stolen-dir")).unwrap();
    symlink("../other-site/secret.txt", root.join("steal-relative.txt")).unwrap();
    symlink("digits.txt", root.join("alias.txt")).unwrap();
    symlink("../digits.txt", root.join("sub/up.txt")).unwrap();
    symlink("dir", root.join("dir-alias")).unwrap();

    let cfg = StaticConfig {
        index: vec!["index.htm".into(), "index.html".into()],
        paths: vec![],
        cache_max_age: Some(Duration::from_secs(3600)),
    };
    let files = StaticFiles::new(&root, &cfg, polyhost::docroot::Reader::Anyone).unwrap();
    let config = SiteConfig {
        name: SiteName::parse("test").unwrap(),
        file: tmp.path().join("vhosts/test.toml"),
        hosts: vec![HostPattern::parse("example.test").unwrap()],
        default: false,
        root: Some(root.clone()),
        user: None,
        group: None,
        limits: Limits {
            memory: None,
            processes: None,
            cpu: None,
            body: DEFAULT_BODY_LIMIT,
        },
        env: BTreeMap::new(),
        static_files: cfg,
        php: None,
        python: None,
        app: None,
        tls: None,
        sandbox: Default::default(),
        problems: Vec::new(),
    };
    let ctx = RequestContext {
        site: Arc::new(config),
        client: "192.0.2.1:40000".parse().unwrap(),
        local: "127.0.0.1:80".parse().unwrap(),
        scheme: Scheme::Http,
        host: "example.test".into(),
        mount_prefix: "".into(),
        files: None,
    };
    Site {
        _serial: serial,
        _tmp: tmp,
        root,
        files,
        ctx,
    }
}

impl Site {
    /// Sends one request; an `UpstreamError` becomes its status, as the router does.
    async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(header::HeaderName, &str)],
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(k, *v);
        }
        let req = req.body(empty_body()).expect("test request is valid");
        match self.files.handle(req, &self.ctx).await {
            Ok(res) => {
                let (parts, body) = res.into_parts();
                let body = body.collect().await.unwrap().to_bytes().to_vec();
                Reply {
                    status: parts.status,
                    headers: parts.headers,
                    body,
                }
            }
            Err(e) => Reply {
                status: e.status(),
                headers: HeaderMap::new(),
                body: e.to_string().into_bytes(),
            },
        }
    }

    async fn get(&self, uri: &str) -> Reply {
        self.send(Method::GET, uri, &[]).await
    }

    async fn get_with(&self, uri: &str, headers: &[(header::HeaderName, &str)]) -> Reply {
        self.send(Method::GET, uri, headers).await
    }
}

fn assert_refused(r: &Reply, what: &str) {
    assert!(
        r.status == StatusCode::FORBIDDEN || r.status == StatusCode::NOT_FOUND,
        "{what}: status {}",
        r.status
    );
    let text = r.text();
    assert!(
        !text.contains("SECRET") && !text.contains("root:"),
        "{what}: leaked {text:?}"
    );
}

/// Each answer exactly: a `.`/`..` segment is a traversal (403) however it
/// is spelled or hidden (an encoded slash or backslash in front of it
/// counts as a separator); an encoded separator or NUL elsewhere is a
/// malformed path (400); a double-encoded name is only a name (404).
#[tokio::test]
async fn traversal_attempts_are_refused() {
    let s = site();
    for (uri, want) in [
        ("/../etc/passwd", StatusCode::FORBIDDEN),
        ("/../../../../etc/passwd", StatusCode::FORBIDDEN),
        ("/%2e%2e/etc/passwd", StatusCode::FORBIDDEN),
        ("/%2e%2e/%2e%2e/etc/passwd", StatusCode::FORBIDDEN),
        ("/%2E%2e/x", StatusCode::FORBIDDEN),
        ("/a/%2f..%2f..%2fetc/passwd", StatusCode::FORBIDDEN),
        ("/%252e%252e/etc/passwd", StatusCode::NOT_FOUND),
        ("/%5c..%5cetc", StatusCode::FORBIDDEN),
        ("/%5c..%5cetc%5cpasswd", StatusCode::FORBIDDEN),
        ("/a%00.txt", StatusCode::BAD_REQUEST),
        ("/%00", StatusCode::BAD_REQUEST),
        ("/a%2Fb", StatusCode::BAD_REQUEST),
        ("/a%5cb", StatusCode::BAD_REQUEST),
        ("/./x", StatusCode::FORBIDDEN),
        ("/dir/../x", StatusCode::FORBIDDEN),
        ("/%2e%2e%2f%2e%2e%2fetc/passwd", StatusCode::FORBIDDEN),
    ] {
        let r = s.get(uri).await;
        assert_eq!(r.status, want, "{uri}");
        let text = r.text();
        assert!(
            !text.contains("SECRET") && !text.contains("root:"),
            "{uri}: leaked {text:?}"
        );
    }
}

#[tokio::test]
async fn raw_backslashes_are_refused_or_unparseable() {
    let s = site();
    let uri = "/..\\..\\etc\\passwd";
    // `http` rejects a raw backslash in a URI, so hyper answers 400 before a
    // request reaches an upstream; if it ever stops doing so, we refuse it.
    match http::Uri::try_from(uri) {
        Err(_) => {}
        Ok(_) => assert_refused(&s.get(uri).await, uri),
    }
    let root =
        polyhost::docroot::DocRoot::open(&s.root, polyhost::docroot::Reader::Anyone).unwrap();
    assert!(root.resolve(uri).is_err());
}

#[tokio::test]
async fn symlinks_out_of_the_root_are_forbidden() {
    let s = site();
    for uri in [
        "/steal.txt",
        "/stolen-dir/key.txt",
        "/steal-relative.txt",
        "/stolen-dir/",
    ] {
        let r = s.get(uri).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{uri}");
        assert!(!r.text().contains("SECRET"), "{uri}");
    }
}

#[tokio::test]
async fn symlinks_inside_the_root_are_served() {
    let s = site();
    for uri in ["/alias.txt", "/sub/up.txt"] {
        let r = s.get(uri).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}");
        assert_eq!(r.text(), DIGITS, "{uri}");
    }
    let r = s.get("/dir-alias/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "<p>dir index</p>");
}

#[tokio::test]
async fn dotfiles_are_hidden_but_well_known_is_served() {
    let s = site();
    for uri in [
        "/.env",
        "/.git/config",
        "/sub/.htaccess",
        "/.git/",
        "/%2eenv",
    ] {
        let r = s.get(uri).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}");
        assert!(!r.text().contains("SECRET"), "{uri}");
    }
    let r = s.get("/.well-known/acme-challenge/tok").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "tok.thumbprint");
    assert_eq!(s.get("/sub/ok.txt").await.status, StatusCode::OK);
}

#[tokio::test]
async fn ranges() {
    let s = site();
    let r = s
        .get_with("/digits.txt", &[(header::RANGE, "bytes=0-4")])
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.text(), "01234");
    assert_eq!(r.header(header::CONTENT_RANGE), "bytes 0-4/20");
    assert_eq!(r.header(header::CONTENT_LENGTH), "5");

    let r = s
        .get_with("/digits.txt", &[(header::RANGE, "bytes=-5")])
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.text(), "fghij");
    assert_eq!(r.header(header::CONTENT_RANGE), "bytes 15-19/20");

    let r = s
        .get_with("/digits.txt", &[(header::RANGE, "bytes=10-")])
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.text(), "abcdefghij");
    assert_eq!(r.header(header::CONTENT_RANGE), "bytes 10-19/20");

    let r = s
        .get_with("/digits.txt", &[(header::RANGE, "bytes=20-")])
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header(header::CONTENT_RANGE), "bytes */20");

    // If-Range with the current ETag applies the range; a stale one does not.
    let etag = s.get("/digits.txt").await.header(header::ETAG).to_owned();
    let r = s
        .get_with(
            "/digits.txt",
            &[(header::RANGE, "bytes=0-1"), (header::IF_RANGE, &etag)],
        )
        .await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::PARTIAL_CONTENT, "01")
    );
    let r = s
        .get_with(
            "/digits.txt",
            &[
                (header::RANGE, "bytes=0-1"),
                (header::IF_RANGE, "\"stale\""),
            ],
        )
        .await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, DIGITS));

    // Multiple ranges: served whole.
    let r = s
        .get_with("/digits.txt", &[(header::RANGE, "bytes=0-1,4-5")])
        .await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, DIGITS));
}

#[tokio::test]
async fn conditional_requests() {
    let s = site();
    let first = s.get("/digits.txt").await;
    assert_eq!(first.status, StatusCode::OK);
    let etag = first.header(header::ETAG).to_owned();
    let last_modified = first.header(header::LAST_MODIFIED).to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert!(!last_modified.is_empty());
    assert_eq!(first.header(header::ACCEPT_RANGES), "bytes");
    assert_eq!(first.header(header::CACHE_CONTROL), "max-age=3600");

    let r = s
        .get_with("/digits.txt", &[(header::IF_NONE_MATCH, &etag)])
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
    assert_eq!(r.header(header::ETAG), etag);

    let r = s
        .get_with(
            "/digits.txt",
            &[(header::IF_MODIFIED_SINCE, &last_modified)],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());

    let r = s
        .get_with("/digits.txt", &[(header::IF_NONE_MATCH, "\"other\"")])
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let r = s
        .get_with("/digits.txt", &[(header::IF_MATCH, "\"other\"")])
        .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let r = s
        .get_with("/digits.txt", &[(header::IF_MATCH, &etag)])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s
        .get_with(
            "/digits.txt",
            &[(header::IF_UNMODIFIED_SINCE, "Thu, 01 Jan 1970 00:00:10 GMT")],
        )
        .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);

    // A changed file gets a new ETag.
    fs::write(s.root.join("digits.txt"), "changed").unwrap();
    let r = s
        .get_with("/digits.txt", &[(header::IF_NONE_MATCH, &etag)])
        .await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "changed"));
}

#[tokio::test]
async fn head_has_headers_and_no_body() {
    let s = site();
    let r = s.send(Method::HEAD, "/page.html", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header(header::CONTENT_LENGTH), "11");
    assert_eq!(r.header(header::CONTENT_TYPE), "text/html; charset=utf-8");
    assert!(!r.header(header::ETAG).is_empty());
    assert!(!r.header(header::LAST_MODIFIED).is_empty());
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn directories_index_and_redirect() {
    let s = site();
    let r = s.get("/dir/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "<p>dir index</p>");
    assert_eq!(r.header(header::CONTENT_TYPE), "text/html; charset=utf-8");

    let r = s.get("/dir").await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(r.header(header::LOCATION), "/dir/");
    let r = s.get("/dir?a=1&b=2").await;
    assert_eq!(r.header(header::LOCATION), "/dir/?a=1&b=2");
    // Never a protocol-relative redirect to another host.
    let r = s.get("//dir").await;
    assert_eq!(r.header(header::LOCATION), "/dir/");

    // No index and no listing.
    assert_eq!(s.get("/empty-dir/").await.status, StatusCode::FORBIDDEN);
    assert_eq!(s.get("/").await.status, StatusCode::FORBIDDEN);
    // A file with a trailing slash is not a directory.
    assert_eq!(s.get("/digits.txt/").await.status, StatusCode::NOT_FOUND);
    assert_eq!(s.get("/missing.txt").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn query_strings_are_ignored() {
    let s = site();
    let r = s.get("/digits.txt?v=123&x=../../etc/passwd").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, DIGITS));
}

#[tokio::test]
async fn content_types() {
    let s = site();
    for (uri, want) in [
        ("/page.html", "text/html; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/logo.png", "image/png"),
        ("/digits.txt", "text/plain; charset=utf-8"),
        ("/x", "application/octet-stream"),
    ] {
        let r = s.get(uri).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}");
        assert_eq!(r.header(header::CONTENT_TYPE), want, "{uri}");
        assert_eq!(r.header(header::X_CONTENT_TYPE_OPTIONS), "nosniff", "{uri}");
    }
}

#[tokio::test]
async fn only_get_and_head() {
    let s = site();
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
        let req = Request::builder()
            .method(method.clone())
            .uri("/digits.txt")
            .body(empty_body())
            .unwrap();
        // The router turns this error into 405 with `Allow: GET, HEAD`.
        let err = s.files.handle(req, &s.ctx).await.unwrap_err();
        assert!(
            matches!(err, UpstreamError::MethodNotAllowed),
            "{method}: {err}"
        );
        assert_eq!(err.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}

fn rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn large_files_stream_in_bounded_chunks() {
    const SIZE: u64 = 100 << 20;
    let s = site();
    let f = fs::File::create(s.root.join("big.bin")).unwrap();
    f.set_len(SIZE).unwrap();
    drop(f);

    let req = Request::get("/big.bin").body(empty_body()).unwrap();
    let res = s.files.handle(req, &s.ctx).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()[header::CONTENT_LENGTH],
        SIZE.to_string().as_str()
    );

    let before = rss_kib();
    let mut peak = before;
    let (mut total, mut chunks, mut largest) = (0u64, 0u64, 0usize);
    let mut body = res.into_body();
    while let Some(frame) = body.frame().await {
        let data: Bytes = frame.unwrap().into_data().unwrap();
        largest = largest.max(data.len());
        total += data.len() as u64;
        chunks += 1;
        if chunks % 64 == 0 {
            peak = peak.max(rss_kib());
        }
    }
    peak = peak.max(rss_kib());
    assert_eq!(total, SIZE);
    assert!(largest <= 1 << 20, "chunk of {largest} bytes");
    assert!(chunks >= 100, "only {chunks} chunks");
    let growth_mib = peak.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 32,
        "RSS grew by {growth_mib} MiB while streaming"
    );
}

/// A lookup the kernel's caches cannot answer without I/O (here: after
/// the dentries were dropped; on a network file system: a revalidation)
/// is made on the blocking pool, never on the router's async thread, and
/// answers the same: the file, a directory's index, a missing file, a
/// symlink out of the root, one inside it.
#[tokio::test]
async fn cold_lookups_are_made_on_the_blocking_pool_with_the_same_answers() {
    use polyhost::docroot::{cached_lookups, decode, DocRoot, Fail, Reader};
    if !cached_lookups() {
        eprintln!(
            "skipped: this kernel has no RESOLVE_CACHED (before 5.12): every lookup may wait"
        );
        return;
    }
    let s = site();
    let probe = DocRoot::open(&s.root, Reader::Anyone).unwrap();
    // A root's handle is kept from its first (blocking) lookup on.
    probe.resolve("/x").unwrap();
    let cached = |uri: &str| match probe.resolve_cached(&decode(uri).unwrap()) {
        Err(Fail::NotCached) => "not cached",
        _ => "answered",
    };
    let cases = [
        ("/digits.txt", StatusCode::OK, DIGITS),
        ("/dir/", StatusCode::OK, "<p>dir index</p>"),
        ("/sub/up.txt", StatusCode::OK, DIGITS),
        ("/missing.txt", StatusCode::NOT_FOUND, ""),
        ("/steal.txt", StatusCode::FORBIDDEN, ""),
    ];
    for (uri, status, body) in cases {
        // Unused dentries go with `drop_caches = 2`; a busy machine may
        // look the path up again meanwhile (not this one's), so a few tries.
        let mut seen = Vec::new();
        for _ in 0..5 {
            fs::write("/proc/sys/vm/drop_caches", "2").expect("drop the dentry cache (root)");
            seen.push(cached(uri));
            if seen.last() == Some(&"not cached") {
                break;
            }
        }
        assert_eq!(
            seen.last(),
            Some(&"not cached"),
            "{uri} stays cached: {seen:?}"
        );
        let r = s.get(uri).await;
        assert_eq!(r.status, status, "{uri}: {}", r.text());
        if status == StatusCode::OK {
            assert_eq!(r.text(), body, "{uri}");
        } else {
            assert!(!r.text().contains("SECRET"), "{uri}: {}", r.text());
        }
        // The blocking lookup filled the caches: the next one is answered
        // on the async thread. Anything else dropping caches meanwhile (a
        // test of another run on this machine) may undo it: a few tries,
        // each served again first.
        if status != StatusCode::FORBIDDEN {
            let mut after = vec![cached(uri)];
            while after.last() != Some(&"answered") && after.len() < 5 {
                assert_eq!(s.get(uri).await.status, status, "{uri}");
                after.push(cached(uri));
            }
            assert_eq!(
                after.last(),
                Some(&"answered"),
                "{uri} after it was served: {after:?}"
            );
        }
    }
}
