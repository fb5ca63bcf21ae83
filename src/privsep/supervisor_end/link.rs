//! The supervisor's side of the link to one router process after another:
//! what the router was told ([`Link`]'s groups and the endpoints it holds),
//! the queue of frames to the connected router, the answers it waits for
//! (`Applied`, `Stats`), and what it does with each [`ToSupervisor`].
//!
//! One lock ([`Inner`]) covers the connection and the groups: a `Group`
//! update is built (and its endpoints marked held) and queued under it, and
//! a router's death clears every hold under it, so no hold is set for a
//! router that is already gone.
//!
//! Invariant: an endpoint is in a group's `held` map exactly while it is
//! held for the router (`Endpoint::router_held`), so a router's death
//! releases every hold it had.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};

use crate::app::router_link::{Desired, RouterLink, StatsReply, REOPEN_TIMEOUT};
use crate::app::Server;
use crate::privsep::wire::{GroupKey, ToRouter, ToSupervisor};
use crate::supervisor::{Endpoint, GroupHandle};

use super::groups;

/// How long a publication waits for the router's `Applied`.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stats request waits for the router's answer.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// The connected router, as publications wait for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RouterState {
    /// Which router (counts connections); 0: none yet.
    epoch: u64,
    connected: bool,
    /// The highest `Applied` version this router answered.
    applied: u64,
    /// This router said `Applied` at least once: it serves (the first
    /// state may be version 0).
    serves: bool,
}

/// The router link: shared by the [`Server`] (as its [`RouterLink`]), the
/// keeper and the group forwarders.
pub struct Link {
    /// Itself, for the forwarders it starts.
    me: Weak<Link>,
    server: Weak<Server>,
    inner: Mutex<Inner>,
    state: watch::Sender<RouterState>,
    stats: Mutex<Stats>,
}

#[derive(Default)]
struct Stats {
    next: u64,
    waiting: BTreeMap<u64, oneshot::Sender<StatsReply>>,
    /// Log reopenings asked of the router, by id (the same counter).
    reopening: BTreeMap<u64, oneshot::Sender<()>>,
}

pub(super) struct Inner {
    /// The connected router's outgoing queue.
    out: Option<mpsc::UnboundedSender<ToRouter>>,
    /// Every group the router was told of (or will be, when it connects),
    /// until it stops.
    pub(super) groups: BTreeMap<GroupKey, Told>,
    /// The last state queued for the connected router (complete at its
    /// `Hello`, then each publication's): the next publication is sent as
    /// the changes from it. `None` while no router is connected.
    told: Option<Desired>,
}

/// A group the link forwards.
pub(super) struct Told {
    pub(super) handle: GroupHandle,
    /// Its endpoints the router holds (told and not `Drained`), by id.
    pub(super) held: BTreeMap<u64, Arc<Endpoint>>,
    /// The last update sent to the connected router (an unchanged one is
    /// not sent again: a snapshot that changed only in what the router does
    /// not see, such as its pids, makes the same update).
    pub(super) last: Option<crate::privsep::wire::GroupUpdate>,
    /// The forwarding task (ends by itself once the group stopped).
    forwarder: tokio::task::AbortHandle,
}

impl Link {
    pub fn new(server: &Arc<Server>) -> Arc<Link> {
        Arc::new_cyclic(|me| Link {
            me: me.clone(),
            server: Arc::downgrade(server),
            inner: Mutex::new(Inner {
                out: None,
                groups: BTreeMap::new(),
                told: None,
            }),
            state: watch::Sender::new(RouterState {
                epoch: 0,
                connected: false,
                applied: 0,
                serves: false,
            }),
            stats: Mutex::new(Stats::default()),
        })
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A router said `Hello` on a link whose writer reads `out`: it is told
    /// every group of what is published (their `Group` updates first, so it
    /// can attach them at once), then the current [`Desired`], complete
    /// (later publications send changes from it).
    pub(super) fn connected(self: &Arc<Self>, out: mpsc::UnboundedSender<ToRouter>) {
        let Some(server) = self.server.upgrade() else {
            return;
        };
        let mut inner = self.lock();
        inner.out = Some(out);
        for told in inner.groups.values_mut() {
            told.last = None;
        }
        self.state.send_modify(|s| {
            s.epoch += 1;
            s.connected = true;
            s.applied = 0;
            s.serves = false;
        });
        self.register(&mut inner, server.published_groups());
        let keys: Vec<GroupKey> = inner.groups.keys().cloned().collect();
        for key in keys {
            groups::send_update(&mut inner, &key);
        }
        // Read under the lock: a publication that found no router before
        // this sees its sites here; one after queues its own Desired after.
        let desired = server.desired();
        inner.told = Some(desired.clone());
        inner.send(ToRouter::Desired(desired));
    }

    /// The router is gone: nothing more is queued for it, every hold it had
    /// is released and its counts are folded into the endpoints' own, stats
    /// requests fail, and publications waiting for it go on.
    pub(super) fn disconnected(&self) {
        let mut inner = self.lock();
        inner.out = None;
        inner.told = None;
        for told in inner.groups.values_mut() {
            for (_, endpoint) in std::mem::take(&mut told.held) {
                endpoint.clear_router();
            }
        }
        drop(inner);
        self.state.send_modify(|s| s.connected = false);
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .clear();
    }

    /// Starts forwarding the groups of `published` not forwarded yet;
    /// returns their keys.
    fn register(
        self: &Arc<Self>,
        inner: &mut Inner,
        published: Vec<(GroupKey, GroupHandle)>,
    ) -> Vec<GroupKey> {
        let mut new = Vec::new();
        for (key, handle) in published {
            if inner.groups.contains_key(&key) {
                continue;
            }
            let forwarder = groups::spawn_forwarder(Arc::downgrade(self), key.clone(), &handle);
            new.push(key.clone());
            inner.groups.insert(
                key,
                Told {
                    handle,
                    held: BTreeMap::new(),
                    last: None,
                    forwarder,
                },
            );
        }
        new
    }

    /// Applies one message of the router (every one but `Hello`).
    pub(super) fn receive(&self, msg: ToSupervisor) {
        match msg {
            ToSupervisor::Hello { pid } => {
                tracing::warn!(pid, "the router said Hello twice; ignored");
            }
            ToSupervisor::Applied { version } => {
                self.state.send_if_modified(|s| {
                    let newer = version > s.applied || !s.serves;
                    s.applied = s.applied.max(version);
                    s.serves = true;
                    newer
                });
            }
            ToSupervisor::Start { group } => match self.handle(&group) {
                Some(handle) => handle.start(),
                None => tracing::debug!(%group, "the router asked to start a group that is gone"),
            },
            ToSupervisor::Recycle {
                group,
                endpoint,
                reason,
            } => match self.handle(&group) {
                Some(handle) => handle.recycle(endpoint, reason),
                None => {
                    tracing::debug!(%group, "the router asked to recycle in a group that is gone")
                }
            },
            ToSupervisor::Usage(usage) => {
                let inner = self.lock();
                for g in usage {
                    let Some(told) = inner.groups.get(&g.group) else {
                        continue;
                    };
                    told.handle
                        .note_remote_activity(Duration::from_millis(g.idle_ms));
                    for e in g.endpoints {
                        if let Some(endpoint) = told.held.get(&e.id) {
                            endpoint.set_remote(e.in_flight as usize, e.served);
                        }
                    }
                }
            }
            ToSupervisor::Drained { group, endpoint } => {
                let mut inner = self.lock();
                let released = inner
                    .groups
                    .get_mut(&group)
                    .and_then(|told| told.held.remove(&endpoint));
                if let Some(e) = released {
                    e.release_router_hold();
                }
            }
            ToSupervisor::Stats(reply) => {
                let waiting = self
                    .stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .waiting
                    .remove(&reply.id);
                if let Some(tx) = waiting {
                    let _ = tx.send(reply);
                }
            }
            ToSupervisor::OnDemandCertificate { id, name, client } => {
                self.on_demand(id, name, client)
            }
            ToSupervisor::LogsReopened { id } => {
                let waiting = self
                    .stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .reopening
                    .remove(&id);
                if let Some(tx) = waiting {
                    let _ = tx.send(());
                }
            }
        }
    }

    /// From now on every renewed on-demand certificate is sent to the
    /// connected router (`ToRouter::OnDemandRenewed`).
    pub fn push_on_demand_renewals(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        crate::acme::on_demand::on_renewal(move |name, pair| {
            if let Some(link) = me.upgrade() {
                link.lock().send(ToRouter::OnDemandRenewed {
                    name: name.to_owned(),
                    pair: pair.clone(),
                });
            }
        });
    }

    /// Answers the router's on-demand request `id` for `name` (a
    /// handshake of `client`) once `acme::on_demand` has (or refuses) its
    /// certificate; a refusal says how long it holds.
    fn on_demand(&self, id: u64, name: String, client: Option<std::net::IpAddr>) {
        let (Some(link), Some(server)) = (self.self_arc(), self.server.upgrade()) else {
            return;
        };
        tokio::spawn(async move {
            let answer = crate::acme::on_demand::certificate(&server, name, client).await;
            let (result, retry_ms) = match answer {
                Ok(pair) => (Ok(pair), None),
                Err(refusal) => {
                    let retry_ms = refusal
                        .retry
                        .map(|r| u64::try_from(r.as_millis()).unwrap_or(u64::MAX));
                    (Err(refusal.why), retry_ms)
                }
            };
            link.lock().send(ToRouter::OnDemandCertificate {
                id,
                result,
                retry_ms,
            });
        });
    }

    fn handle(&self, key: &GroupKey) -> Option<GroupHandle> {
        self.lock().groups.get(key).map(|t| t.handle.clone())
    }

    /// Stops forwarding every group (polyhost is stopping).
    pub(super) fn close(&self) {
        let mut inner = self.lock();
        inner.out = None;
        inner.told = None;
        for (_, told) in std::mem::take(&mut inner.groups) {
            told.forwarder.abort();
            for endpoint in told.held.values() {
                endpoint.clear_router();
            }
        }
        drop(inner);
        self.state.send_modify(|s| s.connected = false);
    }

    /// Resolves once a router is connected and serves a published state
    /// (it said `Applied`): polyhost is ready.
    pub async fn serving(&self) {
        let mut state = self.state.subscribe();
        let _ = state.wait_for(|s| s.connected && s.serves).await;
    }

    /// Whether a router is connected now (for tests and status).
    pub fn is_connected(&self) -> bool {
        self.state.borrow().connected
    }

    /// How many groups the link forwards now.
    pub fn forwarded_groups(&self) -> usize {
        self.lock().groups.len()
    }
}

impl Inner {
    /// Queues `msg` for the connected router; `false` when there is none.
    pub(super) fn send(&self, msg: ToRouter) -> bool {
        self.out.as_ref().is_some_and(|out| out.send(msg).is_ok())
    }

    pub(super) fn is_connected(&self) -> bool {
        self.out.as_ref().is_some_and(|out| !out.is_closed())
    }
}

impl RouterLink for Link {
    /// Tells the router of the groups it does not know yet, then what
    /// changed from the last state it was told to `desired`
    /// ([`Desired::changes_from`]); waits (at most [`APPLY_TIMEOUT`]) until
    /// it serves it, or returns at once when no router is connected or it
    /// dies meanwhile.
    fn publish(&self, desired: Desired) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let version = desired.version;
            let mut state = self.state.subscribe();
            let epoch = {
                let Some(server) = self.server.upgrade() else {
                    return;
                };
                let mut inner = self.lock();
                let Some(this) = self.self_arc() else {
                    return;
                };
                let new = this.register(&mut inner, server.published_groups());
                if !inner.is_connected() {
                    return;
                }
                for key in new {
                    groups::send_update(&mut inner, &key);
                }
                let msg = match inner.told.take() {
                    Some(before) => ToRouter::Changes(desired.changes_from(&before)),
                    // Connected without a state told: cannot happen (`connected`
                    // tells one under this lock); the complete one is always right.
                    None => ToRouter::Desired(desired.clone()),
                };
                inner.told = Some(desired);
                inner.send(msg);
                state.borrow_and_update().epoch
            };
            let served = tokio::time::timeout(
                APPLY_TIMEOUT,
                state.wait_for(|s| s.epoch != epoch || !s.connected || s.applied >= version),
            )
            .await;
            if served.is_err() {
                tracing::warn!(
                    version,
                    "the router did not say it serves the new configuration within {APPLY_TIMEOUT:?}; retiring the old one anyway"
                );
            }
        })
    }

    fn stats(&self) -> BoxFuture<'_, Option<StatsReply>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let id = {
                let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
                stats.next += 1;
                let id = stats.next;
                stats.waiting.insert(id, tx);
                id
            };
            if !self.lock().send(ToRouter::StatsRequest { id }) {
                self.forget_stats(id);
                return None;
            }
            let reply = tokio::time::timeout(STATS_TIMEOUT, rx).await;
            self.forget_stats(id);
            reply.ok()?.ok()
        })
    }

    fn reopen_logs(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let id = {
                let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
                stats.next += 1;
                let id = stats.next;
                stats.reopening.insert(id, tx);
                id
            };
            let sent = self.lock().send(ToRouter::ReopenLogs { id });
            let answered =
                sent && matches!(tokio::time::timeout(REOPEN_TIMEOUT, rx).await, Ok(Ok(())));
            self.stats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .reopening
                .remove(&id);
            answered
        })
    }
}

impl Link {
    fn forget_stats(&self, id: u64) {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .remove(&id);
    }

    /// This link as an `Arc` (for the forwarders it starts).
    fn self_arc(&self) -> Option<Arc<Link>> {
        self.me.upgrade()
    }
}
