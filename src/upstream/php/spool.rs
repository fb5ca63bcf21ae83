//! Request bodies without a declared length (HTTP/1.1 chunked, HTTP/2
//! without `content-length`) are spooled to an unnamed temporary file before
//! the request goes to php-fpm: PHP reads exactly `CONTENT_LENGTH` bytes of
//! input, so it must know the length up front (nginx does the same).
//!
//! Invariants: memory stays at one read buffer whatever the body size; the
//! file has no name (`O_TMPFILE`, or unlinked right after creation), so
//! nothing is left on disk whatever happens; the router's body limit still
//! applies (it wraps the body before we see it).

use std::io::SeekFrom;
use std::os::unix::fs::OpenOptionsExt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWriteExt, ReadBuf};

use crate::upstream::{BoxError, RequestBody, UpstreamError};

const READ_CHUNK: usize = 64 * 1024;

/// Reads `body` to its end into a temporary file; returns a body reading it
/// back and its length. Body errors become 413/400 as in the exchange.
pub async fn spool(
    mut body: RequestBody,
    map_err: impl Fn(BoxError) -> UpstreamError,
) -> Result<(RequestBody, u64), UpstreamError> {
    let file = unnamed_file()?;
    let mut file = tokio::fs::File::from_std(file);
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(&map_err)?.into_data() {
            file.write_all(&data).await?;
            len += data.len() as u64;
        }
    }
    file.flush().await?;
    file.seek(SeekFrom::Start(0)).await?;
    let body = FileBody {
        file,
        buf: vec![0; READ_CHUNK].into_boxed_slice(),
        remaining: len,
    };
    Ok((body.boxed_unsync(), len))
}

fn unnamed_file() -> std::io::Result<std::fs::File> {
    let dir = std::env::temp_dir();
    let tmpfile = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(&dir);
    match tmpfile {
        Ok(f) => Ok(f),
        Err(_) => {
            // File systems without O_TMPFILE: a fresh name, unlinked at once.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let path = dir.join(format!(".polyhost-body-{}-{nanos}", std::process::id()));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(f)
        }
    }
}

struct FileBody {
    file: tokio::fs::File,
    buf: Box<[u8]>,
    remaining: u64,
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
        let this = &mut *self;
        let mut rb = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                Poll::Ready(Some(Err("spooled request body ended early".into())))
            }
            Poll::Ready(Ok(())) => {
                let data = Bytes::copy_from_slice(rb.filled());
                this.remaining = this.remaining.saturating_sub(data.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
