//! The group actor's periodic checks, every `TICK`: refill a slot left
//! without a live process (or whose backoff ended), count OOM kills, enforce
//! `limits.memory` by RSS where there are no cgroups, recycle processes past
//! `max_requests` or `memory_per_process`, and scale to zero after
//! `idle_timeout`. With a router process (`privsep`), the requests it
//! reported count like local ones: `Endpoint::inflight` and `served`
//! include them, and its reports touch the group's activity.

use std::time::{Duration, Instant};

use super::{Actor, GroupState, Slot};

impl Actor {
    /// Every `TICK`: the checks this module names, in that order.
    pub(super) fn on_tick(&mut self) {
        let now = Instant::now();
        if matches!(self.state, GroupState::Starting | GroupState::Running) {
            for slot in 0..self.slots.len() {
                let due = match self.slots[slot] {
                    Slot::Backoff { until } => until <= now,
                    // Self-healing: a slot left without a live process is refilled.
                    Slot::Empty => true,
                    // A process stopped to make room is replaced once gone.
                    Slot::Proc(id) => self
                        .procs
                        .get(&id)
                        .is_none_or(|p| p.stopping && !p.draining && !p.restart_when_stopped),
                };
                if due {
                    self.start_slot(slot, None);
                }
            }
        }
        self.check_oom();
        self.check_memory_without_cgroup();
        self.check_recycling();
        self.check_idle();
    }

    /// Counts new OOM kills in the processes' cgroups (a kill is counted in
    /// the victim's own cgroup; cgroup v1 does not propagate it upwards).
    fn check_oom(&mut self) {
        let site = self.spec.site.clone();
        let runtime = self.runtime();
        for p in self.procs.values_mut() {
            let Some(usage) = p.cgroup.as_ref().and_then(|cg| cg.usage().ok()) else {
                continue;
            };
            if usage.oom_kills > p.oom_seen {
                self.oom_kills += usage.oom_kills - p.oom_seen;
                p.oom_seen = usage.oom_kills;
                tracing::warn!(site = %site, runtime, pid = p.endpoint.pid, oom_kills = usage.oom_kills, "OOM-killed a process of the site (limits.memory)");
                self.last_error = Some("a process was OOM-killed (limits.memory)".into());
            }
        }
    }

    /// The fallback for `limits.memory` on hosts without cgroups: the sum of
    /// the sessions' RSS (a process and everything it forked) above the limit
    /// kills the largest session, as the kernel's OOM killer would in a cgroup.
    fn check_memory_without_cgroup(&mut self) {
        let Some(limit) = self.spec.memory_limit else {
            return;
        };
        let sizes: Vec<(u64, u64)> = self
            .procs
            .iter()
            .filter(|(_, p)| !p.stopping)
            .map(|(id, p)| (*id, self.spawner.session_rss(p.endpoint.pid)))
            .collect();
        let total: u64 = sizes.iter().map(|(_, rss)| rss).sum();
        if total <= limit {
            return;
        }
        let Some(&(id, rss)) = sizes.iter().max_by_key(|(_, rss)| *rss) else {
            return;
        };
        let pid = self.procs[&id].endpoint.pid;
        let reason = format!(
            "killed: the site uses {} MiB, above limits.memory {} MiB (RSS polling: no cgroups); this process used {} MiB",
            total >> 20,
            limit >> 20,
            rss >> 20
        );
        tracing::warn!(site = %self.site(), runtime = self.runtime(), pid, reason = %reason, "OOM-killed");
        self.note_in_error_log(pid, &reason);
        self.oom_kills += 1;
        self.last_error = Some(reason);
        self.stop_proc(id, Duration::ZERO);
    }

    fn check_recycling(&mut self) {
        let mut due = Vec::new();
        for (id, p) in &self.procs {
            if !p.ready || p.draining || p.stopping || self.has_replacement(*id) {
                continue;
            }
            if let Some(max) = self.lifecycle.max_requests {
                if p.endpoint.served() >= max {
                    due.push((
                        *id,
                        format!(
                            "served {} requests (max_requests {max})",
                            p.endpoint.served()
                        ),
                    ));
                    continue;
                }
            }
            if let Some(limit) = self.lifecycle.memory_per_process {
                if let Some(rss) = self.spawner.rss(p.endpoint.pid) {
                    if rss > limit {
                        due.push((
                            *id,
                            format!(
                                "RSS {} MiB above memory_per_process {} MiB",
                                rss >> 20,
                                limit >> 20
                            ),
                        ));
                    }
                }
            }
        }
        for (id, reason) in due {
            self.recycle(id, &reason);
        }
    }

    /// Scale to zero after `idle_timeout` without a request (and none in
    /// flight); see [`Actor::scale_to_zero`].
    fn check_idle(&mut self) {
        let Some(idle) = self.lifecycle.idle_timeout else {
            return;
        };
        if self.state != GroupState::Running || self.activity.idle_for() < idle {
            return;
        }
        if self.procs.values().any(|p| p.endpoint.inflight() > 0) {
            return;
        }
        tracing::info!(site = %self.site(), runtime = self.runtime(), ?idle, "no requests for idle_timeout; scaling to zero");
        self.scale_to_zero();
    }
}
