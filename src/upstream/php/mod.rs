//! The PHP upstream: decides which requests run a PHP script and speaks
//! FastCGI to the site's php-fpm pool over its Unix socket.
//!
//! # Layout
//! - [`script`]: request path → script and path info / static file / nothing.
//! - [`params`]: the FastCGI parameters (as nginx's `fastcgi_params`).
//! - `fcgi`: the FastCGI record layer (why by hand: see its module doc).
//! - `cgi`: CGI response headers → status and headers.
//! - `places`: the pool's places (`max_children` connections) and the
//!   requests queued for one, with their records, which the pool writes
//!   onto a kept-alive connection as soon as its answer ends.
//! - `pool`: keep-alive connections (`static`, `ondemand`), at most
//!   `max_children`, each retired after its php-fpm child's
//!   `max_requests`-th response, its successor opened while its last
//!   request runs.
//! - `warm`: a successor connection, pooled once a php-fpm child has it;
//!   an `ondemand` pool's fresh connection watched, and the master nudged
//!   while no child reads it.
//! - `exchange`: one request/response, streaming both ways: in the request's
//!   task until the head is in, then (only if the answer is not complete
//!   yet) in a task of its own.
//! - `spool`: bodies of unknown length go to an unnamed temp file first.
//!
//! The whole request path is looked up beneath the document root (the mount
//! prefix is not stripped), as the static files are.
//!
//! Invariants:
//! - PHP source is never served: only `script` decides what is static, and a
//!   `*.php` name (any case), another PHP source ending (`.phtml`, `.inc`,
//!   ...) or a backup of one never is.
//! - The site's process lifecycle is not ours: [`RuntimeHandle::ready`] gives
//!   the socket (starting the runtime if needed); we only connect.
//! - No input from php-fpm or the client panics; php-fpm faults are
//!   502 (broken/garbage), 504 (timeout), 503 (no free connection in time).

mod cgi;
mod exchange;
mod fcgi;
pub mod params;
mod places;
mod pool;
pub mod script;
mod warm;

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use futures_util::future::BoxFuture;
use http::{header, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;

use self::exchange::Exchange;
pub use self::pool::PoolStats;
use self::pool::{ConnPool, Reuse};
use self::script::Target;
use super::{empty_body, RequestBody, RequestContext, ResponseBody, Upstream, UpstreamError};
use crate::config::{PhpConfig, SiteConfig};
use crate::docroot::{DocRoot, Reader};
use crate::supervisor::RuntimeHandle;

/// Bodies of idempotent requests up to this size are read whole before the
/// request goes out, so it can be sent again when a kept-alive connection
/// turns out to be closed; larger ones stream on a fresh connection.
const REPLAY_MAX: u64 = 64 * 1024;

/// Room for `FCGI_BEGIN_REQUEST` and the parameters of a usual request
/// (~600 bytes plus the client's headers), so the buffer is allocated once.
const REQUEST_HEAD_CAPACITY: usize = 2048;

/// Connections a `dynamic` pool (one connection per request) may have
/// open per `max_children`: those beyond the children
/// wait in php-fpm's listen backlog with their request written, so a child
/// that ends a request accepts the next one at once, as behind nginx,
/// instead of idling until a busy router lane gets round to connecting
/// (measured in docs/performance.md, "PHP at its defaults"). `static` and
/// `ondemand` pools keep their connections alive, each pinning a child:
/// `max_children` (`pool::Reuse`).
const BACKLOG_DEPTH: usize = 4;

/// Longest an `ondemand` pool keeps a connection idle (at most
/// `idle_timeout`): php-fpm counts a child on a kept connection as busy, so
/// its own `process_idle_timeout` starts only once the router closes the
/// connection. Short, so an idle site's children still end about
/// `idle_timeout` after its last request, as without keep-alive (a
/// connection per visit costs a connect, not a child kept 2 × as long).
const ONDEMAND_IDLE_KEEP: std::time::Duration = std::time::Duration::from_secs(2);

/// At most this many connections wait in a pool's backlog: half of the
/// 511 polyhost gives php-fpm's socket (`runtime::php`'s `FPM_BACKLOG`),
/// so a `connect` never finds it full (that would be a 502).
const BACKLOG_SURPLUS_MAX: usize = 256;

/// Where PHP's stderr lines (FastCGI `STDERR` records: `error_log()`,
/// warnings when `log_errors` is on) go: the site's error log.
pub type ErrorSink = Arc<dyn Fn(&str) + Send + Sync>;

/// FastCGI to one site's php-fpm pool, with the site's static files beside it.
pub struct PhpUpstream {
    /// The site's document root, shared with the static upstream (its kept
    /// handle, for static assets; see `script::find`).
    root: DocRoot,
    /// `root` as a string for SCRIPT_FILENAME/DOCUMENT_ROOT (checked UTF-8).
    root_str: String,
    php: PhpConfig,
    /// What PHP executes (from `php`), shared with blocking lookups.
    rules: Arc<script::Rules>,
    body_limit: u64,
    runtime: Arc<dyn RuntimeHandle>,
    static_files: Arc<dyn Upstream>,
    errors: ErrorSink,
    pool: Arc<ConnPool>,
}

impl PhpUpstream {
    /// Fails when the site has no `[php]` section or no UTF-8 document root.
    /// `counters`: where the connection pool counts what it does (the
    /// site's, `SiteStats::php_pool`, so counts survive reloads).
    pub fn new(
        site: &SiteConfig,
        runtime: Arc<dyn RuntimeHandle>,
        static_files: Arc<dyn Upstream>,
        errors: ErrorSink,
        counters: Arc<crate::metrics::PhpPoolCounters>,
    ) -> Result<Self, String> {
        let php = site
            .php
            .clone()
            .ok_or_else(|| format!("site {} has no [php] section", site.name))?;
        let root = site
            .root
            .clone()
            .ok_or_else(|| format!("site {}: PHP needs a document root", site.name))?;
        let root_str = root
            .to_str()
            .ok_or_else(|| {
                format!(
                    "site {}: document root {} is not UTF-8",
                    site.name,
                    root.display()
                )
            })?
            .trim_end_matches('/')
            .to_owned();
        let root = match static_files.docroot() {
            Some(docroot) => docroot.clone(),
            // An upstream that serves no files of its own (tests): lookups
            // only, the static upstream decides what is served.
            None => DocRoot::open(&root, Reader::Anyone)
                .map_err(|e| format!("site {}: root {}: {e}", site.name, root.display()))?,
        };
        let max = usize::try_from(php.max_children).unwrap_or(usize::MAX);
        let reuse = match php.mode {
            crate::config::PhpMode::Static => Reuse::Pinned,
            crate::config::PhpMode::OnDemand => Reuse::OnDemand,
            crate::config::PhpMode::Dynamic => Reuse::None,
        };
        let admitted = if reuse != Reuse::None {
            max
        } else {
            let surplus = max
                .saturating_mul(BACKLOG_DEPTH - 1)
                .min(BACKLOG_SURPLUS_MAX);
            max.saturating_add(surplus)
        };
        Ok(PhpUpstream {
            pool: ConnPool::new(
                admitted,
                match reuse {
                    Reuse::OnDemand => php.idle_timeout.min(ONDEMAND_IDLE_KEEP),
                    Reuse::Pinned | Reuse::None => php.idle_timeout,
                },
                reuse,
                php.max_requests,
                counters,
            ),
            root,
            root_str,
            body_limit: site.limits.body,
            rules: Arc::new(script::Rules::of(&php)),
            php,
            runtime,
            static_files,
            errors,
        })
    }

    /// Closes kept-alive connections (call when the pool stops or restarts).
    pub fn close_idle(&self) {
        self.pool.close_idle();
    }

    /// Idle kept-alive connections (status, tests).
    pub fn idle_connections(&self) -> usize {
        self.pool.idle_count()
    }

    /// Requests queued for a connection's place now (tests).
    pub fn queued_requests(&self) -> usize {
        self.pool.queued_count()
    }

    /// What the connection pool did so far (status, tests).
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Decides what the path is, then answers: a static file from the
    /// static upstream, a script by running it. The decision is made before
    /// the request's future, and each kind of answer is a future of its
    /// own: a static file's is the static upstream's (a ready one), not
    /// one sized for a FastCGI exchange, allocated and moved per request
    /// (1 % of the router's CPU for a 13 B file from a PHP site's root).
    fn serve<'a>(
        &'a self,
        req: Request<RequestBody>,
        ctx: &'a RequestContext,
    ) -> BoxFuture<'a, Result<Response<ResponseBody>, UpstreamError>> {
        // Inline when the kernel can answer from its caches (the usual
        // case: microseconds); a blocking thread only when it would wait.
        match script::find_cached(&self.root, req.uri().path(), &self.rules) {
            Some(Ok(found)) => self.answer(req, ctx, found),
            Some(Err(e)) => Box::pin(std::future::ready(Err(e))),
            None => Box::pin(self.serve_uncached(req, ctx)),
        }
    }

    /// [`PhpUpstream::serve`] when the decision would wait on the disk.
    async fn serve_uncached(
        &self,
        req: Request<RequestBody>,
        ctx: &RequestContext,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let root = self.root.clone();
        let path = req.uri().path().to_owned();
        let rules = self.rules.clone();
        let found = tokio::task::spawn_blocking(move || script::find(&root, &path, &rules))
            .await
            .map_err(|e| UpstreamError::Internal(format!("resolving the script: {e}")))??;
        self.answer(req, ctx, found).await
    }

    /// The answer to what `found` says the path is.
    fn answer<'a>(
        &'a self,
        req: Request<RequestBody>,
        ctx: &'a RequestContext,
        found: script::Found,
    ) -> BoxFuture<'a, Result<Response<ResponseBody>, UpstreamError>> {
        match found.target {
            // Decoded and opened once: the static upstream answers from it.
            Target::Static => match (found.kept, found.opened) {
                (Some(kept), _) => self.static_files.handle_kept(req, ctx, kept),
                (None, Some(opened)) => self.static_files.handle_opened(req, ctx, opened),
                (None, None) => self.static_files.handle(req, ctx),
            },
            Target::NotFound => Box::pin(std::future::ready(Err(UpstreamError::NotFound))),
            Target::AddSlash => Box::pin(std::future::ready(add_slash(&req))),
            Target::Script {
                script_name,
                path_info,
            } => self.run(
                req,
                ctx,
                ScriptTarget {
                    script_name,
                    path_info,
                },
            ),
        }
    }

    /// Runs a script: its request encoded as FastCGI records before the
    /// request's future is made (the future then holds the records, not
    /// the request), unless its body must be read first
    /// ([`read_then_run`](Self::read_then_run)).
    fn run<'a>(
        &'a self,
        req: Request<RequestBody>,
        ctx: &'a RequestContext,
        script: ScriptTarget,
    ) -> BoxFuture<'a, Result<Response<ResponseBody>, UpstreamError>> {
        let start = Instant::now();
        let (parts, body) = req.into_parts();
        let content_length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .or_else(|| body.size_hint().exact());
        // PHP reads exactly CONTENT_LENGTH bytes: a body of unknown length
        // is read first, as is one to be held whole.
        let read_first = !body.is_end_stream()
            && (content_length.is_none() || held_whole(&parts.method, content_length));
        if read_first {
            return Box::pin(self.read_then_run(parts, body, ctx, script, content_length, start));
        }
        let request = self.encode(
            &parts,
            ScriptBody::Stream(body),
            ctx,
            &script,
            content_length,
        );
        Box::pin(self.exchange(request, script, start))
    }

    /// [`run`](Self::run) for a request whose body is read before the
    /// exchange: one of unknown length (PHP reads exactly CONTENT_LENGTH
    /// bytes: read whole first, to memory, then an unnamed temp file), or
    /// an idempotent one small enough to be held whole (then it can be
    /// sent again).
    async fn read_then_run(
        &self,
        parts: http::request::Parts,
        mut body: RequestBody,
        ctx: &RequestContext,
        script: ScriptTarget,
        mut content_length: Option<u64>,
        start: Instant,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let limit = self.body_limit;
        if content_length.is_none() {
            let spooled = crate::upstream::spool::spool(body, limit).await?;
            content_length = Some(spooled.len());
            body = spooled.into_body();
        }
        let whole = !body.is_end_stream() && held_whole(&parts.method, content_length);
        let body = match whole {
            true => ScriptBody::Whole(
                body.collect()
                    .await
                    .map_err(|e| UpstreamError::from_body(e, limit))?
                    .to_bytes(),
            ),
            false => ScriptBody::Stream(body),
        };
        let request = self.encode(&parts, body, ctx, &script, content_length);
        self.exchange(request, script, start).await
    }

    /// The request as FastCGI records, in one buffer: BEGIN_REQUEST, the
    /// PARAMS stream and, for a replayable request, the whole STDIN stream
    /// (then it goes out in one write and can be sent again).
    fn encode(
        &self,
        parts: &http::request::Parts,
        body: ScriptBody,
        ctx: &RequestContext,
        script: &ScriptTarget,
        content_length: Option<u64>,
    ) -> Encoded {
        let mut request = BytesMut::with_capacity(REQUEST_HEAD_CAPACITY);
        fcgi::begin_request(&mut request);
        let params = params::ScriptParams {
            script_name: &script.script_name,
            path_info: &script.path_info,
            document_root: &self.root_str,
        };
        params::encode(&mut request, parts, ctx, &params, content_length);
        let head_only = parts.method == Method::HEAD;
        let body = match body {
            ScriptBody::Whole(bytes) => {
                fcgi::stream_records(&mut request, fcgi::STDIN, &bytes);
                fcgi::end_stream(&mut request, fcgi::STDIN);
                None
            }
            ScriptBody::Stream(body) if parts.method.is_idempotent() && body.is_end_stream() => {
                fcgi::end_stream(&mut request, fcgi::STDIN);
                None
            }
            ScriptBody::Stream(body) => Some(body),
        };
        Encoded {
            request,
            body,
            head_only,
        }
    }

    /// The FastCGI exchange of an encoded request: a place in the pool, a
    /// connection, the records sent, the head waited for.
    async fn exchange(
        &self,
        encoded: Encoded,
        script: ScriptTarget,
        start: Instant,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let timeout = self.php.request_timeout;
        let Encoded {
            mut request,
            body,
            head_only,
        } = encoded;
        let replayable = body.is_none();

        // A request that has to wait leaves its records with its place in
        // the queue: the pool writes them onto the first kept-alive
        // connection whose answer ends (`places`).
        let (place, handed) = match self
            .pool
            .admit(|| replayable.then(|| request.clone().freeze()))
        {
            places::Admit::Now(place) => (place, None),
            places::Admit::Wait(wait) => {
                let grant = tokio::time::timeout(timeout, wait)
                    .await
                    .map_err(|_| UpstreamError::QueueTimeout(timeout))?;
                (grant.place, grant.handed)
            }
        };
        let startup = self.php.startup_timeout;
        let lease = tokio::time::timeout(startup, self.runtime.ready())
            .await
            .map_err(|_| {
                UpstreamError::Unavailable(format!("php-fpm not ready after {startup:?}"))
            })??;
        let remaining = |start: Instant| timeout.saturating_sub(start.elapsed());
        let handed = handed.and_then(|h| self.pool.adopt_handed(h, lease.socket()));
        let (stream, served, reused, written) = match handed {
            Some((conn, written)) => (conn.stream, conn.served, true, written),
            None => {
                let (stream, served, reused) =
                    self.connection(&lease, &mut request, replayable).await?;
                (stream, served, reused, 0)
            }
        };
        if self.pool.is_last(served) {
            // Its child exits after this answer: have a live child hold the
            // next connection before then.
            self.pool
                .warm_successor(lease.socket().to_owned(), lease.peer_uid(), timeout);
        }
        let exchange = Exchange {
            pool: self.pool.clone(),
            served,
            finish: exchange::Finish::new(lease, place),
            written,
            errors: self.errors.clone(),
            read_timeout: timeout,
            body_limit: self.body_limit,
            head_only,
            tag: script.script_name,
        };
        let (head, body) = exchange
            .start(stream, reused, request, body, remaining(start))
            .await?;
        let mut resp = Response::new(if head_only {
            empty_body()
        } else {
            body.boxed_unsync()
        });
        *resp.status_mut() = head.status;
        *resp.headers_mut() = head.headers;
        Ok(resp)
    }
}

impl PhpUpstream {
    /// A connection for a request that was handed none: a kept-alive one
    /// (or a successor's, waited for), else a fresh one with as much of
    /// `request` sent as the socket took (`request` advanced past it).
    /// Returns the stream, the requests its child served, and whether it
    /// was kept alive (then the request can be sent again).
    async fn connection(
        &self,
        lease: &crate::supervisor::RuntimeLease,
        request: &mut BytesMut,
        replayable: bool,
    ) -> Result<(tokio::net::UnixStream, u64, bool), UpstreamError> {
        // A kept-alive connection is used only for a request that can be
        // sent again (see `exchange::Attempt::Stale`): idempotent, body held
        // whole. Anything else gets a fresh connection (closing an idle one
        // so the bound holds): a POST must never run twice. Either waits
        // for a successor on its way rather than open a connection beside
        // it (a POST closes what it gets: its own connection takes that
        // place).
        let idle = self.pool.take_or_wait(lease.socket()).await;
        if let Some(c) = idle.filter(|_| replayable) {
            return Ok((c.stream, c.served, true));
        }
        // Sent as it connects: no wait for the reactor to call a fresh
        // socket writable (see `connect_runtime_sending`).
        let stream =
            crate::upstream::connect_runtime_sending(lease.socket(), lease.peer_uid(), request)
                .map_err(|e| {
                    UpstreamError::BadGateway(format!(
                        "cannot connect to php-fpm at {}: {e}",
                        lease.socket().display()
                    ))
                })?;
        self.pool.count_opened();
        self.pool.watch_fresh(&stream, lease.socket());
        Ok((stream, 0, false))
    }
}

/// A request body that is read whole before its exchange and sent with its
/// head, so the request can be sent again on a fresh connection: an
/// idempotent request's, of a known length up to [`REPLAY_MAX`].
fn held_whole(method: &Method, content_length: Option<u64>) -> bool {
    method.is_idempotent() && content_length.is_some_and(|n| n <= REPLAY_MAX)
}

/// The script a request runs, as `script::find` decided it.
struct ScriptTarget {
    script_name: String,
    path_info: String,
}

/// A script's request body as it is encoded: still to stream, or read
/// whole (then it goes out with the head and can be sent again).
enum ScriptBody {
    Stream(RequestBody),
    Whole(bytes::Bytes),
}

/// A script's request as FastCGI records ([`PhpUpstream::encode`]): the
/// whole request, or its head with `body` to stream after it as STDIN.
struct Encoded {
    request: BytesMut,
    body: Option<RequestBody>,
    /// A `HEAD` request: the body php-fpm sends is not passed on.
    head_only: bool,
}

impl Upstream for PhpUpstream {
    fn kind(&self) -> &'static str {
        "php"
    }

    fn request_timeout(&self) -> Option<std::time::Duration> {
        Some(self.php.request_timeout)
    }

    fn handle<'a>(
        &'a self,
        req: Request<RequestBody>,
        ctx: &'a RequestContext,
    ) -> BoxFuture<'a, Result<Response<ResponseBody>, UpstreamError>> {
        self.serve(req, ctx)
    }
}

/// `301` to a directory's path with its slash added.
/// Leading slashes collapsed (`//dir` is `/dir`): never a
/// protocol-relative redirect off the site.
fn add_slash(req: &Request<RequestBody>) -> Result<Response<ResponseBody>, UpstreamError> {
    let mut loc = format!("/{}/", req.uri().path().trim_start_matches('/'));
    if let Some(q) = req.uri().query() {
        loc.push('?');
        loc.push_str(q);
    }
    Response::builder()
        .status(StatusCode::MOVED_PERMANENTLY)
        .header(header::LOCATION, loc)
        .body(empty_body())
        .map_err(|e| UpstreamError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests;
