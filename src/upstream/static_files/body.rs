//! A response body that streams a byte range of an open file in bounded
//! chunks ([`CHUNK`]), so neither memory nor an async thread is held by a
//! large file or a slow disk.
//!
//! Each chunk is first read on the async thread with
//! `preadv2(RWF_NOWAIT)`, which copies what the page cache already holds and
//! never waits for the disk; only a chunk the page cache does not have (or a
//! file system without `RWF_NOWAIT`) goes to the blocking pool. A hot file
//! therefore costs no thread hand-off at all (measured: the 1 MiB file's
//! sixteen blocking-pool hops were a third of the router's CPU per request).
//!
//! A chunk of [`POOLED_FROM`] bytes or more is read into a buffer of
//! [`CHUNK`] bytes taken from a small per-thread free list ([`pool`]) and
//! given back when hyper drops the chunk it wrote, so a large file costs no
//! `malloc`, no zeroing and no fresh pages per chunk (a 128 KiB allocation
//! sits at glibc's mmap threshold: it was `mmap`, page faults and `munmap`,
//! or a `memset` of the whole chunk, for every chunk). Only the bytes just
//! read are ever visible through a chunk: a reused buffer's older contents
//! (another file's, another site's) lie beyond its length.
//!
//! On a connection that can send files ([`crate::sendfile`]), a body of at
//! least [`sendfile::SEND_FROM`] bytes reads nothing itself: each range
//! whose bytes are in the page cache is queued for the connection's socket
//! to `sendfile`, and hyper is given a stand-in chunk of its length; a range
//! that is not in the page cache is read as above.

use std::fs::File;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use rustix::io::{preadv2, Errno, ReadWriteFlags};
use tokio::task::JoinHandle;

use crate::sendfile::{self, FileQueue};
use crate::upstream::{BoxError, ResponseBody};

/// Largest chunk read and sent at once: what one response holds in memory
/// (times the few slow clients a shared host must expect). 256 KiB measured
/// no cheaper per request than 128 KiB once chunks stopped costing a thread
/// hop.
pub const CHUNK: u64 = 128 * 1024;

/// Reads of at least this many bytes go into a pooled [`CHUNK`] buffer;
/// smaller ones (a small file, a file's tail) into an allocation of their
/// own size, which glibc serves from its heap.
const POOLED_FROM: usize = 16 * 1024;

/// Streams `len` bytes of `file` from `start`, through `files` (the
/// connection's queue, if it can send files) when that many bytes are worth
/// it. If the file shrinks while it is being sent, the body ends with an
/// error (the connection is cut rather than a short body passed off as
/// complete); growth past `len` is not sent.
pub fn file_body(file: File, start: u64, len: u64, files: Option<&FileQueue>) -> ResponseBody {
    let (file, queue) = match files {
        Some(queue) if len >= sendfile::SEND_FROM => {
            (Held::Shared(Arc::new(file)), Some(queue.clone()))
        }
        _ => (Held::Own(file), None),
    };
    FileBody {
        file: Some(file),
        offset: start,
        remaining: len,
        nowait: true,
        blocking: None,
        queue,
    }
    .boxed_unsync()
}

struct FileBody {
    /// `None` while a chunk is read on the blocking pool (the read has it).
    file: Option<Held>,
    offset: u64,
    remaining: u64,
    /// `RWF_NOWAIT` works on this file (cleared when the file system refuses it).
    nowait: bool,
    /// A chunk being read on the blocking pool; gives the file back.
    blocking: Option<JoinHandle<(Held, io::Result<Bytes>)>>,
    /// The connection's queue of ranges to `sendfile` (then the file is
    /// [`Held::Shared`]).
    queue: Option<FileQueue>,
}

/// The body's file: its own, or shared with the connection's queue, which
/// keeps it open until the ranges queued are sent.
enum Held {
    Own(File),
    Shared(Arc<File>),
}

impl Held {
    fn file(&self) -> &File {
        match self {
            Held::Own(file) => file,
            Held::Shared(file) => file,
        }
    }
}

/// What a read from the page cache gave.
enum Cached {
    Read(Bytes),
    /// Not in the page cache (or `RWF_NOWAIT` not supported): read it blocking.
    Miss,
}

impl FileBody {
    fn chunk_len(&self) -> usize {
        // At most CHUNK, which fits a usize.
        self.remaining.min(CHUNK) as usize
    }

    /// The next range queued for the connection to send, as its stand-in;
    /// `None`: read it (no queue, or not in the page cache).
    fn queue_next(&mut self) -> Option<Bytes> {
        let (queue, Some(Held::Shared(file))) = (self.queue.as_ref()?, &self.file) else {
            return None;
        };
        if !self.nowait {
            return None;
        }
        let len = self.remaining.min(sendfile::MAX_RANGE as u64);
        match sendfile::in_page_cache(file, self.offset, len) {
            // At most MAX_RANGE, which is a usize.
            Ok(true) => Some(queue.push(file, self.offset, len as usize)),
            Ok(false) => None,
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                self.nowait = false;
                None
            }
            // The read reports what is wrong with the file.
            Err(_) => None,
        }
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
        if let Some(task) = &mut self.blocking {
            let joined = ready!(Pin::new(task).poll(cx));
            self.blocking = None;
            return Poll::Ready(match joined {
                Ok((file, read)) => {
                    self.file = Some(file);
                    read
                }
                Err(e) => Err(io::Error::other(format!("file read task failed: {e}"))),
            });
        }
        let want = self.chunk_len();
        let Some(file) = self.file.take() else {
            return Poll::Ready(Err(io::Error::other("file body polled after an error")));
        };
        if self.nowait {
            match read_cached(file.file(), self.offset, want) {
                Ok(Cached::Read(bytes)) => {
                    self.file = Some(file);
                    return Poll::Ready(Ok(bytes));
                }
                Ok(Cached::Miss) => {}
                Err(e) if e.kind() == io::ErrorKind::Unsupported => self.nowait = false,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let offset = self.offset;
        self.blocking = Some(tokio::task::spawn_blocking(move || {
            let read = read_chunk(file.file(), offset, want);
            (file, read)
        }));
        self.poll_chunk(cx)
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let chunk = match self.queue_next() {
            Some(stand_in) => Ok(stand_in),
            None => ready!(self.poll_chunk(cx)),
        };
        let chunk = match chunk {
            Ok(chunk) if chunk.is_empty() => Err(shrank()),
            other => other,
        };
        Poll::Ready(Some(match chunk {
            Ok(chunk) => {
                let n = chunk.len() as u64;
                self.offset += n;
                self.remaining -= n;
                Ok(Frame::data(chunk))
            }
            Err(e) => {
                // Nothing more is sent after an error.
                self.remaining = 0;
                self.file = None;
                Err(e.into())
            }
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

fn shrank() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "file shrank while it was being sent",
    )
}

/// Reads what the page cache holds of `want` bytes at `offset`, without
/// waiting for the disk. A short read is fine (the rest comes next time); an
/// empty `Read` means end of file.
fn read_cached(file: &File, offset: u64, want: usize) -> io::Result<Cached> {
    let mut buf = pool::Buffer::new(want);
    loop {
        match preadv2(
            file,
            &mut [IoSliceMut::new(buf.spare(want))],
            offset,
            ReadWriteFlags::NOWAIT,
        ) {
            Ok(n) => return Ok(Cached::Read(buf.into_bytes(n))),
            Err(Errno::AGAIN) => return Ok(Cached::Miss),
            Err(Errno::INTR) => continue,
            Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
                return Err(io::ErrorKind::Unsupported.into())
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Blocking: reads `want` bytes at `offset` (fewer only at end of file).
fn read_chunk(file: &File, offset: u64, want: usize) -> io::Result<Bytes> {
    let mut buf = pool::Buffer::new(want);
    let space = buf.spare(want);
    let mut filled = 0;
    while filled < want {
        match file.read_at(&mut space[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(buf.into_bytes(filled))
}

/// The free list of [`CHUNK`] buffers.
///
/// Invariants: bounded ([`KEPT`] buffers per thread, so at most
/// `KEPT × CHUNK` bytes idle per runtime thread, whatever was served); a
/// chunk exposes only the bytes read into it (`Chunk::as_ref`), never what
/// a reused buffer held before. Hand-written (a `Vec` in a thread-local):
/// the pool crates found (`object-pool`, `lifeguard`) lock or hand out
/// guards that cannot become the `Bytes` hyper takes, which
/// `Bytes::from_owner` does here.
mod pool {
    use std::cell::RefCell;

    use bytes::Bytes;

    use super::{CHUNK, POOLED_FROM};

    /// Idle buffers kept per thread. A connection gives its chunk back
    /// before it reads the next one, so a few serve many connections.
    const KEPT: usize = 4;

    thread_local! {
        static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// Room for one read.
    pub(super) enum Buffer {
        /// A [`CHUNK`] buffer from (and back to) the pool.
        Pooled(Vec<u8>),
        /// A small read's own allocation.
        Own(Vec<u8>),
    }

    impl Buffer {
        /// Room for `want` (at most [`CHUNK`]) bytes.
        pub(super) fn new(want: usize) -> Buffer {
            if want < POOLED_FROM {
                return Buffer::Own(vec![0; want]);
            }
            let kept = FREE.try_with(|free| free.borrow_mut().pop()).ok().flatten();
            // CHUNK fits a usize.
            Buffer::Pooled(kept.unwrap_or_else(|| vec![0; CHUNK as usize]))
        }

        /// The first `want` bytes to read into (initialised: zeroes or a
        /// former chunk's bytes).
        pub(super) fn spare(&mut self, want: usize) -> &mut [u8] {
            match self {
                Buffer::Pooled(buf) | Buffer::Own(buf) => &mut buf[..want],
            }
        }

        /// The first `len` bytes, read, as the chunk hyper sends.
        pub(super) fn into_bytes(self, len: usize) -> Bytes {
            match self {
                Buffer::Own(mut buf) => {
                    buf.truncate(len);
                    Bytes::from(buf)
                }
                Buffer::Pooled(buf) => Bytes::from_owner(Chunk { buf, len }),
            }
        }
    }

    /// A pooled buffer holding `len` bytes just read; back to the pool of
    /// the thread that drops it.
    struct Chunk {
        buf: Vec<u8>,
        len: usize,
    }

    impl AsRef<[u8]> for Chunk {
        fn as_ref(&self) -> &[u8] {
            &self.buf[..self.len]
        }
    }

    impl Drop for Chunk {
        fn drop(&mut self) {
            let buf = std::mem::take(&mut self.buf);
            // A thread being torn down keeps nothing (the buffer is freed).
            let _ = FREE.try_with(|free| {
                let mut free = free.borrow_mut();
                if free.len() < KEPT {
                    free.push(buf);
                }
            });
        }
    }

    #[cfg(test)]
    pub(super) fn kept() -> usize {
        FREE.with_borrow(Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    async fn collect(body: ResponseBody) -> Result<Vec<u8>, BoxError> {
        let mut body = body;
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            out.extend_from_slice(frame?.data_ref().unwrap());
        }
        Ok(out)
    }

    fn file_with(data: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(data).unwrap();
        let file = File::open(f.path()).unwrap();
        (f, file)
    }

    #[tokio::test]
    async fn streams_the_range_in_bounded_chunks() {
        let data: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        let (_keep, file) = file_with(&data);
        let mut body = file_body(file, 5, data.len() as u64 - 10, None);
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            let chunk = frame.unwrap().into_data().unwrap();
            assert!(chunk.len() as u64 <= CHUNK);
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, &data[5..data.len() - 5]);
    }

    #[tokio::test]
    async fn a_file_that_shrank_ends_with_an_error() {
        let (keep, file) = file_with(&[7; 1000]);
        keep.as_file().set_len(100).unwrap();
        assert!(collect(file_body(file, 0, 1000, None)).await.is_err());
    }

    #[test]
    fn pooled_chunks_show_only_what_was_read_and_stay_bounded() {
        let (_keep, big) = file_with(&[b'a'; CHUNK as usize]);
        let (_keep2, small) = file_with(&[b'b'; POOLED_FROM + 3]);
        let chunks: Vec<Bytes> = (0..10)
            .map(|_| read_chunk(&big, 0, CHUNK as usize).unwrap())
            .collect();
        drop(chunks);
        assert_eq!(pool::kept(), 4, "buffers kept after ten were dropped");
        // A reused buffer that held 'a's: only the 'b's read now are seen.
        let again = read_chunk(&small, 0, CHUNK as usize).unwrap();
        assert_eq!(&again[..], &[b'b'; POOLED_FROM + 3][..]);
        assert_eq!(pool::kept(), 3, "the read took a kept buffer");
        drop(again);
        assert_eq!(pool::kept(), 4);
        let Ok(Cached::Read(tail)) = read_cached(&small, 5, CHUNK as usize) else {
            panic!("a file just written is in the page cache");
        };
        assert_eq!(tail.len(), POOLED_FROM - 2);
    }

    #[test]
    fn blocking_read_stops_at_end_of_file() {
        let (_keep, file) = file_with(b"hello");
        assert_eq!(&read_chunk(&file, 1, 100).unwrap()[..], b"ello");
    }
}
