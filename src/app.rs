//! `polyhost serve` as a library call: prepares directories, builds every
//! site, binds the listeners and runs the router until the shutdown token
//! fires. The binary and the integration tests share this entry.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigErrors};
use crate::router::{self, RoutingTable};
use crate::sites;
use crate::supervisor::Supervisor;

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
) -> Result<router::Listeners, ServeError> {
    Ok(router::Listeners {
        http: bind(&server.listen).await?,
        https: bind(&server.front.tls_listen).await?,
    })
}

/// Serves `config` on `listeners` until `shutdown` is cancelled, then lets
/// in-flight requests finish within the configured shutdown timeout.
pub async fn serve(
    config: Config,
    listeners: impl Into<router::Listeners>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let listeners = listeners.into();
    for dir in [&config.server.state_dir, &config.server.log_dir] {
        std::fs::create_dir_all(dir).map_err(|source| ServeError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let supervisor = Supervisor::new(&config.server);
    let mut errors = ConfigErrors::default();
    let mut built = Vec::new();
    for site in config.sites.values() {
        match sites::build_site(site, &config.server.log_dir, &supervisor, 1) {
            Ok(s) => built.push(s),
            Err(e) => errors.0.extend(e.0),
        }
    }
    if !errors.is_empty() {
        stop_sites(&built, &supervisor).await;
        return Err(errors.into());
    }
    let table = Arc::new(ArcSwap::from_pointee(RoutingTable::new(
        built.iter().map(|s| s.route.clone()),
    )));
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
    tracing::info!(sites = config.sites.len(), "serving");
    router::server::serve(
        listeners,
        table,
        shutdown,
        config.server.front.clone(),
        config.server.shutdown_timeout,
    )
    .await;
    stop_sites(&built, &supervisor).await;
    tracing::info!("stopped");
    Ok(())
}

/// Stops every site's processes (in parallel) and removes polyhost's cgroups.
async fn stop_sites(sites: &[sites::Site], supervisor: &Supervisor) {
    futures_util::future::join_all(sites.iter().map(|s| s.stop(supervisor))).await;
    supervisor.shutdown();
}
