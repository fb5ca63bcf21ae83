//! `polyhost serve` as a library call, and the control operations the admin
//! API and signals drive (reload, restart, stop/start a site, status).
//!
//! - [`server`]: the running [`Server`]: its sites, the routing table, the
//!   supervisor; every control operation.
//! - [`reload`]: reload (and start-up) as a pure plan and an apply, all or
//!   nothing.
//! - [`status`]: what `polyhost status` reports, as serialisable values.
//!
//! The binary and the integration tests share [`serve`].

pub mod reload;
pub mod router_link;
pub mod server;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigErrors};

pub use reload::ReloadReport;
pub use server::{ControlError, Server};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source} (is another server using the port?)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the router threads (router_threads): {0}")]
    RouterThreads(std::io::Error),
    #[error("admin socket {path}: {source}")]
    Admin {
        path: String,
        source: std::io::Error,
    },
}

/// Binds every configured listen address.
pub async fn bind(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, ServeError> {
    let mut out = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        out.push(l);
    }
    Ok(out)
}

/// Binds the plain (`listen`) and TLS (`tls_listen`) addresses.
pub async fn bind_all(
    server: &crate::config::ServerConfig,
) -> Result<crate::router::Listeners, ServeError> {
    Ok(crate::router::Listeners {
        http: bind(&server.listen).await?,
        https: bind(&server.front.tls_listen).await?,
    })
}

/// Serves `config` on `listeners` until `shutdown` is cancelled, then lets
/// in-flight requests finish within the configured shutdown timeout and
/// stops every site's processes.
pub async fn serve(
    config: Config,
    listeners: impl Into<crate::router::Listeners>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let server = Server::start(config).await?;
    serve_with(server, listeners, shutdown).await
}

/// Like [`serve`], for a [`Server`] the caller already holds (to reload it,
/// or to hand it to the admin API).
pub async fn serve_with(
    server: Arc<Server>,
    listeners: impl Into<crate::router::Listeners>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let listeners = listeners.into();
    for l in &listeners.http {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "listening");
        }
    }
    for l in &listeners.https {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "listening (TLS)");
        }
    }
    let grace = server.shutdown_timeout();
    // Front-door settings (TLS, limits, trusted proxies) are fixed at start.
    let front = server.config().await.server.front;
    let served =
        crate::router::server::serve(listeners, server.table(), shutdown, front, grace).await;
    server.shutdown().await;
    // Lines still in memory reach their files before the process exits.
    crate::router::flush_logs();
    served.map_err(ServeError::RouterThreads)?;
    tracing::info!("stopped");
    Ok(())
}
