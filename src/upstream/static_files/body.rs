//! A response body that streams a byte range of an open file in bounded
//! chunks, each read with `pread` on the blocking pool, so neither memory
//! nor an async thread is held by a large file or a slow disk.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{stream, TryStreamExt};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

use crate::upstream::{BoxError, ResponseBody};

/// Largest chunk read and sent at once.
pub const CHUNK: u64 = 128 * 1024;

/// Bodies up to this size are read at once, without the blocking pool.
const SMALL: u64 = 64 * 1024;

/// A body that fails at once (the connection is cut rather than a short
/// body passed off as complete).
fn error_body(e: io::Error) -> ResponseBody {
    StreamBody::new(stream::once(async move {
        Err::<Frame<Bytes>, BoxError>(e.into())
    }))
    .boxed_unsync()
}

struct State {
    file: Arc<File>,
    offset: u64,
    remaining: u64,
}

/// Streams `len` bytes of `file` from `start`. If the file shrinks while it
/// is being sent, the body ends with an error (the connection is cut rather
/// than a short body passed off as complete); growth past `len` is not sent.
pub fn file_body(file: File, start: u64, len: u64) -> ResponseBody {
    if len <= SMALL {
        // One short pread on the async thread: no blocking-pool hop for small files.
        return match read_chunk(&file, start, len as usize) {
            Ok(buf) if buf.len() as u64 == len => crate::upstream::full_body(buf),
            Ok(_) => error_body(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while it was being sent",
            )),
            Err(e) => error_body(e),
        };
    }
    let state = State {
        file: Arc::new(file),
        offset: start,
        remaining: len,
    };
    let chunks = stream::try_unfold(state, |mut st| async move {
        if st.remaining == 0 {
            return Ok(None);
        }
        let want = st.remaining.min(CHUNK) as usize;
        let (file, offset) = (Arc::clone(&st.file), st.offset);
        let buf = tokio::task::spawn_blocking(move || read_chunk(&file, offset, want))
            .await
            .map_err(|e| io::Error::other(format!("file read task failed: {e}")))??;
        st.offset += buf.len() as u64;
        st.remaining -= buf.len() as u64;
        Ok::<_, io::Error>(Some((Frame::data(Bytes::from(buf)), st)))
    });
    StreamBody::new(chunks.map_err(BoxError::from)).boxed_unsync()
}

fn read_chunk(file: &File, offset: u64, want: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; want];
    let mut filled = 0;
    while filled < want {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    if filled == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "file shrank while it was being sent",
        ));
    }
    buf.truncate(filled);
    Ok(buf)
}
