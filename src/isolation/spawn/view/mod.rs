//! The sandbox's read-only view of the file system (`sandbox.paths`,
//! CageFS-like): a site process's root is a new, read-only `tmpfs` holding
//! only what the site needs, bound in from the host at the same paths, and
//! the host's root is detached from it (`pivot_root`). This file owns what
//! the view holds and lays it out in the parent ([`ViewPlan::prepare`]);
//! `host` looks up what it takes from the host (symlinks, `/etc` names,
//! the generated `passwd`); `build` makes it in the child.
//!
//! What is visible (everything else does not exist for the site):
//!
//! - read-only: `/usr`; `/bin`, `/sbin`, `/lib*` as the host has them
//!   (symlinks into `/usr` on merged-usr systems, else directories); the
//!   `/etc` files a process needs ([`ETC`], [`ETC_PREFIXES`]); the program
//!   being started (`polyhost-python` or `php-fpm`, wherever it lives) and
//!   the directories of its ELF run path (a `polyhost-python3.X`'s
//!   `/opt/polyhost/python/3.X/lib`: libpython and the standard library);
//!   the site's `sandbox.paths`;
//! - as the host has them (the site user's permissions decide what it may
//!   write; `nosuid,nodev`): the site's root, its Python home and path, its
//!   state directory (`<state>/sites/<site>`: php-fpm's pid file and log,
//!   sessions, tmp);
//! - generated: `/etc/passwd` and `/etc/group` with root, the site's user
//!   and group and `nobody` only (no other site's user can be listed);
//! - `/dev`: `null`, `zero`, `full`, `random`, `urandom`, `tty` bound from
//!   the host, `fd`/`stdin`/`stdout`/`stderr` links into `/proc/self/fd`,
//!   a fresh `/dev/shm`; `/proc` with `hidepid`; the site's tmp on `/tmp`
//!   and `/var/tmp` (those [`super::sandbox::Sandbox::shared_tmp`] lists).
//!
//! A path is made visible at its real location: every symlink on the way
//! to it is recreated in the view and followed, so a bind's source and
//! target are the same path, and a path inside another visible one with
//! the same access needs no bind of its own. Symlinks are followed only
//! where the site cannot have planted them: owned by root, in a directory
//! of root's that no one else may write; a site path that is (or passes
//! through) any other symlink is refused, so a site that replaces its
//! root or venv by a link to another site's directory gets a failed start,
//! never that directory. The child opens every source and every target
//! component by component without following symlinks and binds the
//! descriptors (`/proc/self/fd/N`): what it binds is what was checked.
//!
//! A bind ignores `MS_RDONLY`: each one is remounted
//! (`MS_BIND|MS_REMOUNT|MS_RDONLY|...`), keeping the host mount's own
//! `ro`/`noexec`. Mounts below a visible path on the host are not in the
//! view (binds are not recursive): list them in `sandbox.paths`.

mod build;
mod host;

pub(super) use build::ViewStep;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use crate::isolation::SiteIdentity;
use host::{etc_names, resolve, users_files};

/// The view of one site, as the supervisor gives it (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// Where the child assembles the view's root: a directory of root's
    /// (`<state>/view`), created if missing; the `tmpfs` mounted on it
    /// exists only in the child's mount namespace.
    pub mount_point: PathBuf,
    /// The site's own paths, bound as the host has them.
    pub site: Vec<PathBuf>,
    /// The site's state directory: bound as the host has it, and must be
    /// the site user's directory.
    pub state: PathBuf,
    /// `sandbox.paths`: bound read-only.
    pub read_only: Vec<PathBuf>,
}

/// `/etc` entries every view holds, when the host has them: name
/// resolution, time zone, the dynamic linker's cache, TLS trust stores,
/// MIME types, and PHP's configuration (Debian's `/etc/php/8.2/...`:
/// php-fpm's `php.ini` and the extensions' `conf.d`; RHEL's `php.ini` and
/// `php.d`). Not `passwd`, `group`
/// (generated), `shadow`, nor anything holding secrets (`/etc/mysql`,
/// `/etc/phpmyadmin`, `/etc/letsencrypt`, `/etc/polyhost`).
pub const ETC: [&str; 27] = [
    "php",
    "php.ini",
    "php.d",
    "resolv.conf",
    "hosts",
    "host.conf",
    "nsswitch.conf",
    "gai.conf",
    "services",
    "protocols",
    "networks",
    "localtime",
    "timezone",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "ssl",
    "pki",
    "ca-certificates",
    "crypto-policies",
    "alternatives",
    "fonts",
    "mime.types",
    "os-release",
    "locale.alias",
    "magic",
    "magic.mime",
];

/// `/etc` entries starting with these names: `python3*` (Debian's
/// `sitecustomize`), `ImageMagick-*` (its policy).
pub const ETC_PREFIXES: [&str; 2] = ["python3", "ImageMagick-"];

/// Device nodes bound from the host's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Top-level entries of the host bound read-only (or recreated as the
/// symlinks they are).
const SYSTEM: [&str; 7] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// How a path is bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Access {
    /// As the host has it (`nosuid,nodev`): the site's own paths.
    Site,
    /// Read-only, `nosuid,nodev`.
    ReadOnly,
    /// A device node: `nosuid,noexec`, as writable as its permissions say.
    Device,
}

/// What the parent found a path to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Device,
}

/// One entry of the view, before it is laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    /// `source` bound at `target` (the same path but for the site's tmp).
    Bind {
        source: PathBuf,
        kind: Kind,
        access: Access,
        owner: Option<u32>,
    },
    /// A symlink recreated as the host has it.
    Link(PathBuf),
    /// A file written into the view (`/etc/passwd`, `/etc/group`).
    Generated(Vec<u8>),
}

/// A bind, prepared for the child: both paths as NUL-terminated
/// components (the child walks them without following a symlink).
pub(super) struct Bind {
    source: Vec<CString>,
    /// Relative to the view's root.
    target: Vec<CString>,
    kind: Kind,
    access: Access,
    owner: Option<libc::uid_t>,
}

/// Everything the child needs to build the view (no allocation after fork).
pub(super) struct ViewPlan {
    mount_point: CString,
    /// Directories to make in the view's `tmpfs`, parents first.
    dirs: Vec<CString>,
    /// Empty files (mount points of file binds) and generated files.
    files: Vec<(CString, Vec<u8>)>,
    /// Symlinks: `(path, target)`.
    links: Vec<(CString, CString)>,
    /// Binds in path order (a path's parents first).
    binds: Vec<Bind>,
    /// `<mount point>/dev/shm` and `<mount point>/proc`.
    shm: CString,
    proc: CString,
}

impl ViewPlan {
    /// What the view of a process running `program` as `identity` holds,
    /// with the site's tmp bound over `tmp_targets`. Fails (naming the
    /// path) on a path that does not exist or passes through a symlink the
    /// site may have planted.
    pub(super) fn prepare(
        view: &View,
        tmp: &Path,
        tmp_targets: &[PathBuf],
        program: &Path,
        identity: Option<&SiteIdentity>,
    ) -> io::Result<ViewPlan> {
        ensure_mount_point(&view.mount_point)?;
        let owner = identity.map(|i| i.uid);
        let mut entries = Entries::default();
        entries.system()?;
        entries.visible(program, Access::ReadOnly)?;
        // Its own libraries (a polyhost-python3.X's Python under /opt: its
        // libpython and standard library are in that `lib`).
        for dir in crate::isolation::elf::run_path(program)
            .iter()
            .filter(|d| exists(d))
        {
            entries.visible(dir, Access::ReadOnly)?;
        }
        for path in &view.site {
            entries.visible(path, Access::Site)?;
        }
        entries.owned(&view.state, owner)?;
        for path in &view.read_only {
            entries.visible(path, Access::ReadOnly)?;
        }
        entries.generated_users(identity);
        for target in tmp_targets {
            entries.tmp(tmp, target, owner)?;
        }
        entries.lay_out(&view.mount_point)
    }
}

/// The view's entries by target path (component-wise order: a path's
/// parents come first).
#[derive(Default)]
struct Entries(BTreeMap<(PathBuf, Access), Entry>);

impl Entries {
    /// `/usr`, the `/bin`, `/sbin`, `/lib*` entries, `/etc` and `/dev`.
    fn system(&mut self) -> io::Result<()> {
        for path in SYSTEM.iter().map(Path::new).filter(|p| exists(p)) {
            self.visible(path, Access::ReadOnly)?;
        }
        for name in etc_names() {
            self.visible(&Path::new("/etc").join(name), Access::ReadOnly)?;
        }
        for dev in DEVICES.iter().map(|d| Path::new("/dev").join(d)) {
            if exists(&dev) {
                self.visible(&dev, Access::Device)?;
            }
        }
        for (name, to) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            self.0.insert(
                (Path::new("/dev").join(name), Access::Site),
                Entry::Link(to.into()),
            );
        }
        Ok(())
    }

    /// Makes `path` visible with `access`: the symlinks on the way to it
    /// recreated, then the path it resolves to bound.
    fn visible(&mut self, path: &Path, access: Access) -> io::Result<PathBuf> {
        let real = resolve(path, &mut |link, text| {
            self.0
                .insert((link.to_path_buf(), Access::Site), Entry::Link(text.into()));
        })?;
        let meta = std::fs::symlink_metadata(&real).map_err(|e| at(&real, e))?;
        let kind = match meta.file_type() {
            t if t.is_dir() => Kind::Dir,
            t if t.is_file() => Kind::File,
            t if access == Access::Device && is_char_device(t) => Kind::Device,
            _ => {
                return Err(at(
                    &real,
                    io::Error::new(io::ErrorKind::InvalidInput, "not a file or directory"),
                ))
            }
        };
        self.0.insert(
            (real.clone(), access),
            Entry::Bind {
                source: real.clone(),
                kind,
                access,
                owner: None,
            },
        );
        Ok(real)
    }

    /// Like [`Entries::visible`] for a directory that must be `owner`'s.
    fn owned(&mut self, path: &Path, owner: Option<u32>) -> io::Result<()> {
        let real = self.visible(path, Access::Site)?;
        if let Some(Entry::Bind { owner: o, .. }) = self.0.get_mut(&(real, Access::Site)) {
            *o = owner;
        }
        Ok(())
    }

    /// `/etc/passwd` and `/etc/group` listing root, the site's user and
    /// group, and `nobody`.
    fn generated_users(&mut self, identity: Option<&SiteIdentity>) {
        let (passwd, group) = users_files(identity);
        for (name, text) in [("/etc/passwd", passwd), ("/etc/group", group)] {
            self.0.insert(
                (PathBuf::from(name), Access::ReadOnly),
                Entry::Generated(text.into_bytes()),
            );
        }
    }

    /// The site's tmp bound at `target` (`/tmp`, `/var/tmp`).
    fn tmp(&mut self, tmp: &Path, target: &Path, owner: Option<u32>) -> io::Result<()> {
        let source = std::fs::canonicalize(tmp).map_err(|e| at(tmp, e))?;
        self.0.insert(
            (target.to_path_buf(), Access::Site),
            Entry::Bind {
                source,
                kind: Kind::Dir,
                access: Access::Site,
                owner,
            },
        );
        Ok(())
    }

    /// Drops what another visible path already shows, and turns the rest
    /// into the child's plan.
    fn lay_out(self, mount_point: &Path) -> io::Result<ViewPlan> {
        let mut layout = Layout {
            mount_point: mount_point.to_path_buf(),
            dirs: ["/dev", "/dev/shm", "/proc"].map(PathBuf::from).into(),
            bound: Vec::new(),
            plan: ViewPlan {
                mount_point: cstr(mount_point)?,
                dirs: Vec::new(),
                files: Vec::new(),
                links: Vec::new(),
                binds: Vec::new(),
                shm: cstr(&mount_point.join("dev/shm"))?,
                proc: cstr(&mount_point.join("proc"))?,
            },
        };
        for ((target, access), entry) in self.0 {
            layout.add(target, access, entry)?;
        }
        layout.finish()
    }
}

/// The plan being laid out, and what it binds so far (target, access, and
/// whether the source is the target: not the site's tmp).
struct Layout {
    mount_point: PathBuf,
    dirs: BTreeSet<PathBuf>,
    bound: Vec<(PathBuf, Access, bool)>,
    plan: ViewPlan,
}

impl Layout {
    /// `target` in the view's `tmpfs`.
    fn under(&self, target: &Path) -> io::Result<CString> {
        cstr(
            &self
                .mount_point
                .join(target.strip_prefix("/").unwrap_or(target)),
        )
    }

    /// Adds one entry (in path order), unless a path bound before already
    /// shows it.
    fn add(&mut self, target: PathBuf, access: Access, entry: Entry) -> io::Result<()> {
        let enclosing = self
            .bound
            .iter()
            .rev()
            .find(|(b, _, _)| target.starts_with(b));
        match (&entry, enclosing) {
            (_, Some((outer, _, false))) => return Err(inside_tmp(&target, outer)),
            (Entry::Bind { source, .. }, Some((outer, _, _))) if *source != target => {
                return Err(inside_tmp(outer, &target))
            }
            (Entry::Bind { .. }, Some((_, a, true))) if *a == access => return Ok(()),
            (Entry::Link(_) | Entry::Generated(_), Some(_)) => return Ok(()),
            _ => {}
        }
        let nested = enclosing.is_some();
        if !nested {
            self.dirs
                .extend(target.ancestors().skip(1).map(Path::to_path_buf));
        }
        match entry {
            Entry::Bind {
                source,
                kind,
                access,
                owner,
            } => {
                if !nested && kind == Kind::Dir {
                    self.dirs.insert(target.clone());
                } else if !nested {
                    self.plan.files.push((self.under(&target)?, Vec::new()));
                }
                self.bound.push((target.clone(), access, source == target));
                self.plan.binds.push(Bind {
                    source: components(&source)?,
                    target: components(&target)?,
                    kind,
                    access,
                    owner,
                });
            }
            Entry::Link(text) => {
                let link = (self.under(&target)?, cstr(&text)?);
                self.plan.links.push(link);
            }
            Entry::Generated(bytes) => {
                let file = (self.under(&target)?, bytes);
                self.plan.files.push(file);
            }
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<ViewPlan> {
        self.dirs.remove(Path::new("/"));
        let dirs = std::mem::take(&mut self.dirs);
        self.plan.dirs = dirs
            .iter()
            .map(|d| self.under(d))
            .collect::<io::Result<_>>()?;
        Ok(self.plan)
    }
}

/// `path` would be inside `tmp`, which is the site's tmp in the view.
fn inside_tmp(path: &Path, tmp: &Path) -> io::Error {
    at(
        path,
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "inside {}, which the view shows as the site's tmp: move it",
                tmp.display()
            ),
        ),
    )
}

/// The view's mount point: a directory of root's, made if missing.
fn ensure_mount_point(path: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(at(path, e)),
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| at(path, e))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(at(
            path,
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "not a directory of polyhost's",
            ),
        ));
    }
    Ok(())
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

fn is_char_device(t: std::fs::FileType) -> bool {
    use std::os::unix::fs::FileTypeExt;
    t.is_char_device()
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        at(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"),
        )
    })
}

/// The normal components of an absolute path, each NUL-terminated.
fn components(path: &Path) -> io::Result<Vec<CString>> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(CString::new(n.as_bytes())),
            _ => None,
        })
        .collect::<Result<_, _>>()
        .map_err(|_| {
            at(
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"),
            )
        })
}

#[cfg(test)]
mod tests;
