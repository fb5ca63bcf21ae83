//! Small files kept in memory by each router thread, every request
//! checked against the file system by one `statx` of its path.
//!
//! A site's assets (a WordPress page's CSS, scripts, icons) are small files
//! asked for again and again. Opening each afresh costs the router an
//! `openat2` beneath the root, an `fstat`, a read and a `close`; a kept
//! file costs one `statx` ([`DocRoot::version_of`]) and no descriptor.
//!
//! Invariants:
//! - An entry is made only of a file the static upstream was about to
//!   serve: opened through [`DocRoot`] (`openat2` with `RESOLVE_BENEATH`,
//!   admitted by the root's `Reader`), found not to be PHP source, with the
//!   version of that open file's `fstat` ([`Version::of`]). It is keyed by
//!   its root's [`DocRoot::id`] (never reused) and the path relative to it.
//! - An entry answers a request only if [`DocRoot::version_of`] its path,
//!   looked up now, equals that version: the same inode, unchanged (size,
//!   times, owner, mode, link count). So a file rewritten, truncated,
//!   replaced, removed, renamed away, `chmod`ed, `chown`ed or given a hard
//!   link is opened afresh, with every check, on the very next request;
//!   the entry is dropped. Nothing here is trusted for a time.
//! - Its bytes are read whole, right after the open, from the page cache
//!   only (`preadv2(RWF_NOWAIT)`: no wait for a disk), and only of a file
//!   whose last change is [`SETTLE`](crate::docroot::SETTLE) old (a file changed within its clock
//!   tick could change again without a new time); a short read keeps
//!   nothing.
//! - Only files on local file systems are kept: on a network or FUSE one,
//!   the check's `statx` would be a round trip to a server on the async
//!   thread for every request (`local_file_system`).
//! - Bounded per thread: files of at most [`MAX_FILE`] bytes, at most
//!   [`BUDGET`] bytes and [`MAX_ENTRIES`] entries, the least recently used
//!   dropped first. Each thread keeps its own (a lane's connections all run
//!   on it): no lock on the request path. An idle router keeps what it
//!   had until other files push it out; a root no longer used is never
//!   looked up again (its id is gone with it).
//!
//! Written with `lru` (already the router's LRU) rather than a caching
//! crate: the checks above are the whole of the policy, and the key is a
//! hash so a lookup allocates nothing (the entry names its root and path,
//! which are compared too).

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::BuildHasher;
use std::io::IoSliceMut;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use lru::LruCache;
use rustix::io::{preadv2, Errno, ReadWriteFlags};

use super::Described;
use crate::docroot::{DocRoot, OpenFile, Version};
use crate::metrics::kept_files::ThreadCounts;

/// Largest file kept: below the size files are handed to `sendfile` from
/// ([`crate::sendfile::SEND_FROM`]), where the router copies nothing.
pub const MAX_FILE: u64 = 32 * 1024;

/// Bytes kept per thread (files, their paths and what describes them).
pub const BUDGET: usize = 4 * 1024 * 1024;

/// Entries kept per thread.
pub const MAX_ENTRIES: usize = 8192;

/// What an entry costs beyond its bytes and path (the entry, its headers).
const ENTRY_OVERHEAD: usize = 256;

/// A kept file: its bytes, and what its responses say of it.
#[derive(Debug)]
pub struct Entry {
    root: u64,
    rel: Box<str>,
    version: Version,
    pub described: Described,
    pub bytes: Bytes,
}

impl Entry {
    fn cost(&self) -> usize {
        self.bytes.len() + self.rel.len() + ENTRY_OVERHEAD
    }

    /// The path below the root.
    pub fn rel_path(&self) -> &str {
        &self.rel
    }
}

struct Hot {
    entries: LruCache<u64, Arc<Entry>>,
    /// Sum of the entries' [`Entry::cost`].
    cost: usize,
    /// Keyed per thread: a path cannot be chosen to collide with another.
    hasher: RandomState,
    /// This thread's part of the `polyhost_static_kept_*` metrics.
    counts: Arc<ThreadCounts>,
}

thread_local! {
    static HOT: RefCell<Hot> = RefCell::new(Hot {
        entries: LruCache::unbounded(),
        cost: 0,
        hasher: RandomState::new(),
        counts: ThreadCounts::register(),
    });
}

impl Drop for Hot {
    fn drop(&mut self) {
        self.counts.retire();
    }
}

impl Hot {
    fn key(&self, root: u64, rel: &str) -> u64 {
        self.hasher.hash_one((root, rel))
    }

    fn remove(&mut self, key: u64) {
        if let Some(gone) = self.entries.pop(&key) {
            self.cost -= gone.cost();
        }
        self.counts.holding(self.entries.len(), self.cost);
    }

    fn insert(&mut self, key: u64, entry: Arc<Entry>) {
        self.remove(key);
        self.cost += entry.cost();
        self.entries.put(key, entry);
        self.counts.stored();
        while self.cost > BUDGET || self.entries.len() > MAX_ENTRIES {
            match self.entries.pop_lru() {
                Some((_, gone)) => {
                    self.cost -= gone.cost();
                    self.counts.evicted();
                }
                None => break,
            }
        }
        self.counts.holding(self.entries.len(), self.cost);
    }
}

/// The kept file at `rel` beneath `root`, if one is kept and the path
/// names it, unchanged, now.
pub fn lookup(root: &DocRoot, rel: &str) -> Option<Arc<Entry>> {
    HOT.with_borrow_mut(|hot| {
        let key = hot.key(root.id(), rel);
        let entry = hot.entries.get(&key)?;
        if entry.root != root.id() || &*entry.rel != rel {
            return None;
        }
        if root.version_of(rel) == Some(entry.version) {
            let entry = entry.clone();
            hot.counts.answered();
            return Some(entry);
        }
        hot.remove(key);
        hot.counts.changed();
        None
    })
}

/// What may be kept of a file: its version and all its bytes.
pub struct Keepable {
    version: Version,
    bytes: Bytes,
}

/// What `file` (opened beneath its root, about to be served) may be kept
/// as, if it qualifies: small, settled, and all in the page cache.
pub fn keepable(file: &OpenFile) -> Option<Keepable> {
    let version = Version::of(file.metadata());
    if version.size() > MAX_FILE || !version.settled(SystemTime::now()) {
        return None;
    }
    if !local_file_system(file.file()) {
        return None;
    }
    let bytes = read_whole(file.file(), version.size())?;
    Some(Keepable { version, bytes })
}

/// Whether `file` lives on a file system whose `statx` answers from this
/// machine: not a network or FUSE one, where [`DocRoot::version_of`]'s
/// forced sync is a round trip to a server (or a daemon) on the router's
/// async thread, for every request.
fn local_file_system(file: &File) -> bool {
    /// `f_type`s of statfs(2) (linux/magic.h): NFS, SMB, CIFS, SMB2,
    /// FUSE, Ceph, AFS (two), 9p, Coda, NCP, OCFS2, GFS2, Lustre.
    const REMOTE: [u32; 14] = [
        0x6969,
        0x517B,
        0xFF53_4D42,
        0xFE53_4D42,
        0x6573_5546,
        0x00C3_6400,
        0x5346_414F,
        0x6B41_4653,
        0x0102_1997,
        0x7375_7245,
        0x564C,
        0x7461_636F,
        0x0116_1970,
        0x0BD0_0BD0,
    ];
    match rustix::fs::fstatfs(file) {
        // The magic's 32 bits, whatever the width of `f_type` here.
        Ok(st) => !REMOTE.contains(&(st.f_type as u32)),
        Err(_) => false,
    }
}

/// Keeps what [`keepable`] read of `file` (at its path beneath `root`),
/// with what its responses say (`described`); the entry to answer from.
pub fn keep(root: &DocRoot, file: &OpenFile, kept: Keepable, described: Described) -> Arc<Entry> {
    let entry = Arc::new(Entry {
        root: root.id(),
        rel: file.rel_path().into(),
        version: kept.version,
        described,
        bytes: kept.bytes,
    });
    HOT.with_borrow_mut(|hot| {
        let key = hot.key(entry.root, &entry.rel);
        hot.insert(key, entry.clone());
    });
    entry
}

/// All `len` bytes of `file` from the page cache, or `None` (not all
/// cached, the file shorter or longer now, a read error).
fn read_whole(file: &File, len: u64) -> Option<Bytes> {
    let len = usize::try_from(len).ok()?;
    // One byte more than expected: a file that grew is not kept.
    let mut buf = vec![0u8; len + 1];
    let mut got = 0;
    loop {
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        match preadv2(file, &mut iov, got as u64, ReadWriteFlags::NOWAIT) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::INTR) => continue,
            Err(_) => return None,
        }
        if got > len {
            return None;
        }
    }
    if got != len {
        return None;
    }
    buf.truncate(len);
    Some(Bytes::from(buf))
}

/// How many entries this thread keeps, and their cost (tests).
#[cfg(test)]
pub fn kept() -> (usize, usize) {
    HOT.with_borrow(|hot| (hot.entries.len(), hot.cost))
}

#[cfg(test)]
mod tests;
