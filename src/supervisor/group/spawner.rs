//! The seam between the group's actor and real processes: a [`Spawner`]
//! starts a slot's process and reports its readiness and its end as
//! [`Event`]s, and measures its memory. [`Isolated`] is the real one
//! (socket bound by the supervisor, the launcher's command, a cgroup of
//! its own, `isolation::spawn`, watched by [`crate::supervisor::watch`]);
//! the actor's tests put a fake in its place, so its transitions are tested
//! without processes.
//!
//! Invariants (the actor relies on them): a started process reports exactly
//! one end on `events` — `Exited` when it ends by itself, `Stopped` after
//! its `stop` sender was used; it reports `Ready` or `NotReady` at most once.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::GroupSpec;
use crate::isolation::{self, SiteCgroup, SpawnSpec};
use crate::supervisor::endpoint::Endpoint;
use crate::supervisor::launcher::{Listen, ProcessSocket};
use crate::supervisor::mailbox::Event;
use crate::supervisor::watch::{rss_bytes, wait_ready, watch_process, ReadyTarget};

/// Starts and measures a group's processes.
pub(crate) trait Spawner: Send + Sync + 'static {
    /// Starts process `id` of the group: it reports its readiness (within
    /// `startup_timeout`) and its end on `events`. The error says why it
    /// could not start (a crash of its slot).
    fn start(
        &self,
        spec: &GroupSpec,
        startup_timeout: Duration,
        id: u64,
        events: &crate::supervisor::mailbox::Sender<Event>,
    ) -> Result<Started, String>;

    /// Resident set size of one process (`memory_per_process`).
    fn rss(&self, pid: i32) -> Option<u64>;

    /// Resident set size of a process and everything it forked
    /// (`limits.memory` without cgroups).
    fn session_rss(&self, pid: i32) -> u64;
}

/// A process that started.
pub(crate) struct Started {
    pub endpoint: Arc<Endpoint>,
    /// The process's own cgroup (a child of the site's).
    pub cgroup: Option<SiteCgroup>,
    /// Stops the process with that grace (SIGTERM, then SIGKILL).
    pub stop: oneshot::Sender<Duration>,
    /// The task waiting for it to become ready: aborted with the process.
    pub ready_task: tokio::task::AbortHandle,
}

/// Real processes, confined by `isolation`.
pub(crate) struct Isolated;

impl Spawner for Isolated {
    fn start(
        &self,
        spec: &GroupSpec,
        startup_timeout: Duration,
        id: u64,
        events: &crate::supervisor::mailbox::Sender<Event>,
    ) -> Result<Started, String> {
        let runtime = spec.launcher.runtime();
        let socket = spec.socket_dir.join(format!(
            "{runtime}-{}{}-{id}.sock",
            crate::supervisor::instance::current().socket_tag(),
            spec.generation
        ));
        let listen = spec.launcher.listen();
        let bound = bind(&socket, &listen)?;
        let process_socket = ProcessSocket {
            path: &socket,
            fd: bound.listener.as_ref().map_or(-1, |l| l.as_raw_fd()),
            tcp: bound.tcp,
        };
        let cmd = spec.launcher.command(process_socket).map_err(|e| {
            let _ = std::fs::remove_file(&socket);
            format!("cannot prepare the {runtime} process: {e}")
        })?;
        tracing::debug!(site = %spec.site, program = %cmd.program.display(), args = ?cmd.args, cwd = %cmd.cwd.display(), "starting");
        let cgroup = match &spec.cgroup {
            Some(cg) => Some(
                cg.child(&format!("{runtime}-g{}-{id}", spec.generation))
                    .map_err(|e| {
                        let _ = std::fs::remove_file(&socket);
                        format!("cannot create the process cgroup: {e}")
                    })?,
            ),
            None => None,
        };
        let listener = bound.listener.as_ref().map(AsFd::as_fd);
        let (inherit_socket, socket_as) = match (listener, cmd.socket_at) {
            (Some(fd), Some(at)) => (None, Some((fd, at))),
            (fd, _) => (fd, None),
        };
        let spawn_spec = SpawnSpec {
            program: cmd.program.clone(),
            args: cmd.args,
            env: cmd.env,
            cwd: cmd.cwd,
            identity: spec.identity.clone(),
            rlimits: spec.rlimits,
            batch_scheduling: spec.batch_scheduling,
            cgroup: cgroup.as_ref(),
            log: Some(spec.error_log.clone()),
            inherit: inherit_socket
                .into_iter()
                .chain(cmd.fds.iter().map(AsFd::as_fd))
                .collect(),
            inherit_as: socket_as.into_iter().collect(),
            pid_env: cmd.pid_env,
            sandbox: spec.sandbox.as_ref(),
        };
        let spawned = isolation::spawn(&spawn_spec);
        // The process has its copies. Without ours, the listener dies with
        // the process: connections are then refused at once, not queued.
        drop(spawn_spec);
        drop(bound.listener);
        drop(cmd.fds);
        let process = spawned.map_err(|e| {
            let _ = std::fs::remove_file(&socket);
            if let Some(cg) = &cgroup {
                let _ = cg.remove();
            }
            format!("cannot start {}: {e}", cmd.program.display())
        })?;
        let pid = process.pid();
        let site_uid = spec
            .identity
            .as_ref()
            .map_or_else(|| nix::unistd::geteuid().as_raw(), |i| i.uid);
        // The router checks who listens on the socket (SO_PEERCRED): the site
        // user when the process listens; polyhost itself (nothing to check)
        // when polyhost does. A port's listener is checked here, before
        // the process is ready (`watch`), and by the router on every new
        // connection (`upstream::connect_runtime_tcp`): the site user's.
        let uid = match listen {
            Listen::Process => spec.identity.as_ref().map(|i| i.uid),
            Listen::Port { .. } => Some(site_uid),
            Listen::Supervisor { .. } => None,
        };
        let endpoint = Endpoint::new(id, pid, socket.clone(), uid);
        let endpoint = Arc::new(match bound.tcp {
            Some(addr) => endpoint.with_tcp(addr),
            None => endpoint,
        });
        let (stop, stop_rx) = oneshot::channel();
        tokio::spawn(watch_process(id, process, stop_rx, events.clone()));
        let target = ReadyTarget {
            socket,
            tcp: bound.tcp,
            owner: site_uid,
        };
        let ready_task = tokio::spawn(wait_ready(
            id,
            target,
            listen,
            startup_timeout,
            events.clone(),
        ))
        .abort_handle();
        Ok(Started {
            endpoint,
            cgroup,
            stop,
            ready_task,
        })
    }

    fn rss(&self, pid: i32) -> Option<u64> {
        rss_bytes(pid)
    }

    fn session_rss(&self, pid: i32) -> u64 {
        isolation::session_rss(pid)
    }
}

/// Where a process will serve: a socket polyhost bound, or a loopback port
/// it binds itself ([`Listen::Port`]: nothing is bound here).
struct Bound {
    listener: Option<std::os::fd::OwnedFd>,
    tcp: Option<std::net::SocketAddr>,
}

fn bind(socket: &std::path::Path, listen: &Listen) -> Result<Bound, String> {
    if let Listen::Port { .. } = listen {
        let addr = crate::supervisor::port::pick_loopback_port()
            .map_err(|e| format!("cannot find a free loopback port: {e}"))?;
        return Ok(Bound {
            listener: None,
            tcp: Some(addr),
        });
    }
    let listener = crate::supervisor::sockets::bind(socket, listen)
        .map_err(|e| format!("cannot bind {}: {e}", socket.display()))?;
    Ok(Bound {
        listener: Some(listener),
        tcp: None,
    })
}
