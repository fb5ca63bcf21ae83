//! One router connection: its socket, its read buffer (which persists across
//! keep-alive requests), reading a request head without blocking, and the
//! blocking writes of responses.
//!
//! Invariants: the socket is in blocking mode with a receive timeout, so
//! body reads may block (the GIL released) but never forever; head reads use
//! `MSG_DONTWAIT`, so a thread woken for a connection never waits on a client
//! that has sent only part of a head. Bytes read past a request's end stay in
//! the buffer for the next request.

use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, MsgFlags};
use nix::sys::time::TimeVal;

use crate::head::{self, Parsed, Reject, RequestHead, MAX_HEAD};

/// Allocated when a connection first reads.
const INITIAL_BUF: usize = 8 << 10;
/// Body reads use at least this much buffer.
pub const BODY_BUF: usize = 64 << 10;
/// A safety net: the router sends a whole request at once, so a body that
/// stalls this long means the router is gone or stuck.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection's socket, shared by the request's `wsgi.input` and `start_response`.
pub struct Stream {
    pub sock: UnixStream,
    /// Response bytes of the current request went out (so `100 Continue` may not).
    pub responded: AtomicBool,
}

impl Stream {
    pub fn new(sock: UnixStream) -> io::Result<Arc<Self>> {
        let timeout = TimeVal::new(RECEIVE_TIMEOUT.as_secs() as _, 0);
        socket::setsockopt(&sock, sockopt::ReceiveTimeout, &timeout)?;
        Ok(Arc::new(Self {
            sock,
            responded: AtomicBool::new(false),
        }))
    }

    /// Writes all of `bufs` (retrying short writes and EINTR).
    pub fn write_all(&self, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
        IoSlice::advance_slices(&mut bufs, 0);
        while !bufs.is_empty() {
            match (&self.sock).write_vectored(bufs) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut bufs, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One blocking read into `buf`'s free space; `Ok(0)` at end of stream.
    pub fn read_into(&self, buf: &mut ReadBuf, min_capacity: usize) -> io::Result<usize> {
        let n = loop {
            match socket::recv(
                self.sock.as_raw_fd(),
                buf.spare(min_capacity),
                MsgFlags::empty(),
            ) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
                Ok(n) => break n,
            }
        };
        buf.commit(n);
        Ok(n)
    }
}

/// A byte buffer with a consumed front: `data[start..end]` is unread.
/// Storage is initialised once, so reads need no zeroing.
#[derive(Default)]
pub struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    /// The unread bytes.
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n.min(self.len());
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Free space after the unread bytes, at least one byte, compacting or
    /// growing so that the whole buffer holds at least `min_capacity`.
    pub fn spare(&mut self, min_capacity: usize) -> &mut [u8] {
        let want = min_capacity.max(INITIAL_BUF);
        if self.data.len() < want {
            self.compact();
            let grown = want.max(self.data.len() * 2);
            self.data.resize(grown, 0);
        } else if self.end == self.data.len() {
            if self.start > 0 {
                self.compact();
            } else {
                let double = self.data.len() * 2;
                self.data.resize(double, 0);
            }
        }
        &mut self.data[self.end..]
    }

    pub fn commit(&mut self, n: usize) {
        self.end += n;
    }

    fn compact(&mut self) {
        self.data.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }

    /// Frees a buffer that grew for an unusual request, once it is empty.
    pub fn shrink_if_idle(&mut self) {
        if self.is_empty() && self.data.len() > BODY_BUF {
            self.data = Vec::new();
        }
    }
}

/// What reading a head gave.
pub enum HeadRead {
    Ready(RequestHead),
    /// Nothing (more) to read now: wait for the socket again.
    Again,
    /// The router closed the connection, or it failed.
    Closed,
    Reject(Reject),
}

/// A router connection between requests, or the one a thread is serving.
pub struct Conn {
    pub token: u64,
    pub stream: Arc<Stream>,
    pub buf: ReadBuf,
    /// Registered for no events while its request body arrives.
    pub quiet: bool,
}

impl Conn {
    /// Reads without blocking until a whole head is buffered.
    pub fn read_head(&mut self) -> HeadRead {
        let mut fresh = false;
        loop {
            if !self.buf.is_empty() || fresh {
                match head::parse(self.buf.filled()) {
                    Parsed::Complete(h) => return HeadRead::Ready(h),
                    Parsed::Invalid(r) => return HeadRead::Reject(r),
                    Parsed::Partial => {}
                }
            }
            let fd = self.stream.sock.as_raw_fd();
            // Room for the head to grow (the buffer doubles), up to the limit.
            let want = (self.buf.len() + INITIAL_BUF).min(MAX_HEAD);
            match socket::recv(fd, self.buf.spare(want), MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return HeadRead::Closed,
                Ok(n) => {
                    self.buf.commit(n);
                    fresh = true;
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return HeadRead::Again,
                Err(_) => return HeadRead::Closed,
            }
        }
    }

    /// Answers a request that is refused before the app sees it; the
    /// connection is closed afterwards.
    pub fn reject(&self, reject: Reject) {
        let page = crate::wire::simple_response(reject.status(), reject.reason(), true);
        let _ = self.stream.write_all(&mut [IoSlice::new(&page)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buf_compacts_and_grows() {
        let mut b = ReadBuf::default();
        let s = b.spare(1);
        assert_eq!(s.len(), INITIAL_BUF);
        s[..3].copy_from_slice(b"abc");
        b.commit(3);
        b.consume(1);
        assert_eq!(b.filled(), b"bc");
        // Fill to the end: the next spare() compacts rather than grows.
        let n = b.spare(1).len();
        b.commit(n);
        assert_eq!(b.len(), INITIAL_BUF - 1);
        assert_eq!(b.spare(1).len(), 1);
        assert_eq!(&b.filled()[..2], b"bc");
        b.commit(1);
        // Full from the start: grows.
        assert_eq!(b.spare(1).len(), INITIAL_BUF);
        b.consume(usize::MAX);
        assert!(b.is_empty());
        assert!(b.spare(3 * INITIAL_BUF).len() >= 3 * INITIAL_BUF);
        // A full buffer asked for one more byte grows by at least double.
        let n = b.spare(1).len();
        b.commit(n);
        assert!(b.spare(b.len() + 1).len() >= b.len());
    }

    #[test]
    fn heads_across_reads_and_pipelined_requests() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut conn = Conn {
            token: 1,
            stream: Stream::new(b).unwrap(),
            buf: ReadBuf::default(),
            quiet: false,
        };
        assert!(matches!(conn.read_head(), HeadRead::Again));
        (&a).write_all(b"GET /one HTTP/1.1\r\nHo").unwrap();
        assert!(matches!(conn.read_head(), HeadRead::Again));
        (&a).write_all(b"st: x\r\n\r\nGET /two HTTP/1.1\r\n\r\n")
            .unwrap();
        let HeadRead::Ready(h) = conn.read_head() else {
            panic!("first head")
        };
        assert_eq!(&conn.buf.filled()[h.target.clone()], b"/one");
        conn.buf.consume(h.len);
        let HeadRead::Ready(h) = conn.read_head() else {
            panic!("second head")
        };
        assert_eq!(&conn.buf.filled()[h.target.clone()], b"/two");
        conn.buf.consume(h.len);
        (&a).write_all(b"BAD\r\n\r\n").unwrap();
        assert!(matches!(conn.read_head(), HeadRead::Reject(_)));
        drop(a);
        conn.buf.consume(usize::MAX);
        assert!(matches!(conn.read_head(), HeadRead::Closed));
    }
}
