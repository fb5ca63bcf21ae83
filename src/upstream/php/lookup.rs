//! The file-system side of [`super::script`]: one `openat2` beneath the
//! document root and the type of what it found, without ever blocking the
//! async threads when asked not to.
//!
//! Invariants:
//! - Every lookup is `openat2(root, rel, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`
//!   on a root opened afresh without following any symlink: the kernel
//!   refuses any path (`..`, absolute symlink, symlink chain) that would
//!   leave the root, so there is no check-then-open race.
//! - With [`Wait::CachedOnly`] the kernel answers from its dentry caches
//!   (`RESOLVE_CACHED`) or not at all ([`Fail::NotCached`]); the type is read
//!   with `statx(STATX_TYPE, AT_STATX_DONT_SYNC)`, which NFS and FUSE answer
//!   without a round trip.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag, AT_FDCWD};
use nix::sys::stat::SFlag;
use rustix::fs::{AtFlags, StatxFlags};

use crate::upstream::UpstreamError;

/// Whether a lookup may wait for I/O.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    Block,
    /// `RESOLVE_CACHED`: answer from the kernel's caches or not at all.
    CachedOnly,
}

pub(super) enum Fail {
    Err(UpstreamError),
    /// Only with [`Wait::CachedOnly`]: the answer needs I/O.
    NotCached,
}

impl From<UpstreamError> for Fail {
    fn from(e: UpstreamError) -> Self {
        Fail::Err(e)
    }
}

/// What a path names.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Kind {
    File,
    Dir,
    Other,
}

/// `RESOLVE_CACHED` (Linux 5.12): `EAGAIN` unless the whole lookup can be
/// answered from the kernel's caches. nix 0.32 does not name it.
fn resolve_flags(base: ResolveFlag, wait: Wait) -> ResolveFlag {
    match wait {
        Wait::Block => base,
        Wait::CachedOnly => base | ResolveFlag::from_bits_retain(libc::RESOLVE_CACHED),
    }
}

/// The document root, opened afresh for every request (as
/// [`crate::docroot::open_root_dir`] does: no symlink anywhere in its path),
/// so the lookup happens in the directory php-fpm will open the script in.
pub(super) fn open_root(root: &Path, wait: Wait) -> Result<OwnedFd, Fail> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(resolve_flags(
            ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            wait,
        ));
    match openat2(AT_FDCWD, root, how) {
        Ok(fd) => Ok(fd),
        // EINVAL: a kernel older than 5.12 (no RESOLVE_CACHED).
        Err(Errno::EAGAIN | Errno::EINVAL) if wait == Wait::CachedOnly => Err(Fail::NotCached),
        Err(e) => Err(Fail::Err(UpstreamError::Misconfigured(format!(
            "cannot open document root {}: {}",
            root.display(),
            root_error(e)
        )))),
    }
}

fn root_error(e: Errno) -> String {
    match e {
        Errno::ELOOP => "its path contains a symlink (refused: a site owner could point it anywhere; configure the real path)".to_owned(),
        e => std::io::Error::from(e).to_string(),
    }
}

/// `Ok(None)`: nothing there (or a file where a directory was needed).
pub(super) fn lookup(root: &OwnedFd, rel: &str, wait: Wait) -> Result<Option<Kind>, Fail> {
    let rel = if rel.is_empty() { "." } else { rel };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(resolve_flags(
            ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            wait,
        ));
    let fd = match openat2(root, OsStr::from_bytes(rel.as_bytes()), how) {
        Ok(fd) => fd,
        // Not in the caches, a rename raced with the lookup, or a kernel
        // without RESOLVE_CACHED (EINVAL): the blocking lookup decides.
        Err(Errno::EAGAIN | Errno::EINVAL) if wait == Wait::CachedOnly => {
            return Err(Fail::NotCached)
        }
        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ENAMETOOLONG) => return Ok(None),
        Err(Errno::EXDEV | Errno::ELOOP) => {
            return Err(Fail::Err(UpstreamError::Forbidden(format!(
                "{rel:?} leads outside the document root"
            ))))
        }
        Err(Errno::EACCES | Errno::EPERM) => {
            return Err(Fail::Err(UpstreamError::Forbidden(format!(
                "{rel:?}: permission denied"
            ))))
        }
        Err(e) => return Err(Fail::Err(UpstreamError::LocalIo(e.into()))),
    };
    // Only the type, which an inode never changes, and as cached
    // (STATX_DONT_SYNC): fstat would make NFS or FUSE revalidate all the
    // attributes, a network or daemon round trip on the async thread.
    let st = rustix::fs::statx(
        &fd,
        "",
        AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC,
        StatxFlags::TYPE,
    );
    drop(fd);
    let st = st.map_err(|e| UpstreamError::LocalIo(e.into()))?;
    let fmt = SFlag::from_bits_truncate(u32::from(st.stx_mode) & SFlag::S_IFMT.bits());
    Ok(Some(if fmt == SFlag::S_IFREG {
        Kind::File
    } else if fmt == SFlag::S_IFDIR {
        Kind::Dir
    } else {
        Kind::Other
    }))
}
