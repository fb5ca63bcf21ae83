//! A document root's kept handle: opened by the root's first request,
//! reopened by its path only when that path may name another directory now,
//! and closed (its watches removed) once the root has not been used for a
//! while ([`IDLE_SWEEP`]): an idle site holds no descriptor and no watch.
//!
//! Invariants:
//! - Every handle handed out was opened by the root's configured path
//!   without following any symlink (`RESOLVE_NO_SYMLINKS`, [`open_root`]):
//!   the fence `RESOLVE_BENEATH` builds is always a directory the path named
//!   without a symlink, never one a site owner pointed it at.
//! - The handle is the directory the path names now, up to the watcher's
//!   delay ([`super::watch`]): the path's directories are watched, a change
//!   to a name on it (the root renamed, replaced by another directory or by
//!   a symlink, deleted; the same for any directory above it) marks the
//!   handle stale, and the next request reopens the root by path. A root
//!   gone is a 404 for that request (and the next one tries again); a root
//!   whose path now holds a symlink is refused ([`ResolveError::Root`]).
//!   Nothing is served from the old directory once the flag is seen.
//! - A lookup keeps the handle it started with (an `Arc`): a directory
//!   and its index file come from the same root even if the root is
//!   replaced between them.
//! - A root that cannot be watched is reopened on every request (its handle
//!   is not kept).
//! - A handle is kept only while its root's path is watched: the watches
//!   are added before the open, and removed only with the handle, both
//!   under the root's one lock ([`Slot::turn`]), which the hot path never
//!   takes.
//! - Idle roots are closed by the sweeper thread ([`sweep_idle`], every
//!   [`IDLE_SWEEP`]): a root no request used since the previous sweep
//!   loses its handle and its watches; its next request opens it again by
//!   path, as after a change (a lookup that still holds the old handle
//!   finishes on it).
//!
//! Cost on the hot path: two atomic loads and an `arc_swap` guard (plus one
//! store per sweep period, marking the root used); no system call.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwapOption, Guard};

use super::beneath::{open_root, reopen_root, Fail, Wait};
use super::watch;
#[cfg(doc)]
use super::ResolveError;

/// How often idle roots are closed: a root unused for a whole period loses
/// its handle, so an idle root holds it for one to two periods.
pub(super) const IDLE_SWEEP: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub(super) struct Current {
    slot: Arc<Slot>,
}

/// One root's handle and the flags around it (shared with the sweeper).
#[derive(Debug)]
struct Slot {
    path: PathBuf,
    /// The handle, while the root is in use and watched.
    held: ArcSwapOption<OwnedFd>,
    /// Set by the watcher when the path may name another directory.
    stale: Arc<AtomicBool>,
    /// Used since the last sweep.
    used: AtomicBool,
    /// Serialises opening and closing the handle, and its watches.
    turn: Mutex<Turn>,
}

/// What only the holder of [`Slot::turn`] changes.
#[derive(Debug, Default)]
struct Turn {
    /// The watches added for this root (see [`watch::register`]).
    watches: watch::Watches,
    /// In the sweeper's list.
    listed: bool,
}

impl Current {
    /// Checks that `path` opens as a root (blocking); the handle is kept
    /// from the root's first request on.
    pub(super) fn open(path: &Path) -> Result<Current, Fail> {
        drop(open_root(path, Wait::Block)?);
        Ok(Current {
            slot: Arc::new(Slot {
                path: path.to_path_buf(),
                held: ArcSwapOption::empty(),
                stale: Arc::new(AtomicBool::new(false)),
                used: AtomicBool::new(false),
                turn: Mutex::new(Turn::default()),
            }),
        })
    }

    /// The handle to look up beneath for one request.
    pub(super) fn get(&self, wait: Wait) -> Result<Held, Fail> {
        let slot = &self.slot;
        if !slot.stale.load(Ordering::Acquire) {
            if let Some(held) = Held::kept(slot.held.load()) {
                slot.mark_used();
                return Ok(held);
            }
        }
        self.reopen(wait)
    }

    /// Opens the root by its path (again) and keeps the handle while the
    /// path is watched. Never from an async thread ([`Wait::CachedOnly`]
    /// is [`Fail::NotCached`]): adding the watches looks up the root's
    /// path, which may wait for a disk, and another thread may hold the
    /// root's lock for a blocking open. Once per idle period and per
    /// change of a root, a request takes the blocking path.
    fn reopen(&self, wait: Wait) -> Result<Held, Fail> {
        if wait == Wait::CachedOnly {
            return Err(Fail::NotCached);
        }
        let slot = &self.slot;
        let mut turn = slot.lock();
        // Another request may have opened it while this one waited.
        if !slot.stale.load(Ordering::Acquire) {
            if let Some(held) = Held::kept(slot.held.load()) {
                slot.mark_used();
                return Ok(held);
            }
        }
        // Cleared before the watches and the open: a change from now on sets
        // it again. The directories on the path may be new ones: watch those
        // (the root's watches are added again; those it had stay).
        slot.stale.store(false, Ordering::SeqCst);
        let watched = watch::register(&slot.path, &slot.stale, &mut turn.watches);
        let fd = match reopen_root(&slot.path, wait) {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                // Not there, a symlink in the path, or not cached: try again
                // on the next request.
                slot.close(&mut turn);
                return Err(e);
            }
        };
        if !watched {
            // Nothing would tell a change: not kept, opened per request.
            slot.close(&mut turn);
            return Ok(Held(Guard::from_inner(Some(fd))));
        }
        slot.held.store(Some(fd.clone()));
        slot.mark_used();
        if !std::mem::replace(&mut turn.listed, true) {
            sweeper::list(Arc::downgrade(slot));
        }
        Ok(Held(Guard::from_inner(Some(fd))))
    }

    /// Whether the handle is kept now, and how many watched directories
    /// this root holds.
    #[cfg(test)]
    pub(super) fn held(&self) -> (bool, usize) {
        let watches = self.slot.lock().watches.len();
        (self.slot.held.load().is_some(), watches)
    }

    /// One visit of the sweeper to this root alone (the sweeper's own
    /// thread visits every root, but only every [`IDLE_SWEEP`]).
    #[cfg(test)]
    pub(super) fn sweep(&self) {
        self.slot.sweep();
    }
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Turn> {
        self.turn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the root used for the sweeper: one store per sweep period.
    fn mark_used(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// Drops the handle (a lookup that holds it finishes on it) and the
    /// watches. Stays in the sweeper's list until its next sweep.
    fn close(&self, turn: &mut Turn) {
        self.held.store(None);
        watch::unregister(&mut turn.watches);
    }

    /// The sweeper's visit: closes the root if no request used it since the
    /// last visit. False once closed (it leaves the sweeper's list).
    fn sweep(&self) -> bool {
        let mut turn = self.lock();
        if self.used.swap(false, Ordering::Relaxed) && self.held.load().is_some() {
            return true;
        }
        self.close(&mut turn);
        turn.listed = false;
        false
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let turn = self.turn.get_mut().unwrap_or_else(|p| p.into_inner());
        watch::unregister(&mut turn.watches);
    }
}

/// The roots that hold a handle, visited by one thread every [`IDLE_SWEEP`].
mod sweeper {
    use std::sync::{Mutex, Once, Weak};

    use super::{Slot, IDLE_SWEEP};

    static OPEN: Mutex<Vec<Weak<Slot>>> = Mutex::new(Vec::new());

    /// A root that now holds a handle (the thread starts on first use).
    pub(super) fn list(slot: Weak<Slot>) {
        OPEN.lock().unwrap_or_else(|p| p.into_inner()).push(slot);
        static STARTED: Once = Once::new();
        STARTED.call_once(|| {
            let started = std::thread::Builder::new()
                .name("docroot-sweep".into())
                .spawn(|| loop {
                    std::thread::sleep(IDLE_SWEEP);
                    sweep();
                });
            if let Err(e) = started {
                tracing::warn!(error = %e, "cannot start the document root sweeper: roots keep their handle until their site is reloaded");
            }
        });
    }

    pub(super) fn sweep() {
        let open = std::mem::take(&mut *OPEN.lock().unwrap_or_else(|p| p.into_inner()));
        let still: Vec<Weak<Slot>> = open
            .into_iter()
            .filter(|slot| slot.upgrade().is_some_and(|slot| slot.sweep()))
            .collect();
        OPEN.lock().unwrap_or_else(|p| p.into_inner()).extend(still);
    }
}

/// A root handle borrowed for one lookup: no reference count is touched
/// (`arc_swap`'s per-thread slots; the count is one cache line both router
/// lanes would otherwise write on every request).
pub struct Held(Guard<Option<Arc<OwnedFd>>>);

impl Held {
    /// The handle of `guard`, if one is kept.
    fn kept(guard: Guard<Option<Arc<OwnedFd>>>) -> Option<Held> {
        guard.is_some().then_some(Held(guard))
    }

    /// The handle, owned: for what outlives the lookup (a directory's
    /// index file is opened beneath the root the directory was found in).
    pub fn into_arc(self) -> Arc<OwnedFd> {
        Guard::into_inner(self.0).expect("a Held is made only of a handle")
    }
}

impl AsFd for Held {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &*self.0 {
            Some(fd) => fd.as_fd(),
            None => unreachable!("a Held is made only of a handle"),
        }
    }
}

#[cfg(test)]
mod tests;
