//! Accept loops and HTTP connections. Each listener gets a task that accepts
//! until the shutdown token fires; each connection is served by hyper
//! (HTTP/1.1 with keep-alive) and watched by a graceful-shutdown handle so
//! that, on shutdown, in-flight requests finish (bounded by the grace period)
//! while no new connection or request is accepted.

use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::service::{handle, ConnInfo};
use super::table::SharedTable;
use crate::upstream::Scheme;

/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves every listener until `shutdown` fires, then waits up to `grace`
/// for in-flight requests to finish.
pub async fn serve(
    listeners: Vec<TcpListener>,
    table: SharedTable,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let mut loops = Vec::new();
    for listener in listeners {
        loops.push(tokio::spawn(accept_loop(
            listener,
            table.clone(),
            shutdown.clone(),
            grace,
        )));
    }
    for l in loops {
        let _ = l.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    table: SharedTable,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, client)) => {
                let local = match stream.local_addr() {
                    Ok(a) => a,
                    Err(_) => continue,
                };
                let conn = ConnInfo {
                    client,
                    local,
                    scheme: Scheme::Http,
                };
                serve_connection(stream, conn, table.clone(), &graceful);
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the shutdown grace period; closing them"
        );
    }
}

fn serve_connection(
    stream: TcpStream,
    conn: ConnInfo,
    table: SharedTable,
    graceful: &GracefulShutdown,
) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let table = table.load_full();
        async move { Ok::<_, std::convert::Infallible>(handle(req, conn, table).await) }
    });
    let http = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    let watched = graceful.watch(http);
    let open = crate::metrics::connection_opened(); // metrics: dropped when the connection ends
    tokio::spawn(async move {
        let _open = open;
        if let Err(e) = watched.await {
            tracing::debug!(client = %conn.client, error = %e, "connection ended with an error");
        }
    });
}
