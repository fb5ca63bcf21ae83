//! Starting a slot's process and its readiness: the group's `Spawner`
//! starts it (`spawner.rs`: socket, command, cgroup, confined spawn, its
//! watchers); once it serves, mark it ready and drain the process it
//! replaces. A process that cannot start, or does not become ready, is a
//! crash of its slot (see `restart.rs`).

use std::time::{Duration, Instant};

use super::{Actor, Proc, Slot};

impl Actor {
    /// Starts a process in `slot` (through the group's `Spawner`);
    /// `replaces` is drained once it is ready. A process that cannot start
    /// is a crash of its slot.
    pub(super) fn start_slot(&mut self, slot: usize, replaces: Option<u64>) {
        let id = self.next_id;
        self.next_id += 1;
        let started =
            self.spawner
                .start(&self.spec, self.lifecycle.startup_timeout, id, &self.events);
        let started = match started {
            Ok(started) => started,
            Err(reason) => {
                self.crash_slot(slot, Instant::now(), reason);
                return;
            }
        };
        let pid = started.endpoint.pid;
        tracing::info!(site = %self.site(), runtime = self.runtime(), pid, generation = self.spec.generation, "started");
        self.procs.insert(
            id,
            Proc {
                slot,
                endpoint: started.endpoint,
                started: Instant::now(),
                ready: false,
                draining: false,
                stopping: false,
                restart_when_stopped: false,
                stop: Some(started.stop),
                replaces,
                cgroup: started.cgroup,
                oom_seen: 0,
                ready_task: started.ready_task,
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
