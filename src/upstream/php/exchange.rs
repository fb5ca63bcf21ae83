//! One FastCGI request/response over one connection. It runs in the
//! request's task until the response head is in; a response that is complete
//! by then is handed out whole, anything longer goes on in a task of its own
//! so the body can stream to the client after `handle` returned.
//!
//! The exchange writes the request (params, then the body as STDIN records, as
//! it arrives from the client) while it reads php-fpm's records, so a script
//! that answers before it has read its input cannot deadlock us. It sends the
//! parsed CGI head over a oneshot, then body chunks over a bounded channel
//! (backpressure: a slow client slows the reads from php-fpm; memory stays at
//! a few records).
//!
//! Invariants:
//! - The connection goes back to the pool only when `FCGI_END_REQUEST` was
//!   read and the whole request had been written; on any other end (error,
//!   timeout, client gone, task aborted) it is dropped.
//! - A failure before the head is an [`UpstreamError`] (502/504/4xx); after
//!   it, an error in the body stream, so the client sees a truncated
//!   response, never a silently short "complete" one.
//! - A request is sent twice only when it is replayable (idempotent method,
//!   body held whole), it went out on a kept-alive connection, and that
//!   connection failed before php-fpm sent a single record: then the child
//!   had exited (pm.max_requests) and never saw it. The retry uses a fresh
//!   connection and happens at most once.
//! - The pool's place and the `RuntimeLease` are tied to the task's
//!   [`Finish`] guard, so they are released however the task ends; after a
//!   clean end the place goes back with the connection
//!   (`ConnPool::finish`, which may hand both to a queued request).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::WriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::cgi::{self, CgiHead};
use super::fcgi::{self, Decoder, Record};
use super::places::Place;
use super::pool::{Conn, ConnPool};
use super::ErrorSink;
use crate::supervisor::RuntimeLease;
use crate::upstream::{BoxError, RequestBody, UpstreamError};

/// Body chunks in flight between the exchange task and the client.
const CHANNEL_CHUNKS: usize = 4;
/// Read size from php-fpm: the first read of an exchange gets
/// `FIRST_READ` bytes of room (most answers fit: one small allocation), the
/// following ones double it up to `READ_CHUNK` while they fill it.
const FIRST_READ: usize = 16 * 1024;
const READ_CHUNK: usize = 64 * 1024;

/// Everything the task needs besides the connection.
pub struct Exchange {
    pub pool: Arc<ConnPool>,
    /// Requests the connection had served when taken from the pool.
    pub served: u64,
    /// The place and the runtime lease (whose socket and peer uid a retry
    /// connects to), released when the exchange ends.
    pub finish: Finish,
    /// How much of the request the pool already wrote onto the connection
    /// (a queued request handed a connection: `places`); a retry sends all.
    pub written: usize,
    pub errors: ErrorSink,
    /// Longest wait for one read from php-fpm.
    pub read_timeout: Duration,
    /// Limit the router put on the body (for the 413 message).
    pub body_limit: u64,
    /// HEAD: read the response to the end but forward no body.
    pub head_only: bool,
    /// Prefix of the stderr lines in the error log (the script's URL path).
    pub tag: String,
}

/// Releases the place and the runtime lease, however the request ends.
pub struct Finish {
    lease: RuntimeLease,
    /// `None` once handed to the pool with the connection.
    place: Option<Place>,
}

impl Finish {
    pub fn new(lease: RuntimeLease, place: Place) -> Self {
        Finish {
            lease,
            place: Some(place),
        }
    }
}

/// What the task hands back to `handle`.
pub type HeadResult = Result<CgiHead, UpstreamError>;

/// Why writing the request stopped.
enum WriteFail {
    /// The client's body failed (too large, client gone, malformed).
    Body(UpstreamError),
    /// php-fpm's side of the socket failed.
    Io(std::io::Error),
}

/// How one attempt on one connection ended.
enum Attempt {
    /// Response read to `FCGI_END_REQUEST`; `reusable` when the request
    /// was written whole too.
    Done {
        reusable: bool,
    },
    /// The connection failed before php-fpm sent a single record: on a
    /// kept-alive connection that is a child that exited (pm.max_requests)
    /// just as we reused it, and the request was not processed.
    Stale(UpstreamError),
    Failed(UpstreamError),
}

impl Exchange {
    /// Runs the exchange until the response head is in, in the calling
    /// task, and returns the head and the body. The exchange goes on in a
    /// task of its own only if the response is not complete by then (a large
    /// or slow response): a small one has been read whole, its connection is
    /// back in the pool and its place and lease are released, with no task
    /// spawned and no hand-off between threads.
    ///
    /// `request`: the records to send; the whole request when `body` is
    /// `None` (then it may be sent again, see [`Attempt::Stale`]), else
    /// BEGIN_REQUEST and PARAMS, with `body` to follow as STDIN. `reused`:
    /// `stream` came from the pool. After `head_timeout` without a head:
    /// [`UpstreamError::Timeout`], and the connection is closed.
    pub async fn start(
        self,
        stream: UnixStream,
        reused: bool,
        request: BytesMut,
        body: Option<RequestBody>,
        head_timeout: Duration,
    ) -> Result<(CgiHead, ExchangeBody), UpstreamError> {
        let (head_tx, mut head_rx) = oneshot::channel();
        let (chunk_tx, chunk_rx) = mpsc::channel(CHANNEL_CHUNKS);
        let mut exchange = Box::pin(self.run(stream, reused, request, body, head_tx, chunk_tx));
        let mut finished = false;
        let head = tokio::time::timeout(
            head_timeout,
            std::future::poll_fn(|cx| {
                // The exchange first: it sends the head, then goes on with
                // whatever php-fpm has already sent (often the whole answer).
                if !finished && exchange.as_mut().poll(cx).is_ready() {
                    finished = true;
                }
                Pin::new(&mut head_rx).poll(cx)
            }),
        )
        .await;
        let head = match head {
            // Dropping the exchange closes its connection and frees the place.
            Err(_) => return Err(UpstreamError::Timeout(head_timeout)),
            Ok(Err(_)) => {
                return Err(UpstreamError::Internal(
                    "the FastCGI exchange ended without an answer".into(),
                ))
            }
            Ok(Ok(head)) => head?,
        };
        let body = if finished {
            ExchangeBody::whole(chunk_rx)
        } else {
            // The rest streams from a task, so the response can go to the
            // client while php-fpm still writes (backpressure: the channel).
            tokio::spawn(exchange);
            ExchangeBody::Channel {
                queued: VecDeque::new(),
                rx: chunk_rx,
            }
        };
        Ok((head, body))
    }

    async fn run(
        mut self,
        mut stream: UnixStream,
        mut reused: bool,
        request: BytesMut,
        body: Option<RequestBody>,
        head_tx: oneshot::Sender<HeadResult>,
        chunk_tx: mpsc::Sender<Result<Bytes, BoxError>>,
    ) {
        let mut out = Output {
            head_tx: Some(head_tx),
            chunk_tx,
            header_buf: BytesMut::new(),
            head_only: self.head_only,
        };
        let replayable = body.is_none();
        let mut streamed = body;
        let mut fresh_again = false;
        let mut skip = self.written.min(request.len());
        loop {
            let body = streamed.take();
            let watch = std::mem::take(&mut fresh_again);
            let unsent = &request[std::mem::take(&mut skip)..];
            match self
                .attempt(&mut stream, unsent, body, watch, &mut out)
                .await
            {
                Attempt::Done { reusable } => {
                    if let (true, Some(place)) = (reusable, self.finish.place.take()) {
                        let socket = self.finish.lease.socket().to_owned();
                        let served = if reused { self.served } else { 0 };
                        self.pool.finish(socket, Conn { stream, served }, place);
                    }
                    return; // dropping `chunk_tx` ends the body
                }
                Attempt::Stale(e) if reused && replayable => {
                    self.pool.count_resent();
                    // Boxed: rare, and inline it would size every
                    // request's exchange for it.
                    match Box::pin(tokio::time::timeout(
                        self.read_timeout,
                        crate::upstream::connect_runtime(
                            self.finish.lease.socket(),
                            self.finish.lease.peer_uid(),
                        ),
                    ))
                    .await
                    {
                        Ok(Ok(fresh)) => {
                            // Watched once the request is written (`attempt`).
                            stream = fresh;
                            fresh_again = true;
                            reused = false;
                        }
                        _ => return out.fail(e).await,
                    }
                }
                Attempt::Stale(e) | Attempt::Failed(e) => return out.fail(e).await,
            }
        }
    }

    /// One try on `stream`: `request` is the whole request, or only its
    /// head when `body` streams after it. `watch`: a fresh connection, to
    /// be watched once the request is written (`ConnPool::watch_fresh`).
    async fn attempt(
        &self,
        stream: &mut UnixStream,
        request: &[u8],
        body: Option<RequestBody>,
        watch: bool,
        out: &mut Output,
    ) -> Attempt {
        let mut watched = watch
            .then(|| std::os::fd::AsFd::as_fd(&*stream).try_clone_to_owned().ok())
            .flatten();
        let (mut rd, mut wr) = stream.split();
        let mut dec = Decoder::default();
        let mut written: Option<Result<(), WriteFail>> = None;
        let mut records = 0usize;
        let mut read_size = FIRST_READ;
        let outcome: Result<(), UpstreamError> = async {
            let writer = write_request(&mut wr, request, body, self.body_limit);
            tokio::pin!(writer);
            loop {
                while let Some(rec) = dec.next().map_err(|e| UpstreamError::BadGateway(format!("php-fpm: {e}")))? {
                    records += 1;
                    match rec {
                        Record::Stdout(data) => out.stdout(data).await?,
                        Record::Stderr(data) => log_stderr(&self.errors, &self.tag, &data),
                        Record::End(_) => {}
                    }
                }
                if dec.is_done() {
                    return Ok(());
                }
                dec.buffer().reserve(read_size);
                tokio::select! {
                    w = &mut writer, if written.is_none() => {
                        if let Err(WriteFail::Body(e)) = w {
                            return Err(e);
                        }
                        // An I/O error writing means php-fpm stopped reading:
                        // its answer (or the end of file) tells the rest.
                        written = Some(w);
                        if let Some(fd) = watched.take() {
                            self.pool.watch_fresh(&fd, self.finish.lease.socket());
                        }
                    }
                    r = tokio::time::timeout(self.read_timeout, rd.read_buf(dec.buffer())) => match r {
                        Err(_) => return Err(UpstreamError::Timeout(self.read_timeout)),
                        Ok(Err(e)) => return Err(UpstreamError::BadGateway(format!("reading from php-fpm: {e}"))),
                        Ok(Ok(0)) => {
                            let write = match &written {
                                Some(Err(WriteFail::Io(e))) => format!(" (writing the request: {e})"),
                                _ => String::new(),
                            };
                            return Err(UpstreamError::BadGateway(format!(
                                "php-fpm closed the connection before the end of the response (worker crashed or killed?){write}"
                            )));
                        }
                        Ok(Ok(n)) => {
                            if n >= read_size {
                                read_size = (read_size * 2).min(READ_CHUNK);
                            }
                        }
                    },
                }
            }
        }
        .await;
        match outcome {
            Ok(()) if out.head_tx.is_some() => Attempt::Failed(UpstreamError::BadGateway(
                "php-fpm ended the response before its headers were complete".into(),
            )),
            Ok(()) => Attempt::Done {
                reusable: matches!(written, Some(Ok(()))),
            },
            Err(e @ UpstreamError::BadGateway(_)) if records == 0 && dec.is_empty() => {
                Attempt::Stale(e)
            }
            Err(e) => Attempt::Failed(e),
        }
    }
}

/// The response side of the exchange.
struct Output {
    head_tx: Option<oneshot::Sender<HeadResult>>,
    chunk_tx: mpsc::Sender<Result<Bytes, BoxError>>,
    header_buf: BytesMut,
    head_only: bool,
}

impl Output {
    async fn stdout(&mut self, data: Bytes) -> Result<(), UpstreamError> {
        if self.head_tx.is_none() {
            return self.forward(data).await;
        }
        // The head usually comes whole in the first record: then it is
        // parsed where it is (header values share the record's bytes).
        let split = if self.header_buf.is_empty() {
            cgi::split_head(&data).map(|at| (None, at))
        } else {
            self.header_buf.extend_from_slice(&data);
            cgi::split_head(&self.header_buf)
                .map(|at| (Some(std::mem::take(&mut self.header_buf).freeze()), at))
        };
        let Some((joined, (end, body_at))) = split else {
            if self.header_buf.is_empty() {
                self.header_buf.extend_from_slice(&data);
            }
            if self.header_buf.len() > cgi::MAX_HEADER_BYTES {
                return Err(UpstreamError::BadGateway(
                    "php-fpm sent more than 128 KiB of headers".into(),
                ));
            }
            return Ok(());
        };
        let whole = joined.unwrap_or(data);
        let head = cgi::parse_head(&whole.slice(..end))
            .map_err(|e| UpstreamError::BadGateway(format!("bad CGI headers from PHP: {e}")))?;
        let rest = whole.slice(body_at..);
        if let Some(tx) = self.head_tx.take() {
            if tx.send(Ok(head)).is_err() {
                return Err(UpstreamError::ClientGone); // the request was abandoned
            }
        }
        self.forward(rest).await
    }

    async fn forward(&mut self, data: Bytes) -> Result<(), UpstreamError> {
        if self.head_only || data.is_empty() {
            return Ok(());
        }
        self.chunk_tx
            .send(Ok(data))
            .await
            .map_err(|_| UpstreamError::ClientGone)
    }

    /// Reports `e` to whoever waits: the head receiver or the body.
    async fn fail(mut self, e: UpstreamError) {
        match self.head_tx.take() {
            Some(tx) => {
                let _ = tx.send(Err(e));
            }
            None => {
                let _ = self.chunk_tx.send(Err(Box::new(e))).await;
            }
        }
    }
}

async fn write_request(
    wr: &mut WriteHalf<'_>,
    request: &[u8],
    body: Option<RequestBody>,
    limit: u64,
) -> Result<(), WriteFail> {
    wr.write_all(request).await.map_err(WriteFail::Io)?;
    match body {
        None => wr.flush().await.map_err(WriteFail::Io),
        // Boxed: most requests have no body to stream (see `Exchange::run`).
        Some(body) => Box::pin(write_body(wr, body, limit)).await,
    }
}

/// A streamed request body as STDIN records, then the stream's end.
async fn write_body(
    wr: &mut WriteHalf<'_>,
    mut body: RequestBody,
    limit: u64,
) -> Result<(), WriteFail> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| WriteFail::Body(UpstreamError::from_body(e, limit)))?;
        if let Ok(data) = frame.into_data() {
            buf.clear();
            fcgi::stream_records(&mut buf, fcgi::STDIN, &data);
            wr.write_all(&buf).await.map_err(WriteFail::Io)?;
        }
    }
    buf.clear();
    fcgi::end_stream(&mut buf, fcgi::STDIN);
    wr.write_all(&buf).await.map_err(WriteFail::Io)?;
    wr.flush().await.map_err(WriteFail::Io)
}

fn log_stderr(sink: &ErrorSink, tag: &str, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        sink(&format!("php {tag}: {line}"));
    }
}

/// A response body: whole when the exchange ended before the head was
/// handed out, else fed by the exchange task.
pub enum ExchangeBody {
    /// The complete body (its length is known: `Content-Length`), in the
    /// records' own buffers as they were read: a long page goes out as
    /// several buffers in one vectored write, never copied into one
    /// (`phpinfo()`'s 70 KiB comes as two or three records of up to 64 KiB;
    /// the copy cost the router a sixth of its CPU for it).
    Whole {
        /// The first chunk, apart: most answers are one, and then the
        /// body allocates nothing.
        first: Option<Bytes>,
        rest: VecDeque<Bytes>,
        /// Bytes in `first` and `rest`.
        len: u64,
    },
    /// Chunks still to come; `queued` first (taken out of a finished
    /// exchange whose body ends in an error).
    Channel {
        queued: VecDeque<Result<Bytes, BoxError>>,
        rx: mpsc::Receiver<Result<Bytes, BoxError>>,
    },
}

impl ExchangeBody {
    /// Takes what a finished exchange left in its channel.
    fn whole(mut rx: mpsc::Receiver<Result<Bytes, BoxError>>) -> Self {
        let mut first: Option<Bytes> = None;
        let mut rest = VecDeque::new();
        let mut len = 0u64;
        let mut queued = VecDeque::new();
        while let Ok(chunk) = rx.try_recv() {
            match chunk {
                Ok(data) if queued.is_empty() => {
                    len += data.len() as u64;
                    match first {
                        None => first = Some(data),
                        Some(_) => rest.push_back(data),
                    }
                }
                other => queued.push_back(other),
            }
        }
        if queued.is_empty() {
            return ExchangeBody::Whole { first, rest, len };
        }
        let data = first.into_iter().chain(rest).map(Ok);
        let queued = data.chain(queued).collect();
        ExchangeBody::Channel { queued, rx }
    }
}

impl Body for ExchangeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ExchangeBody::Whole { first, rest, len } => {
                let next = first.take().or_else(|| rest.pop_front());
                if let Some(data) = &next {
                    *len -= data.len() as u64;
                }
                Poll::Ready(next.map(|d| Ok(Frame::data(d))))
            }
            ExchangeBody::Channel { queued, rx } => match queued.pop_front() {
                Some(item) => Poll::Ready(Some(item.map(Frame::data))),
                None => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ExchangeBody::Whole { len: 0, .. })
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ExchangeBody::Whole { len, .. } => http_body::SizeHint::with_exact(*len),
            ExchangeBody::Channel { .. } => http_body::SizeHint::default(),
        }
    }
}
