//! Static files: the [`Upstream`] that answers from a site's document root
//! in the router process itself.
//!
//! Owns: method check (GET and HEAD only), path → file through
//! [`DocRoot`] (index files, the trailing-slash redirect), `Content-Type`,
//! validators and caching headers, conditional and range requests
//! ([`conditional`]), streaming the bytes ([`body`]), and small files kept
//! in memory per thread ([`hot`]).
//!
//! Invariants:
//! - PHP source is never served, by any site, PHP or not (a site whose PHP
//!   was switched off keeps its `wp-config.php`): a file whose name is PHP
//!   source ([`crate::upstream::php_source`]: `*.php` in any letter case,
//!   `.phtml`, `.inc`, ..., the site's `php.extensions`, backups such as
//!   `x.php~`), requested or as a directory index, is refused with 403.
//! - Every file served was opened through [`DocRoot`] (so `openat2` with
//!   `RESOLVE_BENEATH`, and only if the site's user may read it); the
//!   response describes that open file's `fstat`, never a second lookup of
//!   the path.
//! - Opening and `fstat` run on the async thread when the kernel's caches
//!   answer the lookup (`RESOLVE_CACHED`: an `openat2` of a cached path
//!   costs microseconds), else on the blocking pool (a path not in the
//!   caches, a network file system's revalidation, a root's first
//!   lookup): one site's cold or remote files never stall the other
//!   connections of its thread. File bytes are read in chunks of at most
//!   [`body::CHUNK`], so a large file costs no more memory than a small one,
//!   from the page cache on the async thread and from the disk on the
//!   blocking pool ([`body`]); a large chunk's buffer is reused from a
//!   bounded per-thread free list, and a chunk shows only the bytes just
//!   read into it.
//! - Every request sees the file as it is now. A file is opened and
//!   `fstat`ed afresh, unless it is a small file this thread keeps
//!   ([`hot`]): then one `statx` of its path must find the very inode that
//!   was opened and admitted, unchanged (any write, `chmod`, `chown`, link,
//!   rename or replacement changes it), or the file is opened afresh. The
//!   other memory kept per file is `docroot::access`'s "this file has no
//!   ACL", valid only for the file's present change time.
//! - Failures (403, 404, 405, I/O) leave as [`UpstreamError`]; 301, 304,
//!   412 and 416 are ordinary protocol answers and are built here.
//!
//! The query string never takes part in the lookup.

mod body;
mod conditional;
mod headers;
pub mod hot;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use super::{
    empty_body, full_body, plain_response, RequestBody, RequestContext, ResponseBody, Upstream,
    UpstreamError,
};
use crate::config::StaticConfig;
use crate::docroot::{
    cached_lookups, decode, DocRoot, Fail, OpenFile, Opened, Reader, RelPath, ResolveError,
    Resolved, Wait,
};
use crate::upstream::php_source::is_php_source;
use conditional::{Decision, Validators};

pub use body::CHUNK;

/// Header fields of a file's response, with the router's own (`Server`-less:
/// ETag, Last-Modified, Cache-Control, Accept-Ranges, Content-Type,
/// X-Content-Type-Options, Content-Length, and a few to spare).
const RESPONSE_HEADERS: usize = 12;

/// Serves files from one document root.
#[derive(Clone, Debug)]
pub struct StaticFiles {
    root: DocRoot,
    index: Arc<[String]>,
    cache_control: Option<HeaderValue>,
    /// The site's `php.extensions` (none without PHP): PHP source besides
    /// [`crate::upstream::php_source::PHP_SOURCE`].
    php_extensions: Arc<[String]>,
}

impl StaticFiles {
    /// Opens `root` and takes the index names and cache lifetime from `cfg`;
    /// serves only files `reader` (the site's user) may read.
    pub fn new(root: &Path, cfg: &StaticConfig, reader: Reader) -> io::Result<StaticFiles> {
        Ok(StaticFiles::with_docroot(DocRoot::open(root, reader)?, cfg))
    }

    /// Serves from an already opened root (shared with the site's PHP upstream, say).
    pub fn with_docroot(root: DocRoot, cfg: &StaticConfig) -> StaticFiles {
        StaticFiles {
            root,
            index: cfg.index.clone().into(),
            cache_control: cfg.cache_max_age.map(cache_control),
            php_extensions: Arc::new([]),
        }
    }

    /// Refuses the site's `php.extensions` as PHP source too (every PHP
    /// ending of [`crate::upstream::php_source::PHP_SOURCE`] always is).
    pub fn with_php_extensions(mut self, extensions: &[String]) -> StaticFiles {
        self.php_extensions = extensions.into();
        self
    }

    /// The document root files are served from.
    pub fn docroot(&self) -> &DocRoot {
        &self.root
    }

    fn serve(
        &self,
        req: Request<RequestBody>,
        ctx: &RequestContext,
    ) -> Result<Served, UpstreamError> {
        allowed(req.method())?;
        let rel = decode(req.uri().path())?;
        if let Some(entry) = self.hot(&rel) {
            return self.answer_hot(&req, &entry).map(Served::Answer);
        }
        // Resolved on the async thread when the kernel's caches answer: an
        // openat2 + fstat of a cached path costs microseconds, while a hop
        // to the blocking pool costs two thread switches per request
        // (measured: most of the router's CPU on small files). A lookup
        // that would wait (a path not in the caches, a network file
        // system's revalidation) goes to the blocking pool instead, so one
        // site's cold or remote files never stall the other connections of
        // this thread, every site's. The bytes are read from the page cache
        // without waiting for the disk, or on the blocking pool when it
        // does not have them.
        if !cached_lookups() {
            // A kernel older than 5.12: every lookup here, as it may wait.
            let resolved = self.root.resolve_decoded(&rel)?;
            return self.answer(req, resolved, ctx).map(Served::Answer);
        }
        let cached = self
            .root
            .resolve_cached(&rel)
            .and_then(|resolved| found(&self.root, resolved, &self.index, Wait::CachedOnly));
        match cached {
            Ok(found) => self.answer_found(req, found, ctx).map(Served::Answer),
            Err(Fail::NotCached) => Ok(Served::Waits(req)),
            Err(Fail::Refused(e)) => Err(e.into()),
        }
    }

    /// [`StaticFiles::serve`] of a request whose lookup waits for I/O: on
    /// the blocking pool, then answered here (this thread keeps the file).
    async fn serve_waiting(
        &self,
        req: Request<RequestBody>,
        ctx: &RequestContext,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let (root, index) = (self.root.clone(), self.index.clone());
        let path = req.uri().path().to_owned();
        let lookup = tokio::task::spawn_blocking(move || {
            let resolved = root.resolve(&path)?;
            found(&root, resolved, &index, Wait::Block).map_err(Fail::answered)
        });
        let found = lookup
            .await
            .map_err(|e| UpstreamError::Internal(format!("a file lookup failed: {e}")))??;
        self.answer_found(req, found, ctx)
    }

    /// The kept small file a decoded path names, unchanged ([`hot`]).
    fn hot(&self, rel: &RelPath<'_>) -> Option<Arc<hot::Entry>> {
        if rel.trailing_slash() {
            return None;
        }
        hot::lookup(&self.root, rel.as_str())
    }

    /// Answers from a kept file ([`StaticFiles::hot`]), with the checks a
    /// file opened afresh gets after its open (the site's PHP endings may
    /// have changed since it was kept).
    fn answer_hot(
        &self,
        req: &Request<RequestBody>,
        entry: &hot::Entry,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        self.not_php_source(entry.rel_path())?;
        let body = Source::Bytes(entry.bytes.clone());
        Ok(self.respond(req.method(), req.headers(), &entry.described, body))
    }

    fn not_php_source(&self, rel: &str) -> Result<(), UpstreamError> {
        let name = rel.rsplit('/').next().unwrap_or_default();
        if is_php_source(name, &self.php_extensions) {
            return Err(UpstreamError::Forbidden(format!(
                "{name:?} is PHP source, never served as a file"
            )));
        }
        Ok(())
    }

    /// Answers from what a request path resolved to (a directory's index
    /// looked up here, waiting if it must).
    fn answer(
        &self,
        req: Request<RequestBody>,
        resolved: Resolved,
        ctx: &RequestContext,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let found =
            found(&self.root, resolved, &self.index, Wait::Block).map_err(Fail::answered)?;
        self.answer_found(req, found, ctx)
    }

    /// Answers with the file found, or the redirect to a directory's slash.
    fn answer_found(
        &self,
        req: Request<RequestBody>,
        found: Found,
        ctx: &RequestContext,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        match found {
            Found::Redirect => Ok(redirect_to_slash(req.uri())),
            Found::File(file) => {
                self.not_php_source(file.rel_path())?;
                let (method, headers) = (req.method(), req.headers());
                let described = Described::of(&file);
                Ok(match hot::keepable(&file) {
                    Some(kept) => {
                        let entry = hot::keep(&self.root, &file, kept, described);
                        let body = Source::Bytes(entry.bytes.clone());
                        self.respond(method, headers, &entry.described, body)
                    }
                    None => {
                        let body = Source::File(file.into_file(), ctx);
                        self.respond(method, headers, &described, body)
                    }
                })
            }
        }
    }

    fn respond(
        &self,
        method: &Method,
        headers: &http::HeaderMap,
        described: &Described,
        body: Source<'_>,
    ) -> Response<ResponseBody> {
        let v = &described.validators;
        let decision = conditional::decide(method, headers, v);
        let mut res = Response::new(empty_body());
        // Room for every header set here and by the router after: one
        // allocation, no regrowth.
        *res.headers_mut() = http::HeaderMap::with_capacity(RESPONSE_HEADERS);
        let h = res.headers_mut();
        if let Some(etag) = &described.etag {
            h.insert(header::ETAG, etag.clone());
        }
        if let Some(lm) = &described.last_modified {
            h.insert(header::LAST_MODIFIED, lm.clone());
        }
        if let Some(cc) = &self.cache_control {
            h.insert(header::CACHE_CONTROL, cc.clone());
        }
        let (start, len) = match decision {
            Decision::NotModified => {
                *res.status_mut() = StatusCode::NOT_MODIFIED;
                return res;
            }
            Decision::PreconditionFailed => {
                return plain_response(StatusCode::PRECONDITION_FAILED, "precondition failed");
            }
            Decision::Unsatisfiable => {
                let mut res =
                    plain_response(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
                let h = res.headers_mut();
                h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                h.insert(
                    header::CONTENT_RANGE,
                    header_value(format!("bytes */{}", v.len)),
                );
                return res;
            }
            Decision::Full => (0, v.len),
            Decision::Partial { start, end } => {
                *res.status_mut() = StatusCode::PARTIAL_CONTENT;
                let range = format!("bytes {start}-{end}/{}", v.len);
                res.headers_mut()
                    .insert(header::CONTENT_RANGE, header_value(range));
                (start, end - start + 1)
            }
        };
        let h = res.headers_mut();
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(header::CONTENT_TYPE, described.content_type.clone());
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        // One allocation (`HeaderValue::from(u64)` makes two).
        let length = HeaderValue::from_bytes(itoa::Buffer::new().format(len).as_bytes());
        h.insert(
            header::CONTENT_LENGTH,
            length.unwrap_or_else(|_| HeaderValue::from(len)),
        );
        if method == Method::GET && len > 0 {
            *res.body_mut() = body.range(start, len);
        }
        res
    }
}

/// What a response says of one version of a file: its validators, their
/// header values and its type. Made once per file opened; a kept file
/// ([`hot`]) keeps it.
#[derive(Debug)]
pub struct Described {
    validators: Validators,
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    content_type: HeaderValue,
}

impl Described {
    fn of(file: &OpenFile) -> Described {
        let validators = Validators::from_metadata(file.metadata());
        Described {
            etag: HeaderValue::from_maybe_shared(bytes::Bytes::from(validators.etag.clone())).ok(),
            last_modified: validators.last_modified.and_then(headers::last_modified),
            content_type: headers::content_type(file.rel_path()),
            validators,
        }
    }
}

/// Where a response's bytes come from.
enum Source<'a> {
    /// The open file, streamed ([`body`]) through the connection's queue of
    /// files to send, if it has one.
    File(std::fs::File, &'a RequestContext),
    /// A kept file's bytes ([`hot`]).
    Bytes(bytes::Bytes),
}

impl Source<'_> {
    /// The body of `len` bytes from `start` (within the file's length).
    fn range(self, start: u64, len: u64) -> ResponseBody {
        match self {
            Source::File(file, ctx) => body::file_body(file, start, len, ctx.files.as_ref()),
            Source::Bytes(bytes) => {
                // Both within the kept length (a few KiB), so they fit a usize.
                let (start, len) = (start as usize, len as usize);
                full_body(bytes.slice(start..start + len))
            }
        }
    }
}

impl Upstream for StaticFiles {
    fn kind(&self) -> &'static str {
        "static"
    }

    fn handle<'a>(
        &'a self,
        req: Request<RequestBody>,
        ctx: &'a RequestContext,
    ) -> BoxFuture<'a, Result<Response<ResponseBody>, UpstreamError>> {
        match self.serve(req, ctx) {
            Ok(Served::Waits(req)) => Box::pin(self.serve_waiting(req, ctx)),
            Ok(Served::Answer(resp)) => Box::pin(std::future::ready(Ok(resp))),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn handle_opened<'a>(
        &'a self,
        req: Request<RequestBody>,
        ctx: &'a RequestContext,
        opened: Opened,
    ) -> BoxFuture<'a, Result<Response<ResponseBody>, UpstreamError>> {
        let answer = allowed(req.method())
            .and_then(|()| Ok(self.root.admit(opened)?))
            .and_then(|resolved| self.answer(req, resolved, ctx));
        Box::pin(std::future::ready(answer))
    }
    fn handle_kept<'a>(
        &'a self,
        req: Request<RequestBody>,
        _ctx: &'a RequestContext,
        kept: Arc<hot::Entry>,
    ) -> BoxFuture<'a, Result<Response<ResponseBody>, UpstreamError>> {
        let answer = allowed(req.method()).and_then(|()| self.answer_hot(&req, &kept));
        Box::pin(std::future::ready(answer))
    }

    fn docroot(&self) -> Option<&DocRoot> {
        Some(&self.root)
    }
}

/// GET and HEAD only; the router's error mapping adds `Allow: GET, HEAD`.
fn allowed(method: &Method) -> Result<(), UpstreamError> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(UpstreamError::MethodNotAllowed)
    }
}

/// What [`StaticFiles::serve`] did without waiting.
enum Served {
    Answer(Response<ResponseBody>),
    /// The lookup needs I/O: [`StaticFiles::serve_waiting`].
    Waits(Request<RequestBody>),
}

enum Found {
    File(Box<OpenFile>),
    /// A directory asked for without its trailing slash.
    Redirect,
}

/// What a path resolved to → the file to send, trying the index names for
/// a directory (waiting for I/O as `wait` allows).
fn found(root: &DocRoot, resolved: Resolved, index: &[String], wait: Wait) -> Result<Found, Fail> {
    match resolved {
        Resolved::File(file) => Ok(Found::File(Box::new(file))),
        Resolved::Dir(dir) if !dir.has_trailing_slash() => Ok(Found::Redirect),
        Resolved::Dir(dir) => match root.open_index(&dir, index, wait)? {
            Some(file) => Ok(Found::File(Box::new(file))),
            None => Err(ResolveError::Forbidden("directory has no index file").into()),
        },
    }
}

/// 301 to the same path with a trailing slash, query kept. Leading slashes
/// are collapsed so `//evil.example/dir` cannot become a protocol-relative
/// redirect off the site.
fn redirect_to_slash(uri: &http::Uri) -> Response<ResponseBody> {
    let mut location = format!("/{}/", uri.path().trim_start_matches('/'));
    if let Some(q) = uri.query() {
        location.push('?');
        location.push_str(q);
    }
    let mut res = plain_response(StatusCode::MOVED_PERMANENTLY, "moved permanently");
    res.headers_mut()
        .insert(header::LOCATION, header_value(location));
    res
}

fn cache_control(max_age: Duration) -> HeaderValue {
    header_value(format!("max-age={}", max_age.as_secs()))
}

/// Values built here from a request URI's path and query or from numbers
/// are always valid header values; should one not be, an empty value is
/// sent rather than a panic.
fn header_value(s: String) -> HeaderValue {
    HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}
