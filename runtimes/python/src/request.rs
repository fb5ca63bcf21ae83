//! One request on a Python thread, with the GIL: build the environ, call the
//! app, drive its iterable into the response, always call `close()`, and
//! turn any failure into a 500 (or a cut connection) with one traceback in
//! the error log. What is left for the socket (the final write, draining an
//! unread body) is returned as a [`Done`], which the server completes with
//! the GIL released.
//!
//! Invariants: the connection's read buffer leaves with the body and comes
//! back with it; if it cannot come back (the app holds `wsgi.input` busy on
//! another thread), the connection is closed, never reused.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::body::Body;
use crate::conn::Conn;
use crate::environ;
use crate::errors::log_app_error;
use crate::file_wrapper::{self, FileWrapper};
use crate::head::RequestHead;
use crate::input::Input;
use crate::response::{type_name, StartResponse};
use crate::wire;

/// What every request of this process shares.
pub struct AppContext {
    pub app: Py<PyAny>,
    pub template: Py<PyDict>,
    pub site: Option<String>,
}

/// A request ready to serve: its head is at the start of the connection's
/// buffer. (The server keeps the connection's in-use count itself.)
pub struct Exchange {
    pub conn: Conn,
    pub head: RequestHead,
}

/// The socket work left once the app is done; runs without the GIL.
pub struct Finish {
    pub conn: Conn,
    /// Written first: a head, a 500 page, or the end of a chunked body.
    pub out: Vec<u8>,
    /// Then this many bytes of the list body.
    pub body_len: usize,
    /// The request body, to drain if the app left some of it.
    pub body: Option<Body>,
    pub close: bool,
}

/// A served request: the socket work, and the app's body bytes it refers to
/// (kept alive until the write is done).
pub struct Done<'py> {
    pub finish: Finish,
    pub items: Vec<Bound<'py, PyBytes>>,
}

/// Serves one request. `stopping`: the worker is draining, so the
/// connection closes after this response.
pub fn run<'py>(py: Python<'py>, ctx: &AppContext, ex: Exchange, stopping: bool) -> Done<'py> {
    let Exchange { mut conn, head } = ex;
    let stream = conn.stream.clone();
    stream
        .responded
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let head_request = &conn.buf.filled()[head.method.clone()] == b"HEAD";
    let close = !head.keep_alive || stopping;
    let env = environ::build(py, &ctx.template, conn.buf.filled(), &head);
    conn.buf.consume(head.len);
    let body = Body::new(
        stream.clone(),
        std::mem::take(&mut conn.buf),
        head.body,
        head.expect_continue && !head.http10,
    );
    let fail = |conn: Conn, body: Option<Body>| Done {
        finish: Finish {
            conn,
            out: wire::error_page(500, true),
            body_len: 0,
            body,
            close: true,
        },
        items: Vec::new(),
    };
    let env = match env {
        Ok(env) => env,
        Err(e) => {
            log_app_error(py, ctx.site.as_deref(), "?", "?", e);
            return fail(conn, Some(body));
        }
    };
    let log = |e: PyErr| {
        let method = env.method.to_cow().unwrap_or_default();
        let uri = env.uri.to_cow().unwrap_or_default();
        log_app_error(py, ctx.site.as_deref(), &method, &uri, e)
    };
    let sr = StartResponse::new(stream, head_request, head.http10, close);
    let (sr, input) = match (Bound::new(py, sr), Bound::new(py, Input::new(body))) {
        (Ok(sr), Ok(input)) => (sr, input),
        (Err(e), _) | (_, Err(e)) => {
            log(e);
            return fail(conn, None);
        }
    };
    let called = environ::set_input(&env.dict, input.clone())
        .and_then(|()| ctx.app.bind(py).call1((&env.dict, &sr)));
    let mut items = Vec::new();
    match called {
        Ok(iterable) => {
            let driven = drive(py, sr.get(), &iterable, &mut items);
            let closed = close_iterable(&iterable);
            let failed = match (driven, closed) {
                (Ok(()), Ok(())) => sr.get().finish().err(),
                (Err(e), Ok(())) | (Ok(()), Err(e)) => Some(e),
                (Err(e), Err(closed)) => {
                    log(e);
                    Some(closed)
                }
            };
            if let Some(e) = failed {
                log(e);
                sr.get().fail();
            }
        }
        Err(e) => {
            log(e);
            sr.get().fail();
        }
    }
    let end = sr.get().end();
    if end.body_len == 0 {
        items.clear();
    }
    Done {
        finish: Finish {
            conn,
            out: end.out,
            body_len: end.body_len,
            body: input.get().take(),
            close: end.close,
        },
        items,
    }
}

fn close_iterable(iterable: &Bound<'_, PyAny>) -> PyResult<()> {
    if iterable.is_exact_instance_of::<PyList>() || iterable.is_exact_instance_of::<PyTuple>() {
        return Ok(()); // nothing to close
    }
    if let Some(close) = iterable.getattr_opt(pyo3::intern!(iterable.py(), "close"))? {
        close.call0()?;
    }
    Ok(())
}

fn as_bytes<'py>(item: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    item.cast_into::<PyBytes>().map_err(|e| {
        PyTypeError::new_err(format!(
            "the response iterable must yield bytes, not {}",
            type_name(e.into_inner().as_any())
        ))
    })
}

/// Sends the body of the app's iterable; a list or tuple body is left in
/// `items` for the final write.
fn drive<'py>(
    py: Python<'py>,
    sr: &StartResponse,
    iterable: &Bound<'py, PyAny>,
    items: &mut Vec<Bound<'py, PyBytes>>,
) -> PyResult<()> {
    let whole = if let Ok(list) = iterable.cast::<PyList>() {
        Some(list.iter().map(as_bytes).collect::<PyResult<Vec<_>>>()?)
    } else if let Ok(tuple) = iterable.cast::<PyTuple>() {
        Some(tuple.iter().map(as_bytes).collect::<PyResult<Vec<_>>>()?)
    } else {
        None
    };
    if let Some(whole) = whole {
        let slices: Vec<&[u8]> = whole.iter().map(|b| b.as_bytes()).collect();
        if sr.send_full(py, &slices)? {
            *items = whole;
        }
        return Ok(());
    }
    if let Ok(wrapper) = iterable.cast::<FileWrapper>() {
        if file_wrapper::try_fast_path(py, wrapper, sr)? {
            return Ok(());
        }
    }
    for item in iterable.try_iter()? {
        let item = as_bytes(item?)?;
        sr.send_chunk(py, item.as_bytes())?;
    }
    Ok(())
}
