//! Document roots: the one way any runtime turns a request path into an open
//! file of a site.
//!
//! [`DocRoot`] holds an `O_PATH` descriptor on a site's root directory and
//! opens everything beneath it with Linux `openat2(2)` and
//! `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, so the kernel itself refuses any
//! path that leaves the root, whether by `..` or by a symlink a site owner
//! placed (e.g. one pointing at another site's files). Symlinks that stay
//! inside the root are followed.
//!
//! Invariants:
//! - Every file a runtime is handed (a static file, a PHP `SCRIPT_FILENAME`)
//!   is opened or looked up through this module ([`DocRoot`], [`fresh`]);
//!   nothing else joins request paths onto a root and opens them.
//! - There is no check-then-open: the file is opened once, then `fstat`ed
//!   through the descriptor, so swapping a directory for a symlink between a
//!   check and the open has nothing to race.
//! - A request path is percent-decoded exactly once, by one decoder for
//!   every runtime and for the router's choice of a mount ([`decode_for`]:
//!   a mount is chosen on the path a file would be looked up by), and
//!   every refusal's answer comes from one table ([`Refusal::verdict`],
//!   the same answers on every site):
//!   `.`/`..` segments, encoded slashes, backslashes and NUL bytes are
//!   refused, empty segments collapsed, and dotfiles (except under
//!   `/.well-known/`) are reported as not found.
//! - A [`DocRoot`]'s handle is kept while the root is in use (opened by its
//!   first request, closed with its watches once unused for a sweep
//!   period: an idle site holds none) and is the directory the root's path
//!   names now, up to an inotify watcher's delay ([`current`]: reopened by
//!   path, without following symlinks, when the root or a directory above
//!   it is renamed, replaced, deleted); a lookup keeps the handle it
//!   started with.
//! - Every `openat2` beneath a root is [`beneath`]'s: the kept handle
//!   of a [`DocRoot`], or one opened afresh for a request ([`fresh`], for
//!   PHP: the directory php-fpm will open the script in); what the latter
//!   opens is served only once a [`DocRoot`] admits it ([`DocRoot::admit`]).
//! - Only regular files and directories are ever returned; FIFOs, devices and
//!   sockets are refused (a FIFO is opened `O_NONBLOCK`, so it cannot stall a
//!   thread).
//! - A file is returned only if the root's [`Reader`] (the site's user) may
//!   read it, decided on the open descriptor ([`access`]); polyhost itself
//!   opens everything as root.
//! - The one lookup that is not an `openat2`, [`DocRoot::version_of`] (a
//!   `statx`), opens nothing and returns no file: it only tells whether a
//!   path still names a file, unchanged, that an `openat2` here opened and
//!   admitted before ([`version`]).
//!
//! Every method here makes blocking system calls; async callers run them in
//! `tokio::task::spawn_blocking`.

mod access;
mod beneath;
mod current;
mod path;
mod version;
mod watch;

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;

pub use access::Reader;
pub use beneath::{cached_lookups, fresh, Beneath, Fail, Kind, Wait};
pub use current::Held;
pub use path::{
    check_relative, decode, decode_for, dot_segment_verdict, is_plain, Reading, Refusal, RelPath,
};
pub use version::{Version, SETTLE};

/// Why a path could not be resolved to a servable file.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The path is malformed in a way that is never legitimate (not
    /// starting with `/`, invalid UTF-8 after decoding, an encoded slash or
    /// backslash, a backslash, a NUL byte).
    #[error("bad request path: {0}")]
    BadRequest(&'static str),
    /// The path tries to leave the root, or names something that is never
    /// served (a `.` or `..` segment, a symlink pointing outside
    /// the root, a device, a directory without index).
    #[error("{0}")]
    Forbidden(&'static str),
    /// Nothing there, or something that must not be revealed (dotfiles).
    #[error("not found")]
    NotFound,
    /// The file system failed in an unexpected way.
    #[error("cannot open file under the document root: {0}")]
    Io(#[source] io::Error),
    /// The document root itself cannot be opened (missing, or a symlink in
    /// its path): the site's configuration does not hold.
    #[error("{0}")]
    Root(#[source] io::Error),
}

impl ResolveError {
    fn from_errno(e: Errno) -> Self {
        match e {
            Errno::ENOENT | Errno::ENOTDIR | Errno::ENAMETOOLONG => ResolveError::NotFound,
            // EXDEV: the path (or a symlink in it) leaves the root.
            // ELOOP: a magic link, or a symlink loop.
            Errno::EXDEV | Errno::ELOOP => ResolveError::Forbidden("path leaves the document root"),
            Errno::EACCES | Errno::EPERM => ResolveError::Forbidden("permission denied"),
            // ENXIO: a Unix socket; EOPNOTSUPP: some special files.
            Errno::ENXIO | Errno::EOPNOTSUPP | Errno::ENODEV => {
                ResolveError::Forbidden("not a regular file")
            }
            Errno::ENOSYS => ResolveError::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                "openat2(2) is not available: polyhost needs Linux 5.6 or newer \
                 (and a seccomp profile that allows openat2)",
            )),
            other => ResolveError::Io(io::Error::from(other)),
        }
    }
}

/// Numbers of [`DocRoot`]s, from 1.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A site document root. Cheap to clone (the handle is shared).
#[derive(Clone, Debug)]
pub struct DocRoot {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Unique among the process's roots, never reused ([`DocRoot::id`]).
    id: u64,
    /// The root's handle, kept while its path names the same directory.
    current: current::Current,
    path: PathBuf,
    reader: Reader,
}

/// What a request path named, opened beneath a root, before its root's
/// [`Reader`] was asked ([`DocRoot::admit`]).
#[derive(Debug)]
pub enum Opened {
    /// A regular file, open for reading.
    File {
        rel: String,
        file: File,
        meta: Metadata,
    },
    /// A directory.
    Dir(Dir),
}

/// What a request path named.
#[derive(Debug)]
pub enum Resolved {
    /// A regular file, open for reading.
    File(OpenFile),
    /// A directory; see [`DocRoot::open_index`].
    Dir(Dir),
}

/// A directory a request path named.
#[derive(Debug)]
pub struct Dir {
    rel: String,
    trailing_slash: bool,
    /// The root it was found beneath (the [`DocRoot`]'s handle of the
    /// moment, or a PHP lookup's, opened afresh for the request): its index
    /// file is opened beneath the same root, so a root replaced meanwhile
    /// never mixes an old directory with a new index.
    under: Option<Arc<OwnedFd>>,
}

impl Dir {
    /// This directory, found beneath `root`.
    pub fn found_beneath(self, root: Arc<OwnedFd>) -> Dir {
        Dir {
            under: Some(root),
            ..self
        }
    }

    /// Path relative to the root, without leading or trailing slash (`""` for the root).
    pub fn rel_path(&self) -> &str {
        &self.rel
    }

    /// Whether the request path ended in `/`. A directory requested without
    /// one should be redirected to the path with it, so relative links work.
    pub fn has_trailing_slash(&self) -> bool {
        self.trailing_slash
    }
}

/// A regular file opened beneath a [`DocRoot`].
#[derive(Debug)]
pub struct OpenFile {
    file: File,
    meta: Metadata,
    rel: String,
    /// Where the root is configured (for [`OpenFile::path`], made only when asked).
    root: DocRoot,
}

impl OpenFile {
    /// The open file (read-only).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Takes the open file out.
    pub fn into_file(self) -> File {
        self.file
    }

    /// `fstat` of the open file (not of whatever the path names now).
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// Path relative to the root, without leading slash.
    pub fn rel_path(&self) -> &str {
        &self.rel
    }

    /// `root/rel`: the path a runtime is told (e.g. PHP's `SCRIPT_FILENAME`).
    /// Informational only: the file itself was opened through the root's
    /// descriptor, and symlinks in the path may point elsewhere inside the root.
    pub fn path(&self) -> PathBuf {
        self.root.path().join(&self.rel)
    }
}

/// Opens a document root directory (`O_PATH | O_DIRECTORY`) without
/// following any symlink on the way (`RESOLVE_NO_SYMLINKS`). The path comes
/// from configuration, but its last components usually belong to the site
/// owner (`/home/alice/public_html`): a symlink there would move the fence
/// `RESOLVE_BENEATH` builds to wherever it points (`/`), and polyhost reads
/// as root. So a root with a symlink in its path is refused; configure the
/// real path.
pub fn open_root_dir(root: &Path) -> io::Result<OwnedFd> {
    beneath::open_root(root, Wait::Block).map_err(root_io_error)
}

fn root_io_error(e: Fail) -> io::Error {
    match e {
        Fail::Refused(ResolveError::Root(e)) => e,
        Fail::Refused(e) => io::Error::other(e.to_string()),
        Fail::NotCached => io::Error::other("not cached"),
    }
}

impl DocRoot {
    /// Checks that `root` opens (see [`open_root_dir`]; the handle is kept
    /// from the first request on); everything beneath it is resolved with
    /// `RESOLVE_BENEATH`, and only files `reader` may read are returned.
    pub fn open(root: &Path, reader: Reader) -> io::Result<DocRoot> {
        Ok(DocRoot {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                current: current::Current::open(root).map_err(root_io_error)?,
                path: root.to_path_buf(),
                reader,
            }),
        })
    }

    /// This root's number: no other [`DocRoot`] of the process has it, now
    /// or later (what is kept per root can be told apart by it).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Whose read permission the files served from this root need.
    pub fn reader(&self) -> &Reader {
        &self.inner.reader
    }

    /// The root's path as configured.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Resolves the raw path of a request URI (still percent-encoded, no
    /// query) to an open file or a directory. Blocking.
    pub fn resolve(&self, url_path: &str) -> Result<Resolved, ResolveError> {
        self.resolve_decoded(&decode(url_path)?)
    }

    /// [`DocRoot::resolve`] of a path already [`decode`]d. Blocking.
    pub fn resolve_decoded(&self, rel: &RelPath<'_>) -> Result<Resolved, ResolveError> {
        self.resolve_with(rel, Wait::Block).map_err(Fail::answered)
    }

    /// [`DocRoot::resolve_decoded`], or [`Fail::NotCached`] when the
    /// kernel's caches cannot answer without I/O (a cold path, a network
    /// file system's revalidation): never waits.
    pub fn resolve_cached(&self, rel: &RelPath<'_>) -> Result<Resolved, Fail> {
        self.resolve_with(rel, Wait::CachedOnly)
    }

    fn resolve_with(&self, rel: &RelPath<'_>, wait: Wait) -> Result<Resolved, Fail> {
        let beneath = self.beneath(wait)?;
        let opened = beneath.open_rel(rel)?;
        Ok(self.admit(match opened {
            Opened::Dir(dir) => Opened::Dir(dir.found_beneath(beneath.into_root().into_arc())),
            file => file,
        })?)
    }

    /// What another lookup opened beneath this root (PHP's, beneath the
    /// root opened afresh) becomes servable here: a file only if this
    /// root's reader may read it.
    pub fn admit(&self, opened: Opened) -> Result<Resolved, ResolveError> {
        match opened {
            Opened::Dir(dir) => Ok(Resolved::Dir(dir)),
            Opened::File { rel, file, meta } => {
                Ok(Resolved::File(self.open_file(rel, file, meta)?))
            }
        }
    }

    /// Lookups beneath this root's handle of the moment: the directory the
    /// root's path names now (reopened when it changed; see
    /// `docroot::current`). A root no longer there is
    /// [`ResolveError::NotFound`].
    pub fn beneath(&self, wait: Wait) -> Result<Beneath<Held>, Fail> {
        Ok(Beneath::new(self.inner.current.get(wait)?, wait))
    }

    /// Opens the first of `names` (e.g. `index.html`) that is a regular file
    /// in `dir`. The joined path is resolved again from the root with the
    /// same rules, so a directory swapped for a symlink since [`resolve`]
    /// cannot lead outside. `Ok(None)` when none exists. With
    /// [`Wait::CachedOnly`], [`Fail::NotCached`] when a lookup would wait.
    ///
    /// [`resolve`]: DocRoot::resolve
    pub fn open_index(
        &self,
        dir: &Dir,
        names: &[String],
        wait: Wait,
    ) -> Result<Option<OpenFile>, Fail> {
        for name in names {
            let joined = if dir.rel.is_empty() {
                name.clone()
            } else {
                format!("{}/{name}", dir.rel)
            };
            let found = match &dir.under {
                Some(root) => self.open_relative(Beneath::new(&**root, wait), &joined),
                None => self.open_relative(self.beneath(wait)?, &joined),
            };
            match found {
                Ok(file) => return Ok(Some(file)),
                Err(Fail::Refused(ResolveError::NotFound)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Opens a regular file named by a path relative to the root (already
    /// decoded, e.g. an index file name), with the same rules as
    /// [`resolve`]. Blocking. A directory is [`ResolveError::NotFound`].
    ///
    /// [`resolve`]: DocRoot::resolve
    pub fn resolve_relative(&self, rel: &str) -> Result<OpenFile, ResolveError> {
        let beneath = self.beneath(Wait::Block).map_err(Fail::answered)?;
        self.open_relative(beneath, rel).map_err(Fail::answered)
    }

    /// [`DocRoot::resolve_relative`] beneath `beneath`'s root, waiting as
    /// it does.
    fn open_relative<F: std::os::fd::AsFd>(
        &self,
        beneath: Beneath<F>,
        rel: &str,
    ) -> Result<OpenFile, Fail> {
        let rel = check_relative(rel)?;
        let (file, meta) = beneath.open(rel.as_str())?;
        if !meta.is_file() {
            return Err(ResolveError::NotFound.into());
        }
        Ok(self.open_file(rel.as_str().to_owned(), file, meta)?)
    }

    /// A regular file becomes an [`OpenFile`] only if the reader may read it.
    fn open_file(&self, rel: String, file: File, meta: Metadata) -> Result<OpenFile, ResolveError> {
        self.inner.reader.check(&file, &meta)?;
        Ok(OpenFile {
            file,
            meta,
            rel,
            root: self.clone(),
        })
    }
}

#[cfg(test)]
mod tests;
