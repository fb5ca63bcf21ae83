//! The request body on the wire: Content-Length or chunked framing, decoded
//! in place in the connection's read buffer, read from the socket only when
//! the buffer holds no more of it. No Python here: `input` wraps it.
//!
//! Invariants: decoded bytes are never taken past the body's end, so what
//! follows the body in the buffer is the next request's; a body that is
//! malformed or cut short leaves the reader `Broken`, and a connection
//! whose body is not `Done` is never reused.

use std::io::{self, IoSlice};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::conn::{ReadBuf, Stream, BODY_BUF};
use crate::head::BodyLength;
use crate::wire;

/// The longest chunk-size line or trailer line accepted.
const MAX_LINE: usize = 8 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Bytes left of a Content-Length body.
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Bytes left of the current chunk.
    ChunkData(u64),
    /// Expecting the CRLF after a chunk's data.
    ChunkEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    Done,
    Broken,
}

/// The body of the request being served, with the connection's buffer.
pub struct Body {
    stream: Arc<Stream>,
    buf: ReadBuf,
    state: State,
    /// Send `100 Continue` before the first read from the socket.
    expect_continue: bool,
}

impl Body {
    /// `buf` starts right after the request head.
    pub fn new(
        stream: Arc<Stream>,
        buf: ReadBuf,
        length: BodyLength,
        expect_continue: bool,
    ) -> Self {
        let state = match length {
            BodyLength::Length(0) => State::Done,
            BodyLength::Length(n) => State::Length(n),
            BodyLength::Chunked => State::ChunkSize,
        };
        Self {
            stream,
            buf,
            state,
            expect_continue: expect_continue && state != State::Done,
        }
    }

    /// The body was read to its end (the connection may carry another request).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decoded body bytes available now, without reading the socket.
    pub fn available(&self) -> &[u8] {
        let filled = self.buf.filled();
        match self.state {
            State::Length(n) | State::ChunkData(n) => {
                &filled[..usize::try_from(n).unwrap_or(usize::MAX).min(filled.len())]
            }
            _ => &[],
        }
    }

    /// Marks `n` bytes of [`Self::available`] as read.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.available().len());
        self.buf.consume(n);
        match &mut self.state {
            State::Length(left) => {
                *left -= n as u64;
                if *left == 0 {
                    self.state = State::Done;
                }
            }
            State::ChunkData(left) => {
                *left -= n as u64;
                if *left == 0 {
                    self.state = State::ChunkEnd;
                }
            }
            _ => {}
        }
    }

    /// Decodes framing from the buffer: `Some(true)` if body bytes are
    /// available, `Some(false)` at the end, `None` if the socket must be read.
    pub fn poll_buffered(&mut self) -> io::Result<Option<bool>> {
        loop {
            let filled = self.buf.filled();
            match self.state {
                State::Done => return Ok(Some(false)),
                State::Broken => return Err(broken("the request body was cut short")),
                State::Length(_) | State::ChunkData(_) => {
                    return Ok((!filled.is_empty()).then_some(true));
                }
                State::ChunkEnd => {
                    if filled.len() < 2 {
                        return Ok(None);
                    }
                    if &filled[..2] != b"\r\n" {
                        return Err(self.fail("a chunk does not end with CRLF"));
                    }
                    self.buf.consume(2);
                    self.state = State::ChunkSize;
                }
                State::ChunkSize => match httparse::parse_chunk_size(filled) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.buf.consume(used);
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if filled.len() < MAX_LINE => return Ok(None),
                    _ => return Err(self.fail("invalid chunk size line")),
                },
                State::Trailers => match filled.windows(2).position(|w| w == b"\r\n") {
                    Some(0) => {
                        self.buf.consume(2);
                        self.state = State::Done;
                    }
                    Some(i) => self.buf.consume(i + 2),
                    None if filled.len() < MAX_LINE => return Ok(None),
                    None => return Err(self.fail("trailer line too long")),
                },
            }
        }
    }

    /// Makes body bytes available, reading the socket (blocking) as needed:
    /// `Ok(false)` at the end of the body. Call without the GIL.
    pub fn fill(&mut self) -> io::Result<bool> {
        loop {
            if let Some(more) = self.poll_buffered()? {
                return Ok(more);
            }
            if std::mem::take(&mut self.expect_continue)
                && !self.stream.responded.load(Ordering::Acquire)
            {
                self.stream.write_all(&mut [IoSlice::new(wire::CONTINUE)])?;
            }
            match self.stream.read_into(&mut self.buf, BODY_BUF) {
                Ok(0) => return Err(self.fail("the request body was cut short")),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.state = State::Broken;
                    return Err(e);
                }
            }
        }
    }

    /// Reads and discards the rest of the body, up to `limit` bytes; true if
    /// the body ended (the connection can be reused). Call without the GIL.
    pub fn drain(&mut self, limit: u64) -> bool {
        let mut drained = 0u64;
        loop {
            let more = match self.poll_buffered() {
                Ok(Some(more)) => Ok(more),
                // The client waits for a `100 Continue` that will not come
                // now: closing is quicker than waiting for a body it may
                // never send.
                Ok(None) if self.expect_continue => return false,
                Ok(None) => self.fill(),
                Err(e) => Err(e),
            };
            match more {
                Ok(true) => {
                    let n = self.available().len();
                    drained += n as u64;
                    if drained > limit {
                        return false;
                    }
                    self.consume(n);
                }
                Ok(false) => return true,
                Err(_) => return false,
            }
        }
    }

    /// The connection's buffer, positioned after the body.
    pub fn into_buf(self) -> ReadBuf {
        self.buf
    }

    fn fail(&mut self, why: &str) -> io::Error {
        self.state = State::Broken;
        broken(why)
    }
}

fn broken(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use super::*;

    fn body(length: BodyLength, buffered: &[u8]) -> (UnixStream, Body) {
        let (a, b) = UnixStream::pair().unwrap();
        let stream = Stream::new(b).unwrap();
        let mut buf = ReadBuf::default();
        let spare = buf.spare(buffered.len());
        spare[..buffered.len()].copy_from_slice(buffered);
        buf.commit(buffered.len());
        (a, Body::new(stream, buf, length, false))
    }

    fn read_all(b: &mut Body) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while b.fill()? {
            let n = b.available().len();
            out.extend_from_slice(b.available());
            b.consume(n);
        }
        Ok(out)
    }

    #[test]
    fn length_body_stops_at_its_end() {
        let (peer, mut b) = body(BodyLength::Length(10), b"hello");
        (&peer).write_all(b"world\r\nGET /next").unwrap();
        assert_eq!(read_all(&mut b).unwrap(), b"helloworld");
        assert!(b.is_done());
        let rest = b.into_buf();
        // Whatever was read beyond the body stays for the next request.
        assert!(b"\r\nGET /next".starts_with(rest.filled()));
    }

    #[test]
    fn chunked_body_across_reads_with_extensions_and_trailers() {
        let (peer, mut b) = body(BodyLength::Chunked, b"5;ext=1\r\nhel");
        let writer = std::thread::spawn(move || {
            for piece in [
                &b"lo\r\n"[..],
                b"6\r\n wor",
                b"ld\r\n0\r\n",
                b"X-T: 1\r\n\r\nNEXT",
            ] {
                (&peer).write_all(piece).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            peer
        });
        assert_eq!(read_all(&mut b).unwrap(), b"hello world");
        assert!(b.is_done());
        let _peer = writer.join().unwrap();
        assert_eq!(b.into_buf().filled(), b"NEXT");
    }

    #[test]
    fn broken_bodies() {
        let (_peer, mut b) = body(BodyLength::Chunked, b"zz\r\n");
        assert!(read_all(&mut b).is_err());
        assert!(!b.is_done());
        let (_peer, mut b) = body(BodyLength::Chunked, b"2\r\nabXY");
        assert!(read_all(&mut b).is_err());
        let (peer, mut b) = body(BodyLength::Length(10), b"short");
        drop(peer);
        assert!(read_all(&mut b).is_err());
        assert!(!b.drain(1 << 20));
    }

    #[test]
    fn an_unsent_body_awaiting_100_continue_is_not_waited_for() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut body = Body::new(
            Stream::new(b).unwrap(),
            ReadBuf::default(),
            BodyLength::Length(5),
            true,
        );
        // Would block for the receive timeout if it waited.
        assert!(!body.drain(1 << 20));
        drop(a);
    }

    #[test]
    fn drain_respects_the_limit() {
        let (peer, mut b) = body(BodyLength::Length(100), &[b'x'; 100]);
        drop(peer);
        assert!(!b.drain(50));
        let (_peer, mut b) = body(BodyLength::Length(100), &[b'x'; 100]);
        assert!(b.drain(100));
        assert!(b.is_done());
    }
}
