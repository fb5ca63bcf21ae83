//! Reloads and restarts under steady load: keep-alive clients on loopback
//! send thousands of requests across static and Python sites while sites
//! are added, removed, changed and an invalid file is refused, and while a
//! site's processes are replaced; not one request to a site that exists
//! before and after may fail. Plus SIGHUP on the real binary.

mod admin_support;
mod common;

use std::time::Duration;

use admin_support::{cli, failures, python_site, version, Load, Served};
use common::{eventually, get, Binary, TestConfig, TestUser};

/// Writes one site of the load mix.
type SiteWriter = fn(&TestConfig, &str, &TestUser);

fn static_site(cfg: &TestConfig, name: &str, _: &TestUser) {
    cfg.static_site(name, &[&format!("{name}.test")], "");
}

fn python_v1(cfg: &TestConfig, name: &str, user: &TestUser) {
    python_site(cfg, name, user, "1", "");
}

fn php_site(cfg: &TestConfig, name: &str, user: &TestUser) {
    cfg.write(&format!("www/{name}/index.php"), "<?php echo 'php ok';");
    cfg.write(
        &format!("vhosts/{name}.toml"),
        &format!(
            "hosts = [\"{name}.test\"]\nroot = \"www/{name}\"\nuser = \"{}\"\n[php]\nmax_children = 4\n",
            user.name
        ),
    );
    common::open_up(cfg.path());
}

/// The sites that serve throughout; one line per site.
const MIX: &[(&str, SiteWriter)] = &[
    ("plain", static_site),
    ("stay", python_v1),
    ("py", python_v1),
    ("blog", php_site),
];

async fn wait_serving(addr: std::net::SocketAddr, host: &str) {
    let ok = eventually(Duration::from_secs(30), || async {
        get(addr, host, "/").await.status == 200
    })
    .await;
    assert!(ok, "{host} serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_adds_removes_changes_and_refuses_without_one_failed_request() {
    let cfg = TestConfig::new();
    let users: Vec<TestUser> = MIX.iter().map(|_| TestUser::new()).collect();
    for ((name, write), user) in MIX.iter().zip(&users) {
        write(&cfg, name, user);
    }
    let py = std::fs::read_to_string(cfg.path().join("vhosts/py.toml")).unwrap();
    cfg.write(
        "vhosts/py.toml",
        &format!("{py}processes = 2\nthreads = 1\n"),
    );
    cfg.static_site("gone", &["gone.test"], "");
    let served = Served::start(&cfg).await;
    let addr = served.addr;
    for (name, _) in MIX {
        wait_serving(addr, &format!("{name}.test")).await;
    }
    let stay_pids = served.site("stay").await.pids;
    assert!(!stay_pids.is_empty());
    let php_pids = served.site("blog").await.pids;
    assert!(!php_pids.is_empty());

    let mut hosts: Vec<String> = MIX.iter().map(|(n, _)| format!("{n}.test")).collect();
    hosts.extend(["gone.test".into(), "added.test".into()]);
    let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let load = Load::start(addr, &host_refs, 8);
    load.wait_for(800).await;

    // (a) a site is added.
    cfg.static_site("added", &["added.test"], "");
    let r = cli(&served.socket, &["reload"], None).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("1 added (added)"), "{r:?}");
    assert_eq!(get(addr, "added.test", "/").await.status, 200);
    load.wait_for(800).await;

    // (b) a site is removed.
    std::fs::remove_file(cfg.path().join("vhosts/gone.toml")).unwrap();
    let r = cli(&served.socket, &["reload"], None).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("1 removed (gone)"), "{r:?}");
    assert_eq!(get(addr, "gone.test", "/").await.status, 421);
    load.wait_for(800).await;

    // (c) a Python site changes its app's environment: a new generation.
    let py = std::fs::read_to_string(cfg.path().join("vhosts/py.toml")).unwrap();
    cfg.write(
        "vhosts/py.toml",
        &py.replace("APP_VERSION = \"1\"", "APP_VERSION = \"2\""),
    );
    let r = cli(&served.socket, &["reload"], None).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("1 restarted (py)"), "{r:?}");
    assert_eq!(version(&get(addr, "py.test", "/").await.text()), "2");
    load.wait_for(800).await;

    // (d) an invalid file: refused with file and key, nothing changes.
    cfg.write(
        "vhosts/x.toml",
        "hosts = [\"x.test\"]\nroot = \"www/x\"\n[limits]\nmemory = \"12 potatoes\"\n",
    );
    let r = cli(&served.socket, &["reload"], None).await;
    assert_eq!(r.code, 1, "{r:?}");
    let first = r.stderr.lines().next().unwrap_or_default();
    assert!(
        first.ends_with(
            "vhosts/x.toml: limits.memory: \"12 potatoes\" is not a size (e.g. \"512M\")"
        ),
        "{r:?}"
    );
    assert!(r.stderr.contains("nothing changed"), "{r:?}");
    assert_eq!(get(addr, "x.test", "/").await.status, 421);
    std::fs::remove_file(cfg.path().join("vhosts/x.toml")).unwrap();
    load.wait_for(800).await;

    let seen = load.stop().await;
    let counted: Vec<&str> = host_refs[..MIX.len()].to_vec();
    let failed = failures(&hosts, &seen, &counted);
    let total: usize = seen.iter().map(Vec::len).sum();
    assert!(
        failed.is_empty(),
        "{} of {total} requests failed, first: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(total >= 4000, "steady load: {total} requests");
    // Each client saw the old app, then the new one, never the old again.
    let py_idx = hosts.iter().position(|h| h == "py.test").unwrap();
    for client in &seen {
        let versions: Vec<&str> = client
            .iter()
            .filter(|s| s.host == py_idx)
            .map(|s| version(&s.body))
            .collect();
        let switch = versions
            .iter()
            .position(|v| *v == "2")
            .unwrap_or(versions.len());
        assert!(versions[..switch].iter().all(|v| *v == "1"), "{versions:?}");
        assert!(versions[switch..].iter().all(|v| *v == "2"), "{versions:?}");
    }

    let status = served.status().await;
    assert_eq!((status.reloads, status.reloads_failed), (3, 1));
    assert_eq!(
        served.site("stay").await.pids,
        stay_pids,
        "unchanged site kept its workers"
    );
    assert_eq!(
        served.site("blog").await.pids,
        php_pids,
        "unchanged PHP site kept its php-fpm master"
    );
    let names: Vec<&str> = status.sites.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["added", "blog", "plain", "py", "stay"]);
    served.stop().await;
    for user in &users {
        assert!(
            common::pids_of_uid(user.uid).is_empty(),
            "no worker of {} survives",
            user.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_under_load_replaces_every_process_without_a_failed_request() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    python_site(&cfg, "py", &user, "1", "");
    let py = std::fs::read_to_string(cfg.path().join("vhosts/py.toml")).unwrap();
    cfg.write(
        "vhosts/py.toml",
        &format!("{py}processes = 2\nthreads = 2\n"),
    );
    cfg.static_site("plain", &["plain.test"], "");
    let served = Served::start(&cfg).await;
    wait_serving(served.addr, "py.test").await;
    let before = served.site("py").await.pids;
    assert_eq!(before.len(), 2, "{before:?}");

    let hosts = ["py.test", "plain.test"];
    let load = Load::start(served.addr, &hosts, 8);
    load.wait_for(500).await;
    let r = cli(&served.socket, &["restart", "py"], None).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("py: rolling restart"), "{r:?}");
    let replaced = eventually(Duration::from_secs(30), || async {
        let s = served.site("py").await;
        s.pids.len() == 2 && s.pids.iter().all(|p| !before.contains(p))
    })
    .await;
    assert!(replaced, "{before:?} → {:?}", served.site("py").await.pids);
    load.wait_for(500).await;
    let seen = load.stop().await;
    let owned: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let failed = failures(&owned, &seen, &hosts);
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let pids_seen: std::collections::BTreeSet<&str> = seen
        .iter()
        .flatten()
        .filter(|s| s.host == 0)
        .filter_map(|s| s.body.split("pid=").nth(1))
        .collect();
    assert!(
        pids_seen.len() >= 3,
        "old and new workers answered: {pids_seen:?}"
    );
    served.stop().await;
}

#[tokio::test]
async fn sighup_reloads_the_real_binary_and_the_cli_finds_its_socket_from_the_config() {
    let cfg = TestConfig::new();
    cfg.static_site("www", &["www.test"], "");
    let bin = Binary::start(&cfg.main(), &[]).await;
    let pid = nix::unistd::Pid::from_raw(bin.child.id().unwrap() as i32);
    let config = cfg.main().display().to_string();
    let status = |args: &'static [&'static str]| {
        let config = config.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_polyhost"))
                .args(["--config", &config])
                .args(args)
                .output()
                .await
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };

    cfg.static_site("added", &["added.test"], "");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let ok = eventually(Duration::from_secs(10), || async {
        get(bin.addr, "added.test", "/").await.status == 200
    })
    .await;
    assert!(ok, "SIGHUP reloaded; log:\n{}", bin.log());

    cfg.write("vhosts/bad.toml", "hosts = 7\n");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let refused = eventually(Duration::from_secs(10), || async {
        bin.log().contains("reload refused")
    })
    .await;
    assert!(refused, "{}", bin.log());
    let (code, stdout, stderr) = status(&["status", "--json"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let s: polyhost::app::status::ServerStatus = serde_json::from_str(&stdout).unwrap();
    assert_eq!((s.reloads, s.reloads_failed, s.sites.len()), (1, 1, 2));
    assert_eq!(get(bin.addr, "www.test", "/").await.status, 200);

    // A second polyhost on the same admin socket refuses to start.
    std::fs::remove_file(cfg.path().join("vhosts/bad.toml")).unwrap();
    let second = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_polyhost"))
            .args(["serve", "--config", &config])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(err.contains("another polyhost is running"), "{err}");
    assert_eq!(
        get(bin.addr, "www.test", "/").await.status,
        200,
        "the first one serves on"
    );

    let exit = bin.terminate().await;
    assert!(exit.success());
    assert!(
        !cfg.path().join("state/admin.sock").exists(),
        "socket removed at exit"
    );
    let (code, _, stderr) = status(&["status"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("admin.sock: is `polyhost serve` running?"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_generation_that_cannot_start_is_not_applied_the_old_one_serves_on_and_the_rest_applies(
) {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    python_site(&cfg, "py", &user, "1", "");
    cfg.static_site("plain", &["plain.test"], "");
    let served = Served::start(&cfg).await;
    wait_serving(served.addr, "py.test").await;
    let before = served.site("py").await;

    let load = Load::start(served.addr, &["py.test"], 4);
    load.wait_for(100).await;
    let py = std::fs::read_to_string(cfg.path().join("vhosts/py.toml")).unwrap();
    cfg.write(
        "vhosts/py.toml",
        &py.replace("app = \"versioned\"", "app = \"no_such_module\"")
            .replace("APP_VERSION = \"1\"", "APP_VERSION = \"2\""),
    );
    // In the same reload, another site's change: it applies.
    cfg.static_site("plain", &["plain.test", "www.plain.test"], "");
    let r = cli(&served.socket, &["reload"], None).await;
    assert_eq!(r.code, 3, "applied but for py: {r:?}");
    assert!(r.stdout.contains("1 rerouted (plain)"), "{r:?}");
    assert!(!r.stdout.contains("restarted (py)"), "{r:?}");
    for want in [
        "vhosts/py.toml: site py: its new processes did not become ready",
        "site py failed: it serves its previous configuration",
    ] {
        assert!(r.stderr.contains(want), "{want:?} in {r:?}");
    }
    wait_serving(served.addr, "www.plain.test").await;
    load.wait_for(100).await;
    let seen = load.stop().await;
    let failed = failures(&["py.test".to_owned()], &seen, &["py.test"]);
    assert!(failed.is_empty(), "{:?}", &failed[..failed.len().min(5)]);
    assert!(seen.iter().flatten().all(|s| version(&s.body) == "1"));

    let after = served.site("py").await;
    assert_eq!(
        (after.generation, &after.pids),
        (before.generation, &before.pids)
    );
    let why = after.not_applied.clone().unwrap_or_default();
    assert!(why.contains("did not become ready"), "{after:?}");
    let only_old = eventually(Duration::from_secs(10), || async {
        common::pids_of_uid(user.uid) == before.pids
    })
    .await;
    assert!(
        only_old,
        "the failed generation's processes are gone: {:?}",
        common::pids_of_uid(user.uid)
    );
    assert_eq!(
        served.status().await.reloads_failed,
        0,
        "the reload applied"
    );
    served.stop().await;
}
