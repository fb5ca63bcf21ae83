//! The child's side of the view: mount a `tmpfs` on the mount point, make
//! its directories, files and links, bind every path through descriptors
//! opened without following a symlink, mount `/dev/shm` and `/proc`, make
//! the root read-only and pivot into it.
//!
//! Invariant: async-signal-safe system calls only, no allocation, no lock
//! (it runs between `fork` and `exec`).

use std::ffi::CStr;
use std::io;

use super::{Access, Bind, Kind, ViewPlan};
use crate::isolation::spawn::sandbox::fd_path;

/// The step of [`ViewPlan::build`] that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::isolation::spawn) enum ViewStep {
    Root,
    Files,
    Bind,
    Special,
    Pivot,
}

type Failed = (ViewStep, io::Error);

fn last(step: ViewStep) -> Failed {
    (step, io::Error::last_os_error())
}

/// Closes a descriptor when dropped (no allocation).
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: closing a descriptor this value owns.
        unsafe { libc::close(self.0) };
    }
}

impl Fd {
    fn open_at(dir: libc::c_int, name: &CStr, flags: libc::c_int) -> io::Result<Fd> {
        // SAFETY: openat on a NUL-terminated name prepared before the fork.
        let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(Fd(fd))
        }
    }
}

impl ViewPlan {
    /// Builds the view and pivots into it (the process's root is the view
    /// from then on; the host's root is detached from its namespace).
    pub(in crate::isolation::spawn) fn build(&self) -> Result<(), Failed> {
        let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
        mount(
            c"tmpfs",
            &self.mount_point,
            Some(c"tmpfs"),
            nosuid_nodev,
            Some(c"mode=0755,size=1m"),
        )
        .map_err(|e| (ViewStep::Root, e))?;
        self.make_files().map_err(|e| (ViewStep::Files, e))?;
        let root = Fd::open_at(
            libc::AT_FDCWD,
            &self.mount_point,
            libc::O_PATH | libc::O_DIRECTORY,
        )
        .map_err(|e| (ViewStep::Bind, e))?;
        for bind in &self.binds {
            bind.apply(root.0).map_err(|e| (ViewStep::Bind, e))?;
        }
        self.special().map_err(|e| (ViewStep::Special, e))?;
        drop(root);
        self.pivot()
    }

    /// The view's directories, files (empty mount points, `passwd`,
    /// `group`) and symlinks, in the fresh `tmpfs` (nothing else there).
    fn make_files(&self) -> io::Result<()> {
        // SAFETY: mkdir, open, write, close and symlink on NUL-terminated
        // paths and byte buffers prepared before the fork.
        unsafe {
            for dir in &self.dirs {
                if libc::mkdir(dir.as_ptr(), 0o755) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (path, bytes) in &self.files {
                let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW;
                let fd = Fd(libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, 0o644));
                if fd.0 < 0 {
                    return Err(io::Error::last_os_error());
                }
                let written = libc::write(fd.0, bytes.as_ptr().cast(), bytes.len());
                if written < 0 || written as usize != bytes.len() {
                    return Err(io::Error::last_os_error());
                }
            }
            for (path, text) in &self.links {
                if libc::symlink(text.as_ptr(), path.as_ptr()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }

    /// A fresh `tmpfs` on `/dev/shm`, a `proc` with `hidepid` on `/proc`.
    fn special(&self) -> io::Result<()> {
        let flags = libc::MS_NOSUID | libc::MS_NODEV;
        mount(
            c"tmpfs",
            &self.shm,
            Some(c"tmpfs"),
            flags,
            Some(c"mode=1777"),
        )?;
        let proc = |options: &CStr| {
            mount(
                c"proc",
                &self.proc,
                Some(c"proc"),
                flags | libc::MS_NOEXEC,
                Some(options),
            )
        };
        proc(c"hidepid=invisible").or_else(|_| proc(c"hidepid=2"))
    }

    /// The view's root made read-only, then `pivot_root(".", ".")` and the
    /// old root detached (the old root is stacked on the new one and
    /// unmounted: no directory for it is needed).
    fn pivot(&self) -> Result<(), Failed> {
        remount(
            &self.mount_point,
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        )
        .map_err(|e| (ViewStep::Root, e))?;
        // SAFETY: chdir, pivot_root, umount2 on NUL-terminated literals or
        // paths prepared before the fork.
        unsafe {
            if libc::chdir(self.mount_point.as_ptr()) != 0 {
                return Err(last(ViewStep::Pivot));
            }
            let dot = c".".as_ptr();
            if libc::syscall(libc::SYS_pivot_root, dot, dot) != 0 {
                return Err(last(ViewStep::Pivot));
            }
            if libc::umount2(dot, libc::MNT_DETACH) != 0 {
                return Err(last(ViewStep::Pivot));
            }
            if libc::chdir(c"/".as_ptr()) != 0 {
                return Err(last(ViewStep::Pivot));
            }
        }
        Ok(())
    }
}

impl Bind {
    /// Opens the source and the target without following a symlink,
    /// checks the source, binds it and remounts the bind with its flags.
    fn apply(&self, root: libc::c_int) -> io::Result<()> {
        let slash = Fd::open_at(libc::AT_FDCWD, c"/", libc::O_PATH | libc::O_DIRECTORY)?;
        let source = walk(slash.0, &self.source)?;
        let flags = self.check(source.0)?;
        let target_dir = walk_dirs(root, &self.target)?;
        let name = self.target.last().map_or(c".", |n| n.as_c_str());
        let target = Fd::open_at(target_dir.0, name, libc::O_PATH | libc::O_NOFOLLOW)?;
        // A directory for a directory; a file (an empty mount point) or
        // what the source is for anything else; never a symlink.
        if same_kind(target.0, self.kind).is_err() {
            same_kind(target.0, Kind::File)?;
        }
        let (source_path, target_path) = (fd_path(source.0), fd_path(target.0));
        mount(
            as_cstr(&source_path)?,
            as_cstr(&target_path)?,
            None,
            libc::MS_BIND,
            None,
        )?;
        // Looked up again: the name now leads into the new mount.
        let mounted = Fd::open_at(target_dir.0, name, libc::O_PATH | libc::O_NOFOLLOW)?;
        remount(as_cstr(&fd_path(mounted.0))?, flags)
    }

    /// The source is of the kind the parent saw and, for the site's tmp and
    /// state directory, the site user's; returns the remount flags: this
    /// bind's, plus the host mount's own `ro` and `noexec`.
    fn check(&self, fd: libc::c_int) -> io::Result<libc::c_ulong> {
        let st = same_kind(fd, self.kind)?;
        if self.owner.is_some_and(|uid| st.st_uid != uid) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        // SAFETY: fstatvfs into a zeroed struct on a descriptor we hold:
        // fstatfs and a conversion (the kernel reports the flags as valid
        // since 2.6.36, so the C library reads no file).
        let mut fs: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatvfs(fd, &mut fs) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(host_flags(fs.f_flag as libc::c_ulong)
            | match self.access {
                Access::Site => libc::MS_NOSUID | libc::MS_NODEV,
                Access::ReadOnly => libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                Access::Device => libc::MS_NOSUID | libc::MS_NOEXEC,
            })
    }
}

/// The host mount's flags a bind keeps (`statfs`'s `ST_*` as `MS_*`):
/// `ro`, `nosuid`, `nodev`, `noexec` and the atime ones (a locked flag
/// cannot be changed, and a host's `ro` or `noexec` must not be lifted).
fn host_flags(st: libc::c_ulong) -> libc::c_ulong {
    let same = libc::MS_RDONLY
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC
        | libc::MS_NOATIME
        | libc::MS_NODIRATIME;
    let relatime = if st & libc::ST_RELATIME != 0 {
        libc::MS_RELATIME
    } else {
        0
    };
    (st & same) | relatime
}

/// The NUL-terminated string in `buf` (a `/proc/self/fd/N` path).
fn as_cstr(buf: &[u8]) -> io::Result<&CStr> {
    CStr::from_bytes_until_nul(buf).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `fd` is of `kind`; its `stat`.
fn same_kind(fd: libc::c_int, kind: Kind) -> io::Result<libc::stat> {
    // SAFETY: fstat into a zeroed struct on a descriptor we hold.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let want = match kind {
        Kind::Dir => libc::S_IFDIR,
        Kind::File => libc::S_IFREG,
        Kind::Device => libc::S_IFCHR,
    };
    if st.st_mode & libc::S_IFMT != want {
        return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
    }
    Ok(st)
}

/// Opens `path` (components) beneath `dir`, following no symlink.
fn walk(dir: libc::c_int, path: &[std::ffi::CString]) -> io::Result<Fd> {
    let parent = walk_dirs(dir, path)?;
    match path.last() {
        Some(name) => Fd::open_at(parent.0, name, libc::O_PATH | libc::O_NOFOLLOW),
        None => Ok(parent),
    }
}

/// Opens the directory holding the last component of `path` beneath `dir`,
/// following no symlink.
fn walk_dirs(dir: libc::c_int, path: &[std::ffi::CString]) -> io::Result<Fd> {
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    let mut current = Fd::open_at(dir, c".", flags)?;
    for name in path.iter().take(path.len().saturating_sub(1)) {
        current = Fd::open_at(current.0, name, flags)?;
    }
    Ok(current)
}

fn mount(
    source: &CStr,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    // SAFETY: mount(2) on NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.map_or(std::ptr::null(), CStr::as_ptr),
            flags,
            data.map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the flags of the mount at `target` (a bind ignores `MS_RDONLY` and
/// the other per-mount flags until remounted).
fn remount(target: &CStr, flags: libc::c_ulong) -> io::Result<()> {
    // SAFETY: mount(2) with a null source and type: a remount of `target`.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REMOUNT | flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
