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
//!   is opened through [`DocRoot`]; nothing else joins request paths onto a
//!   root and opens them.
//! - There is no check-then-open: the file is opened once, then `fstat`ed
//!   through the descriptor, so swapping a directory for a symlink between a
//!   check and the open has nothing to race.
//! - A request path is percent-decoded exactly once ([`decode`]); `.`/`..`
//!   segments, encoded slashes, backslashes and NUL bytes are refused, and
//!   dotfiles (except under `/.well-known/`) are reported as not found.
//! - Only regular files and directories are ever returned; FIFOs, devices and
//!   sockets are refused (a FIFO is opened `O_NONBLOCK`, so it cannot stall a
//!   thread).
//! - A file is returned only if the root's [`Reader`] (the site's user) may
//!   read it, decided on the open descriptor ([`access`]); polyhost itself
//!   opens everything as root.
//!
//! Every method here makes blocking system calls; async callers run them in
//! `tokio::task::spawn_blocking`.

mod access;
mod path;

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};

pub use access::Reader;
pub use path::{check_relative, decode, RelPath};

/// Why a path could not be resolved to a servable file.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The path is malformed in a way that is never legitimate (not
    /// starting with `/`, invalid UTF-8 after decoding).
    #[error("bad request path: {0}")]
    BadRequest(&'static str),
    /// The path tries to leave the root, or names something that is never
    /// served (a `..` segment, an encoded slash, a symlink pointing outside
    /// the root, a device, a directory without index).
    #[error("{0}")]
    Forbidden(&'static str),
    /// Nothing there, or something that must not be revealed (dotfiles).
    #[error("not found")]
    NotFound,
    /// The file system failed in an unexpected way.
    #[error("cannot open file under the document root: {0}")]
    Io(#[source] io::Error),
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

/// An open site document root. Cheap to clone (the descriptor is shared).
#[derive(Clone, Debug)]
pub struct DocRoot {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    fd: OwnedFd,
    path: PathBuf,
    reader: Reader,
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
}

impl Dir {
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
    path: PathBuf,
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
    pub fn path(&self) -> &Path {
        &self.path
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
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag, AT_FDCWD};
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(AT_FDCWD, root, how).map_err(|e| {
        let why = match e {
            nix::errno::Errno::ELOOP => "its path contains a symlink (refused: a site owner could point it anywhere; configure the real path)".to_owned(),
            e => io::Error::from(e).to_string(),
        };
        io::Error::other(format!("cannot open document root {}: {why}", root.display()))
    })
}

impl DocRoot {
    /// Opens `root` (see [`open_root_dir`]); everything beneath it is
    /// resolved with `RESOLVE_BENEATH`, and only files `reader` may read are
    /// returned.
    pub fn open(root: &Path, reader: Reader) -> io::Result<DocRoot> {
        Ok(DocRoot {
            inner: Arc::new(Inner {
                fd: open_root_dir(root)?,
                path: root.to_path_buf(),
                reader,
            }),
        })
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
        let rel = decode(url_path)?;
        let (file, meta) = self.open_beneath(rel.as_str())?;
        if meta.is_dir() {
            return Ok(Resolved::Dir(Dir {
                rel: rel.as_str().to_owned(),
                trailing_slash: rel.trailing_slash(),
            }));
        }
        if rel.trailing_slash() {
            // `file.txt/`: the kernel refuses it too (ENOTDIR) when the path
            // is passed with the slash; we pass it without, so check here.
            return Err(ResolveError::NotFound);
        }
        Ok(Resolved::File(self.open_file(rel.as_str(), file, meta)?))
    }

    /// Opens the first of `names` (e.g. `index.html`) that is a regular file
    /// in `dir`. The joined path is resolved again from the root with the
    /// same rules, so a directory swapped for a symlink since [`resolve`]
    /// cannot lead outside. `Ok(None)` when none exists.
    ///
    /// [`resolve`]: DocRoot::resolve
    pub fn open_index(
        &self,
        dir: &Dir,
        names: &[String],
    ) -> Result<Option<OpenFile>, ResolveError> {
        for name in names {
            let joined = if dir.rel.is_empty() {
                name.clone()
            } else {
                format!("{}/{name}", dir.rel)
            };
            match self.resolve_relative(&joined) {
                Ok(file) => return Ok(Some(file)),
                Err(ResolveError::NotFound) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Opens a regular file named by a path relative to the root (already
    /// decoded, e.g. a PHP front controller `index.php` or the script part
    /// of a request path), with the same rules as [`resolve`]. Blocking.
    /// A directory is [`ResolveError::NotFound`].
    ///
    /// [`resolve`]: DocRoot::resolve
    pub fn resolve_relative(&self, rel: &str) -> Result<OpenFile, ResolveError> {
        let rel = check_relative(rel)?;
        let (file, meta) = self.open_beneath(rel.as_str())?;
        if !meta.is_file() {
            return Err(ResolveError::NotFound);
        }
        self.open_file(rel.as_str(), file, meta)
    }

    /// A regular file becomes an [`OpenFile`] only if the reader may read it.
    fn open_file(&self, rel: &str, file: File, meta: Metadata) -> Result<OpenFile, ResolveError> {
        self.inner.reader.check(&file, &meta)?;
        Ok(OpenFile {
            file,
            meta,
            rel: rel.to_owned(),
            path: self.inner.path.join(rel),
        })
    }

    /// The one `openat2` call. Returns a regular file or a directory.
    fn open_beneath(&self, rel: &str) -> Result<(File, Metadata), ResolveError> {
        let rel = if rel.is_empty() { "." } else { rel };
        // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
        // writer. It has no effect on regular files or directories, which
        // are all we keep. No O_NOFOLLOW: symlinks inside the root are fine;
        // RESOLVE_BENEATH is what keeps them inside.
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        // EAGAIN: the kernel could not rule out a `..` race (a concurrent
        // rename); it asks the caller to retry. Bounded, so an attacker
        // renaming in a loop cannot pin a thread.
        let mut tries = 0;
        let fd = loop {
            match openat2(&self.inner.fd, rel, how) {
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) if tries < 8 => tries += 1,
                Err(Errno::EAGAIN) => {
                    return Err(ResolveError::Forbidden(
                        "path keeps changing during resolution",
                    ))
                }
                other => break other.map_err(ResolveError::from_errno)?,
            }
        };
        let file = File::from(fd);
        let meta = file.metadata().map_err(ResolveError::Io)?;
        if !(meta.is_file() || meta.is_dir()) {
            return Err(ResolveError::Forbidden("not a regular file"));
        }
        Ok((file, meta))
    }
}

#[cfg(test)]
mod tests;
