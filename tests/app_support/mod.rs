//! Support for the `[app]` runtime tests (`tests/app_*.rs`): sites running
//! the fixture apps of `tests/apps/` (Express + ws, Rack on Puma, a WSGI app
//! on gunicorn, an ASGI app on uvicorn, plain programs) under the real
//! `polyhost serve` (as root: a supervisor and a router process), the
//! status the CLI reports, and where `scripts/setup.sh` put what the apps
//! need (Node packages, the test virtualenv).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use polyhost::app::status::SiteStatus;

use crate::admin_support::cli;
use crate::common::{self, open_up, Binary, TestConfig, TestUser};

/// The Express + ws app (tests/apps/node/express-app.js).
pub const EXPRESS_APP: &str = include_str!("../apps/node/express-app.js");
/// The plain `http` module hello (tests/apps/node/hello.js).
pub const NODE_HELLO: &str = include_str!("../apps/node/hello.js");
pub const RACK_APP: &str = include_str!("../apps/rack/config.ru");
pub const WSGI_APP: &str = include_str!("../apps/generic/wsgi_app.py");
pub const ASGI_APP: &str = include_str!("../apps/generic/asgi_app.py");
pub const PORT_ONLY: &str = include_str!("../apps/generic/port_only.py");
pub const NEVER_READY: &str = include_str!("../apps/generic/never_ready.py");
pub const CRASH_AT_START: &str = include_str!("../apps/generic/crash_at_start.py");
pub const STUBBORN: &str = include_str!("../apps/generic/stubborn.py");

/// The line `crash_at_start.py` writes to stderr before it exits.
pub const CRASH_LINE: &str = "crash-fixture: FATAL cannot open /nonexistent/app.db (exit 3)";

/// `node_modules` with express and ws, installed by `scripts/setup.sh`
/// (`npm ci` of tests/apps/node/package-lock.json) where site users can
/// read it: `$TEST_NODE_MODULES/node_modules`, by default under
/// `/var/lib/polyhost-test-node` (not under /var/tmp: a sandboxed site
/// gets its own /var/tmp).
pub fn node_modules() -> PathBuf {
    let base = std::env::var_os("TEST_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/polyhost-test-node"));
    let modules = base.join("node_modules");
    assert!(
        modules.join("express").is_dir() && modules.join("ws").is_dir(),
        "{} has no express or ws: run scripts/setup.sh",
        modules.display()
    );
    modules
}

/// The test virtualenv (`$TEST_PYTHON_VENV`, by default
/// `/var/tmp/polyhost-test-venv`) with gunicorn and uvicorn, made by setup.
pub fn test_venv() -> PathBuf {
    let venv = std::env::var_os("TEST_PYTHON_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/polyhost-test-venv"));
    for tool in ["gunicorn", "uvicorn"] {
        assert!(
            venv.join("bin").join(tool).exists(),
            "{} has no {tool}: run scripts/setup.sh",
            venv.display()
        );
    }
    venv
}

/// Asserts a program setup installs is there (`node`, `puma`, ...).
pub fn need(program: &str) {
    assert!(
        Path::new(program).exists(),
        "{program} is missing: run scripts/setup.sh"
    );
}

/// An `[app]` site `name` (host `name.test`) run by `user`: `files`
/// written into its root `www/<name>/`, `app` the lines of its `[app]`
/// table, `env` its `[app.env]`, `extra` lines before `[app]` (e.g. a
/// `[limits]` table).
pub fn app_site(
    cfg: &TestConfig,
    name: &str,
    user: &TestUser,
    files: &[(&str, &str)],
    app: &str,
    env: &[(&str, &str)],
    extra: &str,
) {
    for (file, text) in files {
        cfg.write(&format!("www/{name}/{file}"), text);
    }
    let env: String = env.iter().map(|(k, v)| format!("{k} = {v:?}\n")).collect();
    cfg.write(
        &format!("vhosts/{name}.toml"),
        &format!(
            "hosts = [\"{name}.test\"]\nroot = \"www/{name}\"\nuser = \"{}\"\n{extra}\n[app]\n{app}\n[app.env]\n{env}",
            user.name
        ),
    );
    open_up(cfg.path());
}

/// An `[app]` site running the Express app on the socket polyhost hands it
/// (fd 3), with `NODE_PATH` set to setup's `node_modules` and `env` added.
pub fn express_site(
    cfg: &TestConfig,
    name: &str,
    user: &TestUser,
    app: &str,
    env: &[(&str, &str)],
    extra: &str,
) {
    need("/usr/bin/node");
    let modules = node_modules().display().to_string();
    let mut all = vec![("NODE_PATH", modules.as_str())];
    all.extend_from_slice(env);
    app_site(
        cfg,
        name,
        user,
        &[("express-app.js", EXPRESS_APP)],
        &format!("command = [\"node\", \"express-app.js\"]\n{app}"),
        &all,
        extra,
    );
}

/// The admin socket of a test config (`state_dir/admin.sock`).
pub fn admin_socket(cfg: &TestConfig) -> PathBuf {
    cfg.path().join("state/admin.sock")
}

/// `polyhost status SITE --json`, through the real CLI.
pub async fn status(cfg: &TestConfig, site: &str) -> SiteStatus {
    let out = cli(&admin_socket(cfg), &["status", site, "--json"], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// `polyhost status SITE` as a person reads it (text).
pub async fn status_text(cfg: &TestConfig, site: &str) -> String {
    let out = cli(&admin_socket(cfg), &["status", site], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    out.stdout
}

/// Runs `polyhost reload` and asserts it applied.
pub async fn reload(cfg: &TestConfig) {
    let out = cli(&admin_socket(cfg), &["reload"], None).await;
    assert_eq!(out.code, 0, "{out:?}");
}

/// One GET that may fail (status 0 and the error when there is no answer):
/// for sites that are expected to fail, unlike `common::get`.
pub async fn try_get(addr: std::net::SocketAddr, host: &str, path: &str) -> (u16, String) {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let resp = sender
            .send_request(common::request("GET", host, path))
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    match tokio::time::timeout(Duration::from_secs(90), attempt).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => (0, e),
        Err(_) => (0, "no answer within 90 s".into()),
    }
}

/// Waits (bounded: `within`) until `host` answers `path` with 200; the
/// body. On timeout it shows the last answer, polyhost's log and the
/// site's error log (the site is `host` without `.test`).
pub async fn wait_serving(
    bin: &Binary,
    cfg: &TestConfig,
    host: &str,
    path: &str,
    within: Duration,
) -> String {
    let deadline = std::time::Instant::now() + within;
    loop {
        let (status, body) = try_get(bin.addr, host, path).await;
        if status == 200 {
            return body;
        }
        if std::time::Instant::now() > deadline {
            let site = host.trim_end_matches(".test");
            panic!(
                "{host}{path} did not answer 200 within {within:?}; last: {status} {body}\n\
                 polyhost log:\n{}\n{site}.error.log:{:?}",
                bin.log(),
                error_log(cfg, site)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops polyhost with SIGTERM (exit 0), then checks nothing of `users`
/// is left running (a program's forked children included) and the server
/// left no socket or cgroup behind.
pub async fn stop_clean(bin: Binary, cfg: &TestConfig, users: &[&TestUser]) {
    let log = bin.log();
    let status = bin.terminate().await;
    assert!(status.success(), "{status:?}; log:\n{log}");
    for user in users {
        let left = common::pids_of_uid(user.uid);
        assert!(
            left.is_empty(),
            "processes of {} left after the stop: {left:?}",
            user.name
        );
    }
    common::check_hygiene(&cfg.path().join("state"));
}

/// The value of `key=value` in a fixture's one-line answer.
pub fn field<'a>(text: &'a str, key: &str) -> &'a str {
    common::field(text, key)
}

/// The text of the site's error log (`log/<site>.error.log`).
pub fn error_log(cfg: &TestConfig, site: &str) -> common::Shown {
    common::file_text(&cfg.path().join(format!("log/{site}.error.log")))
}

/// Unix sockets under `dir` whose path names `site`.
pub fn sockets_of(dir: &Path, site: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if std::os::unix::fs::FileTypeExt::is_socket(&t)
                && e.path().to_string_lossy().contains(site)
            {
                out.push(e.path());
            }
        }
    }
    out
}
