//! The router end with real site processes: a real in-process
//! `app::Server` (root) runs a php-fpm pool and Python workers; a minimal
//! stand-in for the supervisor's end of the link (`Bridge`, in this test)
//! publishes its `desired()` and its groups' snapshots to
//! `privsep::router_end::serve_link` over a socket pair, and applies the
//! router's `Start` and `Recycle`. The router end alone serves HTTP: every
//! answer below went through its attached groups to a real process.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{field, get, open_up, python_test_site, TestConfig, TestUser};
use polyhost::app::Server;
use polyhost::privsep::frame;
use polyhost::privsep::router_end::{serve_link, Ended};
use polyhost::privsep::wire::{GroupKey, GroupUpdate, ToRouter, ToSupervisor, WireEndpoint};
use polyhost::supervisor::{GroupHandle, Snapshot};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::mpsc;

/// A group's snapshot as the router is told it.
fn update(group: &GroupKey, snap: &Snapshot) -> GroupUpdate {
    GroupUpdate {
        group: group.clone(),
        state: snap.state.clone(),
        endpoints: snap
            .endpoints
            .iter()
            .map(|e| WireEndpoint {
                id: e.id,
                pid: e.pid,
                socket: e.socket.clone(),
                uid: e.uid,
                tcp: e.tcp,
            })
            .collect(),
        app_error: snap.app_error.clone(),
        last_error: snap.last_error.clone(),
    }
}

/// The supervisor's end, as small as this test allows: the groups are
/// polled (every 20 ms) and each change sent; usage and drained notices
/// are read and dropped (the real end holds processes for them).
async fn bridge(server: Arc<Server>, link: UnixStream, seen: mpsc::UnboundedSender<ToSupervisor>) {
    let (mut read, mut write) = link.into_split();
    let (tx, mut from_router) = mpsc::unbounded_channel::<ToSupervisor>();
    tokio::spawn(async move {
        while let Ok(Some(msg)) = frame::read::<_, ToSupervisor>(&mut read).await {
            if tx.send(msg).is_err() {
                return;
            }
        }
    });
    let groups: HashMap<GroupKey, GroupHandle> = server.published_groups().into_iter().collect();
    let mut sent: HashMap<GroupKey, GroupUpdate> = HashMap::new();
    let send = async |w: &mut OwnedWriteHalf, msg: ToRouter| frame::write(w, &msg).await.is_ok();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            msg = from_router.recv() => {
                let Some(msg) = msg else { return };
                let ok = match &msg {
                    ToSupervisor::Hello { .. } => {
                        send(&mut write, ToRouter::Desired(server.desired())).await
                    }
                    ToSupervisor::Start { group } => {
                        groups[group].start();
                        true
                    }
                    ToSupervisor::Recycle { group, endpoint, reason } => {
                        groups[group].recycle(*endpoint, reason.clone());
                        true
                    }
                    _ => true,
                };
                let _ = seen.send(msg);
                if !ok {
                    return;
                }
            }
            _ = tick.tick() => {
                for (key, handle) in &groups {
                    let now = update(key, &handle.snapshot());
                    let changed = sent.get(key).is_none_or(|before| {
                        (&before.state, &before.endpoints, &before.app_error)
                            != (&now.state, &now.endpoints, &now.app_error)
                    });
                    if changed {
                        sent.insert(key.clone(), now.clone());
                        if !send(&mut write, ToRouter::Group(now)).await {
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_and_python_sites_are_served_through_attached_groups() {
    common::init_logging();
    let cfg = TestConfig::new();
    let (php_user, py_user) = (TestUser::new(), TestUser::new());
    cfg.write(
        "www/php/index.php",
        "<?php echo 'user=' . posix_getpwuid(posix_geteuid())['name'];",
    );
    cfg.write(
        "vhosts/php.toml",
        &format!(
            "hosts = [\"php.test\"]\nroot = \"www/php\"\nuser = \"{}\"\n[php]\nmax_children = 2\nstart = \"on_demand\"\n",
            php_user.name
        ),
    );
    python_test_site(&cfg, "py", &py_user, "pyapp", "", "");
    open_up(cfg.path());
    let server = Server::start(cfg.load()).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let router = tokio::spawn(serve_link(theirs, vec![listener].into(), stop.clone()));
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let bridged = tokio::spawn(bridge(server.clone(), ours, seen_tx));

    // Both start on their first request: the router asks for it.
    let r = get(addr, "php.test", "/").await;
    assert_eq!(
        (r.status, r.text()),
        (200, format!("user={}", php_user.name))
    );
    let r = get(addr, "py.test", "/hello").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(field(&r.text(), "uid"), py_user.uid.to_string());
    assert_eq!(field(&r.text(), "path"), "/hello");
    let r = get(addr, "py.test", "/static.txt").await;
    assert_eq!(r.status, 200, "{}", r.text());

    let mut starts = Vec::new();
    while let Ok(msg) = seen.try_recv() {
        if let ToSupervisor::Start { group } = msg {
            starts.push(group.site);
        }
    }
    starts.sort();
    assert_eq!(starts, ["php", "py"], "one start each");

    stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(10), router)
        .await
        .unwrap();
    assert_eq!(ended.unwrap().unwrap(), Ended::Stopped);
    bridged.abort();
    server.shutdown().await;
}
