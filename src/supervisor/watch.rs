//! Watching one process from outside the group's actor: its exit (or a
//! stop on request), its readiness (the socket accepts), its memory, and how
//! its exit is described in logs.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::group::{Event, STOP_GRACE};
use crate::isolation;

/// Owns a process: reports its exit, or stops it when asked.
pub(super) async fn watch_process(
    id: u64,
    mut process: isolation::SiteProcess,
    stop: oneshot::Receiver<Duration>,
    events: mpsc::UnboundedSender<Event>,
) {
    tokio::select! {
        status = process.wait() => {
            // The leader is gone; end whatever is left of its group and cgroup.
            let _ = process.stop(Duration::from_millis(0)).await;
            let oom_kills = process.cgroup().and_then(|cg| cg.usage().ok()).map_or(0, |u| u.oom_kills);
            if let Some(cg) = process.cgroup() { let _ = cg.remove(); }
            let _ = events.send(Event::Exited { id, status, oom_kills });
        }
        grace = stop => {
            let grace = grace.unwrap_or(STOP_GRACE);
            if let Err(e) = process.stop(grace).await {
                tracing::warn!(pid = process.pid(), error = %e, "stopping a process failed");
            }
            if let Some(cg) = process.cgroup() { let _ = cg.remove(); }
            let _ = events.send(Event::Stopped { id });
        }
    }
}

/// The longest pause between two connection attempts while a process starts.
const READY_POLL_MAX: Duration = Duration::from_millis(10);

/// Polls the socket until it accepts a connection.
pub(super) async fn wait_ready(
    id: u64,
    socket: PathBuf,
    timeout: Duration,
    events: mpsc::UnboundedSender<Event>,
) {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(2);
    loop {
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            let _ = events.send(Event::Ready { id });
            return;
        }
        if Instant::now() >= deadline || events.is_closed() {
            let _ = events.send(Event::NotReady {
                id,
                why: format!(
                    "did not accept connections on {} within {timeout:?}",
                    socket.display()
                ),
            });
            return;
        }
        tokio::time::sleep(delay).await;
        // Capped low: the poll's interval is added to a cold start's first
        // byte (a cap of 50 ms made a 65 ms start answer at 112 ms).
        delay = (delay * 2).min(READY_POLL_MAX);
    }
}

/// "exit status 3" / "killed by signal 9 (SIGKILL)".
pub fn describe_status(s: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => {
            let name = nix::sys::signal::Signal::try_from(sig)
                .map(|s| s.as_str())
                .unwrap_or("?");
            format!("killed by signal {sig} ({name})")
        }
        _ => "unknown status".into(),
    }
}

/// Resident set size of one process, from `/proc/<pid>/statm`. Read by hand:
/// one small file per check is cheaper than refreshing a process table.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64)
}
