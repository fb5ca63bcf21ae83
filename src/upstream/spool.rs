//! Request body spooling: the whole body is read from the client before a
//! runtime's worker is taken, so a slow upload never holds an interpreter
//! thread. Small bodies stay in memory; beyond [`MEMORY_LIMIT`] they spill to
//! an unlinked temporary file. The site's body limit is enforced by the
//! router (`Limited`), which this module reports as `BodyTooLarge`.

use std::io::SeekFrom;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use super::{full_body, BoxError, RequestBody, UpstreamError};

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
            Spooled::File { file, .. } => {
                let stream = ReaderStream::with_capacity(file, 256 << 10).map(|r| {
                    r.map(http_body::Frame::data)
                        .map_err(|e| Box::new(e) as BoxError)
                });
                BodyExt::boxed_unsync(StreamBody::new(stream))
            }
        }
    }
}

/// Reads the whole body, spilling to a temporary file past [`MEMORY_LIMIT`].
pub async fn spool(body: RequestBody, limit: u64) -> Result<Spooled, UpstreamError> {
    let mut stream = BodyStream::new(body);
    let mut mem = BytesMut::new();
    let mut file: Option<(tokio::fs::File, u64)> = None;
    while let Some(frame) = stream.next().await {
        let frame = frame.map_err(|e| body_error(e, limit))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        match &mut file {
            Some((f, len)) => {
                f.write_all(&data).await?;
                *len += data.len() as u64;
            }
            None if mem.len() + data.len() > MEMORY_LIMIT => {
                let std_file = tokio::task::spawn_blocking(tempfile::tempfile)
                    .await
                    .map_err(|e| UpstreamError::Internal(e.to_string()))??;
                let mut f = tokio::fs::File::from_std(std_file);
                f.write_all(&mem).await?;
                f.write_all(&data).await?;
                file = Some((f, (mem.len() + data.len()) as u64));
                mem = BytesMut::new();
            }
            None => mem.extend_from_slice(&data),
        }
    }
    match file {
        Some((mut f, len)) => {
            f.flush().await?;
            f.seek(SeekFrom::Start(0)).await?;
            Ok(Spooled::File { file: f, len })
        }
        None => Ok(Spooled::Memory(mem.freeze())),
    }
}

/// Maps a body error: the router's limit → 413, anything else → 400 (the
/// client broke off or sent a malformed body).
pub fn body_error(e: BoxError, limit: u64) -> UpstreamError {
    if e.downcast_ref::<http_body_util::LengthLimitError>()
        .is_some()
    {
        UpstreamError::BodyTooLarge { limit }
    } else {
        UpstreamError::BadRequest(format!("reading the request body failed: {e}"))
    }
}
