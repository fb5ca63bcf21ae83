//! Running site processes: waiting, stopping, kill on drop; the session RSS
//! of the no-cgroup fallback.
//!
//! A [`SiteProcess`] is the leader of its own process group (it called
//! `setsid`) and, when it was given one, the owner of a cgroup. Invariants:
//! - dropping a `SiteProcess` that was not stopped SIGKILLs its group and
//!   everything in its cgroup (the model is rust-analyzer's `JodChild`);
//! - [`SiteProcess::stop`] leaves nothing behind: not the group, not a
//!   grandchild that escaped the group with `setsid` (the cgroup catches it),
//!   and no zombie;
//! - polyhost only ever calls `waitpid` on a pid it knows is its own and not
//!   tokio's: a process unregisters from [`super::reap`] when its leader
//!   exits, and hands the pids its cgroup held to `reap_adopted` there.

use std::collections::BTreeSet;
use std::io;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::{sysconf, Pid, SysconfVar};

use super::cgroup::{CgroupError, SiteCgroup};
use super::reap::{reap_adopted, unregister};

/// How long the drop path waits for the killed leader before leaving it to
/// tokio's orphan reaping.
const DROP_REAP_TIMEOUT: Duration = Duration::from_millis(200);

/// Why stopping a process did not finish cleanly.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error("waiting for pid {pid} failed: {source}")]
    Wait {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("killing the cgroup of pid {pid} failed: {source}")]
    Cgroup {
        pid: i32,
        #[source]
        source: CgroupError,
    },
}

/// A running site process: the leader of a process group (pid = pgid),
/// optionally owning a cgroup. Killed with its group and cgroup on drop.
#[derive(Debug)]
pub struct SiteProcess {
    pid: i32,
    child: tokio::process::Child,
    cgroup: Option<SiteCgroup>,
    status: Option<ExitStatus>,
    /// Set once everything was killed and reaped: nothing left for drop.
    finished: bool,
}

impl SiteProcess {
    pub(crate) fn new(pid: i32, child: tokio::process::Child, cgroup: Option<SiteCgroup>) -> Self {
        SiteProcess {
            pid,
            child,
            cgroup,
            status: None,
            finished: false,
        }
    }

    /// The process id; also its process-group and session id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The cgroup the process was started in.
    pub fn cgroup(&self) -> Option<&SiteCgroup> {
        self.cgroup.as_ref()
    }

    /// Waits until the leader exits (cancel-safe). Other members of the
    /// group or cgroup may still run: [`stop`](Self::stop) ends them.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.child.wait().await?;
        self.exited(status);
        Ok(status)
    }

    /// The leader's exit status if it has exited, without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            if let Some(status) = self.child.try_wait()? {
                self.exited(status);
            }
        }
        Ok(self.status)
    }

    fn exited(&mut self, status: ExitStatus) {
        self.status = Some(status);
        unregister(self.pid);
    }

    /// Sends `signal` to the whole process group. Fine if it is gone already.
    pub fn signal_group(&self, signal: Signal) -> io::Result<()> {
        match killpg(Pid::from_raw(self.pid), signal) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Stops the process: SIGTERM to the group, up to `grace` for the leader
    /// to exit, then SIGKILL to the group and to everything in the cgroup
    /// (which catches members that left the group), and reaps them all.
    /// Returns the leader's exit status.
    pub async fn stop(&mut self, grace: Duration) -> Result<ExitStatus, StopError> {
        let pid = self.pid;
        // Members our group signals kill leave the cgroup at once; note them
        // first so that those reparented to us are reaped too.
        let mut known = BTreeSet::new();
        if self.status.is_none() {
            self.note_members(&mut known);
            let _ = self.signal_group(Signal::SIGTERM);
            if let Ok(status) = tokio::time::timeout(grace, self.child.wait()).await {
                let status = status.map_err(|source| StopError::Wait { pid, source })?;
                self.exited(status);
            }
        }
        // Members that ignored SIGTERM, or outlived a leader that exited.
        self.note_members(&mut known);
        let _ = self.signal_group(Signal::SIGKILL);
        if let Some(cgroup) = self.cgroup.clone() {
            tokio::task::spawn_blocking(move || {
                known.extend(cgroup.kill_all()?);
                reap_adopted(&known.into_iter().collect::<Vec<_>>());
                Ok::<_, CgroupError>(())
            })
            .await
            .expect("cgroup kill task panicked")
            .map_err(|source| StopError::Cgroup { pid, source })?;
        }
        let status = match self.status {
            Some(status) => status,
            None => {
                let status = self
                    .child
                    .wait()
                    .await
                    .map_err(|source| StopError::Wait { pid, source })?;
                self.exited(status);
                status
            }
        };
        self.finished = true;
        Ok(status)
    }

    /// Resident memory of the process's session in bytes: the sum of the RSS
    /// of every process whose session is this one (a `setsid` escapee is not
    /// counted). The memory measure of the no-cgroup fallback, to be polled by
    /// the supervisor; shared pages are counted once per process, so it
    /// over-counts forked children (php-fpm) rather than under-counts.
    pub fn session_rss(&self) -> u64 {
        session_rss(self.pid)
    }

    /// Adds the processes now in our cgroup to `known`.
    fn note_members(&self, known: &mut BTreeSet<i32>) {
        if let Some(cgroup) = &self.cgroup {
            match cgroup.procs() {
                Ok(procs) => known.extend(procs),
                Err(e) => tracing::warn!(pid = self.pid, error = %e, "cannot list the cgroup"),
            }
        }
    }
}

impl Drop for SiteProcess {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Once the leader was reaped its pgid may in theory be reused; without
        // a cgroup there is nothing safe left to kill then.
        let mut known = BTreeSet::new();
        if self.status.is_none() {
            self.note_members(&mut known);
            let _ = self.signal_group(Signal::SIGKILL);
        }
        if let Some(cgroup) = &self.cgroup {
            match cgroup.kill_all() {
                Ok(seen) => {
                    known.extend(seen);
                    reap_adopted(&known.into_iter().collect::<Vec<_>>());
                }
                Err(e) => {
                    tracing::error!(pid = self.pid, error = %e, "could not kill a dropped site process's cgroup")
                }
            }
        }
        let deadline = Instant::now() + DROP_REAP_TIMEOUT;
        while self.status.is_none() && Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => self.exited(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                Err(_) => break,
            }
        }
        // Not reaped yet: tokio's orphan queue reaps it; it stays registered
        // so that reap_orphans never waits for it.
    }
}

/// Resident memory of every process in session `sid` (a site process and
/// what it forked): the memory measure when there are no cgroups.
pub fn session_rss(sid: i32) -> u64 {
    let page = sysconf(SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(0)
        .max(0) as u64;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 1..];
            // state ppid pgrp session ... rss is field 24 (the 22nd after the name).
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let session: i32 = fields.get(3)?.parse().ok()?;
            (session == sid).then(|| fields.get(21)?.parse::<u64>().ok())?
        })
        .sum::<u64>()
        * page
}
