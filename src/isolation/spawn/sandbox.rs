//! The per-site sandbox a site process starts in (issue 21, first layer):
//! a mount namespace and an IPC namespace of its own, and with
//! `network = "none"` a network namespace with only a loopback interface.
//! In the mount namespace (mounts private, nothing propagates to the host):
//!
//! - `/tmp` and `/var/tmp`: the site's own temporary directory
//!   (`<state>/sites/<site>/tmp`) bound over them, `nosuid,nodev`: a file
//!   one site writes to `/tmp` is in no other site's `/tmp` nor the host's,
//!   and the site's processes (and their restarts) share it;
//! - `/dev/shm`: a fresh `tmpfs` (`nosuid,nodev`; its pages are charged to
//!   the site's memory cgroup);
//! - `/proc`: a new `proc` mounted with `hidepid=invisible` (`hidepid=2`
//!   before Linux 5.8): a process sees only the processes of its own user
//!   (one user per code-running site): not other sites', not polyhost's.
//!
//! Invariants: the mounts are made as root in the child, after it joined its
//! cgroup and before it drops privileges (so the site cannot undo them: it
//! has no `CAP_SYS_ADMIN`, and `no_new_privs` keeps it so); the temporary
//! directory is bound through a descriptor the child opens in its new
//! namespace (a bind source must be a mount of the caller's namespace)
//! without following a symlink, and checks to be a directory of the site's
//! user: a site that replaced its `tmp` with a symlink or anything else gets
//! a failed start, never someone else's directory. (Only the last component
//! can be the site's: `<state>/sites` is root's.)
//!
//! With [`Sandbox::view`], the process's root is a read-only view of the
//! file system instead (`super::view`): the same `/tmp`, `/var/tmp`,
//! `/dev/shm` and `/proc`, in a new root that holds only what the site
//! needs.
//!
//! [`unavailable`] probes once whether this kernel and privilege allow it.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

pub use super::view::View;
use super::view::{ViewPlan, ViewStep};
use crate::isolation::SiteIdentity;

/// What [`super::spawn`] needs to put a process in the sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    /// The site's temporary directory, bound over [`Sandbox::shared_tmp`].
    pub tmp: PathBuf,
    /// The host's shared temporary directories the site's `tmp` replaces
    /// (`/tmp`, `/var/tmp`: see [`SHARED_TMP`]), those that hold nothing
    /// the site needs.
    pub shared_tmp: Vec<PathBuf>,
    /// `network = "none"`: a network namespace with only `lo`.
    pub network_none: bool,
    /// `sandbox.paths`: the read-only view of the file system; `None`: the
    /// host's file system with the mounts above.
    pub view: Option<View>,
}

/// The host's world-writable temporary directories.
pub const SHARED_TMP: [&str; 2] = ["/tmp", "/var/tmp"];

/// Prepared in the parent: everything the child's sandbox steps use.
pub(super) struct SandboxPlan {
    pub(super) flags: libc::c_int,
    /// The site's temporary directory, opened in the child.
    pub(super) tmp: CString,
    /// Its owner must be this uid (the site user's), when one is given.
    pub(super) uid: Option<libc::uid_t>,
    /// Where the temporary directory is bound (those of
    /// [`Sandbox::shared_tmp`] that exist).
    pub(super) tmp_targets: Vec<CString>,
    /// `/dev/shm`, when it exists.
    pub(super) shm: Option<CString>,
    pub(super) loopback: bool,
    /// The view, built instead of the mounts above when given.
    pub(super) view: Option<ViewPlan>,
}

impl SandboxPlan {
    /// Checks the temporary directory now (no symlink followed; a directory
    /// owned by the site's user when one is given: the child checks again,
    /// the error here is the clearer one), lists the targets and, with a
    /// view, what it holds for a process running `program`.
    pub(super) fn prepare(
        sandbox: &Sandbox,
        identity: Option<&SiteIdentity>,
        program: &Path,
    ) -> std::io::Result<SandboxPlan> {
        let uid = identity.map(|i| i.uid);
        let fd: OwnedFd = open(
            &sandbox.tmp,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            std::io::Error::new(
                std::io::Error::from(e).kind(),
                format!("{}: {e}", sandbox.tmp.display()),
            )
        })?;
        let meta = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        if uid.is_some_and(|uid| meta.uid() != uid) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} is owned by uid {}, not the site's user",
                    sandbox.tmp.display(),
                    meta.uid()
                ),
            ));
        }
        let c = |p: &str| CString::new(p).expect("no NUL in a literal path");
        let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC;
        if sandbox.network_none {
            flags |= libc::CLONE_NEWNET;
        }
        let tmp = CString::new(sandbox.tmp.as_os_str().as_encoded_bytes()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in the tmp path")
        })?;
        let shared_tmp: Vec<PathBuf> = sandbox
            .shared_tmp
            .iter()
            .filter(|p| p.is_dir())
            .cloned()
            .collect();
        let view = sandbox
            .view
            .as_ref()
            .map(|v| ViewPlan::prepare(v, &sandbox.tmp, &shared_tmp, program, identity))
            .transpose()?;
        Ok(SandboxPlan {
            flags,
            tmp,
            uid,
            tmp_targets: shared_tmp
                .iter()
                .filter_map(|p| CString::new(p.as_os_str().as_encoded_bytes()).ok())
                .collect(),
            shm: Path::new("/dev/shm").is_dir().then(|| c("/dev/shm")),
            loopback: sandbox.network_none,
            view,
        })
    }
}

/// Why site processes cannot be sandboxed here (not root; a kernel or a
/// container that refuses namespaces or mounts), or `None` when they can.
/// Probed once, by starting `/bin/true` through the same steps.
pub fn unavailable() -> Option<&'static str> {
    static WHY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    WHY.get_or_init(probe).as_deref()
}

/// Why the read-only view (`sandbox.paths`) cannot be built here (the
/// sandbox is unavailable, or `pivot_root` is refused: a root file system
/// that is not a mount), or `None` when it can. Probed once, when a site
/// first asks for it.
pub fn view_unavailable() -> Option<&'static str> {
    static WHY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    WHY.get_or_init(|| unavailable().map(str::to_owned).or_else(probe_view))
        .as_deref()
}

fn probe() -> Option<String> {
    if !super::super::running_as_root() {
        return Some("polyhost is not root (mount namespaces need CAP_SYS_ADMIN)".into());
    }
    let probe_dir = std::env::temp_dir();
    run_probe(&Sandbox {
        shared_tmp: vec![probe_dir.clone()],
        tmp: probe_dir,
        network_none: true,
        view: None,
    })
}

/// A view showing the temporary directory, assembled on a directory made
/// for the probe and removed after.
fn probe_view() -> Option<String> {
    let dir = std::env::temp_dir();
    let mount_point = dir.join(format!("polyhost-view-probe-{}", std::process::id()));
    let why = run_probe(&Sandbox {
        shared_tmp: Vec::new(),
        tmp: dir.clone(),
        network_none: false,
        view: Some(View {
            mount_point: mount_point.clone(),
            site: Vec::new(),
            state: dir,
            read_only: Vec::new(),
        }),
    });
    let _ = std::fs::remove_dir(&mount_point);
    why
}

/// Starts `true` in `sandbox`: `None` when it ran, else why not.
fn run_probe(sandbox: &Sandbox) -> Option<String> {
    let Some(true_bin) = ["/bin/true", "/usr/bin/true"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        return Some("no /bin/true to probe with".into());
    };
    let plan = match SandboxPlan::prepare(sandbox, None, Path::new(true_bin)) {
        Ok(p) => p,
        Err(e) => return Some(format!("cannot prepare a probe: {e}")),
    };
    let mut cmd = std::process::Command::new(true_bin);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: `enter` makes only async-signal-safe system calls on data
    // prepared above and owned by the closure; no allocation, no locks.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || plan.enter().map_err(|(_, e)| e));
    }
    match cmd.status() {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("a probe process ended with {s}")),
        Err(e) => Some(format!("namespaces or mounts are refused here: {e}")),
    }
}

/// The step of [`SandboxPlan::enter`] that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SandboxStep {
    Unshare,
    MountPrivate,
    MountTmp,
    MountShm,
    MountProc,
    Loopback,
    View(ViewStep),
}

impl SandboxPlan {
    /// Runs in the forked child, as root: unshare, make every mount
    /// private, bind the temporary directory, mount `/dev/shm` and `/proc`
    /// (or build the view, which holds them, and pivot into it), bring `lo`
    /// up. Async-signal-safe system calls only, no allocation.
    pub(super) fn enter(&self) -> Result<(), (SandboxStep, std::io::Error)> {
        let last = |step| (step, std::io::Error::last_os_error());
        // SAFETY: system calls on NUL-terminated strings prepared before the
        // fork (or literals) and plain integers; none allocates.
        unsafe {
            if libc::unshare(self.flags) != 0 {
                return Err(last(SandboxStep::Unshare));
            }
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(last(SandboxStep::MountPrivate));
            }
            if let Some(view) = &self.view {
                view.build()
                    .map_err(|(step, e)| (SandboxStep::View(step), e))?;
            } else {
                self.host_mounts()?;
            }
            if self.loopback {
                loopback_up().map_err(|e| (SandboxStep::Loopback, e))?;
            }
        }
        Ok(())
    }

    /// Without a view: the site's tmp over the host's, a fresh `/dev/shm`,
    /// a new `/proc`.
    ///
    /// # Safety
    /// Async-signal-safe system calls only.
    unsafe fn host_mounts(&self) -> Result<(), (SandboxStep, std::io::Error)> {
        let last = |step| (step, std::io::Error::last_os_error());
        let flags = libc::MS_NOSUID | libc::MS_NODEV;
        // SAFETY: as in `enter`.
        unsafe {
            self.bind_tmp().map_err(|e| (SandboxStep::MountTmp, e))?;
            if let Some(shm) = &self.shm {
                if libc::mount(
                    c"tmpfs".as_ptr(),
                    shm.as_ptr(),
                    c"tmpfs".as_ptr(),
                    flags,
                    c"mode=1777".as_ptr().cast(),
                ) != 0
                {
                    return Err(last(SandboxStep::MountShm));
                }
            }
            let proc_flags = flags | libc::MS_NOEXEC;
            let mount_proc = |options: &std::ffi::CStr| {
                libc::mount(
                    c"proc".as_ptr(),
                    c"/proc".as_ptr(),
                    c"proc".as_ptr(),
                    proc_flags,
                    options.as_ptr().cast(),
                ) == 0
            };
            // `invisible` since Linux 5.8; `2` hides the same on older ones.
            if !mount_proc(c"hidepid=invisible") && !mount_proc(c"hidepid=2") {
                return Err(last(SandboxStep::MountProc));
            }
        }
        Ok(())
    }
}

impl SandboxPlan {
    /// Opens the site's tmp (in the new namespace, no symlink followed),
    /// checks it is the site user's directory and binds it over the
    /// targets, `nosuid,nodev`.
    ///
    /// # Safety
    /// Async-signal-safe system calls only; the descriptor's path is built
    /// in a stack buffer.
    unsafe fn bind_tmp(&self) -> std::io::Result<()> {
        let fd = libc::open(
            self.tmp.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let result = self.bind_fd(fd);
        libc::close(fd);
        result
    }

    unsafe fn bind_fd(&self, fd: libc::c_int) -> std::io::Result<()> {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR || self.uid.is_some_and(|u| st.st_uid != u) {
            return Err(std::io::Error::from_raw_os_error(libc::EPERM));
        }
        let source = fd_path(fd);
        for target in &self.tmp_targets {
            let bound = libc::mount(
                source.as_ptr().cast(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) == 0
                && libc::mount(
                    std::ptr::null(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV,
                    std::ptr::null(),
                ) == 0;
            if !bound {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// `/proc/self/fd/<fd>` NUL-terminated, in a stack buffer (no allocation
/// after fork).
pub(super) fn fd_path(fd: libc::c_int) -> [u8; 32] {
    let mut buf = [0u8; 32];
    let prefix = b"/proc/self/fd/";
    buf[..prefix.len()].copy_from_slice(prefix);
    super::env::write_decimal(u64::from(fd.unsigned_abs()), &mut buf[prefix.len()..]);
    buf
}

/// `ip link set lo up` in the new network namespace: the site may still
/// talk to itself over 127.0.0.1, and to nothing else.
///
/// # Safety
/// Async-signal-safe system calls only (socket, ioctl, close).
unsafe fn loopback_up() -> std::io::Result<()> {
    let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
    if s < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut req: libc::ifreq = std::mem::zeroed();
    for (i, b) in b"lo\0".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    let mut result = libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req);
    if result == 0 {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        result = libc::ioctl(s, libc::SIOCSIFFLAGS, &req);
    }
    let err = std::io::Error::last_os_error();
    libc::close(s);
    if result == 0 {
        Ok(())
    } else {
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::fd_path;

    #[test]
    fn fd_paths_are_nul_terminated_decimal() {
        for (fd, want) in [
            (0, "/proc/self/fd/0"),
            (7, "/proc/self/fd/7"),
            (1234567, "/proc/self/fd/1234567"),
        ] {
            let buf = fd_path(fd);
            let end = buf.iter().position(|b| *b == 0).unwrap();
            assert_eq!(std::str::from_utf8(&buf[..end]).unwrap(), want);
        }
    }
}
