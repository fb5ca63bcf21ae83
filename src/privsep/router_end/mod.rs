//! The router process's side of privilege separation (`polyhost router`,
//! started by the supervisor as `router_user`): it serves HTTP on listeners
//! it inherited, for the sites and processes its supervisor tells it of.
//!
//! # Lifecycle
//!
//! ```text
//! start: take the inherited descriptors (POLYHOST_ROUTER_FDS) → Hello
//!   → wait for the first Desired (Group updates before it are applied)
//!   → build the sites, swap the table → Applied → accept connections
//! running: Changes → the complete state they make from the one held (refused
//!          when made against another version: the router ends, see below)
//!          → rebuild what changed, swap, settle what it replaced → Applied
//!          (a complete Desired: the same, from it)
//!          Group → the attached group's snapshot (supervisor::attached)
//!          StatsRequest → Stats
//!          ReopenLogs → every site log's lines written, descriptors closed → LogsReopened
//!          OnDemandCertificate → the handshake waiting for it goes on
//!          OnDemandRenewed → new handshakes for the name get the new certificate
//!          a handshake's on-demand name → OnDemandCertificate (router::tls)
//!          every 10 ms while an unpublished process has leases: Drained once it has none
//!          every 250 ms: Usage of the groups used since the last one
//!          a request's Start / Recycle → forwarded as they come
//! end: Shutdown, the link's end (the supervisor is gone; PDEATHSIG too),
//!      Changes it cannot apply (the supervisor restarts it and sends the
//!      complete state) or SIGTERM/SIGINT → stop accepting, in-flight
//!      requests finish within shutdown_timeout, exit
//! ```
//!
//! - [`state`]: the sites, rebuilt from each `Desired` (what is kept,
//!   rerouted, stopped, built).
//! - [`link`]: frames out in order, and the messages to and from the plain
//!   types of `supervisor::attached`.
//!
//! Invariant: the router accepts nothing before it serves its first
//! `Desired`, and says `Applied` for a version only once its table serves
//! it and the Python upstreams it replaced have no request queued (the
//! supervisor then retires their processes), in version order.

mod link;
mod on_demand;
pub(crate) mod state;

use std::io;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{TcpListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::app::router_link::{Desired, StatsReply};
use crate::privsep::frame;
use crate::privsep::wire::{ToRouter, ToSupervisor};
use crate::router::{Listeners, SharedTable};
use crate::supervisor::{Attachments, Supervisor};
use link::Outbox;
use state::RouterState;

pub use crate::privsep::wire::FDS_ENV;

/// How often unpublished processes are checked for their last lease.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// How often the groups' usage is reported.
const USAGE_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("{FDS_ENV}: {0} (polyhost router is started by polyhost serve, not by hand)")]
    Fds(String),
    #[error("inherited descriptor {fd}: {source}")]
    Inherited { fd: i32, source: io::Error },
    #[error("the link to the supervisor: {0}")]
    Link(io::Error),
    #[error("cannot start the router threads (router_threads): {0}")]
    RouterThreads(io::Error),
}

/// Why the router stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The supervisor said so (polyhost stops).
    Shutdown,
    /// The link ended or broke: the supervisor is gone.
    SupervisorGone,
    /// The caller's token (a signal).
    Stopped,
}

/// Ends the router once, for the first reason given.
pub(crate) struct Ending {
    token: CancellationToken,
    why: OnceLock<Ended>,
}

impl Ending {
    pub(crate) fn end(&self, why: Ended) {
        let _ = self.why.set(why);
        self.token.cancel();
    }
}

/// The descriptors `polyhost serve` hands its router.
pub struct Inherited {
    pub link: UnixStream,
    pub listeners: Listeners,
}

/// Takes over the descriptors [`FDS_ENV`] names. Call once, at start,
/// within the tokio runtime.
pub fn inherited_from_env() -> Result<Inherited, RouterError> {
    let spec = std::env::var(FDS_ENV).map_err(|_| RouterError::Fds("not set".into()))?;
    let (link_fd, http, https) = parse_fds(&spec).map_err(RouterError::Fds)?;
    let take = |fd: i32| {
        crate::isolation::inherited::take_inherited(fd)
            .map_err(|source| RouterError::Inherited { fd, source })
    };
    let link = StdUnixStream::from(take(link_fd)?);
    let link = link
        .set_nonblocking(true)
        .and_then(|()| UnixStream::from_std(link))
        .map_err(|source| RouterError::Inherited {
            fd: link_fd,
            source,
        })?;
    let mut listeners = Listeners::default();
    for (i, fd) in (link_fd + 1..).take(http + https).enumerate() {
        let std = std::net::TcpListener::from(take(fd)?);
        let listener = std
            .set_nonblocking(true)
            .and_then(|()| std.local_addr().map(drop))
            .and_then(|()| TcpListener::from_std(std))
            .map_err(|source| RouterError::Inherited { fd, source })?;
        match i < http {
            true => listeners.http.push(listener),
            false => listeners.https.push(listener),
        }
    }
    Ok(Inherited { link, listeners })
}

/// `<link>,<n_http>,<n_https>`.
fn parse_fds(spec: &str) -> Result<(i32, usize, usize), String> {
    let parts: Vec<&str> = spec.split(',').collect();
    let bad = || format!("{spec:?} is not <link descriptor>,<plain listeners>,<TLS listeners>");
    let [link, http, https] = parts[..] else {
        return Err(bad());
    };
    let link: i32 = link.trim().parse().map_err(|_| bad())?;
    let http: usize = http.trim().parse().map_err(|_| bad())?;
    let https: usize = https.trim().parse().map_err(|_| bad())?;
    if link <= 2 {
        return Err(bad());
    }
    Ok((link, http, https))
}

/// `polyhost router`: [`serve_link`] over the inherited descriptors.
pub async fn run(stop: CancellationToken) -> Result<Ended, RouterError> {
    // First: no core dump, no ptrace by its own user (cannot cross exec).
    if let Err(e) = crate::isolation::router_process::harden_self() {
        tracing::warn!(error = %e, "cannot make the router process undumpable");
    }
    let Inherited { link, listeners } = inherited_from_env()?;
    serve_link(link, listeners, stop).await
}

/// Serves `listeners` for the supervisor at the other end of `link`, as in
/// the module doc, until it says `Shutdown`, goes away, or `stop` is
/// cancelled. The library entry of `polyhost router`, and what tests drive
/// with a stand-in supervisor.
pub async fn serve_link(
    link: UnixStream,
    listeners: Listeners,
    stop: CancellationToken,
) -> Result<Ended, RouterError> {
    let ending = Arc::new(Ending {
        token: stop.child_token(),
        why: OnceLock::new(),
    });
    let reason = |ending: &Ending| *ending.why.get_or_init(|| Ended::Stopped);
    let (mut read, write) = link.into_split();
    let (out, queue) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    tasks.spawn(link::write_frames(write, queue, ending.clone()));
    let _ = out.send(ToSupervisor::Hello {
        pid: std::process::id(),
    });
    let (attachments, requests) = Attachments::new();
    let first = tokio::select! {
        first = first_desired(&mut read, &attachments, &out) => first?,
        _ = ending.token.cancelled() => Err(Ended::Stopped),
    };
    let desired = match first {
        Ok(desired) => desired,
        Err(why) => {
            ending.end(why);
            return Ok(reason(&ending));
        }
    };
    let server = desired.config.server.clone();
    let supervisor = Supervisor::for_router(&server, attachments.clone());
    let mut state = RouterState::new(supervisor, server.log_dir.clone());
    state.apply(&desired);
    if let Some(on_demand) = &desired.config.server.acme.on_demand {
        crate::router::tls::set_on_demand_waiting(on_demand.waiting);
    }
    let table: SharedTable = Arc::new(ArcSwap::from_pointee(state.table()));
    tracing::info!(
        sites = desired.config.sites.len(),
        version = desired.version,
        "serving"
    );
    let _ = out.send(ToSupervisor::Applied {
        version: desired.version,
    });
    let on_demand = Arc::new(on_demand::LinkSource::new(out.clone()));
    crate::router::tls::set_on_demand_source(Arc::new(on_demand.clone()));
    tasks.spawn(link::forward_requests(requests, out.clone()));
    tasks.spawn(pump(attachments.clone()));
    tasks.spawn(read_link(
        read,
        desired,
        state,
        table.clone(),
        attachments,
        (out, on_demand),
        ending.clone(),
    ));
    for l in listeners.http.iter().chain(&listeners.https) {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "listening");
        }
    }
    let served = crate::router::server::serve(
        listeners,
        table,
        ending.token.clone(),
        server.front.clone(),
        server.shutdown_timeout,
    )
    .await;
    // Why it stopped, before the link's tasks end (and the supervisor, seeing
    // the link close, closes its end too).
    let why = reason(&ending);
    tasks.shutdown().await;
    // The access lines of the last requests.
    crate::router::flush_logs();
    served.map_err(RouterError::RouterThreads)?;
    tracing::info!(?why, "stopped");
    Ok(why)
}

/// Reads until the first `Desired`, or why the router ends before it (the
/// supervisor said `Shutdown` or went away). Group updates before it are
/// kept.
async fn first_desired(
    read: &mut OwnedReadHalf,
    attachments: &Attachments,
    out: &Outbox,
) -> Result<Result<Desired, Ended>, RouterError> {
    loop {
        let msg: Option<ToRouter> = frame::read(read).await.map_err(RouterError::Link)?;
        match msg {
            Some(ToRouter::Desired(desired)) => return Ok(Ok(desired)),
            Some(ToRouter::Changes(changes)) => {
                // Changes need a state to apply to: the supervisor sends a
                // complete one first.
                tracing::error!(
                    version = changes.version,
                    "the supervisor sent changes before a complete state; stopping"
                );
                return Ok(Err(Ended::SupervisorGone));
            }
            Some(ToRouter::Group(update)) => {
                let key = update.group.clone();
                attachments.update(&key, link::published(update));
            }
            Some(ToRouter::StatsRequest { id }) => {
                let _ = out.send(ToSupervisor::Stats(StatsReply {
                    id,
                    sites: Vec::new(),
                    metrics: String::new(),
                    on_demand: Default::default(),
                }));
            }
            Some(ToRouter::ReopenLogs { id }) => {
                crate::router::reopen_logs();
                let _ = out.send(ToSupervisor::LogsReopened { id });
            }
            // No handshake before the first Desired: nothing asked.
            Some(ToRouter::OnDemandCertificate { .. }) => {}
            Some(ToRouter::OnDemandRenewed { name, pair }) => {
                crate::router::tls::on_demand_renewed(&name, &pair)
            }
            Some(ToRouter::Shutdown) => return Ok(Err(Ended::Shutdown)),
            None => return Ok(Err(Ended::SupervisorGone)),
        }
    }
}

/// Applies the supervisor's messages until the link ends. `current`: the
/// state served now (the one `Changes` apply to).
async fn read_link(
    mut read: OwnedReadHalf,
    mut current: Desired,
    mut state: RouterState,
    table: SharedTable,
    attachments: Arc<Attachments>,
    (out, on_demand): (Outbox, Arc<on_demand::LinkSource>),
    ending: Arc<Ending>,
) {
    // The last `Applied` still to send: each waits for the one before.
    let mut applied: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let msg: ToRouter = match frame::read(&mut read).await {
            Ok(Some(msg)) => msg,
            // Stop first, then say so (see `cli::init_logging`).
            Ok(None) => {
                let stopping = ending.token.is_cancelled();
                ending.end(Ended::SupervisorGone);
                if !stopping {
                    tracing::warn!("the supervisor closed the link; stopping");
                }
                return;
            }
            Err(e) => {
                ending.end(Ended::SupervisorGone);
                tracing::error!(error = %e, "cannot read from the supervisor; stopping");
                return;
            }
        };
        match msg {
            ToRouter::Desired(desired) => {
                current = desired;
                let before = applied.take();
                applied = Some(serve(&mut state, &current, &table, before, &out));
            }
            ToRouter::Changes(changes) => {
                if let Err(e) = current.apply_changes(changes) {
                    ending.end(Ended::SupervisorGone);
                    tracing::error!(error = %e, "the supervisor's changes do not fit what this router serves; stopping (the supervisor starts another and tells it the complete state)");
                    return;
                }
                let before = applied.take();
                applied = Some(serve(&mut state, &current, &table, before, &out));
            }
            ToRouter::Group(update) => {
                let key = update.group.clone();
                attachments.update(&key, link::published(update));
            }
            ToRouter::StatsRequest { id } => {
                let _ = out.send(ToSupervisor::Stats(StatsReply {
                    id,
                    sites: state.counters(),
                    metrics: state.metrics(),
                    on_demand: crate::metrics::on_demand::router_snapshot(
                        crate::router::tls::on_demand_waiting(),
                    ),
                }));
            }
            ToRouter::ReopenLogs { id } => {
                // Writes to files: off the async threads, answered after.
                let out = out.clone();
                tokio::task::spawn_blocking(move || {
                    crate::router::reopen_logs();
                    tracing::info!("reopened the site logs");
                    let _ = out.send(ToSupervisor::LogsReopened { id });
                });
            }
            ToRouter::OnDemandCertificate {
                id,
                result,
                retry_ms,
            } => on_demand.answer(id, result, retry_ms),
            ToRouter::OnDemandRenewed { name, pair } => {
                crate::router::tls::on_demand_renewed(&name, &pair)
            }
            ToRouter::Shutdown => {
                ending.end(Ended::Shutdown);
                tracing::info!("the supervisor asks to stop; letting in-flight requests finish");
            }
        }
    }
}

/// Serves `current` from now on (the sites rebuilt, the table swapped);
/// returns the task that says `Applied` once what it replaced has settled,
/// after `before` (the previous one) said its own.
fn serve(
    state: &mut RouterState,
    current: &Desired,
    table: &SharedTable,
    before: Option<tokio::task::JoinHandle<()>>,
    out: &Outbox,
) -> tokio::task::JoinHandle<()> {
    let replaced = state.apply(current);
    if let Some(on_demand) = &current.config.server.acme.on_demand {
        crate::router::tls::set_on_demand_waiting(on_demand.waiting);
    }
    table.store(Arc::new(
        state
            .table()
            .with_acme_challenges(current.acme_challenges.clone()),
    ));
    let (out, version) = (out.clone(), current.version);
    tokio::spawn(async move {
        if let Some(before) = before {
            let _ = before.await;
        }
        replaced.settle().await;
        let _ = out.send(ToSupervisor::Applied { version });
    })
}

/// Reports usage every 250 ms, and says `Drained` as leases end (polled
/// every 10 ms while some endpoint drains; no wake-up otherwise).
async fn pump(attachments: Arc<Attachments>) {
    let mut usage = tokio::time::interval(USAGE_EVERY);
    usage.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = usage.tick() => attachments.report_usage(),
            _ = attachments.drain_started() => {
                tokio::time::sleep(DRAIN_POLL).await;
                attachments.check_drained();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_fds;

    #[test]
    fn the_descriptor_spec_is_parsed_strictly() {
        assert_eq!(parse_fds("3,2,1"), Ok((3, 2, 1)));
        assert_eq!(parse_fds("3,0,0"), Ok((3, 0, 0)));
        for bad in ["", "3", "3,1", "3,1,1,1", "x,1,1", "2,1,1", "3,-1,0"] {
            assert!(parse_fds(bad).is_err(), "{bad:?}");
        }
    }
}
