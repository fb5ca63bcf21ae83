//! The bytes the ASGI server writes that are not body: response heads
//! (checked by [`crate::wire`], the same checks as WSGI's), the `101` of a
//! WebSocket handshake, and the worker's own small pages.
//!
//! Invariants: nothing the app passes reaches the wire unchecked (a bad
//! status or field raises `ValueError` in the app's `send`); the framing
//! is the worker's: the app's `Content-Length` is honoured only when it is
//! valid, a body without one is sent whole with a computed length when it
//! comes in one message, chunked otherwise (close-delimited for HTTP/1.0).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::wire::{self, FieldError, Framing, Pending};

/// How the body after a head is written (the second item of [`response_head`]).
pub const MODE_LENGTH: u8 = 0;
pub const MODE_CHUNKED: u8 = 1;
pub const MODE_NONE: u8 = 2;
pub const MODE_CLOSE: u8 = 3;

fn pending(status: u16, headers: &Bound<'_, PyAny>) -> PyResult<Pending> {
    let mut p = Pending {
        status,
        reason: None,
        lines: Vec::new(),
        lengths: Vec::new(),
    };
    for item in headers.try_iter()? {
        let item = item?;
        let (name, value): (Vec<u8>, Vec<u8>) = item.extract().map_err(|_| {
            PyValueError::new_err("ASGI headers must be an iterable of [name, value] byte strings")
        })?;
        wire::add_field(&mut p, &name, &value).map_err(|e| {
            let which = match e {
                FieldError::Name => "name",
                FieldError::Value => "value",
            };
            PyValueError::new_err(format!(
                "invalid header {which} in {:?}: {:?}",
                String::from_utf8_lossy(&name),
                String::from_utf8_lossy(&value)
            ))
        })?;
    }
    Ok(p)
}

/// The head of a response: `(head, mode, keep_alive)`.
///
/// `first_len` is the length of the first body message, `more_body` whether
/// others follow; `trailers`: the app announced `http.response.trailers`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn response_head<'py>(
    py: Python<'py>,
    status: u16,
    headers: &Bound<'py, PyAny>,
    head_request: bool,
    http10: bool,
    keep_alive: bool,
    more_body: bool,
    first_len: usize,
    trailers: bool,
) -> PyResult<Bound<'py, PyTuple>> {
    if !(200..=599).contains(&status) {
        return Err(PyValueError::new_err(format!(
            "invalid status {status} in http.response.start (200 to 599)"
        )));
    }
    let p = pending(status, headers)?;
    let length = p.content_length().map_err(PyValueError::new_err)?;
    let mut keep_alive = keep_alive;
    let (framing, mode) = if p.bodiless() || head_request {
        // HEAD announces the length a GET would have had, when it is known.
        let would_be = length.or((!more_body).then_some(first_len as u64));
        (Framing::None(would_be.filter(|_| head_request)), MODE_NONE)
    } else if trailers && !http10 {
        (Framing::Chunked, MODE_CHUNKED)
    } else if let Some(n) = length {
        (Framing::Length(n), MODE_LENGTH)
    } else if !more_body {
        (Framing::Length(first_len as u64), MODE_LENGTH)
    } else if http10 {
        keep_alive = false;
        (Framing::Close, MODE_CLOSE)
    } else {
        (Framing::Chunked, MODE_CHUNKED)
    };
    let mut out = Vec::with_capacity(128 + p.lines.len());
    wire::encode_head(&mut out, &p, framing, !keep_alive, http10);
    (PyBytes::new(py, &out), mode, keep_alive).into_pyobject(py)
}

/// Trailer fields after the last chunk (`0\r\n` included).
#[pyfunction]
pub fn trailers<'py>(py: Python<'py>, headers: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let p = pending(200, headers)?;
    let mut out = b"0\r\n".to_vec();
    out.extend_from_slice(&p.lines);
    out.extend_from_slice(b"\r\n");
    Ok(PyBytes::new(py, &out))
}

/// The `101 Switching Protocols` answer to a handshake with `key`.
#[pyfunction]
#[pyo3(signature = (key, subprotocol, headers))]
pub fn ws_accept_head<'py>(
    py: Python<'py>,
    key: &[u8],
    subprotocol: Option<&str>,
    headers: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut p = pending(101, headers)?;
    if let Some(s) = subprotocol {
        wire::add_field(&mut p, b"sec-websocket-protocol", s.as_bytes())
            .map_err(|_| PyValueError::new_err(format!("invalid subprotocol {s:?}")))?;
    }
    let accept = tungstenite::handshake::derive_accept_key(key);
    let mut out = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ".to_vec();
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&p.lines);
    out.extend_from_slice(b"\r\n");
    Ok(PyBytes::new(py, &out))
}

/// A whole `text/plain` page made by the worker (500, 503, 504, 403, 400).
#[pyfunction]
pub fn simple_response<'py>(
    py: Python<'py>,
    status: u16,
    text: &str,
    close: bool,
) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &wire::simple_response(status, text, close))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_is_rfc6455s_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            tungstenite::handshake::derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
