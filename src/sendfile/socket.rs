//! The two writes a file range needs on a non-blocking socket, each retried
//! through tokio's readiness of that socket (so a full send buffer parks the
//! task like any other write): the header bytes before it, held back by
//! `MSG_MORE` until the file's bytes follow (one segment, not a small one
//! first), and the range itself with `sendfile`.

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::task::{ready, Context, Poll};

use nix::sys::socket::{sendmsg, MsgFlags, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// `sendfile` of `len` bytes of `file` at `offset` to `socket`: how many
/// went out (0 only at the file's end).
pub(super) fn poll_send_file(
    socket: &TcpStream,
    cx: &mut Context<'_>,
    file: &File,
    offset: u64,
    len: usize,
) -> Poll<io::Result<usize>> {
    poll_io(socket, cx, || {
        let mut at = offset;
        rustix::fs::sendfile(socket, file, Some(&mut at), len).map_err(io::Error::from)
    })
}

/// `bufs` with `MSG_MORE`: the kernel holds them for the bytes that follow.
pub(super) fn poll_write_more(
    socket: &TcpStream,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let fd = socket.as_raw_fd();
    // nix names no MSG_MORE.
    let flags = MsgFlags::from_bits_retain(libc::MSG_MORE) | MsgFlags::MSG_NOSIGNAL;
    poll_io(socket, cx, || {
        sendmsg::<SockaddrStorage>(fd, bufs, &[], flags, None).map_err(io::Error::from)
    })
}

/// Runs `op` once the socket is writable, until it does not report
/// `WouldBlock` (which clears tokio's readiness, so the next poll parks).
fn poll_io(
    socket: &TcpStream,
    cx: &mut Context<'_>,
    mut op: impl FnMut() -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(socket.poll_write_ready(cx))?;
        match socket.try_io(Interest::WRITABLE, &mut op) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            done => return Poll::Ready(done),
        }
    }
}
