//! The router's end of the link to its supervisor: frames out through one
//! writer task (so that messages leave in the order they were queued), and
//! the messages of [`wire`] to and from the plain types of
//! `supervisor::attached` (the supervisor imports nothing of `privsep`).

use std::sync::Arc;

use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::privsep::frame;
use crate::privsep::wire::{EndpointUsage, GroupUpdate, GroupUsage, ToSupervisor};
use crate::supervisor::attached::{Published, PublishedEndpoint, Request};

use super::{Ended, Ending};

/// Where the router's messages to its supervisor are queued.
pub(crate) type Outbox = mpsc::UnboundedSender<ToSupervisor>;

/// Writes every queued message as a frame, in order, until the queue
/// closes; a failed write (the supervisor is gone) ends the router.
pub(crate) async fn write_frames(
    mut w: OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<ToSupervisor>,
    ending: Arc<Ending>,
) {
    while let Some(msg) = queue.recv().await {
        if let Err(e) = frame::write(&mut w, &msg).await {
            // Stop first, then say so (see `cli::init_logging`).
            let stopping = ending.token.is_cancelled();
            ending.end(Ended::SupervisorGone);
            if !stopping {
                tracing::error!(error = %e, "cannot write to the supervisor; stopping");
            }
            return;
        }
    }
}

/// Forwards what the attached groups ask of the supervisor.
pub(crate) async fn forward_requests(mut requests: mpsc::UnboundedReceiver<Request>, out: Outbox) {
    while let Some(request) = requests.recv().await {
        if out.send(to_wire(request)).is_err() {
            return;
        }
    }
}

pub(crate) fn to_wire(request: Request) -> ToSupervisor {
    match request {
        Request::Start { group } => ToSupervisor::Start { group },
        Request::Recycle {
            group,
            endpoint,
            reason,
        } => ToSupervisor::Recycle {
            group,
            endpoint,
            reason,
        },
        Request::Drained { group, endpoint } => ToSupervisor::Drained { group, endpoint },
        Request::Usage(groups) => ToSupervisor::Usage(
            groups
                .into_iter()
                .map(|g| GroupUsage {
                    group: g.group,
                    idle_ms: g.idle_ms,
                    endpoints: g
                        .endpoints
                        .into_iter()
                        .map(|e| EndpointUsage {
                            id: e.id,
                            in_flight: e.in_flight,
                            served: e.served,
                        })
                        .collect(),
                })
                .collect(),
        ),
    }
}

/// A group update as the attached groups take it.
pub(crate) fn published(update: GroupUpdate) -> Published {
    Published {
        state: update.state,
        endpoints: update
            .endpoints
            .into_iter()
            .map(|e| PublishedEndpoint {
                id: e.id,
                pid: e.pid,
                socket: e.socket,
                uid: e.uid,
                tcp: e.tcp,
            })
            .collect(),
        app_error: update.app_error,
        last_error: update.last_error,
    }
}
