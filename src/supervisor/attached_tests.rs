//! Attached groups without processes: the tests play the supervisor by
//! publishing updates and reading the requests the router sends it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::*;
use crate::supervisor::LeaseError;

fn key(site: &str) -> GroupKey {
    GroupKey {
        site: site.into(),
        runtime: "python".into(),
        generation: 7,
    }
}

fn lifecycle(max_requests: Option<u64>) -> Lifecycle {
    Lifecycle {
        processes: 2,
        startup_timeout: Duration::from_secs(5),
        max_requests,
        ..Lifecycle::default()
    }
}

fn endpoint(id: u64) -> PublishedEndpoint {
    PublishedEndpoint {
        id,
        pid: 1000 + id as i32,
        socket: format!("/run/x/{id}.sock").into(),
        uid: None,
        tcp: None,
    }
}

fn running(ids: &[u64]) -> Published {
    Published {
        state: GroupState::Running,
        endpoints: ids.iter().copied().map(endpoint).collect(),
        app_error: None,
        last_error: None,
    }
}

/// Everything sent so far, without waiting.
fn sent(rx: &mut mpsc::UnboundedReceiver<Request>) -> Vec<Request> {
    let mut out = Vec::new();
    while let Ok(r) = rx.try_recv() {
        out.push(r);
    }
    out
}

/// The next request, waiting a bounded time for it.
async fn next(rx: &mut mpsc::UnboundedReceiver<Request>) -> Request {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a request within 5 s")
        .expect("the channel is open")
}

fn drained(site: &str, endpoint: u64) -> Request {
    Request::Drained {
        group: key(site),
        endpoint,
    }
}

#[tokio::test]
async fn endpoints_are_kept_by_id_across_updates() {
    let (groups, _rx) = Attachments::new();
    let handle = groups.attach(key("a"), "python", &lifecycle(None));
    groups.update(&key("a"), running(&[1]));
    drop(handle.lease().await.unwrap());
    let first = handle.snapshot().endpoints[0].clone();
    groups.update(&key("a"), running(&[1, 2]));
    let snap = handle.snapshot();
    assert_eq!(snap.state, GroupState::Running);
    assert_eq!(snap.pids, vec![1001, 1002]);
    assert!(
        Arc::ptr_eq(&snap.endpoints[0], &first),
        "same endpoint object"
    );
    assert_eq!(snap.endpoints[0].served(), 1, "its count goes on");
    assert_eq!(snap.endpoints[1].served(), 0);
}

#[tokio::test]
async fn an_unpublished_endpoint_is_drained_once_its_last_lease_ends() {
    let (groups, mut rx) = Attachments::new();
    let handle = groups.attach(key("a"), "python", &lifecycle(None));
    groups.update(&key("a"), running(&[1, 2]));
    // Both busy: the least busy is taken, so one lease each.
    let l1 = handle.lease().await.unwrap();
    let l2 = handle.lease().await.unwrap();
    let (on_1, on_2) = match l1.endpoint().id {
        1 => (l1, l2),
        _ => (l2, l1),
    };
    drop(on_2);
    groups.update(&key("a"), running(&[3]));
    assert_eq!(
        sent(&mut rx),
        vec![drained("a", 2)],
        "no lease on 2: at once"
    );
    assert!(groups.draining());
    groups.check_drained();
    assert_eq!(sent(&mut rx), vec![], "1 still has its lease");
    let lease = handle.lease().await.unwrap();
    assert_eq!(lease.endpoint().id, 3, "no new lease on a closed endpoint");
    drop(on_1);
    groups.check_drained();
    assert_eq!(sent(&mut rx), vec![drained("a", 1)]);
    assert!(!groups.draining());
    groups.check_drained();
    assert_eq!(sent(&mut rx), vec![], "said once");
}

#[tokio::test]
async fn usage_names_only_groups_used_since_the_last_report() {
    let (groups, mut rx) = Attachments::new();
    let a = groups.attach(key("a"), "python", &lifecycle(None));
    let _b = groups.attach(key("b"), "python", &lifecycle(None));
    groups.update(&key("a"), running(&[1, 2]));
    groups.update(&key("b"), running(&[1]));
    groups.report_usage();
    assert_eq!(sent(&mut rx), vec![], "published, never used");

    let held = a.lease().await.unwrap();
    let held_id = held.endpoint().id;
    drop(a.lease().await.unwrap());
    groups.report_usage();
    let Request::Usage(used) = next(&mut rx).await else {
        panic!("a usage report")
    };
    assert_eq!(used.len(), 1, "{used:?}");
    assert_eq!(used[0].group, key("a"));
    let mut expected = vec![
        EndpointUse {
            id: held_id,
            in_flight: 1,
            served: 0,
        },
        EndpointUse {
            id: 3 - held_id,
            in_flight: 0,
            served: 1,
        },
    ];
    expected.sort_by_key(|e| e.id);
    assert_eq!(used[0].endpoints, expected);

    // Still in flight: reported again, though nothing finished.
    groups.report_usage();
    assert!(matches!(next(&mut rx).await, Request::Usage(u) if u.len() == 1));
    drop(held);
    groups.report_usage();
    let Request::Usage(used) = next(&mut rx).await else {
        panic!("a usage report")
    };
    let e = used[0].endpoints.iter().find(|e| e.id == held_id).unwrap();
    assert_eq!((e.in_flight, e.served), (0, 1));
    groups.report_usage();
    assert_eq!(sent(&mut rx), vec![], "nothing since");
}

#[tokio::test]
async fn a_draining_endpoint_is_reported_until_it_is_drained_and_never_after() {
    let (groups, mut rx) = Attachments::new();
    let a = groups.attach(key("a"), "python", &lifecycle(None));
    groups.update(&key("a"), running(&[1]));
    let held = a.lease().await.unwrap();
    groups.update(
        &key("a"),
        Published {
            state: GroupState::Stopped,
            ..running(&[])
        },
    );
    assert_eq!(groups.len(), 0, "a stopped group is forgotten");
    groups.report_usage();
    let Request::Usage(used) = next(&mut rx).await else {
        panic!("a usage report")
    };
    assert_eq!(used[0].group, key("a"));
    assert_eq!(used[0].endpoints[0].in_flight, 1);
    drop(held);
    groups.report_usage();
    groups.check_drained();
    assert_eq!(sent(&mut rx), vec![drained("a", 1)]);
}

#[tokio::test]
async fn a_request_on_an_idle_group_asks_one_start_and_waits_for_a_process() {
    let (groups, mut rx) = Attachments::new();
    let a = groups.attach(key("a"), "python", &lifecycle(None));
    let first = tokio::spawn({
        let a = a.clone();
        async move { a.lease().await.map(|l| l.endpoint().id) }
    });
    let second = tokio::spawn({
        let a = a.clone();
        async move { a.lease().await.map(|l| l.endpoint().id) }
    });
    assert_eq!(next(&mut rx).await, Request::Start { group: key("a") });
    groups.update(
        &key("a"),
        Published {
            state: GroupState::Starting,
            ..running(&[])
        },
    );
    groups.update(&key("a"), running(&[4]));
    assert_eq!(first.await.unwrap().unwrap(), 4);
    assert_eq!(second.await.unwrap().unwrap(), 4);
    assert_eq!(sent(&mut rx), vec![], "one start for both requests");
}

#[tokio::test]
async fn a_failed_or_stopped_group_fails_its_waiting_requests() {
    let (groups, mut rx) = Attachments::new();
    let a = groups.attach(key("a"), "python", &lifecycle(None));
    let waiting = tokio::spawn({
        let a = a.clone();
        async move { a.lease().await.map(drop) }
    });
    assert_eq!(next(&mut rx).await, Request::Start { group: key("a") });
    groups.update(
        &key("a"),
        Published {
            state: GroupState::Failed("crash loop".into()),
            ..running(&[])
        },
    );
    let err = waiting.await.unwrap().unwrap_err();
    assert!(
        matches!(err, LeaseError::Failed { ref reason, .. } if reason == "crash loop"),
        "{err}"
    );

    let waiting = tokio::spawn({
        let a = a.clone();
        async move { a.lease().await.map(drop) }
    });
    groups.update(
        &key("a"),
        Published {
            state: GroupState::Stopped,
            ..running(&[])
        },
    );
    let err = waiting.await.unwrap().unwrap_err();
    assert!(matches!(err, LeaseError::Stopped { .. }), "{err}");
}

#[tokio::test]
async fn max_requests_asks_a_recycle_and_a_stop_is_answered_here() {
    let (groups, mut rx) = Attachments::new();
    let a = groups.attach(key("a"), "python", &lifecycle(Some(2)));
    groups.update(&key("a"), running(&[1]));
    drop(a.lease().await.unwrap());
    assert_eq!(sent(&mut rx), vec![]);
    drop(a.lease().await.unwrap());
    let Request::Recycle {
        group, endpoint, ..
    } = next(&mut rx).await
    else {
        panic!("a recycle")
    };
    assert_eq!((group, endpoint), (key("a"), 1));
    a.restart();
    tokio::time::timeout(Duration::from_secs(5), a.stop())
        .await
        .expect("a stop is answered at once");
    assert_eq!(a.snapshot().state, GroupState::Running, "nothing stopped");
    assert_eq!(
        sent(&mut rx),
        vec![],
        "neither is the supervisor's business"
    );
}
