//! The router process's end of privilege separation, in process:
//! `privsep::router_end::serve_link` serves a real listener for a stand-in
//! supervisor at the other end of a socket pair, which speaks the contract
//! (`privsep::wire`) by hand. A static site is served from its files; the
//! Python site's "processes" are fake workers (Unix sockets this test
//! listens on), published to the router in `Group` updates as the real
//! supervisor would publish its workers.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{get, wait_for, TestConfig, TestUser};
use polyhost::app::router_link::{Desired, DesiredSite, RunsAs};
use polyhost::config::Config;
use polyhost::privsep::frame;
use polyhost::privsep::router_end::{serve_link, Ended};
use polyhost::privsep::wire::{GroupKey, GroupUpdate, ToRouter, ToSupervisor, WireEndpoint};
use polyhost::supervisor::GroupState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long any one expected message may take.
const WITHIN: Duration = Duration::from_secs(10);

/// The supervisor's end of the link, by hand.
struct Supervisor {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    /// Messages read while looking for another one, in order.
    seen: Vec<ToSupervisor>,
}

impl Supervisor {
    async fn send(&mut self, msg: ToRouter) {
        frame::write(&mut self.write, &msg).await.unwrap();
    }

    /// The first message `pick` takes, within [`WITHIN`]; the others read
    /// on the way are kept in `seen`.
    async fn expect<T>(&mut self, what: &str, pick: impl Fn(&ToSupervisor) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            let read = tokio::time::timeout_at(deadline, frame::read(&mut self.read)).await;
            let msg: ToSupervisor = match read {
                Ok(Ok(Some(msg))) => msg,
                other => panic!(
                    "waiting for {what}: {other:?}; seen meanwhile: {:?}",
                    self.seen
                ),
            };
            if let Some(found) = pick(&msg) {
                return found;
            }
            self.seen.push(msg);
        }
    }

    /// A round trip: every message the router queued before it answers
    /// this is in `seen` afterwards.
    async fn stats(&mut self, id: u64) -> polyhost::app::router_link::StatsReply {
        self.send(ToRouter::StatsRequest { id }).await;
        self.expect("stats", |m| match m {
            ToSupervisor::Stats(s) if s.id == id => Some(s.clone()),
            _ => None,
        })
        .await
    }

    fn drained(&self) -> Vec<(GroupKey, u64)> {
        self.seen
            .iter()
            .filter_map(|m| match m {
                ToSupervisor::Drained { group, endpoint } => Some((group.clone(), *endpoint)),
                _ => None,
            })
            .collect()
    }
}

/// A Python worker stand-in: answers `GET <path>` with `<name> <path>`;
/// a path starting with `/slow` waits until `gate` is open.
struct FakeWorker {
    socket: PathBuf,
    seen: Arc<Mutex<Vec<String>>>,
    gate: watch::Sender<bool>,
}

impl FakeWorker {
    fn start(dir: &std::path::Path, name: &'static str) -> FakeWorker {
        let socket = dir.join(format!("{name}.sock"));
        let listener = UnixListener::bind(&socket).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (gate, open) = watch::channel(false);
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve_worker(conn, name, log.clone(), open.clone()));
            }
        });
        FakeWorker { socket, seen, gate }
    }

    fn paths(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve_worker(
    mut conn: UnixStream,
    name: &'static str,
    seen: Arc<Mutex<Vec<String>>>,
    mut gate: watch::Receiver<bool>,
) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        seen.lock().unwrap().push(path.clone());
        if path.starts_with("/slow") {
            let _ = gate.wait_for(|open| *open).await;
        }
        let body = format!("{name} {path}");
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if conn.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn py_group(generation: u64) -> GroupKey {
    GroupKey {
        site: "py".into(),
        runtime: "python".into(),
        generation,
    }
}

fn running(generation: u64, workers: &[(u64, &FakeWorker)]) -> ToRouter {
    ToRouter::Group(GroupUpdate {
        group: py_group(generation),
        state: GroupState::Running,
        endpoints: workers
            .iter()
            .map(|(id, w)| WireEndpoint {
                id: *id,
                pid: 1,
                socket: w.socket.clone(),
                uid: None,
                tcp: None,
            })
            .collect(),
        app_error: None,
        last_error: None,
    })
}

fn desired(version: u64, config: &Config, sites: &[(&str, u64, bool)]) -> ToRouter {
    ToRouter::Desired(state(version, config, sites))
}

/// What the supervisor sends for a publication after the first: the
/// changes from what it sent before.
fn changes(before: &Desired, now: &Desired) -> ToRouter {
    ToRouter::Changes(now.changes_from(before))
}

/// A complete state: `config`'s sites named in `sites` (name, generation,
/// stopped).
fn state(version: u64, config: &Config, sites: &[(&str, u64, bool)]) -> Desired {
    let mut config = config.clone();
    config
        .sites
        .retain(|name, _| sites.iter().any(|(n, _, _)| *n == name.as_str()));
    Desired {
        version,
        acme_challenges: Default::default(),
        sites: sites
            .iter()
            .map(|&(name, generation, stopped)| {
                (
                    name.to_owned(),
                    DesiredSite {
                        generation,
                        stopped,
                        runs_as: runs_as(&config, name),
                        failed: false,
                    },
                )
            })
            .collect(),
        config,
    }
}

/// The site's user's credentials, as the supervisor resolves them.
fn runs_as(config: &Config, site: &str) -> Option<RunsAs> {
    let site = config.sites.iter().find(|(n, _)| n.as_str() == site)?.1;
    let user = nix::unistd::User::from_name(site.user.as_deref()?).ok()??;
    Some(RunsAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

/// A static site `st` and a Python site `py` (max_requests = 3), their log
/// files made as the supervisor makes them.
fn sites(cfg: &TestConfig, user: &TestUser) -> Config {
    cfg.static_site("st", &["st.test"], "");
    cfg.write(
        "vhosts/py.toml",
        &format!(
            "hosts = [\"py.test\"]\nroot = \"www/py\"\nuser = \"{}\"\n[python]\napp = \"pyapp:app\"\npath = [\"apps\"]\nmax_requests = 3\n",
            user.name
        ),
    );
    cfg.write("www/py/static.txt", "static\n");
    let config = cfg.load();
    polyhost::router::prepare_log_dir(&config.server.log_dir).unwrap();
    for name in ["st", "py"] {
        polyhost::router::SiteLogs::open(&config.server.log_dir, name);
    }
    config
}

struct Started {
    supervisor: Supervisor,
    addr: std::net::SocketAddr,
    /// The TLS listener's address.
    https: std::net::SocketAddr,
    stop: CancellationToken,
    router: tokio::task::JoinHandle<Result<Ended, polyhost::privsep::router_end::RouterError>>,
}

async fn start() -> Started {
    common::init_logging();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https = tls.local_addr().unwrap();
    let listeners = polyhost::router::Listeners {
        http: vec![listener],
        https: vec![tls],
    };
    let (ours, theirs) = UnixStream::pair().unwrap();
    let stop = CancellationToken::new();
    let router = tokio::spawn(serve_link(theirs, listeners, stop.clone()));
    let (read, write) = ours.into_split();
    let mut supervisor = Supervisor {
        read,
        write,
        seen: Vec::new(),
    };
    let pid = supervisor
        .expect("Hello", |m| match m {
            ToSupervisor::Hello { pid } => Some(*pid),
            _ => None,
        })
        .await;
    assert_eq!(pid, std::process::id());
    Started {
        supervisor,
        addr,
        https,
        stop,
        router,
    }
}

async fn applied(sup: &mut Supervisor, version: u64) {
    sup.expect(&format!("Applied {{ version: {version} }}"), |m| match m {
        ToSupervisor::Applied { version: v } if *v == version => Some(()),
        _ => None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_serves_what_its_supervisor_publishes() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    let config = sites(&cfg, &user);
    let Started {
        mut supervisor,
        addr,
        stop: _stop,
        router,
        ..
    } = start().await;
    let sup = &mut supervisor;

    sup.send(desired(1, &config, &[("st", 1, false), ("py", 1, false)]))
        .await;
    applied(sup, 1).await;
    let r = get(addr, "st.test", "/").await;
    assert_eq!((r.status, r.text().as_str()), (200, "site st\n"));

    // Scale from zero: the request finds no process and asks for a start.
    let one = FakeWorker::start(cfg.path(), "one");
    let first = tokio::spawn(get(addr, "py.test", "/hello"));
    let group = sup
        .expect("Start", |m| match m {
            ToSupervisor::Start { group } => Some(group.clone()),
            _ => None,
        })
        .await;
    assert_eq!(group, py_group(1));
    sup.send(running(1, &[(1, &one)])).await;
    let r = first.await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "one /hello"));
    let used = sup
        .expect("Usage of py", |m| match m {
            ToSupervisor::Usage(groups) => groups
                .iter()
                .find(|g| g.group == py_group(1) && g.endpoints.iter().all(|e| e.in_flight == 0))
                .cloned(),
            _ => None,
        })
        .await;
    assert_eq!(used.endpoints.len(), 1, "{used:?}");
    assert_eq!((used.endpoints[0].id, used.endpoints[0].served), (1, 1));

    // A process unpublished while it serves a request: no new request goes
    // to it, and it is drained once that request is done.
    let slow = tokio::spawn(get(addr, "py.test", "/slow"));
    wait_for(
        "the slow request at worker one",
        WITHIN,
        async || one.paths(),
        |p| p.iter().any(|p| p == "/slow"),
    )
    .await;
    let two = FakeWorker::start(cfg.path(), "two");
    sup.send(running(1, &[(2, &two)])).await;
    // A round trip: the router read the update before it answers.
    sup.stats(1).await;
    let r = get(addr, "py.test", "/after").await;
    assert_eq!(r.text(), "two /after");
    sup.stats(2).await;
    assert_eq!(sup.drained(), vec![], "worker one still serves /slow");
    one.gate.send_replace(true);
    assert_eq!(slow.await.unwrap().text(), "one /slow");
    let endpoint = sup
        .expect("Drained", |m| match m {
            ToSupervisor::Drained { group, endpoint } if *group == py_group(1) => Some(*endpoint),
            _ => None,
        })
        .await;
    assert_eq!(endpoint, 1);

    // max_requests = 3: the third request on worker two asks its recycle.
    for _ in 0..2 {
        assert_eq!(get(addr, "py.test", "/x").await.status, 200);
    }
    let (group, endpoint) = sup
        .expect("Recycle", |m| match m {
            ToSupervisor::Recycle {
                group, endpoint, ..
            } => Some((group.clone(), *endpoint)),
            _ => None,
        })
        .await;
    assert_eq!((group, endpoint), (py_group(1), 2));

    // Counters for status.
    let stats = sup.stats(3).await;
    let st = stats.sites.iter().find(|(n, _)| n == "st").unwrap();
    assert_eq!(st.1.requests, 1, "{stats:?}");
    let py = stats.sites.iter().find(|(n, _)| n == "py").unwrap();
    assert_eq!(py.1.requests, 5, "{stats:?}");
    let line = stats
        .metrics
        .lines()
        .find(|l| l.starts_with("polyhost_requests_total{site=\"py\",class=\"2xx\"}"))
        .unwrap_or_else(|| panic!("the router's families:\n{}", stats.metrics));
    assert!(line.ends_with(" 5"), "{line}");
    assert!(
        stats.metrics.contains("polyhost_worker_threads_total"),
        "a Python site's threads"
    );

    // The operator stops `st`: 503, its counters go on.
    sup.send(desired(2, &config, &[("st", 1, true), ("py", 1, false)]))
        .await;
    applied(sup, 2).await;
    assert_eq!(get(addr, "st.test", "/").await.status, 503);

    // Shutdown: no new connection, the request in flight finishes.
    let in_flight = tokio::spawn(get(addr, "py.test", "/slow-too"));
    wait_for(
        "the request at worker two",
        WITHIN,
        async || two.paths(),
        |p| p.iter().any(|p| p == "/slow-too"),
    )
    .await;
    sup.send(ToRouter::Shutdown).await;
    sup.stats(4).await;
    assert!(!router.is_finished(), "a request is in flight");
    two.gate.send_replace(true);
    let r = in_flight.await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "two /slow-too"));
    let ended = tokio::time::timeout(WITHIN, router).await.unwrap();
    assert_eq!(ended.unwrap().unwrap(), Ended::Shutdown);
    let log = std::fs::read_to_string(config.server.log_dir.join("st.access.log")).unwrap();
    assert_eq!(
        log.lines().count(),
        2,
        "the router wrote the supervisor's file:\n{log}"
    );
    assert!(log.contains("\"GET / HTTP/1.1\" 503"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_generation_is_served_once_applied_and_the_old_one_drained() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    let config = sites(&cfg, &user);
    let Started {
        mut supervisor,
        addr,
        stop: _stop,
        router,
        ..
    } = start().await;
    let sup = &mut supervisor;
    let old = FakeWorker::start(cfg.path(), "old");
    let new = FakeWorker::start(cfg.path(), "new");
    // At start the groups come before the first Desired too.
    sup.send(running(1, &[(1, &old)])).await;
    let one = state(1, &config, &[("st", 1, false), ("py", 1, false)]);
    sup.send(ToRouter::Desired(one.clone())).await;
    applied(sup, 1).await;
    assert_eq!(get(addr, "py.test", "/a").await.text(), "old /a");

    // A reload: the new generation's group first, then the changes (`py`'s
    // generation alone: no configuration crosses).
    sup.send(running(2, &[(1, &new)])).await;
    let two = state(2, &config, &[("st", 1, false), ("py", 2, false)]);
    let ToRouter::Changes(diff) = changes(&one, &two) else {
        unreachable!()
    };
    assert_eq!(diff.changed.len(), 1, "{diff:?}");
    assert!(
        diff.changed.values().all(|c| c.config.is_none()),
        "{diff:?}"
    );
    sup.send(ToRouter::Changes(diff)).await;
    applied(sup, 2).await;
    assert_eq!(get(addr, "st.test", "/").await.status, 200, "st kept");
    assert_eq!(get(addr, "py.test", "/b").await.text(), "new /b");
    // The supervisor retires the old generation: drained at once (idle).
    sup.send(ToRouter::Group(GroupUpdate {
        group: py_group(1),
        state: GroupState::Stopped,
        endpoints: vec![],
        app_error: None,
        last_error: None,
    }))
    .await;
    let endpoint = sup
        .expect("Drained of the old generation", |m| match m {
            ToSupervisor::Drained { group, endpoint } if *group == py_group(1) => Some(*endpoint),
            _ => None,
        })
        .await;
    assert_eq!(endpoint, 1);
    assert_eq!(old.paths(), ["/a"]);

    // The supervisor goes away: the router stops.
    drop(supervisor);
    let ended = tokio::time::timeout(WITHIN, router).await.unwrap();
    assert_eq!(ended.unwrap().unwrap(), Ended::SupervisorGone);
}

#[tokio::test]
async fn a_supervisor_that_stops_before_the_first_desired_stops_the_router() {
    let Started {
        mut supervisor,
        stop: _stop,
        router,
        ..
    } = start().await;
    supervisor.send(ToRouter::StatsRequest { id: 9 }).await;
    let stats = supervisor.stats(10).await;
    assert!(stats.sites.is_empty());
    supervisor.send(ToRouter::Shutdown).await;
    let ended = tokio::time::timeout(WITHIN, router).await.unwrap();
    assert_eq!(ended.unwrap().unwrap(), Ended::Shutdown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_cross_the_link_and_a_renewed_one_is_served_after_its_desired() {
    use common::front::{h1_over, self_signed, send_h1, served_cert, tls_connect};
    let cfg = TestConfig::new();
    let first = self_signed(&["sec.test"]);
    cfg.tls_site("sec", &["sec.test"], "", "", &first);
    let config = cfg.load();
    let Started {
        mut supervisor,
        https,
        stop: _stop,
        ..
    } = start().await;
    let sup = &mut supervisor;
    let one = state(1, &config, &[("sec", 1, false)]);
    sup.send(ToRouter::Desired(one.clone())).await;
    applied(sup, 1).await;
    let tls = tls_connect(https, "sec.test", &["http/1.1"]).await.unwrap();
    assert!(
        served_cert(&tls) == first.der,
        "the certificate of the Desired"
    );
    let mut h1 = h1_over(tls).await;
    let r = send_h1(&mut h1, common::request("GET", "sec.test", "/")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "site sec\n"));

    // Renewed: the same processes (none), a new route with the new pair.
    let renewed = self_signed(&["sec.test"]);
    cfg.write_cert("sec", &renewed);
    let config = cfg.load();
    sup.send(changes(&one, &state(2, &config, &[("sec", 1, false)])))
        .await;
    applied(sup, 2).await;
    let tls = tls_connect(https, "sec.test", &[]).await.unwrap();
    assert!(served_cert(&tls) == renewed.der, "the renewed certificate");
    let r = send_h1(&mut h1, common::request("GET", "sec.test", "/")).await;
    assert_eq!(r.status, 200, "the connection made before goes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_against_another_version_end_the_router_and_are_not_served() {
    let cfg = TestConfig::new();
    cfg.static_site("st", &["st.test"], "");
    cfg.static_site("other", &["other.test"], "");
    let config = cfg.load();
    let Started {
        mut supervisor,
        stop: _stop,
        router,
        ..
    } = start().await;
    let sup = &mut supervisor;
    let one = state(1, &config, &[("st", 1, false)]);
    sup.send(ToRouter::Desired(one.clone())).await;
    applied(sup, 1).await;
    // Changes that add `other`, made against version 7, which this router
    // never served.
    let mut skewed = one.clone();
    skewed.version = 7;
    let two = state(8, &config, &[("st", 1, false), ("other", 1, false)]);
    sup.send(changes(&skewed, &two)).await;
    let ended = tokio::time::timeout(WITHIN, router).await.unwrap();
    assert_eq!(ended.unwrap().unwrap(), Ended::SupervisorGone);
    let mut rest = Vec::new();
    while let Ok(Ok(Some(msg))) =
        tokio::time::timeout(WITHIN, frame::read::<_, ToSupervisor>(&mut sup.read)).await
    {
        rest.push(msg);
    }
    assert!(
        !rest
            .iter()
            .any(|m| matches!(m, ToSupervisor::Applied { version: 8 })),
        "it never said it serves them: {rest:?}"
    );
}
