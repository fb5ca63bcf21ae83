//! The supervisor's end of privilege separation: `polyhost serve` run as
//! root serves through a router process ([`serve_split`]).
//!
//! - [`keeper`]: starts the router (`isolation::router_process`), restarts
//!   it when it dies, stops it at shutdown.
//! - [`link`]: the [`Link`]: what the router was told and holds, the
//!   server's [`RouterLink`](crate::app::router_link::RouterLink) (publish
//!   and wait for `Applied`; stats), what each router message does.
//! - `groups`: forwarding each process group's snapshot changes as `Group`
//!   updates until it stops.
//!
//! Invariant: the supervisor never accepts on the listening sockets; it
//! keeps them open for the router's whole life and across its restarts.

pub mod groups;
pub mod keeper;
pub mod link;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::app::{ServeError, Server};
use crate::config::Config;

pub use keeper::{Keeper, RouterUser, FDS_ENV};
pub use link::Link;

/// Why the privilege-separated supervisor could not serve.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("router_user: {0}")]
    RouterUser(String),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    #[error("cannot keep the listening sockets for the router process: {0}")]
    Listeners(std::io::Error),
}

/// Whether `polyhost serve` runs split in two processes: when it runs as
/// root (the router then runs as `router_user`). Otherwise (tests, a
/// developer's machine) it serves in one process, as `app::serve` does.
pub fn applies() -> bool {
    crate::isolation::running_as_root()
}

/// Who the router runs as: `router_user`, resolved.
pub fn router_user(config: &crate::config::ServerConfig) -> Result<RouterUser, SplitError> {
    let id = crate::isolation::router_process::router_identity(&config.router_user)
        .map_err(SplitError::RouterUser)?;
    Ok(RouterUser {
        name: id.user,
        uid: id.uid,
        gid: id.gid,
    })
}

/// `polyhost serve` as root: the supervisor starts every site as
/// `app::Server` does, serves the admin API, and has a router process
/// serve HTTP on `listeners` until `shutdown` is cancelled; then the router
/// stops (letting its requests finish), then the sites. `on_start` is
/// called with the server once it runs (the CLI reloads it on SIGHUP).
/// `inherited`: this process is the new binary of an upgrade; its admin
/// listeners came from the predecessor, whom it tells once its router
/// serves (`privsep::upgrade`).
pub async fn serve_split(
    config: Config,
    listeners: crate::router::Listeners,
    inherited: Option<(crate::admin::ListenerFds, super::upgrade::ReadyReport)>,
    shutdown: CancellationToken,
    on_start: impl FnOnce(&Arc<Server>),
) -> Result<(), SplitError> {
    let user = router_user(&config.server)?;
    let config_log_level = config.server.log_level.clone();
    // Before any site starts: runtime sockets and log files are made the
    // router's, who connects to and appends to them.
    crate::supervisor::sockets::set_router_owner(user.uid);
    crate::router::access_log::set_log_owner(user.uid);
    for (l, tls) in listeners
        .http
        .iter()
        .map(|l| (l, ""))
        .chain(listeners.https.iter().map(|l| (l, " (TLS)")))
    {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "listening{tls}");
        }
    }
    let (admin, report) = match inherited {
        Some((fds, report)) => (
            crate::admin::Listeners::inherited(&config.server, fds).await?,
            Some(report),
        ),
        // Before any site starts: a second polyhost on the same socket stops here.
        None => (crate::admin::bind(&config.server).await?, None),
    };
    let admin_fds = admin.duplicate().map_err(SplitError::Listeners)?;
    let cluster = config.server.cluster.clone();
    let server = Server::start(config).await?;
    let link = Link::new(&server);
    link.push_on_demand_renewals();
    server.set_router_link(link.clone());
    match super::upgrade::Handing::new(&server, &listeners, admin_fds, shutdown.clone()) {
        Ok(handing) => server.set_upgrader(Arc::new(handing)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot keep the listeners for a binary upgrade; polyhost upgrade is refused")
        }
    }
    crate::acme::spawn(server.clone(), shutdown.clone());
    let node = crate::cluster::node::spawn(server.clone(), cluster, shutdown.clone());
    let admin = crate::admin::serve(admin, server.clone(), shutdown.clone());
    on_start(&server);
    // Ready for the service manager once the router serves the sites.
    let ready = tokio::spawn({
        let (link, server) = (link.clone(), server.clone());
        async move {
            link.serving().await;
            match report {
                // The predecessor tells the service manager (MAINPID=).
                Some(report) => report.ready().await,
                None => crate::notify::ready(&server.summary()),
            }
        }
    });
    let keeper = match Keeper::new(
        link.clone(),
        user,
        listeners,
        server.shutdown_timeout(),
        &config_log_level,
    ) {
        Ok(k) => k,
        Err(e) => {
            server.shutdown().await;
            return Err(SplitError::Listeners(e));
        }
    };
    keeper.run(shutdown.clone()).await;
    ready.abort();
    crate::cluster::node::stopped(node).await;
    link.close();
    server.shutdown().await;
    // What the supervisor itself wrote to sites' error logs.
    crate::router::flush_logs();
    shutdown.cancel();
    let _ = admin.await;
    tracing::info!("stopped");
    Ok(())
}
