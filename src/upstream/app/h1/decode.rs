//! A response body off a [`Link`], frame by frame as it is polled: bytes
//! already read are handed out first, the socket is read only when they
//! are gone (backpressure through the sockets: a slow stream is never
//! buffered whole). Chunked bodies are decoded (`httparse::parse_chunk_size`),
//! their trailers passed on as a trailers frame.

use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use super::conn::Link;
use super::MAX_HEAD;

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::upstream::app) enum Framing {
    /// No body (a `HEAD`, 204, 304, 101, or `Content-Length: 0`).
    Empty,
    Length(u64),
    Chunked,
    /// To the end of the connection (never kept after it).
    Eof,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Eof,
    Done,
}

/// Where a body is in its framing.
pub(in crate::upstream::app) struct Decoder {
    state: State,
}

/// A chunk-size line longer than this is not one.
const MAX_CHUNK_LINE: usize = 4 << 10;

impl Decoder {
    pub(in crate::upstream::app) fn new(framing: Framing) -> Decoder {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Eof => State::Eof,
        };
        Decoder { state }
    }

    /// The body was read to its end.
    pub(in crate::upstream::app) fn is_done(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    pub(in crate::upstream::app) fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    /// The next frame; `None` at the end of the body; an error says why the
    /// body cannot be read on (the connection is then not reusable).
    pub(in crate::upstream::app) fn poll_frame(
        &mut self,
        link: &mut Link,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Frame<Bytes>>, String>> {
        loop {
            if let Some(frame) = self.step(link)? {
                return Poll::Ready(Ok(frame));
            }
            let before = link.read.len();
            let n = ready!(link.poll_fill(cx)).map_err(|e| format!("broke the connection: {e}"))?;
            if n == 0 {
                if self.state == State::Eof {
                    self.state = State::Done;
                    return Poll::Ready(Ok(None));
                }
                return Poll::Ready(Err(format!(
                    "closed the connection before the end of its body ({before} bytes unread)"
                )));
            }
        }
    }

    /// Decodes what the buffer holds: `Some(frame or end)`, or `None` when
    /// more bytes must be read first.
    fn step(&mut self, link: &mut Link) -> Result<Option<Option<Frame<Bytes>>>, String> {
        let buf = &mut link.read;
        loop {
            match self.state {
                State::Done | State::Length(0) => {
                    self.state = State::Done;
                    return Ok(Some(None));
                }
                State::Length(_) | State::ChunkData(_) | State::Eof if buf.is_empty() => {
                    return Ok(None)
                }
                State::Eof => return Ok(Some(Some(Frame::data(buf.split().freeze())))),
                State::Length(n) => {
                    let take = n.min(buf.len() as u64);
                    self.state = State::Length(n - take);
                    return Ok(Some(Some(Frame::data(
                        buf.split_to(take as usize).freeze(),
                    ))));
                }
                State::ChunkData(n) => {
                    let take = n.min(buf.len() as u64);
                    self.state = match n - take {
                        0 => State::ChunkEnd,
                        left => State::ChunkData(left),
                    };
                    return Ok(Some(Some(Frame::data(
                        buf.split_to(take as usize).freeze(),
                    ))));
                }
                State::ChunkSize => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.state = match size {
                            0 => State::Trailers,
                            n => State::ChunkData(n),
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return Err("sent a chunk-size line too long".into())
                    }
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(_) => return Err("sent a malformed chunk size".into()),
                },
                State::ChunkEnd if buf.len() < 2 => return Ok(None),
                State::ChunkEnd if buf.starts_with(b"\r\n") => {
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::ChunkEnd => return Err("sent a chunk not ended by CRLF".into()),
                State::Trailers => {
                    let Some(trailers) = trailers(buf)? else {
                        return Ok(None);
                    };
                    self.state = State::Done;
                    return Ok(Some(trailers.map(Frame::trailers)));
                }
            }
        }
    }
}

/// The trailer section after the last chunk, taken out of `buf`: `None`
/// when not all here yet, `Some(None)` when it is empty.
fn trailers(buf: &mut bytes::BytesMut) -> Result<Option<Option<HeaderMap>>, String> {
    if buf.starts_with(b"\r\n") {
        buf.advance(2);
        return Ok(Some(None));
    }
    let mut raw = [httparse::EMPTY_HEADER; 32];
    match httparse::parse_headers(buf, &mut raw) {
        Ok(httparse::Status::Complete((used, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields {
                let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(f.name.as_bytes()),
                    HeaderValue::from_bytes(f.value),
                ) else {
                    return Err("sent a malformed trailer".into());
                };
                map.append(name, value);
            }
            buf.advance(used);
            Ok(Some(Some(map)))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            Err("sent trailers over the head limit".into())
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(format!("sent malformed trailers ({e})")),
    }
}
