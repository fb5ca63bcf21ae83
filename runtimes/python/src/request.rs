//! One request on a Python thread: build the environ, call the app, drive its
//! iterable into the response, always call `close()`, and turn any failure into
//! a 500 (or an aborted stream) with one traceback in the error log.

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::Method;
use hyper::body::Incoming;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::environ;
use crate::errors::log_app_error;
use crate::file_wrapper::{self, FileWrapper};
use crate::input::Input;
use crate::response::{type_name, Head, StartResponse};

/// What every request of this process shares.
pub struct AppContext {
    pub app: Py<PyAny>,
    pub template: Py<PyDict>,
    pub handle: Handle,
    pub site: Option<String>,
}

/// Serves one request; the head (and body channel) goes out through `head_tx`.
pub fn run(
    py: Python<'_>,
    ctx: &AppContext,
    parts: Parts,
    body: Incoming,
    head_tx: oneshot::Sender<Head>,
) {
    let head_request = parts.method == Method::HEAD;
    let sr = match Bound::new(py, StartResponse::new(head_tx, head_request)) {
        Ok(sr) => sr,
        Err(e) => {
            return log_app_error(
                py,
                ctx.site.as_deref(),
                parts.method.as_str(),
                &parts.uri.to_string(),
                e,
            )
        }
    };
    let log = |e: PyErr| {
        log_app_error(
            py,
            ctx.site.as_deref(),
            parts.method.as_str(),
            &parts.uri.to_string(),
            e,
        )
    };
    let input = match Bound::new(py, Input::new(body, ctx.handle.clone())) {
        Ok(input) => input,
        Err(e) => {
            log(e);
            sr.get().fail(py);
            return;
        }
    };
    let called = environ::build(py, &ctx.template, &parts, input.clone())
        .and_then(|env| ctx.app.bind(py).call1((env, &sr)));
    let iterable = match called {
        Ok(it) => it,
        Err(e) => {
            log(e);
            sr.get().fail(py);
            input.get().release();
            return;
        }
    };
    let driven = drive(py, sr.get(), &iterable);
    let closed = close(&iterable);
    match (driven, closed) {
        (Ok(()), Ok(())) => {
            if let Err(e) = sr.get().finish() {
                log(e);
                sr.get().fail(py);
            }
        }
        (Err(e), closed) => {
            log(e);
            if let Err(e) = closed {
                log(e);
            }
            sr.get().fail(py);
        }
        (Ok(()), Err(e)) => {
            log(e);
            sr.get().fail(py);
        }
    }
    input.get().release();
}

fn close(iterable: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = iterable.py();
    let name = pyo3::intern!(py, "close");
    if iterable.hasattr(name)? {
        iterable.call_method0(name)?;
    }
    Ok(())
}

fn as_bytes<'a, 'py>(item: &'a Bound<'py, PyAny>) -> PyResult<&'a Bound<'py, PyBytes>> {
    item.cast::<PyBytes>().map_err(|_| {
        PyTypeError::new_err(format!(
            "the response iterable must yield bytes, not {}",
            type_name(item)
        ))
    })
}

/// Concatenates the bytes of a list or tuple body.
fn join<'py>(items: impl ExactSizeIterator<Item = Bound<'py, PyAny>>) -> PyResult<Bytes> {
    let items: Vec<_> = items.collect();
    if let [one] = items.as_slice() {
        return Ok(Bytes::copy_from_slice(as_bytes(one)?.as_bytes()));
    }
    let mut total = 0;
    for item in &items {
        total += as_bytes(item)?.as_bytes().len();
    }
    let mut buf = BytesMut::with_capacity(total);
    for item in &items {
        buf.extend_from_slice(as_bytes(item)?.as_bytes());
    }
    Ok(buf.freeze())
}

/// Sends the body of the app's iterable.
fn drive(py: Python<'_>, sr: &StartResponse, iterable: &Bound<'_, PyAny>) -> PyResult<()> {
    if let Ok(list) = iterable.cast::<PyList>() {
        return sr.send_full(py, join(list.iter())?);
    }
    if let Ok(tuple) = iterable.cast::<PyTuple>() {
        return sr.send_full(py, join(tuple.iter())?);
    }
    if let Ok(wrapper) = iterable.cast::<FileWrapper>() {
        if file_wrapper::try_fast_path(py, wrapper, sr)? {
            return Ok(());
        }
    }
    for item in iterable.try_iter()? {
        let item = item?;
        sr.send_chunk(py, as_bytes(&item)?.as_bytes())?;
    }
    Ok(())
}
