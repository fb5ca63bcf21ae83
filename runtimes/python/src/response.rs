//! The response side of WSGI: `start_response` and `write()` (PEP 3333 rules),
//! the head handed back to tokio, and the body that hyper streams to the router.
//!
//! Headers are sent with the first non-empty body chunk (or at the end of the
//! body), never earlier, so `start_response(..., exc_info)` can still replace them.

use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use http::{HeaderMap, StatusCode};
use hyper::body::{Frame, SizeHint};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};
use tokio::sync::{mpsc, oneshot};

use crate::errors::ClientDisconnected;

/// Chunks in flight between a Python thread and hyper before the thread waits.
const STREAM_DEPTH: usize = 8;

/// The stream was cut short (the app failed after the headers went out).
#[derive(Debug, thiserror::Error)]
#[error("the application failed after the response headers were sent")]
pub struct Aborted;

/// The sending half of a streamed body.
pub type BodySender = mpsc::Sender<Result<Bytes, Aborted>>;

/// Status line and headers, with the body that follows them.
pub struct Head {
    pub status: StatusCode,
    /// Only when the app's reason phrase differs from the standard one.
    pub reason: Option<hyper::ext::ReasonPhrase>,
    pub headers: HeaderMap,
    pub body: WorkerBody,
}

impl Head {
    pub fn into_response(self) -> http::Response<WorkerBody> {
        let mut resp = http::Response::new(self.body);
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        if let Some(r) = self.reason {
            resp.extensions_mut().insert(r);
        }
        resp
    }

    /// The response for a failure before the app's headers went out.
    pub fn error(status: StatusCode) -> Self {
        let text = status.canonical_reason().unwrap_or("Error");
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Self {
            status,
            reason: None,
            headers,
            body: WorkerBody::Full(Some(Bytes::from(format!("{text}\n")))),
        }
    }
}

/// A response body: nothing, one buffer, or chunks streamed from a Python thread.
pub enum WorkerBody {
    Empty,
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Result<Bytes, Aborted>>),
}

impl hyper::body::Body for WorkerBody {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        match self.get_mut() {
            WorkerBody::Empty => Poll::Ready(None),
            WorkerBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            WorkerBody::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            WorkerBody::Empty | WorkerBody::Full(None) => true,
            WorkerBody::Full(Some(b)) => b.is_empty(),
            WorkerBody::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            WorkerBody::Empty | WorkerBody::Full(None) => SizeHint::with_exact(0),
            WorkerBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            WorkerBody::Stream(_) => SizeHint::default(),
        }
    }
}

/// What `start_response` recorded and has not yet sent.
struct Pending {
    status: StatusCode,
    reason: Option<hyper::ext::ReasonPhrase>,
    headers: HeaderMap,
}

struct State {
    pending: Option<Pending>,
    /// The head went to tokio (or the request is gone).
    sent: bool,
    head_tx: Option<oneshot::Sender<Head>>,
    body_tx: Option<BodySender>,
    head_request: bool,
}

/// The `start_response` callable of one request; `write` is its bound method.
#[pyclass(frozen, module = "polyhost")]
pub struct StartResponse {
    state: Mutex<State>,
}

impl StartResponse {
    pub fn new(head_tx: oneshot::Sender<Head>, head_request: bool) -> Self {
        Self {
            state: Mutex::new(State {
                pending: None,
                sent: false,
                head_tx: Some(head_tx),
                body_tx: None,
                head_request,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one body chunk, sending the headers first if needed.
    /// Empty chunks send nothing (and do not trigger the headers).
    pub fn send_chunk(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        let tx = {
            let mut st = self.lock();
            if !st.sent {
                st.start_stream(None)?;
            }
            if st.head_request {
                return Ok(());
            }
            match &st.body_tx {
                Some(tx) => tx.clone(),
                None => return Err(ClientDisconnected::new_err("the client went away")),
            }
        };
        let chunk = Bytes::copy_from_slice(data);
        py.detach(|| tx.blocking_send(Ok(chunk)))
            .map_err(|_| ClientDisconnected::new_err("the client went away"))
    }

    /// Sends a whole body at once (a list or tuple response): one write with a
    /// Content-Length when nothing was streamed yet.
    pub fn send_full(&self, py: Python<'_>, body: Bytes) -> PyResult<()> {
        {
            let mut st = self.lock();
            if !st.sent {
                let p = st.take_pending()?;
                return st.send_head(p, WorkerBody::Full(Some(body)));
            }
        }
        self.send_chunk(py, &body)
    }

    /// Sends the headers for a body that will be streamed, with
    /// `Content-Length: fallback_len` if the app set none. Returns the channel
    /// for the chunks (`None` for HEAD or a vanished client) and the app's
    /// Content-Length, if any.
    pub fn start_file(&self, fallback_len: u64) -> PyResult<(Option<BodySender>, Option<u64>)> {
        let mut st = self.lock();
        if st.sent {
            return Ok((st.body_tx.clone(), None));
        }
        let app_len = st.pending.as_ref().and_then(|p| {
            p.headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        st.start_stream(Some(fallback_len))?;
        let tx = if st.head_request {
            None
        } else {
            st.body_tx.clone()
        };
        Ok((tx, app_len))
    }

    /// Ends the response normally: sends the headers if no chunk did, closes the stream.
    pub fn finish(&self) -> PyResult<()> {
        let mut st = self.lock();
        if !st.sent {
            let p = st.take_pending()?;
            st.send_head(p, WorkerBody::Empty)?;
        }
        st.body_tx = None;
        Ok(())
    }

    /// Ends the response after an error: a 500 if nothing was sent, else an
    /// aborted stream (the abort waits for room in the channel: a stream that
    /// just ended would look complete to the router).
    pub fn fail(&self, py: Python<'_>) {
        let tx = {
            let mut st = self.lock();
            if !st.sent {
                st.sent = true;
                if let Some(tx) = st.head_tx.take() {
                    let _ = tx.send(Head::error(StatusCode::INTERNAL_SERVER_ERROR));
                }
                return;
            }
            st.body_tx.take()
        };
        if let Some(tx) = tx {
            let _ = py.detach(|| tx.blocking_send(Err(Aborted)));
        }
    }
}

impl State {
    fn take_pending(&mut self) -> PyResult<Pending> {
        self.pending.take().ok_or_else(|| {
            PyRuntimeError::new_err(
                "the application did not call start_response() before its first body chunk \
                 (or before the end of its body)",
            )
        })
    }

    /// Sends the head with a streamed body (`Content-Length: len` unless set).
    fn start_stream(&mut self, len: Option<u64>) -> PyResult<()> {
        let mut p = self.take_pending()?;
        if let Some(len) = len {
            if !p.headers.contains_key(CONTENT_LENGTH) {
                p.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
            }
        }
        let body = if self.head_request {
            WorkerBody::Empty
        } else {
            let (tx, rx) = mpsc::channel(STREAM_DEPTH);
            self.body_tx = Some(tx);
            WorkerBody::Stream(rx)
        };
        self.send_head(p, body)
    }

    fn send_head(&mut self, mut p: Pending, body: WorkerBody) -> PyResult<()> {
        self.sent = true;
        let body = match body {
            WorkerBody::Full(Some(b)) => WorkerBody::Full(Some(fit_length(&mut p.headers, b)?)),
            b => b,
        };
        let head = Head {
            status: p.status,
            reason: p.reason,
            headers: p.headers,
            body,
        };
        let delivered = self.head_tx.take().is_some_and(|tx| tx.send(head).is_ok());
        match delivered {
            true => Ok(()),
            false => {
                self.body_tx = None;
                Err(ClientDisconnected::new_err("the client went away"))
            }
        }
    }
}

/// Makes a whole body and the app's Content-Length agree (hyper frames the
/// response by the body's length): a longer body is cut to the header, a
/// shorter one is an error of the app.
fn fit_length(headers: &mut HeaderMap, body: Bytes) -> PyResult<Bytes> {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let Some(value) = values.next() else {
        return Ok(body);
    };
    if values.next().is_some() {
        return Err(PyValueError::new_err("more than one Content-Length header"));
    }
    let declared = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok());
    match declared {
        Some(n) if n == body.len() => Ok(body),
        Some(n) if n < body.len() => Ok(body.slice(..n)),
        _ => Err(PyValueError::new_err(format!(
            "Content-Length is {value:?} but the body has {} bytes",
            body.len()
        ))),
    }
}

#[pymethods]
impl StartResponse {
    /// `start_response(status, response_headers, exc_info=None)` → `write`.
    #[pyo3(signature = (status, headers, exc_info=None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let exc_info = exc_info.filter(|e| !e.is_none());
        {
            let this = slf.get();
            let st = this.lock();
            match exc_info {
                Some(info) if st.sent => {
                    // PEP 3333: headers already sent, so re-raise the original exception.
                    let value = info.cast::<PyTuple>()?.get_item(1)?;
                    return Err(PyErr::from_value(value));
                }
                Some(_) => {}
                None if st.sent || st.pending.is_some() => {
                    return Err(PyRuntimeError::new_err(
                        "start_response() called a second time without exc_info",
                    ));
                }
                None => {}
            }
        }
        let (status, reason) = parse_status(status)?;
        let headers = parse_headers(headers)?;
        slf.get().lock().pending = Some(Pending {
            status,
            reason,
            headers,
        });
        slf.getattr(pyo3::intern!(slf.py(), "write"))
    }

    /// The legacy `write(data)` callable: sends `data` at once.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = data.cast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err(format!(
                "write() argument must be bytes, not {}",
                type_name(data)
            ))
        })?;
        if self.lock().pending.is_none() && !self.lock().sent {
            return Err(PyRuntimeError::new_err(
                "write() called before start_response()",
            ));
        }
        self.send_chunk(py, data.as_bytes())
    }
}

pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A str's bytes as latin-1 (PEP 3333 "native strings"), or a ValueError.
fn latin1(s: &Bound<'_, PyString>, what: &str) -> PyResult<Vec<u8>> {
    let s = s.to_cow()?;
    s.chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| PyValueError::new_err(format!("{what} {s:?} is not latin-1")))
}

fn parse_status(
    status: &Bound<'_, PyAny>,
) -> PyResult<(StatusCode, Option<hyper::ext::ReasonPhrase>)> {
    let s = status.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!("status must be a str, not {}", type_name(status)))
    })?;
    let raw = latin1(s, "status")?;
    parse_status_line(&raw).ok_or_else(|| {
        PyValueError::new_err(format!(
            "invalid status {:?}: expected e.g. \"200 OK\"",
            String::from_utf8_lossy(&raw)
        ))
    })
}

/// `NNN` or `NNN reason`; the reason is kept only when it is not the standard one.
fn parse_status_line(raw: &[u8]) -> Option<(StatusCode, Option<hyper::ext::ReasonPhrase>)> {
    let (code, rest) = raw.split_at(raw.len().min(3));
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = StatusCode::from_bytes(code).ok()?;
    let reason = match rest {
        [] => None,
        [b' ', reason @ ..] => {
            if status.canonical_reason().map(str::as_bytes) == Some(reason) {
                None
            } else {
                Some(hyper::ext::ReasonPhrase::try_from(reason.to_vec()).ok()?)
            }
        }
        _ => return None,
    };
    Some((status, reason))
}

/// Hop-by-hop headers belong to the connection, which hyper owns.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "transfer-encoding"
    )
}

fn parse_headers(headers: &Bound<'_, PyAny>) -> PyResult<HeaderMap> {
    let mut map = HeaderMap::new();
    for item in headers.try_iter()? {
        let item = item?;
        let pair = item.cast::<PyTuple>().map_err(|_| {
            PyTypeError::new_err(format!(
                "response headers must be (name, value) tuples, not {}",
                type_name(&item)
            ))
        })?;
        if pair.len() != 2 {
            return Err(PyValueError::new_err(
                "response headers must be (name, value) tuples of two str",
            ));
        }
        let (name, value) = (pair.get_item(0)?, pair.get_item(1)?);
        let (Ok(name), Ok(value)) = (name.cast::<PyString>(), value.cast::<PyString>()) else {
            return Err(PyTypeError::new_err(
                "response header names and values must be str",
            ));
        };
        let name_b = latin1(name, "header name")?;
        let name = HeaderName::from_bytes(&name_b).map_err(|_| {
            PyValueError::new_err(format!(
                "invalid header name {:?}",
                String::from_utf8_lossy(&name_b)
            ))
        })?;
        let value_b = latin1(value, "header value")?;
        let value = HeaderValue::from_bytes(&value_b)
            .map_err(|_| PyValueError::new_err(format!("invalid value for header {name}")))?;
        if !is_hop_by_hop(&name) {
            map.append(name, value);
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let check = |raw: &str, want: Option<(u16, Option<&str>)>| {
            let got = parse_status_line(raw.as_bytes()).map(|(s, r)| {
                (
                    s.as_u16(),
                    r.map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned()),
                )
            });
            let want = want.map(|(s, r)| (s, r.map(str::to_owned)));
            assert_eq!(got, want, "{raw:?}");
        };
        check("200 OK", Some((200, None)));
        check("200", Some((200, None)));
        check("404 Not Found", Some((404, None)));
        check("200 Fine Thanks", Some((200, Some("Fine Thanks"))));
        check("299 Custom", Some((299, Some("Custom"))));
        check("twohundred", None);
        check("20", None);
        check("200OK", None);
        check("099 Low", None);
        check("200 bad\r\nInjected: 1", None);
    }

    #[test]
    fn content_length_fits_the_body() {
        let mut h = HeaderMap::new();
        assert_eq!(
            fit_length(&mut h, Bytes::from_static(b"abc")).unwrap(),
            "abc"
        );
        h.insert(CONTENT_LENGTH, HeaderValue::from(2));
        assert_eq!(
            fit_length(&mut h, Bytes::from_static(b"abc")).unwrap(),
            "ab"
        );
        h.insert(CONTENT_LENGTH, HeaderValue::from(3));
        assert_eq!(
            fit_length(&mut h, Bytes::from_static(b"abc")).unwrap(),
            "abc"
        );
    }
}
