//! The `[app]` runtime against the real polyhost binary (split: root
//! supervisor + `polyhost router`, as the tests run as root) and a real
//! program (`tests/apps/fd3_app.py`, CPython, no dependencies): socket
//! activation on fd 3 as the site user, port mode, a program that never
//! becomes ready beside a neighbour that serves, a crash loop whose
//! stderr `polyhost status` shows, and `polyhost check` naming a program
//! that cannot run. The framework apps (Express, Puma,
//! gunicorn) are `tests/app_*.rs` of their own.

mod admin_support;
mod common;

use std::time::Duration;

use common::{get, open_up, pids_of_uid, wait_for, Binary, TestConfig, TestUser};

/// An `[app]` site `name` (host `name.test`) running `fd3_app.py MODE` as `user`.
fn app_site(cfg: &TestConfig, name: &str, user: &TestUser, mode: &str, extra: &str) {
    cfg.write("apps/fd3_app.py", include_str!("apps/fd3_app.py"));
    cfg.write(&format!("www/{name}/.keep"), "");
    cfg.write(
        &format!("vhosts/{name}.toml"),
        &format!(
            "hosts = [\"{name}.test\"]\nroot = \"www/{name}\"\nuser = \"{}\"\n[app]\ncommand = [\"python3\", \"../../apps/fd3_app.py\", \"{mode}\"]\n{extra}\n",
            user.name
        ),
    );
    open_up(cfg.path());
    open_up(&cfg.path().join("apps"));
}

fn json(r: &common::Resp) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {} {}", r.status, r.text()))
}

async fn status(cfg: &TestConfig, site: &str, json: bool) -> admin_support::CliOut {
    let socket = cfg.path().join("state/admin.sock");
    let args: &[&str] = if json {
        &["status", site, "--json"]
    } else {
        &["status", site]
    };
    admin_support::cli(&socket, args, None).await
}

#[tokio::test]
async fn a_socket_activated_app_serves_as_its_user_on_fd_3_and_stops_whole() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    app_site(
        &cfg,
        "node",
        &user,
        "socket",
        "[app.env]\nGREETING = \"hello from app.env\"",
    );
    let bin = Binary::start(&cfg.main(), &[]).await;

    let r = get(bin.addr, "node.test", "/some/path?q=1").await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), bin.log());
    let j = json(&r);
    assert_eq!(j["uid"], user.uid, "{j}");
    assert_eq!(
        j["listen_pid_is_mine"], true,
        "LISTEN_PID is the program's own pid: {j}"
    );
    assert_eq!(j["listen_fds"], "1", "{j}");
    assert_eq!(j["listen_fdnames"], "http", "{j}");
    assert_eq!(j["polyhost_listen_fd"], "3", "{j}");
    assert_eq!(
        j["family"], "AF_UNIX",
        "fd 3 is polyhost's Unix socket: {j}"
    );
    assert_eq!(j["port"], serde_json::Value::Null, "{j}");
    assert_eq!(j["greeting"], "hello from app.env", "{j}");
    assert_eq!(
        j["path"], "/some/path?q=1",
        "the path reaches the app unchanged: {j}"
    );
    let cgroup = j["cgroup"].as_str().unwrap();
    assert!(
        cgroup.contains("app-g"),
        "in its own process cgroup: {cgroup}"
    );

    let out = status(&cfg, "node", false).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("app"),
        "status names the runtime: {}",
        out.stdout
    );

    // The instance forked a grandchild into a session of its own: the stop
    // ends it with the instance (TERM → grace → KILL of group and cgroup).
    let procs = pids_of_uid(user.uid);
    assert!(
        procs.len() >= 2,
        "the app and its sleep run as the user: {procs:?}"
    );
    let state_dir = cfg.path().join("state");
    assert!(bin.terminate().await.success());
    let left = wait_for(
        "the site's processes to end",
        Duration::from_secs(15),
        async || pids_of_uid(user.uid),
        Vec::is_empty,
    )
    .await;
    assert!(left.is_empty());
    common::check_hygiene(&state_dir);
}

#[tokio::test]
async fn a_program_that_binds_port_is_served_after_its_port_is_checked() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    app_site(
        &cfg,
        "porty",
        &user,
        "port",
        "listen = \"port\"\nready = \"/healthz\"\nprocesses = 2",
    );
    let bin = Binary::start(&cfg.main(), &[]).await;

    let r = get(bin.addr, "porty.test", "/").await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), bin.log());
    let j = json(&r);
    assert_eq!(j["uid"], user.uid, "{j}");
    assert_eq!(j["host"], "127.0.0.1", "{j}");
    assert_eq!(j["family"], "AF_INET", "{j}");
    assert_eq!(j["listen_fds"], serde_json::Value::Null, "{j}");
    let port: u16 = j["port"].as_str().unwrap().parse().unwrap();
    assert!(polyhost::supervisor::port::check_owner(port, user.uid).is_ok());
    // Both instances run, each on a port of its own that it listens on.
    let seen = wait_for(
        "two instances",
        Duration::from_secs(20),
        async || {
            let out = status(&cfg, "porty", true).await;
            serde_json::from_str::<serde_json::Value>(&out.stdout).unwrap_or_default()
        },
        |s| s["processes"] == 2,
    )
    .await;
    assert_eq!(seen["state"], "running", "{seen}");
    let ports = wait_for(
        "two loopback listeners of the site's user",
        Duration::from_secs(20),
        async || user_listening_ports(user.uid),
        |p| p.len() == 2,
    )
    .await;
    assert!(ports.contains(&port), "{ports:?} has {port}");
    assert!(bin.terminate().await.success());
}

#[tokio::test]
async fn a_program_never_ready_fails_its_site_while_a_neighbour_serves() {
    let cfg = TestConfig::new();
    let (never, good) = (TestUser::new(), TestUser::new());
    app_site(
        &cfg,
        "never",
        &never,
        "never",
        "ready = \"/healthz\"\nstartup_timeout = \"2s\"",
    );
    app_site(&cfg, "good", &good, "socket", "ready = \"/healthz\"");
    let bin = Binary::start(&cfg.main(), &[]).await;

    let r = get(bin.addr, "never.test", "/").await;
    assert_eq!(r.status, 503, "{}", r.text());
    let r = get(bin.addr, "good.test", "/").await;
    assert_eq!(r.status, 200, "the neighbour serves: {}", r.text());
    let seen = wait_for(
        "the failed start in status",
        Duration::from_secs(20),
        async || status(&cfg, "never", true).await.stdout,
        |s| s.contains("last_error") && s.contains("healthz"),
    )
    .await;
    assert!(
        seen.contains("did not answer GET /healthz with 2xx or 3xx")
            && seen.contains("answered 503"),
        "status says why: {seen}"
    );
    assert_eq!(get(bin.addr, "good.test", "/").await.status, 200);
    assert!(bin.terminate().await.success());
}

#[tokio::test]
async fn a_crash_loop_fails_the_site_with_the_programs_stderr_in_status() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    app_site(&cfg, "crashy", &user, "crash", "start = \"eager\"");
    let bin = Binary::start(&cfg.main(), &[]).await;

    let seen = wait_for(
        "the crash loop",
        Duration::from_secs(60),
        async || {
            let out = status(&cfg, "crashy", true).await;
            serde_json::from_str::<serde_json::Value>(&out.stdout).unwrap_or_default()
        },
        |s| s["state"] == "failed",
    )
    .await;
    let last = seen["last_error"].as_str().unwrap_or_default();
    assert!(last.contains("crash loop"), "{seen}");
    assert!(
        last.contains("boom: cannot start without DATABASE_URL"),
        "the program's stderr: {seen}"
    );
    let table = status(&cfg, "crashy", false).await;
    assert!(
        table
            .stdout
            .contains("boom: cannot start without DATABASE_URL"),
        "{}",
        table.stdout
    );
    assert_eq!(get(bin.addr, "crashy.test", "/").await.status, 503);
    assert!(bin.terminate().await.success());
}

/// The ports of the LISTEN sockets of `uid` on 127.0.0.1 (`/proc/net/tcp`).
fn user_listening_ports(uid: u32) -> std::collections::BTreeSet<u16> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (addr, port) = f[1].split_once(':')?;
            let mine = f[3] == "0A" && addr == "0100007F" && f[7] == uid.to_string();
            mine.then(|| u16::from_str_radix(port, 16).ok())?
        })
        .collect()
}

#[test]
fn check_names_an_app_program_that_cannot_run_and_a_missing_cwd() {
    let cfg = TestConfig::new();
    cfg.write("www/api/notes.txt", "not a program\n");
    cfg.write("www/web/.keep", "");
    cfg.write(
        "vhosts/api.toml",
        "hosts = [\"api.test\"]\nroot = \"www/api\"\n[app]\ncommand = [\"./notes.txt\"]\n",
    );
    cfg.write(
        "vhosts/web.toml",
        "hosts = [\"web.test\"]\nroot = \"www/web\"\n[app]\ncommand = [\"no-such-server\", \"--port\"]\n",
    );
    let (code, _, stderr) = polyhost_check(&cfg);
    // 1: neither site names a user (an error of its file); the programs,
    // files of the sites' own, are listed too.
    assert_eq!(code, 1, "{stderr}");
    let dir = cfg.path().display().to_string();
    let stderr = stderr.replace(&dir, "$DIR");
    for want in [
        "$DIR/vhosts/api.toml: app.command: $DIR/www/api/notes.txt is not executable",
        "$DIR/vhosts/web.toml: app.command: \"no-such-server\" is not an executable file in PATH (/usr/local/bin:/usr/bin:/bin)",
    ] {
        assert!(stderr.contains(want), "{want}\nin:\n{stderr}");
    }
    let cfg_ok = TestConfig::new();
    cfg_ok.write("www/web/.keep", "");
    let user = TestUser::new();
    cfg_ok.write(
        "vhosts/cwd.toml",
        &format!("hosts = [\"cwd.test\"]\nroot = \"www/web\"\nuser = \"{}\"\n[app]\ncommand = [\"/bin/sh\"]\ncwd = \"gone\"\n", user.name),
    );
    let (code, _, stderr) = polyhost_check(&cfg_ok);
    // 3: the file is valid; the site would fail alone (its cwd is gone).
    assert_eq!(code, 3, "{stderr}");
    let stderr = stderr.replace(&cfg_ok.path().display().to_string(), "$DIR");
    assert!(
        stderr.contains("$DIR/vhosts/cwd.toml: app.cwd: $DIR/www/web/gone is not a directory"),
        "{stderr}"
    );
}

/// `polyhost check --config`: its exit code and stderr.
fn polyhost_check(cfg: &TestConfig) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_polyhost"))
        .args(["check", "--config"])
        .arg(cfg.main())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
