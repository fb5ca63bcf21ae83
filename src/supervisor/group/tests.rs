//! The group actor's transitions (start, ready, crash, backoff, crash loop,
//! recycle, drain, idle stop, restart, stop) without processes: a fake
//! [`Spawner`] hands out endpoints on sockets nobody opens, and the tests
//! play the processes' part by sending the actor the [`Event`]s its real
//! watchers would (`Ready`, `NotReady`, `Exited`); a stop request is
//! answered with `Stopped`, as `watch::watch_process` does. Time is real
//! (the actor's clocks are `std` ones); backoffs are made short instead.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use super::spawner::{Spawner, Started};
use super::{spawn_group_with, GroupHandle, GroupSpec, GroupState, Snapshot};
use crate::isolation::Rlimits;
use crate::supervisor::endpoint::Endpoint;
use crate::supervisor::launcher::{Command, Launcher, Lifecycle, Listen, ProcessSocket};
use crate::supervisor::lease::LeaseError;
use crate::supervisor::mailbox::Event;
use crate::supervisor::policy::RestartPolicy;

/// Plays the processes: records starts, answers stops with `Stopped`.
#[derive(Default)]
struct Fake {
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    /// Ids of the processes started, in order.
    started: Vec<u64>,
    /// The actor's event channel, once it started a process.
    events: Option<crate::supervisor::mailbox::Sender<Event>>,
    /// Each process reports itself ready as soon as it starts.
    auto_ready: bool,
    /// This many next starts fail.
    failing_starts: usize,
}

impl Fake {
    fn new(auto_ready: bool) -> Arc<Fake> {
        let fake = Fake::default();
        fake.lock().auto_ready = auto_ready;
        Arc::new(fake)
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// Tells the actor what its watchers would.
    fn send(&self, event: Event) {
        let events = self.lock().events.clone().expect("a process was started");
        assert!(events.send(event).is_ok(), "the actor runs");
    }

    fn exit(&self, id: u64, code: i32) {
        self.send(Event::Exited {
            id,
            status: Ok(ExitStatus::from_raw(code << 8)),
            oom_kills: 0,
        });
    }
}

impl Spawner for Fake {
    fn start(
        &self,
        _spec: &GroupSpec,
        _startup_timeout: Duration,
        id: u64,
        events: &crate::supervisor::mailbox::Sender<Event>,
    ) -> Result<Started, String> {
        let mut state = self.lock();
        state.events = Some(events.clone());
        if state.failing_starts > 0 {
            state.failing_starts -= 1;
            return Err("cannot start fake: refused".into());
        }
        state.started.push(id);
        let (stop, stopped) = oneshot::channel::<Duration>();
        let told = events.clone();
        tokio::spawn(async move {
            if stopped.await.is_ok() {
                let _ = told.send(Event::Stopped { id });
            }
        });
        if state.auto_ready {
            let _ = events.send(Event::Ready { id });
        }
        let socket = format!("/nonexistent/polyhost-fake-{id}.sock");
        Ok(Started {
            endpoint: Arc::new(Endpoint::new(id, pid(id), socket.into(), None)),
            cgroup: None,
            stop,
            ready_task: tokio::spawn(async {}).abort_handle(),
        })
    }

    fn rss(&self, _pid: i32) -> Option<u64> {
        None
    }

    fn session_rss(&self, _pid: i32) -> u64 {
        0
    }
}

/// The fake pid of process `id`.
fn pid(id: u64) -> i32 {
    1000 + id as i32
}

struct FakeLauncher {
    lifecycle: Lifecycle,
    /// An exit before readiness means the application failed to load.
    app_error: bool,
}

impl Launcher for FakeLauncher {
    fn runtime(&self) -> &'static str {
        "fake"
    }
    fn lifecycle(&self) -> Lifecycle {
        self.lifecycle.clone()
    }
    fn listen(&self) -> Listen {
        Listen::Process
    }
    fn command(&self, _socket: ProcessSocket<'_>) -> std::io::Result<Command> {
        unreachable!("the fake spawner runs no command")
    }
    fn app_error(&self, _status: &ExitStatus) -> bool {
        self.app_error
    }
}

fn lifecycle(processes: usize) -> Lifecycle {
    Lifecycle {
        processes,
        startup_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(5),
        ..Lifecycle::default()
    }
}

/// Short backoffs; `crash_loop_limit` crashes within a minute fail the group.
fn policy(crash_loop_limit: usize) -> RestartPolicy {
    RestartPolicy {
        initial: Duration::from_millis(10),
        max: Duration::from_secs(30),
        stable_after: Duration::from_secs(30),
        crash_loop_limit,
        window: Duration::from_secs(60),
    }
}

struct Group {
    handle: GroupHandle,
    fake: Arc<Fake>,
    _dir: tempfile::TempDir,
    error_log: std::path::PathBuf,
}

fn group(lifecycle: Lifecycle, fake: Arc<Fake>) -> Group {
    group_with(lifecycle, fake, policy(6), false)
}

fn group_with(
    lifecycle: Lifecycle,
    fake: Arc<Fake>,
    policy: RestartPolicy,
    app_error: bool,
) -> Group {
    let dir = tempfile::tempdir().unwrap();
    let error_log = dir.path().join("site.error.log");
    let spec = GroupSpec {
        site: "site".into(),
        generation: 1,
        launcher: Arc::new(FakeLauncher {
            lifecycle,
            app_error,
        }),
        identity: None,
        cgroup: None,
        error_log: error_log.clone(),
        socket_dir: "/nonexistent".into(),
        memory_limit: None,
        rlimits: Rlimits {
            nofile: 8192,
            nproc: None,
        },
        batch_scheduling: false,
        sandbox: None,
        policy,
    };
    Group {
        handle: spawn_group_with(spec, fake.clone()),
        fake,
        _dir: dir,
        error_log,
    }
}

/// Waits (up to 5 s) for a published snapshot that satisfies `pred`.
async fn until(g: &GroupHandle, what: &str, pred: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
    let mut rx = g.snapshot.clone();
    let waited = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| pred(s))).await;
    match waited {
        Ok(Ok(snap)) => snap.clone(),
        _ => panic!("waited 5 s for {what}; last: {:?}", g.snapshot()),
    }
}

fn endpoint_ids(s: &Snapshot) -> Vec<u64> {
    s.endpoints.iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn a_lease_starts_an_idle_group_and_waits_for_a_ready_process() {
    let g = group(lifecycle(2), Fake::new(false));
    assert_eq!(g.handle.snapshot().state, GroupState::Idle);
    let lease = tokio::spawn({
        let handle = g.handle.clone();
        async move { handle.lease().await.map(|l| l.endpoint().id) }
    });
    let snap = until(&g.handle, "two processes starting", |s| s.pids.len() == 2).await;
    assert_eq!(snap.state, GroupState::Starting);
    assert!(
        snap.endpoints.is_empty(),
        "nothing is published before it is ready"
    );
    g.fake.send(Event::Ready { id: 2 });
    assert_eq!(lease.await.unwrap().unwrap(), 2);
    let snap = until(&g.handle, "one ready", |s| s.endpoints.len() == 1).await;
    assert_eq!(
        snap.state,
        GroupState::Running,
        "serving while the other starts"
    );
    g.fake.send(Event::Ready { id: 1 });
    let snap = until(&g.handle, "both ready", |s| s.endpoints.len() == 2).await;
    assert_eq!(endpoint_ids(&snap), [1, 2]);
}

#[tokio::test]
async fn a_crash_restarts_its_slot_after_a_backoff_and_tells_the_site_owner() {
    let g = group(lifecycle(1), Fake::new(true));
    g.handle.start();
    until(&g.handle, "running", |s| endpoint_ids(s) == [1]).await;
    g.fake.exit(1, 3);
    let snap = until(&g.handle, "the crash counted", |s| s.restarts == 1).await;
    assert_eq!(
        snap.last_error.as_deref(),
        Some("exited unexpectedly: exit status 3")
    );
    let snap = until(&g.handle, "the slot restarted", |s| endpoint_ids(s) == [2]).await;
    assert_eq!(snap.state, GroupState::Running);
    assert_eq!(snap.pids, [pid(2)]);
    let log = std::fs::read_to_string(&g.error_log).unwrap();
    assert!(
        log.contains("polyhost: fake process 1001 failed: exited unexpectedly: exit status 3"),
        "{log}"
    );
}

#[tokio::test]
async fn a_crash_loop_fails_the_group_and_a_lease_says_why() {
    let g = group_with(lifecycle(1), Fake::new(true), policy(2), false);
    g.handle.start();
    until(&g.handle, "running", |s| endpoint_ids(s) == [1]).await;
    g.fake.exit(1, 3);
    until(&g.handle, "restarted", |s| endpoint_ids(s) == [2]).await;
    g.fake.exit(2, 3);
    let snap = until(&g.handle, "failed", |s| {
        matches!(s.state, GroupState::Failed(_))
    })
    .await;
    assert_eq!(
        snap.state,
        GroupState::Failed("crash loop: exited unexpectedly: exit status 3".into())
    );
    match g.handle.lease().await {
        Err(LeaseError::Failed { group, reason }) => {
            assert_eq!(group, "site fake");
            assert_eq!(reason, "crash loop: exited unexpectedly: exit status 3");
        }
        other => panic!("expected Failed, got {:?}", other.map(|_| ())),
    }
    assert_eq!(
        g.fake.lock().started,
        [1, 2],
        "no retry within the backoff cap"
    );
}

#[tokio::test]
async fn a_process_not_ready_in_time_is_stopped_and_counts_as_a_crash() {
    let g = group(lifecycle(1), Fake::new(false));
    g.handle.start();
    until(&g.handle, "started", |s| s.pids == [pid(1)]).await;
    g.fake.send(Event::NotReady {
        id: 1,
        why: "did not accept connections".into(),
    });
    let snap = until(&g.handle, "stopped and replaced", |s| s.pids == [pid(2)]).await;
    assert_eq!(snap.restarts, 1);
    assert_eq!(
        snap.last_error.as_deref(),
        Some("did not accept connections")
    );
}

#[tokio::test]
async fn a_process_that_cannot_start_is_a_crash_of_its_slot() {
    let fake = Fake::new(true);
    fake.lock().failing_starts = 1;
    let g = group(lifecycle(1), fake);
    g.handle.start();
    let snap = until(&g.handle, "started on the second try", |s| {
        !s.endpoints.is_empty()
    })
    .await;
    assert_eq!(endpoint_ids(&snap), [2], "the failed start used id 1");
    assert_eq!(snap.restarts, 1);
    assert_eq!(
        snap.last_error.as_deref(),
        Some("cannot start fake: refused")
    );
}

#[tokio::test]
async fn recycling_starts_the_replacement_first_and_drains_the_old_process() {
    let g = group(lifecycle(1), Fake::new(false));
    g.handle.start();
    until(&g.handle, "started", |s| s.pids.len() == 1).await;
    g.fake.send(Event::Ready { id: 1 });
    let held = g.handle.lease().await.unwrap();
    assert_eq!(held.endpoint().id, 1);
    g.handle.recycle(1, "test");
    let snap = until(&g.handle, "replacement started", |s| s.pids.len() == 2).await;
    assert_eq!(
        endpoint_ids(&snap),
        [1],
        "the old one serves until the new one is ready"
    );
    g.fake.send(Event::Ready { id: 2 });
    until(&g.handle, "replacement published", |s| {
        endpoint_ids(s) == [2]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        g.handle.snapshot().pids,
        [pid(1), pid(2)],
        "the old process waits for its request"
    );
    drop(held);
    until(&g.handle, "old process stopped", |s| s.pids == [pid(2)]).await;
    assert_eq!(g.handle.snapshot().restarts, 0, "a recycle is no crash");
}

#[tokio::test]
async fn the_lease_that_reaches_max_requests_recycles_its_process() {
    let mut lc = lifecycle(1);
    lc.max_requests = Some(2);
    let g = group(lc, Fake::new(true));
    g.handle.start();
    until(&g.handle, "running", |s| endpoint_ids(s) == [1]).await;
    for _ in 0..2 {
        let lease = g.handle.lease().await.unwrap();
        assert_eq!(lease.endpoint().id, 1);
    }
    until(&g.handle, "recycled", |s| {
        endpoint_ids(s) == [2] && s.pids == [pid(2)]
    })
    .await;
}

#[tokio::test]
async fn an_idle_group_scales_to_zero_and_a_lease_starts_it_again() {
    let mut lc = lifecycle(1);
    lc.idle_timeout = Some(Duration::from_millis(50));
    let g = group(lc, Fake::new(true));
    g.handle.start();
    until(&g.handle, "running", |s| endpoint_ids(s) == [1]).await;
    let snap = until(&g.handle, "scaled to zero", |s| {
        s.state == GroupState::Idle && s.pids.is_empty()
    })
    .await;
    assert!(snap.endpoints.is_empty());
    let lease = g.handle.lease().await.unwrap();
    assert_eq!(lease.endpoint().id, 2);
    assert_eq!(g.handle.snapshot().state, GroupState::Running);
}

#[tokio::test]
async fn a_restart_replaces_every_process() {
    let g = group(lifecycle(2), Fake::new(true));
    g.handle.start();
    until(&g.handle, "running", |s| s.endpoints.len() == 2).await;
    g.handle.restart();
    let snap = until(&g.handle, "all replaced", |s| {
        s.pids == [pid(3), pid(4)] && s.endpoints.len() == 2
    })
    .await;
    assert_eq!(snap.state, GroupState::Running);
}

#[tokio::test]
async fn a_stopped_group_stops_its_processes_and_gives_no_lease() {
    let g = group(lifecycle(2), Fake::new(true));
    g.handle.start();
    until(&g.handle, "running", |s| s.endpoints.len() == 2).await;
    g.handle.stop().await;
    let snap = g.handle.snapshot();
    assert_eq!(snap.state, GroupState::Stopped);
    assert!(snap.pids.is_empty() && snap.endpoints.is_empty());
    match g.handle.lease().await {
        Err(LeaseError::Stopped { group }) => assert_eq!(group, "site fake"),
        other => panic!("expected Stopped, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn an_application_that_fails_to_load_is_reported_as_broken() {
    let g = group_with(lifecycle(1), Fake::new(false), policy(6), true);
    let lease = tokio::spawn({
        let handle = g.handle.clone();
        async move { handle.lease().await.map(|_| ()) }
    });
    until(&g.handle, "started", |s| s.pids == [pid(1)]).await;
    g.fake.exit(1, 3);
    match lease.await.unwrap() {
        Err(LeaseError::AppBroken { group, reason }) => {
            assert_eq!(group, "site fake");
            assert!(
                reason.starts_with("the application failed to load (exit status 3)"),
                "{reason}"
            );
        }
        other => panic!("expected AppBroken, got {other:?}"),
    }
}
