//! The admin API: HTTP/1.1 + JSON for `polyhost status`, `reload`,
//! `restart`, `stop`, `start` and Prometheus `/metrics`, served on a Unix
//! socket that only root (or the `[admin] group`) can open, and optionally on
//! TCP (`[admin] listen`, bearer token required; `[metrics] listen`, metrics
//! only). The CLI commands are clients of it ([`client`]).
//!
//! - [`socket`]: binding the Unix socket (stale-socket handling, mode,
//!   group) and checking each peer's credentials (SO_PEERCRED).
//! - [`api`]: the endpoints: request → [`crate::app::Server`] → JSON.
//! - [`cluster`]: the `/v1/cluster/...` endpoints: the `polyhost cluster`
//!   operations on this node's etcd (a node with `[cluster]`).
//! - [`metrics`]: the `/metrics` scrape (status + per-site handles → Prometheus text).
//! - [`client`]: one request over the socket, for the CLI.
//!
//! Lifecycle: [`bind`] (or [`Listeners::inherited`] from a predecessor,
//! binary upgrade) before any site starts (a second polyhost on the same
//! socket is refused before it touches anything), [`serve`] once the
//! [`Server`] runs; both end when the shutdown token fires, and the socket
//! file is removed.
//!
//! Invariant: nothing read from the socket can panic the server; every
//! failure is a JSON error that says what to do next.

pub mod api;
pub mod client;
pub mod cluster;
pub mod metrics;
pub mod socket;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use crate::app::Server;
use crate::config::ServerConfig;
use crate::router::conn::{Client, ConnLimiter, ConnPermit};
use api::{Access, Scope};
use socket::PeerPolicy;

/// How long in-flight admin requests may take after shutdown begins.
const ADMIN_GRACE: Duration = Duration::from_secs(5);

/// Most open connections on each admin or metrics TCP listener (a scraper or
/// a script needs one or two). Beyond it a connection is closed right after
/// accept: a flood of them (from a site's code, on a shared host) costs a
/// bounded number of descriptors and cannot starve the router of them.
pub const TCP_CONNECTIONS: usize = 32;

/// Most of those one client may hold (a client as the router counts it:
/// a local user, a remote address; `router::conn::Client`), so that one
/// site's code cannot hold all [`TCP_CONNECTIONS`] and lock the scraper out.
pub const TCP_CONNECTIONS_PER_CLIENT: usize = 4;

/// How long an admin or metrics connection may wait for a request head,
/// the first or the next on a kept-alive connection (hyper starts this
/// timer whenever it waits for a head): the idle limit.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin socket {path}: another polyhost is running and answering on it (pid {pid}); stop it first, or set another [admin] socket")]
    InUse { path: PathBuf, pid: String },
    #[error("admin socket {path}: the path exists and is not a socket; remove it or set another [admin] socket")]
    NotASocket { path: PathBuf },
    #[error("admin socket {path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("[admin] group {0:?} does not exist; create it (groupadd {0}) or remove the key")]
    NoSuchGroup(String),
    #[error("cannot listen on {addr} ({what}): {source} (is another server using the port?)")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The admin API's bound sockets, not yet serving.
pub struct Listeners {
    unix: UnixListener,
    socket: PathBuf,
    peers: PeerPolicy,
    tcp: Option<(TcpListener, String)>,
    /// The metrics listener and its token (none: open).
    metrics: Option<(TcpListener, Option<String>)>,
}

impl Listeners {
    /// The Unix socket's path.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// The admin TCP address, when configured (port 0 resolved).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The metrics-only TCP address, when configured (port 0 resolved).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }
}

/// Duplicates of the admin API's listening sockets, to hand to a successor
/// (binary upgrade): the Unix socket, then the admin TCP and the metrics
/// listener when configured.
pub struct ListenerFds {
    pub unix: std::os::fd::OwnedFd,
    pub tcp: Option<std::os::fd::OwnedFd>,
    pub metrics: Option<std::os::fd::OwnedFd>,
}

impl Listeners {
    /// Duplicates of every listening socket (see [`ListenerFds`]).
    pub fn duplicate(&self) -> std::io::Result<ListenerFds> {
        use std::os::fd::AsFd;
        Ok(ListenerFds {
            unix: self.unix.as_fd().try_clone_to_owned()?,
            tcp: match &self.tcp {
                Some((l, _)) => Some(l.as_fd().try_clone_to_owned()?),
                None => None,
            },
            metrics: match &self.metrics {
                Some((l, _)) => Some(l.as_fd().try_clone_to_owned()?),
                None => None,
            },
        })
    }

    /// The listeners a predecessor handed over (binary upgrade), with this
    /// configuration's access rules. The predecessor's configuration bound
    /// them: a TCP listener the new configuration no longer names is closed,
    /// one it names anew is bound.
    pub async fn inherited(
        config: &ServerConfig,
        fds: ListenerFds,
    ) -> Result<Listeners, AdminError> {
        let path = &config.admin.socket;
        let io = |action: &'static str| {
            move |source| AdminError::Io {
                path: path.clone(),
                action,
                source,
            }
        };
        let std_unix = std::os::unix::net::UnixListener::from(fds.unix);
        std_unix
            .set_nonblocking(true)
            .map_err(io("cannot use the inherited socket"))?;
        let unix =
            UnixListener::from_std(std_unix).map_err(io("cannot use the inherited socket"))?;
        let peers = PeerPolicy::new(socket::admin_group(&config.admin)?);
        let tcp_of = |fd: std::os::fd::OwnedFd| -> std::io::Result<TcpListener> {
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true)?;
            TcpListener::from_std(l)
        };
        let tcp = match (config.admin.listen, &config.admin.token, fds.tcp) {
            (Some(_), Some(token), Some(fd)) => Some((
                tcp_of(fd).map_err(io("cannot use the inherited admin TCP listener"))?,
                token.0.clone(),
            )),
            (Some(addr), Some(token), None) => {
                Some((tcp_bind(addr, "[admin] listen").await?, token.0.clone()))
            }
            _ => None,
        };
        let token = config.metrics_token.as_ref().map(|t| t.0.clone());
        let metrics = match (config.metrics_listen, fds.metrics) {
            (Some(_), Some(fd)) => Some((
                tcp_of(fd).map_err(io("cannot use the inherited metrics listener"))?,
                token,
            )),
            (Some(addr), None) => Some((tcp_bind(addr, "[metrics] listen").await?, token)),
            (None, _) => None,
        };
        Ok(Listeners {
            unix,
            socket: path.clone(),
            peers,
            tcp,
            metrics,
        })
    }
}

/// Binds the Unix socket (and the TCP listeners that are configured).
pub async fn bind(config: &ServerConfig) -> Result<Listeners, AdminError> {
    let (unix, peers) = socket::bind(&config.admin).await?;
    let tcp = match (config.admin.listen, &config.admin.token) {
        (Some(addr), Some(token)) => {
            Some((tcp_bind(addr, "[admin] listen").await?, token.0.clone()))
        }
        _ => None,
    };
    let metrics = match config.metrics_listen {
        Some(addr) => Some((
            tcp_bind(addr, "[metrics] listen").await?,
            config.metrics_token.as_ref().map(|t| t.0.clone()),
        )),
        None => None,
    };
    Ok(Listeners {
        unix,
        socket: config.admin.socket.clone(),
        peers,
        tcp,
        metrics,
    })
}

async fn tcp_bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, what, source })
}

/// Serves the admin API until `shutdown` fires; the returned task ends
/// once every listener stopped and the socket file is removed.
pub fn serve(
    listeners: Listeners,
    server: Arc<Server>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Listeners {
            unix,
            socket,
            peers,
            tcp,
            metrics,
        } = listeners;
        tracing::info!(socket = %socket.display(), "admin API listening");
        let mut tasks = vec![tokio::spawn(unix_loop(
            unix,
            peers,
            server.clone(),
            shutdown.clone(),
        ))];
        if let Some((l, token)) = tcp {
            if let Ok(addr) = l.local_addr() {
                tracing::info!(%addr, "admin API listening on TCP (bearer token required)");
            }
            let access = Access::Token(Arc::from(token));
            tasks.push(tokio::spawn(tcp_loop(
                l,
                access,
                Scope::Admin,
                server.clone(),
                shutdown.clone(),
            )));
        }
        if let Some((l, token)) = metrics {
            let access = match token {
                Some(token) => {
                    if let Ok(addr) = l.local_addr() {
                        tracing::info!(%addr, "metrics listening (bearer token required)");
                    }
                    Access::Token(Arc::from(token))
                }
                None => {
                    if let Ok(addr) = l.local_addr() {
                        tracing::warn!(%addr, "metrics listening without a token: whoever can connect (site code on this host too) reads every site's metrics; set [metrics] token_file");
                    }
                    Access::Open
                }
            };
            tasks.push(tokio::spawn(tcp_loop(
                l,
                access,
                Scope::MetricsOnly,
                server.clone(),
                shutdown.clone(),
            )));
        }
        for t in tasks {
            let _ = t.await;
        }
        // During a binary upgrade the other polyhost serves on the same
        // socket file: it stays (`supervisor::instance`).
        if crate::supervisor::instance::sole_owner() {
            socket::remove(&socket);
        }
    })
}

/// [`bind`] then [`serve`]: what `polyhost serve` and the tests call.
pub async fn start(
    server: Arc<Server>,
    config: &ServerConfig,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, AdminError> {
    let listeners = bind(config).await?;
    Ok(serve(listeners, server, shutdown))
}

async fn unix_loop(
    listener: UnixListener,
    peers: PeerPolicy,
    server: Arc<Server>,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let access = match stream.peer_cred() {
                    Ok(cred) => peers.check(&cred),
                    Err(e) => Access::Denied(Arc::from(format!(
                        "cannot read the peer's credentials ({e}); refusing"
                    ))),
                };
                serve_connection(
                    stream,
                    access,
                    Scope::Admin,
                    server.clone(),
                    &graceful,
                    None,
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(ADMIN_GRACE, graceful.shutdown()).await;
}

async fn tcp_loop(
    listener: TcpListener,
    access: Access,
    scope: Scope,
    server: Arc<Server>,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let slots = ConnLimiter::new(TCP_CONNECTIONS, TCP_CONNECTIONS_PER_CLIENT);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(local) = stream.local_addr() else {
                    continue;
                };
                let who = Client::of(peer, local);
                let slot = match slots.try_acquire(who, false) {
                    Ok(slot) => slot,
                    Err(why) => {
                        tracing::debug!(%peer, counted_as = %who, ?why, "admin TCP connection refused: {TCP_CONNECTIONS} open, or {TCP_CONNECTIONS_PER_CLIENT} of this client's");
                        continue;
                    }
                };
                serve_connection(
                    stream,
                    access.clone(),
                    scope,
                    server.clone(),
                    &graceful,
                    Some(slot),
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(ADMIN_GRACE, graceful.shutdown()).await;
}

fn serve_connection<S>(
    stream: S,
    access: Access,
    scope: Scope,
    server: Arc<Server>,
    graceful: &GracefulShutdown,
    slot: Option<ConnPermit>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let server = server.clone();
        let access = access.clone();
        async move { Ok::<_, std::convert::Infallible>(api::handle(req, &server, &access, scope).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    let watched = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = watched.await {
            tracing::debug!(error = %e, "admin connection ended with an error");
        }
        drop(slot);
    });
}
