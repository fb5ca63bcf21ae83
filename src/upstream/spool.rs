//! Request body spooling: the whole body is read from the client before a
//! runtime's worker is taken, so a slow upload never holds an interpreter
//! thread. Small bodies stay in memory; beyond [`MEMORY_LIMIT`] they spill to
//! an unlinked temporary file. The site's body limit is enforced by the
//! router, whose cut body ([`super::BodyError`]) this module reports as what
//! it is ([`UpstreamError::from_body`]). A spool file that cannot be written
//! is polyhost's own I/O ([`UpstreamError::LocalIo`]).

use std::io::SeekFrom;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body::Body as _;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use super::{empty_body, full_body, BoxError, RequestBody, UpstreamError};

/// Bodies up to this size are kept in memory.
pub const MEMORY_LIMIT: usize = 2 << 20;

/// A fully received request body.
pub enum Spooled {
    Memory(Bytes),
    File { file: tokio::fs::File, len: u64 },
}

impl Spooled {
    pub fn len(&self) -> u64 {
        match self {
            Spooled::Memory(b) => b.len() as u64,
            Spooled::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body to send upstream.
    pub fn into_body(self) -> RequestBody {
        match self {
            Spooled::Memory(b) => full_body(b),
            Spooled::File { file, .. } => file_body(file),
        }
    }

    /// A body of the spooled bytes from their start, as often as asked (a
    /// request sent again on a fresh connection). A file is opened anew
    /// through `/proc/self/fd` (its own offset: a read of an earlier body
    /// still under way cannot move this one's).
    pub async fn replay(&self) -> Result<RequestBody, UpstreamError> {
        use std::os::fd::AsRawFd;
        match self {
            // No body: a boxed `Empty` allocates nothing (a boxed `Full` does).
            Spooled::Memory(b) if b.is_empty() => Ok(empty_body()),
            Spooled::Memory(b) => Ok(full_body(b.clone())),
            Spooled::File { file, .. } => {
                let path = format!("/proc/self/fd/{}", file.as_raw_fd());
                let file = tokio::fs::File::open(path).await.map_err(local)?;
                Ok(file_body(file))
            }
        }
    }
}

/// A body read from `file` (from where its offset is).
fn file_body(file: tokio::fs::File) -> RequestBody {
    let stream = ReaderStream::with_capacity(file, 256 << 10).map(|r| {
        r.map(http_body::Frame::data)
            .map_err(|e| Box::new(e) as BoxError)
    });
    BodyExt::boxed_unsync(StreamBody::new(stream))
}

/// Reads the whole body, spilling to a temporary file past [`MEMORY_LIMIT`].
///
/// Most requests have no body: they are answered without the reading
/// machinery, whose state (file writes, a blocking task) is boxed for the
/// others, so it does not make the future of every request that awaits
/// this (moved by `memcpy` as a whole) that much larger.
pub async fn spool(body: RequestBody, limit: u64) -> Result<Spooled, UpstreamError> {
    if body.is_end_stream() {
        return Ok(Spooled::Memory(Bytes::new()));
    }
    Box::pin(read_all(body, limit)).await
}

/// [`spool`] of a body that may have bytes.
async fn read_all(body: RequestBody, limit: u64) -> Result<Spooled, UpstreamError> {
    let mut stream = BodyStream::new(body);
    let mut mem = BytesMut::new();
    let mut file: Option<(tokio::fs::File, u64)> = None;
    while let Some(frame) = stream.next().await {
        let frame = frame.map_err(|e| UpstreamError::from_body(e, limit))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        match &mut file {
            Some((f, len)) => {
                f.write_all(&data).await.map_err(local)?;
                *len += data.len() as u64;
            }
            None if mem.len() + data.len() > MEMORY_LIMIT => {
                let std_file = tokio::task::spawn_blocking(tempfile::tempfile)
                    .await
                    .map_err(|e| UpstreamError::Internal(e.to_string()))?
                    .map_err(local)?;
                let mut f = tokio::fs::File::from_std(std_file);
                f.write_all(&mem).await.map_err(local)?;
                f.write_all(&data).await.map_err(local)?;
                file = Some((f, (mem.len() + data.len()) as u64));
                mem = BytesMut::new();
            }
            None => mem.extend_from_slice(&data),
        }
    }
    match file {
        Some((mut f, len)) => {
            f.flush().await.map_err(local)?;
            f.seek(SeekFrom::Start(0)).await.map_err(local)?;
            Ok(Spooled::File { file: f, len })
        }
        None => Ok(Spooled::Memory(mem.freeze())),
    }
}

/// The spool file's I/O is polyhost's own.
fn local(e: std::io::Error) -> UpstreamError {
    UpstreamError::LocalIo(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_body_and_a_small_body_stay_in_memory() {
        let cases: [(RequestBody, &[u8]); 3] = [
            (empty_body(), b""),
            (full_body(Bytes::new()), b""),
            (full_body(Bytes::from_static(b"hello")), b"hello"),
        ];
        for (body, want) in cases {
            match spool(body, 1 << 20).await {
                Ok(Spooled::Memory(got)) => assert_eq!(&got[..], want),
                Ok(Spooled::File { len, .. }) => panic!("spilled {len} bytes to a file"),
                Err(e) => panic!("{e}"),
            }
        }
    }
}
