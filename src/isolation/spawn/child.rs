//! What runs in the forked child, between `fork` and `exec`: the
//! [`ChildPlan`] the parent prepares (so the child never allocates), its
//! steps in the fixed, fail-closed order the parent module documents, and
//! the one-byte [`Step`] report of the step that failed. Also the
//! descriptor bound of the close-on-exec fallback, computed in the parent.
//!
//! Invariant: [`ChildPlan::run`] makes async-signal-safe system calls only,
//! takes no lock and allocates nothing.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

use super::sandbox::{SandboxPlan, SandboxStep};
use super::view::ViewStep;

/// The child's steps, in order; the failing one is reported to the parent
/// as one byte over a close-on-exec pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Step {
    JoinCgroup = 1,
    Setsid,
    Setgroups,
    Setgid,
    Setuid,
    VerifyDrop,
    Pdeathsig,
    ParentGone,
    NoNewPrivs,
    RlimitNofile,
    RlimitNproc,
    RlimitCore,
    CloseFds,
    InheritFds,
    Chdir,
    Unshare,
    MountPrivate,
    MountTmp,
    MountShm,
    MountProc,
    Loopback,
    ViewRoot,
    ViewFiles,
    ViewBind,
    ViewSpecial,
    ViewPivot,
}

impl Step {
    const ALL: [Step; 26] = [
        Step::JoinCgroup,
        Step::Setsid,
        Step::Setgroups,
        Step::Setgid,
        Step::Setuid,
        Step::VerifyDrop,
        Step::Pdeathsig,
        Step::ParentGone,
        Step::NoNewPrivs,
        Step::RlimitNofile,
        Step::RlimitNproc,
        Step::RlimitCore,
        Step::CloseFds,
        Step::InheritFds,
        Step::Chdir,
        Step::Unshare,
        Step::MountPrivate,
        Step::MountTmp,
        Step::MountShm,
        Step::MountProc,
        Step::Loopback,
        Step::ViewRoot,
        Step::ViewFiles,
        Step::ViewBind,
        Step::ViewSpecial,
        Step::ViewPivot,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Step::JoinCgroup => "join cgroup",
            Step::Setsid => "setsid",
            Step::Setgroups => "setgroups",
            Step::Setgid => "setgid",
            Step::Setuid => "setuid",
            Step::VerifyDrop => "verify privilege drop",
            Step::Pdeathsig => "set parent-death signal",
            Step::ParentGone => "parent exited",
            Step::NoNewPrivs => "set no_new_privs",
            Step::RlimitNofile => "RLIMIT_NOFILE",
            Step::RlimitNproc => "RLIMIT_NPROC",
            Step::RlimitCore => "RLIMIT_CORE",
            Step::CloseFds => "close fds",
            Step::InheritFds => "inherit fds",
            Step::Chdir => "chdir",
            Step::Unshare => "sandbox: unshare namespaces",
            Step::MountPrivate => "sandbox: make mounts private",
            Step::MountTmp => "sandbox: bind the site's tmp",
            Step::MountShm => "sandbox: mount /dev/shm",
            Step::MountProc => "sandbox: mount /proc",
            Step::Loopback => "sandbox: loopback up",
            Step::ViewRoot => "sandbox view: mount or seal its root",
            Step::ViewFiles => "sandbox view: make its directories and files",
            Step::ViewBind => "sandbox view: bind a path into it",
            Step::ViewSpecial => "sandbox view: mount /dev/shm and /proc",
            Step::ViewPivot => "sandbox view: pivot into it",
        }
    }

    pub(super) fn from_byte(b: u8) -> Option<Step> {
        Step::ALL.into_iter().find(|s| *s as u8 == b)
    }

    fn of_sandbox(step: SandboxStep) -> Step {
        match step {
            SandboxStep::Unshare => Step::Unshare,
            SandboxStep::MountPrivate => Step::MountPrivate,
            SandboxStep::MountTmp => Step::MountTmp,
            SandboxStep::MountShm => Step::MountShm,
            SandboxStep::MountProc => Step::MountProc,
            SandboxStep::Loopback => Step::Loopback,
            SandboxStep::View(ViewStep::Root) => Step::ViewRoot,
            SandboxStep::View(ViewStep::Files) => Step::ViewFiles,
            SandboxStep::View(ViewStep::Bind) => Step::ViewBind,
            SandboxStep::View(ViewStep::Special) => Step::ViewSpecial,
            SandboxStep::View(ViewStep::Pivot) => Step::ViewPivot,
        }
    }
}

/// Everything the child needs, prepared in the parent (no allocation after fork).
pub(super) struct ChildPlan {
    pub(super) cgroup_fds: Vec<RawFd>,
    pub(super) report: crate::isolation::step_report::StepReport,
    /// Kept open across exec (`FD_CLOEXEC` cleared after the close step).
    pub(super) inherit: Vec<RawFd>,
    /// `(from, to)`: `from` is passed on as descriptor `to` (`dup2`), after
    /// `inherit` (the parent checked that no two collide).
    pub(super) moves: Vec<(RawFd, RawFd)>,
    /// The environment `exec` passes on (installed last).
    pub(super) env: super::env::ChildEnv,
    /// `(uid, gid)` to switch to; `None` when no switch is needed.
    pub(super) switch: Option<(libc::uid_t, libc::gid_t)>,
    pub(super) nofile: libc::rlim_t,
    /// Every descriptor polyhost holds is below it (see [`fd_bound`]).
    pub(super) fd_bound: libc::c_int,
    /// Skip `close_range` (test hook, see [`mark_fds_one_by_one`](super::mark_fds_one_by_one)).
    pub(super) one_by_one: bool,
    pub(super) nproc: Option<libc::rlim_t>,
    pub(super) cwd: CString,
    pub(super) parent: libc::pid_t,
    pub(super) batch_scheduling: bool,
    /// The site's sandbox, entered after `setsid`, before the privilege drop.
    pub(super) sandbox: Option<SandboxPlan>,
}

impl ChildPlan {
    /// Runs in the forked child. Async-signal-safe system calls only, no
    /// allocation, no locks.
    pub(super) fn run(&mut self) -> io::Result<()> {
        // SAFETY: all calls below are async-signal-safe system calls on
        // values prepared before the fork (fds that are open in the child,
        // a valid NUL-terminated path, plain integers); none allocates.
        unsafe {
            for &fd in &self.cgroup_fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(self.fail(Step::JoinCgroup));
                }
            }
            if libc::setsid() < 0 {
                return Err(self.fail(Step::Setsid));
            }
            if let Some(sandbox) = &self.sandbox {
                if let Err((step, e)) = sandbox.enter() {
                    self.report.report(Step::of_sandbox(step) as u8);
                    return Err(e);
                }
            }
            if let Some((uid, gid)) = self.switch {
                if libc::setgroups(1, &gid) != 0 {
                    return Err(self.fail(Step::Setgroups));
                }
                if libc::setgid(gid) != 0 {
                    return Err(self.fail(Step::Setgid));
                }
                if libc::setuid(uid) != 0 {
                    return Err(self.fail(Step::Setuid));
                }
                if libc::setuid(0) == 0 {
                    return Err(self.fail_with(Step::VerifyDrop, libc::EPERM));
                }
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(self.fail(Step::Pdeathsig));
            }
            if libc::getppid() != self.parent {
                return Err(self.fail_with(Step::ParentGone, libc::ESRCH));
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(self.fail(Step::NoNewPrivs));
            }
            let limit = |n| libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit(self.nofile)) != 0 {
                return Err(self.fail(Step::RlimitNofile));
            }
            if let Some(n) = self.nproc {
                if libc::setrlimit(libc::RLIMIT_NPROC, &limit(n)) != 0 {
                    return Err(self.fail(Step::RlimitNproc));
                }
            }
            if libc::setrlimit(libc::RLIMIT_CORE, &limit(0)) != 0 {
                return Err(self.fail(Step::RlimitCore));
            }
            // CLOEXEC rather than close: std's own error pipe must survive
            // until exec. Kernels before 5.11 lack close_range: mark one by
            // one, up to the highest descriptor polyhost held at the fork
            // (`fd_bound`; the site's RLIMIT_NOFILE, just set, says nothing
            // of what polyhost holds).
            if self.one_by_one
                || libc::syscall(
                    libc::SYS_close_range,
                    3 as libc::c_uint,
                    libc::c_uint::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                ) != 0
            {
                if self.fd_bound == 0 {
                    // close_range worked in the parent's probe but not here:
                    // fail closed rather than pass descriptors on.
                    return Err(self.fail(Step::CloseFds));
                }
                for fd in 3..self.fd_bound {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            for &fd in &self.inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(self.fail(Step::InheritFds));
                }
            }
            for &(from, to) in &self.moves {
                // dup2 leaves the copy without FD_CLOEXEC; `from` itself
                // stays close-on-exec.
                let done = if from == to {
                    libc::fcntl(from, libc::F_SETFD, 0) == 0
                } else {
                    libc::dup2(from, to) == to
                };
                if !done {
                    return Err(self.fail(Step::InheritFds));
                }
            }
            if libc::chdir(self.cwd.as_ptr()) != 0 {
                return Err(self.fail(Step::Chdir));
            }
            if self.batch_scheduling {
                // Best effort (see the module docs): the result is ignored.
                // The raw system call: musl's wrapper always fails (ENOSYS).
                let param = libc::sched_param { sched_priority: 0 };
                libc::syscall(
                    libc::SYS_sched_setscheduler,
                    0 as libc::pid_t,
                    libc::SCHED_BATCH,
                    &param as *const libc::sched_param,
                );
            }
        }
        self.env.install();
        Ok(())
    }

    fn fail(&self, step: Step) -> io::Error {
        self.report.fail(step as u8)
    }

    fn fail_with(&self, step: Step, errno: i32) -> io::Error {
        self.report.fail_with(step as u8, errno)
    }
}

/// One past the highest descriptor polyhost holds, for the child's
/// one-by-one close-on-exec loop, or 0 where the child will not need it
/// (`close_range(CLOSE_RANGE_CLOEXEC)` works: probed once). Read from
/// `/proc/self/fd`, not from `RLIMIT_NOFILE`: polyhost raises its soft limit
/// to the hard one, which may be a billion (`LimitNOFILE=infinity`), and a
/// loop that long would outlast any start-up timeout. A descriptor opened by
/// another thread between this listing and the fork is close-on-exec
/// already (std, tokio and nix open everything with `O_CLOEXEC`). Without
/// `/proc`: the soft limit, at most `fs.nr_open`'s default. Computed in the
/// parent: the child may not allocate or read `/proc`.
pub(super) fn fd_bound(one_by_one: bool) -> libc::c_int {
    if !one_by_one && close_range_cloexec_works() {
        return 0;
    }
    let open = std::fs::read_dir("/proc/self/fd").ok().map(|dir| {
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .map_or(0, |fd| fd + 1)
    });
    let bound = open.unwrap_or_else(|| {
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1 << 20, |(soft, _)| soft.min(1 << 20))
    });
    bound.min(libc::c_int::MAX as u64) as libc::c_int
}

/// Whether this kernel has `close_range` with `CLOSE_RANGE_CLOEXEC` (Linux
/// 5.11): asked once, on a range that holds no descriptor.
fn close_range_cloexec_works() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        // SAFETY: close_range on the single descriptor number c_uint::MAX,
        // which no process can hold (beyond any RLIMIT_NOFILE): it marks
        // nothing and only tells whether the call and its flag exist.
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                libc::c_uint::MAX,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) == 0
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip_through_their_byte() {
        for step in Step::ALL {
            assert_eq!(Step::from_byte(step as u8), Some(step));
        }
        assert_eq!(Step::from_byte(0), None);
    }
}
