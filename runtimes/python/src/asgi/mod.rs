//! ASGI 3.0 (`--interface asgi`): one asyncio event loop in the main
//! thread (uvloop when the site's virtualenv has it) owns the listening
//! socket and every connection; HTTP/1.1 heads are parsed and scopes built
//! in Rust ([`scope`], sharing their immutable parts: [`shared`]), response heads checked and encoded in Rust
//! ([`out`]), WebSocket frames handled by `tungstenite` in Rust ([`ws`]);
//! the connection state machines, `receive`/`send`, lifespan, timeouts and
//! the loop-lag watchdog are the Python in `http.py`, `websocket.py` and `serve.py`, loaded from this
//! binary as the module `polyhost_asgi`.
//!
//! Why the loop owns the sockets (rather than Rust I/O threads that hand
//! requests to the loop with `call_soon_threadsafe`): an ASGI request
//! lives in the loop anyway, so a request read by the loop itself needs no
//! thread hop, no GIL hand-over and no wake-up of the loop, and `receive`
//! completes without suspending when its data is there (a coroutine that
//! does not await costs one frame). Flow control is the loop transport's
//! (`pause_reading`, `pause_writing`): a request body or a WebSocket peer
//! that outruns the app stops being read, and an app that outruns its
//! client waits in `send`. What is CPU-heavy per request (parsing, building
//! the scope, encoding the head, framing) is one Rust call each.
//!
//! Measured (ASGI hello, 2 processes each on one Unix socket, 64 keep-alive
//! connections, 3 interleaved runs, machine shared, load 13-18): per CPU
//! second the servers spent, polyhost 52k requests, granian `--interface
//! asgi` 45k, uvicorn (uvloop + httptools) 40k, i.e. 1.16x granian and
//! 1.29x uvicorn; a perf profile puts 9 % of the worker's time in its Rust,
//! half in the interpreter (the app and the protocol code together). In raw
//! requests/s on that loaded machine granian led (its I/O threads win more
//! CPU share from the scheduler), polyhost 0.85x granian, 1.29x uvicorn.
//! WebSocket echo (64 connections, 64-byte messages): 60k round trips/s,
//! 1.07x granian and 2.2x uvicorn, at a third of granian's CPU.
//! The thread hand-off design would add a wake-up of the loop per batch and
//! a GIL hand-over per request for the same Python work.
//!
//! Invariants: the loop thread is the only one that touches connections;
//! Python holds no socket the Rust side also uses (the listener is handed
//! over as a duplicate descriptor and the original is closed at stop); the
//! socket listens only after lifespan startup succeeded, so a connectable
//! socket still means ready.

pub mod out;
pub mod scope;
pub mod shared;
pub mod ws;

use std::ffi::CString;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyModule, PyTuple};

use crate::cli::{Config, SocketSpec};
use crate::errors::{flush_python_stderr, ClientDisconnected, StartError};
use crate::server::Listener;
use crate::signals::StopSignal;

/// The Python half of the server, one module from three files: HTTP
/// connections and requests, WebSockets, lifespan and the serving loop.
const SERVER_PY: &str = concat!(
    include_str!("http.py"),
    include_str!("websocket.py"),
    include_str!("serve.py")
);

/// Exit status `serve()` in `serve.py` returns when lifespan startup failed.
const LIFESPAN_FAILED: i32 = 3;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn native(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    let m = PyModule::new(py, "polyhost_native")?;
    m.add_class::<scope::ScopeTemplate>()?;
    m.add_class::<ws::WsCodec>()?;
    m.add_function(wrap_pyfunction!(out::response_head, &m)?)?;
    m.add_function(wrap_pyfunction!(out::trailers, &m)?)?;
    m.add_function(wrap_pyfunction!(out::ws_accept_head, &m)?)?;
    m.add_function(wrap_pyfunction!(out::simple_response, &m)?)?;
    m.add("ClientDisconnected", py.get_type::<ClientDisconnected>())?;
    m.add("MODE_LENGTH", out::MODE_LENGTH)?;
    m.add("MODE_CHUNKED", out::MODE_CHUNKED)?;
    m.add("MODE_NONE", out::MODE_NONE)?;
    m.add("MODE_CLOSE", out::MODE_CLOSE)?;
    m.add(
        "CONTINUE",
        pyo3::types::PyBytes::new(py, crate::wire::CONTINUE),
    )?;
    m.add("MAX_HEAD", crate::head::MAX_HEAD)?;
    Ok(m)
}

/// Gives the heap's free pages back to the system, once, when the process
/// is about to listen: importing the app and the lifespan startup free
/// about 1.4 MiB of malloc'd memory that glibc keeps (measured with the
/// bench's ASGI app and uvloop), and every process of every site would
/// otherwise keep it for its whole life. Later frees are not trimmed: a
/// WebSocket's memory is live, and what connections free is reused.
#[allow(unsafe_code)] // malloc_trim(3): no arguments to get wrong.
fn release_freed_memory() {
    // SAFETY: malloc_trim only walks glibc's own heaps under their locks;
    // it reads no pointer of ours and may be called from any thread.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Serves `app` on `socket` until a stop signal and the drain are done.
/// The socket is bound (or the inherited one listened on) only once
/// lifespan startup is complete: a connectable socket means ready.
pub fn serve(
    config: &Config,
    app: Py<PyAny>,
    socket: &SocketSpec,
    stop: &StopSignal,
) -> Result<(), StartError> {
    // Shared with the closures Python calls (which must be 'static).
    let listener: Arc<Mutex<Option<Listener>>> = Arc::default();
    let listen_error: Arc<Mutex<Option<StartError>>> = Arc::default();
    let a = &config.asgi;
    let code = Python::attach(|py| -> PyResult<i32> {
        let settings = PyDict::new(py);
        settings.set_item("site", config.site.as_deref())?;
        settings.set_item("max_concurrency", a.max_concurrency)?;
        settings.set_item("lifespan", a.lifespan.as_str())?;
        settings.set_item("request_timeout", a.request_timeout.as_secs())?;
        settings.set_item("graceful_timeout", config.graceful_timeout.as_secs())?;
        settings.set_item("ws_max_message", a.ws_max_message)?;
        settings.set_item("ws_ping_interval", a.ws_ping_interval.as_secs())?;
        settings.set_item("ws_ping_timeout", a.ws_ping_timeout.as_secs())?;
        settings.set_item("ws_idle_timeout", a.ws_idle_timeout.as_secs())?;
        settings.set_item("stop_fd", stop.raw_fd())?;
        // listen() -> the listening descriptor (Python serves a duplicate).
        let (spec, held, failed) = (socket.clone(), listener.clone(), listen_error.clone());
        let listen = PyCFunction::new_closure(
            py,
            None,
            None,
            move |_: &Bound<'_, PyTuple>, _: Option<&Bound<'_, PyDict>>| -> PyResult<i32> {
                release_freed_memory();
                let made = match &spec {
                    SocketSpec::Path(path) => crate::server::bind(path),
                    SocketSpec::Fd(fd) => crate::server::listen_inherited(*fd),
                };
                match made {
                    Ok(l) => {
                        let fd = l.raw_fd();
                        *lock(&held) = Some(l);
                        Ok(fd)
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        *lock(&failed) = Some(e);
                        Err(pyo3::exceptions::PyOSError::new_err(msg))
                    }
                }
            },
        )?;
        settings.set_item("listen", listen)?;
        // Called once accepting has stopped: the socket file goes, and the
        // original descriptor is closed.
        let held = listener.clone();
        let close_listener = PyCFunction::new_closure(
            py,
            None,
            None,
            move |_: &Bound<'_, PyTuple>, _: Option<&Bound<'_, PyDict>>| {
                if let Some(l) = lock(&held).take() {
                    l.remove_file();
                }
            },
        )?;
        settings.set_item("close_listener", close_listener)?;
        let code = CString::new(SERVER_PY).expect("server.py has no NUL byte");
        let module = PyModule::from_code(py, &code, c"polyhost_asgi.py", c"polyhost_asgi")?;
        module
            .getattr("serve")?
            .call1((native(py)?, app, settings))?
            .extract()
    });
    match code {
        Ok(0) => Ok(()),
        Ok(LIFESPAN_FAILED) => Err(StartError::Import),
        Ok(n) => Err(StartError::Init(format!(
            "the ASGI server stopped with status {n}"
        ))),
        Err(_) if lock(&listen_error).is_some() => {
            Err(lock(&listen_error).take().expect("checked"))
        }
        Err(e) => {
            Python::attach(|py| {
                eprintln!("polyhost-python: the ASGI server failed:");
                e.display(py);
                flush_python_stderr(py);
            });
            Err(StartError::Init(
                "the ASGI server failed (see above)".into(),
            ))
        }
    }
}
