//! Starting a slot's process and its readiness: bind the socket the group
//! hands it ([`crate::supervisor::sockets`]), build its command from the
//! launcher, create its own cgroup, spawn it confined (`isolation::spawn`),
//! watch its exit and readiness ([`crate::supervisor::watch`]); once it
//! serves, mark it ready and drain the process it replaces. A process that
//! cannot start, or does not become ready, is a crash of its slot
//! (see `restart.rs`).

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Actor, Proc, Slot};
use crate::isolation::{self, SpawnSpec};
use crate::supervisor::endpoint::Endpoint;
use crate::supervisor::launcher::{Listen, ProcessSocket};
use crate::supervisor::watch::{wait_ready, watch_process};

impl Actor {
    /// Starts a process in `slot`; `replaces` is drained once it is ready.
    pub(super) fn start_slot(&mut self, slot: usize, replaces: Option<u64>) {
        let id = self.next_id;
        self.next_id += 1;
        let socket = self.spec.socket_dir.join(format!(
            "{}-{}-{}.sock",
            self.runtime(),
            self.spec.generation,
            id
        ));
        let listen = self.spec.launcher.listen();
        let listener = match crate::supervisor::sockets::bind(&socket, &listen) {
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

    pub(super) fn on_ready(&mut self, id: u64) {
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

    /// A process did not serve on its socket within `startup_timeout` (or
    /// its readiness probe failed): stopped, and counted as a crash.
    pub(super) fn on_not_ready(&mut self, id: u64, mut why: String) {
        let Some(p) = self.procs.get(&id) else { return };
        if p.stopping {
            return;
        }
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
}
