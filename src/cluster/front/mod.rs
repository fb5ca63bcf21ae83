//! `polyhost cluster front`: keeps one HAProxy's maps current with the
//! cluster, and runs the controller ([`controller`]) under the etcd
//! election.
//!
//! A session: connect, grant a lease, campaign in the background, then
//! loop: read the whole cluster ([`Snapshot`]), compute [`Routes`], write
//! both map files (atomically) and, when they changed or HAProxy has not
//! taken them yet, replace both maps through the runtime API; publish
//! `fronts/ID` (under the lease) with the revision read and the routes.
//! The loop wakes on any watch event outside `fronts/` and `controller`,
//! and every [`RESYNC`] anyway (a restarted HAProxy gets the maps again).
//! Losing etcd ends the session; the maps stay as they are (HAProxy keeps
//! routing) and a new session starts after a backoff.

pub mod controller;
pub mod haproxy;
pub mod haproxy_config;
pub mod routes;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, WatchOptions};
use tokio_util::sync::CancellationToken;

use crate::cluster::control::Snapshot;
use crate::cluster::etcd::{Backoff, EtcdSettings};
use crate::cluster::schema::{FrontReport, Keys};
use haproxy::Runtime;
pub use routes::Routes;

/// Re-apply the maps to HAProxy this often even without a change.
pub const RESYNC: Duration = Duration::from_secs(5);

/// The exact-host map's file name in `--map-dir`.
pub const EXACT_MAP: &str = "hosts.map";
/// The wildcard (suffix) map's file name in `--map-dir`.
pub const WILDCARD_MAP: &str = "wildcards.map";

/// What `polyhost cluster front` is given.
#[derive(Clone, Debug)]
pub struct FrontOptions {
    pub etcd: EtcdSettings,
    pub haproxy: Runtime,
    pub map_dir: PathBuf,
    /// `fronts/ID` and the controller candidate's name.
    pub id: String,
    /// TTL of the front's lease (seconds).
    pub lease_ttl: i64,
    /// How long a singleton site's node must be gone before it is re-placed.
    pub singleton_grace: Duration,
}

/// Runs until `shutdown`; every etcd failure starts a new session.
pub async fn run(options: FrontOptions, shutdown: CancellationToken) {
    let mut backoff = Backoff::default();
    let mut applied: Option<Routes> = None;
    while !shutdown.is_cancelled() {
        match session(&options, &mut applied, &mut backoff, &shutdown).await {
            Ok(()) => return,
            Err(e) => tracing::warn!("cluster front: {e:#}; reconnecting"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_wait()) => {}
        }
    }
}

async fn session(
    options: &FrontOptions,
    applied: &mut Option<Routes>,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut client = options.etcd.connect().await?;
    let keys = options.etcd.keys();
    let lease = client.lease_grant(options.lease_ttl, None).await?.id();
    let stop = shutdown.child_token();
    let _stop_on_return = stop.clone().drop_guard();
    let keeper = tokio::spawn(keep_alive(
        client.clone(),
        lease,
        options.lease_ttl,
        stop.clone(),
    ));
    let elect = tokio::spawn(controller::run(
        client.clone(),
        keys.clone(),
        options.id.clone(),
        lease,
        options.singleton_grace,
        stop.clone(),
    ));
    let mut watch = client
        .watch(keys.prefix(), Some(WatchOptions::new().with_prefix()))
        .await?;
    backoff.reset();
    let mut last_resync = tokio::time::Instant::now();
    loop {
        let snap = Snapshot::load(&mut client, &keys).await?;
        let force = last_resync.elapsed() >= RESYNC;
        if force {
            last_resync = tokio::time::Instant::now();
        }
        let routes = Routes::of(&snap);
        apply(options, &routes, applied, force).await;
        if let Some(applied) = applied.as_ref() {
            publish(&mut client, &keys, options, lease, &snap, applied).await?;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = client.lease_revoke(lease).await;
                return Ok(());
            }
            ended = wait_change(&mut watch, &keys) => ended?,
            _ = tokio::time::sleep(RESYNC) => {}
        }
        if keeper.is_finished() || elect.is_finished() {
            anyhow::bail!("lease keep-alive or controller ended (etcd unreachable?)");
        }
    }
}

/// Until a watch event on a key the routes depend on.
async fn wait_change(watch: &mut etcd_client::WatchStream, keys: &Keys) -> anyhow::Result<()> {
    loop {
        let Some(resp) = watch.message().await? else {
            anyhow::bail!("etcd closed the watch");
        };
        if resp.canceled() {
            anyhow::bail!("etcd cancelled the watch");
        }
        let relevant = resp.events().iter().any(|e| {
            e.kv().and_then(|kv| kv.key_str().ok()).is_some_and(|k| {
                !k.starts_with(&keys.fronts())
                    && k != keys.controller()
                    && !k.starts_with(&format!("{}/", keys.controller()))
            })
        });
        if relevant {
            return Ok(());
        }
    }
}

/// Writes the map files and tells HAProxy, when the routes changed, HAProxy
/// missed the last change, or `force`.
async fn apply(options: &FrontOptions, routes: &Routes, applied: &mut Option<Routes>, force: bool) {
    if applied.as_ref() == Some(routes) && !force {
        return;
    }
    let maps = [(EXACT_MAP, &routes.exact), (WILDCARD_MAP, &routes.wildcard)];
    let mut ok = true;
    for (file, entries) in maps {
        let path = options.map_dir.join(file);
        if let Err(e) = haproxy::write_map_file(&path, entries) {
            tracing::error!("cluster front: cannot write {}: {e}", path.display());
        }
        if !ok {
            continue;
        }
        if let Err(e) = options.haproxy.replace_map(&path, entries).await {
            tracing::warn!("cluster front: {e}");
            ok = false;
        }
    }
    if ok {
        if applied.as_ref() != Some(routes) {
            tracing::info!(
                hosts = routes.exact.len() + routes.wildcard.len(),
                "cluster front: maps applied"
            );
        }
        *applied = Some(routes.clone());
    } else {
        *applied = None;
    }
}

/// `fronts/ID` with what HAProxy now routes (written only when HAProxy
/// took it; a front whose HAProxy is down reports its last applied state).
async fn publish(
    client: &mut Client,
    keys: &Keys,
    options: &FrontOptions,
    lease: i64,
    snap: &Snapshot,
    routes: &Routes,
) -> anyhow::Result<()> {
    let report = FrontReport {
        applied_revision: snap.revision,
        routes: routes.by_pattern(),
        updated_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let value = serde_json::to_string(&report)?;
    let put = etcd_client::PutOptions::new().with_lease(lease);
    client
        .put(keys.front(&options.id), value, Some(put))
        .await?;
    Ok(())
}

/// Renews `lease` every third of its TTL until `stop` or an error.
async fn keep_alive(
    mut client: Client,
    lease: i64,
    ttl: i64,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
    let every = Duration::from_millis((ttl.max(1) as u64) * 1000 / 3);
    loop {
        keeper.keep_alive().await?;
        match stream.message().await? {
            Some(r) if r.ttl() > 0 => {}
            _ => anyhow::bail!("lease {lease} expired"),
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}
