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

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::endpoint::{Activity, Endpoint};
pub use super::handle::{GroupHandle, GroupState, Snapshot};
use super::launcher::{Launcher, Lifecycle, Listen, ProcessSocket};
use super::policy::{self, Replacement, Restart, RestartPolicy, RestartTracker};
use super::watch::{describe_status, wait_ready, watch_process};
use crate::isolation::{self, Rlimits, SiteCgroup, SiteIdentity, SpawnSpec};

mod checks;

/// How long a stopped process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// The same when a restart must stop a process before starting its
/// replacement (the site is at its process limit): the site serves nothing
/// meanwhile, so it is short.
const STOP_FIRST_GRACE: Duration = Duration::from_secs(2);
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
    pub policy: RestartPolicy,
}

pub(super) enum Cmd {
    Start,
    Recycle { endpoint: u64, reason: String },
    RestartAll,
    Stop(oneshot::Sender<()>),
}

pub(super) enum Event {
    Ready {
        id: u64,
    },
    NotReady {
        id: u64,
        why: String,
    },
    /// `oom_kills`: counted in the process's cgroup, read before it was removed.
    Exited {
        id: u64,
        status: std::io::Result<ExitStatus>,
        oom_kills: u64,
    },
    Stopped {
        id: u64,
    },
    Drained {
        id: u64,
    },
}

/// Starts the group's actor task and returns its handle. Must be called
/// from the tokio runtime (processes are forked from its worker threads).
pub fn spawn_group(spec: GroupSpec) -> GroupHandle {
    let lifecycle = spec.launcher.lifecycle();
    let (tx, rx) = mpsc::unbounded_channel();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
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
        max_requests: lifecycle.max_requests,
    };
    let eager = lifecycle.eager;
    let actor = Actor {
        trackers: (0..lifecycle.processes)
            .map(|_| RestartTracker::new(spec.policy.clone()))
            .collect(),
        slots: (0..lifecycle.processes).map(|_| Slot::Empty).collect(),
        lifecycle,
        spec,
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
    events: mpsc::UnboundedSender<Event>,
    snap: watch::Sender<Arc<Snapshot>>,
    activity: Arc<Activity>,
}

impl Actor {
    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Start) => self.start(),
                    Some(Cmd::Recycle { endpoint, reason }) => self.recycle(endpoint, &reason),
                    Some(Cmd::RestartAll) => self.restart_all(),
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
                _ = tick.tick() => self.on_tick(),
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

    /// Starts a process in `slot`; `replaces` is drained once it is ready.
    fn start_slot(&mut self, slot: usize, replaces: Option<u64>) {
        let id = self.next_id;
        self.next_id += 1;
        let socket = self.spec.socket_dir.join(format!(
            "{}-{}-{}.sock",
            self.runtime(),
            self.spec.generation,
            id
        ));
        let listen = self.spec.launcher.listen();
        let listener = match super::sockets::bind(&socket, &listen) {
            Ok(fd) => fd,
            Err(e) => {
                self.crash_slot(
                    slot,
                    Instant::now(),
                    format!("cannot bind {}: {e}", socket.display()),
                );
                return;
            }
        };
        let process_socket = ProcessSocket {
            path: &socket,
            fd: listener.as_raw_fd(),
        };
        let cmd = match self.spec.launcher.command(process_socket) {
            Ok(cmd) => cmd,
            Err(e) => {
                let _ = std::fs::remove_file(&socket);
                self.crash_slot(
                    slot,
                    Instant::now(),
                    format!("cannot prepare the {} process: {e}", self.runtime()),
                );
                return;
            }
        };
        tracing::debug!(site = %self.site(), program = %cmd.program.display(), args = ?cmd.args, cwd = %cmd.cwd.display(), "starting");
        let cgroup = match &self.spec.cgroup {
            Some(cg) => match cg.child(&format!(
                "{}-g{}-{id}",
                self.runtime(),
                self.spec.generation
            )) {
                Ok(child) => Some(child),
                Err(e) => {
                    let _ = std::fs::remove_file(&socket);
                    self.crash_slot(
                        slot,
                        Instant::now(),
                        format!("cannot create the process cgroup: {e}"),
                    );
                    return;
                }
            },
            None => None,
        };
        let spawn_spec = SpawnSpec {
            program: cmd.program.clone(),
            args: cmd.args,
            env: cmd.env,
            cwd: cmd.cwd,
            identity: self.spec.identity.clone(),
            rlimits: self.spec.rlimits,
            batch_scheduling: self.spec.batch_scheduling,
            cgroup: cgroup.as_ref(),
            log: Some(self.spec.error_log.clone()),
            inherit: std::iter::once(listener.as_fd())
                .chain(cmd.fds.iter().map(AsFd::as_fd))
                .collect(),
        };
        let spawned = isolation::spawn(&spawn_spec);
        // The process has its copies. Without ours, the listener dies with
        // the process: connections are then refused at once, not queued.
        drop(spawn_spec);
        drop(listener);
        drop(cmd.fds);
        let process = match spawned {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_file(&socket);
                if let Some(cg) = cgroup {
                    let _ = cg.remove();
                }
                self.crash_slot(
                    slot,
                    Instant::now(),
                    format!("cannot start {}: {e}", cmd.program.display()),
                );
                return;
            }
        };
        let pid = process.pid();
        tracing::info!(site = %self.site(), runtime = self.runtime(), pid, generation = self.spec.generation, "started");
        // The router checks who listens on the socket (SO_PEERCRED): the site
        // user when the process listens; polyhost itself (nothing to check)
        // when polyhost does.
        let uid = match listen {
            Listen::Process => self.spec.identity.as_ref().map(|i| i.uid),
            Listen::Supervisor { .. } => None,
        };
        let endpoint = Arc::new(Endpoint::new(id, pid, socket.clone(), uid));
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(watch_process(id, process, stop_rx, self.events.clone()));
        let ready_task = tokio::spawn(wait_ready(
            id,
            socket,
            listen,
            self.lifecycle.startup_timeout,
            self.events.clone(),
        ))
        .abort_handle();
        self.procs.insert(
            id,
            Proc {
                slot,
                endpoint,
                started: Instant::now(),
                ready: false,
                draining: false,
                stopping: false,
                restart_when_stopped: false,
                stop: Some(stop_tx),
                replaces,
                cgroup,
                oom_seen: 0,
                ready_task,
            },
        );
        self.slots[slot] = Slot::Proc(id);
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Ready { id } => self.on_ready(id),
            Event::NotReady { id, why } => {
                let Some(p) = self.procs.get(&id) else { return };
                if p.stopping {
                    return;
                }
                let mut why = why;
                if let Some(own) = self.spec.launcher.diagnose(&p.endpoint.socket) {
                    why = format!("{why}; {} said: {own}", self.runtime());
                }
                tracing::warn!(site = %self.site(), runtime = self.runtime(), pid = p.endpoint.pid, reason = %why, "not ready; stopping it");
                let pid = p.endpoint.pid;
                let (slot, started, replaces) = (p.slot, p.started, p.replaces);
                self.note_in_error_log(pid, &why);
                self.stop_proc(id, Duration::from_secs(1));
                self.crashed(id, replaces, slot, started, why);
            }
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

    fn on_ready(&mut self, id: u64) {
        let Some(p) = self.procs.get_mut(&id) else {
            return;
        };
        if p.stopping || p.draining {
            return;
        }
        p.ready = true;
        self.app_error = None;
        // Idle time counts from here at the earliest: a start slower than
        // idle_timeout must not be scaled to zero before its waiting
        // requests took it.
        self.activity.touch();
        let (pid, replaces) = (p.endpoint.pid, p.replaces.take());
        tracing::info!(site = %self.site(), runtime = self.runtime(), pid, "ready");
        if let Some(old) = replaces {
            self.drain(old);
        }
        self.settle_state();
    }

    fn on_exit(&mut self, id: u64, status: std::io::Result<ExitStatus>, oom_kills: u64) {
        let Some(p) = self.procs.remove(&id) else {
            return;
        };
        // A kill the periodic check already counted is still this exit's reason.
        let sigkilled =
            matches!(&status, Ok(s) if std::os::unix::process::ExitStatusExt::signal(s) == Some(9));
        let oom = oom_kills > p.oom_seen || (sigkilled && oom_kills > 0);
        self.oom_kills += oom_kills.saturating_sub(p.oom_seen);
        let _ = std::fs::remove_file(&p.endpoint.socket);
        let status_text = match &status {
            Ok(s) => describe_status(s),
            Err(e) => format!("wait failed: {e}"),
        };
        if p.stopping || p.draining {
            tracing::info!(site = %self.site(), runtime = self.runtime(), pid = p.endpoint.pid, status = %status_text, "stopped");
            self.free_slot(id, &p);
            self.settle_state();
            return;
        }
        if let Ok(st) = &status {
            if self.spec.launcher.app_error(st) && !p.ready {
                self.app_error = Some(format!(
                    "the application failed to load ({status_text}); the traceback is in the site's error log"
                ));
            }
        }
        let mut reason = if oom {
            format!("OOM-killed ({status_text})")
        } else {
            format!("exited unexpectedly: {status_text}")
        };
        if let Some(own) = self.spec.launcher.diagnose(&p.endpoint.socket) {
            reason = format!("{reason}; {} said: {own}", self.runtime());
        }
        tracing::warn!(site = %self.site(), runtime = self.runtime(), pid = p.endpoint.pid, reason = %reason, "crashed");
        self.note_in_error_log(p.endpoint.pid, &reason);
        self.crashed(id, p.replaces, p.slot, p.started, reason);
        self.settle_state();
    }

    /// Tells the site's owner, in the site's error log, why a process ended.
    fn note_in_error_log(&self, pid: i32, reason: &str) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let line = format!(
            "[{}] polyhost: {} process {pid} failed: {reason}\n",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
            self.runtime()
        );
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.spec.error_log);
        if let Ok(mut f) = file {
            let _ = f.write_all(line.as_bytes());
        }
    }

    /// A stopped process `id` is gone: its slot is free, and gets a new
    /// process at once if a restart stopped it to make room.
    fn free_slot(&mut self, id: u64, p: &Proc) {
        if matches!(self.slots[p.slot], Slot::Proc(cur) if cur == id) {
            self.slots[p.slot] = Slot::Empty;
            if p.restart_when_stopped
                && matches!(self.state, GroupState::Starting | GroupState::Running)
            {
                self.start_slot(p.slot, None);
            }
        }
    }

    /// Records a crash of process `id` in `slot`: a replacement that failed
    /// gives the slot back to the process it was replacing — unless the
    /// site is at its process limit, which is then why it failed: the old
    /// process is stopped first and the slot started again.
    fn crashed(
        &mut self,
        id: u64,
        replaces: Option<u64>,
        slot: usize,
        started: Instant,
        reason: String,
    ) {
        if let Some(old) = replaces.filter(|old| self.procs.contains_key(old)) {
            self.last_error = Some(reason);
            self.restarts += 1;
            self.slots[slot] = Slot::Proc(old);
            if self.replacement_for(&[old]) == Replacement::StopFirst {
                tracing::warn!(site = %self.site(), runtime = self.runtime(), "a replacement failed beside the old process at the site's process limit (limits.processes); stopping the old process first");
                self.stop_then_start(old);
            }
            return;
        }
        if matches!(self.slots[slot], Slot::Proc(cur) if cur == id) {
            self.crash_slot(slot, started, reason);
        }
    }

    /// A slot's process crashed or could not start: back off, or give up.
    fn crash_slot(&mut self, slot: usize, started: Instant, reason: String) {
        self.last_error = Some(reason.clone());
        self.restarts += 1;
        match self.trackers[slot].crashed(started, Instant::now()) {
            Restart::After(delay) => {
                tracing::info!(site = %self.site(), runtime = self.runtime(), ?delay, "restarting after backoff");
                self.slots[slot] = Slot::Backoff {
                    until: Instant::now() + delay,
                };
            }
            Restart::GiveUp => {
                self.slots[slot] = Slot::Empty;
                self.fail(format!("crash loop: {reason}"));
            }
        }
    }

    fn has_replacement(&self, id: u64) -> bool {
        self.procs.values().any(|p| p.replaces == Some(id))
    }

    fn recycle(&mut self, id: u64, reason: &str) {
        let Some(p) = self.procs.get(&id) else { return };
        if p.draining || p.stopping || self.has_replacement(id) {
            return;
        }
        tracing::info!(site = %self.site(), runtime = self.runtime(), pid = p.endpoint.pid, reason, "recycling");
        let slot = p.slot;
        self.start_slot(slot, Some(id));
    }

    /// Whether replacements of processes `ids` fit beside them under the
    /// site's process limit ([`policy::replacement`]). Rolling when nothing
    /// is known (no cgroup, or it cannot be read).
    fn replacement_for(&self, ids: &[u64]) -> Replacement {
        let Some(site) = self.spec.cgroup.as_ref().and_then(|cg| cg.usage().ok()) else {
            return Replacement::Rolling;
        };
        let old: u64 = ids
            .iter()
            .filter_map(|id| {
                self.procs
                    .get(id)?
                    .cgroup
                    .as_ref()?
                    .usage()
                    .ok()?
                    .pids_current
            })
            .sum();
        policy::replacement(site.pids_current.unwrap_or(0), site.pids_limit, old)
    }

    /// Stops process `id` at once (short grace) and starts its slot again
    /// when it is gone.
    fn stop_then_start(&mut self, id: u64) {
        if let Some(p) = self.procs.get_mut(&id) {
            p.restart_when_stopped = true;
        }
        self.stop_proc(id, STOP_FIRST_GRACE);
    }

    /// A restart: start-new-then-stop-old, or stop-old-then-start-new when
    /// the site's process limit has no room for both (a fork bomb at the
    /// limit would otherwise keep the old processes forever).
    fn restart_all(&mut self) {
        self.trackers.iter_mut().for_each(RestartTracker::reset);
        match self.state {
            GroupState::Running | GroupState::Starting => {
                let ids: Vec<u64> = self
                    .procs
                    .iter()
                    .filter(|(_, p)| !p.draining && !p.stopping)
                    .map(|(id, _)| *id)
                    .collect();
                if self.replacement_for(&ids) == Replacement::StopFirst {
                    tracing::warn!(site = %self.site(), runtime = self.runtime(), "the site is at its process limit (limits.processes): stopping its processes before starting new ones");
                    for id in ids {
                        self.stop_then_start(id);
                    }
                    return;
                }
                for id in ids {
                    self.recycle(id, "restart requested");
                }
            }
            GroupState::Failed(_) => {
                self.failed_at = None;
                self.start();
            }
            GroupState::Idle | GroupState::Stopped => {}
        }
    }

    /// Unpublishes a process and stops it once its in-flight requests end.
    /// It is published without the process before its endpoint is closed,
    /// so a request that raced with this and finds it closed takes another
    /// one (see [`super::endpoint`]); a lease taken before is waited for.
    fn drain(&mut self, id: u64) {
        let Some(p) = self.procs.get_mut(&id) else {
            return;
        };
        p.draining = true;
        let endpoint = p.endpoint.clone();
        self.publish();
        endpoint.close();
        let events = self.events.clone();
        let timeout = self.lifecycle.drain_timeout;
        tokio::spawn(async move {
            let deadline = Instant::now() + timeout;
            while endpoint.inflight() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = events.send(Event::Drained { id });
        });
    }

    /// Stops a process now (drained, crashed, or killed). Requests already
    /// on it fail; new ones no longer get it.
    fn stop_proc(&mut self, id: u64, grace: Duration) {
        if let Some(p) = self.procs.get_mut(&id) {
            p.stopping = true;
            p.endpoint.close();
            if let Some(stop) = p.stop.take() {
                let _ = stop.send(grace);
            }
        }
    }

    async fn stop_all(&mut self, events: &mut mpsc::UnboundedReceiver<Event>) {
        self.state = GroupState::Stopped;
        let ids: Vec<u64> = self.procs.keys().copied().collect();
        for id in &ids {
            self.drain(*id);
        }
        while !self.procs.is_empty() {
            match events.recv().await {
                Some(Event::Drained { id }) => self.stop_proc(id, STOP_GRACE),
                Some(Event::Exited { id, .. }) | Some(Event::Stopped { id }) => {
                    if let Some(p) = self.procs.remove(&id) {
                        let _ = std::fs::remove_file(&p.endpoint.socket);
                        tracing::info!(site = %self.site(), runtime = self.runtime(), pid = p.endpoint.pid, "stopped");
                    }
                }
                Some(_) => {}
                None => break,
            }
            self.publish_with(GroupState::Stopped);
        }
        self.state = GroupState::Stopped;
        self.publish();
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
        self.snap.send_replace(Arc::new(snap));
    }
}
