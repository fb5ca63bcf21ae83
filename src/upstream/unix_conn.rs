//! A Unix stream socket to a site process, watched by the lane's event loop
//! for readability only.
//!
//! Why not `tokio::net::UnixStream`: tokio registers every socket for
//! reading *and* writing (edge-triggered). On a Unix socket the kernel
//! signals "writable" each time the peer consumes a message we sent
//! (`unix_write_space`), so every request the worker read woke the router
//! lane once for nothing, on top of the wake-up for the answer. A profile of
//! the WSGI hello benchmark put 11 % of the worker's time in that wake-up
//! (`recv` → `sock_wfree` → `unix_write_space` → `ep_poll_callback`) and a
//! matching share of the lane's in being woken. tokio offers no way to
//! choose a socket's interest except [`AsyncFd`], so this type is built on
//! it: registered for readability; a write that finds the socket full
//! registers a duplicate of the descriptor for writability, only until the
//! write goes through (large request bodies).
//!
//! Reads go into the spare capacity of a `Vec` (rustix's `spare_capacity`):
//! no zeroing of the buffer and no `unsafe` here.
//!
//! Invariants: the socket is non-blocking; it is registered with the event
//! loop of the runtime that created or [`rehome`](UnixConn::rehome)d it;
//! writes never raise SIGPIPE (`MSG_NOSIGNAL`); a closed peer reads as 0
//! (end of stream) or fails a write with `EPIPE`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use rustix::buffer::spare_capacity;
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWrite, Interest};

/// See the module documentation.
pub struct UnixConn {
    read: AsyncFd<UnixStream>,
    /// Registered only while a write waits for room in the socket.
    write_wait: Option<AsyncFd<OwnedFd>>,
    /// The router lane whose event loop `read` is registered with.
    lane: usize,
}

impl UnixConn {
    /// Registers a connected socket with the calling lane's event loop.
    pub fn register(stream: UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(UnixConn {
            read: watch(stream, Interest::READABLE)?,
            write_wait: None,
            lane: crate::lanes::current(),
        })
    }

    /// Takes over a socket connected with tokio (re-registered for reading only).
    pub fn from_tokio(stream: tokio::net::UnixStream) -> io::Result<Self> {
        Self::register(stream.into_std()?)
    }

    /// The router lane whose event loop the socket is registered with.
    pub fn lane(&self) -> usize {
        self.lane
    }

    /// Moves the socket to the calling lane's event loop (see `lanes`), so
    /// that its wake-ups happen there.
    pub fn rehome(self) -> io::Result<Self> {
        if self.lane == crate::lanes::current() {
            return Ok(self);
        }
        Self::register(self.read.into_inner())
    }

    /// Waits until the socket is readable, then reads what it holds into
    /// the spare capacity of `buf` (which must have some); `Ok(0)` at the
    /// end of the stream.
    pub async fn recv_into(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        debug_assert!(buf.capacity() > buf.len(), "recv_into needs spare capacity");
        loop {
            let mut guard = self.read.readable().await?;
            let read = guard.try_io(|sock| {
                rustix::net::recv(sock.get_ref(), spare_capacity(buf), RecvFlags::empty())
                    .map(|(n, _)| n)
                    .map_err(io::Error::from)
            });
            match read {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(result) => return result,
                Err(_would_block) => {}
            }
        }
    }
}

/// Registers `fd` with the calling runtime's event loop for `interest`.
///
/// tokio 1.54 deprecated the safe `AsyncFd::with_interest` because an
/// arbitrary `AsRawFd` type may close or swap its descriptor while
/// registered; `UnixStream` and `OwnedFd` own theirs and return the same one
/// for their whole life, which is the condition of the (unsafe) replacement.
#[allow(deprecated)]
fn watch<T: AsRawFd>(fd: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    AsyncFd::with_interest(fd, interest)
}

impl AsRawFd for UnixConn {
    fn as_raw_fd(&self) -> RawFd {
        self.read.get_ref().as_raw_fd()
    }
}

impl AsyncWrite for UnixConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
        loop {
            match rustix::net::send(self.read.get_ref(), data, flags) {
                Ok(n) => {
                    self.write_wait = None; // stop watching for room
                    return Poll::Ready(Ok(n));
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
            if self.write_wait.is_none() {
                let dup = OwnedFd::from(self.read.get_ref().try_clone()?);
                self.write_wait = Some(watch(dup, Interest::WRITABLE)?);
            }
            let waiter = self.write_wait.as_ref().expect("registered above");
            ready!(waiter.poll_write_ready(cx))?.clear_ready();
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.read.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn reads_what_arrives_and_the_end_of_the_stream() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let conn = UnixConn::register(ours).unwrap();
        theirs.write_all(b"hello").unwrap();
        let mut buf = Vec::with_capacity(64);
        assert_eq!(conn.recv_into(&mut buf).await.unwrap(), 5);
        assert_eq!(buf, b"hello");
        drop(theirs);
        buf.reserve(64);
        assert_eq!(conn.recv_into(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_write_larger_than_the_socket_buffer_waits_for_room() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut conn = UnixConn::register(ours).unwrap();
        let big = vec![7u8; 8 << 20]; // far more than a socket buffer holds
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).unwrap();
            got
        });
        conn.write_all(&big).await.unwrap();
        assert!(conn.write_wait.is_none(), "the writability watch ends with the write");
        conn.shutdown().await.unwrap();
        assert_eq!(reader.join().unwrap(), big);
    }

    #[tokio::test]
    async fn writing_to_a_closed_peer_fails_without_a_signal() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut conn = UnixConn::register(ours).unwrap();
        drop(theirs);
        let err = conn.write_all(b"x").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test]
    async fn a_rehomed_socket_on_the_same_lane_is_the_same_registration() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let conn = UnixConn::register(ours).unwrap().rehome().unwrap();
        theirs.write_all(b"x").unwrap();
        let mut buf = Vec::with_capacity(8);
        assert_eq!(conn.recv_into(&mut buf).await.unwrap(), 1);
    }
}
