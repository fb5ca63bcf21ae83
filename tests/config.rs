//! Configuration loading: valid sets load into the expected values; every
//! kind of error is reported with file, key and what was expected, all in
//! one pass; environment overrides apply, and `POLYHOST_*` variables that
//! name no setting are warnings, for `check` and `serve` alike.

mod common;

use std::process::Command;

use common::{get, Binary, TestConfig};
use expect_test::{expect, Expect};

/// Loads the config and compares the error report with `want`.
fn check_errors(cfg: &TestConfig, want: Expect) {
    let errors = polyhost::config::load(&cfg.main()).expect_err("config should be invalid");
    let text = errors
        .to_string()
        .replace(&cfg.path().display().to_string(), "$DIR");
    want.assert_eq(&text);
}

/// The default docs/configuration.md gives for a `[php]` key, as a count.
fn documented_php_default(key: &str) -> u64 {
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let php = docs.split("### `[php]`").nth(1).expect("a [php] section");
    let row = php
        .lines()
        .find(|l| l.starts_with(&format!("| `{key}` |")))
        .unwrap_or_else(|| panic!("no row for {key}"));
    let default = row.split('|').nth(3).unwrap().trim().trim_matches('`');
    default
        .parse()
        .unwrap_or_else(|_| panic!("{key}: {default:?} is not a count"))
}

#[test]
fn valid_example_set_loads_into_typed_values() {
    let cfg = TestConfig::new();
    cfg.write("conf.d/10-users.toml", "default_user = \"www-data\"\n");
    cfg.write("www/shop/index.php", "<?php echo 1;");
    cfg.write(
        "vhosts/shop.toml",
        r#"
hosts = ["shop.test", "*.shop.test"]
root = "www/shop"
user = "shop"
[limits]
memory = "512M"
processes = 64
cpu = 1.5
body = "20M"
[php]
mode = "static"
max_children = 8
front_controller = "index.php"
[php.ini]
memory_limit = "128M"
display_errors = false
[python]
app = "shop.wsgi"
mount = "/api/"
threads = 8
queue_timeout = "5s"
[python.env]
DJANGO_SETTINGS_MODULE = "shop.settings"
"#,
    );
    cfg.static_site("blog", &["blog.test"], "default = true");
    let config = cfg.load();
    assert_eq!(
        config.server.default_user.as_deref(),
        Some("www-data"),
        "fragment merged"
    );
    assert_eq!(config.sites.len(), 2);
    let shop = config
        .sites
        .values()
        .find(|s| s.name.as_str() == "shop")
        .unwrap();
    assert_eq!(shop.limits.memory, Some(512 << 20));
    assert_eq!(shop.limits.body, 20 << 20);
    assert_eq!(shop.limits.cpu, Some(1.5));
    assert_eq!(
        shop.root.as_deref(),
        Some(cfg.path().join("www/shop").as_path())
    );
    let php = shop.php.as_ref().unwrap();
    assert_eq!(php.mode, polyhost::config::PhpMode::Static);
    assert_eq!(php.max_children, 8);
    assert_eq!(
        php.max_requests,
        documented_php_default("max_requests"),
        "default, as docs/configuration.md states it"
    );
    assert_eq!(
        php.ini.get("display_errors"),
        Some(&polyhost::config::IniValue::Flag(false))
    );
    let py = shop.python.as_ref().unwrap();
    assert_eq!(
        (py.module.as_str(), py.callable.as_str()),
        ("shop.wsgi", "application")
    );
    assert_eq!(py.mount, "/api");
    assert_eq!(py.threads, 8);
    assert_eq!(py.processes, 1, "default");
    assert_eq!(py.queue_timeout, std::time::Duration::from_secs(5));
    assert_eq!(shop.runtime_label(), "php+python");
}

#[test]
fn every_error_of_every_file_in_one_pass() {
    let cfg = TestConfig::new();
    cfg.write("vhosts/shop.toml", "hosts = [\"shop.test\"]\nroot = \"/srv\"\n[limits]\nmemory = \"12 potatoes\"\ncpu = 0\nprocesses = \"many\"\n");
    cfg.write(
        "vhosts/blog.toml",
        "hosts = [\"blog.test\"]\nroot = \"/srv\"\nlimitz = 1\n",
    );
    cfg.write(
        "vhosts/Bad_Name.toml",
        "hosts = [\"x.test\"]\nroot = \"/srv\"\n",
    );
    cfg.write("vhosts/syntax.toml", "hosts = [\"y.test\"\n");
    cfg.write("vhosts/types.toml", "hosts = 5\n");
    cfg.write("vhosts/py.toml", "hosts = [\"py.test\", \"bad host\"]\n[python]\napp = \"not a module\"\nthreads = 0\nrequest_timeout = \"soon\"\n");
    cfg.write(
        "vhosts/php.toml",
        "hosts = [\"php.test\"]\n[php]\nmode = \"turbo\"\nfront_controller = \"../x.php\"\nextensions = [\".PHTML\", \"inc\", \".php.bak\"]\n[php.ini]\ndoc_root = \"/srv\"\nuser_dir = \"public_html\"\nopen_basedir = \"/\"\nmemory_limit = \"256M\"\n",
    );
    check_errors(
        &cfg,
        expect![[r#"
            $DIR/vhosts/Bad_Name.toml: "Bad_Name" is not a valid site name (the file name without .toml must match [a-z0-9][a-z0-9-]*, at most 48 characters)
            $DIR/vhosts/blog.toml: limitz: unknown field `limitz`, expected one of `hosts`, `default`, `root`, `user`, `group`, `limits`, `env`, `static`, `php`, `python`, `app`, `tls`, `sandbox` (line 3, column 1)
            $DIR/vhosts/php.toml: php.mode: "turbo" is not a pool mode (expected "static", "dynamic" or "ondemand")
            $DIR/vhosts/php.toml: php.ini.doc_root: not allowed: PHP would run the file named by a request's path info (any extension) instead of the script polyhost chose
            $DIR/vhosts/php.toml: php.ini.open_basedir: set by polyhost: use php.open_basedir
            $DIR/vhosts/php.toml: php.ini.user_dir: not allowed: PHP would run the file named by a request's path info (any extension) instead of the script polyhost chose
            $DIR/vhosts/php.toml: php.front_controller: "../x.php" is not a PHP script path relative to the root (e.g. "index.php")
            $DIR/vhosts/php.toml: php.extensions: ".PHTML" is not a file name extension (a dot and lower-case letters or digits, e.g. ".phtml")
            $DIR/vhosts/php.toml: php.extensions: "inc" is not a file name extension (a dot and lower-case letters or digits, e.g. ".phtml")
            $DIR/vhosts/php.toml: php.extensions: ".php.bak" is not a file name extension (a dot and lower-case letters or digits, e.g. ".phtml")
            $DIR/vhosts/php.toml: php.extensions: must include ".php" (directory indexes and front controllers are .php files)
            $DIR/vhosts/php.toml: root: missing: static and PHP sites need a document root (e.g. root = "/srv/www/example")
            $DIR/vhosts/py.toml: hosts[1]: "bad host" is not a host name: expected a host name such as "example.test" or "*.example.test" (no port, no scheme)
            $DIR/vhosts/py.toml: python.app: "not a module" is not a WSGI application reference (expected "package.module:callable")
            $DIR/vhosts/py.toml: python.threads: 0 is not a whole number between 1 and 1024
            $DIR/vhosts/py.toml: python.request_timeout: "soon" is not a duration (e.g. "30s", "5m", "250ms"; at most a year)
            $DIR/vhosts/shop.toml: limits.memory: "12 potatoes" is not a size (e.g. "512M")
            $DIR/vhosts/shop.toml: limits.processes: "many" is not a whole number between 1 and 4194304
            $DIR/vhosts/shop.toml: limits.cpu: 0 is not a number of CPU cores (e.g. 1 or 0.5)
            $DIR/vhosts/syntax.toml: unclosed array, expected `]` (line 1, column 18)
            $DIR/vhosts/types.toml: hosts: invalid type: integer `5`, expected a sequence (line 1, column 9)"#]],
    );
}

#[test]
fn a_host_claimed_twice_names_both_files() {
    let cfg = TestConfig::new();
    cfg.static_site("alpha", &["shared.test", "a.test"], "default = true");
    cfg.static_site("beta", &["SHARED.test."], "default = true");
    check_errors(
        &cfg,
        expect![[r#"
            $DIR/vhosts/beta.toml: hosts[0]: shared.test is already claimed by $DIR/vhosts/alpha.toml
            $DIR/vhosts/beta.toml: default: only one site can be the default; $DIR/vhosts/alpha.toml is too"#]],
    );
}

#[test]
fn main_file_errors_name_the_file_and_key() {
    let cfg = TestConfig::new();
    cfg.write("polyhost.toml", "listen = [\"localhost\"]\nlisen = 1\n");
    check_errors(
        &cfg,
        expect!["$DIR/polyhost.toml: lisen: unknown field: found `lisen`, expected `one of `listen`, `vhosts_dir`, `include`, `state_dir`, `log_dir`, `default_user`, `default_group`, `shutdown_timeout`, `log_level`, `cgroups`, `site_scheduling`, `router_user`, `admin`, `metrics`, `tls_listen`, `h2c`, `router_threads`, `trusted_proxies`, `trusted_proxy_users`, `limits`, `acme`, `cluster``"],
    );
    cfg.write(
        "polyhost.toml",
        "listen = [\"localhost\"]\nshutdown_timeout = \"forever\"\nsite_scheduling = \"fifo\"\nrouter_threads = 0\nrouter_user = \"root\"\n",
    );
    check_errors(
        &cfg,
        expect![[r#"
            $DIR/polyhost.toml: listen[0]: "localhost" is not an address:port (e.g. "127.0.0.1:8080" or "[::]:80")
            $DIR/polyhost.toml: shutdown_timeout: "forever" is not a duration (e.g. "30s", "5m", "250ms"; at most a year)
            $DIR/polyhost.toml: router_threads: 0 is not a whole number between 1 and 1024
            $DIR/polyhost.toml: site_scheduling: "fifo" is not a scheduling policy (expected "batch" or "normal")
            $DIR/polyhost.toml: router_user: "root": the router process serves the internet and must not run as root; name an unprivileged user of its own (default "polyhost": `useradd --system --no-create-home --shell /usr/sbin/nologin polyhost`)"#]],
    );
}

#[test]
fn fragment_errors_name_the_fragment() {
    let cfg = TestConfig::new();
    cfg.write("conf.d/50-bad.toml", "log_level = \"[[[\"\n");
    check_errors(
        &cfg,
        expect![[
            r#"$DIR/conf.d/50-bad.toml: log_level: "[[[" is not a log level (e.g. "info", "debug", "polyhost=debug")"#
        ]],
    );
}

fn polyhost_check(cfg: &TestConfig, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_polyhost"))
        .args(["check", "--config"])
        .arg(cfg.main())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn environment_overrides_apply_and_are_named_in_errors() {
    let cfg = TestConfig::new();
    cfg.static_site("a", &["a.test"], "");
    let (code, _, stderr) = polyhost_check(&cfg, &[("POLYHOST_LISTEN", "[\"nope\"]")]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(
            "environment variable POLYHOST_LISTEN: listen[0]: \"nope\" is not an address:port"
        ),
        "{stderr}"
    );
    // A variable that names no setting is a warning naming the closest one.
    let (code, stdout, stderr) = polyhost_check(&cfg, &[("POLYHOST_ADMIN__SOKET", "/x")]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(
            "warning: environment variable POLYHOST_ADMIN__SOKET: not a polyhost setting, ignored \
             (the closest setting is POLYHOST_ADMIN__SOCKET, key `admin.socket`)"
        ),
        "{stderr}"
    );
    assert!(stdout.contains("(1 site(s))"), "{stdout}");
    // A valid override: vhosts_dir pointing at an empty dir loads zero sites.
    std::fs::create_dir_all(cfg.path().join("empty")).unwrap();
    let (code, stdout, stderr) = polyhost_check(&cfg, &[("POLYHOST_VHOSTS_DIR", "empty")]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("(0 site(s))"), "{stdout}");
    let (code, stdout, _) = polyhost_check(&cfg, &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("(1 site(s))"), "{stdout}");
}

/// Variables a wrapper script or container image sets, and a typo of a real
/// key: each a warning, with a setting of the same run still applied.
const NOT_SETTINGS: [(&str, &str, &str); 3] = [
    ("POLYHOST_VERSION", "1", "POLYHOST_LISTEN"),
    ("POLYHOST_BIN", "/usr/local/bin/polyhost", "POLYHOST_H2C"),
    (
        "POLYHOST_LIMITS__MAX_CONECTIONS",
        "abc",
        "POLYHOST_LIMITS__MAX_CONNECTIONS",
    ),
];

fn not_settings_with<'a>(setting: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
    let mut env: Vec<_> = NOT_SETTINGS
        .iter()
        .map(|&(var, value, _)| (var, value))
        .collect();
    env.push(setting);
    env
}

fn assert_warned(text: &str) {
    for (var, _, closest) in NOT_SETTINGS {
        let want = format!(
            "environment variable {var}: not a polyhost setting, ignored (the closest setting is {closest}"
        );
        assert!(text.contains(&want), "no warning {want:?} in:\n{text}");
    }
}

#[test]
fn check_warns_about_variables_that_name_no_setting_and_passes() {
    let cfg = TestConfig::new();
    cfg.static_site("a", &["a.test"], "");
    std::fs::create_dir_all(cfg.path().join("empty")).unwrap();
    let (code, stdout, stderr) =
        polyhost_check(&cfg, &not_settings_with(("POLYHOST_VHOSTS_DIR", "empty")));
    assert_eq!(code, 0, "{stderr}");
    assert_warned(&stderr);
    assert!(
        stdout.contains("(0 site(s))"),
        "the override applies: {stdout}"
    );
    // Also listed when something else is wrong (then check fails for that).
    let (code, _, stderr) =
        polyhost_check(&cfg, &not_settings_with(("POLYHOST_LISTEN", "[\"nope\"]")));
    assert_eq!(code, 1, "{stderr}");
    assert_warned(&stderr);
    assert!(
        stderr.contains("environment variable POLYHOST_LISTEN: listen[0]"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_starts_and_serves_with_variables_that_name_no_setting() {
    let cfg = TestConfig::new();
    cfg.static_site("a", &["a.test"], "");
    let log_dir = cfg.path().join("env-logs");
    let env = not_settings_with(("POLYHOST_LOG_DIR", log_dir.to_str().unwrap()));
    let bin = Binary::start(&cfg.main(), &env).await;
    let resp = get(bin.addr, "a.test", "/").await;
    assert_eq!(
        (resp.status, resp.text().trim()),
        (200, "site a"),
        "{}",
        bin.log()
    );
    // Logged before the listening line, which `start` waited for.
    let log = bin.log();
    assert_warned(&log);
    assert!(log.contains("WARN"), "{log}");
    let status = bin.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    // The setting beside them applied: the access log is where it says.
    let access = log_dir.join("a.access.log");
    assert!(
        access.is_file(),
        "{} missing; log:\n{log}",
        access.display()
    );
}

#[test]
fn check_reports_a_missing_document_root() {
    let cfg = TestConfig::new();
    cfg.write(
        "vhosts/gone.toml",
        "hosts = [\"gone.test\"]\nroot = \"www/gone\"\n",
    );
    let (code, _, stderr) = polyhost_check(&cfg, &[]);
    // 3: the file is valid; the site would fail alone (`serve` starts).
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("vhosts/gone.toml: root: "), "{stderr}");
    assert!(stderr.contains("No such file or directory"), "{stderr}");
}

#[test]
fn repository_config_passes_check_and_a_broken_copy_fails_with_file_and_key() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_polyhost"))
        .args(["check", "--config"])
        .arg(repo.join("polyhost.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A copy of the repository's configuration with one vhost file broken.
    let copy = tempfile::tempdir().unwrap();
    for dir in ["vhosts", "conf.d"] {
        std::fs::create_dir_all(copy.path().join(dir)).unwrap();
        for entry in std::fs::read_dir(repo.join(dir)).unwrap() {
            let p = entry.unwrap().path();
            std::fs::copy(&p, copy.path().join(dir).join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(
        repo.join("polyhost.toml"),
        copy.path().join("polyhost.toml"),
    )
    .unwrap();
    std::os::unix::fs::symlink(repo.join("demo"), copy.path().join("demo")).unwrap();
    let broken = copy.path().join("vhosts/static-demo.toml");
    let text = std::fs::read_to_string(&broken).unwrap();
    std::fs::write(&broken, format!("{text}\n[limits]\nmemory = \"lots\"\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_polyhost"))
        .args(["check", "--config"])
        .arg(copy.path().join("polyhost.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("vhosts/static-demo.toml: limits.memory: \"lots\" is not a size"),
        "{stderr}"
    );
}

#[test]
fn check_reports_a_missing_site_user_and_a_missing_worker() {
    let cfg = TestConfig::new();
    cfg.write("www/py/x", "");
    cfg.write(
        "vhosts/py.toml",
        "hosts = [\"py.test\"]\nroot = \"www/py\"\nuser = \"polyhost-no-such-user\"\n[python]\napp = \"x\"\nworker = \"/nonexistent/polyhost-python\"\n",
    );
    // A static site's files are served with its user's permissions: that
    // user must exist too.
    cfg.write(
        "vhosts/files.toml",
        "hosts = [\"files.test\"]\nroot = \"www/py\"\nuser = \"polyhost-no-such-user\"\n",
    );
    let (code, _, stderr) = polyhost_check(&cfg, &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("/nonexistent/polyhost-python is not an executable file"),
        "{stderr}"
    );
    if nix::unistd::geteuid().is_root() {
        assert!(
            stderr.contains("vhosts/py.toml: user: user `polyhost-no-such-user` does not exist"),
            "{stderr}"
        );
        assert!(
            stderr.contains("vhosts/files.toml: user: user `polyhost-no-such-user` does not exist"),
            "{stderr}"
        );
    }
}

#[test]
fn a_document_root_reached_through_a_symlink_is_refused() {
    // A site owner who controls the parent of their root could otherwise
    // point the root at `/` and have polyhost (root) serve /etc/shadow.
    let cfg = TestConfig::new();
    std::fs::create_dir_all(cfg.path().join("real")).unwrap();
    std::os::unix::fs::symlink(cfg.path().join("real"), cfg.path().join("www")).unwrap();
    cfg.write(
        "vhosts/linked.toml",
        "hosts = [\"linked.test\"]\nroot = \"www\"\n",
    );
    let (code, _, stderr) = polyhost_check(&cfg, &[]);
    // 3: the file is valid; the site would fail alone (its owner controls
    // the parent: one tenant must not stop the others, `app::reload`).
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("vhosts/linked.toml: root: cannot open document root"),
        "{stderr}"
    );
    assert!(stderr.contains("contains a symlink"), "{stderr}");
}

#[test]
fn a_site_may_not_run_in_a_privileged_group_or_the_admin_group() {
    if !nix::unistd::geteuid().is_root() {
        return; // the group rule applies when polyhost runs as root (CI does)
    }
    let cfg = TestConfig::new();
    cfg.write("polyhost.toml", "listen = [\"127.0.0.1:0\"]\nstate_dir = \"state\"\nlog_dir = \"log\"\n[admin]\ngroup = \"operator\"\n");
    cfg.write("www/a/x", "");
    for (name, group) in [("disky", "disk"), ("admin-like", "operator")] {
        cfg.write(
            &format!("vhosts/{name}.toml"),
            &format!("hosts = [\"{name}.test\"]\nroot = \"www/a\"\nuser = \"nobody\"\ngroup = \"{group}\"\n[python]\napp = \"x\"\nworker = \"/bin/true\"\n"),
        );
    }
    let (code, _, stderr) = polyhost_check(&cfg, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("vhosts/disky.toml: user: group `disk` grants more than a site may have"),
        "{stderr}"
    );
    assert!(
        stderr.contains("vhosts/admin-like.toml: user: group `operator` grants more"),
        "{stderr}"
    );
}

/// A runtime socket's path must fit a Unix socket address (107 bytes):
/// `check` names the site whose sockets would not, before anything starts,
/// instead of a crash loop of "File name too long" at the first request.
#[test]
fn a_site_whose_runtime_sockets_would_not_fit_is_refused_by_name() {
    let cfg = TestConfig::new();
    // 40 bytes: room for a short site name, not for a 40-byte one.
    let state = format!("/tmp/polyhost-socket-room-{}", "x".repeat(14));
    assert_eq!(state.len(), 40);
    cfg.write(
        "polyhost.toml",
        &format!("listen = [\"127.0.0.1:0\"]\nstate_dir = \"{state}\"\nlog_dir = \"log\"\n"),
    );
    cfg.write("www/a/x", "");
    let long = "a-site-name-of-forty-bytes-for-sockets-x";
    assert_eq!(long.len(), 40);
    let users = [common::TestUser::new(), common::TestUser::new()];
    for (name, user) in [(long, &users[0]), ("ok", &users[1])] {
        cfg.write(
            &format!("vhosts/{name}.toml"),
            &format!("hosts = [\"{name}.test\"]\nroot = \"www/a\"\nuser = \"{}\"\n[python]\napp = \"x\"\nworker = \"/bin/true\"\n", user.name),
        );
    }
    // A static site runs no process: no socket, whatever its name.
    let static_name = "a-static-site-of-forty-bytes-for-sockets";
    cfg.write(
        &format!("vhosts/{static_name}.toml"),
        "hosts = [\"s.test\"]\nroot = \"www/a\"\n",
    );
    let (code, _, stderr) = polyhost_check(&cfg, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("vhosts/{long}.toml: its runtime sockets in {state}/sockets/{long} would have paths of up to 120 bytes, over the 107")),
        "{stderr}"
    );
    assert!(!stderr.contains("vhosts/ok.toml"), "{stderr}");
    assert!(!stderr.contains(static_name), "{stderr}");
}

#[test]
fn an_asgi_site_loads_its_defaults_and_its_settings_typed() {
    use polyhost::config::{Lifespan, PythonInterface};
    use std::time::Duration;
    let cfg = TestConfig::new();
    cfg.write(
        "vhosts/plain.toml",
        "hosts = [\"plain.test\"]\nuser = \"nobody\"\n[python]\ninterface = \"asgi\"\napp = \"main:app\"\n",
    );
    cfg.write(
        "vhosts/tuned.toml",
        "hosts = [\"tuned.test\"]\nuser = \"nobody\"\n[python]\ninterface = \"asgi\"\napp = \"main:app\"\nprocesses = 2\nmax_concurrency = 500\nlifespan = \"on\"\n[python.websocket]\nmax_message = \"1M\"\nping_interval = \"0s\"\nping_timeout = \"5s\"\nidle_timeout = \"10m\"\n",
    );
    let config = cfg.load();
    let site = |name: &str| {
        config
            .sites
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .and_then(|(_, s)| s.python.clone())
            .unwrap()
    };
    let plain = site("plain");
    let PythonInterface::Asgi(asgi) = &plain.interface else {
        panic!("not ASGI: {plain:?}");
    };
    assert_eq!(asgi.max_concurrency, 100, "default");
    assert_eq!(asgi.lifespan, Lifespan::Auto, "default");
    let ws = &asgi.websocket;
    assert_eq!(
        (
            ws.max_message,
            ws.ping_interval,
            ws.ping_timeout,
            ws.idle_timeout
        ),
        (
            16 << 20,
            Some(Duration::from_secs(20)),
            Duration::from_secs(20),
            None
        ),
        "defaults"
    );
    assert_eq!(
        plain.per_process(),
        100,
        "admission: max_concurrency, not threads"
    );
    let tuned = site("tuned");
    let asgi = tuned.asgi().unwrap();
    assert_eq!((asgi.max_concurrency, asgi.lifespan), (500, Lifespan::On));
    let ws = &asgi.websocket;
    assert_eq!(
        (
            ws.max_message,
            ws.ping_interval,
            ws.ping_timeout,
            ws.idle_timeout
        ),
        (
            1 << 20,
            None,
            Duration::from_secs(5),
            Some(Duration::from_secs(600))
        )
    );
    assert_eq!(tuned.processes * tuned.per_process(), 1000);
}

#[test]
fn asgi_keys_are_checked_and_a_key_of_the_other_interface_is_refused() {
    let cfg = TestConfig::new();
    let site = |name: &str, python: &str| {
        cfg.write(
            &format!("vhosts/{name}.toml"),
            &format!("hosts = [\"{name}.test\"]\nuser = \"nobody\"\n[python]\n{python}"),
        );
    };
    site("iface", "interface = \"rsgi\"\napp = \"main:app\"\n");
    site("wsgi", "app = \"main:app\"\nmax_concurrency = 10\nlifespan = \"on\"\n[python.websocket]\nmax_message = \"1M\"\n");
    site("asgi", "interface = \"asgi\"\napp = \"main app\"\nthreads = 8\nmax_concurrency = 0\nlifespan = \"sometimes\"\n[python.websocket]\nmax_message = \"2G\"\nping_interval = \"often\"\nping_timeout = \"0s\"\nidle_timeout = -1\n");
    site(
        "unknown",
        "interface = \"asgi\"\napp = \"main:app\"\n[python.websocket]\nmax_frame = \"1M\"\n",
    );
    check_errors(
        &cfg,
        expect![[r#"
            $DIR/vhosts/asgi.toml: python.app: "main app" is not an ASGI application reference (expected "package.module:callable")
            $DIR/vhosts/asgi.toml: python.threads: applies to WSGI sites only: an ASGI site's concurrency per process is python.max_concurrency
            $DIR/vhosts/asgi.toml: python.max_concurrency: 0 is not a whole number between 1 and 100000
            $DIR/vhosts/asgi.toml: python.lifespan: "sometimes" is not a lifespan mode (expected "auto", "on" or "off")
            $DIR/vhosts/asgi.toml: python.websocket.max_message: 2147483648 bytes is not between 1 byte and 1G
            $DIR/vhosts/asgi.toml: python.websocket.ping_interval: "often" is not a duration (e.g. "30s", "5m", "250ms"; at most a year)
            $DIR/vhosts/asgi.toml: python.websocket.ping_timeout: must be more than 0 (to never ping, set ping_interval = "0s")
            $DIR/vhosts/asgi.toml: python.websocket.idle_timeout: -1 is not a duration (e.g. "30s", "5m", "250ms"; at most a year)
            $DIR/vhosts/iface.toml: python.interface: "rsgi" is not an interface (expected "wsgi" or "asgi")
            $DIR/vhosts/unknown.toml: python.websocket.max_frame: unknown field `max_frame`, expected one of `max_message`, `ping_interval`, `ping_timeout`, `idle_timeout` (line 7, column 1)
            $DIR/vhosts/wsgi.toml: python.max_concurrency: applies to ASGI sites only (set python.interface = "asgi"); a WSGI site's concurrency per process is python.threads
            $DIR/vhosts/wsgi.toml: python.lifespan: applies to ASGI sites only (set python.interface = "asgi")
            $DIR/vhosts/wsgi.toml: python.websocket: applies to ASGI sites only (set python.interface = "asgi")"#]],
    );
}
