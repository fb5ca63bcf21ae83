//! `wsgi.file_wrapper`: wraps a file-like object as an iterable of blocks, and
//! the fast path for real files: after the head, the kernel copies the file
//! to the socket (`sendfile`), from the file's current position, without the
//! GIL.

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{FromRawFd, OwnedFd};

use nix::errno::Errno;
use pyo3::prelude::*;

use crate::errors::ClientDisconnected;
use crate::response::StartResponse;

/// Bytes per `sendfile` call (the GIL stays released across calls).
const SENDFILE_BLOCK: usize = 1 << 20;

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

/// Serves `wrapper` by sending its file directly. Returns `Ok(false)` when
/// the wrapped object is not a real file, or the response is already
/// streaming (then iterate it like any iterable).
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
    let Some(start) = sr.start_file(remaining)? else {
        return Ok(false);
    };
    let sent = py.detach(move || -> std::io::Result<bool> {
        start
            .stream
            .responded
            .store(true, std::sync::atomic::Ordering::Release);
        start.stream.write_all(&mut [IoSlice::new(&start.head)])?;
        let mut offset = i64::try_from(pos).unwrap_or(i64::MAX);
        let mut left = start.send;
        while left > 0 {
            let want = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(SENDFILE_BLOCK);
            match nix::sys::sendfile::sendfile(&start.stream.sock, &file, Some(&mut offset), want) {
                // The file shrank under us: the announced length cannot be met.
                Ok(0) => return Ok(false),
                Ok(n) => left -= n as u64,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(!start.short)
    });
    match sent {
        Ok(true) => Ok(true),
        Ok(false) => {
            sr.abort();
            Ok(true)
        }
        Err(e) => {
            sr.abort();
            Err(ClientDisconnected::new_err(format!(
                "the client went away: {e}"
            )))
        }
    }
}
