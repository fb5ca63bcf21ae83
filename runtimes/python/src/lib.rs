//! polyhost-python: the worker process that embeds CPython and serves one WSGI
//! application over HTTP/1.1 on a Unix socket. The binary (`main.rs`) only
//! calls [`run`].
//!
//! # Layout
//! - [`cli`]: the command line, validated into [`cli::Config`].
//! - [`interpreter`]: CPython initialisation (venv, `sys.path`), GIL release, app import.
//! - [`signals`]: SIGTERM/SIGINT, turned into a wake-up of the main thread.
//! - [`server`]: the listener, the shared epoll set, the Python threads that
//!   wait in it and serve what wakes them, idle connections, graceful stop.
//! - [`pacer`]: how many of those threads wait for requests at once.
//! - [`conn`]: one router connection: socket, read buffer, head reads, writes.
//! - [`head`]: the request head, parsed by `httparse`.
//! - [`body`]: the request body's framing (Content-Length, chunked).
//! - [`request`]: one request on a Python thread, from environ to `close()`.
//! - [`environ`]: the WSGI environ, with the router's metadata read from the
//!   reserved `x-polyhost-*` headers (their names, the exit codes and the
//!   head limits are the `polyhost_protocol` crate, shared with the router).
//! - [`input`]: `wsgi.input` over the request body.
//! - [`response`]: `start_response`, `write`, and how the response reaches the socket.
//! - [`wire`]: the bytes of a response head, chunk framing, the worker's own pages.
//! - [`file_wrapper`]: `wsgi.file_wrapper` and its `sendfile` fast path.
//! - [`errors`]: error types, exit codes, `wsgi.errors`, app error logging.
//! - [`asgi`]: `--interface asgi`: one asyncio event loop serving an ASGI 3.0
//!   app (HTTP and WebSockets) on the same socket, with the same head parser.

#![deny(unsafe_code)]

pub mod asgi;
pub mod body;
pub mod cli;
pub mod conn;
pub mod environ;
pub mod errors;
pub mod file_wrapper;
pub mod head;
pub mod input;
pub mod interpreter;
pub mod pacer;
pub mod request;
pub mod response;
pub mod server;
pub mod signals;
pub mod wire;

use clap::Parser;
use polyhost_protocol::exit;
use pyo3::prelude::*;

use crate::cli::{Args, Config};
use crate::errors::StartError;

/// Runs the worker with the process's arguments; returns the exit code.
pub fn run() -> i32 {
    let config = match Config::try_from(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("polyhost-python: {e}");
            return exit::USAGE;
        }
    };
    match start(config) {
        Ok(()) => 0,
        Err(StartError::Import) => exit::APP_IMPORT_FAILED,
        Err(e) => {
            eprintln!("polyhost-python: {e}");
            e.exit_code()
        }
    }
}

/// starting → importing → ready → draining → exited.
fn start(config: Config) -> Result<(), StartError> {
    interpreter::initialize(config.home.as_deref(), &config.paths)?;
    let app = interpreter::import_app(&config.app)?;
    if config.check {
        return Ok(());
    }
    let Some(socket) = config.socket.as_ref() else {
        return Err(StartError::Usage(
            "--socket or --socket-fd is required".into(),
        ));
    };
    let template =
        Python::attach(|py| environ::template(py, config.threads > 1, config.multiprocess))
            .map_err(|e| StartError::Init(format!("cannot build the WSGI environ: {e}")))?;
    let stop = signals::install().map_err(StartError::Runtime)?;
    if config.interface == cli::Interface::Asgi {
        return asgi::serve(&config, app, socket, &stop);
    }
    let listener = match socket {
        cli::SocketSpec::Path(path) => server::bind(path)?,
        cli::SocketSpec::Fd(fd) => server::listen_inherited(*fd)?,
    };
    let ctx = request::AppContext {
        app,
        template,
        site: config.site.clone(),
    };
    let server =
        server::Server::start(listener, config.threads, ctx).map_err(StartError::Runtime)?;
    stop.wait().map_err(StartError::Runtime)?;
    if !server.stop(config.graceful_timeout) {
        eprintln!(
            "polyhost-python: requests still running after {}s; exiting anyway",
            config.graceful_timeout.as_secs()
        );
    }
    Ok(())
}
