//! The router's end of one connection to a `polyhost-python` worker: HTTP/1.1
//! over a Unix socket, driven in the request's own task.
//!
//! Why not hyper's client: it runs every connection in a task of its own, so
//! each request crossed from the client's task to that task and back (two
//! wake-ups, often across threads) — the largest router cost of a small
//! Python response (see `docs/performance.md`). The worker is ours and the
//! exchange is narrow: one request at a time, a `Content-Length` request body
//! (bodies are spooled first), a `Content-Length` or chunked response. Heads
//! are parsed by `httparse`; chunk sizes by `httparse::parse_chunk_size`.
//!
//! Invariant: nothing from the worker is trusted (site code writes its
//! response headers). Heads are bounded ([`MAX_HEAD`], [`MAX_HEADERS`]),
//! every name and value is validated into `http` types, and any framing
//! error poisons the connection: it is never reused.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use polyhost_protocol::{header as reserved, limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::upstream::spool::Spooled;

/// Largest response head accepted from a worker.
pub const MAX_HEAD: usize = limits::MAX_RESPONSE_HEAD;
/// Most response header fields accepted from a worker.
pub const MAX_HEADERS: usize = limits::MAX_RESPONSE_FIELDS;
/// Request bodies up to this size go out in the same write as the head.
const COALESCE_BODY: usize = 64 << 10;
/// How much the read buffer grows by when it needs room.
const READ_CHUNK: usize = 16 << 10;
/// Largest trailer section of a chunked response (trailers are dropped).
const MAX_TRAILERS: usize = 16 << 10;

/// Why an exchange with a worker failed. Every variant means the worker
/// broke the protocol or the connection: a 502 for the request.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the worker closed the connection {0}")]
    Closed(&'static str),
    #[error("the worker sent an invalid response: {0}")]
    Invalid(String),
    /// The first write on a pooled connection found it closed by the
    /// worker: nothing of the request went out, so it may go again on a
    /// new connection.
    #[error("the worker had closed the pooled connection: {0}")]
    Stale(io::Error),
}

/// How the body of a response is delimited, and how much of it is left.
#[derive(Debug)]
pub enum Framing {
    /// No body (HEAD, 204, 304) or a body read to its end.
    Done,
    /// `Content-Length`: this many bytes are still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunk),
    /// Neither: the body ends when the worker closes the connection.
    UntilClose,
}

/// Where a chunked body is.
#[derive(Debug)]
pub enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk, in the (ignored) trailer section.
    Trailers { seen: usize },
}

impl Framing {
    /// The body's exact length, when the head says it.
    pub fn exact_len(&self) -> Option<u64> {
        match self {
            Framing::Done => Some(0),
            Framing::Length(n) => Some(*n),
            Framing::Chunked(_) | Framing::UntilClose => None,
        }
    }
}

/// A response head from a worker.
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
}

/// A request as it goes out: its head (with a small body appended, one
/// write for both) and the rest of its body. Kept by the caller until the
/// request was sent, so a request refused by a stale connection can go again.
pub struct Outgoing {
    first: Vec<u8>,
    rest: Spooled,
}

impl Outgoing {
    /// `head` from [`encode_head`] and the spooled body.
    pub fn new(mut head: Vec<u8>, body: Spooled) -> Self {
        let rest = match body {
            Spooled::Memory(bytes) if bytes.len() <= COALESCE_BODY => {
                head.extend_from_slice(&bytes);
                Spooled::Memory(Bytes::new())
            }
            body => body,
        };
        Outgoing { first: head, rest }
    }
}

/// One keep-alive connection to a worker.
pub struct WorkerConn {
    stream: UnixStream,
    /// No request was sent on it yet (a closed peer cannot be a stale pool entry).
    fresh: bool,
    /// The router lane whose event loop `stream` is registered with.
    lane: usize,
    /// Bytes read from the worker and not consumed yet.
    buf: BytesMut,
    /// False once the connection cannot carry another request (the worker
    /// said `Connection: close`, framing by close, or any error).
    reusable: bool,
    /// Whether the response being read leaves the connection reusable once
    /// its body has been read to the end.
    keep_alive_after: bool,
}

impl WorkerConn {
    pub fn new(stream: UnixStream) -> Self {
        WorkerConn {
            stream,
            fresh: true,
            lane: crate::lanes::current(),
            buf: BytesMut::new(),
            reusable: true,
            keep_alive_after: false,
        }
    }

    /// The router lane this connection's socket is registered with.
    pub fn lane(&self) -> usize {
        self.lane
    }

    /// Whether the last response ended cleanly with nothing read beyond it,
    /// so the connection may go back to the pool (no system call: a worker
    /// that closed it since makes the next [`send`](Self::send) fail with
    /// [`WireError::Stale`]).
    pub fn ended_cleanly(&self) -> bool {
        self.reusable && self.buf.is_empty()
    }

    /// Whether the connection can take another request: it ended its last
    /// response cleanly, and the worker neither closed it nor sent anything
    /// unasked since (checked without blocking, with a system call: for
    /// sweeping the pool, not for every request).
    pub fn is_reusable(&self) -> bool {
        if !self.ended_cleanly() {
            return false;
        }
        // A real peek, not tokio's `try_read`: that answers from the
        // reactor's readiness cache, which may not have seen the close yet.
        use nix::sys::socket::{recv, MsgFlags};
        use std::os::fd::AsRawFd;
        let mut probe = [0u8; 1];
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        matches!(
            recv(self.stream.as_raw_fd(), &mut probe, flags),
            Err(nix::errno::Errno::EAGAIN)
        )
    }

    /// Sends a request. On a pooled connection the worker closed (it
    /// stopped, or died), the first write fails with nothing sent:
    /// [`WireError::Stale`], and `request` is intact for a new connection.
    pub async fn send(&mut self, request: &mut Outgoing) -> Result<(), WireError> {
        self.reusable = false; // until the response has been read to its end
        let pooled = !std::mem::replace(&mut self.fresh, false);
        if let Err(e) = self.stream.write_all(&request.first).await {
            let closed = matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            );
            return Err(if pooled && closed {
                WireError::Stale(e)
            } else {
                e.into()
            });
        }
        match &mut request.rest {
            Spooled::Memory(bytes) => self.stream.write_all(bytes).await?,
            Spooled::File { file, len } => {
                let copied = tokio::io::copy(file, &mut self.stream).await?;
                if copied != *len {
                    return Err(WireError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("spooled request body shrank from {len} to {copied} bytes"),
                    )));
                }
            }
        }
        Ok(())
    }

    /// Reads the response head. `head_request`: the request was HEAD, so
    /// the response has no body whatever its headers say.
    pub async fn read_head(&mut self, head_request: bool) -> Result<ResponseHead, WireError> {
        self.read_head_of(head_request, false).await
    }

    /// Reads the response head to an upgrade request: a `101` is a final
    /// answer here (the connection is then the worker's tunnel:
    /// [`into_tunnel`](Self::into_tunnel)), and the connection is never
    /// reused, whatever the answer.
    pub async fn read_upgrade_head(&mut self) -> Result<ResponseHead, WireError> {
        self.reusable = false;
        self.read_head_of(false, true).await
    }

    /// The socket and the bytes the worker sent past the head: what a
    /// tunnel relays after a `101`.
    pub fn into_tunnel(self) -> (UnixStream, Bytes) {
        // A copy (usually of nothing): the read buffer's 16 KiB would
        // otherwise live as long as the tunnel.
        (self.stream, Bytes::copy_from_slice(&self.buf))
    }

    async fn read_head_of(
        &mut self,
        head_request: bool,
        upgrade: bool,
    ) -> Result<ResponseHead, WireError> {
        loop {
            if let Some(head) = self.parse_head(head_request)? {
                if head.status == StatusCode::CONTINUE {
                    continue; // the worker's answer to `Expect`: the real head follows
                }
                if upgrade && head.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Ok(head);
                }
                if head.status.is_informational() {
                    // The worker sends no other interim response (it refuses
                    // an app's 1xx): waiting for a final head here would hold
                    // the request until request_timeout.
                    self.reusable = false;
                    return Err(WireError::Invalid(format!(
                        "interim status {} instead of a final response",
                        head.status.as_u16()
                    )));
                }
                return Ok(head);
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(WireError::Invalid(format!(
                    "response head larger than {} KiB",
                    MAX_HEAD >> 10
                )));
            }
            if self.fill().await? == 0 {
                return Err(WireError::Closed(if self.buf.is_empty() {
                    "without answering"
                } else {
                    "in the middle of the response head"
                }));
            }
        }
    }

    /// Bytes read from the worker and not consumed yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Reads a whole body of known length `len` (the caller bounds it).
    pub async fn read_exact_body(&mut self, len: u64) -> Result<Bytes, WireError> {
        let len = usize::try_from(len).map_err(|_| WireError::Invalid("body too long".into()))?;
        if self.buf.len() < len {
            self.buf.reserve(len - self.buf.len());
        }
        while self.buf.len() < len {
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(WireError::Closed("in the middle of the response body"));
            }
        }
        self.reusable = self.keep_alive_after;
        Ok(self.buf.split_to(len).freeze())
    }

    /// The next piece of the body; `None` at its end. Marks the connection
    /// reusable when a body with a defined end was read to that end.
    pub async fn next_data(&mut self, framing: &mut Framing) -> Result<Option<Bytes>, WireError> {
        let result = self.next_data_inner(framing).await;
        match (&result, &*framing) {
            (Ok(None), Framing::Done) => self.reusable = self.keep_alive_after,
            (Err(_), _) => self.reusable = false,
            _ => {}
        }
        result
    }

    async fn next_data_inner(&mut self, framing: &mut Framing) -> Result<Option<Bytes>, WireError> {
        loop {
            match framing {
                Framing::Done => return Ok(None),
                Framing::Length(0) => *framing = Framing::Done,
                Framing::Length(left) => {
                    let data = self.take_data(left).await?;
                    return Ok(Some(data));
                }
                Framing::UntilClose => {
                    if self.buf.is_empty() && self.fill().await? == 0 {
                        self.keep_alive_after = false;
                        *framing = Framing::Done;
                        return Ok(None);
                    }
                    return Ok(Some(self.buf.split().freeze()));
                }
                Framing::Chunked(chunk) => {
                    if let Some(data) = self.next_chunked(chunk).await? {
                        return Ok(Some(data));
                    }
                    *framing = Framing::Done;
                }
            }
        }
    }

    /// Advances a chunked body; `Some(data)` for a piece of chunk data,
    /// `None` once the body (and its trailers) ended.
    async fn next_chunked(&mut self, chunk: &mut Chunk) -> Result<Option<Bytes>, WireError> {
        loop {
            match chunk {
                Chunk::Size => match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.buf.advance(used);
                        *chunk = if size == 0 {
                            Chunk::Trailers { seen: 0 }
                        } else {
                            Chunk::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => self.need_more("in a chunk size").await?,
                    Err(_) => return Err(WireError::Invalid("bad chunk size line".into())),
                },
                Chunk::Data(left) => {
                    let data = self.take_data(left).await?;
                    if *left == 0 {
                        *chunk = Chunk::DataEnd;
                    }
                    return Ok(Some(data));
                }
                Chunk::DataEnd => {
                    if self.buf.len() < 2 {
                        self.need_more("after chunk data").await?;
                    } else if &self.buf[..2] == b"\r\n" {
                        self.buf.advance(2);
                        *chunk = Chunk::Size;
                    } else {
                        return Err(WireError::Invalid("chunk data not followed by CRLF".into()));
                    }
                }
                Chunk::Trailers { seen } => match memchr_crlf(&self.buf) {
                    Some(0) => {
                        self.buf.advance(2);
                        return Ok(None);
                    }
                    Some(line) => {
                        *seen += line + 2;
                        self.buf.advance(line + 2);
                    }
                    None if *seen + self.buf.len() > MAX_TRAILERS => {
                        return Err(WireError::Invalid("trailers too large".into()))
                    }
                    None => self.need_more("in the trailers").await?,
                },
            }
        }
    }

    /// Up to `*left` bytes of body data (at least one), `*left` reduced.
    async fn take_data(&mut self, left: &mut u64) -> Result<Bytes, WireError> {
        if self.buf.is_empty() {
            self.need_more("in the middle of the response body").await?;
        }
        let n = self
            .buf
            .len()
            .min(usize::try_from(*left).unwrap_or(usize::MAX));
        *left -= n as u64;
        Ok(self.buf.split_to(n).freeze())
    }

    async fn need_more(&mut self, where_: &'static str) -> Result<(), WireError> {
        if self.fill().await? == 0 {
            return Err(WireError::Closed(where_));
        }
        Ok(())
    }

    async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    fn parse_head(&mut self, head_request: bool) -> Result<Option<ResponseHead>, WireError> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut fields);
        let used = match response.parse(&self.buf) {
            Ok(httparse::Status::Complete(used)) => used,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(WireError::Invalid(format!("response head: {e}"))),
        };
        let invalid = |what: String| WireError::Invalid(what);
        let code = response.code.unwrap_or(0);
        let status = StatusCode::from_u16(code)
            .map_err(|_| invalid(format!("status {code} is not a valid status")))?;
        let mut meta = HeadMeta::new(response.version == Some(1));
        let mut headers = HeaderMap::with_capacity(response.headers.len());
        for field in response.headers.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| invalid(format!("header name {:?}", field.name)))?;
            let value = HeaderValue::from_bytes(field.value)
                .map_err(|_| invalid(format!("value of header {name}")))?;
            meta.note(&name, &value)?;
            headers.append(name, value);
        }
        self.buf.advance(used);
        let no_body = head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let framing = if no_body {
            Framing::Done
        } else if meta.chunked {
            Framing::Chunked(Chunk::Size)
        } else if meta.other_coding {
            Framing::UntilClose // RFC 9112 §6.3: read until close
        } else if let Some(len) = meta.length {
            Framing::Length(len)
        } else {
            Framing::UntilClose
        };
        self.keep_alive_after = meta.keep_alive
            && !matches!(framing, Framing::UntilClose)
            && !status.is_informational();
        Ok(Some(ResponseHead {
            status,
            headers,
            framing,
        }))
    }
}

/// What the framing-relevant headers of a response say.
struct HeadMeta {
    length: Option<u64>,
    chunked: bool,
    /// A transfer coding other than a final `chunked`.
    other_coding: bool,
    keep_alive: bool,
}

impl HeadMeta {
    fn new(http11: bool) -> Self {
        HeadMeta {
            length: None,
            chunked: false,
            other_coding: false,
            keep_alive: http11,
        }
    }

    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<(), WireError> {
        // Compared case-insensitively in place: no lower-cased copy per response.
        let tokens = || {
            value
                .as_bytes()
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
        };
        if name == header::CONTENT_LENGTH {
            let len = std::str::from_utf8(value.as_bytes().trim_ascii())
                .ok()
                .and_then(|t| t.parse::<u64>().ok())
                .ok_or_else(|| WireError::Invalid(format!("Content-Length {value:?}")))?;
            if self.length.is_some_and(|l| l != len) {
                return Err(WireError::Invalid("conflicting Content-Length".into()));
            }
            self.length = Some(len);
        } else if name == header::TRANSFER_ENCODING {
            let last = tokens().next_back().unwrap_or_default();
            self.chunked = last.eq_ignore_ascii_case(b"chunked");
            self.other_coding = !self.chunked;
        } else if name == header::CONNECTION {
            if tokens().any(|t| t.eq_ignore_ascii_case(b"close")) {
                self.keep_alive = false;
            } else if tokens().any(|t| t.eq_ignore_ascii_case(b"keep-alive")) {
                self.keep_alive = true;
            }
        }
        Ok(())
    }
}

fn memchr_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// What the router adds to every request for the worker (WSGI's
/// REMOTE_ADDR, url_scheme, SCRIPT_NAME, SERVER_NAME, SERVER_PORT).
pub struct Metadata<'a> {
    pub remote_addr: std::net::SocketAddr,
    pub scheme: &'a str,
    pub script_name: &'a str,
    pub server_name: &'a str,
    pub server_port: u16,
}

/// Encodes a request head for the worker: the client's method, path and
/// end-to-end headers (the router has removed hop-by-hop ones and every
/// client-sent `x-polyhost-*` header, `router::service::strip_reserved`:
/// only the router speaks for the client), the metadata, and the spooled
/// body's length.
pub fn encode_head(
    parts: &http::request::Parts,
    meta: &Metadata<'_>,
    content_length: u64,
) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let _ = write!(out, "{}: {}\r\n", reserved::REMOTE_ADDR, meta.remote_addr);
    let _ = write!(out, "{}: {}\r\n", reserved::SCHEME, meta.scheme);
    for (name, value) in [
        (reserved::SCRIPT_NAME, meta.script_name),
        (reserved::SERVER_NAME, meta.server_name),
    ] {
        // Both come from validated configuration and the Host header; a
        // value that could split the head is left out rather than sent.
        if HeaderValue::from_str(value).is_ok() {
            let _ = write!(out, "{name}: {value}\r\n");
        }
    }
    let _ = write!(
        out,
        "{}: {}\r\ncontent-length: {content_length}\r\n\r\n",
        reserved::SERVER_PORT,
        meta.server_port
    );
    out
}

#[cfg(test)]
mod tests;
