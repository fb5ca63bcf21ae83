//! `wsgi.input`: a file-like object over the request [`Body`]. Bytes already
//! in the connection's buffer are served with the GIL held; reading the
//! socket releases it.
//!
//! Invariants: reads never go past the end of the body; once the request is
//! over, [`Input::take`] hands the body back to the worker and the object
//! reads as empty, even if the app kept the environ.

use std::sync::{Mutex, MutexGuard, TryLockError};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::body::Body;
use crate::errors::ClientDisconnected;

/// The request body as seen by the application.
#[pyclass(frozen, module = "polyhost")]
pub struct Input {
    body: Mutex<Option<Body>>,
}

impl Input {
    pub fn new(body: Body) -> Self {
        Self {
            body: Mutex::new(Some(body)),
        }
    }

    /// Takes the body back once the response is done. `None` if another
    /// thread of the app is reading it right now (the connection is then
    /// not reusable).
    pub fn take(&self) -> Option<Body> {
        match self.body.try_lock() {
            Ok(mut b) => b.take(),
            Err(TryLockError::Poisoned(p)) => p.into_inner().take(),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn lock(&self) -> PyResult<MutexGuard<'_, Option<Body>>> {
        match self.body.try_lock() {
            Ok(g) => Ok(g),
            Err(TryLockError::WouldBlock) => Err(PyRuntimeError::new_err(
                "wsgi.input is being read by another thread",
            )),
            Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
        }
    }
}

/// Makes body bytes available; `Ok(false)` at the end.
fn fill(py: Python<'_>, body: &mut Body) -> PyResult<bool> {
    let buffered = body.poll_buffered();
    let more = match buffered {
        Ok(Some(more)) => Ok(more),
        Ok(None) => py.detach(|| body.fill()),
        Err(e) => Err(e),
    };
    more.map_err(|e| ClientDisconnected::new_err(format!("reading the request body failed: {e}")))
}

/// Reads up to `limit` bytes (all with `None`), stopping after a newline
/// when `line` is set.
fn read<'py>(
    py: Python<'py>,
    body: Option<&mut Body>,
    limit: Option<usize>,
    line: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut want = limit.unwrap_or(usize::MAX);
    let Some(body) = body else {
        return Ok(PyBytes::new(py, b""));
    };
    if want == 0 || !fill(py, body)? {
        return Ok(PyBytes::new(py, b""));
    }
    // Fast path: the answer lies within the buffered bytes.
    let (n, done) = take_len(body.available(), want, line);
    if done || n == want {
        let out = PyBytes::new(py, &body.available()[..n]);
        body.consume(n);
        return Ok(out);
    }
    let mut out = Vec::with_capacity(want.min(256 * 1024).max(body.available().len()));
    loop {
        let (n, done) = take_len(body.available(), want, line);
        out.extend_from_slice(&body.available()[..n]);
        body.consume(n);
        want -= n;
        if done || want == 0 || !fill(py, body)? {
            break;
        }
    }
    Ok(PyBytes::new(py, &out))
}

/// How much of `avail` to take, and whether a newline ends the read there.
fn take_len(avail: &[u8], want: usize, line: bool) -> (usize, bool) {
    let n = avail.len().min(want);
    if line {
        if let Some(i) = avail[..n].iter().position(|&b| b == b'\n') {
            return (i + 1, true);
        }
    }
    (n, false)
}

/// Python's size convention: `None` or negative means "no limit".
fn limit(size: Option<isize>) -> Option<usize> {
    size.and_then(|n| usize::try_from(n).ok())
}

#[pymethods]
impl Input {
    #[pyo3(signature = (size=None))]
    fn read<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        read(py, self.lock()?.as_mut(), limit(size), false)
    }

    #[pyo3(signature = (size=None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        read(py, self.lock()?.as_mut(), limit(size), true)
    }

    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(&self, py: Python<'py>, hint: Option<isize>) -> PyResult<Bound<'py, PyList>> {
        let hint = limit(hint).filter(|&h| h > 0);
        let lines = PyList::empty(py);
        let mut total = 0usize;
        let mut body = self.lock()?;
        loop {
            let line = read(py, body.as_mut(), None, true)?;
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
        let line = read(py, self.lock()?.as_mut(), None, true)?;
        Ok((!line.as_bytes().is_empty()).then_some(line))
    }
}
