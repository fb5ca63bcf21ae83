//! Starting the router process (`polyhost router`, see `privsep`): the
//! supervisor's only child that is not a site process. It runs polyhost's
//! own binary again (`/proc/self/exe`, so an upgrade that replaced the file
//! on disk still starts the same build) as `router_user`, keeping one
//! capability, `CAP_DAC_READ_SEARCH` (read and search any file: the router
//! serves what each site's user could read, and reaches runtime sockets in
//! root's directories).
//!
//! The child's steps, in this fixed order, fail closed like a site
//! process's ([`RouterSpawnError::Setup`] names the failed step):
//!
//! 1. `setsid` (its own session: a terminal's Ctrl-C reaches only the
//!    supervisor, which stops the router itself);
//! 2. its descriptors moved to 3, 4, ... in the order given (the link
//!    first, then the listeners), the only ones it inherits;
//! 3. `PR_SET_KEEPCAPS`, then every capability but `CAP_DAC_READ_SEARCH`
//!    dropped from the bounding set;
//! 4. `setgroups([])` → `setgid` → `setuid`, then check that `setuid(0)` fails;
//! 5. `capset`: permitted = effective = inheritable = {`CAP_DAC_READ_SEARCH`},
//!    then raised into the ambient set (so it survives `exec` of a binary
//!    without file capabilities), and `setuid(0)` checked to fail again;
//! 6. `PR_SET_PDEATHSIG(SIGTERM)` (after `setuid`, which clears it), then
//!    check the parent is still there;
//! 7. `PR_SET_NO_NEW_PRIVS`;
//! 8. `RLIMIT_CORE` = 0 (`RLIMIT_NOFILE` is the supervisor's, raised at start);
//! 9. every other descriptor ≥ 3 close-on-exec; `chdir("/")`.
//!
//! "Not dumpable" cannot cross `exec` (the kernel resets it for a process
//! whose ids did not change at `exec`): the router sets it itself at start
//! ([`harden_self`]).
//!
//! stdin is `/dev/null`; stdout and stderr are the supervisor's (one log).
//! The environment is exactly [`RouterSpec::env`].
//!
//! Like [`spawn()`](super::spawn()), call it from a long-lived thread in a tokio
//! runtime (the parent-death signal follows the forking thread).

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Stdio;

use nix::fcntl::OFlag;

/// `CAP_DAC_READ_SEARCH`: the one capability the router keeps.
pub const CAP_DAC_READ_SEARCH: u32 = 2;

/// What to start.
#[derive(Debug)]
pub struct RouterSpec<'a> {
    /// The program (`/proc/self/exe` in production; tests may run another).
    pub program: PathBuf,
    /// `argv[0]`, then `args`.
    pub arg0: String,
    pub args: Vec<String>,
    /// The whole environment of the child.
    pub env: Vec<(String, String)>,
    pub uid: u32,
    pub gid: u32,
    /// Inherited as 3, 4, ... in this order; polyhost keeps its copies.
    pub fds: Vec<BorrowedFd<'a>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RouterSpawnError {
    #[error("the router must not run as root (router_user has uid or gid 0)")]
    Root,
    #[error("cannot prepare the router's start: {0}")]
    Prepare(#[source] io::Error),
    #[error("starting the router failed at step `{step}`: {source}")]
    Setup {
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The running router process. Dropping it does not kill it (the keeper
/// decides); it is registered as polyhost's own child until waited for.
pub type RouterProcess = super::reap::OwnChild;

/// Who the router runs as: `router_user` resolved (its primary group; never
/// uid or gid 0), or what is wrong with it, in words for `router_user`'s
/// error.
pub fn router_identity(user: &str) -> Result<super::SiteIdentity, String> {
    use super::IdentityError;
    super::SiteIdentity::resolve(user, None).map_err(|e| match e {
        IdentityError::NoSuchUser(_) => format!(
            "user `{user}` does not exist: the router process runs as it; create it with `useradd --system --no-create-home --shell /usr/sbin/nologin {user}`, or name another"
        ),
        IdentityError::RootUser(_) | IdentityError::RootGroup(_) => format!(
            "user `{user}` has uid or gid 0: the router process serves the internet and must not run as root"
        ),
        other => other.to_string(),
    })
}

/// The child's steps, reported as one byte when one fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    Setsid = 1,
    MoveFds,
    KeepCaps,
    Bounding,
    Setgroups,
    Setgid,
    Setuid,
    VerifyDrop,
    Capset,
    Ambient,
    Pdeathsig,
    ParentGone,
    NoNewPrivs,
    RlimitCore,
    CloseFds,
    Chdir,
}

impl Step {
    const ALL: [Step; 16] = [
        Step::Setsid,
        Step::MoveFds,
        Step::KeepCaps,
        Step::Bounding,
        Step::Setgroups,
        Step::Setgid,
        Step::Setuid,
        Step::VerifyDrop,
        Step::Capset,
        Step::Ambient,
        Step::Pdeathsig,
        Step::ParentGone,
        Step::NoNewPrivs,
        Step::RlimitCore,
        Step::CloseFds,
        Step::Chdir,
    ];

    fn name(self) -> &'static str {
        match self {
            Step::Setsid => "setsid",
            Step::MoveFds => "move descriptors",
            Step::KeepCaps => "keep capabilities",
            Step::Bounding => "capability bounding set",
            Step::Setgroups => "setgroups",
            Step::Setgid => "setgid",
            Step::Setuid => "setuid",
            Step::VerifyDrop => "verify the privilege drop",
            Step::Capset => "capset",
            Step::Ambient => "ambient capability",
            Step::Pdeathsig => "parent-death signal",
            Step::ParentGone => "parent still alive",
            Step::NoNewPrivs => "no_new_privs",
            Step::RlimitCore => "RLIMIT_CORE",
            Step::CloseFds => "close descriptors",
            Step::Chdir => "chdir",
        }
    }

    fn from_byte(b: u8) -> Option<Step> {
        Step::ALL.into_iter().find(|s| *s as u8 == b)
    }
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct` (two of them with version 3: caps 0-31, 32-63).
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Everything the child needs, prepared before the fork.
struct Plan {
    report: crate::isolation::step_report::StepReport,
    /// Parent-side duplicates (close-on-exec, numbered above the targets),
    /// moved to 3, 4, ... in order.
    fds: Vec<RawFd>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    last_cap: u32,
    parent: libc::pid_t,
    fd_bound: libc::c_int,
    root: CString,
}

impl Plan {
    /// Runs in the forked child: async-signal-safe system calls only, no
    /// allocation, no lock.
    fn run(&self) -> io::Result<()> {
        // SAFETY: every call is an async-signal-safe system call on values
        // prepared before the fork (descriptors open in the child, integers,
        // a NUL-terminated path, stack structs); nothing allocates.
        unsafe {
            if libc::setsid() < 0 {
                return Err(self.fail(Step::Setsid));
            }
            for (i, &fd) in self.fds.iter().enumerate() {
                // The sources are all above the targets (see `spawn_router`):
                // no target overwrites a source still to be moved. dup2
                // leaves the new descriptor without close-on-exec.
                if libc::dup2(fd, 3 + i as RawFd) < 0 {
                    return Err(self.fail(Step::MoveFds));
                }
            }
            if libc::prctl(libc::PR_SET_KEEPCAPS, 1 as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(self.fail(Step::KeepCaps));
            }
            for cap in 0..=self.last_cap {
                if cap != CAP_DAC_READ_SEARCH
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                {
                    return Err(self.fail(Step::Bounding));
                }
            }
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return Err(self.fail(Step::Setgroups));
            }
            if libc::setgid(self.gid) != 0 {
                return Err(self.fail(Step::Setgid));
            }
            if libc::setuid(self.uid) != 0 {
                return Err(self.fail(Step::Setuid));
            }
            if libc::setuid(0) == 0 {
                return Err(self.fail_with(Step::VerifyDrop, libc::EPERM));
            }
            let header = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let one = 1u32 << CAP_DAC_READ_SEARCH;
            let data = [
                CapData {
                    effective: one,
                    permitted: one,
                    inheritable: one,
                },
                CapData {
                    effective: 0,
                    permitted: 0,
                    inheritable: 0,
                },
            ];
            if libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) != 0 {
                return Err(self.fail(Step::Capset));
            }
            if libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                CAP_DAC_READ_SEARCH as libc::c_ulong,
                0,
                0,
            ) != 0
            {
                return Err(self.fail(Step::Ambient));
            }
            if libc::setuid(0) == 0 || libc::setgid(0) == 0 {
                return Err(self.fail_with(Step::VerifyDrop, libc::EPERM));
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGTERM as libc::c_ulong,
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
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
                return Err(self.fail(Step::RlimitCore));
            }
            let first = 3 + self.fds.len() as libc::c_uint;
            if libc::syscall(
                libc::SYS_close_range,
                first,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                // Before Linux 5.11: one by one, up to what polyhost held.
                for fd in first as libc::c_int..self.fd_bound {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            if libc::chdir(self.root.as_ptr()) != 0 {
                return Err(self.fail(Step::Chdir));
            }
        }
        Ok(())
    }

    fn fail(&self, step: Step) -> io::Error {
        self.report.fail(step as u8)
    }

    fn fail_with(&self, step: Step, errno: i32) -> io::Error {
        self.report.fail_with(step as u8, errno)
    }
}

/// Starts the router as `spec` says (see the module doc).
pub fn spawn_router(spec: &RouterSpec<'_>) -> Result<RouterProcess, RouterSpawnError> {
    if spec.uid == 0 || spec.gid == 0 {
        return Err(RouterSpawnError::Root);
    }
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40)
        .min(63);
    // Duplicates above every target number, so the child's moves never
    // overwrite a source (close-on-exec: no other child gets them).
    let above = 3 + spec.fds.len() as RawFd;
    let dups: Vec<OwnedFd> = spec
        .fds
        .iter()
        .map(|fd| {
            // SAFETY: F_DUPFD_CLOEXEC on a descriptor the caller lends us;
            // the new descriptor is owned by the OwnedFd right away.
            let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, above) };
            if new < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `new` was just returned by fcntl and is owned by no one else.
            Ok(unsafe { OwnedFd::from_raw_fd(new) })
        })
        .collect::<io::Result<_>>()
        .map_err(RouterSpawnError::Prepare)?;
    let (report_read, report_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| RouterSpawnError::Prepare(e.into()))?;
    let fd_bound = std::fs::read_dir("/proc/self/fd")
        .ok()
        .and_then(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .max()
        })
        .map_or(1 << 16, |fd| fd + 1);
    let plan = Plan {
        report: crate::isolation::step_report::StepReport::new(report_write.as_raw_fd()),
        fds: dups.iter().map(AsRawFd::as_raw_fd).collect(),
        uid: spec.uid,
        gid: spec.gid,
        last_cap,
        parent: nix::unistd::getpid().as_raw(),
        fd_bound,
        root: CString::new("/").expect("no NUL"),
    };
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.arg0(&spec.arg0)
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(false);
    // SAFETY: `Plan::run` makes only async-signal-safe system calls on data
    // prepared above, owned by the closure; it neither allocates nor locks.
    unsafe {
        cmd.pre_exec(move || plan.run());
    }
    let result = cmd.spawn();
    drop(report_write);
    drop(dups);
    match result {
        Ok(child) => Ok(RouterProcess::new(child)),
        Err(source) => {
            let mut byte = [0u8; 1];
            let step = match File::from(report_read).read(&mut byte) {
                Ok(1) => Step::from_byte(byte[0]).map_or("unknown", Step::name),
                _ => "exec",
            };
            Err(RouterSpawnError::Setup { step, source })
        }
    }
}

/// What the router does first, in its own process: no core dump, no
/// `ptrace` or `/proc/<pid>/mem` by its own user (`PR_SET_DUMPABLE` 0; it
/// cannot be set across `exec`, see the module doc).
pub fn harden_self() -> io::Result<()> {
    // SAFETY: prctl with integer arguments on the calling process.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

    /// `grep Cap /proc/self/status` of a shell started as the router is:
    /// one capability in every set, its descriptors moved to 3 and 4.
    #[tokio::test]
    async fn the_router_keeps_one_capability_and_its_descriptors() {
        if !crate::isolation::running_as_root() {
            return;
        }
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let file = std::fs::File::create(&out).unwrap();
        std::os::unix::fs::chown(&out, Some(nobody.uid.as_raw()), None).unwrap();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::AsFd;
        let fds = [file.as_fd(), a.as_fd()];
        let spec = RouterSpec {
            program: "/bin/sh".into(),
            arg0: "sh".into(),
            args: vec![
                "-c".into(),
                "{ grep -E '^(Uid|Gid|Groups|Cap[A-Za-z]+|NoNewPrivs)' /proc/self/status; \
                 ls -l /proc/self/fd | grep -c socket; } >&3"
                    .into(),
            ],
            env: vec![],
            uid: nobody.uid.as_raw(),
            gid: nobody.gid.as_raw(),
            fds: fds.to_vec(),
        };
        let mut router = spawn_router(&spec).unwrap();
        let status = router.wait().await.unwrap();
        assert!(status.success(), "{status}");
        let got = std::fs::read_to_string(&out).unwrap();
        let field = |name: &str| {
            got.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(str::trim)
                .unwrap_or_else(|| panic!("{name} missing in {got}"))
                .to_owned()
        };
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(field(cap), "0000000000000004", "{cap} in {got}");
        }
        assert_eq!(field("NoNewPrivs"), "1");
        assert_eq!(field("Groups"), "");
        let uid = nobody.uid.as_raw().to_string();
        assert!(field("Uid").split_whitespace().all(|u| u == uid), "{got}");
        // fd 4 is the socket, the only one beside the shell's own.
        assert_eq!(got.lines().last().unwrap().trim(), "1", "{got}");
    }
}
