//! RFC 6455 framing for one WebSocket, sans I/O: `tungstenite`'s protocol
//! state machine over an in-memory stream. The event loop hands it the
//! bytes it read ([`WsCodec::feed`]) and writes what it produced
//! ([`WsCodec::take_output`]).
//!
//! Why tungstenite: it is the well-kept Rust implementation (masking rules,
//! fragmentation with control frames between fragments, ping → pong, the
//! close handshake, UTF-8 validation of text, size limits) and it runs over
//! any `Read + Write`, so the loop's own sockets need no second I/O layer.
//!
//! Invariants: the input buffer holds at most what one `feed` brought (the
//! loop stops reading while the app is behind, so a peer cannot grow it);
//! a message over `max_message` closes with 1009, invalid UTF-8 in text
//! with 1007, any other protocol violation with 1002; every close the codec
//! makes is in the output before `feed` returns.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};
use tungstenite::error::{CapacityError, Error};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tungstenite::Message;

/// Buffers larger than this are freed once empty (a big message passed).
const KEEP: usize = 64 << 10;

/// The codec's eager read buffer, and the most it takes from the input per
/// step (see [`WsCodec::new`]).
const READ_STEP: usize = 64;

/// Bytes in (what the peer sent, not yet parsed) and out (frames to write).
#[derive(Default)]
struct Mem {
    input: VecDeque<u8>,
    output: Vec<u8>,
}

impl Read for Mem {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.input.read(buf)
    }
}

impl Write for Mem {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One open WebSocket's framing (server role).
#[pyclass(unsendable, module = "polyhost")]
pub struct WsCodec {
    ws: WebSocket<Mem>,
    /// When the peer last sent anything (a field here, not a float object
    /// per WebSocket on the Python side).
    last_seen: Instant,
}

fn close_frame(code: u16, reason: &str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    }
}

#[pymethods]
impl WsCodec {
    #[new]
    fn new(max_message: usize) -> Self {
        // Small eager buffers: 10,000 idle WebSockets must stay cheap (the
        // defaults allocate 128 KiB each up front; 1 KiB was 10 MiB for
        // 10,000, 256 B 2.7 MiB). The read buffer still grows to a frame's
        // length once its header is read, so a large message is read whole;
        // 64 B is only the most it copies per step from what the loop fed
        // (a 64-byte message and its header: two steps; a step is a copy
        // within memory, ~1.5 GB/s). Frames are handed over at once
        // (`write_buffer_size` 0) and written by the loop.
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_STEP)
            .write_buffer_size(0)
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message));
        Self {
            ws: WebSocket::from_raw_socket(Mem::default(), Role::Server, Some(config)),
            last_seen: Instant::now(),
        }
    }

    /// Parses `data`; returns the events, in order: `("text", str)`,
    /// `("bytes", bytes)`, `("pong",)`, `("close", code, reason)` (the peer
    /// closed; the answer is queued) or `("error", code, reason)` (the codec
    /// closed with `code`).
    fn feed<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
        self.last_seen = Instant::now();
        self.ws.get_mut().input.extend(data);
        let events = PyList::empty(py);
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => events.append(("text", PyString::new(py, t.as_str())))?,
                Ok(Message::Binary(b)) => events.append(("bytes", PyBytes::new(py, &b)))?,
                Ok(Message::Pong(_)) => events.append(("pong",))?,
                Ok(Message::Ping(_)) | Ok(Message::Frame(_)) => {}
                Ok(Message::Close(frame)) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                        .unwrap_or((1005, String::new()));
                    let _ = self.ws.flush();
                    events.append(("close", code, reason))?;
                    break;
                }
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = self.ws.flush();
                    break;
                }
                Err(Error::ConnectionClosed) | Err(Error::AlreadyClosed) => break,
                Err(e) => {
                    let (code, reason) = match e {
                        Error::Capacity(CapacityError::MessageTooLong { .. }) => {
                            (1009, "message too big")
                        }
                        Error::Capacity(_) => (1009, "too big"),
                        Error::Utf8(_) => (1007, "invalid UTF-8 in a text message"),
                        _ => (1002, "protocol error"),
                    };
                    let _ = self.ws.close(Some(close_frame(code, reason)));
                    let _ = self.ws.flush();
                    events.append(("error", code, reason))?;
                    break;
                }
            }
        }
        let input = &mut self.ws.get_mut().input;
        if input.is_empty() && input.capacity() > KEEP {
            *input = VecDeque::new();
        }
        Ok(events)
    }

    /// Queues a text (`str`) or binary (`bytes`) message.
    fn send(&mut self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let msg = if let Ok(s) = data.cast::<PyString>() {
            Message::text(s.to_cow()?.into_owned())
        } else if let Ok(b) = data.cast::<PyBytes>() {
            Message::binary(b.as_bytes().to_vec())
        } else {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "websocket.send needs `bytes` (bytes) or `text` (str)",
            ));
        };
        self.ws
            .send(msg)
            .map_err(|e| crate::errors::ClientDisconnected::new_err(e.to_string()))
    }

    /// Seconds since the peer last sent anything (or since the accept).
    fn idle(&self) -> f64 {
        self.last_seen.elapsed().as_secs_f64()
    }

    fn ping(&mut self) {
        let _ = self.ws.send(Message::Ping(Default::default()));
    }

    /// Starts the close handshake with `code` (no-op once closing).
    fn close(&mut self, code: u16, reason: &str) {
        let _ = self.ws.close(Some(close_frame(code, reason)));
        let _ = self.ws.flush();
    }

    /// The bytes to write, taken out of the codec.
    fn take_output<'py>(&mut self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        let out = &mut self.ws.get_mut().output;
        if out.is_empty() {
            return None;
        }
        let bytes = PyBytes::new(py, out);
        if out.capacity() > KEEP {
            *out = Vec::new();
        } else {
            out.clear();
        }
        Some(bytes)
    }
}
