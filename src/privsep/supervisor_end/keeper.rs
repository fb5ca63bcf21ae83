//! The router keeper: starts the router process, waits for its `Hello`,
//! tells it what to serve ([`Link::connected`]), relays what it says, and
//! when it dies (or stops answering) restarts it with the same listening
//! sockets, which it never closes (connections wait in their backlog
//! meanwhile).
//!
//! Lifecycle of one router: spawned → `Hello` (within [`HELLO_TIMEOUT`],
//! else killed) → connected (told the groups and the `Desired`) → exits or
//! closes the link → the link forgets it (holds released) → the process is
//! killed if it still runs ([`LINGER`]) and reaped → restart after a backoff
//! of 100 ms doubling to 5 s, back to 100 ms after 60 s up.
//!
//! Stop: `Shutdown` to the router, which stops accepting and lets its
//! requests finish within `shutdown_timeout`; the keeper waits for its
//! exit (bounded by `shutdown_timeout` + 2 s, then SIGKILL) before the
//! sites are stopped.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::isolation::router_process::{spawn_router, RouterProcess, RouterSpec};
use crate::privsep::frame;
use crate::privsep::wire::{ToRouter, ToSupervisor};

use super::link::Link;

/// How long a new router may take to say `Hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a router that closed its link may take to exit before SIGKILL.
const LINGER: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Up this long, a router's death is not part of a crash loop.
const BACKOFF_RESET: Duration = Duration::from_secs(60);

pub use crate::privsep::wire::FDS_ENV;

/// Who the router runs as.
#[derive(Clone, Debug)]
pub struct RouterUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Keeps one router process running (see the module doc).
pub struct Keeper {
    link: Arc<Link>,
    user: RouterUser,
    /// The plain listeners, then the TLS ones: kept open for every router,
    /// closed when polyhost stops (so that new connections are refused
    /// while the router lets its requests finish).
    listeners: std::sync::Mutex<Vec<OwnedFd>>,
    n_http: usize,
    n_https: usize,
    /// `server.shutdown_timeout`.
    grace: Duration,
    /// `server.log_level`, the router's unless `RUST_LOG` says otherwise.
    log_level: String,
    program: PathBuf,
    /// The pid of the router connected now (0: none), for tests and logs.
    pid: Arc<std::sync::atomic::AtomicI32>,
}

/// The wait before the next router: 100 ms, doubling with every death up
/// to 5 s; a router that was up 60 s starts the count again.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The wait after a router that was up for `up` died.
    fn after_death(&mut self, up: Duration) -> Duration {
        if up >= BACKOFF_RESET {
            self.next = BACKOFF_MIN;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        wait
    }
}

/// How one router's life ended.
enum Ended {
    /// polyhost is stopping: the router was stopped.
    Shutdown,
    /// It died or stopped answering: start another.
    Died,
}

impl Keeper {
    pub fn new(
        link: Arc<Link>,
        user: RouterUser,
        listeners: crate::router::Listeners,
        grace: Duration,
        log_level: &str,
    ) -> std::io::Result<Keeper> {
        let n_http = listeners.http.len();
        let n_https = listeners.https.len();
        let mut fds = Vec::with_capacity(n_http + n_https);
        for l in listeners.http.into_iter().chain(listeners.https) {
            // Out of this process's event loop: only the router accepts.
            fds.push(OwnedFd::from(l.into_std()?));
        }
        Ok(Keeper {
            link,
            user,
            listeners: std::sync::Mutex::new(fds),
            n_http,
            n_https,
            grace,
            log_level: log_level.to_owned(),
            program: PathBuf::from("/proc/self/exe"),
            pid: Default::default(),
        })
    }

    /// The pid of the connected router (0: none now).
    pub fn pid_cell(&self) -> Arc<std::sync::atomic::AtomicI32> {
        self.pid.clone()
    }

    /// Keeps a router running until `shutdown`, then stops it and returns
    /// once it exited.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            let started = Instant::now();
            let ended = match self.spawn() {
                Ok((router, link)) => self.keep(router, link, &shutdown).await,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the router process");
                    Ended::Died
                }
            };
            self.pid.store(0, std::sync::atomic::Ordering::SeqCst);
            if matches!(ended, Ended::Shutdown) || shutdown.is_cancelled() {
                return;
            }
            let wait = backoff.after_death(started.elapsed());
            tracing::info!(after = ?wait, "restarting the router process");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Starts a router with its end of a new link.
    fn spawn(&self) -> anyhow::Result<(RouterProcess, tokio::net::UnixStream)> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let ours = tokio::net::UnixStream::from_std(ours)?;
        let listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let fds: Vec<BorrowedFd<'_>> = std::iter::once(theirs.as_fd())
            .chain(listeners.iter().map(AsFd::as_fd))
            .collect();
        let mut env = vec![(
            FDS_ENV.to_owned(),
            format!("3,{},{}", self.n_http, self.n_https),
        )];
        for name in ["RUST_LOG", "RUST_BACKTRACE", "PATH"] {
            if let Ok(v) = std::env::var(name) {
                env.push((name.to_owned(), v));
            }
        }
        if std::env::var_os("RUST_LOG").is_none() {
            // The router logs at the configured level, as the supervisor does.
            env.push(("RUST_LOG".to_owned(), self.log_level.clone()));
        }
        let router = spawn_router(&RouterSpec {
            program: self.program.clone(),
            arg0: "polyhost".into(),
            args: vec!["router".into()],
            env,
            uid: self.user.uid,
            gid: self.user.gid,
            fds,
        })?;
        tracing::info!(pid = router.pid(), user = %self.user.name, "started the router process");
        Ok((router, ours))
    }

    /// One router's life, from its `Hello` to its exit.
    async fn keep(
        &self,
        mut router: RouterProcess,
        link: tokio::net::UnixStream,
        shutdown: &CancellationToken,
    ) -> Ended {
        let pid = router.pid();
        let (mut rd, mut wr) = link.into_split();
        let hello = tokio::select! {
            hello = tokio::time::timeout(HELLO_TIMEOUT, frame::read::<_, ToSupervisor>(&mut rd)) => hello,
            status = router.wait() => {
                tracing::error!(pid, status = ?status, "the router process exited before it said Hello");
                return Ended::Died;
            }
            _ = shutdown.cancelled() => {
                self.stop(&mut router, None).await;
                return Ended::Shutdown;
            }
        };
        match hello {
            Ok(Ok(Some(ToSupervisor::Hello { pid: said }))) => {
                if i64::from(said) != i64::from(pid) {
                    tracing::warn!(pid, said, "the router's Hello names another pid");
                }
            }
            other => {
                let why = match other {
                    Err(_) => format!("no Hello within {HELLO_TIMEOUT:?}"),
                    Ok(Ok(Some(msg))) => format!("its first message was not Hello: {msg:?}"),
                    Ok(Ok(None)) => "it closed the link".to_owned(),
                    Ok(Err(e)) => format!("the link failed: {e}"),
                };
                tracing::error!(
                    pid,
                    "the router process is not answering ({why}); killing it"
                );
                router.signal(Signal::SIGKILL);
                let _ = router.wait().await;
                return Ended::Died;
            }
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<ToRouter>();
        let writer = tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if let Err(e) = frame::write(&mut wr, &msg).await {
                    tracing::warn!(error = %e, "cannot write to the router process");
                    return;
                }
            }
        });
        let mut reader = {
            let link = self.link.clone();
            tokio::spawn(async move {
                loop {
                    match frame::read::<_, ToSupervisor>(&mut rd).await {
                        Ok(Some(msg)) => link.receive(msg),
                        Ok(None) => return "the router closed the link".to_owned(),
                        Err(e) => return format!("reading from the router failed: {e}"),
                    }
                }
            })
        };
        self.link.connected(tx.clone());
        self.pid.store(pid, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(pid, "the router process is up");
        enum End {
            Exited(std::io::Result<std::process::ExitStatus>),
            Link(String),
            Shutdown,
        }
        let end = tokio::select! {
            status = router.wait() => End::Exited(status),
            why = &mut reader => End::Link(why.unwrap_or_else(|e| e.to_string())),
            _ = shutdown.cancelled() => {
                self.stop(&mut router, Some(&tx)).await;
                End::Shutdown
            }
        };
        reader.abort();
        self.link.disconnected();
        drop(tx);
        writer.abort();
        let status = match end {
            End::Shutdown => return Ended::Shutdown,
            End::Exited(status) => status,
            // Its link closed first: it is exiting, or it serves a state
            // nobody updates any more.
            End::Link(why) => match tokio::time::timeout(LINGER, router.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    tracing::error!(pid, why = %why, "the router process closed its link but runs on; killing it");
                    router.signal(Signal::SIGKILL);
                    router.wait().await
                }
            },
        };
        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
        tracing::error!(pid, %status, "the router process died; the listeners stay open (connections wait in their backlog)");
        Ended::Died
    }

    /// Tells the router to stop (`Shutdown`, or SIGTERM before it said
    /// Hello) and waits for its exit: `shutdown_timeout` + 2 s, then SIGKILL.
    async fn stop(
        &self,
        router: &mut RouterProcess,
        out: Option<&mpsc::UnboundedSender<ToRouter>>,
    ) {
        let pid = router.pid();
        match out {
            Some(out) if out.send(ToRouter::Shutdown).is_ok() => {}
            _ => router.signal(Signal::SIGTERM),
        }
        // Ours closed too: once the router closes its own, a new connection
        // is refused rather than left in a backlog nobody accepts from.
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let bound = self.grace + Duration::from_secs(2);
        match tokio::time::timeout(bound, router.wait()).await {
            Ok(Ok(status)) if status.success() => {
                tracing::info!(pid, "the router process stopped");
            }
            Ok(status) => {
                tracing::warn!(pid, status = ?status, "the router process stopped with an error");
            }
            Err(_) => {
                tracing::warn!(
                    pid,
                    ?bound,
                    "the router process did not stop in time; killing it"
                );
                router.signal(Signal::SIGKILL);
                let _ = router.wait().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_five_seconds_and_resets_after_a_minute_up() {
        let mut b = Backoff::default();
        let quick = Duration::from_millis(10);
        let waits: Vec<u64> = (0..8)
            .map(|_| b.after_death(quick).as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(b.after_death(Duration::from_secs(60)), BACKOFF_MIN);
        assert_eq!(b.after_death(quick), Duration::from_millis(200));
    }
}
