//! What replaces a process: an exit that was not asked for is a crash
//! (told to the site's owner in its error log), its slot restarts after a
//! backoff or the group fails on a crash loop ([`RestartTracker`]);
//! recycling and restarts start the replacement first — or, when the
//! site's process limit (`limits.processes`) has no room for both
//! ([`policy::replacement`]), stop the old process first and start its
//! slot again once it is gone (a fork bomb at the limit would otherwise
//! keep the old processes forever).

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use super::{Actor, GroupState, Proc, Slot};
use crate::supervisor::policy::{self, Replacement, Restart, RestartTracker};
use crate::supervisor::watch::describe_status;

/// The grace between SIGTERM and SIGKILL when a restart must stop a process
/// before starting its replacement (the site is at its process limit): the
/// site serves nothing meanwhile, so it is short.
const STOP_FIRST_GRACE: Duration = Duration::from_secs(2);

impl Actor {
    pub(super) fn on_exit(&mut self, id: u64, status: std::io::Result<ExitStatus>, oom_kills: u64) {
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
            self.spec.launcher.forget(&p.endpoint.socket);
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
    pub(super) fn note_in_error_log(&self, pid: i32, reason: &str) {
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
    pub(super) fn free_slot(&mut self, id: u64, p: &Proc) {
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
    pub(super) fn crashed(
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
    pub(super) fn crash_slot(&mut self, slot: usize, started: Instant, reason: String) {
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

    pub(super) fn has_replacement(&self, id: u64) -> bool {
        self.procs.values().any(|p| p.replaces == Some(id))
    }

    pub(super) fn recycle(&mut self, id: u64, reason: &str) {
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
    pub(super) fn replacement_for(&self, ids: &[u64]) -> Replacement {
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
    pub(super) fn stop_then_start(&mut self, id: u64) {
        if let Some(p) = self.procs.get_mut(&id) {
            p.restart_when_stopped = true;
        }
        self.stop_proc(id, STOP_FIRST_GRACE);
    }

    /// A restart: start-new-then-stop-old, or stop-old-then-start-new when
    /// the site's process limit has no room for both (a fork bomb at the
    /// limit would otherwise keep the old processes forever).
    /// Sends `signal` to the leader of every process not being stopped
    /// (php-fpm reopens its logs on SIGUSR1). A process is ours until its
    /// end is reported here, so its pid names no other process.
    pub(super) fn signal_processes(&self, signal: nix::sys::signal::Signal) {
        for p in self.procs.values().filter(|p| !p.stopping) {
            let pid = nix::unistd::Pid::from_raw(p.endpoint.pid);
            if let Err(e) = nix::sys::signal::kill(pid, signal) {
                tracing::warn!(site = self.site(), pid = p.endpoint.pid, %signal, error = %e, "cannot signal a site process");
            }
        }
    }

    pub(super) fn restart_all(&mut self) {
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
}
