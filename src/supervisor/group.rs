//! A site process group: the processes of one runtime of one site, as one
//! actor task.
//!
//! # Lifecycle
//!
//! ```text
//!            Start (first request, or eager)          all slots ready
//!   Idle ───────────────────────────────► Starting ─────────────────► Running
//!    ▲                                        │  crash: restart after backoff │
//!    │ idle_timeout (scale to zero)            ▼                               │
//!    └──────────────────────────────────── Running ◄───────────────────────────┘
//!   crash loop (RestartPolicy) → Failed: requests get 503; a Start after the
//!   backoff cap (or a restart/reload) tries again.     Stop → Stopped (final).
//! ```
//!
//! Scale to zero (`idle_timeout`, checked in `group/checks.rs`) drains rather than
//! kills: the group turns `Idle` and unpublishes its processes, closes their
//! endpoints to new leases (a request that raced it takes none and starts
//! the group again, see [`super::endpoint`]), waits for the requests still
//! in them, then stops them.
//!
//! Each process has a slot. A slot's process is started (confined by
//! `isolation`) with a socket the group bound for it ([`super::sockets`]),
//! becomes ready when it serves there (see "Readiness" in [`super::watch`]),
//! and is published as an [`Endpoint`] in the group's [`Snapshot`]. Recycling
//! (max_requests, memory, a stuck request, a restart) starts the replacement
//! first, publishes it, then drains the old process (waits for its in-flight
//! requests, bounded by `drain_timeout`) and stops it. Stopping is SIGTERM to
//! the process group, SIGKILL to it and its cgroup after the grace period.
//!
//! Invariants: a process is only ever published once it serves on its socket; a
//! process that is no longer published gets no new leases; every process the
//! group started is stopped (and reaped) when the group stops or is dropped.
//!
//! # Layout
//!
//! This file holds the group's types, its actor loop and its state; the
//! actor's work is split by idea:
//!
//! - `group/start.rs`: starting a slot's process, and its readiness;
//! - `group/spawner.rs`: the seam to real processes (start, exit,
//!   readiness, RSS), faked by `group/tests.rs`;
//! - `group/restart.rs`: exits and crashes, backoff, recycling and
//!   restarts (start the replacement first, or stop the old process first
//!   when the site is at `limits.processes`);
//! - `group/stop.rs`: drain, stop, scale to zero, stopping the group;
//! - `group/checks.rs`: the periodic checks (slot refill, OOM, memory,
//!   recycling, idle).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::endpoint::{Activity, Endpoint};
use super::handle::GroupHandle;
use super::launcher::{Launcher, Lifecycle};
use super::lease::Recycler;
use super::mailbox::{Cmd, Event, STOP_GRACE};
use super::policy::{RestartPolicy, RestartTracker};
use super::snapshot::{GroupState, Snapshot};
use crate::isolation::{Rlimits, SiteCgroup, SiteIdentity};

mod checks;
mod restart;
mod spawner;
mod start;
mod stop;
#[cfg(test)]
mod tests;

use spawner::{Isolated, Spawner};

const TICK: Duration = Duration::from_millis(500);

/// Everything a group needs to start its processes.
pub struct GroupSpec {
    pub site: String,
    pub generation: u64,
    pub launcher: Arc<dyn Launcher>,
    pub identity: Option<SiteIdentity>,
    /// The site's cgroup; each process gets a child cgroup of it.
    pub cgroup: Option<SiteCgroup>,
    /// stdout/stderr of the processes.
    pub error_log: PathBuf,
    /// Directory for the processes' sockets: root's, 0700, no site can
    /// reach it (see [`super::sockets`]).
    pub socket_dir: PathBuf,
    /// The site's memory limit when no cgroup enforces it: the group polls
    /// the RSS of its processes' sessions and kills the largest above it.
    pub memory_limit: Option<u64>,
    pub rlimits: Rlimits,
    /// Start the processes under `SCHED_BATCH` (`site_scheduling = "batch"`).
    pub batch_scheduling: bool,
    /// The site's sandbox every process starts in; `None`: the host's view.
    pub sandbox: Option<crate::isolation::Sandbox>,
    pub policy: RestartPolicy,
}

/// Starts the group's actor task and returns its handle. Must be called
/// from the tokio runtime (processes are forked from its worker threads).
pub fn spawn_group(spec: GroupSpec) -> GroupHandle {
    spawn_group_with(spec, Arc::new(Isolated))
}

/// [`spawn_group`] with the processes started by `spawner`.
fn spawn_group_with(spec: GroupSpec, spawner: Arc<dyn Spawner>) -> GroupHandle {
    let lifecycle = spec.launcher.lifecycle();
    let (tx, rx) = crate::supervisor::mailbox::channel();
    let (events_tx, events_rx) = crate::supervisor::mailbox::channel();
    let initial = Arc::new(Snapshot {
        state: GroupState::Idle,
        generation: spec.generation,
        endpoints: Vec::new(),
        pids: Vec::new(),
        restarts: 0,
        oom_kills: 0,
        last_error: None,
        app_error: None,
    });
    let (snap_tx, snap_rx) = watch::channel(initial);
    let activity = Arc::new(Activity::new());
    let handle = GroupHandle {
        site: spec.site.clone().into(),
        runtime: spec.launcher.runtime(),
        tx: tx.clone(),
        snapshot: snap_rx,
        activity: activity.clone(),
        startup_timeout: lifecycle.startup_timeout,
        recycler: Arc::new(Recycler {
            cmds: tx.clone(),
            max_requests: lifecycle.max_requests,
        }),
    };
    let eager = lifecycle.eager;
    let actor = Actor {
        trackers: (0..lifecycle.processes)
            .map(|_| RestartTracker::new(spec.policy.clone()))
            .collect(),
        slots: (0..lifecycle.processes).map(|_| Slot::Empty).collect(),
        lifecycle,
        spec,
        spawner,
        procs: HashMap::new(),
        next_id: 1,
        state: GroupState::Idle,
        restarts: 0,
        oom_kills: 0,
        last_error: None,
        app_error: None,
        failed_at: None,
        events: events_tx,
        snap: snap_tx,
        activity,
    };
    tokio::spawn(actor.run(rx, events_rx));
    if eager {
        handle.start();
    }
    handle
}

/// One process slot.
enum Slot {
    Empty,
    /// Waiting to restart after a crash.
    Backoff {
        until: Instant,
    },
    /// Holds the id of the current process (starting or ready).
    Proc(u64),
}

struct Proc {
    slot: usize,
    endpoint: Arc<Endpoint>,
    started: Instant,
    ready: bool,
    /// Replaced and no longer published; stopped once idle.
    draining: bool,
    /// We asked it to stop; its exit is not a crash.
    stopping: bool,
    /// Stopped by a restart that had no room to start the replacement
    /// first: its slot gets a new process as soon as it is gone.
    restart_when_stopped: bool,
    stop: Option<oneshot::Sender<Duration>>,
    /// The process that this one replaces, drained once this one is ready.
    replaces: Option<u64>,
    /// The process's own cgroup (a child of the site's).
    cgroup: Option<SiteCgroup>,
    /// OOM kills already counted from that cgroup.
    oom_seen: u64,
    /// The task waiting for it to become ready: ended with the process.
    ready_task: tokio::task::AbortHandle,
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.ready_task.abort();
    }
}

struct Actor {
    spec: GroupSpec,
    /// Starts and measures the processes (real ones but in tests).
    spawner: Arc<dyn Spawner>,
    lifecycle: Lifecycle,
    slots: Vec<Slot>,
    trackers: Vec<RestartTracker>,
    procs: HashMap<u64, Proc>,
    next_id: u64,
    state: GroupState,
    restarts: u64,
    oom_kills: u64,
    last_error: Option<String>,
    app_error: Option<String>,
    failed_at: Option<Instant>,
    events: crate::supervisor::mailbox::Sender<Event>,
    snap: watch::Sender<Arc<Snapshot>>,
    activity: Arc<Activity>,
}

impl Actor {
    async fn run(
        mut self,
        mut cmds: crate::supervisor::mailbox::Receiver<Cmd>,
        mut events: crate::supervisor::mailbox::Receiver<Event>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Start) => self.start(),
                    Some(Cmd::Recycle { endpoint, reason }) => self.recycle(endpoint, &reason),
                    Some(Cmd::RestartAll) => self.restart_all(),
                    Some(Cmd::Signal(signal)) => self.signal_processes(signal),
                    Some(Cmd::Stop(reply)) => {
                        self.stop_all(&mut events).await;
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        self.stop_all(&mut events).await;
                        return;
                    }
                },
                Some(ev) = events.recv() => self.on_event(ev),
                _ = tick.tick(), if self.needs_ticks() => self.on_tick(),
            }
            self.publish();
        }
    }

    fn site(&self) -> &str {
        &self.spec.site
    }

    fn runtime(&self) -> &'static str {
        self.spec.launcher.runtime()
    }

    fn start(&mut self) {
        match &self.state {
            GroupState::Idle => {}
            GroupState::Failed(_) => {
                // A request after a crash loop tries again, at most once per backoff cap.
                if self
                    .failed_at
                    .is_some_and(|t| t.elapsed() < self.spec.policy.max)
                {
                    return;
                }
                self.trackers.iter_mut().for_each(RestartTracker::reset);
            }
            _ => return,
        }
        if let Err(e) = self.spec.launcher.prepare() {
            self.fail(format!(
                "cannot prepare the {} runtime: {e}",
                self.runtime()
            ));
            return;
        }
        self.state = GroupState::Starting;
        for slot in 0..self.slots.len() {
            if self.slot_needs_process(slot) {
                self.start_slot(slot, None);
            }
        }
    }

    /// A slot is free when it holds nothing, waits for a backoff, or holds a
    /// process that is being drained or stopped (scaled to zero a moment
    /// ago: a request that comes meanwhile starts a new one beside it).
    fn slot_needs_process(&self, slot: usize) -> bool {
        match self.slots[slot] {
            Slot::Empty | Slot::Backoff { .. } => true,
            Slot::Proc(id) => self.procs.get(&id).is_none_or(|p| p.stopping || p.draining),
        }
    }

    fn fail(&mut self, why: String) {
        tracing::error!(site = %self.site(), runtime = self.runtime(), reason = %why, "site failed; its requests get 503");
        self.last_error = Some(why.clone());
        self.state = GroupState::Failed(why);
        self.failed_at = Some(Instant::now());
        for slot in &mut self.slots {
            if matches!(slot, Slot::Backoff { .. }) {
                *slot = Slot::Empty;
            }
        }
        let ids: Vec<u64> = self.procs.keys().copied().collect();
        for id in ids {
            self.stop_proc(id, STOP_GRACE);
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Ready { id } => self.on_ready(id),
            Event::NotReady { id, why } => self.on_not_ready(id, why),
            Event::Exited {
                id,
                status,
                oom_kills,
            } => self.on_exit(id, status, oom_kills),
            Event::Stopped { id } => {
                if let Some(p) = self.procs.remove(&id) {
                    let _ = std::fs::remove_file(&p.endpoint.socket);
                    tracing::info!(site = %self.site(), runtime = self.runtime(), pid = p.endpoint.pid, "stopped");
                    self.free_slot(id, &p);
                }
                self.settle_state();
            }
            Event::Drained { id } => self.stop_proc(id, STOP_GRACE),
        }
    }

    /// Derives Starting/Running from the slots after a change.
    fn settle_state(&mut self) {
        if matches!(
            self.state,
            GroupState::Failed(_) | GroupState::Stopped | GroupState::Idle
        ) {
            return;
        }
        let ready = self
            .procs
            .values()
            .filter(|p| p.ready && !p.draining && !p.stopping)
            .count();
        self.state = if ready >= self.slots.len() {
            GroupState::Running
        } else {
            GroupState::Starting
        };
        if ready > 0 && self.state == GroupState::Starting {
            // Some processes serve while others (re)start.
            self.state = GroupState::Running;
        }
    }

    /// Whether the periodic checks have anything to look at: a process, or
    /// a state that moves by time (starting, running, a failure's backoff).
    /// An idle group (scaled to zero, or never started) waits for a command
    /// without a timer: 10,000 idle sites cost no wake-up.
    fn needs_ticks(&self) -> bool {
        !self.procs.is_empty() || !matches!(self.state, GroupState::Idle | GroupState::Stopped)
    }

    fn publish(&self) {
        self.publish_with(self.state.clone());
    }

    fn publish_with(&self, state: GroupState) {
        let mut endpoints: Vec<Arc<Endpoint>> = self
            .procs
            .values()
            .filter(|p| p.ready && !p.draining && !p.stopping)
            .map(|p| p.endpoint.clone())
            .collect();
        endpoints.sort_by_key(|e| e.id);
        let mut pids: Vec<i32> = self.procs.values().map(|p| p.endpoint.pid).collect();
        pids.sort_unstable();
        let snap = Snapshot {
            state,
            generation: self.spec.generation,
            endpoints,
            pids,
            restarts: self.restarts,
            oom_kills: self.oom_kills,
            last_error: self.last_error.clone(),
            app_error: self.app_error.clone(),
        };
        // Watchers (leases waiting for a process, the router link's
        // forwarder) wake only when something changed, not at every tick.
        self.snap.send_if_modified(|current| {
            if current.same_as(&snap) {
                return false;
            }
            *current = Arc::new(snap);
            true
        });
    }
}
