//! One tenant's files never stop the others' reloads or polyhost's start,
//! attacked as the tenant would (`runuser` as its user) against the real
//! binary run as root: the site makes its own `[app]` program
//! non-executable, then the panel changes another site and reloads. The
//! other site's change is applied; the tenant serves its previous
//! configuration, and the reload says so (exit 3, the tenant's file and
//! key). polyhost restarted meanwhile starts and serves everyone else; the
//! tenant answers 503 with the reason in `status`. Mended, the next reload
//! builds it again.

mod admin_support;
mod app_support;
mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use admin_support::cli;
use app_support::{admin_socket, app_site, status, stop_clean, try_get, wait_serving};
use common::{runuser, Binary, TestConfig, TestUser};

const HELLO: &str = include_str!("apps/generic/fd3_hello.py");

/// The neighbour: a static site whose hosts the panel changes.
fn neighbour(cfg: &TestConfig, hosts: &str) {
    cfg.write("www/neighbour/index.html", "neighbour's page\n");
    cfg.write(
        "vhosts/neighbour.toml",
        &format!("hosts = [{hosts}]\nroot = \"www/neighbour\"\n"),
    );
}

/// The metrics, through the admin socket.
async fn scrape(cfg: &TestConfig) -> String {
    let answer = polyhost::admin::client::call(
        &admin_socket(cfg),
        http::Method::GET,
        "/metrics",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200);
    String::from_utf8_lossy(&answer.body).into_owned()
}

#[tokio::test]
async fn a_tenant_that_breaks_its_own_program_fails_alone_at_reload_and_at_start() {
    if !polyhost::isolation::running_as_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let cfg = TestConfig::new();
    let tenant = TestUser::new();
    neighbour(&cfg, "\"neighbour.test\"");
    app_site(
        &cfg,
        "tenant",
        &tenant,
        &[("server.py", HELLO)],
        "command = [\"./server.py\", \"tenant\"]",
        &[],
        "",
    );
    let program = cfg.path().join("www/tenant/server.py");
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&program, Some(tenant.uid), Some(tenant.gid())).unwrap();
    let bin = Binary::start(&cfg.main(), &[]).await;
    let within = Duration::from_secs(60);
    let hello = wait_serving(&bin, &cfg, "tenant.test", "/", within).await;
    assert!(hello.starts_with("hello from tenant"), "{hello}");

    // The tenant, as itself, makes its program non-executable; the panel
    // gives the neighbour a second host and reloads.
    let (ok, out) = runuser(
        &tenant.name,
        &["chmod", "a-x", &program.display().to_string()],
    );
    assert!(ok, "{out}");
    neighbour(&cfg, "\"neighbour.test\", \"www.neighbour.test\"");
    let reload = cli(&admin_socket(&cfg), &["reload"], None).await;
    assert_eq!(reload.code, 3, "applied but one site failed: {reload:?}");
    assert!(
        reload.stdout.contains("1 rerouted (neighbour)"),
        "{reload:?}"
    );
    for want in [
        "vhosts/tenant.toml: app.command: ",
        "server.py is not executable",
        "site tenant failed: it serves its previous configuration",
    ] {
        assert!(reload.stderr.contains(want), "{want:?} in {reload:?}");
    }
    let page = wait_serving(&bin, &cfg, "www.neighbour.test", "/", within).await;
    assert_eq!(page, "neighbour's page\n", "the neighbour's change applied");
    let (code, body) = try_get(bin.addr, "tenant.test", "/").await;
    assert_eq!(
        (code, body.starts_with("hello from tenant")),
        (200, true),
        "{body}"
    );
    let shown = status(&cfg, "tenant").await;
    let why = shown.not_applied.unwrap_or_default();
    assert!(
        why.contains("app.command") && why.contains("not executable"),
        "{why}"
    );
    let metrics = scrape(&cfg).await;
    for line in [
        "polyhost_site_config_not_applied{site=\"tenant\"} 1",
        "polyhost_site_config_not_applied{site=\"neighbour\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line:?} in:\n{metrics}"
        );
    }

    // `check` says the same: the configuration is valid (not 1), one site
    // would fail alone (3).
    let (code, _, err) = common::polyhost_cli(&cfg.main(), &["check"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("vhosts/tenant.toml: app.command: "), "{err}");

    // polyhost restarted meanwhile: it starts, the neighbour serves, the
    // tenant answers 503 and status says why.
    let log = bin.log();
    assert!(bin.terminate().await.success(), "{log}");
    let bin = Binary::start(&cfg.main(), &[]).await;
    let page = wait_serving(&bin, &cfg, "neighbour.test", "/", within).await;
    assert_eq!(page, "neighbour's page\n");
    let (code, body) = try_get(bin.addr, "tenant.test", "/").await;
    assert_eq!(code, 503, "{body}\n{}", bin.log());
    let shown = status(&cfg, "tenant").await;
    assert_eq!(shown.state, "failed", "{shown:?}");
    let why = shown.last_error.unwrap_or_default();
    assert!(why.contains("vhosts/tenant.toml: app.command: "), "{why}");

    // Mended by its owner, the next reload builds it again (`start` alone
    // does not read the files again, and says so).
    let (ok, out) = runuser(
        &tenant.name,
        &["chmod", "u+x", &program.display().to_string()],
    );
    assert!(ok, "{out}");
    let start = cli(&admin_socket(&cfg), &["start", "tenant"], None).await;
    assert_eq!(start.code, 1, "{start:?}");
    assert!(
        start.stderr.contains("`polyhost reload` reads it again"),
        "{start:?}"
    );
    let reload = cli(&admin_socket(&cfg), &["reload"], None).await;
    assert_eq!(reload.code, 0, "{reload:?}");
    let hello = wait_serving(&bin, &cfg, "tenant.test", "/", within).await;
    assert!(hello.starts_with("hello from tenant"), "{hello}");
    stop_clean(bin, &cfg, &[&tenant]).await;
}
