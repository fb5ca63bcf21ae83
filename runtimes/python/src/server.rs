//! The tokio side: the accept loop on the Unix socket, hyper HTTP/1.1
//! connections, hand-off of each request to the Python pool, and the graceful
//! stop on SIGTERM/SIGINT (stop accepting, remove the socket, let in-flight
//! requests finish within the deadline).

use std::convert::Infallible;
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

use crate::errors::StartError;
use crate::pool::{Job, Pool};
use crate::request::{self, AppContext};
use crate::response::{Head, WorkerBody};

/// A bound listening socket and the identity of its file (to remove only ours).
pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
    ino: Option<(u64, u64)>,
}

/// Removes a stale socket at `path` and binds a new one. Must run inside the runtime.
pub fn bind(path: &Path) -> Result<Listener, StartError> {
    let err = |source| StartError::Listen {
        path: path.display().to_string(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(err)?,
        Ok(_) => {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way; remove it",
            )))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    let ino = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    Ok(Listener {
        listener,
        path: path.to_owned(),
        ino,
    })
}

impl Listener {
    fn remove_file(&self) {
        let ours = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.ino {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn handle(
    ctx: Arc<AppContext>,
    pool: Pool,
    req: Request<Incoming>,
) -> Result<Response<WorkerBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move |py| request::run(py, &ctx, parts, body, tx));
    if pool.submit(job).is_err() {
        return Ok(Head::error(StatusCode::SERVICE_UNAVAILABLE).into_response());
    }
    Ok(match rx.await {
        Ok(head) => head.into_response(),
        Err(_) => Head::error(StatusCode::INTERNAL_SERVER_ERROR).into_response(),
    })
}

/// Installs the SIGTERM/SIGINT handlers now (before the socket is bound, so
/// a stop request right after "ready" is never lost) and returns the future
/// that completes on the first of them.
pub fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Serves until `stop` completes, then drains within `graceful_timeout`.
pub async fn serve(
    listener: Listener,
    ctx: Arc<AppContext>,
    pool: Pool,
    graceful_timeout: Duration,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(stop);
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.keep_alive(true);
    loop {
        tokio::select! {
            accepted = listener.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (ctx, pool) = (ctx.clone(), pool.clone());
                    let service = service_fn(move |req| handle(ctx.clone(), pool.clone(), req));
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        // A connection error concerns one router connection only.
                        let _ = conn.await;
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    eprintln!("polyhost-python: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut stop => break,
        }
    }
    listener.remove_file();
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(graceful_timeout) => {
            eprintln!(
                "polyhost-python: requests still running after {}s; exiting anyway",
                graceful_timeout.as_secs()
            );
        }
    }
    Ok(())
}
