//! Binary upgrade without a dropped request (`polyhost upgrade`, SIGUSR2).
//!
//! ```text
//! old supervisor (instance A)                  new supervisor (instance B)
//!   socketpair; start <binary> <args>  ──▶       (POLYHOST_UPGRADE_FD=3)
//!   Handover + SCM_RIGHTS: HTTP, HTTPS,  ──▶     takes them (take_inherited),
//!   admin socket, admin TCP, metrics             loads the configuration,
//!                                                starts its sites and router
//!                                      ◀──  Ready { pid }  (its router serves)
//!   MAINPID=<new> READY=1 (sd_notify)
//!   stops: its router stops accepting, finishes in-flight requests and
//!   WebSockets within shutdown_timeout; then its sites drain and stop
//! ```
//!
//! A new binary that exits, closes the socket or is not ready within the
//! timeout is stopped (SIGTERM, then SIGKILL after `shutdown_timeout` + 2 s);
//! whatever it left in its site cgroups is killed; the old one serves on,
//! untouched: it never stopped accepting. One upgrade at a time, and none
//! while a predecessor still drains.
//!
//! The binary is the path polyhost was started from, resolved at start
//! ([`remember_binary`]: `argv[0]`, made absolute or found on `PATH`):
//! after a package upgrade `/proc/self/exe` names a deleted file, and the
//! new binary is at that path. The two instances
//! overlap: each names its runtime sockets and cgroups apart and leaves the
//! other's alone (`supervisor::instance`).

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;

use super::frame;
use crate::admin::ListenerFds;
use crate::app::upgrade::{UpgradeError, Upgraded, Upgrader};
use crate::app::Server;
use crate::isolation::successor::{self, SUCCESSOR_FD};
use crate::supervisor::instance::{self, Instance};

/// Set in the new binary's environment: the descriptor of its end of the
/// upgrade socket.
pub const UPGRADE_ENV: &str = "POLYHOST_UPGRADE_FD";

/// How long a new binary whose upgrade socket closed may take to exit
/// before the failure is reported as the socket's (it is stopped anyway).
const LINK_TO_EXIT: Duration = Duration::from_secs(2);

/// The binary and arguments polyhost was started with.
static STARTED_AS: OnceLock<(PathBuf, Vec<OsString>)> = OnceLock::new();

/// Records the binary's path (resolved now) and the arguments: call first
/// thing in `serve`.
pub fn remember_binary() {
    let args = std::env::args_os().skip(1).collect();
    let _ = STARTED_AS.set((started_from(), args));
}

/// The path this binary was started from, absolute: `argv[0]` as given
/// (against the working directory, or found on `PATH` as the shell found
/// it), so that a symlink an upgrade repoints is followed anew; else what
/// `/proc/self/exe` names now.
fn started_from() -> PathBuf {
    let exe = || std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let Some(arg0) = std::env::args_os().next().map(PathBuf::from) else {
        return exe();
    };
    let found = if arg0.components().count() > 1 {
        Some(arg0)
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(&arg0))
                .find(|candidate| candidate.is_file())
        })
    };
    found
        .and_then(|p| std::path::absolute(p).ok())
        .unwrap_or_else(exe)
}

/// What the old supervisor sends with the descriptors, in their order.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Handover {
    instance: Instance,
    predecessor: i32,
    http: usize,
    https: usize,
    admin_tcp: bool,
    metrics: bool,
}

/// What the new supervisor answers.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum FromSuccessor {
    Ready { pid: u32 },
}

/// The old side: what it hands over, and the upgrade itself.
pub struct Handing {
    server: std::sync::Weak<Server>,
    /// Dropped when shutdown begins: a stopping polyhost keeps no listening
    /// socket open (new connections are refused, not left in a backlog).
    held: Arc<std::sync::Mutex<Option<Held>>>,
    shutdown: CancellationToken,
    busy: tokio::sync::Mutex<()>,
}

/// Duplicates of every listening socket.
struct Held {
    http: Vec<OwnedFd>,
    https: Vec<OwnedFd>,
    admin: ListenerFds,
}

impl Held {
    fn handover(&self) -> Handover {
        Handover {
            instance: instance::current().other(),
            predecessor: std::process::id() as i32,
            http: self.http.len(),
            https: self.https.len(),
            admin_tcp: self.admin.tcp.is_some(),
            metrics: self.admin.metrics.is_some(),
        }
    }

    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.http
            .iter()
            .chain(&self.https)
            .chain(std::iter::once(&self.admin.unix))
            .chain(&self.admin.tcp)
            .chain(&self.admin.metrics)
            .map(AsFd::as_fd)
            .collect()
    }
}

impl Handing {
    /// Keeps duplicates of every listening socket (`http`, `https`,
    /// `admin`) for a successor; on success it cancels `shutdown`.
    pub fn new(
        server: &Arc<Server>,
        listeners: &crate::router::Listeners,
        admin: ListenerFds,
        shutdown: CancellationToken,
    ) -> std::io::Result<Handing> {
        let dup = |ls: &[tokio::net::TcpListener]| {
            ls.iter()
                .map(|l| l.as_fd().try_clone_to_owned())
                .collect::<std::io::Result<Vec<_>>>()
        };
        let held = Arc::new(std::sync::Mutex::new(Some(Held {
            http: dup(&listeners.http)?,
            https: dup(&listeners.https)?,
            admin,
        })));
        tokio::spawn({
            let (held, shutdown) = (held.clone(), shutdown.clone());
            async move {
                shutdown.cancelled().await;
                held.lock().unwrap_or_else(|p| p.into_inner()).take();
            }
        });
        Ok(Handing {
            server: Arc::downgrade(server),
            held,
            shutdown,
            busy: tokio::sync::Mutex::new(()),
        })
    }

    /// Sends the handover and the descriptors (a small message on a fresh
    /// socket pair: it does not block).
    fn send(&self, ours: &UnixStream) -> Result<(), String> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let held = held.as_ref().ok_or("polyhost is shutting down")?;
        let bytes = serde_json::to_vec(&held.handover()).map_err(|e| e.to_string())?;
        successor::send_with_fds(ours, &bytes, &held.fds())
            .map_err(|e| format!("cannot hand over the listeners: {e}"))
    }

    async fn run(&self, timeout: Duration) -> Result<Upgraded, UpgradeError> {
        let _busy = self.busy.try_lock().map_err(|_| UpgradeError::Busy)?;
        if self.shutdown.is_cancelled() {
            return Err(UpgradeError::ShuttingDown);
        }
        if let Some(pid) = instance::predecessor_running() {
            return Err(UpgradeError::PredecessorRunning(pid));
        }
        let (program, args) = STARTED_AS
            .get()
            .cloned()
            .unwrap_or_else(|| (PathBuf::from("/proc/self/exe"), vec!["serve".into()]));
        let binary = program.display().to_string();
        let start_err = |reason: String| UpgradeError::Start {
            binary: binary.clone(),
            reason,
        };
        let (ours, theirs) = UnixStream::pair().map_err(|e| start_err(e.to_string()))?;
        let env = [(UPGRADE_ENV.to_owned(), SUCCESSOR_FD.to_string())];
        // WATCHDOG_PID names this process: without it the new one pings
        // the service manager's watchdog too (sd_notify(3)), and is heard
        // once it is the main process (MAINPID=).
        let mut child =
            successor::spawn_successor(&program, &args, &env, &["WATCHDOG_PID"], theirs.as_fd())
                .map_err(|e| start_err(e.to_string()))?;
        drop(theirs);
        let pid = child.pid();
        tracing::info!(pid, binary = %binary, ?timeout, "upgrade: started the new binary; handing over the listeners");
        let outcome = self.hand_over(ours, &mut child, timeout).await;
        match outcome {
            Ok(new_pid) => {
                instance::set_handed_over();
                let status = format!(
                    "upgraded: the new polyhost (pid {new_pid}) serves; pid {} drains and exits",
                    std::process::id()
                );
                crate::notify::main_pid(new_pid, &status);
                tracing::info!(
                    new_pid,
                    "upgrade: the new polyhost serves; this one stops accepting and drains"
                );
                self.shutdown.cancel();
                Ok(Upgraded {
                    old_pid: std::process::id(),
                    new_pid,
                    binary,
                })
            }
            Err(reason) => {
                tracing::error!(pid, %reason, "upgrade: the new binary failed; stopping it, this polyhost serves on");
                self.stop_failed(&mut child).await;
                Err(UpgradeError::Failed {
                    binary,
                    pid,
                    reason,
                })
            }
        }
    }

    /// Sends the listeners and waits for `Ready`, the child's exit or the
    /// timeout.
    async fn hand_over(
        &self,
        ours: UnixStream,
        child: &mut successor::Successor,
        timeout: Duration,
    ) -> Result<u32, String> {
        if let Err(why) = self.send(&ours) {
            return Err(exit_or(child, why).await);
        }
        ours.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut ours = tokio::net::UnixStream::from_std(ours).map_err(|e| e.to_string())?;
        let link_failed = tokio::select! {
            said = tokio::time::timeout(timeout, frame::read::<_, FromSuccessor>(&mut ours)) => match said {
                Err(_) => return Err(format!("it did not say it was ready within {timeout:?}")),
                Ok(Ok(Some(FromSuccessor::Ready { pid }))) => return Ok(pid),
                Ok(Ok(None)) => "it closed the upgrade socket before it was ready".to_owned(),
                Ok(Err(e)) => format!("reading its answer failed: {e}"),
            },
            status = child.wait() => return Err(exited(status)),
        };
        Err(exit_or(child, link_failed).await)
    }

    /// SIGTERM (its router lets what it accepted finish), then SIGKILL; then
    /// whatever it left in its site cgroups.
    async fn stop_failed(&self, child: &mut successor::Successor) {
        child.signal(Signal::SIGTERM);
        let grace = self
            .server
            .upgrade()
            .map_or(Duration::from_secs(10), |s| s.shutdown_timeout())
            + Duration::from_secs(2);
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            child.signal(Signal::SIGKILL);
            let _ = child.wait().await;
        }
        if let Some(server) = self.server.upgrade() {
            server.remove_successor_leftovers();
        }
    }
}

fn exited(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => format!("it exited ({s})"),
        Err(e) => format!("waiting for it failed: {e}"),
    }
}

/// The upgrade socket failed: most likely because the new binary exited;
/// says so if it did, else `why`.
async fn exit_or(child: &mut successor::Successor, why: String) -> String {
    match tokio::time::timeout(LINK_TO_EXIT, child.wait()).await {
        Ok(status) => exited(status),
        Err(_) => why,
    }
}

impl Upgrader for Handing {
    fn upgrade(&self, timeout: Duration) -> BoxFuture<'_, Result<Upgraded, UpgradeError>> {
        Box::pin(self.run(timeout))
    }
}

/// The new side: what a predecessor handed over.
pub struct Inherited {
    pub http: Vec<std::net::TcpListener>,
    pub https: Vec<std::net::TcpListener>,
    pub admin: ListenerFds,
    /// Where to say `Ready`.
    link: UnixStream,
}

/// In a new binary started by an upgrade (`POLYHOST_UPGRADE_FD` set):
/// takes the upgrade socket and the listeners sent over it, and makes this
/// process the instance it was told to be. `None` in a fresh start.
pub fn take_inherited() -> Option<Result<Inherited, String>> {
    let fd = std::env::var(UPGRADE_ENV).ok()?;
    Some(take(&fd))
}

fn take(fd: &str) -> Result<Inherited, String> {
    let fd: i32 = fd
        .parse()
        .map_err(|_| format!("{UPGRADE_ENV}={fd:?} is not a descriptor number"))?;
    let link = UnixStream::from(
        crate::isolation::inherited::take_inherited(fd).map_err(|e| e.to_string())?,
    );
    let (bytes, fds) = successor::recv_with_fds(&link, 4096)
        .map_err(|e| format!("cannot receive the listeners: {e}"))?;
    let h: Handover = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the predecessor's handover is unreadable: {e}"))?;
    let expected = h.http + h.https + 1 + usize::from(h.admin_tcp) + usize::from(h.metrics);
    if fds.len() != expected {
        return Err(format!(
            "the predecessor sent {} descriptors, its handover names {expected}",
            fds.len()
        ));
    }
    let mut fds = fds.into_iter();
    let mut tcp = |n: usize| -> Vec<std::net::TcpListener> {
        fds.by_ref()
            .take(n)
            .map(std::net::TcpListener::from)
            .collect()
    };
    let (http, https) = (tcp(h.http), tcp(h.https));
    let unix = fds.next().ok_or("no admin socket")?;
    let admin = ListenerFds {
        unix,
        tcp: if h.admin_tcp { fds.next() } else { None },
        metrics: if h.metrics { fds.next() } else { None },
    };
    instance::become_successor(h.instance, h.predecessor);
    Ok(Inherited {
        http,
        https,
        admin,
        link,
    })
}

impl Inherited {
    /// The HTTP and HTTPS listeners, for the router (in a tokio runtime).
    pub fn listeners(&mut self) -> std::io::Result<crate::router::Listeners> {
        let tokio = |ls: Vec<std::net::TcpListener>| {
            ls.into_iter()
                .map(|l| {
                    l.set_nonblocking(true)?;
                    tokio::net::TcpListener::from_std(l)
                })
                .collect::<std::io::Result<Vec<_>>>()
        };
        Ok(crate::router::Listeners {
            http: tokio(std::mem::take(&mut self.http))?,
            https: tokio(std::mem::take(&mut self.https))?,
        })
    }

    /// The admin listeners' descriptors and the readiness report.
    pub fn into_parts(self) -> (ListenerFds, ReadyReport) {
        (self.admin, ReadyReport { link: self.link })
    }
}

/// Says `Ready` to the predecessor, once.
pub struct ReadyReport {
    link: UnixStream,
}

impl ReadyReport {
    /// Tells the predecessor this process serves (it then stops accepting).
    pub async fn ready(self) {
        let sent = async {
            self.link.set_nonblocking(true)?;
            let mut link = tokio::net::UnixStream::from_std(self.link)?;
            frame::write(
                &mut link,
                &FromSuccessor::Ready {
                    pid: std::process::id(),
                },
            )
            .await
        };
        match sent.await {
            Ok(()) => tracing::info!("upgrade: told the predecessor this polyhost serves"),
            Err(e) => {
                tracing::error!(error = %e, "upgrade: cannot tell the predecessor this polyhost serves")
            }
        }
    }
}
