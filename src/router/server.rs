//! Accept loops and connections. Each listener (plain or TLS) gets a task
//! that accepts until the shutdown token fires. A connection is admitted
//! against the connection limits right after accept (refused ones are closed
//! at once, plain ones after a one-write `503`), then served in its own task:
//! TLS handshake (bounded by `header_timeout`), then hyper — HTTP/1.1, or
//! HTTP/2 when ALPN chose `h2` (or, with `h2c = true`, on a plain connection
//! that starts with the HTTP/2 preface).
//!
//! The connection's task also keeps its clocks (`conn::Activity`): a request
//! head that does not arrive within `header_timeout` closes the connection
//! (slowloris); a connection idle for `keepalive_timeout` is closed
//! gracefully.
//!
//! Shutdown: accept loops stop and listeners close; every connection is asked
//! to shut down gracefully (in-flight requests finish, HTTP/2 gets GOAWAY);
//! after the grace period the rest are dropped.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::{Activity, ConnLimiter, ConnPermit, Expiry, Refusal, Throttle, TrackedIo};
use super::service::{handle, ConnInfo, Options};
use super::table::SharedTable;
use crate::config::FrontConfig;
use crate::upstream::Scheme;

/// The sockets polyhost serves: plain HTTP and TLS.
#[derive(Default)]
pub struct Listeners {
    pub http: Vec<TcpListener>,
    pub https: Vec<TcpListener>,
}

impl From<Vec<TcpListener>> for Listeners {
    /// Plain-HTTP listeners only.
    fn from(http: Vec<TcpListener>) -> Self {
        Listeners {
            http,
            https: Vec::new(),
        }
    }
}

/// Sent, in one non-blocking write, to a plain connection refused by a limit.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n";

/// What every connection shares.
struct Shared {
    options: Options,
    limiter: Arc<ConnLimiter>,
    table: SharedTable,
    shutdown: CancellationToken,
    /// Fired when the grace period is over: connections are dropped.
    force: CancellationToken,
    tracker: TaskTracker,
    refused_log: Throttle,
    timeout_log: Throttle,
    malformed_log: Throttle,
}

/// Serves every listener until `shutdown` fires, then waits up to `grace`
/// for in-flight requests to finish.
pub async fn serve(
    listeners: Listeners,
    table: SharedTable,
    shutdown: CancellationToken,
    front: FrontConfig,
    grace: Duration,
) {
    let https_port = listeners
        .https
        .first()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port());
    let tls = if listeners.https.is_empty() {
        None
    } else {
        if table.load().certs.is_empty() {
            tracing::warn!(
                "TLS listeners are configured but no site has [tls]: handshakes will be refused"
            );
        }
        match super::tls::server_config(table.clone()) {
            Ok(c) => Some(TlsAcceptor::from(c)),
            Err(e) => {
                tracing::error!(error = %e, "cannot set up TLS; not serving the TLS listeners");
                None
            }
        }
    };
    let limits = &front.limits;
    let shared = Arc::new(Shared {
        limiter: ConnLimiter::new(limits.max_connections, limits.max_connections_per_ip),
        options: Options { front, https_port },
        table,
        shutdown,
        force: CancellationToken::new(),
        tracker: TaskTracker::new(),
        refused_log: Throttle::new(),
        timeout_log: Throttle::new(),
        malformed_log: Throttle::new(),
    });
    let mut loops = Vec::new();
    for l in listeners.http {
        loops.push(tokio::spawn(accept_loop(l, None, shared.clone())));
    }
    if let Some(tls) = tls {
        for l in listeners.https {
            loops.push(tokio::spawn(accept_loop(
                l,
                Some(tls.clone()),
                shared.clone(),
            )));
        }
    }
    for l in loops {
        let _ = l.await;
    }
    shared.tracker.close();
    if tokio::time::timeout(grace, shared.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the shutdown grace period; closing them"
        );
        shared.force.cancel();
        shared.tracker.wait().await;
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, client) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let exempt = shared.options.front.is_trusted_proxy(client.ip());
        let permit = match shared.limiter.try_acquire(client.ip(), exempt) {
            Ok(p) => p,
            Err(why) => {
                if tls.is_none() {
                    let _ = stream.try_write(REFUSED);
                }
                if let Some(left_out) = shared.refused_log.allow() {
                    let limit = match why {
                        Refusal::Total => "max_connections",
                        Refusal::PerIp => "max_connections_per_ip",
                    };
                    tracing::warn!(client = %client, limit, open = shared.limiter.open(), also_refused = left_out, "connection refused: limit reached");
                }
                continue;
            }
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let conn = ConnInfo {
            client,
            local,
            scheme: if tls.is_some() {
                Scheme::Https
            } else {
                Scheme::Http
            },
        };
        let task = connection(stream, conn, tls.clone(), shared.clone(), permit);
        shared.tracker.spawn(task);
    }
}

/// Which protocols a connection may speak.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http1,
    Http2,
    /// Plain connection with `h2c = true`: HTTP/2 if it starts with the preface.
    Auto,
}

async fn connection(
    stream: TcpStream,
    conn: ConnInfo,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    _permit: ConnPermit,
) {
    let _open = crate::metrics::connection_opened(); // metrics: dropped when the connection ends
    let _ = stream.set_nodelay(true);
    let activity = Activity::new();
    let io = TrackedIo::new(stream, activity.clone());
    let limits = &shared.options.front.limits;
    let Some(acceptor) = tls else {
        if shared.options.front.h2c {
            let io = io.sniff_h2c();
            return drive(io, conn, Proto::Auto, activity, shared).await;
        }
        return drive(io, conn, Proto::Http1, activity, shared).await;
    };
    let handshake = tokio::select! {
        r = tokio::time::timeout(limits.header_timeout, acceptor.accept(io)) => r,
        _ = shared.shutdown.cancelled() => return,
    };
    match handshake {
        Ok(Ok(tls)) => {
            let proto = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                activity.set_multiplexed();
                Proto::Http2
            } else {
                Proto::Http1
            };
            drive(tls, conn, proto, activity, shared).await;
        }
        Ok(Err(e)) => {
            tracing::debug!(client = %conn.client, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            if let Some(left_out) = shared.timeout_log.allow() {
                tracing::info!(client = %conn.client, also_closed = left_out, "closing connection: TLS handshake not done within header_timeout");
            }
        }
    }
}

/// Serves HTTP on an established connection until it ends, keeping its clocks.
async fn drive<I>(io: I, conn: ConnInfo, proto: Proto, activity: Arc<Activity>, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = shared.options.front.limits.clone();
    let service = {
        let shared = shared.clone();
        let activity = activity.clone();
        service_fn(move |req| {
            let guard = activity.request_started();
            let shared = shared.clone();
            async move {
                let table = shared.table.load_full();
                let resp = handle(req, conn, table, &shared.options).await;
                // The request stays "in flight" until its body is sent.
                let resp = resp.map(|body| {
                    body.map_frame(move |f| {
                        let _ = &guard;
                        f
                    })
                    .boxed_unsync()
                });
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder = match proto {
        Proto::Http1 => builder.http1_only(),
        Proto::Http2 => builder.http2_only(),
        Proto::Auto => builder,
    };
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_size)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
    let served = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    let mut graceful = false;
    let mut closing_since: Option<Instant> = None;
    loop {
        let next = match closing_since {
            Some(t) => Some(t + limits.header_timeout),
            None => activity
                .deadline(limits.header_timeout, limits.keepalive_timeout)
                .map(|(t, _)| t),
        };
        let sleep = async move {
            match next {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    log_connection_error(&conn, &*e, &shared);
                }
                return;
            }
            _ = shared.shutdown.cancelled(), if !graceful => {
                graceful = true;
                served.as_mut().graceful_shutdown();
            }
            _ = shared.force.cancelled() => return,
            _ = activity.changed() => {}
            _ = sleep => {
                let now = Instant::now();
                if closing_since.is_some_and(|t| now >= t + limits.header_timeout) {
                    return; // asked to close and did not: drop it
                }
                match activity.deadline(limits.header_timeout, limits.keepalive_timeout) {
                    Some((t, Expiry::Header)) if now >= t => {
                        if let Some(left_out) = shared.timeout_log.allow() {
                            tracing::info!(client = %conn.client, also_closed = left_out, timeout = ?limits.header_timeout, "closing connection: no complete request head within header_timeout");
                        }
                        if proto != Proto::Http2 {
                            return;
                        }
                        if !graceful {
                            graceful = true;
                            served.as_mut().graceful_shutdown();
                        }
                        closing_since.get_or_insert(now);
                    }
                    Some((t, Expiry::Idle)) if now >= t => {
                        tracing::debug!(client = %conn.client, "closing idle keep-alive connection");
                        if !graceful {
                            graceful = true;
                            served.as_mut().graceful_shutdown();
                        }
                        closing_since.get_or_insert(now);
                    }
                    _ => {}
                }
            }
        }
    }
}

fn log_connection_error(
    conn: &ConnInfo,
    e: &(dyn std::error::Error + Send + Sync + 'static),
    shared: &Shared,
) {
    match e.downcast_ref::<hyper::Error>() {
        Some(h) if h.is_parse_too_large() => {
            if let Some(left_out) = shared.malformed_log.allow() {
                tracing::info!(client = %conn.client, also = left_out, "request head larger than max_header_size or more than max_headers fields: 431");
            }
        }
        Some(h) if h.is_parse() => {
            if let Some(left_out) = shared.malformed_log.allow() {
                tracing::info!(client = %conn.client, also = left_out, error = %h, "malformed request: 400");
            }
        }
        _ => tracing::debug!(client = %conn.client, error = %e, "connection ended with an error"),
    }
}
