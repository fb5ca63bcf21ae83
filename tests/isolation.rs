//! System tests of `polyhost::isolation`, identity and spawn: a child runs
//! as its site user with a clean environment, rlimits, no_new_privs, its own
//! session and scheduling policy; what it may not do; how a failed setup is
//! reported; and its lifetime (parent-death signal, session RSS). Real
//! users and processes: they need root (CI runs them as root) and clean up
//! after themselves. The cgroup tests are in tests/isolation_cgroups.rs.

mod common;
mod isolation_support;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use common::file_text;
use isolation_support::{alive, eventually, log_dir, require_root, run, spec, TestUser};
use polyhost::isolation::{self, IdentityError, SiteIdentity, SpawnError, SpawnSpec};

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

/// On kernels without `close_range` (before Linux 5.11) the child marks its
/// descriptors close-on-exec one by one. polyhost raises its own soft
/// `RLIMIT_NOFILE` to the hard limit, so it may hold descriptors far above a
/// site's limit (8192): those must not reach the child either. The test
/// forces that path where `close_range` works.
#[tokio::test]
async fn without_close_range_no_descriptor_above_the_sites_limit_reaches_the_child() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    require_root();
    isolation::raise_nofile_limit().unwrap();
    const HIGH: i32 = 9000;
    let soft = isolation::nofile_limit().unwrap_or(u64::MAX);
    assert!(
        soft > HIGH as u64,
        "polyhost's RLIMIT_NOFILE ({soft}) is too low to hold descriptor {HIGH}: raise the hard limit (ulimit -Hn)"
    );
    let user = TestUser::new();
    let dir = log_dir();
    let file = std::fs::File::open("/etc/hostname").unwrap();
    // SAFETY (test): F_DUPFD gives the lowest free descriptor ≥ HIGH, without
    // close-on-exec; it is owned (and closed) by `high` from here on.
    let high = unsafe {
        let raw = libc::fcntl(file.as_raw_fd(), libc::F_DUPFD, HIGH);
        assert!(raw >= HIGH, "F_DUPFD: {}", std::io::Error::last_os_error());
        OwnedFd::from_raw_fd(raw)
    };
    struct OneByOne;
    impl Drop for OneByOne {
        fn drop(&mut self) {
            isolation::spawn::mark_fds_one_by_one(false);
        }
    }
    isolation::spawn::mark_fds_one_by_one(true);
    let _reset = OneByOne;
    let log = dir.path().join("fd.log");
    let mut s = spec(&user, &log, "/bin/sh", &["-c", "ls /proc/$$/fd"]);
    s.rlimits.nofile = 8192;
    let (status, out) = run(&s).await;
    assert!(status.success(), "{out}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2"],
        "descriptor {} (not close-on-exec in polyhost) reached the child",
        high.as_raw_fd()
    );
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
    eventually(
        "the allocation is done",
        || file_text(&log),
        |log| log.0.contains("ready"),
    )
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
