//! Starting a site process: the only place polyhost forks, joins a child
//! to a cgroup and drops privileges.
//!
//! Everything the child does between `fork` and `exec` is prepared in the
//! parent (C strings, file descriptors, ids); the child runs only
//! async-signal-safe system calls, in this fixed order, and fails closed
//! (any failure ends the child before `exec`; [`spawn`] returns
//! [`SpawnError::Setup`] naming the step):
//!
//! 1. join the site cgroup (write `0` to the pre-opened `cgroup.procs` of
//!    every hierarchy): the cgroup holds the process before any site code runs;
//! 2. `setsid`: a new session and process group, so the whole group can be
//!    signalled; the pid is also the process-group id; then, with
//!    [`SpawnSpec::sandbox`], the site's sandbox (namespaces and mounts, as
//!    root: see [`sandbox`]; with its view, a new root and `pivot_root`);
//! 3. `setgroups([gid])` → `setgid` → `setuid`, then check that `setuid(0)` fails;
//! 4. `PR_SET_PDEATHSIG(SIGKILL)` (after `setuid`, which clears it), then
//!    check the parent is still there;
//! 5. `PR_SET_NO_NEW_PRIVS`;
//! 6. rlimits: `RLIMIT_NOFILE`, `RLIMIT_NPROC` (fallback process limit),
//!    `RLIMIT_CORE` = 0 (never `RLIMIT_AS`: it breaks threaded Python);
//! 7. mark every fd ≥ 3 close-on-exec (`close_range(CLOSE_RANGE_CLOEXEC)`;
//!    where the kernel lacks it, one by one up to [`fd_bound`], computed in
//!    the parent: no descriptor polyhost holds is at or above it);
//! 8. `chdir` (as the site user: a directory it cannot enter fails the start);
//! 9. with [`SpawnSpec::batch_scheduling`], `SCHED_BATCH` (inherited by every
//!    thread and child the process makes). The one step that does not fail
//!    closed: it is a scheduling hint, not a confinement (the site may switch
//!    itself back to `SCHED_OTHER`; CPU is confined by the cgroup), and a
//!    kernel or seccomp filter that refuses it must not stop the site;
//! 10. the environment: `environ` pointed at the `envp` prepared in the
//!     parent, [`SpawnSpec::pid_env`] written into it as the child's pid
//!     (see `env`); std's own environment handling is not used.
//!
//! Step 7 also passes [`SpawnSpec::inherit`] on (clears their close-on-exec
//! flag) and `dup2`s [`SpawnSpec::inherit_as`] to their numbers.
//!
//! The child's side (its prepared plan and the steps) is in `child`; this
//! file is the parent's: checking the spec, preparing, forking, and reading
//! the failed step back.
//!
//! stdin is `/dev/null`; stdout and stderr go to a log file the parent opens
//! in append mode. The environment is exactly [`SpawnSpec::env`] (plus
//! [`SpawnSpec::pid_env`]).
//!
//! **Call [`spawn`] from a long-lived thread** (a tokio runtime worker, never
//! `spawn_blocking`): the kernel sends the parent-death signal when the
//! *thread* that forked exits, so a child forked from a short-lived thread is
//! SIGKILLed when that thread ends. A tokio runtime must be running (the exit
//! is watched by tokio's process driver).

mod child;
mod env;
pub mod sandbox;
mod view;

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::fcntl::OFlag;
use nix::unistd::{getegid, geteuid, getpid};

use super::cgroup::SiteCgroup;
use super::identity::SiteIdentity;
use super::process::SiteProcess;
use super::reap::register;
use child::{fd_bound, ChildPlan, Step};
use sandbox::{Sandbox, SandboxPlan};

/// Per-process resource limits set by rlimit in the child. Core dumps are
/// always off (`RLIMIT_CORE` = 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rlimits {
    /// `RLIMIT_NOFILE` (soft and hard). Can only be lowered below what
    /// polyhost has: it is set after the privilege drop.
    pub nofile: u64,
    /// `RLIMIT_NPROC`: counts all processes of the site user; the fallback
    /// process limit when there is no pids cgroup.
    pub nproc: Option<u64>,
}

impl Default for Rlimits {
    fn default() -> Self {
        Rlimits {
            nofile: 4096,
            nproc: None,
        }
    }
}

/// What to start and how to confine it.
#[derive(Clone, Debug)]
pub struct SpawnSpec<'a> {
    /// Absolute path of the program (no `PATH` search).
    pub program: PathBuf,
    /// Arguments after `argv[0]` (other users can read them in `/proc`: no secrets).
    pub args: Vec<String>,
    /// The whole environment of the child: nothing is inherited.
    pub env: Vec<(String, String)>,
    /// Working directory, entered as the site user.
    pub cwd: PathBuf,
    /// Who to run as. Required when polyhost is root; when it is not, it may
    /// be `None` or [`SiteIdentity::current`].
    pub identity: Option<SiteIdentity>,
    pub rlimits: Rlimits,
    /// Run under `SCHED_BATCH`: when the process becomes runnable it does not
    /// preempt the running task (the router) but waits for the next
    /// scheduling point. See `site_scheduling` in docs/configuration.md.
    pub batch_scheduling: bool,
    /// The cgroup to join. The process owns it from then on: stopping the
    /// process kills everything in it (see [`SiteCgroup::child`]).
    pub cgroup: Option<&'a SiteCgroup>,
    /// stdout and stderr, opened by polyhost in append mode (created 0640).
    /// `None`: `/dev/null`.
    pub log: Option<PathBuf>,
    /// Descriptors the program inherits, at the numbers they have in
    /// polyhost (the caller tells the program which, e.g. in an argument).
    /// polyhost's copies stay close-on-exec, so no other child gets them;
    /// every other descriptor ≥ 3 is closed at exec.
    pub inherit: Vec<BorrowedFd<'a>>,
    /// Descriptors the program inherits at a number of their choosing
    /// (`(descriptor, number)`, e.g. a socket-activated listener at 3),
    /// placed after `inherit` is; the numbers must be ≥ 3, distinct, and
    /// not numbers `inherit` passes on.
    pub inherit_as: Vec<(BorrowedFd<'a>, RawFd)>,
    /// An environment variable set, in the child, to the program's own pid
    /// (systemd's `LISTEN_PID`); it replaces one `env` may name.
    pub pid_env: Option<&'static str>,
    /// Start in the site's sandbox (see [`sandbox`]); `None`: the host's view.
    pub sandbox: Option<&'a Sandbox>,
}

impl<'a> SpawnSpec<'a> {
    /// A spec with no arguments, an empty environment, cwd `/`, no identity,
    /// default rlimits, normal scheduling, no cgroup, no log and no
    /// inherited descriptors.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        SpawnSpec {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: PathBuf::from("/"),
            identity: None,
            rlimits: Rlimits::default(),
            batch_scheduling: false,
            cgroup: None,
            log: None,
            inherit: Vec::new(),
            inherit_as: Vec::new(),
            pid_env: None,
            sandbox: None,
        }
    }
}

/// Why a site process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("program `{}` must be an absolute path", .0.display())]
    NotAbsolute(PathBuf),
    #[error("polyhost runs as root and refuses to start `{}` without a site user", .0.display())]
    RootWithoutIdentity(PathBuf),
    #[error("cannot run as `{user}`: polyhost is not root (run it as root, or let sites run as the invoking user)")]
    CannotSwitchUser { user: String },
    #[error(
        "descriptor {0} cannot be inherited: 0, 1 and 2 are the program's stdin, stdout and stderr"
    )]
    InheritStdio(RawFd),
    #[error("descriptor number {0} cannot be given twice, nor below 3")]
    InheritAs(RawFd),
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error("cannot open {what} {}: {source}", path.display())]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The site's tmp, or a path of its view, is missing or not what it
    /// must be (the error names the path).
    #[error("cannot prepare the sandbox of `{}`: {source}", program.display())]
    Sandbox {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("starting `{}` failed at step `{step}`: {source}", program.display())]
    Setup {
        program: PathBuf,
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Starts a site process as described by `spec` (see the module docs for
/// what happens in the child, and why it must be called from a long-lived
/// thread inside a tokio runtime).
pub fn spawn(spec: &SpawnSpec<'_>) -> Result<SiteProcess, SpawnError> {
    if !spec.program.is_absolute() {
        return Err(SpawnError::NotAbsolute(spec.program.clone()));
    }
    if let Some(fd) = spec
        .inherit
        .iter()
        .map(AsRawFd::as_raw_fd)
        .find(|fd| *fd < 3)
    {
        return Err(SpawnError::InheritStdio(fd));
    }
    let moves = check_moves(spec)?;
    let env = env::ChildEnv::new(&spec.env, spec.pid_env).ok_or(SpawnError::Nul {
        what: "the environment",
    })?;
    // A number a descriptor moves to that is free here could be taken by
    // the pipes made below (the lowest free numbers), which the child still
    // needs when it moves descriptors: hold it until the fork is done.
    let _held = hold_free_numbers(&moves);
    let euid = geteuid();
    let switch = match &spec.identity {
        None if euid.is_root() => {
            return Err(SpawnError::RootWithoutIdentity(spec.program.clone()))
        }
        None => None,
        Some(id) if euid.is_root() => Some((id.uid, id.gid)),
        Some(id) if id.uid == euid.as_raw() && id.gid == getegid().as_raw() => None,
        Some(id) => {
            return Err(SpawnError::CannotSwitchUser {
                user: id.user.clone(),
            })
        }
    };

    // cgroup.procs of each hierarchy, opened close-on-exec by std.
    let cgroup_files: Vec<OwnedFd> = match spec.cgroup {
        Some(cgroup) => cgroup
            .procs_files()
            .into_iter()
            .map(|path| {
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|source| SpawnError::Open {
                        what: "cgroup",
                        path,
                        source,
                    })
            })
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let (report_read, report_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| SpawnError::Open {
            what: "pipe",
            path: PathBuf::from("pipe2"),
            source: e.into(),
        })?;
    let identity = spec.identity.as_ref().filter(|_| switch.is_some());
    let sandbox = spec
        .sandbox
        .map(|s| SandboxPlan::prepare(s, identity, &spec.program))
        .transpose()
        .map_err(|source| SpawnError::Sandbox {
            program: spec.program.clone(),
            source,
        })?;
    let one_by_one = ONE_BY_ONE.load(std::sync::atomic::Ordering::Relaxed);
    let plan = ChildPlan {
        cgroup_fds: cgroup_files.iter().map(|f| f.as_raw_fd()).collect(),
        report: crate::isolation::step_report::StepReport::new(report_write.as_raw_fd()),
        inherit: spec.inherit.iter().map(AsRawFd::as_raw_fd).collect(),
        moves,
        env,
        switch,
        nofile: nofile_within_hard_limit(spec.rlimits.nofile),
        fd_bound: fd_bound(one_by_one),
        one_by_one,
        nproc: spec.rlimits.nproc.map(|n| n as libc::rlim_t),
        cwd: CString::new(spec.cwd.as_os_str().as_bytes()).map_err(|_| SpawnError::Nul {
            what: "working directory",
        })?,
        parent: getpid().as_raw(),
        batch_scheduling: spec.batch_scheduling,
        sandbox,
    };
    let log = open_log(spec.log.as_deref())?;
    let log2 = log.try_clone().map_err(|source| SpawnError::Open {
        what: "log",
        path: spec.log.clone().unwrap_or_default(),
        source,
    })?;

    // The environment is the plan's (`env`): std's must stay untouched, or
    // it would install its own after the plan ran.
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(false);
    // SAFETY: `ChildPlan::run` only makes async-signal-safe system calls on
    // data prepared above, which the closure owns; it neither allocates nor
    // takes locks, so it is sound between fork and exec.
    let mut plan = plan;
    unsafe {
        cmd.pre_exec(move || plan.run());
    }
    let result = cmd.spawn();
    // The child has its copies (close-on-exec); drop ours so a read ends.
    drop(report_write);
    drop(cgroup_files);
    match result {
        Ok(child) => {
            let pid = child
                .id()
                .expect("a freshly spawned child has not been reaped") as i32;
            register(pid);
            tracing::debug!(pid, program = %spec.program.display(), "site process started");
            Ok(SiteProcess::new(pid, child, spec.cgroup.cloned()))
        }
        Err(source) => {
            let mut byte = [0u8; 1];
            let step = match File::from(report_read).read(&mut byte) {
                Ok(1) => Step::from_byte(byte[0]).map_or("unknown", Step::name),
                _ => "exec",
            };
            Err(SpawnError::Setup {
                program: spec.program.clone(),
                step,
                source,
            })
        }
    }
}

/// `SpawnSpec::inherit_as` as `(from, to)` numbers, checked: every `to`
/// at least 3, given once, and neither a number `inherit` passes on nor
/// the source of another move.
fn check_moves(spec: &SpawnSpec<'_>) -> Result<Vec<(RawFd, RawFd)>, SpawnError> {
    let moves: Vec<(RawFd, RawFd)> = spec
        .inherit_as
        .iter()
        .map(|(fd, to)| (fd.as_raw_fd(), *to))
        .collect();
    let inherited: Vec<RawFd> = spec.inherit.iter().map(AsRawFd::as_raw_fd).collect();
    for (i, &(from, to)) in moves.iter().enumerate() {
        let taken = to < 3
            || inherited.contains(&to)
            || moves[..i].iter().any(|&(_, t)| t == to)
            || moves.iter().any(|&(f, _)| f == to && f != from);
        if taken {
            return Err(SpawnError::InheritAs(to));
        }
    }
    Ok(moves)
}

/// Opens `/dev/null` on each target number of `moves` that is free here,
/// and keeps what landed there (see where it is called).
fn hold_free_numbers(moves: &[(RawFd, RawFd)]) -> Vec<OwnedFd> {
    let mut held = Vec::new();
    for &(_, to) in moves {
        // SAFETY: F_GETFD only reads the descriptor's flags (EBADF if free).
        let free = unsafe { libc::fcntl(to, libc::F_GETFD) } < 0;
        if !free {
            continue;
        }
        while let Ok(null) = File::open("/dev/null") {
            let null = OwnedFd::from(null);
            let raw = null.as_raw_fd();
            if raw > to {
                break;
            }
            held.push(null);
            if raw == to {
                break;
            }
        }
    }
    held
}

static ONE_BY_ONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Test hook: children mark their descriptors close-on-exec one by one,
/// as on kernels without `close_range` (before Linux 5.11), even where
/// `close_range` works, so that tests can check that path. Affects every
/// spawn of the process while on.
#[doc(hidden)]
pub fn mark_fds_one_by_one(on: bool) {
    ONE_BY_ONE.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The child can only lower `RLIMIT_NOFILE` (it is set after the privilege
/// drop): ask for at most what polyhost's hard limit allows.
fn nofile_within_hard_limit(wanted: u64) -> libc::rlim_t {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) if hard < wanted => {
            tracing::warn!(
                wanted,
                hard,
                "RLIMIT_NOFILE for a site is above polyhost's own hard limit; using the hard limit"
            );
            hard as libc::rlim_t
        }
        _ => wanted as libc::rlim_t,
    }
}

fn open_log(path: Option<&Path>) -> Result<File, SpawnError> {
    let (path, result) = match path {
        Some(path) => (
            path,
            // O_NOFOLLOW: a site must not redirect root's open with a symlink.
            // The log directory itself must not be writable by the site.
            OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o640)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path),
        ),
        None => (
            Path::new("/dev/null"),
            OpenOptions::new().write(true).open("/dev/null"),
        ),
    };
    result.map_err(|source| SpawnError::Open {
        what: "log",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_given_a_number_must_not_collide() {
        use std::os::fd::AsFd;
        let (a, b) = (
            File::open("/dev/null").unwrap(),
            File::open("/dev/null").unwrap(),
        );
        fn spec<'a>(
            inherit: Vec<BorrowedFd<'a>>,
            inherit_as: Vec<(BorrowedFd<'a>, RawFd)>,
        ) -> SpawnSpec<'a> {
            SpawnSpec {
                inherit,
                inherit_as,
                ..SpawnSpec::new("/bin/true")
            }
        }
        let refused = |s: &SpawnSpec<'_>| match check_moves(s) {
            Err(SpawnError::InheritAs(n)) => Some(n),
            _ => None,
        };
        assert_eq!(
            refused(&spec(vec![], vec![(a.as_fd(), 2)])),
            Some(2),
            "not stdio"
        );
        assert_eq!(
            refused(&spec(vec![], vec![(a.as_fd(), 3), (b.as_fd(), 3)])),
            Some(3),
            "one descriptor per number"
        );
        assert_eq!(
            refused(&spec(vec![b.as_fd()], vec![(a.as_fd(), b.as_raw_fd())])),
            Some(b.as_raw_fd()),
            "not a number inherit passes on"
        );
        assert_eq!(
            refused(&spec(
                vec![],
                vec![(a.as_fd(), 3), (b.as_fd(), a.as_raw_fd())]
            )),
            Some(a.as_raw_fd()),
            "not the source of another move"
        );
        let ok = check_moves(&spec(vec![], vec![(a.as_fd(), 3)])).unwrap();
        assert_eq!(ok, [(a.as_raw_fd(), 3)]);
    }

    #[test]
    fn relative_programs_are_refused() {
        let err = spawn(&SpawnSpec::new("sh")).unwrap_err();
        assert!(matches!(err, SpawnError::NotAbsolute(_)), "{err}");
    }
}
