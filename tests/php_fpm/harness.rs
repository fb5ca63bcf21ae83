//! The harness of the PHP upstream tests (`tests/php.rs`, `tests/php_pool.rs`):
//! a [`PhpUpstream`] over a real php-fpm master ([`FpmSite`]) with the
//! scripts every test uses, a stand-in for the supervisor's lease
//! ([`TestRuntime`], which counts finished requests) and for the static
//! files module, and the error sink's lines collected for assertions.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use polyhost::supervisor::{LeaseError, RuntimeHandle, RuntimeLease};
use polyhost::upstream::php::{ErrorSink, PhpUpstream};
use polyhost::upstream::{
    full_body, RequestBody, RequestContext, ResponseBody, Scheme, Upstream, UpstreamError,
};
use serde_json::Value;

use super::{FpmSite, SiteOptions};

pub const SECRET: &str = "SECRET-SOURCE-7f3a";

pub fn scripts() -> Vec<(&'static str, String)> {
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
        ("page.php", r#"<?php for ($i = 0; $i < 3000; $i++) { printf("line %05d %s\n", $i, str_repeat('abcdefgh', 5)); }"#.into()),
        ("log.php", "<?php error_log('hello from php'); echo 'logged';".into()),
        ("sleep.php", "<?php touch(sys_get_temp_dir() . '/started'); sleep(30); echo 'woke';".into()),
        ("nap.php", "<?php usleep((int) $_GET['ms'] * 1000); echo getmypid();".into()),
        ("pid.php", "<?php echo getmypid(), ' ', $_SERVER['REQUEST_METHOD'], ' ', file_get_contents('php://input');".into()),
    ]
}

pub struct Harness {
    pub fpm: FpmSite,
    pub upstream: PhpUpstream,
    pub errors: Arc<Mutex<Vec<String>>>,
    pub runtime: Arc<TestRuntime>,
}

/// The supervisor's part, reduced to "the socket is there".
pub struct TestRuntime {
    pub socket: PathBuf,
    pub done: Arc<AtomicUsize>,
}

/// Counts finished requests when a lease is dropped.
pub struct CountOnDrop(Arc<AtomicUsize>);

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
pub struct StaticStub;

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

pub fn harness(opts: SiteOptions) -> Harness {
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
    let upstream = PhpUpstream::new(
        &fpm.site,
        runtime.clone(),
        Arc::new(StaticStub),
        sink,
        Default::default(),
    )
    .unwrap();
    Harness {
        fpm,
        upstream,
        errors,
        runtime,
    }
}

impl Harness {
    pub fn ctx(&self) -> RequestContext {
        RequestContext {
            site: self.fpm.site.clone(),
            client: "192.0.2.7:40000".parse().unwrap(),
            local: "127.0.0.1:8080".parse().unwrap(),
            scheme: Scheme::Https,
            host: "site.test".into(),
            mount_prefix: "".into(),
            files: None,
        }
    }

    pub async fn send(
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

    pub async fn get(
        &self,
        uri: &str,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), UpstreamError> {
        self.send(
            Request::get(uri)
                .header("host", "site.test")
                .body(body(""))
                .unwrap(),
        )
        .await
    }

    pub async fn json(&self, req: Request<RequestBody>) -> Value {
        let (status, _, body) = self.send(req).await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)))
    }
}

pub fn body(b: impl Into<Bytes>) -> RequestBody {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
