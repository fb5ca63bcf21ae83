//! Tells a document root's kept handle ([`super::current`]) that the path
//! it was opened by may name another directory now: one `inotify` instance
//! for the whole process, read by one thread.
//!
//! For a root `/a/b/root`, the directories `/`, `/a` and `/a/b` are watched
//! for entries created, deleted or moved in or out (`rename` over a name
//! included) under the one name that matters in each (`a`, `b`, `root`).
//! Such an event, a watched directory deleted or moved itself, its watch
//! gone (`IN_IGNORED`: deleted, unmounted) or the kernel's queue overflowing
//! sets the root's `stale` flag; the next request reopens the root by its
//! path (see [`super::current`]).
//!
//! Invariants:
//! - A root is registered *before* its handle is opened, and the flag is
//!   cleared *before* a reopen: a change at any moment after leaves the flag
//!   set, never an unnoticed stale handle.
//! - The kernel queues the event inside the `rename`/`mkdir`/`unlink` that
//!   makes it; this thread sets the flag when it is scheduled (microseconds,
//!   a few milliseconds on a loaded host). Requests in that window still
//!   read the directory the handle was opened on, which was opened without
//!   following symlinks: a stale answer, never one from outside a root.
//! - What inotify does not report is not noticed: a mount over a root's
//!   path (only root can mount; reload the site).
//! - When a watch cannot be added (`fs.inotify.max_user_watches` reached,
//!   no inotify at all), [`register`] says so and the root is checked by
//!   reopening it on every request instead (correct, one `openat2` dearer).
//!
//! A root's watches live as long as its kept handle: [`register`] before
//! the handle is opened, [`unregister`] when it is closed (idle, or its
//! root dropped). A directory's watch is shared by every root beneath it
//! and removed with the last of them, so an idle site holds no watch (the
//! kernel also drops a watch when its directory goes). Entries hold the
//! flag weakly: a root dropped without unregistering stops being told, and
//! its entries are pruned as events arrive.

use std::collections::HashMap;
use std::ffi::OsString;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

/// One root's interest in one watched directory.
struct Entry {
    /// The name in that directory the root's path goes through.
    name: OsString,
    stale: Weak<AtomicBool>,
}

struct Watcher {
    fd: OwnedFd,
    /// Watch descriptor → who cares (by [`Watches::key`]) about which name in it.
    entries: Mutex<HashMap<i32, HashMap<u64, Entry>>>,
}

/// The watches one root added, held by the root (under its own lock) so
/// that [`unregister`] removes exactly those.
#[derive(Debug, Default)]
pub(super) struct Watches {
    /// The root's key in the watcher's entries (0: none yet).
    key: u64,
    wds: Vec<i32>,
}

/// The process's watcher and its reading thread, started on first use;
/// `None` when inotify or the thread is unavailable.
fn watcher() -> Option<&'static Watcher> {
    static WATCHER: OnceLock<Option<&'static Watcher>> = OnceLock::new();
    *WATCHER.get_or_init(|| {
        let fd = inotify::init(CreateFlags::CLOEXEC)
            .map_err(|e| tracing::warn!(error = %e, "inotify is unavailable: every request reopens its document root by path"))
            .ok()?;
        // One for the whole process, for its whole life.
        let w: &'static Watcher = Box::leak(Box::new(Watcher {
            fd,
            entries: Mutex::new(HashMap::new()),
        }));
        std::thread::Builder::new()
            .name("docroot-watch".into())
            .spawn(move || read_events(w))
            .map_err(|e| tracing::warn!(error = %e, "cannot start the document root watcher: every request reopens its document root by path"))
            .ok()?;
        Some(w)
    })
}

/// Watches the directories on `root`'s path for changes to the names it
/// goes through; a change sets `stale`. The watches added are noted in
/// `watches` (again for a root registered before: directories new on its
/// path are added). False when `root` is not absolute and normal, or a
/// watch could not be added: then nothing tells `stale`, and the caller
/// must [`unregister`] and check the path itself on every request.
pub(super) fn register(root: &Path, stale: &Arc<AtomicBool>, watches: &mut Watches) -> bool {
    static KEYS: AtomicU64 = AtomicU64::new(1);
    let Some(w) = watcher() else {
        return false;
    };
    let mut dir = PathBuf::from("/");
    let mut components = root.components();
    if components.next() != Some(Component::RootDir) {
        return false;
    }
    if watches.key == 0 {
        watches.key = KEYS.fetch_add(1, Ordering::Relaxed);
    }
    let mask = WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::ONLYDIR
        | WatchFlags::DONT_FOLLOW;
    // Under the lock: an [`unregister`] of another root cannot remove a
    // directory's watch between its `add_watch` here and the entry.
    let mut entries = w.entries.lock().unwrap_or_else(|p| p.into_inner());
    for c in components {
        let Component::Normal(name) = c else {
            return false;
        };
        let wd = match inotify::add_watch(&w.fd, &dir, mask) {
            Ok(wd) => wd,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), root = %root.display(), error = %e,
                    "cannot watch a document root's path (fs.inotify.max_user_watches?): \
                     its requests reopen it by path");
                return false;
            }
        };
        entries.entry(wd).or_default().insert(
            watches.key,
            Entry {
                name: name.to_owned(),
                stale: Arc::downgrade(stale),
            },
        );
        if !watches.wds.contains(&wd) {
            watches.wds.push(wd);
        }
        dir.push(name);
    }
    true
}

/// Removes what [`register`] added for one root; a directory's watch goes
/// with the last root that needs it.
pub(super) fn unregister(watches: &mut Watches) {
    if watches.wds.is_empty() {
        return;
    }
    let Some(w) = watcher() else {
        return;
    };
    let mut entries = w.entries.lock().unwrap_or_else(|p| p.into_inner());
    for wd in watches.wds.drain(..) {
        let Some(roots) = entries.get_mut(&wd) else {
            // Dropped by the kernel (its directory went).
            continue;
        };
        roots.remove(&watches.key);
        if roots.is_empty() {
            entries.remove(&wd);
            // Fails only if the kernel dropped it already.
            let _ = inotify::remove_watch(&w.fd, wd);
        }
    }
}

impl Watches {
    /// How many directories' watches this root holds.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.wds.len()
    }
}

/// The watcher thread: reads events for ever and sets the flags they concern.
fn read_events(w: &'static Watcher) {
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 64 * 1024];
    let mut reader = inotify::Reader::new(&w.fd, &mut buf);
    loop {
        let event = match reader.next() {
            Ok(event) => event,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                // Nothing is told from now on: every root reopens per request.
                tracing::error!(error = %e, "reading document root changes failed");
                mark_all(w);
                return;
            }
        };
        let flags = event.events();
        if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
            mark_all(w);
            continue;
        }
        let whole = flags.intersects(
            ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF | ReadFlags::IGNORED | ReadFlags::UNMOUNT,
        );
        let name = event.file_name().map(|n| n.to_bytes());
        let mut entries = w.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(roots) = entries.get_mut(&event.wd()) {
            roots.retain(|_, e| {
                let Some(stale) = e.stale.upgrade() else {
                    return false;
                };
                if whole || name == Some(e.name.as_bytes()) {
                    stale.store(true, Ordering::Release);
                }
                true
            });
        }
        if flags.contains(ReadFlags::IGNORED) {
            entries.remove(&event.wd());
        }
    }
}

/// Every registered root is stale (lost events, or no more events).
fn mark_all(w: &Watcher) {
    let entries = w.entries.lock().unwrap_or_else(|p| p.into_inner());
    for e in entries.values().flat_map(HashMap::values) {
        if let Some(stale) = e.stale.upgrade() {
            stale.store(true, Ordering::Release);
        }
    }
}
