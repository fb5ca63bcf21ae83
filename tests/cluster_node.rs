//! A cluster node end to end (issue 26, the node half): a real etcd
//! (`common::etcd`), the real polyhost binary as root with `[cluster]`,
//! sites put into etcd and placed on the node; what it serves through its
//! own listener and what it reports under `nodes/NODE`.

mod common;

use std::time::Duration;

use common::etcd::{free_port, Etcd};
use common::{get, open_up, pids_of_uid, Binary, TestConfig, TestUser};
use polyhost::cluster::schema::{Keys, NodeReport, Placement, SiteState};

const WAIT: Duration = Duration::from_secs(60);

/// A node's configuration: its own state_dir, listener and admin socket.
fn node_config(etcd: &Etcd, node: &str) -> TestConfig {
    node_config_on(etcd, node, "127.0.0.1")
}

/// [`node_config`] listening on `ip` (several nodes on one machine: 127.0.0.x).
fn node_config_on(etcd: &Etcd, node: &str, ip: &str) -> TestConfig {
    let cfg = TestConfig::outside_tmp();
    let port = free_port();
    cfg.write(
        "polyhost.toml",
        &format!(
            "listen = [\"{ip}:{port}\"]\nstate_dir = \"state\"\nlog_dir = \"log\"\nshutdown_timeout = \"5s\"\nrouter_threads = 2\n\
             [cluster]\netcd = [\"{}\"]\nnode = \"{node}\"\nadvertise = \"{ip}:{port}\"\nlease_ttl = \"3s\"\n",
            etcd.client_url()
        ),
    );
    cfg
}

fn static_text(cfg: &TestConfig, name: &str) -> String {
    cfg.write(&format!("www/{name}/index.html"), &format!("site {name}\n"));
    format!(
        "hosts = [\"{name}.test\"]\nroot = \"{}\"\n",
        cfg.path().join("www").join(name).display()
    )
}

fn php_text(cfg: &TestConfig, name: &str, user: &TestUser) -> String {
    cfg.write(
        &format!("www/{name}/index.php"),
        "<?php echo 'php ' . posix_getpwuid(posix_geteuid())['name'];",
    );
    format!(
        "hosts = [\"{name}.test\"]\nroot = \"{}\"\nuser = \"{}\"\n[php]\nmax_children = 2\n",
        cfg.path().join("www").join(name).display(),
        user.name
    )
}

async fn put_site(etcd: &Etcd, name: &str, text: &str) {
    let keys = Keys::new("/polyhost/");
    etcd.client()
        .await
        .put(keys.site(name), text, None)
        .await
        .unwrap();
}

async fn place(etcd: &Etcd, name: &str, node: &str) {
    place_as(
        etcd,
        name,
        Placement {
            node: node.into(),
            draining: vec![],
            singleton: false,
        },
    )
    .await;
}

async fn place_as(etcd: &Etcd, name: &str, p: Placement) {
    let keys = Keys::new("/polyhost/");
    let json = serde_json::to_string(&p).unwrap();
    etcd.client()
        .await
        .put(keys.placement(name), json, None)
        .await
        .unwrap();
}

async fn report(etcd: &Etcd, node: &str) -> Option<NodeReport> {
    let keys = Keys::new("/polyhost/");
    let mut client = etcd.client().await;
    let got = client.get(keys.node(node), None).await.ok()?;
    let kv = got.kvs().first()?;
    serde_json::from_slice(kv.value()).ok()
}

/// Waits until `nodes/NODE` says `site` is in `state`; returns the report.
async fn wait_state(etcd: &Etcd, node: &str, site: &str, state: SiteState) -> NodeReport {
    common::wait_for(
        &format!("nodes/{node} to report {site} {state:?}"),
        WAIT,
        async || report(etcd, node).await,
        |r| {
            r.as_ref()
                .and_then(|r| r.sites.get(site))
                .is_some_and(|s| s.state == state)
        },
    )
    .await
    .unwrap()
}

/// Waits until the node answers `host` with `status` and a body holding `body`.
async fn wait_served(bin: &Binary, host: &str, status: u16, body: &str) {
    common::wait_for(
        &format!("{host} answered {status} with {body:?}"),
        WAIT,
        async || {
            let r = get(bin.addr, host, "/").await;
            (r.status, r.text())
        },
        |(s, t)| *s == status && t.contains(body),
    )
    .await;
}

fn site_file(cfg: &TestConfig, name: &str) -> std::path::PathBuf {
    cfg.path()
        .join("state/cluster/vhosts")
        .join(format!("{name}.toml"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_from_etcd_are_served_failures_reported_and_moves_stop_them() {
    let etcd = Etcd::start().await;
    let cfg = node_config(&etcd, "web-1");
    let user = TestUser::new();
    let (shop, blog) = (static_text(&cfg, "shop"), php_text(&cfg, "blog", &user));
    open_up(cfg.path());
    let bin = Binary::start(&cfg.main(), &[]).await;
    put_site(&etcd, "shop", &shop).await;
    put_site(&etcd, "blog", &blog).await;
    let placed = std::time::Instant::now();
    place(&etcd, "shop", "web-1").await;
    place(&etcd, "blog", "web-1").await;
    place(&etcd, "elsewhere", "web-2").await;

    // Both served by the node, reported ready.
    wait_state(&etcd, "web-1", "shop", SiteState::Ready).await;
    let r = wait_state(&etcd, "web-1", "blog", SiteState::Ready).await;
    // A measurement printed, not asserted.
    eprintln!(
        "measure: placement put -> both sites reported ready: {:?}",
        placed.elapsed()
    );
    assert_eq!(r.advertise, format!("127.0.0.1:{}", bin.addr.port()));
    assert!(!r.sites.contains_key("elsewhere"), "{r:?}");
    wait_served(&bin, "shop.test", 200, "site shop").await;
    wait_served(&bin, "blog.test", 200, &format!("php {}", user.name)).await;
    let mode = std::fs::metadata(site_file(&cfg, "shop")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    // `polyhost status` shows the link.
    let (code, out, err) = common::polyhost_cli(&cfg.main(), &["status"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("cluster: node web-1, etcd connected since"),
        "{out}"
    );

    // An invalid text: failed with the key at fault; the others untouched.
    put_site(
        &etcd,
        "bad",
        "hosts = [\"bad.test\"]\nroot = \"/\"\n[php]\nmax_children = \"many\"\n",
    )
    .await;
    place(&etcd, "bad", "web-1").await;
    let r = wait_state(&etcd, "web-1", "bad", SiteState::Failed).await;
    let error = r.sites["bad"].error.clone().unwrap_or_default();
    assert!(
        error.contains("etcd:/polyhost/sites/bad: php.max_children"),
        "{error}"
    );
    assert!(
        !site_file(&cfg, "bad").exists(),
        "an invalid site reached the directory"
    );
    assert_eq!(r.sites["shop"].state, SiteState::Ready, "{r:?}");
    wait_served(&bin, "shop.test", 200, "site shop").await;
    wait_served(&bin, "blog.test", 200, "php").await;
    // A host another site claims: refused by the reload, rolled back, reported.
    put_site(
        &etcd,
        "thief",
        &static_text(&cfg, "thief").replace("thief.test", "shop.test"),
    )
    .await;
    place(&etcd, "thief", "web-1").await;
    let r = wait_state(&etcd, "web-1", "thief", SiteState::Failed).await;
    let error = r.sites["thief"].error.clone().unwrap_or_default();
    assert!(error.contains("already claimed"), "{error}");
    assert!(!site_file(&cfg, "thief").exists());
    wait_served(&bin, "shop.test", 200, "site shop").await;
    // Fixed in etcd: applied.
    put_site(&etcd, "bad", &static_text(&cfg, "bad")).await;
    wait_state(&etcd, "web-1", "bad", SiteState::Ready).await;
    wait_served(&bin, "bad.test", 200, "site bad").await;

    // Placed on another node: stops here, its processes gone.
    assert!(
        !pids_of_uid(user.uid).is_empty(),
        "blog's php-fpm runs as {}",
        user.name
    );
    place(&etcd, "blog", "web-2").await;
    common::wait_for(
        "blog's processes to be gone",
        WAIT,
        async || pids_of_uid(user.uid),
        |pids| pids.is_empty(),
    )
    .await;
    let r = common::wait_for(
        "blog to leave the report",
        WAIT,
        async || report(&etcd, "web-1").await,
        |r| r.as_ref().is_some_and(|r| !r.sites.contains_key("blog")),
    )
    .await;
    assert!(r.is_some_and(|r| r.sites["shop"].state == SiteState::Ready));
    assert!(!site_file(&cfg, "blog").exists());
    wait_served(&bin, "blog.test", 421, "").await;

    // Shutdown: nodes/NODE goes at once (the lease is revoked).
    let log = bin.log();
    // Hygiene: the one refused reload (the host conflict) is the only
    // error, and it was not retried.
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(
        errors.len() == 1 && errors[0].contains("reload refused"),
        "{errors:#?}\n{log}"
    );
    let status = bin.terminate().await;
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        report(&etcd, "web-1").await.is_none(),
        "nodes/web-1 outlived the node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_etcd_never_stops_serving_and_a_restart_serves_the_last_state() {
    let mut etcd = Etcd::start().await;
    let cfg = node_config(&etcd, "web-2");
    let shop = static_text(&cfg, "shop");
    let news = static_text(&cfg, "news");
    open_up(cfg.path());
    let bin = Binary::start(&cfg.main(), &[]).await;
    put_site(&etcd, "shop", &shop).await;
    place(&etcd, "shop", "web-2").await;
    wait_state(&etcd, "web-2", "shop", SiteState::Ready).await;
    wait_served(&bin, "shop.test", 200, "site shop").await;

    // etcd gone: the node keeps serving and says so.
    etcd.stop();
    common::wait_for(
        "status to show etcd not connected",
        WAIT,
        async || common::polyhost_cli(&cfg.main(), &["status"]).await.1,
        |out| out.contains("etcd NOT connected"),
    )
    .await;
    for _ in 0..20 {
        let r = get(bin.addr, "shop.test", "/").await;
        assert_eq!(r.status, 200, "served while etcd is down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Back: a change made after it returns is applied.
    etcd.restart().await;
    let back = std::time::Instant::now();
    put_site(&etcd, "news", &news).await;
    place(&etcd, "news", "web-2").await;
    wait_state(&etcd, "web-2", "news", SiteState::Ready).await;
    eprintln!(
        "measure: etcd back -> a new site reported ready: {:?}",
        back.elapsed()
    );
    wait_served(&bin, "news.test", 200, "site news").await;

    // Restarted while etcd is down: serves the last applied state.
    assert!(bin.terminate().await.success());
    etcd.stop();
    let bin = Binary::start(&cfg.main(), &[]).await;
    wait_served(&bin, "shop.test", 200, "site shop").await;
    wait_served(&bin, "news.test", 200, "site news").await;
    assert!(site_file(&cfg, "news").exists());
    assert!(bin.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_site_on_two_nodes_of_one_machine_then_moved() {
    let etcd = Etcd::start().await;
    let (a, b) = (
        node_config_on(&etcd, "web-a", "127.0.0.2"),
        node_config_on(&etcd, "web-b", "127.0.0.3"),
    );
    let user = TestUser::new();
    // The site's files at the same path for both nodes (shared storage).
    let www = TestConfig::outside_tmp();
    let blog = php_text(&www, "blog", &user);
    open_up(www.path());
    open_up(a.path());
    open_up(b.path());
    let (node_a, node_b) = (
        Binary::start(&a.main(), &[]).await,
        Binary::start(&b.main(), &[]).await,
    );
    assert_eq!(node_a.addr.ip().to_string(), "127.0.0.2");
    put_site(&etcd, "blog", &blog).await;
    place(&etcd, "blog", "web-a").await;
    wait_state(&etcd, "web-a", "blog", SiteState::Ready).await;
    wait_served(&node_a, "blog.test", 200, "php").await;
    // A move's overlap: B starts it while A still runs it (same site, same
    // user, one machine: separate sockets and cgroups per node).
    place_as(
        &etcd,
        "blog",
        Placement {
            node: "web-b".into(),
            draining: vec!["web-a".into()],
            singleton: false,
        },
    )
    .await;
    wait_state(&etcd, "web-b", "blog", SiteState::Ready).await;
    wait_served(&node_b, "blog.test", 200, "php").await;
    wait_served(&node_a, "blog.test", 200, "php").await;
    let cgroups = |cfg: &TestConfig| {
        let state = std::fs::canonicalize(cfg.path().join("state")).unwrap();
        polyhost::supervisor::cgroup_parent_name(&state)
    };
    assert_ne!(cgroups(&a), cgroups(&b), "two nodes share a cgroup parent");
    // The switch done: A stops it, B keeps serving.
    place(&etcd, "blog", "web-b").await;
    common::wait_for(
        "web-a to drop blog",
        WAIT,
        async || report(&etcd, "web-a").await,
        |r| r.as_ref().is_some_and(|r| !r.sites.contains_key("blog")),
    )
    .await;
    wait_served(&node_a, "blog.test", 421, "").await;
    wait_served(&node_b, "blog.test", 200, "php").await;
    assert!(node_a.terminate().await.success());
    assert!(node_b.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_its_lease_stops_its_singleton_sites() {
    let mut etcd = Etcd::start().await;
    let cfg = node_config(&etcd, "web-s");
    let (solo, shop) = (static_text(&cfg, "solo"), static_text(&cfg, "shop"));
    open_up(cfg.path());
    let bin = Binary::start(&cfg.main(), &[]).await;
    put_site(&etcd, "solo", &solo).await;
    put_site(&etcd, "shop", &shop).await;
    place_as(
        &etcd,
        "solo",
        Placement {
            node: "web-s".into(),
            draining: vec![],
            singleton: true,
        },
    )
    .await;
    place(&etcd, "shop", "web-s").await;
    wait_state(&etcd, "web-s", "solo", SiteState::Ready).await;
    wait_served(&bin, "solo.test", 200, "site solo").await;
    etcd.stop();
    let stopped = std::time::Instant::now();
    // lease_ttl (3 s) without renewal: the singleton stops, the other stays.
    wait_served(&bin, "solo.test", 421, "").await;
    eprintln!(
        "measure: etcd killed -> singleton stopped (lease_ttl 3 s): {:?}",
        stopped.elapsed()
    );
    wait_served(&bin, "shop.test", 200, "site shop").await;
    etcd.restart().await;
    wait_served(&bin, "solo.test", 200, "site solo").await;
    wait_state(&etcd, "web-s", "solo", SiteState::Ready).await;
    assert!(bin.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_refused_for_a_local_conflict_is_applied_after_the_operator_reloads() {
    let etcd = Etcd::start().await;
    let cfg = node_config(&etcd, "web-r");
    cfg.static_site("local", &["x.test"], "");
    let remote = static_text(&cfg, "remote").replace("remote.test", "x.test");
    open_up(cfg.path());
    let bin = Binary::start(&cfg.main(), &[]).await;
    put_site(&etcd, "remote", &remote).await;
    place(&etcd, "remote", "web-r").await;
    let r = wait_state(&etcd, "web-r", "remote", SiteState::Failed).await;
    let error = r.sites["remote"].error.clone().unwrap_or_default();
    assert!(error.contains("x.test is already claimed"), "{error}");
    wait_served(&bin, "x.test", 200, "site local").await;
    // The operator removes the local site and reloads: the refused one is tried again.
    std::fs::remove_file(cfg.path().join("vhosts/local.toml")).unwrap();
    let (code, out, err) = common::polyhost_cli(&cfg.main(), &["reload"]).await;
    assert_eq!(code, 0, "{out}{err}");
    wait_state(&etcd, "web-r", "remote", SiteState::Ready).await;
    wait_served(&bin, "x.test", 200, "site remote").await;
    assert!(bin.terminate().await.success());
}
