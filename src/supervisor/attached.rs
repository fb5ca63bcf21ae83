//! Process groups another process supervises, "attached" here: the router
//! process's view of the supervisor's groups when polyhost runs
//! privilege-separated (`privsep`).
//!
//! An attached group is a [`GroupHandle`] like any other (upstreams lease
//! through it the same way), but no actor runs behind it:
//!
//! - its [`Snapshot`] is what the supervisor last published for the group
//!   ([`Attachments::update`]), with one local [`Endpoint`] per process id,
//!   kept across updates so that the router's in-flight and served counts
//!   go on;
//! - its commands become [`Request`]s to the supervisor: a start (a request
//!   found no ready process) is [`Request::Start`], at most one per update
//!   or per second; a recycle is [`Request::Recycle`]; a stop is answered
//!   at once (the supervisor owns the group's lifecycle), a rolling restart
//!   is ignored (the supervisor's admin API does that);
//! - a process missing from an update is being stopped: its endpoint is
//!   closed to new leases, and [`Request::Drained`] says so once the
//!   router holds no lease on it ([`Attachments::check_drained`]).
//! - [`Attachments::report_usage`] says what the router's requests did since
//!   the last report, for the supervisor's idle, recycling and drain
//!   decisions: each group with a request in flight or one finished since
//!   (a request that found no ready process is no use: it asked a start),
//!   and nothing for the others, so that idle groups scale to zero.
//!
//! Invariants: the supervisor is told [`Request::Drained`] for a process
//! only once it is unpublished here, closed, and holds no lease, and after
//! that no usage report names it; every request, usage report and drained
//! notice leaves in one channel, in the order the counts were read (the
//! ones that read counts do so under one lock).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, watch};

use super::endpoint::{Activity, Endpoint};
use super::handle::GroupHandle;
use super::launcher::Lifecycle;
use super::lease::Recycler;
use super::mailbox::Cmd;
use super::snapshot::{GroupKey, GroupState, Snapshot};

/// A group's state as its supervisor published it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub state: GroupState,
    /// Its ready processes: the only ones requests may go to.
    pub endpoints: Vec<PublishedEndpoint>,
    pub app_error: Option<String>,
    pub last_error: Option<String>,
}

/// One ready process of a [`Published`] group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedEndpoint {
    /// Unique within its group, never reused.
    pub id: u64,
    pub pid: i32,
    pub socket: PathBuf,
    /// Who must listen on `socket` (checked on connect).
    pub uid: Option<u32>,
    /// A loopback port instead of `socket` (`Endpoint::tcp`).
    pub tcp: Option<std::net::SocketAddr>,
}

/// What the router tells or asks its supervisor, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Start the group: a request found no ready process.
    Start { group: GroupKey },
    /// Replace one process gracefully.
    Recycle {
        group: GroupKey,
        endpoint: u64,
        reason: String,
    },
    /// No lease is held on this unpublished process, and none will be.
    Drained { group: GroupKey, endpoint: u64 },
    /// What the requests did since the last report (only groups used).
    Usage(Vec<GroupUse>),
}

/// A group's use since the last report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupUse {
    pub group: GroupKey,
    /// Milliseconds since a request last started or ended on the group.
    pub idle_ms: u64,
    pub endpoints: Vec<EndpointUse>,
}

/// One process's counts: absolute, not deltas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointUse {
    pub id: u64,
    pub in_flight: u32,
    /// Requests it finished since it was first published here.
    pub served: u64,
}

/// A second between two starts asked of a group that published nothing
/// meanwhile (its supervisor ignores a start while it backs off).
const START_AGAIN_MS: u64 = 1000;

/// Every group attached in this process, by key.
pub struct Attachments {
    inner: Mutex<Inner>,
    requests: mpsc::UnboundedSender<Request>,
    /// Told when an endpoint starts waiting for its last leases.
    drain_started: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    groups: HashMap<GroupKey, Attached>,
    /// Unpublished endpoints that still have leases, oldest first.
    draining: Vec<Draining>,
}

/// One attached group.
struct Attached {
    snap: watch::Sender<Arc<Snapshot>>,
    /// The published endpoints, by id.
    endpoints: HashMap<u64, Arc<Endpoint>>,
    /// `served` of each published endpoint at the last usage report.
    reported: HashMap<u64, u64>,
    activity: Arc<Activity>,
    /// The group's command channel (its forwarding task ends when this and
    /// every handle's copy are gone).
    cmds: crate::supervisor::mailbox::Sender<Cmd>,
    /// When a start was last asked (coarse ms; 0: not since the last update).
    start_asked: Arc<AtomicU64>,
}

struct Draining {
    group: GroupKey,
    endpoint: Arc<Endpoint>,
    activity: Arc<Activity>,
}

impl Attachments {
    /// No group yet; what the groups ask of the supervisor comes out of the
    /// receiver, in order.
    pub fn new() -> (Arc<Attachments>, mpsc::UnboundedReceiver<Request>) {
        let (requests, rx) = mpsc::unbounded_channel();
        let attachments = Attachments {
            inner: Mutex::new(Inner::default()),
            requests,
            drain_started: tokio::sync::Notify::new(),
        };
        (Arc::new(attachments), rx)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The handle of group `key` (an idle one until its supervisor publishes
    /// it). Must be called from the tokio runtime.
    pub fn attach(
        &self,
        key: GroupKey,
        runtime: &'static str,
        lifecycle: &Lifecycle,
    ) -> GroupHandle {
        let mut inner = self.lock();
        let group = self.entry(&mut inner, &key);
        GroupHandle {
            site: key.site.as_str().into(),
            runtime,
            tx: group.cmds.clone(),
            snapshot: group.snap.subscribe(),
            activity: group.activity.clone(),
            startup_timeout: lifecycle.startup_timeout,
            recycler: Arc::new(Recycler {
                cmds: group.cmds.clone(),
                max_requests: lifecycle.max_requests,
            }),
        }
    }

    /// Group `key`, made idle if it is new.
    fn entry<'a>(&self, inner: &'a mut Inner, key: &GroupKey) -> &'a mut Attached {
        inner.groups.entry(key.clone()).or_insert_with(|| {
            let (cmds, rx) = crate::supervisor::mailbox::channel();
            let start_asked = Arc::new(AtomicU64::new(0));
            tokio::spawn(forward(
                key.clone(),
                rx,
                self.requests.clone(),
                start_asked.clone(),
            ));
            let (snap, _) = watch::channel(Arc::new(Snapshot {
                state: GroupState::Idle,
                generation: key.generation,
                endpoints: Vec::new(),
                pids: Vec::new(),
                restarts: 0,
                oom_kills: 0,
                last_error: None,
                app_error: None,
            }));
            Attached {
                snap,
                endpoints: HashMap::new(),
                reported: HashMap::new(),
                activity: Arc::new(Activity::new()),
                cmds,
                start_asked,
            }
        })
    }

    /// Group `key` as its supervisor published it now. Its endpoints are
    /// published first; then those it no longer has are closed, and each is
    /// drained at once if it has no lease, else once its last lease ends
    /// ([`check_drained`](Self::check_drained)). A `Stopped` group is
    /// forgotten (its handles' leases fail as stopped). Must be called from
    /// the tokio runtime.
    pub fn update(&self, key: &GroupKey, published: Published) {
        let mut inner = self.lock();
        let group = self.entry(&mut inner, key);
        group.start_asked.store(0, Ordering::SeqCst);
        let stopped = published.state == GroupState::Stopped;
        // A stopped group has no ready process, whatever it says.
        let ready = if stopped {
            &[][..]
        } else {
            &published.endpoints[..]
        };
        let mut kept = HashMap::with_capacity(ready.len());
        let endpoints: Vec<Arc<Endpoint>> = ready
            .iter()
            .map(|e| {
                // Ids are never reused: the same id is the same process.
                let endpoint = match group.endpoints.remove(&e.id) {
                    Some(old) => old,
                    None => {
                        group.reported.insert(e.id, 0);
                        let endpoint = Endpoint::new(e.id, e.pid, e.socket.clone(), e.uid);
                        Arc::new(match e.tcp {
                            Some(addr) => endpoint.with_tcp(addr),
                            None => endpoint,
                        })
                    }
                };
                kept.insert(e.id, endpoint.clone());
                endpoint
            })
            .collect();
        let gone = std::mem::replace(&mut group.endpoints, kept);
        group
            .reported
            .retain(|id, _| group.endpoints.contains_key(id));
        group.snap.send_replace(Arc::new(Snapshot {
            state: published.state,
            generation: key.generation,
            pids: endpoints.iter().map(|e| e.pid).collect(),
            endpoints,
            restarts: 0,
            oom_kills: 0,
            last_error: published.last_error,
            app_error: published.app_error,
        }));
        let activity = group.activity.clone();
        if stopped {
            inner.groups.remove(key);
        }
        // Unpublished above, closed now: a lease taken from an older
        // snapshot is counted before `closed` is read (see `endpoint`).
        for endpoint in gone.into_values() {
            endpoint.close();
            inner.draining.push(Draining {
                group: key.clone(),
                endpoint,
                activity: activity.clone(),
            });
        }
        self.drain_idle(&mut inner);
        if !inner.draining.is_empty() {
            self.drain_started.notify_one();
        }
    }

    /// Resolves once some unpublished endpoint waits for its last leases
    /// (at once if one does): a caller polls [`check_drained`](Self::check_drained)
    /// only while one does.
    pub async fn drain_started(&self) {
        let notified = self.drain_started.notified();
        if self.draining() {
            return;
        }
        notified.await;
    }

    /// Says [`Request::Drained`] for every unpublished endpoint whose last
    /// lease ended. Call it often (every 10 ms): the supervisor waits for it
    /// to stop the process.
    pub fn check_drained(&self) {
        let mut inner = self.lock();
        self.drain_idle(&mut inner);
    }

    fn drain_idle(&self, inner: &mut Inner) {
        inner.draining.retain(|d| {
            if d.endpoint.inflight() > 0 {
                return true;
            }
            let _ = self.requests.send(Request::Drained {
                group: d.group.clone(),
                endpoint: d.endpoint.id,
            });
            false
        });
    }

    /// Whether some unpublished endpoint still waits for its leases.
    pub fn draining(&self) -> bool {
        !self.lock().draining.is_empty()
    }

    /// Sends one [`Request::Usage`] with every group used since the last
    /// report: one with a request in flight, or whose endpoints finished
    /// some. Nothing when no group was used.
    pub fn report_usage(&self) {
        let mut inner = self.lock();
        let Inner { groups, draining } = &mut *inner;
        let mut used: Vec<GroupUse> = Vec::new();
        for (key, group) in groups.iter_mut() {
            let mut endpoints = Vec::with_capacity(group.endpoints.len());
            let mut active = false;
            for (id, e) in &group.endpoints {
                let (in_flight, served) = (e.inflight(), e.served());
                active |= in_flight > 0 || group.reported.get(id) != Some(&served);
                group.reported.insert(*id, served);
                endpoints.push(use_of(e));
            }
            let still = draining.iter().filter(|d| &d.group == key);
            for d in still.filter(|d| d.endpoint.inflight() > 0) {
                active = true;
                endpoints.push(use_of(&d.endpoint));
            }
            if active {
                endpoints.sort_by_key(|e| e.id);
                used.push(GroupUse {
                    group: key.clone(),
                    idle_ms: idle_ms(&group.activity),
                    endpoints,
                });
            }
        }
        // Draining endpoints of groups already forgotten (stopped).
        let mut orphans: HashMap<&GroupKey, GroupUse> = HashMap::new();
        for d in draining.iter() {
            if groups.contains_key(&d.group) || d.endpoint.inflight() == 0 {
                continue;
            }
            orphans
                .entry(&d.group)
                .or_insert_with(|| GroupUse {
                    group: d.group.clone(),
                    idle_ms: idle_ms(&d.activity),
                    endpoints: Vec::new(),
                })
                .endpoints
                .push(use_of(&d.endpoint));
        }
        used.extend(orphans.into_values());
        if !used.is_empty() {
            used.sort_by(|a, b| a.group.cmp(&b.group));
            let _ = self.requests.send(Request::Usage(used));
        }
    }

    /// How many groups are attached (status, tests).
    pub fn len(&self) -> usize {
        self.lock().groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn use_of(e: &Endpoint) -> EndpointUse {
    EndpointUse {
        id: e.id,
        in_flight: u32::try_from(e.inflight()).unwrap_or(u32::MAX),
        served: e.served(),
    }
}

fn idle_ms(activity: &Activity) -> u64 {
    u64::try_from(activity.idle_for().as_millis()).unwrap_or(u64::MAX)
}

/// Turns one group's commands into requests to its supervisor, until every
/// sender is gone.
async fn forward(
    group: GroupKey,
    mut cmds: crate::supervisor::mailbox::Receiver<Cmd>,
    requests: mpsc::UnboundedSender<Request>,
    start_asked: Arc<AtomicU64>,
) {
    while let Some(cmd) = cmds.recv().await {
        let request = match cmd {
            Cmd::Start => {
                let now = crate::clock::coarse_ms().max(1);
                let last = start_asked.load(Ordering::SeqCst);
                if last != 0 && now.saturating_sub(last) < START_AGAIN_MS {
                    continue;
                }
                start_asked.store(now, Ordering::SeqCst);
                Request::Start {
                    group: group.clone(),
                }
            }
            Cmd::Recycle { endpoint, reason } => Request::Recycle {
                group: group.clone(),
                endpoint,
                reason,
            },
            // The supervisor stops its groups; nothing runs here to stop.
            Cmd::Stop(done) => {
                let _ = done.send(());
                continue;
            }
            // A rolling restart, signals: the supervisor's (admin API).
            Cmd::RestartAll | Cmd::Signal(_) => continue,
        };
        if requests.send(request).is_err() {
            return;
        }
    }
}

#[cfg(test)]
#[path = "attached_tests.rs"]
mod tests;
