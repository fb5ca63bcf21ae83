//! The response side of WSGI: `start_response` and `write()` (PEP 3333
//! rules), and the response's way to the socket: streamed chunks are written
//! as they come (GIL released), a list body is handed to the request runner
//! for one write of head and body after the app is done.
//!
//! Invariants: headers go out with the first non-empty body chunk (or at the
//! end of the body), never earlier, so `start_response(..., exc_info)` can
//! still replace them. Once a head is out, the body is framed exactly as
//! announced, or the connection is closed (`Aborted`) so the router sees a
//! broken body. The state lock is never held while taking the GIL.

use std::borrow::Cow;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

use crate::conn::Stream;
use crate::errors::ClientDisconnected;
use crate::wire::{self, FieldError, Framing, Pending};

enum Phase {
    /// Nothing sent yet.
    Open,
    /// The head went out; body bytes follow as framed.
    Streaming {
        framing: Framing,
        declared: u64,
        sent: u64,
    },
    /// Head (and whole body) are left to the runner's final write.
    Committed,
    Ended,
    /// Cut short after the head: the connection must close.
    Aborted,
}

struct State {
    pending: Option<Pending>,
    phase: Phase,
    /// `None` once the request is over.
    stream: Option<Arc<Stream>>,
    head_request: bool,
    http10: bool,
    /// The connection closes after this response.
    close: bool,
    /// Bytes for the runner to write when the app is done.
    out: Vec<u8>,
    /// Bytes of the list body to write after `out`.
    body_len: usize,
}

/// What is left to do on the socket once the app is done.
pub struct End {
    pub out: Vec<u8>,
    pub body_len: usize,
    pub close: bool,
}

/// A failure to send, turned into a Python exception by the caller.
enum SendError {
    NotStarted,
    App(String),
    Gone(Option<io::Error>),
}

impl From<SendError> for PyErr {
    fn from(e: SendError) -> PyErr {
        match e {
            SendError::NotStarted => PyRuntimeError::new_err(
                "the application did not call start_response() before its first body chunk \
                 (or before the end of its body)",
            ),
            SendError::App(msg) => PyValueError::new_err(msg),
            SendError::Gone(Some(e)) => {
                ClientDisconnected::new_err(format!("the client went away: {e}"))
            }
            SendError::Gone(None) => ClientDisconnected::new_err("the client went away"),
        }
    }
}

/// A file body to send after the head: see [`StartResponse::start_file`].
pub struct FileStart {
    pub stream: Arc<Stream>,
    pub head: Vec<u8>,
    /// Bytes of the file to send (0 for HEAD or a bodiless status).
    pub send: u64,
    /// The announced length exceeds what the file holds.
    pub short: bool,
}

/// The `start_response` callable of one request; `write` is its bound method.
#[pyclass(frozen, module = "polyhost")]
pub struct StartResponse {
    state: Mutex<State>,
}

fn length_mismatch(declared: u64, actual: u64) -> SendError {
    SendError::App(format!(
        "Content-Length is {declared} but the body has {actual} bytes"
    ))
}

impl State {
    fn take_pending(&mut self) -> Result<Pending, SendError> {
        self.pending.take().ok_or(SendError::NotStarted)
    }

    /// The framing for a body of `known` bytes (`None`: streamed, unknown).
    fn framing(&mut self, p: &Pending, known: Option<u64>) -> Result<Framing, SendError> {
        let app = p.content_length().map_err(SendError::App)?;
        if p.bodiless() {
            return Ok(Framing::None(if p.status == 304 { app } else { None }));
        }
        let framing = match (app, known) {
            (Some(n), _) => Framing::Length(n),
            (None, Some(n)) => Framing::Length(n),
            (None, None) if self.http10 => Framing::Close,
            (None, None) => Framing::Chunked,
        };
        Ok(match framing {
            Framing::Length(n) if self.head_request => Framing::None(Some(n)),
            _ if self.head_request => Framing::None(None),
            f => f,
        })
    }

    fn encode(&mut self, p: &Pending, framing: Framing, out: &mut Vec<u8>) {
        if framing == Framing::Close {
            self.close = true;
        }
        wire::encode_head(out, p, framing, self.close, self.http10);
    }

    /// Writes one chunk, sending the head first if needed. Runs without the GIL.
    fn stream_chunk(&mut self, data: &[u8]) -> Result<(), SendError> {
        let mut head = Vec::new();
        if let Phase::Open = self.phase {
            let p = self.take_pending()?;
            let framing = self.framing(&p, None)?;
            let declared = match framing {
                Framing::Length(n) => n,
                _ => 0,
            };
            self.encode(&p, framing, &mut head);
            self.phase = Phase::Streaming {
                framing,
                declared,
                sent: 0,
            };
        }
        let Phase::Streaming {
            framing,
            declared,
            sent,
        } = &mut self.phase
        else {
            return Err(SendError::Gone(None));
        };
        let prefix = wire::chunk_prefix(data.len());
        let mut parts = [
            IoSlice::new(&head),
            IoSlice::new(&[]),
            IoSlice::new(&[]),
            IoSlice::new(&[]),
        ];
        match *framing {
            Framing::Length(_) => {
                // A longer body is cut to the announced length.
                let room = usize::try_from(*declared - *sent).unwrap_or(usize::MAX);
                let take = data.len().min(room);
                parts[1] = IoSlice::new(&data[..take]);
                *sent += take as u64;
            }
            Framing::Chunked => {
                parts[1] = IoSlice::new(prefix.as_bytes());
                parts[2] = IoSlice::new(data);
                parts[3] = IoSlice::new(wire::CHUNK_END);
            }
            Framing::Close => parts[1] = IoSlice::new(data),
            Framing::None(_) => {}
        }
        if parts.iter().all(|p| p.is_empty()) {
            return Ok(());
        }
        let Some(stream) = &self.stream else {
            return Err(SendError::Gone(None));
        };
        stream.responded.store(true, Ordering::Release);
        stream.write_all(&mut parts).map_err(|e| {
            self.phase = Phase::Aborted;
            SendError::Gone(Some(e))
        })
    }
}

impl StartResponse {
    /// `close`: the connection closes after this response, whatever the app does.
    pub fn new(stream: Arc<Stream>, head_request: bool, http10: bool, close: bool) -> Self {
        Self {
            state: Mutex::new(State {
                pending: None,
                phase: Phase::Open,
                stream: Some(stream),
                head_request,
                http10,
                close,
                out: Vec::new(),
                body_len: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one body chunk (the GIL released), with the headers first if
    /// needed. Empty chunks send nothing (and do not trigger the headers).
    pub fn send_chunk(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        py.detach(|| self.lock().stream_chunk(data))
            .map_err(PyErr::from)
    }

    /// A whole body (a list or tuple response). If nothing was sent yet, the
    /// head is prepared for one write of head and body by the runner and this
    /// returns `Ok(true)`; the runner then writes the first
    /// [`End::body_len`] bytes of `items`. Otherwise the items are streamed.
    pub fn send_full(&self, py: Python<'_>, items: &[&[u8]]) -> PyResult<bool> {
        {
            let mut st = self.lock();
            if let Phase::Open = st.phase {
                let total: u64 = items.iter().map(|i| i.len() as u64).sum();
                let p = st.take_pending()?;
                let framing = st.framing(&p, Some(total))?;
                let body_len = match framing {
                    Framing::Length(n) if n > total => return Err(length_mismatch(n, total).into()),
                    // A longer body is cut to the app's Content-Length.
                    Framing::Length(n) => n,
                    // HEAD announces the app's length, whatever the body.
                    _ => 0,
                };
                let mut out = std::mem::take(&mut st.out);
                st.encode(&p, framing, &mut out);
                st.out = out;
                st.body_len = body_len as usize;
                st.phase = Phase::Committed;
                return Ok(true);
            }
        }
        for item in items {
            self.send_chunk(py, item)?;
        }
        Ok(false)
    }

    /// Prepares the head for a file body of `remaining` bytes (the app's
    /// Content-Length, if any, wins). `None` if the response is already
    /// streaming: then the file goes as ordinary chunks.
    pub fn start_file(&self, remaining: u64) -> PyResult<Option<FileStart>> {
        let mut st = self.lock();
        match st.phase {
            Phase::Open => {}
            Phase::Streaming { .. } => return Ok(None),
            _ => return Err(SendError::Gone(None).into()),
        }
        let p = st.take_pending()?;
        let framing = st.framing(&p, Some(remaining))?;
        let (send, short) = match framing {
            Framing::Length(n) => (n.min(remaining), n > remaining),
            _ => (0, false),
        };
        let mut head = Vec::with_capacity(256);
        st.encode(&p, framing, &mut head);
        let Some(stream) = st.stream.clone() else {
            return Err(SendError::Gone(None).into());
        };
        st.phase = if short { Phase::Aborted } else { Phase::Ended };
        Ok(Some(FileStart {
            stream,
            head,
            send,
            short,
        }))
    }

    /// Marks a file body as cut short (the connection closes).
    pub fn abort(&self) {
        self.lock().phase = Phase::Aborted;
    }

    /// Ends the response normally: prepares the head if no chunk sent it,
    /// or the end of a chunked body.
    pub fn finish(&self) -> PyResult<()> {
        let mut st = self.lock();
        match st.phase {
            Phase::Open => {
                let p = st.take_pending()?;
                let framing = st.framing(&p, Some(0))?;
                if let Framing::Length(n) = framing {
                    if n > 0 {
                        return Err(length_mismatch(n, 0).into());
                    }
                }
                let mut out = std::mem::take(&mut st.out);
                st.encode(&p, framing, &mut out);
                st.out = out;
                st.phase = Phase::Ended;
            }
            Phase::Streaming {
                framing,
                declared,
                sent,
            } => {
                match framing {
                    Framing::Chunked => st.out.extend_from_slice(wire::LAST_CHUNK),
                    Framing::Length(_) if sent < declared => {
                        return Err(length_mismatch(declared, sent).into())
                    }
                    _ => {}
                }
                st.phase = Phase::Ended;
            }
            Phase::Committed | Phase::Ended | Phase::Aborted => {}
        }
        Ok(())
    }

    /// Ends the response after an error: a 500 if nothing was sent, else the
    /// connection is closed mid-body.
    pub fn fail(&self) {
        let mut st = self.lock();
        match st.phase {
            Phase::Open => {
                st.pending = None;
                let close = st.close;
                st.out = wire::error_page(500, close);
                st.phase = Phase::Ended;
            }
            Phase::Streaming { .. } => st.phase = Phase::Aborted,
            Phase::Committed | Phase::Ended | Phase::Aborted => {}
        }
    }

    /// Ends the request: the app's `write` can no longer reach the socket.
    pub fn end(&self) -> End {
        let mut st = self.lock();
        st.stream = None;
        let close = st.close || matches!(st.phase, Phase::Aborted | Phase::Open);
        if !matches!(st.phase, Phase::Aborted) {
            st.phase = Phase::Ended;
        }
        End {
            out: std::mem::take(&mut st.out),
            body_len: st.body_len,
            close,
        }
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
            let st = slf.get().lock();
            let sent = !matches!(st.phase, Phase::Open);
            match exc_info {
                Some(info) if sent => {
                    // PEP 3333: headers already sent, so re-raise the original exception.
                    let value = info.cast::<PyTuple>()?.get_item(1)?;
                    return Err(PyErr::from_value(value));
                }
                Some(_) => {}
                None if sent || st.pending.is_some() => {
                    return Err(PyRuntimeError::new_err(
                        "start_response() called a second time without exc_info",
                    ));
                }
                None => {}
            }
        }
        let pending = parse_start(status, headers)?;
        slf.get().lock().pending = Some(pending);
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
        {
            let st = self.lock();
            if st.pending.is_none() && matches!(st.phase, Phase::Open) {
                return Err(PyRuntimeError::new_err(
                    "write() called before start_response()",
                ));
            }
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
/// ASCII text (nearly all) is borrowed, not copied.
fn latin1<'a>(s: &'a Bound<'_, PyString>, what: &str) -> PyResult<Cow<'a, [u8]>> {
    if let Ok(text) = s.to_str() {
        if text.is_ascii() {
            return Ok(Cow::Borrowed(text.as_bytes()));
        }
    }
    let s = s.to_cow()?;
    s.chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect::<Option<Vec<u8>>>()
        .map(Cow::Owned)
        .ok_or_else(|| PyValueError::new_err(format!("{what} {s:?} is not latin-1")))
}

fn parse_start(status: &Bound<'_, PyAny>, headers: &Bound<'_, PyAny>) -> PyResult<Pending> {
    let s = status.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!("status must be a str, not {}", type_name(status)))
    })?;
    let raw = latin1(s, "status")?;
    let (status, reason) = wire::parse_status_line(&raw).ok_or_else(|| {
        PyValueError::new_err(format!(
            "invalid status {:?}: expected e.g. \"200 OK\"",
            String::from_utf8_lossy(&raw)
        ))
    })?;
    if status < 200 {
        // An interim response would leave the router waiting for the final
        // one, which WSGI has no way to send: refused here, a 500 at once.
        return Err(PyValueError::new_err(format!(
            "status {:?} is informational (1xx): a WSGI application answers with a final status (200-599)",
            String::from_utf8_lossy(&raw)
        )));
    }
    let mut p = Pending {
        status,
        reason,
        lines: Vec::with_capacity(128),
        lengths: Vec::new(),
    };
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
        let name = latin1(name, "header name")?;
        let value = latin1(value, "header value")?;
        wire::add_field(&mut p, &name, &value).map_err(|e| match e {
            FieldError::Name => PyValueError::new_err(format!(
                "invalid header name {:?}",
                String::from_utf8_lossy(&name)
            )),
            FieldError::Value => PyValueError::new_err(format!(
                "invalid value for header {}",
                String::from_utf8_lossy(&name)
            )),
        })?;
    }
    Ok(p)
}
