//! System tests of `polyhost::isolation`: real users, real cgroups, real
//! processes. They need root (CI runs them as root) and clean up after
//! themselves: users are deleted, cgroups removed, processes killed and reaped.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use polyhost::isolation::{
    self, CgroupKind, CgroupRoot, IdentityError, Limits, SiteIdentity, SpawnError, SpawnSpec,
};

// ---------------------------------------------------------------- helpers

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}{:x}{:x}{}",
        std::process::id() & 0xfff,
        nanos & 0xffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn require_root() {
    assert!(
        isolation::running_as_root(),
        "the isolation system tests need root (they create users and cgroups)"
    );
    isolation::set_child_subreaper().unwrap();
}

/// A throw-away system user (`common::TestUser`, deleted on drop) and its identity.
struct TestUser {
    identity: SiteIdentity,
    _user: common::TestUser,
}

impl TestUser {
    fn new() -> TestUser {
        let user = common::TestUser::new();
        TestUser {
            identity: SiteIdentity::resolve(&user.name, None).unwrap(),
            _user: user,
        }
    }
}

/// A private polyhost parent cgroup, removed (with everything in it) on drop.
struct TestRoot(CgroupRoot);

impl TestRoot {
    fn new() -> TestRoot {
        let root = CgroupRoot::detect(&unique("polyhost-test-"));
        assert!(root.is_available(), "{}", root.describe());
        TestRoot(root)
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        let removed = self.0.remove_all();
        // A second panic while a failed test unwinds would abort the whole
        // test binary, and with it every other test's clean-up.
        if std::thread::panicking() {
            if let Err(e) = removed {
                eprintln!("cannot remove the test cgroups: {e}");
            }
        } else {
            removed.unwrap();
        }
    }
}

fn spec<'a>(user: &TestUser, log: &Path, program: &str, args: &[&str]) -> SpawnSpec<'a> {
    let mut spec = SpawnSpec::new(program);
    spec.args = args.iter().map(|a| a.to_string()).collect();
    spec.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
    spec.identity = Some(user.identity.clone());
    spec.log = Some(log.to_path_buf());
    spec
}

/// Runs to completion; returns the exit status and everything it wrote.
async fn run(spec: &SpawnSpec<'_>) -> (std::process::ExitStatus, String) {
    let mut process = isolation::spawn(spec).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), process.wait())
        .await
        .expect("process did not finish")
        .unwrap();
    process.stop(Duration::ZERO).await.unwrap();
    let out = std::fs::read_to_string(spec.log.as_ref().unwrap()).unwrap_or_default();
    (status, out)
}

/// Retries `check` until it holds (never a fixed sleep).
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn log_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Waits for a line in a log and returns it.
async fn read_pid_line(log: &Path) -> i32 {
    let mut pid = 0;
    eventually("the pid line in the log", || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        match text.lines().next().and_then(|l| l.trim().parse().ok()) {
            Some(p) => {
                pid = p;
                true
            }
            None => false,
        }
    })
    .await;
    pid
}

// ---------------------------------------------------------------- identity and spawn

#[tokio::test]
async fn runs_as_the_site_user_with_a_clean_env_and_no_inherited_fds() {
    require_root();
    let user = TestUser::new();
    let dir = log_dir();
    let (uid, gid) = (user.identity.uid, user.identity.gid);

    let log = dir.path().join("id.log");
    let (status, out) = run(&spec(
        &user,
        &log,
        "/bin/sh",
        &["-c", "id -u; id -g; id -G"],
    ))
    .await;
    assert!(status.success(), "{out}");
    assert_eq!(
        out,
        format!("{uid}\n{gid}\n{gid}\n"),
        "uid, gid, and no supplementary groups"
    );

    let log = dir.path().join("env.log");
    let mut env_spec = spec(&user, &log, "/usr/bin/env", &[]);
    env_spec.env.push(("FOO".into(), "bar baz".into()));
    // A variable of ours that must not be inherited.
    std::env::set_var("POLYHOST_TEST_LEAK", "1");
    let (status, out) = run(&env_spec).await;
    assert!(status.success());
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines, ["FOO=bar baz", "PATH=/usr/bin:/bin"]);

    // An fd without close-on-exec in the parent must not reach the child.
    let leaked = std::fs::File::open("/etc/hostname").unwrap();
    // SAFETY (test): dup(2) of a valid fd; the copy is closed below.
    let raw = unsafe { libc::dup(std::os::fd::AsRawFd::as_raw_fd(&leaked)) };
    assert!(raw > 2);
    let log = dir.path().join("fd.log");
    let (status, out) = run(&spec(&user, &log, "/bin/sh", &["-c", "ls /proc/$$/fd"])).await;
    // SAFETY (test): closes the fd dup'ed above.
    unsafe { libc::close(raw) };
    assert!(status.success(), "{out}");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["0", "1", "2"]);
}

#[tokio::test]
async fn only_the_inherited_descriptors_reach_the_child_at_their_numbers() {
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
    require_root();
    let user = TestUser::new();
    let dir = log_dir();
    let given = dir.path().join("given.txt");
    std::fs::write(&given, "handed over\n").unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Both close-on-exec here (std opens so); only `given` is inherited. The
    // site user could not reach it by its path (0700 directory). (`cat
    // /dev/fd/N`, not `<&N`: dash takes single-digit descriptors only.)
    let given = std::fs::File::open(&given).unwrap();
    let other = std::fs::File::open("/etc/hostname").unwrap();
    let n = given.as_raw_fd();
    let log = dir.path().join("fd.log");
    let mut s = spec(
        &user,
        &log,
        "/bin/sh",
        &["-c", &format!("ls /proc/$$/fd; cat /dev/fd/{n}")],
    );
    s.inherit = vec![given.as_fd()];
    let (status, out) = run(&s).await;
    assert!(status.success(), "{out}");
    let mut words: Vec<&str> = out.split_whitespace().collect();
    let text = words.split_off(words.len() - 2).join(" ");
    let mut fds: Vec<i32> = words.iter().filter_map(|w| w.parse().ok()).collect();
    fds.sort_unstable();
    assert_eq!(fds, [0, 1, 2, n], "{out}");
    assert_eq!(text, "handed over");
    drop(other);

    // stdin, stdout and stderr are the child's own.
    // SAFETY (test): fd 0 is open for the whole test process.
    let stdin = unsafe { BorrowedFd::borrow_raw(0) };
    let mut s = spec(&user, &log, "/bin/true", &[]);
    s.inherit = vec![stdin];
    let err = isolation::spawn(&s).unwrap_err();
    assert!(matches!(err, SpawnError::InheritStdio(0)), "{err}");
}

#[tokio::test]
async fn site_users_cannot_read_or_signal_each_other() {
    require_root();
    let (a, b) = (TestUser::new(), TestUser::new());
    let dir = log_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "b's secret").unwrap();
    std::os::unix::fs::chown(&secret, Some(b.identity.uid), Some(b.identity.gid)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();

    let mut b_proc = isolation::spawn(&spec(
        &b,
        &dir.path().join("b.log"),
        "/bin/sleep",
        &["1000"],
    ))
    .unwrap();
    let script = format!(
        "cat {}; echo cat=$?; kill -0 {}; echo kill=$?",
        secret.display(),
        b_proc.pid()
    );
    let (_, out) = run(&spec(
        &a,
        &dir.path().join("a.log"),
        "/bin/sh",
        &["-c", &script],
    ))
    .await;
    assert!(!out.contains("b's secret"), "{out}");
    assert!(out.contains("Permission denied"), "{out}");
    assert!(out.contains("cat=1"), "{out}");
    assert!(out.contains("kill=1"), "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    assert!(alive(b_proc.pid()));
    b_proc.stop(Duration::from_secs(1)).await.unwrap();
    assert!(!alive(b_proc.pid()));
}

#[tokio::test]
async fn refuses_root_unknown_users_and_gid_zero() {
    require_root();
    let err = SiteIdentity::resolve("root", None).unwrap_err();
    assert!(matches!(err, IdentityError::RootUser(_)), "{err}");
    assert!(
        err.to_string().contains("refuses to run a site as root"),
        "{err}"
    );

    let err = SiteIdentity::resolve("polyhost-no-such-user", None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "user `polyhost-no-such-user` does not exist: create it (e.g. `useradd --system polyhost-no-such-user`) or fix the site's `user`"
    );

    let user = TestUser::new();
    let err = SiteIdentity::resolve(&user.identity.user, Some("root")).unwrap_err();
    assert!(matches!(err, IdentityError::RootGroup(_)), "{err}");
    let err =
        SiteIdentity::resolve(&user.identity.user, Some("polyhost-no-such-group")).unwrap_err();
    assert!(matches!(err, IdentityError::NoSuchGroup(_)), "{err}");

    // polyhost as root never starts a process without a site user.
    let err = isolation::spawn(&SpawnSpec::new("/bin/true")).unwrap_err();
    assert!(matches!(err, SpawnError::RootWithoutIdentity(_)), "{err}");
}

#[tokio::test]
async fn a_failing_setup_step_is_named_and_nothing_runs() {
    require_root();
    let user = TestUser::new();
    let dir = log_dir();
    // 0700 root: the site user cannot enter it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let marker = dir.path().join("ran");
    let mut s = spec(
        &user,
        &dir.path().join("log"),
        "/bin/sh",
        &["-c", &format!("touch {}", marker.display())],
    );
    s.cwd = dir.path().to_path_buf();
    let err = isolation::spawn(&s).unwrap_err();
    match &err {
        SpawnError::Setup { step, source, .. } => {
            assert_eq!(*step, "chdir");
            assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied);
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains("failed at step `chdir`"), "{err}");
    assert!(!marker.exists());

    let mut s = spec(&user, &dir.path().join("log"), "/nonexistent/program", &[]);
    s.cwd = PathBuf::from("/");
    let err = isolation::spawn(&s).unwrap_err();
    assert!(
        matches!(err, SpawnError::Setup { step: "exec", .. }),
        "{err}"
    );
}

// ---------------------------------------------------------------- cgroups

#[tokio::test]
async fn memory_limit_oom_kills_the_site() {
    require_root();
    let user = TestUser::new();
    let root = TestRoot::new();
    if std::fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .contains("memory:")
    {
        // This CI kernel has the v1 memory controller: the detected backend must be v1.
        assert!(
            matches!(root.0.kind(), CgroupKind::V1 { .. }),
            "{}",
            root.0.describe()
        );
    }
    let site = root
        .0
        .site(
            "oom",
            &Limits {
                memory: Some(64 << 20),
                ..Limits::default()
            },
        )
        .unwrap();
    let dir = log_dir();
    let mut s = spec(
        &user,
        &dir.path().join("log"),
        "/usr/bin/python3.11",
        &["-c", "x = b'a' * (200 << 20); print('survived')"],
    );
    s.cgroup = Some(&site);
    let (status, out) = run(&s).await;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?} {out}");
    assert!(!out.contains("survived"));
    let usage = site.usage().unwrap();
    assert!(usage.oom_kills >= 1, "{usage:?}");
    assert!(
        usage.memory_limit.is_some_and(|l| l <= 64 << 20),
        "{usage:?}"
    );
}

#[tokio::test]
async fn process_limit_caps_a_fork_loop_and_stop_leaves_no_survivors() {
    require_root();
    let user = TestUser::new();
    let root = TestRoot::new();
    let site = root
        .0
        .site(
            "forks",
            &Limits {
                processes: Some(20),
                ..Limits::default()
            },
        )
        .unwrap();
    let dir = log_dir();
    let log = dir.path().join("log");
    let mut s = spec(
        &user,
        &log,
        "/bin/sh",
        &[
            "-c",
            "i=0; while [ $i -lt 100 ]; do sleep 1000 & i=$((i+1)); done; sleep 1000",
        ],
    );
    s.cgroup = Some(&site);
    let mut process = isolation::spawn(&s).unwrap();
    let mut max_seen = 0;
    eventually("the fork loop hits the limit", || {
        let current = site.usage().unwrap().pids_current.unwrap();
        max_seen = max_seen.max(current);
        assert!(current <= 20, "pids.current = {current}");
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("fork")
    })
    .await;
    let procs = site.procs().unwrap();
    assert!(procs.len() <= 20 && procs.len() >= 10, "{procs:?}");

    process.stop(Duration::from_millis(200)).await.unwrap();
    assert_eq!(site.procs().unwrap(), Vec::<i32>::new());
    for pid in procs {
        assert!(
            !alive(pid),
            "pid {pid} survived (or is a zombie): {:?}",
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
        );
    }
}

#[tokio::test]
async fn stop_kills_a_grandchild_that_left_the_group() {
    require_root();
    let user = TestUser::new();
    let root = TestRoot::new();
    let site = root.0.site("escape", &Limits::default()).unwrap();
    let dir = log_dir();
    let log = dir.path().join("log");
    let mut s = spec(
        &user,
        &log,
        "/bin/sh",
        &["-c", "setsid sleep 1000 & echo $!; sleep 1000"],
    );
    s.cgroup = Some(&site);
    let mut process = isolation::spawn(&s).unwrap();
    let escaped = read_pid_line(&log).await;
    eventually("the grandchild has its own session", || {
        session_of(escaped).is_some_and(|sid| sid == escaped)
    })
    .await;
    assert_ne!(session_of(escaped), Some(process.pid()));

    process.stop(Duration::from_millis(500)).await.unwrap();
    assert!(!alive(process.pid()));
    assert!(
        !alive(escaped),
        "the escaped grandchild survived or is a zombie"
    );
    assert_eq!(site.procs().unwrap(), Vec::<i32>::new());
}

fn session_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(3)?.parse().ok()
}

#[tokio::test]
async fn cleanup_stale_removes_leftover_site_cgroups() {
    require_root();
    let root = TestRoot::new();
    let stale = root.0.site("stale", &Limits::default()).unwrap();
    let kept = root.0.site("kept", &Limits::default()).unwrap();
    // A process of a "previous run": joined to the cgroup, not a SiteProcess.
    let mut script = String::new();
    for file in stale.procs_files() {
        script.push_str(&format!("echo $$ > {}; ", file.display()));
    }
    script.push_str("exec sleep 1000");
    let leftover = {
        let _pause = isolation::pause_reaper();
        Command::new("/bin/sh")
            .args(["-c", &script])
            .spawn()
            .unwrap()
    };
    let pid = leftover.id() as i32;
    eventually("the leftover joined the stale cgroup", || {
        stale.procs().unwrap() == vec![pid]
    })
    .await;

    let removed = root.0.cleanup_stale(&["kept"]).unwrap();
    assert_eq!(removed, vec!["stale".to_string()]);
    for dir in stale.dirs() {
        assert!(!dir.exists(), "{} is still there", dir.display());
    }
    for dir in kept.dirs() {
        assert!(dir.exists());
    }
    // The leftover was our child: cleanup killed and reaped it.
    assert!(!alive(pid));
    drop(leftover);
}

#[tokio::test]
async fn dropping_a_site_process_kills_its_group_and_cgroup() {
    require_root();
    let user = TestUser::new();
    let root = TestRoot::new();
    let site = root.0.site("drop", &Limits::default()).unwrap();
    let dir = log_dir();

    // Without a cgroup: the process group is killed.
    let log = dir.path().join("nocg.log");
    let process = isolation::spawn(&spec(
        &user,
        &log,
        "/bin/sh",
        &["-c", "sleep 1000 & echo $!; sleep 1000"],
    ))
    .unwrap();
    let leader = process.pid();
    let member = read_pid_line(&log).await;
    drop(process);
    assert!(!alive(leader), "the leader is reaped on drop");
    // The member was reparented to us (subreaper): the orphan reaper collects it.
    eventually("the group member is gone", || {
        isolation::reap_orphans();
        !alive(member)
    })
    .await;

    // With a cgroup: everything in it is killed and reaped.
    let log = dir.path().join("cg.log");
    let mut s = spec(
        &user,
        &log,
        "/bin/sh",
        &["-c", "setsid sleep 1000 & echo $!; sleep 1000"],
    );
    s.cgroup = Some(&site);
    let process = isolation::spawn(&s).unwrap();
    let escaped = read_pid_line(&log).await;
    eventually("the grandchild has its own session", || {
        session_of(escaped) == Some(escaped)
    })
    .await;
    drop(process);
    assert_eq!(site.procs().unwrap(), Vec::<i32>::new());
    assert!(!alive(escaped));
}

#[tokio::test]
async fn parent_death_signal_kills_children_of_an_exited_thread() {
    require_root();
    let user = TestUser::new();
    let dir = log_dir();
    let s = spec(&user, &dir.path().join("log"), "/bin/sleep", &["1000"]);
    // The hazard documented on `spawn`: a child forked from a thread that
    // exits gets SIGKILL. Here that proves PR_SET_PDEATHSIG survived setuid.
    let pid = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let process = isolation::spawn(&s).unwrap();
            let pid = process.pid();
            std::mem::forget(process); // no kill on drop: only the death signal acts
            pid
        })
    })
    .join()
    .unwrap();
    let status = tokio::task::spawn_blocking(move || {
        nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        status,
        nix::sys::wait::WaitStatus::Signaled(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
            false
        )
    );
}

/// The v2 code paths on the real kernel: this host's v2 hierarchy has no
/// memory/pids controllers (they are bound to v1), so it cannot hold limits,
/// but joining, listing, `cgroup.kill` and removal are real. (Limits on v2 are
/// covered by `v2_backend_against_fake_tree_*` unit tests, and by every test
/// here on a v2-only host, where `detect` picks v2.)
#[tokio::test]
async fn v2_join_kill_and_remove_on_the_real_unified_hierarchy() {
    require_root();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let Some(mount) = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
        .and_then(|l| l.split_whitespace().nth(1))
    else {
        panic!("no cgroup2 mount on this host");
    };
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        .unwrap();
    let own_dir = Path::new(mount).join(own.trim_start_matches('/'));
    let root = TestRoot(CgroupRoot::v2_at(&own_dir, &unique("polyhost-test-")).unwrap());
    assert!(matches!(root.0.kind(), CgroupKind::V2 { .. }));
    let site = root.0.site("v2", &Limits::default()).unwrap();
    let user = TestUser::new();
    let dir = log_dir();
    let log = dir.path().join("log");
    let mut s = spec(
        &user,
        &log,
        "/bin/sh",
        &["-c", "setsid sleep 1000 & echo $!; sleep 1000"],
    );
    s.cgroup = Some(&site);
    let mut process = isolation::spawn(&s).unwrap();
    let escaped = read_pid_line(&log).await;
    eventually("the grandchild has its own session", || {
        session_of(escaped) == Some(escaped)
    })
    .await;
    eventually("both processes are in the v2 cgroup", || {
        let procs = site.procs().unwrap();
        procs.contains(&process.pid()) && procs.contains(&escaped)
    })
    .await;
    process.stop(Duration::from_millis(200)).await.unwrap();
    assert!(
        !alive(escaped),
        "{:?}",
        std::fs::read_to_string(format!("/proc/{escaped}/stat"))
    );
    site.remove().unwrap();
    for dir in site.dirs() {
        assert!(!dir.exists());
    }
}

#[tokio::test]
async fn limits_are_written_to_the_detected_hierarchy() {
    require_root();
    let root = TestRoot::new();
    let limits = Limits {
        memory: Some(128 << 20),
        processes: Some(33),
        cpu: Some(0.5),
    };
    let site = root.0.site("limits", &limits).unwrap();
    let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
    match root.0.kind() {
        CgroupKind::V1 { pids, cpu, .. } => {
            let memory = site.dirs()[0];
            assert_eq!(read(memory, "memory.limit_in_bytes").trim(), "134217728");
            if memory.join("memory.memsw.limit_in_bytes").exists() {
                assert_eq!(
                    read(memory, "memory.memsw.limit_in_bytes").trim(),
                    "134217728"
                );
            }
            let pids = pids.as_ref().expect("pids hierarchy").join("limits");
            assert_eq!(read(&pids, "pids.max").trim(), "33");
            let cpu = cpu.as_ref().expect("cpu hierarchy").join("limits");
            assert_eq!(read(&cpu, "cpu.cfs_quota_us").trim(), "50000");
            assert_eq!(read(&cpu, "cpu.cfs_period_us").trim(), "100000");
        }
        CgroupKind::V2 { dir } => {
            let dir = dir.join("limits");
            assert_eq!(read(&dir, "memory.max").trim(), "134217728");
            assert_eq!(read(&dir, "pids.max").trim(), "33");
            assert_eq!(read(&dir, "cpu.max").trim(), "50000 100000");
        }
        CgroupKind::Unavailable { reason } => panic!("no cgroups: {reason}"),
    }
    let usage = site.usage().unwrap();
    assert_eq!(usage.memory_limit, Some(128 << 20));
    assert_eq!(usage.pids_current, Some(0));
    assert_eq!(usage.oom_kills, 0);

    // Reusing the cgroup with no limits lifts them.
    let site = root.0.site("limits", &Limits::default()).unwrap();
    assert_eq!(site.usage().unwrap().memory_limit, None);
}

#[tokio::test]
async fn workers_in_sub_cgroups_stop_alone_and_count_for_the_site() {
    require_root();
    let user = TestUser::new();
    let root = TestRoot::new();
    let site = root
        .0
        .site(
            "workers",
            &Limits {
                processes: Some(50),
                ..Limits::default()
            },
        )
        .unwrap();
    let (w1, w2) = (site.child("w1").unwrap(), site.child("w2").unwrap());
    assert_eq!(w1.name(), "workers/w1");
    let dir = log_dir();
    let start = |cg, log: &str| {
        let mut s = spec(&user, &dir.path().join(log), "/bin/sleep", &["1000"]);
        s.cgroup = Some(cg);
        isolation::spawn(&s).unwrap()
    };
    let mut p1 = start(&w1, "1.log");
    let mut p2 = start(&w2, "2.log");
    assert_eq!(site.procs().unwrap().len(), 2);
    assert_eq!(site.usage().unwrap().pids_current, Some(2));

    p1.stop(Duration::from_millis(200)).await.unwrap();
    assert_eq!(w1.procs().unwrap(), Vec::<i32>::new());
    assert_eq!(w2.procs().unwrap(), vec![p2.pid()]);
    assert!(alive(p2.pid()));
    p2.stop(Duration::from_millis(200)).await.unwrap();
    site.remove().unwrap();
    for dir in w1.dirs().into_iter().chain(site.dirs()) {
        assert!(!dir.exists(), "{}", dir.display());
    }
}

#[tokio::test]
async fn session_rss_measures_the_process_tree_for_the_fallback() {
    require_root();
    let user = TestUser::new();
    let dir = log_dir();
    let log = dir.path().join("log");
    let mut process = isolation::spawn(&spec(
        &user,
        &log,
        "/usr/bin/python3.11",
        &[
            "-c",
            "import sys, time; x = b'a' * (64 << 20); print('ready', flush=True); time.sleep(1000)",
        ],
    ))
    .unwrap();
    eventually("the allocation is done", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ready")
    })
    .await;
    let rss = process.session_rss();
    assert!(rss >= 64 << 20, "rss = {rss}");
    assert!(rss < 256 << 20, "rss = {rss}");
    process.stop(Duration::from_millis(200)).await.unwrap();
    assert_eq!(process.session_rss(), 0);
}

#[tokio::test]
async fn child_gets_rlimits_no_new_privs_and_its_own_session() {
    require_root();
    let user = TestUser::new();
    let dir = log_dir();
    let log = dir.path().join("log");
    let mut s = spec(
        &user,
        &log,
        "/bin/sh",
        &[
            "-c",
            "ulimit -n; ulimit -p; ulimit -c; grep -E '^(NoNewPrivs|CapEff)' /proc/self/status; \
             cut -d' ' -f6 /proc/$$/stat; echo $$; pwd",
        ],
    );
    s.rlimits = isolation::Rlimits {
        nofile: 256,
        nproc: Some(77),
    };
    s.cwd = PathBuf::from("/tmp");
    let (status, out) = run(&s).await;
    assert!(status.success(), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["256", "77", "0"], "{out}");
    assert_eq!(lines[3], "CapEff:\t0000000000000000", "{out}");
    assert_eq!(lines[4], "NoNewPrivs:\t1", "{out}");
    assert_eq!(lines[5], lines[6], "session id = pid: {out}");
    assert_eq!(lines[7], "/tmp");
}

/// The scheduling policy (field 41 of /proc/<pid>/stat: 0 SCHED_OTHER, 3
/// SCHED_BATCH) of a child spawned with and without `batch_scheduling`.
#[tokio::test]
async fn batch_scheduling_is_set_only_when_asked_for() {
    require_root();
    let user = TestUser::new();
    let dir = log_dir();
    for (batch, want) in [(true, "3"), (false, "0")] {
        let log = dir.path().join(format!("log-{batch}"));
        // The shell's own stat line; its command name has no spaces.
        let mut s = spec(
            &user,
            &log,
            "/bin/sh",
            &["-c", "cut -d' ' -f41 /proc/$$/stat"],
        );
        s.batch_scheduling = batch;
        let (status, out) = run(&s).await;
        assert!(status.success(), "{out}");
        assert_eq!(out.trim(), want, "batch_scheduling = {batch}");
    }
}

#[tokio::test]
async fn log_symlinks_are_not_followed() {
    require_root();
    let user = TestUser::new();
    let dir = log_dir();
    let target = dir.path().join("precious");
    std::fs::write(&target, "keep me\n").unwrap();
    let link = dir.path().join("site.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = isolation::spawn(&spec(&user, &link, "/bin/echo", &["pwned"])).unwrap_err();
    assert!(matches!(err, SpawnError::Open { what: "log", .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
}
