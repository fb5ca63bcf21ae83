//! A document root's kept handle: opened once per site generation (start,
//! reload), reopened by its path only when that path may name another
//! directory now.
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
//! - A root that cannot be watched is reopened on every request.
//!
//! Cost on the hot path: an atomic load and an `arc_swap` guard; no system call.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use super::beneath::{open_root, reopen_root, Fail, Wait};
use super::watch;
#[cfg(doc)]
use super::ResolveError;

#[derive(Debug)]
pub(super) struct Current {
    path: PathBuf,
    held: ArcSwap<OwnedFd>,
    /// Set by the watcher when the path may name another directory.
    stale: Arc<AtomicBool>,
    /// Whether the watcher tells `stale`; if not, every request reopens.
    watched: AtomicBool,
}

impl Current {
    /// Opens `path` (blocking) and starts watching it.
    pub(super) fn open(path: &Path) -> Result<Current, Fail> {
        let stale = Arc::new(AtomicBool::new(false));
        // Watched first, opened second: a change in between marks it stale.
        let watched = watch::register(path, &stale);
        let fd = open_root(path, Wait::Block)?;
        Ok(Current {
            path: path.to_path_buf(),
            held: ArcSwap::from_pointee(fd),
            stale,
            watched: AtomicBool::new(watched),
        })
    }

    /// The handle to look up beneath for one request.
    pub(super) fn get(&self, wait: Wait) -> Result<Held, Fail> {
        if !self.stale.load(Ordering::Acquire) && self.watched.load(Ordering::Relaxed) {
            return Ok(Held(self.held.load()));
        }
        Ok(Held(Guard::from_inner(self.reopen(wait)?)))
    }

    /// Opens the root by its path again and keeps the new handle.
    fn reopen(&self, wait: Wait) -> Result<Arc<OwnedFd>, Fail> {
        // Cleared before the open: a change from now on sets it again.
        self.stale.store(false, Ordering::SeqCst);
        let fd = match reopen_root(&self.path, wait) {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                // Not there, a symlink in the path, or not cached: try again
                // on the next request.
                self.stale.store(true, Ordering::SeqCst);
                return Err(e);
            }
        };
        // The directories on the path may be new ones: watch those. Fails
        // only for a lack of watches; then this root is reopened always.
        if self.watched.load(Ordering::Relaxed) && !watch::register(&self.path, &self.stale) {
            self.watched.store(false, Ordering::Relaxed);
        }
        self.held.store(fd.clone());
        Ok(fd)
    }
}

/// A root handle borrowed for one lookup: no reference count is touched
/// (`arc_swap`'s per-thread slots; the count is one cache line both router
/// lanes would otherwise write on every request).
pub struct Held(Guard<Arc<OwnedFd>>);

impl Held {
    /// The handle, owned: for what outlives the lookup (a directory's
    /// index file is opened beneath the root the directory was found in).
    pub fn into_arc(self) -> Arc<OwnedFd> {
        Guard::into_inner(self.0)
    }
}

impl AsFd for Held {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

#[cfg(test)]
mod tests;
