//! Density (issue 21): an idle site costs polyhost no descriptor. The real
//! binary with 10 idle sites and with 50 (PHP on demand, Python scaled to
//! zero, static: each kind grows), counted in `/proc/<pid>/fd`: no
//! descriptor names a site's log, document root, state or socket, and the
//! 40 more sites add none (before, each held its two log files and its
//! document root: 2.5 descriptors per idle site, which ran polyhost out of
//! descriptors at 10,000 sites).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{eventually, get, open_up, python_test_site, Binary, TestConfig, TestUser};

/// `php` PHP sites started on demand, `python` Python sites scaled to zero,
/// `statics` static sites, the code-running ones each under its own user.
fn idle_sites(users: &[TestUser], php: usize, python: usize, statics: usize) -> TestConfig {
    let cfg = TestConfig::new();
    let mut users = users.iter();
    for i in 0..php {
        let user = users.next().expect("a user per code-running site");
        let name = format!("php{i}");
        cfg.write(&format!("www/{name}/index.php"), "<?php echo 'php';");
        cfg.write(
            &format!("vhosts/{name}.toml"),
            &format!(
                "hosts = [\"{name}.test\"]\nroot = \"www/{name}\"\nuser = \"{}\"\n[php]\nstart = \"on_demand\"\n",
                user.name
            ),
        );
    }
    for i in 0..python {
        let user = users.next().expect("a user per code-running site");
        python_test_site(
            &cfg,
            &format!("py{i}"),
            user,
            "pyapp",
            "",
            "idle_timeout = \"60s\"",
        );
    }
    for i in 0..statics {
        cfg.static_site(&format!("static{i}"), &[&format!("static{i}.test")], "");
    }
    open_up(cfg.path());
    cfg
}

/// The targets of polyhost's descriptors.
fn descriptors(pid: u32) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Those that name something of a site: under the config's `www/`, `log/`
/// or `state/`.
fn of_sites(all: &[PathBuf], dir: &Path) -> Vec<PathBuf> {
    all.iter()
        .filter(|t| {
            ["www", "log", "state"]
                .iter()
                .any(|d| t.starts_with(dir.join(d)))
        })
        .cloned()
        .collect()
}

/// Starts polyhost on `cfg`, checks that its sites are idle and answer, and
/// returns its descriptor count once none names a site.
async fn count_when_idle(cfg: &TestConfig, users: &[TestUser]) -> (usize, Vec<PathBuf>) {
    let bin = Binary::start(&cfg.main(), &[]).await;
    let pid = bin.child.id().expect("polyhost runs");
    // Serving (a host no site has), no site asked: every site is idle.
    let r = get(bin.addr, "nobody.test", "/").await;
    assert_eq!(r.status, 421, "{}", bin.log());
    for user in users {
        assert!(
            common::pids_of_uid(user.uid).is_empty(),
            "no process of an idle site runs"
        );
    }
    // Start-up may still be settling: wait (bounded) until no descriptor
    // names a site.
    let dir = std::fs::canonicalize(cfg.path()).unwrap();
    let mut last = Vec::new();
    let idle = eventually(Duration::from_secs(20), || {
        last = descriptors(pid);
        let idle = of_sites(&last, &dir).is_empty();
        async move { idle }
    })
    .await;
    assert!(
        idle,
        "polyhost still holds descriptors naming sites: {:#?}\n{}",
        of_sites(&last, &dir),
        bin.log()
    );
    let count = last.len();
    let state_dir = cfg.path().join("state");
    assert!(bin.terminate().await.success());
    common::check_hygiene(&state_dir);
    (count, last)
}

#[tokio::test]
async fn idle_sites_hold_no_descriptor() {
    let users: Vec<TestUser> = (0..10).map(|_| TestUser::new()).collect();
    let (ten, ten_fds) = count_when_idle(&idle_sites(&users[..2], 1, 1, 8), &users[..2]).await;
    let (fifty, fifty_fds) = count_when_idle(&idle_sites(&users, 5, 5, 40), &users).await;
    // Threads and lanes are the same; a few descriptors come and go (a
    // blocking-pool thread's file, a reaped child's pidfd).
    assert!(
        fifty <= ten + 5,
        "40 more idle sites added {} descriptors: 10 sites held {ten}: {ten_fds:#?}\n50 sites held {fifty}: {fifty_fds:#?}",
        fifty.saturating_sub(ten)
    );
}
