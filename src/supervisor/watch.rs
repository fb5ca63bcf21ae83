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
//! accepts, with no poll interval added to its first byte. An `[app]`
//! program gets an HTTP probe ([`Probe::Http`]) the same way: on the socket
//! polyhost listens on, or on the loopback port it binds itself
//! ([`Listen::Port`]), where each attempt also checks that the listener is
//! the site user's ([`super::port::check_owner`]).

use std::net::SocketAddr;
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

/// The longest pause after a process answered a readiness probe with "not
/// yet" (an HTTP `ready` path's 5xx): it serves, so it is not polled hard.
const READY_RETRY_MAX: Duration = Duration::from_millis(100);

/// Where a starting process is expected to serve.
#[derive(Clone, Debug)]
pub(super) struct ReadyTarget {
    /// The socket polyhost bound (its name only, for [`Listen::Port`]).
    pub socket: PathBuf,
    /// The loopback address of a [`Listen::Port`] process.
    pub tcp: Option<SocketAddr>,
    /// Who must own a [`Listen::Port`] process's listener.
    pub owner: u32,
}

/// One readiness attempt's outcome.
enum Attempt {
    Ready,
    /// Not yet (refused, no answer yet, a "not ready" answer); the pause
    /// before the next attempt is at most this.
    NotYet {
        pause: Duration,
        why: String,
    },
}

/// Waits until the process serves (see "Readiness" above), or reports
/// that it did not within `timeout`.
pub(super) async fn wait_ready(
    id: u64,
    target: ReadyTarget,
    listen: Listen,
    timeout: Duration,
    events: crate::supervisor::mailbox::Sender<Event>,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(2);
    let mut why = String::from("no answer");
    loop {
        let attempt = tokio::time::timeout_at(deadline, attempt(&target, &listen))
            .await
            .unwrap_or_else(|_| Attempt::NotYet {
                pause: READY_POLL_MAX,
                why: String::new(),
            });
        let pause = match attempt {
            Attempt::Ready => {
                let _ = events.send(Event::Ready { id });
                return;
            }
            // An attempt the deadline cut says less than the one before it.
            Attempt::NotYet { pause, why: now } => {
                if !now.is_empty() {
                    why = now;
                }
                pause
            }
        };
        if tokio::time::Instant::now() >= deadline || events.is_closed() {
            let what = match &listen {
                Listen::Process => "accept connections".to_owned(),
                Listen::Supervisor { probe, .. } | Listen::Port { probe } => probe_task(probe),
            };
            let place = match target.tcp {
                Some(addr) => addr.to_string(),
                None => target.socket.display().to_string(),
            };
            let _ = events.send(Event::NotReady {
                id,
                why: format!("did not {what} on {place} within {timeout:?} (last: {why})"),
            });
            return;
        }
        tokio::time::sleep(delay).await;
        // Capped low: the poll's interval is added to a cold start's first
        // byte (a cap of 50 ms made a 65 ms start answer at 112 ms).
        delay = (delay * 2).min(pause);
    }
}

/// What a probe asks, for the "did not ..." of a process never ready.
fn probe_task(probe: &Probe) -> String {
    match probe {
        Probe::FastCgiGetValues => "answer a FastCGI request".into(),
        Probe::Http { path: Some(path) } => format!("answer GET {path} with 2xx or 3xx"),
        Probe::Http { path: None } => "answer an HTTP request".into(),
    }
}

/// One readiness attempt: a connection (the process listens itself), or
/// a probe on one (polyhost listens; a port the process bound, whose
/// listener must also be the site user's).
async fn attempt(target: &ReadyTarget, listen: &Listen) -> Attempt {
    let refused = |e: std::io::Error| Attempt::NotYet {
        pause: READY_POLL_MAX,
        why: e.to_string(),
    };
    match listen {
        Listen::Process => match tokio::net::UnixStream::connect(&target.socket).await {
            Ok(_) => Attempt::Ready,
            Err(e) => refused(e),
        },
        Listen::Supervisor { probe, .. } => {
            match tokio::net::UnixStream::connect(&target.socket).await {
                Ok(stream) => self::probe(stream, probe).await,
                Err(e) => refused(e),
            }
        }
        Listen::Port { probe } => {
            let Some(addr) = target.tcp else {
                return refused(std::io::Error::other("no port was picked"));
            };
            let stream = match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => stream,
                Err(e) => return refused(e),
            };
            if let Err(why) = super::port::check_owner(addr.port(), target.owner) {
                return Attempt::NotYet {
                    pause: READY_RETRY_MAX,
                    why,
                };
            }
            self::probe(stream, probe).await
        }
    }
}

/// Sends `probe` on `stream` and waits for its answer.
async fn probe<S>(mut stream: S, probe: &Probe) -> Attempt
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let answer = match probe {
        Probe::FastCgiGetValues => fastcgi_probe(&mut stream).await,
        Probe::Http { path } => http_probe(&mut stream, path.as_deref()).await,
    };
    match answer {
        Ok(()) => Attempt::Ready,
        Err(e) => Attempt::NotYet {
            pause: if e.kind() == std::io::ErrorKind::InvalidData {
                READY_RETRY_MAX
            } else {
                READY_POLL_MAX
            },
            why: e.to_string(),
        },
    }
}

async fn fastcgi_probe<S>(stream: &mut S) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
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
    Ok(())
}

/// The HTTP readiness probe (see [`Probe::Http`]). A status line that is
/// not HTTP, or a `ready` path not answered 2xx/3xx, is `InvalidData`.
async fn http_probe<S>(stream: &mut S, path: Option<&str>) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let request = match path {
        Some(path) => format!("GET {path} HTTP/1.1\r\n"),
        None => "OPTIONS * HTTP/1.1\r\n".to_owned(),
    };
    let request = format!(
        "{request}Host: localhost\r\nUser-Agent: polyhost-probe\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let (line, read) = read_status_line(stream).await?;
    // Bounded: a program that keeps the connection open must not hold up
    // its readiness.
    let _ = tokio::time::timeout(Duration::from_millis(200), drain(stream, read)).await;
    let status = parse_status_line(&line).ok_or_else(|| {
        let shown = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not an HTTP answer: {shown:?}"),
        )
    })?;
    if path.is_some() && !(200..400).contains(&status) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("answered {status}"),
        ));
    }
    Ok(())
}

/// Reads what is left of a probe's answer (up to 64 KiB, until the
/// program closes: the probe asked for `Connection: close`), so that a
/// program writing its body after its head does not see a broken pipe.
async fn drain<S>(stream: &mut S, already: usize)
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut left = (64usize << 10).saturating_sub(already);
    let mut buf = [0u8; 1024];
    while left > 0 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// The first line of an answer (without its CR LF), at most 1 KiB, and
/// how many bytes were read in all.
async fn read_status_line<S>(stream: &mut S) -> std::io::Result<(Vec<u8>, usize)>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut line = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    loop {
        if let Some(end) = line.iter().position(|b| *b == b'\n') {
            let read = line.len();
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok((line, read));
        }
        if line.len() > 1024 {
            let read = line.len();
            return Ok((line, read));
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the connection closed without an answer",
            ));
        }
        line.extend_from_slice(&buf[..n]);
    }
}

/// The status code of `HTTP/1.x NNN reason`.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|b| *b != b' ') {
        return None;
    }
    std::str::from_utf8(code)
        .ok()?
        .parse()
        .ok()
        .filter(|c| *c >= 100)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        for (line, want) in [
            (&b"HTTP/1.1 200 OK"[..], Some(200)),
            (b"HTTP/1.0 302 Found", Some(302)),
            (b"HTTP/1.1 404", Some(404)),
            (b"HTTP/1.1 099 x", None),
            (b"HTTP/2 200 OK", None),
            (b"SSH-2.0-OpenSSH", None),
            (b"HTTP/1.1 20x OK", None),
            (b"HTTP/1.1 2000 OK", None),
        ] {
            assert_eq!(
                parse_status_line(line),
                want,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    /// Runs the HTTP probe against a peer that answers `answer`; returns
    /// what the probe sent and its result.
    async fn http_against(
        path: Option<&str>,
        answer: &'static [u8],
    ) -> (String, std::io::Result<()>) {
        let (mut ours, mut theirs) = tokio::io::duplex(4096);
        let peer = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"\r\n\r\n") {
                let n = theirs.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            theirs.write_all(answer).await.unwrap();
            String::from_utf8(got).unwrap()
        });
        let result = http_probe(&mut ours, path).await;
        (peer.await.unwrap(), result)
    }

    #[tokio::test]
    async fn the_http_probe_asks_ready_and_wants_2xx_or_3xx() {
        let (sent, ok) = http_against(Some("/healthz"), b"HTTP/1.1 204 No Content\r\n\r\n").await;
        assert!(
            sent.starts_with("GET /healthz HTTP/1.1\r\nHost: localhost\r\n"),
            "{sent}"
        );
        assert!(
            sent.contains("User-Agent: polyhost-probe\r\nConnection: close\r\n"),
            "{sent}"
        );
        ok.unwrap();
        let (_, not_yet) = http_against(Some("/healthz"), b"HTTP/1.1 503 Starting\r\n\r\n").await;
        assert_eq!(not_yet.unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn without_ready_any_http_answer_to_options_will_do() {
        let (sent, ok) = http_against(None, b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        assert!(sent.starts_with("OPTIONS * HTTP/1.1\r\n"), "{sent}");
        ok.unwrap();
        let (_, garbage) = http_against(None, b"hello there\n").await;
        assert_eq!(garbage.unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    }
}
