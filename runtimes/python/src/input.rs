//! `wsgi.input`: a file-like object that streams the request body from hyper
//! chunk by chunk (nothing is buffered beyond the current chunk). While it
//! waits for the next chunk it releases the GIL.

use std::sync::{Mutex, MutexGuard, TryLockError};

use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use tokio::runtime::Handle;

use crate::errors::ClientDisconnected;

/// How much of an unread request body is read and thrown away after the
/// response; past this the connection is closed instead.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

/// The request body as seen by the application.
#[pyclass(frozen, module = "polyhost")]
pub struct Input {
    state: Mutex<State>,
}

struct State {
    /// `None` once the body is exhausted (or failed).
    body: Option<Incoming>,
    /// The unread rest of the current chunk.
    buf: Bytes,
    handle: Handle,
}

impl Input {
    pub fn new(body: Incoming, handle: Handle) -> Self {
        let body = (!body.is_end_stream()).then_some(body);
        Self {
            state: Mutex::new(State {
                body,
                buf: Bytes::new(),
                handle,
            }),
        }
    }

    /// Lets go of the request body once the response is done, even if the app
    /// keeps the environ alive. A body the app did not read is drained on the
    /// tokio side (up to [`DRAIN_LIMIT`]), so the router gets the response and
    /// the connection stays usable instead of being reset.
    pub fn release(&self) {
        let Ok(mut st) = self.state.try_lock() else {
            return;
        };
        st.buf = Bytes::new();
        if let Some(mut body) = st.body.take() {
            st.handle.spawn(async move {
                let mut drained = 0u64;
                while let Some(Ok(frame)) = body.frame().await {
                    if let Some(data) = frame.data_ref() {
                        drained += data.len() as u64;
                        if drained > DRAIN_LIMIT {
                            return;
                        }
                    }
                }
            });
        }
    }

    fn lock(&self) -> PyResult<MutexGuard<'_, State>> {
        match self.state.try_lock() {
            Ok(g) => Ok(g),
            Err(TryLockError::WouldBlock) => Err(PyRuntimeError::new_err(
                "wsgi.input is being read by another thread",
            )),
            Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
        }
    }
}

impl State {
    /// Makes `buf` non-empty; `Ok(false)` at the end of the body.
    fn fill(&mut self, py: Python<'_>) -> PyResult<bool> {
        while self.buf.is_empty() {
            let Some(body) = self.body.as_mut() else {
                return Ok(false);
            };
            let handle = &self.handle;
            let frame = py.detach(|| handle.block_on(body.frame()));
            match frame {
                None => self.body = None,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf = data;
                    }
                }
                Some(Err(e)) => {
                    self.body = None;
                    return Err(ClientDisconnected::new_err(format!(
                        "reading the request body failed: {e}"
                    )));
                }
            }
        }
        Ok(true)
    }

    /// Reads up to `limit` bytes (all with `None`), stopping after a newline
    /// when `line` is set.
    fn read<'py>(
        &mut self,
        py: Python<'py>,
        limit: Option<usize>,
        line: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut want = limit.unwrap_or(usize::MAX);
        if want == 0 || !self.fill(py)? {
            return Ok(PyBytes::new(py, b""));
        }
        // Fast path: the answer lies within the current chunk.
        let end = self.chunk_end(want, line);
        if end.1 || end.0 == want {
            let out = PyBytes::new(py, &self.buf[..end.0]);
            self.buf.advance(end.0);
            return Ok(out);
        }
        let mut out = Vec::with_capacity(want.min(256 * 1024).max(self.buf.len()));
        loop {
            let (n, done) = self.chunk_end(want, line);
            out.extend_from_slice(&self.buf[..n]);
            self.buf.advance(n);
            want -= n;
            if done || want == 0 || !self.fill(py)? {
                break;
            }
        }
        Ok(PyBytes::new(py, &out))
    }

    /// How much of `buf` to take, and whether a newline ends the read there.
    fn chunk_end(&self, want: usize, line: bool) -> (usize, bool) {
        let n = self.buf.len().min(want);
        if line {
            if let Some(i) = self.buf[..n].iter().position(|&b| b == b'\n') {
                return (i + 1, true);
            }
        }
        (n, false)
    }
}

/// Python's size convention: `None` or negative means "no limit".
fn limit(size: Option<isize>) -> Option<usize> {
    size.and_then(|n| usize::try_from(n).ok())
}

#[pymethods]
impl Input {
    #[pyo3(signature = (size=None))]
    fn read<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        self.lock()?.read(py, limit(size), false)
    }

    #[pyo3(signature = (size=None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        self.lock()?.read(py, limit(size), true)
    }

    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(&self, py: Python<'py>, hint: Option<isize>) -> PyResult<Bound<'py, PyList>> {
        let hint = limit(hint).filter(|&h| h > 0);
        let lines = PyList::empty(py);
        let mut total = 0usize;
        let mut st = self.lock()?;
        loop {
            let line = st.read(py, None, true)?;
            let n = line.as_bytes().len();
            if n == 0 {
                break;
            }
            lines.append(line)?;
            total += n;
            if hint.is_some_and(|h| total >= h) {
                break;
            }
        }
        Ok(lines)
    }

    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.lock()?.read(py, None, true)?;
        Ok((!line.as_bytes().is_empty()).then_some(line))
    }
}
