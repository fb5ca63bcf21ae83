//! Waiting for a state instead of sleeping: bounded polls that say what
//! they saw when they give up, and marker files test apps leave when a
//! request reaches them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::TestUser;

/// Retries `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Polls `probe` (every 20 ms) until `done` holds for what it returns, for
/// at most `within`, and returns that value. On timeout it panics naming
/// `what` and showing the last value seen. For a state an action causes
/// later than the action returns (a process forked, a log line flushed, a
/// request reaching the app): assert on the returned value, not on a fresh read.
pub async fn wait_for<T: std::fmt::Debug>(
    what: &str,
    within: Duration,
    mut probe: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let seen = probe().await;
        if done(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}; last seen: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Text shown as it is (not escaped) in a [`wait_for`] timeout, e.g. a log.
pub struct Shown(pub String);

impl std::fmt::Debug for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\n{}", self.0)
    }
}

/// The text of file `path`, empty while it does not exist.
pub fn file_text(path: &Path) -> Shown {
    Shown(std::fs::read_to_string(path).unwrap_or_default())
}

/// A directory in `dir` that only `user` (and root) may write to, where a
/// test app leaves marker files (`/slow?mark=PATH` of tests/apps/pyapp.py,
/// `slow.php?mark=PATH`): a marker is there once the app runs the request.
pub fn marker_dir(dir: &Path, user: &TestUser) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let marks = dir.join(format!("marks-{}", user.name));
    std::fs::create_dir_all(&marks).unwrap();
    std::os::unix::fs::chown(&marks, Some(user.uid), None).unwrap();
    std::fs::set_permissions(&marks, std::fs::Permissions::from_mode(0o700)).unwrap();
    marks
}

/// Waits (bounded) until `marker` exists: the app is running that request.
pub async fn wait_for_marker(marker: &Path) {
    wait_for(
        &format!("the app to create {}", marker.display()),
        Duration::from_secs(20),
        async || marker.exists(),
        |&there| there,
    )
    .await;
}
