//! Support for the system tests of `polyhost::isolation` (tests/isolation.rs:
//! identity, spawn and process lifetime; tests/isolation_cgroups.rs: cgroups):
//! throw-away users and cgroups removed on drop (also when a test fails),
//! spawn specs, and reading what a child wrote or which session it is in.
#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use polyhost::isolation::{self, CgroupRoot, SiteIdentity, SpawnSpec};

use crate::common::{self, file_text};

pub fn unique(prefix: &str) -> String {
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

pub fn require_root() {
    assert!(
        isolation::running_as_root(),
        "the isolation system tests need root (they create users and cgroups)"
    );
    isolation::set_child_subreaper().unwrap();
}

/// A throw-away system user (`common::TestUser`, deleted on drop) and its identity.
pub struct TestUser {
    pub identity: SiteIdentity,
    _user: common::TestUser,
}

impl TestUser {
    pub fn new() -> TestUser {
        let user = common::TestUser::new();
        TestUser {
            identity: SiteIdentity::resolve(&user.name, None).unwrap(),
            _user: user,
        }
    }
}

/// A private polyhost parent cgroup, removed (with everything in it) on drop.
pub struct TestRoot(pub CgroupRoot);

impl TestRoot {
    pub fn new() -> TestRoot {
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

pub fn spec<'a>(user: &TestUser, log: &Path, program: &str, args: &[&str]) -> SpawnSpec<'a> {
    let mut spec = SpawnSpec::new(program);
    spec.args = args.iter().map(|a| a.to_string()).collect();
    spec.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
    spec.identity = Some(user.identity.clone());
    spec.log = Some(log.to_path_buf());
    spec
}

/// Runs to completion; returns the exit status and everything it wrote.
pub async fn run(spec: &SpawnSpec<'_>) -> (std::process::ExitStatus, String) {
    let mut process = isolation::spawn(spec).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), process.wait())
        .await
        .expect("process did not finish")
        .unwrap();
    process.stop(Duration::ZERO).await.unwrap();
    let out = std::fs::read_to_string(spec.log.as_ref().unwrap()).unwrap_or_default();
    (status, out)
}

/// Waits (bounded; panics with what it saw) until `probe` gives a value
/// for which `done` holds, and returns it.
pub async fn eventually<T: std::fmt::Debug>(
    what: &str,
    probe: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let mut probe = probe;
    common::wait_for(what, Duration::from_secs(10), async || probe(), done).await
}

pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

pub fn log_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Waits for the first line of a log, a pid, and returns it.
pub async fn read_pid_line(log: &Path) -> i32 {
    let pid = |text: &str| text.lines().next().and_then(|l| l.trim().parse().ok());
    let text = eventually(
        "the pid line in the log",
        || file_text(log),
        |t| pid(&t.0).is_some(),
    )
    .await;
    pid(&text.0).unwrap()
}

/// The session of process `pid` (field 6 of its stat line).
pub fn session_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(3)?.parse().ok()
}
