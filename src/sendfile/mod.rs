//! Zero-copy file bodies on plain HTTP/1 connections: a response body hands
//! a range of an open file to its connection's socket, which sends it with
//! `sendfile(2)`. The bytes go from the page cache to the socket without
//! being read into the router's memory and written out again (the two
//! copies were 46 % of the router's time on a 1 MiB file).
//!
//! hyper owns the connection and writes what a body yields as bytes; it has
//! no way to be given a file. So a body on a connection that can send files
//! queues each range on the connection's [`FileQueue`] and yields, in its
//! place, a *stand-in* chunk of the range's length: a slice of [`STAND_IN`],
//! zeroes that are never touched (a `static` in `.bss`: address space, no
//! memory). The connection's socket wrapper (`router::conn::TrackedIo`)
//! recognises a stand-in by its address among the slices hyper writes and
//! sends the queued range's bytes instead ([`FileQueue::poll_write`]).
//! Hand-written: no crate lets hyper's HTTP/1 writer send a file (hyper's
//! own issue for it is open since 2017), and serving files outside hyper
//! would mean a second HTTP/1 writer.
//!
//! Invariants:
//! - A stand-in's zeroes never reach a client. A stand-in slice is sent only
//!   as the bytes of the range at the head of the queue, at the slice's own
//!   offset in the stand-in (hyper writes slices in order and advances them
//!   by what was written); a slice that does not match the head (no range
//!   queued, another offset, longer than what is left) fails the write,
//!   which closes the connection.
//! - Only a connection whose every write goes through the wrapper and whose
//!   HTTP/1 writer keeps body chunks as they are (hyper's vectored `writev`
//!   strategy, set explicitly: its other strategy copies chunks) has a
//!   queue: plain HTTP/1. TLS, HTTP/2 and h2c-capable connections have
//!   none, and their file bodies read the file as before.
//! - A range is queued only once its bytes are in the page cache
//!   ([`in_page_cache`]): `sendfile` runs on the async thread and must not
//!   wait for the disk. A range that is not is read as before.
//! - The queue holds each file open until its range is sent, even after the
//!   body that queued it was dropped (hyper may still be writing it).

mod resident;
mod socket;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::net::TcpStream;

pub use resident::in_page_cache;

/// The longest range one stand-in stands for (a body queues a longer file
/// as several ranges).
pub const MAX_RANGE: usize = 1024 * 1024;

/// Bodies of at least this many bytes are sent with `sendfile`; smaller ones
/// cost less as one read and one `writev` with their header.
pub const SEND_FROM: u64 = 64 * 1024;

/// What stand-in chunks are slices of: never read, never written.
static STAND_IN: [u8; MAX_RANGE] = [0; MAX_RANGE];

/// The ranges a connection's response bodies queued, in the order their
/// stand-ins were yielded to hyper. Cloned into each request of the
/// connection; one per plain HTTP/1 connection.
#[derive(Clone, Default)]
pub struct FileQueue {
    ranges: Arc<Mutex<VecDeque<Range>>>,
}

impl std::fmt::Debug for FileQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileQueue")
            .field("queued", &self.lock().len())
            .finish()
    }
}

/// `len` bytes of `file` from `offset`, of which `sent` went out.
struct Range {
    file: Arc<File>,
    offset: u64,
    len: usize,
    sent: usize,
}

impl FileQueue {
    pub fn new() -> FileQueue {
        FileQueue::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Range>> {
        // A panic while holding it cannot leave a half-updated range.
        self.ranges.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `len` (at most [`MAX_RANGE`]) bytes of `file` from `offset`;
    /// returns the stand-in chunk to yield to hyper in their place.
    pub fn push(&self, file: &Arc<File>, offset: u64, len: usize) -> Bytes {
        let len = len.min(MAX_RANGE);
        self.lock().push_back(Range {
            file: file.clone(),
            offset,
            len,
            sent: 0,
        });
        Bytes::from_static(&STAND_IN[..len])
    }

    /// Forgets every queued range (a connection whose HTTP state is dropped
    /// between requests: nothing of it will be written).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Writes what hyper has buffered (`bufs`, in order) to `socket` if it
    /// holds a stand-in: the slices before the first stand-in, held back
    /// for the file's bytes that follow, or a leading stand-in's range with
    /// `sendfile`. Like any write, it may write less than all. `None`: no
    /// stand-in, the caller writes `bufs` itself.
    pub fn poll_write(
        &self,
        socket: &TcpStream,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Option<Poll<io::Result<usize>>> {
        Some(match bufs.iter().position(is_stand_in)? {
            0 => self.poll_send_head(socket, cx, &bufs[0]),
            first => socket::poll_write_more(socket, cx, &bufs[..first]),
        })
    }

    /// Sends `slice`, a stand-in, as the bytes of the head range it stands
    /// for; a slice out of step with the queue is an error.
    fn poll_send_head(
        &self,
        socket: &TcpStream,
        cx: &mut Context<'_>,
        slice: &IoSlice<'_>,
    ) -> Poll<io::Result<usize>> {
        let mut ranges = self.lock();
        let at = slice.as_ptr() as usize - STAND_IN.as_ptr() as usize;
        let Some(head) = ranges.front_mut() else {
            return Poll::Ready(Err(out_of_step("no file range is queued")));
        };
        if at != head.sent || slice.len() > head.len - head.sent {
            return Poll::Ready(Err(out_of_step(
                "the stand-in is not the queued range's next part",
            )));
        }
        let offset = head.offset + at as u64;
        let sent = std::task::ready!(socket::poll_send_file(
            socket,
            cx,
            &head.file,
            offset,
            slice.len()
        ))?;
        if sent == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while it was being sent",
            )));
        }
        head.sent += sent;
        if head.sent == head.len {
            ranges.pop_front();
        }
        Poll::Ready(Ok(sent))
    }
}

/// Whether `slice` lies in [`STAND_IN`].
fn is_stand_in(slice: &IoSlice<'_>) -> bool {
    let start = STAND_IN.as_ptr() as usize;
    let at = slice.as_ptr() as usize;
    !slice.is_empty() && at >= start && at < start + MAX_RANGE
}

fn out_of_step(why: &str) -> io::Error {
    io::Error::other(format!(
        "file sending out of step with hyper's writes: {why}"
    ))
}
