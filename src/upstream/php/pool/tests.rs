//! The pool against socket pairs and a listener standing in for php-fpm.
use std::io::Read;

use tokio::io::AsyncWriteExt;

use super::*;

fn conn(stream: UnixStream) -> Conn {
    Conn { stream, served: 0 }
}

#[tokio::test]
async fn dead_and_foreign_connections_are_not_reused_and_idle_ones_are_reaped() {
    let pool = ConnPool::new(
        4,
        Duration::from_millis(50),
        Reuse::Pinned,
        0,
        Default::default(),
    );
    let (alive, _alive_peer) = UnixStream::pair().unwrap();
    let (dead, dead_peer) = UnixStream::pair().unwrap();
    let (chatty, chatty_peer) = UnixStream::pair().unwrap();
    chatty_peer.try_write(b"x").unwrap();
    pool.put("/s".into(), conn(alive));
    pool.put("/s".into(), conn(chatty));
    pool.put("/s".into(), conn(dead));
    drop(dead_peer);
    // Newest first: `dead` (peer closed) and `chatty` (unexpected bytes) are dropped.
    let got = pool
        .take(Path::new("/s"))
        .expect("the live connection")
        .stream;
    assert_eq!(pool.idle_count(), 0);
    pool.put("/s".into(), conn(got));
    assert!(pool.take(Path::new("/new-generation.sock")).is_none());
    assert_eq!(
        pool.idle_count(),
        0,
        "connections to an older socket are dropped"
    );

    let (c, _peer) = UnixStream::pair().unwrap();
    pool.put("/s".into(), conn(c));
    crate::upstream::tests_support::until("the idle connection reaped", || pool.idle_count() == 0)
        .await;
}

/// A connection is pooled until its child's `max_requests`-th response,
/// then retired: the request after it never meets it.
#[tokio::test]
async fn a_connection_is_retired_after_its_childs_last_request() {
    let pool = ConnPool::new(
        4,
        Duration::from_secs(60),
        Reuse::Pinned,
        3,
        Default::default(),
    );
    let (stream, _peer) = UnixStream::pair().unwrap();
    let mut conn = Some(conn(stream));
    for served in 1..=2 {
        pool.put("/s".into(), conn.take().unwrap());
        let got = pool.take(Path::new("/s")).expect("pooled");
        assert_eq!(got.served, served);
        conn = Some(got);
    }
    pool.put("/s".into(), conn.take().unwrap());
    assert!(pool.take(Path::new("/s")).is_none(), "retired, not pooled");
    assert_eq!(
        pool.stats(),
        PoolStats {
            reused: 2,
            retired: 1,
            ..Default::default()
        }
    );
    // Without recycling (max_requests = 0) nothing is retired.
    let pool = ConnPool::new(
        4,
        Duration::from_secs(60),
        Reuse::Pinned,
        0,
        Default::default(),
    );
    let (stream, _peer) = UnixStream::pair().unwrap();
    pool.put(
        "/s".into(),
        Conn {
            stream,
            served: 1_000_000,
        },
    );
    assert!(pool.take(Path::new("/s")).is_some());
}

#[tokio::test]
async fn a_lane_takes_its_own_connection_first_and_can_take_another_lanes() {
    use crate::lanes::Lanes;
    let pool = ConnPool::new(
        4,
        Duration::from_secs(60),
        Reuse::Pinned,
        0,
        Default::default(),
    );
    let put_on = |lanes: &Lanes| {
        let pool = pool.clone();
        let lane = lanes.handles().next().unwrap().clone();
        async move {
            lane.spawn(async move {
                let (stream, peer) = UnixStream::pair().unwrap();
                pool.put("/s".into(), conn(stream));
                peer.into_std().unwrap()
            })
            .await
            .unwrap()
        }
    };
    // Takes a connection on `lanes` and writes one byte through it.
    let take_on = |lanes: &Lanes| {
        let pool = pool.clone();
        let lane = lanes.handles().next().unwrap().clone();
        async move {
            lane.spawn(async move {
                let mut stream = pool
                    .take(Path::new("/s"))
                    .expect("an idle connection")
                    .stream;
                tokio::time::timeout(Duration::from_secs(5), stream.write_all(b"x"))
                    .await
                    .expect("writable within 5s")
                    .expect("write");
                stream
            })
            .await
            .unwrap()
        }
    };
    let got = |peer: &mut std::os::unix::net::UnixStream| peer.read(&mut [0u8; 1]).is_ok();
    let first = Lanes::start(1).unwrap();
    let second = Lanes::start(1).unwrap();
    let mut from_first = put_on(&first).await;
    let mut from_second = put_on(&second).await;
    // The second lane's connection is the newest, but the first lane takes its own.
    let _kept = take_on(&first).await;
    assert!(got(&mut from_first) && !got(&mut from_second));
    // Only the second lane's is left: it moves here, and works after its lane stopped.
    second.stop().await;
    let _kept = take_on(&first).await;
    assert!(got(&mut from_second));
    assert_eq!(pool.idle_count(), 0);
    first.stop().await;
}

/// A connection's last request opens its successor, which is pooled
/// only once the peer read its probe; meanwhile a request waits for it
/// (or any connection put back) instead of getting `None`.
#[tokio::test]
async fn a_successor_is_pooled_once_accepted_and_a_request_waits_for_it() {
    let (_dir, socket, listener) = listening_socket();
    let pool = ConnPool::new(
        1,
        Duration::from_secs(60),
        Reuse::Pinned,
        2,
        Default::default(),
    );
    assert!(!pool.is_last(0) && pool.is_last(1));
    pool.warm_successor(socket.clone(), None, Duration::from_secs(30));
    let waiting = tokio::spawn({
        let (pool, socket) = (pool.clone(), socket.clone());
        async move { pool.take_or_wait(&socket).await.map(|c| c.served) }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.stats().waited == 0 {
        assert!(
            Instant::now() < deadline,
            "never waited: {:?}",
            pool.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!waiting.is_finished(), "nothing accepted the successor yet");
    let (mut child, _) = listener.accept().await.unwrap();
    let mut probe = [0u8; 8];
    tokio::io::AsyncReadExt::read_exact(&mut child, &mut probe)
        .await
        .unwrap();
    let served = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting request got the successor within 10 s")
        .unwrap();
    assert_eq!(served, Some(0), "a fresh child's connection");
    let stats = pool.stats();
    assert_eq!((stats.warmed, stats.waited, stats.warm_failed), (1, 1, 0));

    // No successor on its way: nothing to wait for.
    assert!(pool.take_or_wait(&socket).await.is_none());
    // A successor nobody accepts in time is closed, and its waiter let go.
    pool.warm_successor(socket.clone(), None, Duration::from_millis(100));
    let got = tokio::time::timeout(Duration::from_secs(10), pool.take_or_wait(&socket))
        .await
        .expect("let go within 10 s");
    assert!(got.is_none());
    assert_eq!(pool.stats().warm_failed, 1);
}

/// A connection whose answer ends while requests are queued goes to the
/// first of them with its request already written on it (the php-fpm child
/// reads it at once); a queued request that may not be written onto a
/// kept-alive connection (a POST) gets the place, the connection staying
/// in the pool; with nobody queued the place is simply free again.
#[tokio::test]
async fn a_queued_request_is_written_onto_the_connection_its_place_frees() {
    use super::super::places::Admit;
    use tokio::io::AsyncReadExt;
    let pool = ConnPool::new(
        1,
        Duration::from_secs(60),
        Reuse::Pinned,
        0,
        Default::default(),
    );
    let Admit::Now(place) = pool.admit(|| None) else {
        panic!("the one place is free")
    };
    let Admit::Wait(get) = pool.admit(|| Some(bytes::Bytes::from_static(b"GET records"))) else {
        panic!("the place is taken: it waits")
    };
    let Admit::Wait(post) = pool.admit(|| None) else {
        panic!("still taken")
    };
    let (stream, mut child) = UnixStream::pair().unwrap();
    pool.finish("/s".into(), Conn { stream, served: 3 }, place);
    let grant = tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .expect("the GET was granted at once");
    let handed = grant.handed.expect("with the connection");
    assert_eq!((handed.written, handed.conn.served), (11, 4));
    let mut got = [0u8; 11];
    child.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"GET records", "written before the GET's task ran");
    assert_eq!(pool.stats().handed, 1);

    // Its answer ends too: the POST gets the place, the connection is pooled.
    let (conn, written) = pool.adopt_handed(handed, Path::new("/s")).unwrap();
    assert_eq!(written, 11);
    pool.finish("/s".into(), conn, grant.place);
    let grant = tokio::time::timeout(Duration::from_secs(5), post)
        .await
        .expect("the POST was granted");
    assert!(grant.handed.is_none());
    assert_eq!(pool.idle_count(), 1);
    drop(grant);
    assert!(matches!(pool.admit(|| None), Admit::Now(_)), "free again");
}

/// A retired connection's place waits for its successor (parked) instead
/// of going to a queued request that would wait for the successor alone;
/// the successor comes with it to that request, its records written onto
/// it. A successor that comes to nothing frees the place.
#[tokio::test]
async fn a_retired_connections_place_waits_for_its_successor() {
    use super::super::places::Admit;
    use futures_util::FutureExt;
    use tokio::io::AsyncReadExt;
    let (_dir, socket, listener) = listening_socket();
    let pool = ConnPool::new(
        1,
        Duration::from_secs(60),
        Reuse::Pinned,
        2,
        Default::default(),
    );
    let Admit::Now(place) = pool.admit(|| None) else {
        panic!("the one place is free")
    };
    pool.warm_successor(socket.clone(), None, Duration::from_secs(30));
    let Admit::Wait(mut get) = pool.admit(|| Some(bytes::Bytes::from_static(b"GET records")))
    else {
        panic!("the place is taken: it waits")
    };
    let (stream, _retiring_child) = UnixStream::pair().unwrap();
    pool.finish(socket.clone(), Conn { stream, served: 1 }, place);
    assert_eq!(pool.stats().retired, 1);
    assert!(
        (&mut get).now_or_never().is_none(),
        "not granted before the successor is ready"
    );
    let (mut child, _) = listener.accept().await.unwrap();
    let mut probe = [0u8; 8];
    child.read_exact(&mut probe).await.unwrap();
    let grant = tokio::time::timeout(Duration::from_secs(10), get)
        .await
        .expect("granted with the successor within 10 s");
    let handed = grant.handed.expect("with the successor");
    assert_eq!((handed.written, handed.conn.served), (11, 0));
    let mut got = [0u8; 11];
    child.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"GET records");

    // Its successor never accepted: the parked place is freed, the queued
    // request gets it (and will open a connection of its own).
    pool.warm_successor(socket.clone(), None, Duration::from_millis(100));
    let Admit::Wait(next) = pool.admit(|| Some(bytes::Bytes::from_static(b"next"))) else {
        panic!("the place is taken: it waits")
    };
    let conn = Conn {
        stream: handed.conn.stream,
        served: 1,
    };
    pool.finish(socket.clone(), conn, grant.place);
    let grant = tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("the place freed within 10 s");
    assert!(grant.handed.is_none());
    assert_eq!(pool.stats().warm_failed, 1);
}

/// A php-fpm socket stand-in: its directory (kept while the test runs),
/// path and listener.
fn listening_socket() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    tokio::net::UnixListener,
) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fpm.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    (dir, socket, listener)
}
