//! Forwarding process groups to the router: each group the router was told
//! of gets a task that sends its snapshot as a `Group` update whenever it
//! changes, until the group has stopped for good (state `Stopped` and no
//! process left: then one last update, and the group is forgotten). Old
//! generations being drained stay forwarded until then: that is how the
//! router learns their endpoints went away and answers `Drained`.
//!
//! An update's endpoints are the snapshot's, each marked held for the
//! router first (`Endpoint::hold_for_router`); one closed meanwhile (its
//! drain began) is left out, so the router is never told of a process
//! whose drain did not see the hold.

use std::sync::Weak;

use crate::privsep::wire::{GroupKey, GroupUpdate, ToRouter, WireEndpoint};
use crate::supervisor::{GroupHandle, GroupState, Snapshot};

use super::link::{Inner, Link};

/// Sends `key`'s current snapshot to the connected router (nothing when
/// none is connected: it is told everything when it connects).
pub(super) fn send_update(inner: &mut Inner, key: &GroupKey) {
    if !inner.is_connected() {
        return;
    }
    let Some(told) = inner.groups.get_mut(key) else {
        return;
    };
    let snapshot = told.handle.snapshot();
    let mut endpoints = Vec::with_capacity(snapshot.endpoints.len());
    for e in &snapshot.endpoints {
        let held = told.held.contains_key(&e.id) || {
            let now = e.hold_for_router();
            if now {
                told.held.insert(e.id, e.clone());
            }
            now
        };
        if held && !e.is_closed() {
            endpoints.push(WireEndpoint {
                id: e.id,
                pid: e.pid,
                socket: e.socket.clone(),
                uid: e.uid,
                tcp: e.tcp,
            });
        }
    }
    let update = GroupUpdate {
        group: key.clone(),
        state: snapshot.state.clone(),
        endpoints,
        app_error: snapshot.app_error.clone(),
        last_error: snapshot.last_error.clone(),
    };
    if told.last.as_ref() == Some(&update) {
        return;
    }
    told.last = Some(update.clone());
    inner.send(ToRouter::Group(update));
}

/// Whether `snapshot` is a group's last: stopped, no process left.
fn is_final(snapshot: &Snapshot) -> bool {
    snapshot.state == GroupState::Stopped && snapshot.pids.is_empty()
}

/// Starts the task that forwards `handle`'s changes (see the module doc).
pub(super) fn spawn_forwarder(
    link: Weak<Link>,
    key: GroupKey,
    handle: &GroupHandle,
) -> tokio::task::AbortHandle {
    let mut rx = handle.watch_snapshot();
    rx.borrow_and_update();
    tokio::spawn(async move {
        loop {
            let gone = rx.changed().await.is_err();
            let last = gone || is_final(&rx.borrow_and_update().clone());
            let Some(link) = link.upgrade() else {
                return;
            };
            let mut inner = link.lock();
            send_update(&mut inner, &key);
            if last {
                forget(&mut inner, &key);
                return;
            }
        }
    })
    .abort_handle()
}

/// The group stopped: no process of it is left for a hold to protect.
fn forget(inner: &mut Inner, key: &GroupKey) {
    if let Some(told) = inner.groups.remove(key) {
        for endpoint in told.held.values() {
            endpoint.clear_router();
        }
    }
}
