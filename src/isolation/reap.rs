//! Reaping: which pids polyhost may `waitpid` for, and the subreaper.
//!
//! Owns the registry of pids [`spawn()`](crate::isolation::spawn()) started
//! (tokio waits for those, nobody else), the sweep of orphans adopted as
//! subreaper, and the pause that keeps the sweep off other helpers' children.
//! It depends on no other isolation module: [`SiteProcess`](super::SiteProcess)
//! and [`SiteCgroup::remove`](super::SiteCgroup::remove) both call into it.
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
//! - when a cgroup is killed ([`SiteProcess::stop`](super::SiteProcess::stop), drop,
//!   [`SiteCgroup::remove`](super::SiteCgroup::remove)),
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
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How long [`reap_adopted`] waits for killed site processes to be handed to us.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Pids spawned by `isolation::spawn` that tokio has not reaped yet.
static SPAWNED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());
/// Held shared by [`ReaperPause`], exclusively by a [`reap_orphans`] sweep.
static REAPER: RwLock<()> = RwLock::new(());

pub(super) fn register(pid: i32) {
    SPAWNED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pid);
}

pub(super) fn unregister(pid: i32) {
    SPAWNED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pid);
}

/// A child polyhost started outside `spawn` and waits for itself (the
/// router process, a successor polyhost): registered until waited for, so
/// the orphan sweep never reaps it. Dropping it does not kill it.
#[derive(Debug)]
pub struct OwnChild {
    pid: i32,
    child: tokio::process::Child,
    waited: Option<std::process::ExitStatus>,
}

impl OwnChild {
    /// Takes over a freshly spawned `child` (not waited for yet).
    pub fn new(child: tokio::process::Child) -> OwnChild {
        let pid = child
            .id()
            .expect("a freshly spawned child has not been reaped") as i32;
        register(pid);
        OwnChild {
            pid,
            child,
            waited: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for its exit (cancel-safe: call again after a timeout).
    pub async fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        if let Some(status) = self.waited {
            return Ok(status);
        }
        let status = self.child.wait().await?;
        unregister(self.pid);
        self.waited = Some(status);
        Ok(status)
    }

    /// Sends `signal` unless it was waited for already (its pid may be reused).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if self.waited.is_none() {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.pid), signal);
        }
    }
}

fn is_registered(pid: i32) -> bool {
    SPAWNED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&pid)
}

/// Makes polyhost a child subreaper (`PR_SET_CHILD_SUBREAPER`): orphaned
/// descendants are reparented to it instead of init. Call once at start.
pub fn set_child_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
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

/// Waits (by pid, bounded) for killed site processes in `seen` that were
/// reparented to polyhost; skips pids tokio owns. Blocking.
pub(super) fn reap_adopted(seen: &[i32]) {
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
