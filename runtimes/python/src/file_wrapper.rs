//! `wsgi.file_wrapper`: wraps a file-like object as an iterable of blocks, and
//! the fast path for real files: the worker reads the file itself, in large
//! blocks, without the GIL, from the file's current position.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use bytes::BytesMut;
use pyo3::prelude::*;

use crate::errors::ClientDisconnected;
use crate::response::{Aborted, StartResponse};

/// Block size of the fast path.
const FAST_BLOCK: usize = 256 * 1024;

#[pyclass(frozen, module = "polyhost")]
pub struct FileWrapper {
    filelike: Py<PyAny>,
    blksize: isize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize=8192))]
    fn new(filelike: Py<PyAny>, blksize: isize) -> Self {
        Self { filelike, blksize }
    }

    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let block = self
            .filelike
            .bind(py)
            .call_method1("read", (self.blksize,))?;
        Ok((block.len().unwrap_or(0) > 0).then_some(block))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr("close")? {
            f.call_method0("close")?;
        }
        Ok(())
    }
}

impl FileWrapper {
    /// The underlying regular file and its current position, if there is one.
    #[allow(unsafe_code)] // dup(2) of the app's descriptor.
    fn real_file(&self, py: Python<'_>) -> Option<(File, u64)> {
        let f = self.filelike.bind(py);
        let fd: i32 = f.call_method0("fileno").ok()?.extract().ok()?;
        let pos: u64 = f.call_method0("tell").ok()?.extract().ok()?;
        // SAFETY: `fcntl(F_DUPFD_CLOEXEC)` only reads the descriptor number; a
        // bad number returns -1 and is rejected before use. On success the new
        // descriptor is ours alone, so OwnedFd may own and close it.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return None;
        }
        // SAFETY: `dup` is a freshly duplicated, valid descriptor owned by no one else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(dup) });
        let meta = file.metadata().ok()?;
        meta.is_file().then_some((file, pos))
    }
}

/// Serves `wrapper` by reading its file directly. Returns `Ok(false)` when the
/// wrapped object is not a real file (then iterate it like any iterable).
pub fn try_fast_path(
    py: Python<'_>,
    wrapper: &Bound<'_, FileWrapper>,
    sr: &StartResponse,
) -> PyResult<bool> {
    let Some((file, pos)) = wrapper.get().real_file(py) else {
        return Ok(false);
    };
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let remaining = file_len.saturating_sub(pos);
    let (tx, app_len) = sr.start_file(remaining)?;
    let Some(tx) = tx else {
        return Ok(true);
    };
    let mut left = app_len.map_or(remaining, |l| l.min(remaining));
    let sent = py.detach(move || -> std::io::Result<bool> {
        let mut offset = pos;
        while left > 0 {
            let want = FAST_BLOCK.min(usize::try_from(left).unwrap_or(FAST_BLOCK));
            let mut buf = BytesMut::zeroed(want);
            let n = file.read_at(&mut buf, offset)?;
            if n == 0 {
                // The file shrank under us: the promised length cannot be met.
                let _ = tx.blocking_send(Err(Aborted));
                return Ok(true);
            }
            buf.truncate(n);
            if tx.blocking_send(Ok(buf.freeze())).is_err() {
                return Ok(false);
            }
            offset += n as u64;
            left -= n as u64;
        }
        Ok(true)
    })?;
    if !sent {
        return Err(ClientDisconnected::new_err("the client went away"));
    }
    Ok(true)
}
