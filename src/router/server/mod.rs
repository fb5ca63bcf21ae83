//! Accept loops and connections. Each listener (plain or TLS) gets a task on
//! every router lane (`crate::lanes`) that accepts until the shutdown token
//! fires. A connection is admitted against the connection limits right after
//! accept, counted per client (`router::conn::client`: a local client by the user
//! owning its socket); refused ones are closed at once, plain ones after a
//! one-write `503`, also when descriptors run out ([`refusal`]). An
//! admitted one is placed on a lane (kept, or handed to a less busy one),
//! then served in its own task there:
//! TLS handshake (bounded by `header_timeout`, and by
//! [`first_request_at_stop`] once the router stops), then hyper — HTTP/1.1, or
//! HTTP/2 when ALPN chose `h2` (or, with `h2c = true`, on a plain connection
//! that starts with the HTTP/2 preface).
//!
//! The connection's task also keeps its clocks (`conn::Activity`, enforced
//! by [`watch`]): a request
//! head that does not arrive within `header_timeout` closes the connection
//! (slowloris); a connection idle for `keepalive_timeout` is closed
//! gracefully.
//!
//! An HTTP/1 connection, plain or over TLS, holds hyper's state (its 8 KiB
//! read and write buffers, the dispatcher) only while a request is read or
//! answered: once it is idle with the response sent, the state is dropped
//! ("parked") and the task waits for the socket to become readable, holding
//! the socket (and, over TLS, rustls' session); the next bytes build a fresh
//! hyper connection ([`parking`]). An idle keep-alive connection then costs
//! about 2 KiB plain and 13 KiB over TLS instead of 21 and 24 (see
//! `docs/architecture.md`, "A client connection"). HTTP/2 connections (TLS
//! with ALPN `h2`, h2c) are not parked.
//!
//! A WebSocket's tunnel runs in a task of its own, spawned on the
//! connection's lane when hyper has sent the `101`; the connection's task
//! then ends (its state is sized for serving HTTP), and the tunnel holds
//! what the connection held until it ends: its place in the connection
//! limits and its lane's count, the open-connection metric, and the
//! shutdown's tracker ([`conn_service`], which also gives an HTTP/2
//! WebSocket a place of its own in the limits).
//!
//! A plain HTTP/1 connection (not h2c) has a `sendfile::FileQueue`: its
//! large static file bodies are sent with `sendfile` beneath hyper, whose
//! writer is then held to its vectored strategy ([`parking`]).
//!
//! Shutdown: accept loops stop and listeners close; every connection is asked
//! to shut down gracefully (in-flight requests finish, HTTP/2 gets GOAWAY);
//! after the grace period the rest are dropped. A connection accepted but
//! with no request yet is not closed at once (its client connected to send
//! one, and may be sending it now, with nothing to retry on): it gets
//! [`first_request_at_stop`] for its first request, which is answered with
//! `Connection: close` (as every HTTP/1 response once stopping); a TLS
//! handshake under way finishes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
/// The TLS set-up of every TLS listener (`router::tls::accept`).
type TlsAcceptor = Arc<rustls::ServerConfig>;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod conn_service;
mod parking;
mod refusal;
mod signal;
mod watch;

use super::conn::client::is_trusted_proxy;
use super::conn::{Activity, Client, ConnLimiter, ConnPermit, Throttle, TrackedIo};
use super::service::{ConnInfo, Options};
use super::table::SharedTable;
use super::tunnel::{self, AcceptedSlot};
use crate::config::FrontConfig;
use crate::lanes::{self, Lanes, Placed, Placement};
use crate::sendfile::FileQueue;
use crate::upstream::Scheme;
use conn_service::{spawn_tunnel, ConnService};
use parking::{http1_parking, http1_serve, Handed, Moving};
use refusal::{accept_failed, admissible_connections, refusal_limit, refuse, Spare};
use signal::Signal;
use watch::watch;

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

/// What every connection shares.
struct Shared {
    options: Options,
    limiter: Arc<ConnLimiter>,
    table: SharedTable,
    shutdown: CancellationToken,
    /// `shutdown`, as connections wait for it (see `signal`).
    stopping: Signal,
    /// Raised when the grace period is over: connections are dropped.
    force: Signal,
    tracker: TaskTracker,
    refused_log: Throttle,
    accept_log: Throttle,
    timeout_log: Throttle,
    malformed_log: Throttle,
}

/// Serves every listener until `shutdown` fires, then waits up to `grace`
/// for in-flight requests to finish. Fails only if the router threads
/// cannot be started.
pub async fn serve(
    listeners: Listeners,
    table: SharedTable,
    shutdown: CancellationToken,
    front: FrontConfig,
    grace: Duration,
) -> std::io::Result<()> {
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
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "cannot set up TLS; not serving the TLS listeners");
                None
            }
        }
    };
    if let Err(why) = super::conn::peer::check() {
        tracing::warn!("cannot tell local clients apart ({why}): every connection from this host (sites' code, cron, a local proxy) counts as one client of max_connections_per_ip, so one site's code can take that share from all the others, and no local connection is a trusted proxy; load the tcp_diag module or allow NETLINK_SOCK_DIAG sockets to polyhost (docs/isolation.md, \"Connection limits\")");
    }
    let limits = &front.limits;
    let shared = Arc::new(Shared {
        limiter: ConnLimiter::new(
            admissible_connections(limits.max_connections),
            limits.max_connections_per_ip,
        ),
        options: Options { front, https_port },
        table,
        shutdown,
        stopping: Signal::default(),
        force: Signal::default(),
        tracker: TaskTracker::new(),
        refused_log: Throttle::new(),
        accept_log: Throttle::new(),
        timeout_log: Throttle::new(),
        malformed_log: Throttle::new(),
    });
    let count = shared
        .options
        .front
        .router_threads
        .unwrap_or_else(lanes::default_count);
    let lanes = Lanes::start(count)?;
    tokio::spawn({
        let shared = shared.clone();
        async move {
            shared.shutdown.cancelled().await;
            shared.stopping.raise();
        }
    });
    let mut loops = Vec::new();
    // TLS listeners are served only with a working TLS set-up.
    let tls_listeners = match &tls {
        Some(acceptor) => listeners
            .https
            .into_iter()
            .map(|l| (l, Some(acceptor.clone())))
            .collect(),
        None => Vec::new(),
    };
    let plain_listeners = listeners.http.into_iter().map(|l| (l, None));
    for (listener, tls) in plain_listeners.chain(tls_listeners) {
        let listener = match listener.into_std() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot hand a listener to the router threads");
                continue;
            }
        };
        for lane in lanes.handles() {
            let listener = match listener.try_clone() {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "cannot share a listener with a router thread");
                    continue;
                }
            };
            let (tls, shared, placement) = (tls.clone(), shared.clone(), lanes.placement());
            loops.push(lane.spawn(async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => accept_loop(l, tls, shared, placement).await,
                    Err(e) => tracing::error!(error = %e, "cannot watch a listener"),
                }
            }));
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
        shared.force.raise();
        shared.tracker.wait().await;
    }
    lanes.stop().await;
    Ok(())
}

/// How long a connection with no request yet may still send its first
/// one once the router stops: its client sends it within milliseconds of
/// connecting (a loaded machine may take longer); a connection opened ahead
/// of need (a browser's preconnect) holds the stop no longer than this.
pub(super) fn first_request_at_stop(header_timeout: Duration) -> Duration {
    header_timeout.min(Duration::from_secs(2))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    placement: Placement,
) {
    let mut spare = Spare::open();
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, client) = match accepted {
            Ok(a) => a,
            Err(e) => {
                accept_failed(&e, &listener, &mut spare, tls.is_none(), &shared).await;
                continue;
            }
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let who = Client::of(client, local);
        let trusted = is_trusted(&shared, client, who);
        let permit = match shared.limiter.try_acquire(who, trusted) {
            Ok(p) => p,
            Err(why) => {
                if tls.is_none() {
                    refuse(&stream);
                }
                if let Some(left_out) = shared.refused_log.allow() {
                    let limit = refusal_limit(why);
                    tracing::warn!(client = %client, counted_as = %who, limit, open = shared.limiter.open(), also_refused = left_out, "connection refused: limit reached");
                }
                continue;
            }
        };
        let conn = ConnInfo {
            client,
            local,
            scheme: if tls.is_some() {
                Scheme::Https
            } else {
                Scheme::Http
            },
            trusted,
            who,
        };
        let admitted = Admitted {
            _permit: permit,
            lane: placement.place(),
        };
        if admitted.lane.is_here() {
            start_connection(stream, conn, tls.clone(), shared.clone(), admitted);
        } else {
            hand_over(stream, conn, tls.clone(), shared.clone(), admitted);
        }
    }
}

/// Whether the peer is a trusted proxy ([`is_trusted_proxy`]).
fn is_trusted(shared: &Shared, peer: std::net::SocketAddr, who: Client) -> bool {
    is_trusted_proxy(&shared.options.front, &shared.table.load(), peer, who)
}

/// What an admitted connection holds until it ends: its place in the
/// connection limits and in its lane's count.
struct Admitted {
    _permit: ConnPermit,
    lane: Placed,
}

/// Spawns the connection's task on the calling lane. Two task types: a
/// plain connection's task stays small (it is most of what an idle
/// keep-alive connection costs); TLS state is larger.
fn start_connection(
    stream: TcpStream,
    conn: ConnInfo,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    admitted: Admitted,
) {
    let tracker = shared.tracker.clone();
    match tls {
        None => tracker.spawn(plain(stream, conn, shared, admitted)),
        Some(acceptor) => tracker.spawn(tls_connection(stream, conn, acceptor, shared, admitted)),
    };
}

/// Moves an accepted connection to the lane chosen for it: its socket is
/// re-registered with that lane's event loop, where its task then runs.
fn hand_over(
    stream: TcpStream,
    conn: ConnInfo,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    admitted: Admitted,
) {
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(client = %conn.client, error = %e, "cannot move a connection to another router thread; closing it");
            return;
        }
    };
    let lane = admitted.lane.handle().clone();
    let tracker = shared.tracker.clone();
    lane.spawn(tracker.track_future(async move {
        match TcpStream::from_std(stream) {
            Ok(stream) => start_connection(stream, conn, tls, shared, admitted),
            Err(e) => tracing::warn!(client = %conn.client, error = %e, "cannot watch a connection moved to this router thread; closing it"),
        }
    }));
}

/// Which protocols a connection may speak.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http1,
    Http2,
    /// Plain connection with `h2c = true`: HTTP/2 if it starts with the preface.
    Auto,
}

async fn plain(stream: TcpStream, conn: ConnInfo, shared: Arc<Shared>, admitted: Admitted) {
    let open = crate::metrics::connection_opened(); // metrics: dropped when the connection ends
    let _ = stream.set_nodelay(true);
    let activity = Activity::new();
    let io = TrackedIo::new(stream, activity.clone());
    if shared.options.front.h2c {
        // Boxed: the larger HTTP/2-capable state is not part of every plain task.
        let io = io.sniff_h2c();
        let drive = Box::pin(drive(io, conn, Proto::Auto, activity, shared.clone()));
        if let Some((accepted, on_upgrade)) = drive.await {
            spawn_tunnel(on_upgrade, accepted, &shared, (admitted, open));
        }
        return;
    }
    let files = FileQueue::new();
    let io = io.sending_files(files.clone());
    let lane = Some(&admitted.lane);
    let handed = http1_parking(io, conn, Some(files), activity, shared.clone(), lane).await;
    after_plain_http1(handed, shared, (admitted, open));
}

/// What a plain HTTP/1 connection holds for its life: its place in the
/// limits and on its lane, and the open-connection metric.
type Held = (Admitted, crate::metrics::ConnectionGuard);

/// A plain HTTP/1 connection handed back with its socket open: a
/// WebSocket's tunnel, or a move to another lane.
fn after_plain_http1(handed: Option<Handed<TcpStream>>, shared: Arc<Shared>, held: Held) {
    match handed {
        Some(Handed::Upgraded(upgraded)) => upgraded.spawn(shared, held),
        Some(Handed::Moves(moving)) => move_to_lane(moving, shared, held),
        None => {}
    }
}

/// Goes on with a plain HTTP/1 connection, between two requests, on the
/// lane it claimed a place on: its socket is re-registered with that
/// lane's event loop (as in [`hand_over`]) and served there by a new task;
/// the old place is given back.
fn move_to_lane(moving: Moving<TcpStream>, shared: Arc<Shared>, (admitted, open): Held) {
    let Moving { io, service, to } = moving;
    let client = service.conn.client;
    let io = match io.try_map(TcpStream::into_std) {
        Ok(io) => io,
        Err(e) => {
            tracing::warn!(client = %client, error = %e, "cannot move a connection to another router thread; closing it");
            return;
        }
    };
    crate::metrics::connections::connection_moved();
    let admitted = Admitted {
        _permit: admitted._permit,
        lane: to,
    };
    let lane = admitted.lane.handle().clone();
    let tracker = shared.tracker.clone();
    lane.spawn(tracker.track_future(async move {
        let io = match io.try_map(TcpStream::from_std) {
            Ok(io) => io,
            Err(e) => {
                tracing::warn!(client = %client, error = %e, "cannot watch a connection moved to this router thread; closing it");
                return;
            }
        };
        let handed = http1_serve(io, service, Some(&admitted.lane)).await;
        after_plain_http1(handed, shared, (admitted, open));
    }));
}

async fn tls_connection(
    stream: TcpStream,
    conn: ConnInfo,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    admitted: Admitted,
) {
    let open = crate::metrics::connection_opened(); // metrics: dropped when the connection ends
    let _ = stream.set_nodelay(true);
    let activity = Activity::new();
    let io = TrackedIo::new(stream, activity.clone());
    let limits = &shared.options.front.limits;
    // A handshake under way when the router stops gets what a plain
    // connection gets for its first request then, not a whole header_timeout.
    let stopped = async {
        shared.stopping.wait().await;
        tokio::time::sleep(first_request_at_stop(limits.header_timeout)).await;
    };
    let handshake = tokio::select! {
        r = super::tls::accept(acceptor, &shared.table, io, limits.header_timeout) => r,
        () = stopped => {
            tracing::debug!(client = %conn.client, "closing connection: TLS handshake not done when the router stopped");
            return;
        }
        _ = shared.force.wait() => return,
    };
    match handshake {
        Ok(tls) => {
            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                activity.set_multiplexed();
                drive(tls, conn, Proto::Http2, activity, shared).await;
                return;
            }
            // Both layers report to the same clocks: the inner one counts
            // the socket's bytes (a TLS record starts a head), the outer one
            // keeps hyper's read-ahead plaintext while parked.
            let io = TrackedIo::new(tls, activity.clone());
            let handed = http1_parking(io, conn, None, activity, shared.clone(), None).await;
            if let Some(Handed::Upgraded(upgraded)) = handed {
                upgraded.spawn(shared, (admitted, open));
            }
        }
        Err(super::tls::HandshakeError::Io(e)) => {
            tracing::debug!(client = %conn.client, error = %e, "TLS handshake failed");
        }
        Err(super::tls::HandshakeError::Timeout) => {
            if let Some(left_out) = shared.timeout_log.allow() {
                tracing::info!(client = %conn.client, also_closed = left_out, "closing connection: TLS handshake not done within header_timeout");
            }
        }
    }
}

/// hyper-util's auto connection with upgrades, as [`watch`] drives it.
struct Upgradeable<C>(Pin<Box<C>>);

impl<I> watch::Served
    for Upgradeable<auto::UpgradeableConnection<'_, TokioIo<I>, ConnService, TokioExecutor>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn poll_served(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<watch::Ended, crate::upstream::BoxError>> {
        self.0
            .as_mut()
            .poll(cx)
            .map(|r| r.map(|()| watch::Ended::Closed))
    }

    fn graceful_shutdown(&mut self) {
        self.0.as_mut().graceful_shutdown();
    }
}

/// Serves HTTP on an established TLS or h2c connection until it ends.
/// Returns an HTTP/1 WebSocket's tunnel and its upgrade, for the tunnel to
/// run in a task of its own ([`spawn_tunnel`]).
async fn drive<I>(
    io: I,
    conn: ConnInfo,
    proto: Proto,
    activity: Arc<Activity>,
    shared: Arc<Shared>,
) -> Option<(tunnel::Accepted, hyper::upgrade::OnUpgrade)>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &shared.options.front.limits;
    let handoff = AcceptedSlot::empty();
    let service = ConnService {
        conn,
        activity: activity.clone(),
        shared: shared.clone(),
        handoff: handoff.clone(),
        manual: false,
        files: None,
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder = match proto {
        Proto::Http1 => builder.http1_only(),
        Proto::Http2 => builder.http2_only(),
        Proto::Auto => builder,
    };
    let mut http1 = builder.http1();
    http1
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_size);
    if let Some(n) = hyper_max_headers(limits.max_headers) {
        http1.max_headers(n);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .enable_connect_protocol()
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
    let mut served = Upgradeable(Box::pin(
        builder.serve_connection_with_upgrades(TokioIo::new(io), service),
    ));
    watch(&mut served, &conn, proto, &activity, &shared).await;
    // After a 101, hyper ended the connection and hands it over.
    match handoff.take() {
        Some((accepted, Some(on_upgrade))) => Some((accepted, on_upgrade)),
        _ => None,
    }
}

/// `limits.max_headers` for hyper's HTTP/1 builder: `None` at hyper's own
/// limit (100, the default of `limits.max_headers` too), which is the same
/// limit, but lets hyper keep its header arrays on the stack: with a
/// configured count it builds them element by element for every request
/// head (`smallvec![..; n]`, measured at ~2 % of the router's CPU on a
/// small static file).
pub(super) fn hyper_max_headers(configured: usize) -> Option<usize> {
    const HYPER_DEFAULT: usize = 100;
    (configured != HYPER_DEFAULT).then_some(configured)
}
