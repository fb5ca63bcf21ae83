//! Running site processes: waiting, stopping, kill on drop, and reaping.
//!
//! A [`SiteProcess`] is the leader of its own process group (it called
//! `setsid`) and, when it was given one, the owner of a cgroup. Invariants:
//! - dropping a `SiteProcess` that was not stopped SIGKILLs its group and
//!   everything in its cgroup (the model is rust-analyzer's `JodChild`);
//! - [`SiteProcess::stop`] leaves nothing behind: not the group, not a
//!   grandchild that escaped the group with `setsid` (the cgroup catches it),
//!   and no zombie;
//! - polyhost only ever calls `waitpid` on a pid it knows is its own and not
//!   tokio's: see "Reaping" below.
//!
//! # Reaping
//!
//! polyhost calls [`set_child_subreaper`] at start, so a site's orphaned
//! grandchildren (e.g. a daemon that double-forked) are reparented to polyhost
//! rather than to init, stay visible, and must be reaped by polyhost.
//! A `waitpid(-1)` reaper would steal exit statuses from tokio (which waits
//! for the children it spawned by pid) and from any helper run with
//! `std::process::Command`. So:
//! - children started by [`spawn()`](crate::isolation::spawn()) are in a registry and
//!   are only ever waited for by tokio;
//! - when a cgroup is killed ([`SiteProcess::stop`], drop, [`SiteCgroup::remove`]),
//!   every pid seen in it that is not registered is waited for by pid once it
//!   has become polyhost's child (`reap_adopted`): it was a site process,
//!   so it cannot be anybody else's helper;
//! - orphans that exit on their own while their site runs are reaped by
//!   [`reap_orphans`], which the supervisor calls periodically: it waits for
//!   zombie children of polyhost that are not registered. Code that runs a
//!   short helper with `std::process::Command` holds a [`ReaperPause`]
//!   ([`pause_reaper`]) meanwhile, so its child is never reaped from under it.

use std::collections::BTreeSet;
use std::io;
use std::process::ExitStatus;
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::cgroup::{CgroupError, SiteCgroup};

/// How long the drop path waits for the killed leader before leaving it to
/// tokio's orphan reaping.
const DROP_REAP_TIMEOUT: Duration = Duration::from_millis(200);
/// How long [`reap_adopted`] waits for killed site processes to be handed to us.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Pids spawned by `isolation::spawn` that tokio has not reaped yet.
static SPAWNED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());
/// Held shared by [`ReaperPause`], exclusively by a [`reap_orphans`] sweep.
static REAPER: RwLock<()> = RwLock::new(());

pub(crate) fn register(pid: i32) {
    SPAWNED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pid);
}

fn unregister(pid: i32) {
    SPAWNED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pid);
}

fn is_registered(pid: i32) -> bool {
    SPAWNED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&pid)
}

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

/// Makes polyhost a child subreaper (`PR_SET_CHILD_SUBREAPER`): orphaned
/// descendants are reparented to it instead of init. Call once at start.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; affects this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `(state, ppid)` of a process from `/proc/<pid>/stat`.
fn proc_state(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// The session id of a process, from `/proc/<pid>/stat`.
fn proc_session(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// Resident memory of every process in session `sid` (a site process and
/// what it forked): the memory measure when there are no cgroups.
pub fn session_rss(sid: i32) -> u64 {
    // SAFETY: sysconf with a constant name has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
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

/// Waits (by pid, bounded) for killed site processes in `seen` that were
/// reparented to polyhost; skips pids tokio owns. Blocking.
pub(crate) fn reap_adopted(seen: &[i32]) {
    let me = std::process::id() as i32;
    let mut pending: Vec<i32> = seen
        .iter()
        .copied()
        .filter(|p| !is_registered(*p))
        .collect();
    let deadline = Instant::now() + ADOPT_TIMEOUT;
    while !pending.is_empty() {
        pending.retain(|&pid| match proc_state(pid) {
            None => false,
            Some((_, ppid)) if ppid == me => matches!(
                waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            ),
            // Dying, or a zombie its (dying) parent may still hand to us.
            Some(_) => true,
        });
        if Instant::now() > deadline {
            tracing::warn!(pids = ?pending, "killed site processes were not reaped in time");
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reaps zombie children of polyhost that `spawn` did not start (site
/// orphans reparented to the subreaper). Returns how many were reaped. Call
/// it periodically (e.g. every few seconds); it skips a sweep while a
/// [`ReaperPause`] is held. Blocking but short (reads `/proc`).
pub fn reap_orphans() -> usize {
    let Ok(_sweep) = REAPER.try_write() else {
        return 0;
    };
    let me = std::process::id() as i32;
    // Site processes run in sessions of their own (setsid); children polyhost
    // starts otherwise (tokio::process) share its session and are left to
    // whoever waits for them.
    let my_session = nix::unistd::getsid(None).map_or(-1, Pid::as_raw);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut reaped = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let orphan = matches!(proc_state(pid), Some(('Z', ppid)) if ppid == me)
            && proc_session(pid).is_some_and(|sid| sid != my_session);
        if orphan && !is_registered(pid) {
            if let Ok(status) = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                if status != WaitStatus::StillAlive {
                    tracing::debug!(pid, ?status, "reaped an orphaned site process");
                    reaped += 1;
                }
            }
        }
    }
    reaped
}

/// While held, [`reap_orphans`] does nothing: hold one around any child
/// process not started by `isolation::spawn` (e.g. `std::process::Command`).
#[must_use = "the reaper is paused only while the guard lives"]
pub struct ReaperPause(#[allow(dead_code)] RwLockReadGuard<'static, ()>);

/// Pauses [`reap_orphans`] until the guard is dropped.
pub fn pause_reaper() -> ReaperPause {
    ReaperPause(REAPER.read().unwrap_or_else(|e| e.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_state_of_self() {
        let (state, ppid) = proc_state(std::process::id() as i32).unwrap();
        assert!(matches!(state, 'R' | 'S'), "{state}");
        assert_eq!(ppid, nix::unistd::getppid().as_raw());
        assert_eq!(proc_state(i32::MAX), None);
    }
}
