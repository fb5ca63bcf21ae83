//! Watching one process from outside the group's actor: its exit (or a
//! stop on request), its readiness, its memory, and how its exit is
//! described in logs.
//!
//! # Readiness
//!
//! polyhost binds every socket itself ([`super::sockets`]), so "the socket
//! accepts a connection" only means something when the process is the one
//! that listens ([`Listen::Process`], polyhost-python: it listens once its
//! app is imported): then the socket is polled with connection attempts,
//! every 2 ms at first, at most every 10 ms. When polyhost
//! listens itself ([`Listen::Supervisor`], php-fpm), a connection succeeds
//! at once and waits in the backlog; readiness is then the answer to a
//! [`Probe`] sent on it. The probe waits for the answer rather than
//! polling, so a cold start is seen ready the moment a php-fpm child
//! accepts, with no poll interval added to its first byte.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use super::launcher::{Listen, Probe};
use super::mailbox::{Event, STOP_GRACE};
use crate::isolation;

/// Owns a process: reports its exit, or stops it when asked.
pub(super) async fn watch_process(
    id: u64,
    mut process: isolation::SiteProcess,
    stop: oneshot::Receiver<Duration>,
    events: crate::supervisor::mailbox::Sender<Event>,
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

/// Waits until the process serves on `socket` (see "Readiness" above), or
/// reports that it did not within `timeout`.
pub(super) async fn wait_ready(
    id: u64,
    socket: PathBuf,
    listen: Listen,
    timeout: Duration,
    events: crate::supervisor::mailbox::Sender<Event>,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(2);
    loop {
        let ready = match &listen {
            Listen::Process => tokio::net::UnixStream::connect(&socket).await.is_ok(),
            Listen::Supervisor { probe, .. } => {
                tokio::time::timeout_at(deadline, self::probe(&socket, *probe))
                    .await
                    .is_ok_and(|answered| answered.is_ok())
            }
        };
        if ready {
            let _ = events.send(Event::Ready { id });
            return;
        }
        if tokio::time::Instant::now() >= deadline || events.is_closed() {
            let what = match &listen {
                Listen::Process => "accept connections",
                Listen::Supervisor { .. } => "answer a FastCGI request",
            };
            let _ = events.send(Event::NotReady {
                id,
                why: format!("did not {what} on {} within {timeout:?}", socket.display()),
            });
            return;
        }
        tokio::time::sleep(delay).await;
        // Capped low: the poll's interval is added to a cold start's first
        // byte (a cap of 50 ms made a 65 ms start answer at 112 ms).
        delay = (delay * 2).min(READY_POLL_MAX);
    }
}

/// Sends `probe` on a new connection to `socket` and waits for its answer.
async fn probe(socket: &std::path::Path, probe: Probe) -> std::io::Result<()> {
    let mut stream = tokio::net::UnixStream::connect(socket).await?;
    match probe {
        Probe::FastCgiGetValues => {
            // One FCGI_GET_VALUES record (version 1, type 9, request id 0)
            // asking for FCGI_MPXS_CONNS, a variable every php-fpm knows
            // (some PHP versions loop forever on an unknown name).
            const NAME: &[u8] = b"FCGI_MPXS_CONNS";
            let mut record = vec![1, 9, 0, 0, 0, NAME.len() as u8 + 2, 0, 0];
            record.extend([NAME.len() as u8, 0]);
            record.extend(NAME);
            stream.write_all(&record).await?;
            let mut head = [0u8; 8];
            stream.read_exact(&mut head).await?;
            // FCGI_GET_VALUES_RESULT is type 10.
            if head[0] != 1 || head[1] != 10 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("not a FastCGI answer: {head:?}"),
                ));
            }
        }
    }
    Ok(())
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
