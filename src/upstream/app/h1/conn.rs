//! One connection to an app instance ([`Link`]): the socket, the bytes read
//! from it and not yet consumed, and the request head being sent. Whoever
//! holds the link drives it: the request's task while it sends and waits
//! for the head, the response body as the router polls it; an idle link is
//! driven by no one (the reactor notes a close, [`Link::idle_usable`] asks).

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::either::Either;

use super::response::{self, ResponseHead};
use super::{Failure, MAX_HEAD};

/// An instance's connection: its Unix socket, or a loopback port.
pub(super) type Stream = Either<UnixStream, TcpStream>;

/// Room made in the read buffer before a read.
const READ_ROOM: usize = 8 << 10;
/// A write buffer kept with an idle link at most this large (a request
/// with a body written inline grows it; a pool of such links would hold
/// them all).
const KEEP_WRITE: usize = 4 << 10;

pub(in crate::upstream::app) struct Link {
    io: Stream,
    /// Read from the app, not yet consumed.
    pub(super) read: BytesMut,
    /// The request head (and a small body) to send: what a retry sends again.
    pub(in crate::upstream::app) write: Vec<u8>,
    /// The app answered before it took the whole request: never reused.
    cut: bool,
}

impl Link {
    pub(in crate::upstream::app) fn new(io: Stream) -> Link {
        Link {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
            cut: false,
        }
    }

    /// Sends [`write`](Self::write) in one write (as far as the socket
    /// takes it); `true`: the app answered before it took all of it.
    pub(in crate::upstream::app) async fn send_head(&mut self) -> std::io::Result<bool> {
        let head = std::mem::take(&mut self.write);
        let sent = self.send(&head).await;
        self.write = head;
        sent
    }

    /// Sends body bytes after the head; `true`: the app answered before it
    /// took all of them (an early `413`, say, from an app that reads no
    /// further): the rest is not sent, the response is read, and the link
    /// is not kept.
    pub(in crate::upstream::app) async fn send(&mut self, bytes: &[u8]) -> std::io::Result<bool> {
        let mut written = 0;
        std::future::poll_fn(|cx| self.poll_send(cx, bytes, &mut written)).await
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        bytes: &[u8],
        written: &mut usize,
    ) -> Poll<std::io::Result<bool>> {
        while *written < bytes.len() {
            match Pin::new(&mut self.io).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // The app takes no more: it may have answered already.
                Poll::Pending => match self.poll_fill(cx) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into()))
                    }
                    Poll::Ready(Ok(_)) => {
                        self.cut = true;
                        return Poll::Ready(Ok(true));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
        Poll::Ready(Ok(false))
    }

    /// Reads up to the final response head (informational ones passed
    /// over), bodies' bytes that came with it left in the buffer.
    pub(in crate::upstream::app) async fn read_head(
        &mut self,
        head_request: bool,
    ) -> Result<ResponseHead, Failure> {
        let mut any = !self.read.is_empty();
        loop {
            if !self.read.is_empty() {
                match response::parse(&mut self.read, head_request) {
                    Ok(Some(head)) => return Ok(head),
                    Ok(None) if self.read.len() >= MAX_HEAD => {
                        return Err(Failure::new(
                            false,
                            format!("sent a response head over {MAX_HEAD} bytes"),
                        ))
                    }
                    Ok(None) => {}
                    Err(why) => return Err(Failure::new(false, why)),
                }
            }
            self.read.reserve(READ_ROOM);
            let n = self
                .io
                .read_buf(&mut self.read)
                .await
                .map_err(|e| Failure::new(!any, format!("broke the connection: {e}")))?;
            if n == 0 {
                let why = match any {
                    false => "closed the connection without an answer",
                    true => "closed the connection within its response head",
                };
                return Err(Failure::new(!any, why));
            }
            any = true;
        }
    }

    /// Reads more into the buffer: the count read, 0 at the end of the
    /// connection.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_ROOM / 2 {
            self.read.reserve(READ_ROOM);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }

    /// Whether an idle link may carry another request: nothing unread, and
    /// the app neither closed it nor sent anything unasked. The socket is
    /// asked only when the reactor saw it readable since the last read
    /// (tokio forgets readiness after a read that did not fill the buffer),
    /// so a live link costs no system call.
    pub(in crate::upstream::app) fn idle_usable(&self) -> bool {
        if self.cut || !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let ready = match &self.io {
            Either::Left(s) => s.poll_read_ready(&mut cx),
            Either::Right(s) => s.poll_read_ready(&mut cx),
        };
        match ready {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                let read = match &self.io {
                    Either::Left(s) => s.try_read(&mut probe),
                    Either::Right(s) => s.try_read(&mut probe),
                };
                matches!(read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }

    /// A body of `len` bytes, if all of it came with its head.
    pub(in crate::upstream::app) fn take_whole(&mut self, len: u64) -> Option<Bytes> {
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= self.read.len())?;
        Some(self.read.split_to(len).freeze())
    }

    /// Lets go of a write buffer grown past [`KEEP_WRITE`] (the link goes idle).
    pub(in crate::upstream::app) fn shrink(&mut self) {
        if self.write.capacity() > KEEP_WRITE {
            self.write = Vec::new();
        }
    }

    /// The socket and what was read past the last head: a tunnel's
    /// upstream side after a `101`.
    pub(in crate::upstream::app) fn into_tunnel(self) -> (Stream, Bytes) {
        (self.io, self.read.freeze())
    }
}
