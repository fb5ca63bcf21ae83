//! polyhost-python: the worker process that embeds CPython and serves one WSGI
//! application over HTTP/1.1 on a Unix socket. The binary (`main.rs`) only
//! calls [`run`].
//!
//! # Layout
//! - [`cli`]: the command line, validated into [`cli::Config`].
//! - [`interpreter`]: CPython initialisation (venv, `sys.path`), GIL release, app import.
//! - [`server`]: tokio accept loop, hyper connections, graceful stop.
//! - [`pool`]: the Python threads that run requests with the GIL.
//! - [`request`]: one request on a Python thread, from environ to `close()`.
//! - [`environ`]: the WSGI environ and the reserved `x-polyhost-*` headers.
//! - [`input`]: `wsgi.input`, streaming the request body.
//! - [`response`]: `start_response`, `write`, the response head and body.
//! - [`file_wrapper`]: `wsgi.file_wrapper` and its fast path.
//! - [`errors`]: error types, exit codes, `wsgi.errors`, app error logging.

#![deny(unsafe_code)]

pub mod cli;
pub mod environ;
pub mod errors;
pub mod file_wrapper;
pub mod input;
pub mod interpreter;
pub mod pool;
pub mod request;
pub mod response;
pub mod server;

use std::sync::Arc;

use clap::Parser;
use pyo3::prelude::*;

use crate::cli::{Args, Config};
use crate::errors::StartError;

/// Runs the worker with the process's arguments; returns the exit code.
pub fn run() -> i32 {
    let config = match Config::try_from(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("polyhost-python: {e}");
            return 2;
        }
    };
    match start(config) {
        Ok(()) => 0,
        Err(StartError::Import) => 3,
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
    let Some(socket) = config.socket.as_deref() else {
        return Err(StartError::Usage("--socket is required".into()));
    };
    let template =
        Python::attach(|py| environ::template(py, config.threads > 1, config.multiprocess))
            .map_err(|e| StartError::Init(format!("cannot build the WSGI environ: {e}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("polyhost-io")
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let ctx = Arc::new(request::AppContext {
        app,
        template,
        handle: runtime.handle().clone(),
        site: config.site.clone(),
    });
    let pool = pool::Pool::start(config.threads).map_err(StartError::Runtime)?;
    runtime.block_on(async {
        let stop = server::stop_signal().map_err(StartError::Runtime)?;
        let listener = server::bind(socket)?;
        server::serve(listener, ctx, pool, config.graceful_timeout, stop)
            .await
            .map_err(StartError::Runtime)
    })
}
