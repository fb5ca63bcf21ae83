//! Taking processes out of service: drain (unpublish, close to new leases,
//! wait for the requests in flight, bounded by `drain_timeout`, then stop),
//! stop now (SIGTERM, SIGKILL after a grace), scale to zero (every process
//! drained, the group `Idle`; decided in `checks.rs`), and stopping the
//! whole group.

use std::time::{Duration, Instant};

use super::{Actor, Event, GroupState, Slot, STOP_GRACE};

impl Actor {
    /// Unpublishes a process and stops it once its in-flight requests end.
    /// It is published without the process before its endpoint is closed,
    /// so a request that raced with this and finds it closed takes another
    /// one (see [`crate::supervisor::endpoint`]); a lease taken before is waited for,
    /// and so is a router process that was told of it (until it says it
    /// holds no lease on it, or dies).
    pub(super) fn drain(&mut self, id: u64) {
        let Some(p) = self.procs.get_mut(&id) else {
            return;
        };
        p.draining = true;
        let endpoint = p.endpoint.clone();
        self.publish();
        endpoint.close();
        let events = self.events.clone();
        let timeout = self.lifecycle.drain_timeout;
        tokio::spawn(async move {
            let deadline = Instant::now() + timeout;
            while !endpoint.is_idle() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = events.send(Event::Drained { id });
        });
    }

    /// Stops a process now (drained, crashed, or killed). Requests already
    /// on it fail; new ones no longer get it.
    pub(super) fn stop_proc(&mut self, id: u64, grace: Duration) {
        if let Some(p) = self.procs.get_mut(&id) {
            p.stopping = true;
            p.endpoint.close();
            if let Some(stop) = p.stop.take() {
                let _ = stop.send(grace);
            }
        }
    }

    pub(super) async fn stop_all(
        &mut self,
        events: &mut crate::supervisor::mailbox::Receiver<Event>,
    ) {
        self.state = GroupState::Stopped;
        let ids: Vec<u64> = self.procs.keys().copied().collect();
        for id in &ids {
            self.drain(*id);
        }
        while !self.procs.is_empty() {
            match events.recv().await {
                Some(Event::Drained { id }) => self.stop_proc(id, STOP_GRACE),
                Some(Event::Exited { id, .. }) | Some(Event::Stopped { id }) => {
                    if let Some(p) = self.procs.remove(&id) {
                        let _ = std::fs::remove_file(&p.endpoint.socket);
                        tracing::info!(site = %self.site(), runtime = self.runtime(), pid = p.endpoint.pid, "stopped");
                    }
                }
                Some(_) => {}
                None => break,
            }
            self.publish_with(GroupState::Stopped);
        }
        self.state = GroupState::Stopped;
        self.publish();
    }

    /// Scale to zero: the group is `Idle` at once, so the next request
    /// starts it again (beside a process still draining, if need be); every
    /// process is unpublished and drained, then stopped. A request that took
    /// a process just before is served by it first (the drain waits for its
    /// lease).
    pub(super) fn scale_to_zero(&mut self) {
        self.state = GroupState::Idle;
        for slot in &mut self.slots {
            if matches!(slot, Slot::Backoff { .. }) {
                *slot = Slot::Empty;
            }
        }
        let ids: Vec<u64> = self
            .procs
            .iter()
            .filter(|(_, p)| !p.draining && !p.stopping)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.drain(id);
        }
    }
}
