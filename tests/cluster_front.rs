//! The front and the controller against a real etcd and a real HAProxy.
//! The nodes are fakes: the test writes their `nodes/NODE` reports (under
//! leases) and runs a tiny HTTP server per node that answers with its name,
//! so every step of a move or a failover is driven and observed here.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use polyhost::cluster::control::Snapshot;
use polyhost::cluster::schema::{Keys, NodeReport, Placement, SiteReport, SiteState};

use common::etcd::{free_port, Etcd};
use common::haproxy::{
    cluster_command, get_via_front, start_haproxy, tls_server, tls_subject, FakeNode, Proc,
};
use common::wait_for;

const PREFIX: &str = "/t/";
const WAIT: Duration = Duration::from_secs(30);

struct Cluster {
    dir: tempfile::TempDir,
    etcd: Etcd,
    client: Client,
    keys: Keys,
    nodes: Vec<(String, FakeNode, i64)>,
    listen: String,
    _haproxy: Proc,
    front: Proc,
    tls_listen: String,
    _tls_servers: Vec<Proc>,
}

impl Cluster {
    /// etcd, fake nodes `names` (registered, no sites), HAProxy with a
    /// backend per node, and `polyhost cluster front`.
    async fn start(names: &[&str]) -> Cluster {
        Cluster::start_with(names, false).await
    }

    /// With `tls`, each fake node also serves TLS (`openssl s_server`, a
    /// certificate for `CN=node-NAME`) and HAProxy gets the passthrough
    /// frontend on [`Cluster::tls_listen`].
    async fn start_with(names: &[&str], tls: bool) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let etcd = Etcd::start().await;
        let client = etcd.client().await;
        let mut nodes = Vec::new();
        for name in names {
            nodes.push((name.to_string(), FakeNode::start(name).await, 0));
        }
        let listen = format!("127.0.0.1:{}", free_port());
        let maps = dir.path().join("maps");
        std::fs::create_dir(&maps).unwrap();
        for f in ["hosts.map", "wildcards.map"] {
            std::fs::write(maps.join(f), "").unwrap();
        }
        let socket = dir.path().join("haproxy.sock");
        let mut args = vec![
            "haproxy-config".to_string(),
            "--listen".into(),
            listen.clone(),
        ];
        args.extend([
            "--map-dir".into(),
            path(&maps),
            "--stats-socket".into(),
            path(&socket),
        ]);
        let tls_listen = format!("127.0.0.1:{}", free_port());
        let mut tls_servers = Vec::new();
        for (name, node, _) in &nodes {
            let mut spec = format!("{name}={}", node.addr);
            if tls {
                let (server, addr) = tls_server(dir.path(), name);
                tls_servers.push(server);
                spec.push_str(&format!(",{addr}"));
            }
            args.extend(["--node".into(), spec]);
        }
        if tls {
            args.extend(["--listen-tls".into(), tls_listen.clone()]);
        }
        let cfg = ok(cli(&etcd.client_url(), &args));
        let haproxy = start_haproxy(dir.path(), &cfg);
        let front = Proc::spawn(
            cluster_command(&etcd.client_url(), PREFIX)
                .args(["front"])
                .args([
                    "--haproxy-socket",
                    &path(&socket),
                    "--map-dir",
                    &path(&maps),
                ])
                .args(["--id", "f1", "--lease-ttl", "3", "--singleton-grace", "2"]),
            dir.path().join("front.log"),
        );
        let mut cluster = Cluster {
            tls_listen,
            _tls_servers: tls_servers,
            dir,
            etcd,
            client,
            keys: Keys::new(PREFIX),
            nodes,
            listen,
            _haproxy: haproxy,
            front,
        };
        for name in names {
            cluster.report(name, &[]).await;
        }
        cluster
    }

    /// Writes `nodes/NAME` (under the node's lease) with these sites.
    async fn report(&mut self, name: &str, sites: &[(&str, SiteState, Option<&str>)]) {
        self.report_missing(name, sites, &[]).await;
    }

    /// As [`Cluster::report`], listing `missing` in `roots_missing`.
    async fn report_missing(
        &mut self,
        name: &str,
        sites: &[(&str, SiteState, Option<&str>)],
        missing: &[&str],
    ) {
        let i = self.nodes.iter().position(|(n, _, _)| n == name).unwrap();
        if self.nodes[i].2 == 0 {
            self.nodes[i].2 = self.client.lease_grant(3, None).await.unwrap().id();
            let (mut keeper, _stream) =
                self.client.lease_keep_alive(self.nodes[i].2).await.unwrap();
            tokio::spawn(async move {
                while keeper.keep_alive().await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
        }
        let mut report = NodeReport {
            advertise: self.nodes[i].1.addr.clone(),
            capacity: 10,
            accepting: true,
            roots_missing: missing.iter().map(|s| s.to_string()).collect(),
            ..NodeReport::default()
        };
        for (site, state, error) in sites {
            let r = SiteReport {
                state: *state,
                error: error.map(str::to_owned),
                revision: 1,
            };
            report.sites.insert(site.to_string(), r);
        }
        let put = PutOptions::new().with_lease(self.nodes[i].2);
        let value = serde_json::to_string(&report).unwrap();
        self.client
            .put(self.keys.node(name), value, Some(put))
            .await
            .unwrap();
    }

    /// The node's lease ends now: its key vanishes as on expiry.
    async fn kill_node(&mut self, name: &str) {
        let i = self.nodes.iter().position(|(n, _, _)| n == name).unwrap();
        self.client.lease_revoke(self.nodes[i].2).await.unwrap();
    }

    fn cli(&self, args: &[&str]) -> Output {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        cli(&self.etcd.client_url(), &args)
    }

    /// Writes a static site with `hosts` and stores it through `cluster put`.
    fn put(&self, name: &str, hosts: &[&str]) {
        let file = self.dir.path().join(format!("{name}.toml"));
        let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
        let root = self.dir.path().display();
        std::fs::write(
            &file,
            format!(
                "hosts = [{}]\nroot = \"{root}\"\n[static]\n",
                hosts.join(", ")
            ),
        )
        .unwrap();
        ok(self.cli(&["put", name, &path(&file)]));
    }

    async fn snapshot(&mut self) -> Snapshot {
        Snapshot::load(&mut self.client, &self.keys).await.unwrap()
    }

    async fn placement(&mut self, site: &str) -> Option<Placement> {
        self.snapshot().await.placements.get(site).cloned()
    }

    /// Until HAProxy answers `host` with `body`; the logs when it never does.
    async fn wait_served(&self, host: &str, body: &str) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let seen = get_via_front(&self.listen, host).await;
            if matches!(&seen, Ok((200, b)) if b == body) {
                return;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "{host} not served by {body} within {WAIT:?}; last seen: {seen:?}\nfront log:\n{}\nHAProxy log:\n{}\nmaps:\n{}{}",
                    self.front.log_text(),
                    self._haproxy.log_text(),
                    self.map_file("hosts.map"),
                    self.map_file("wildcards.map"),
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn map_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("maps").join(name)).unwrap()
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// `polyhost cluster --etcd URL --prefix /t/ ARGS...`.
fn cli(url: &str, args: &[String]) -> Output {
    cluster_command(url, PREFIX).args(args).output().unwrap()
}

fn ok(out: Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{:?}\nstdout: {text}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_follows_placement_and_a_move_waits_for_ready_and_switch() {
    let mut c = Cluster::start(&["a", "b"]).await;
    c.put("shop", &["shop.test", "*.shop.test"]);
    ok(c.cli(&["place", "shop", "a"]));
    c.report("a", &[("shop", SiteState::Ready, None)]).await;
    c.wait_served("shop.test", "node a").await;
    c.wait_served("www.shop.test:80", "node a").await;
    assert_eq!(c.map_file("hosts.map"), "shop.test node_a\n");
    assert_eq!(c.map_file("wildcards.map"), ".shop.test node_a\n");

    // The move starts b, and goes nowhere until b is ready.
    let mut mover = tokio::process::Command::from(cluster_command(&c.etcd.client_url(), PREFIX))
        .args(["move", "shop", "b"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let overlap = Placement {
        node: "b".into(),
        draining: vec!["a".into()],
        singleton: false,
    };
    let seen = wait_for(
        "placement {b, draining a}",
        WAIT,
        async || c.placement("shop").await,
        |p| p.as_ref() == Some(&overlap),
    )
    .await;
    assert_eq!(seen, Some(overlap));
    c.report("b", &[("shop", SiteState::Starting, None)]).await;
    c.wait_served("shop.test", "node a").await;
    assert!(
        mover.try_wait().unwrap().is_none(),
        "the move ended before b was ready"
    );

    c.report("b", &[("shop", SiteState::Ready, None)]).await;
    let out = tokio::time::timeout(WAIT, mover.wait_with_output())
        .await
        .expect("move ended")
        .unwrap();
    assert!(
        out.status.success(),
        "move: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "moved shop from a to b"
    );
    assert_eq!(c.placement("shop").await.map(|p| p.draining), Some(vec![]));
    c.wait_served("shop.test", "node b").await;
    let front = c
        .snapshot()
        .await
        .fronts
        .get("f1")
        .cloned()
        .expect("fronts/f1");
    assert_eq!(
        front.routes.get("*.shop.test").map(String::as_str),
        Some("b")
    );
    assert_eq!(c.map_file("hosts.map"), "shop.test node_b\n");

    // A failing target: the move gives up and the site stays on b.
    c.report("b", &[("shop", SiteState::Ready, None)]).await;
    c.report(
        "a",
        &[("shop", SiteState::Failed, Some("root /srv/x: not found"))],
    )
    .await;
    let out = c.cli(&["move", "shop", "a", "--ready-timeout", "10"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rolled back") && err.contains("root /srv/x"),
        "{err}"
    );
    assert_eq!(c.placement("shop").await.map(|p| p.node), Some("b".into()));

    // status shows the nodes, the placement and a's error.
    let status = ok(c.cli(&["status"]));
    assert!(status.contains("shop\tb\t"), "{status}");
    assert!(
        status.contains("a=failed: root /srv/x: not found"),
        "{status}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(c.cli(&["status", "--json"]))).unwrap();
    assert_eq!(json["sites"]["shop"]["node"], "b", "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_have_their_exit_codes() {
    let mut c = Cluster::start(&["a"]).await;
    let bad = c.dir.path().join("bad.toml");
    std::fs::write(&bad, "hosts = [\"x.test\"]\nroot = \"/tmp\"\nbogus = 1\n").unwrap();
    let out = c.cli(&["put", "bad", &path(&bad)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sites/bad") && err.contains("bogus"), "{err}");
    c.put("shop", &["shop.test"]);
    let out = c.cli(&["place", "shop", "nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("live nodes: a"));
    c.report_missing("a", &[], &["shop"]).await;
    let out = c.cli(&["place", "shop", "a"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reports the root of shop missing"), "{err}");
    let out = cli("http://127.0.0.1:1", &["status".into()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_node_is_replaced_by_the_controller() {
    let mut c = Cluster::start(&["a", "b", "c"]).await;
    c.put("one", &["one.test"]);
    c.put("solo", &["solo.test"]);
    ok(c.cli(&["place", "one", "a"]));
    ok(c.cli(&["place", "solo", "a", "--singleton"]));
    // b is fuller than c: the policy picks c.
    c.put("other", &["other.test"]);
    ok(c.cli(&["place", "other", "b"]));
    c.report(
        "a",
        &[
            ("one", SiteState::Ready, None),
            ("solo", SiteState::Ready, None),
        ],
    )
    .await;
    c.wait_served("one.test", "node a").await;

    c.kill_node("a").await;
    let seen = wait_for(
        "one and solo re-placed off a",
        WAIT,
        async || c.snapshot().await.placements,
        |p| {
            ["one", "solo"]
                .iter()
                .all(|s| p.get(*s).is_some_and(|p| p.node != "a"))
        },
    )
    .await;
    assert_eq!(seen["one"].node, "c", "{seen:?}");
    assert!(seen["solo"].singleton, "{seen:?}");
    let target = seen["solo"].node.clone();
    let mut on_c = vec![("one", SiteState::Ready, None)];
    if target == "c" {
        on_c.push(("solo", SiteState::Ready, None));
    }
    c.report("c", &on_c).await;
    c.wait_served("one.test", "node c").await;
    assert!(
        c.map_file("hosts.map").contains("one.test node_c\n"),
        "{}",
        c.map_file("hosts.map")
    );
}

/// Acts as every fake node's agent: each reports `ready` every site whose
/// placement runs on it (as `node` or `draining`), and nothing else.
fn auto_nodes(c: &Cluster) -> tokio::task::JoinHandle<()> {
    let mut client = c.client.clone();
    let keys = c.keys.clone();
    let nodes: Vec<(String, String, i64)> = c
        .nodes
        .iter()
        .map(|(n, f, l)| (n.clone(), f.addr.clone(), *l))
        .collect();
    tokio::spawn(async move {
        loop {
            let snap = Snapshot::load(&mut client, &keys).await.unwrap();
            for (name, addr, lease) in &nodes {
                if !snap.nodes.contains_key(name) {
                    continue;
                }
                let mut report = NodeReport {
                    advertise: addr.clone(),
                    capacity: 10,
                    accepting: true,
                    ..NodeReport::default()
                };
                for (site, p) in &snap.placements {
                    if p.runs_on(name) {
                        let r = SiteReport {
                            state: SiteState::Ready,
                            error: None,
                            revision: 1,
                        };
                        report.sites.insert(site.clone(), r);
                    }
                }
                if snap.nodes.get(name) != Some(&report) {
                    let put = PutOptions::new().with_lease(*lease);
                    let value = serde_json::to_string(&report).unwrap();
                    let _ = client.put(keys.node(name), value, Some(put)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_singleton_moves_stop_first_and_drain_empties_a_node() {
    let mut c = Cluster::start(&["a", "b", "c"]).await;
    c.put("solo", &["solo.test"]);
    ok(c.cli(&["place", "solo", "a", "--singleton"]));
    c.report("a", &[("solo", SiteState::Ready, None)]).await;
    c.wait_served("solo.test", "node a").await;

    let mut mover = tokio::process::Command::from(cluster_command(&c.etcd.client_url(), PREFIX))
        .args(["move", "solo", "b"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // First the placement goes (a stops it), and b gets nothing while a still reports it.
    let seen = wait_for(
        "solo unplaced",
        WAIT,
        async || c.placement("solo").await,
        Option::is_none,
    )
    .await;
    assert_eq!(seen, None);
    assert!(
        mover.try_wait().unwrap().is_none(),
        "the move ended while a still ran solo"
    );
    assert_eq!(
        c.placement("solo").await,
        None,
        "placed on b while a still runs it"
    );
    c.report("a", &[]).await;
    let on_b = Placement {
        node: "b".into(),
        draining: vec![],
        singleton: true,
    };
    let seen = wait_for(
        "solo placed on b",
        WAIT,
        async || c.placement("solo").await,
        |p| p.as_ref() == Some(&on_b),
    )
    .await;
    assert_eq!(seen, Some(on_b));
    c.report("b", &[("solo", SiteState::Ready, None)]).await;
    let out = tokio::time::timeout(WAIT, mover.wait_with_output())
        .await
        .expect("move ended")
        .unwrap();
    assert!(
        out.status.success(),
        "move: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_served("solo.test", "node b").await;

    // drain b: every site placed there goes elsewhere, the fronts follow.
    c.put("more", &["more.test"]);
    ok(c.cli(&["place", "more", "b"]));
    let agent = auto_nodes(&c);
    c.wait_served("more.test", "node b").await;
    let out = ok(c.cli(&["drain", "b"]));
    assert!(
        out.contains("moved solo from b to ") && out.contains("moved more from b to "),
        "{out}"
    );
    let placements = c.snapshot().await.placements;
    assert!(
        placements
            .values()
            .all(|p| p.node != "b" && p.draining.is_empty()),
        "{placements:?}"
    );
    let more_on = placements["more"].node.clone();
    c.wait_served("more.test", &format!("node {more_on}")).await;
    agent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_routes_by_sni_with_the_same_maps() {
    let c = Cluster::start_with(&["a", "b"], true).await;
    c.put("sec", &["sec.test", "*.sec.test"]);
    ok(c.cli(&["place", "sec", "a"]));
    let agent = auto_nodes(&c);
    c.wait_served("sec.test", "node a").await;
    let tls = c.tls_listen.clone();
    let seen = wait_for(
        "SNI sec.test to node a",
        WAIT,
        async || tls_subject(&tls, "sec.test"),
        |s| s.contains("node-a"),
    )
    .await;
    assert!(seen.contains("node-a"), "{seen}");
    assert!(tls_subject(&tls, "www.sec.test").contains("node-a"));
    assert_eq!(
        tls_subject(&tls, "other.test"),
        "none",
        "an unknown SNI is closed"
    );
    ok(c.cli(&["move", "sec", "b"]));
    let seen = wait_for(
        "SNI sec.test to node b",
        WAIT,
        async || tls_subject(&tls, "sec.test"),
        |s| s.contains("node-b"),
    )
    .await;
    assert!(seen.contains("node-b"), "{seen}");
    agent.abort();
}
