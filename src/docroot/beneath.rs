//! The one place that opens paths beneath a document root: `openat2(2)`
//! with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` from a handle on the root,
//! either waiting for I/O or answered from the kernel's caches only.
//!
//! Invariants:
//! - A root is opened without following any symlink (`RESOLVE_NO_SYMLINKS`,
//!   [`open_root`]); everything beneath it is opened relative to that handle,
//!   so the kernel refuses any path (`..`, absolute symlink, symlink chain)
//!   that would leave it: there is no check-then-open race.
//! - With [`Wait::CachedOnly`] the kernel answers from its dentry caches
//!   (`RESOLVE_CACHED`, Linux 5.12) or not at all ([`Fail::NotCached`]);
//!   [`Beneath::kind`] reads the type with `statx(STATX_TYPE,
//!   AT_STATX_DONT_SYNC)`, which NFS and FUSE answer without a round trip.
//! - [`Beneath::open`] returns only regular files and directories; a FIFO is
//!   opened `O_NONBLOCK`, so it cannot stall a thread.

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag, AT_FDCWD};
use nix::sys::stat::SFlag;
use rustix::fs::{AtFlags, StatxFlags};

use super::{Dir, Opened, RelPath, ResolveError};

/// Whether a lookup may wait for I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    Block,
    /// `RESOLVE_CACHED`: answer from the kernel's caches or not at all.
    CachedOnly,
}

/// Why a lookup gave no answer.
#[derive(Debug)]
pub enum Fail {
    /// The path is refused, or the file system failed.
    Refused(ResolveError),
    /// Only with [`Wait::CachedOnly`]: the answer needs I/O.
    NotCached,
}

impl Fail {
    /// The answer of a lookup that was allowed to wait ([`Wait::Block`]),
    /// which never fails for want of cached answers.
    pub fn answered(self) -> ResolveError {
        match self {
            Fail::Refused(e) => e,
            Fail::NotCached => {
                ResolveError::Io(io::Error::other("a blocking lookup refused to wait"))
            }
        }
    }
}

impl From<ResolveError> for Fail {
    fn from(e: ResolveError) -> Self {
        Fail::Refused(e)
    }
}

/// What a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Other,
}

/// Opens a root directory (`O_PATH | O_DIRECTORY`) without following any
/// symlink on the way (`RESOLVE_NO_SYMLINKS`); see
/// [`super::open_root_dir`] for why.
pub fn open_root(root: &Path, wait: Wait) -> Result<OwnedFd, Fail> {
    open_root_as(root, wait).map_err(|e| e.map_errno(|e| root_refused(root, e)))
}

/// [`open_root`] for a request, once the root was opened before: a root
/// that is no longer there (renamed away, deleted, not yet replaced) is a
/// 404 like any missing file, not a configuration error.
pub fn reopen_root(root: &Path, wait: Wait) -> Result<OwnedFd, Fail> {
    open_root_as(root, wait).map_err(|e| {
        e.map_errno(|e| match e {
            Errno::ENOENT | Errno::ENOTDIR => ResolveError::NotFound,
            e => root_refused(root, e),
        })
    })
}

fn root_refused(root: &Path, e: Errno) -> ResolveError {
    ResolveError::Root(io::Error::other(format!(
        "cannot open document root {}: {}",
        root.display(),
        root_error(e)
    )))
}

/// A root's `openat2` failed: for want of cached answers, or with an errno.
enum RootFail {
    NotCached,
    Errno(Errno),
}

impl RootFail {
    fn map_errno(self, f: impl FnOnce(Errno) -> ResolveError) -> Fail {
        match self {
            RootFail::NotCached => Fail::NotCached,
            RootFail::Errno(e) => Fail::Refused(f(e)),
        }
    }
}

fn open_root_as(root: &Path, wait: Wait) -> Result<OwnedFd, RootFail> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(resolve_flags(
            ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            wait,
        ));
    loop {
        match openat2(AT_FDCWD, root, how) {
            Ok(fd) => return Ok(fd),
            Err(Errno::EINTR) => continue,
            // EINVAL: a kernel older than 5.12 (no RESOLVE_CACHED).
            Err(Errno::EAGAIN | Errno::EINVAL) if wait == Wait::CachedOnly => {
                return Err(RootFail::NotCached)
            }
            Err(e) => return Err(RootFail::Errno(e)),
        }
    }
}

fn root_error(e: Errno) -> String {
    match e {
        Errno::ELOOP => "its path contains a symlink (refused: a site owner could point it anywhere; configure the real path)".to_owned(),
        e => io::Error::from(e).to_string(),
    }
}

/// Lookups beneath the root at `root` opened afresh, as its path names it
/// now: for a runtime that opens files by path itself (php-fpm), so the
/// lookup happens in the directory it will open them in.
pub fn fresh(root: &Path, wait: Wait) -> Result<Beneath<OwnedFd>, Fail> {
    Ok(Beneath::new(open_root(root, wait)?, wait))
}

/// `RESOLVE_CACHED` (Linux 5.12): `EAGAIN` unless the whole lookup can be
/// answered from the kernel's caches. nix 0.32 does not name it.
fn resolve_flags(base: ResolveFlag, wait: Wait) -> ResolveFlag {
    match wait {
        Wait::Block => base,
        Wait::CachedOnly => base | ResolveFlag::from_bits_retain(libc::RESOLVE_CACHED),
    }
}

/// Whether this kernel answers lookups from its caches only
/// (`RESOLVE_CACHED`, Linux 5.12; older ones refuse the flag with
/// `EINVAL`). Asked once, of `/`.
pub fn cached_lookups() -> bool {
    static SUPPORTED: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(resolve_flags(ResolveFlag::empty(), Wait::CachedOnly));
        !matches!(openat2(AT_FDCWD, "/", how), Err(Errno::EINVAL))
    });
    *SUPPORTED
}

/// Lookups beneath one root handle.
pub struct Beneath<F> {
    root: F,
    wait: Wait,
}

impl<F: AsFd> Beneath<F> {
    pub fn new(root: F, wait: Wait) -> Self {
        Beneath { root, wait }
    }

    /// The root handle lookups start from.
    pub fn into_root(self) -> F {
        self.root
    }

    /// What `rel` names, without opening it for reading (`O_PATH`).
    /// `Ok(None)`: nothing there (or a file where a directory was needed).
    pub fn kind(&self, rel: &str) -> Result<Option<Kind>, Fail> {
        let fd = match self.openat2(rel, OFlag::O_PATH | OFlag::O_CLOEXEC) {
            Err(Fail::Refused(ResolveError::NotFound)) => return Ok(None),
            other => other?,
        };
        // Only the type, which an inode never changes, and as cached
        // (STATX_DONT_SYNC): fstat would make NFS or FUSE revalidate all the
        // attributes, a network or daemon round trip on the async thread.
        let st = rustix::fs::statx(
            &fd,
            "",
            AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC,
            StatxFlags::TYPE,
        )
        .map_err(|e| ResolveError::Io(e.into()))?;
        let fmt = SFlag::from_bits_truncate(u32::from(st.stx_mode) & SFlag::S_IFMT.bits());
        Ok(Some(if fmt == SFlag::S_IFREG {
            Kind::File
        } else if fmt == SFlag::S_IFDIR {
            Kind::Dir
        } else {
            Kind::Other
        }))
    }

    /// Opens `rel` for reading and `fstat`s it: a regular file or a directory.
    pub fn open(&self, rel: &str) -> Result<(File, Metadata), Fail> {
        // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
        // writer. It has no effect on regular files or directories, which
        // are all we keep. No O_NOFOLLOW: symlinks inside the root are fine;
        // RESOLVE_BENEATH is what keeps them inside.
        let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
        let file = File::from(self.openat2(rel, flags)?);
        let meta = file.metadata().map_err(ResolveError::Io)?;
        if !(meta.is_file() || meta.is_dir()) {
            return Err(ResolveError::Forbidden("not a regular file").into());
        }
        Ok((file, meta))
    }

    /// Opens what a decoded request path names: a regular file (not one
    /// asked for with a trailing slash) or a directory.
    pub fn open_rel(&self, rel: &RelPath<'_>) -> Result<Opened, Fail> {
        let path = rel.as_str().trim_end_matches('/');
        let (file, meta) = self.open(path)?;
        if meta.is_dir() {
            return Ok(Opened::Dir(Dir {
                rel: path.to_owned(),
                trailing_slash: rel.trailing_slash(),
                under: None,
            }));
        }
        if rel.trailing_slash() {
            // `file.txt/`: the kernel refuses it too (ENOTDIR) when the path
            // is passed with the slash; we pass it without, so check here.
            return Err(ResolveError::NotFound.into());
        }
        Ok(Opened::File {
            rel: path.to_owned(),
            file,
            meta,
        })
    }

    /// The one `openat2` call beneath the root.
    fn openat2(&self, rel: &str, flags: OFlag) -> Result<OwnedFd, Fail> {
        let rel = if rel.is_empty() { "." } else { rel };
        let how = OpenHow::new().flags(flags).resolve(resolve_flags(
            ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            self.wait,
        ));
        // EAGAIN: the kernel could not rule out a `..` race (a concurrent
        // rename); it asks the caller to retry. Bounded, so an attacker
        // renaming in a loop cannot pin a thread.
        let mut tries = 0;
        loop {
            match openat2(self.root.as_fd(), rel, how) {
                Err(Errno::EINTR) => continue,
                // Not in the caches, a rename raced with the lookup, or a
                // kernel without RESOLVE_CACHED (EINVAL): the blocking
                // lookup decides.
                Err(Errno::EAGAIN | Errno::EINVAL) if self.wait == Wait::CachedOnly => {
                    return Err(Fail::NotCached)
                }
                Err(Errno::EAGAIN) if tries < 8 => tries += 1,
                Err(Errno::EAGAIN) => {
                    return Err(
                        ResolveError::Forbidden("path keeps changing during resolution").into(),
                    )
                }
                other => return other.map_err(|e| ResolveError::from_errno(e).into()),
            }
        }
    }
}
