//! The per-site sandbox (issue 21), attacked from site code as a tenant
//! would: a PHP shell in site A looks at `/tmp`, `/dev/shm`, `/proc` and the
//! network, and, in its read-only view (`sandbox.paths`), a PHP shell and a
//! WSGI app look for what the view hides, against the real binary. Root
//! only (namespaces and mounts); CI runs as root.

mod common;

use std::os::unix::net::UnixListener;
use std::path::Path;

use common::{get, open_up, pids_of_uid, python_worker_outside_tmp, Binary, TestConfig, TestUser};

/// The site's shell: `op=write&n=NAME` writes /tmp/NAME; `op=ls` lists
/// /tmp; `op=procs` lists `pid:uid` of every process /proc shows;
/// `op=shm` writes /dev/shm; `op=connect&port=P` connects to 127.0.0.1:P.
const SHELL: &str = r#"<?php
switch ($_GET['op']) {
case 'write': file_put_contents('/tmp/' . basename($_GET['n']), 'x'); echo 'wrote'; break;
case 'ls': echo implode(',', array_values(array_diff(scandir('/tmp'), ['.', '..']))); break;
case 'procs':
    $out = [];
    foreach (scandir('/proc') as $e) {
        if (ctype_digit($e)) { $st = @stat("/proc/$e"); $out[] = $e . ':' . ($st ? $st['uid'] : '?'); }
    }
    echo implode(',', $out); break;
case 'shm': echo file_put_contents('/dev/shm/probe', 'y') === 1 ? 'shm ok' : 'shm failed'; break;
case 'connect':
    $s = @fsockopen('127.0.0.1', (int)$_GET['port'], $errno, $errstr, 2);
    echo $s ? 'connected' : "refused: $errno $errstr"; break;
}
"#;

/// The attacker's view: PHP's `open_basedir` (a convenience, not a
/// boundary: any site with `exec` or an FFI gets past it) opened to what
/// the shell probes, so the test sees what the site's *user* can reach.
/// `/tmp` is not listed: in the sandbox polyhost admits it itself (it is
/// the site's own); without the sandbox it stays out, so the opted-out
/// site lists it in its own file.
const BASEDIR: &str = "open_basedir = [\"www\", \"/proc\", \"/dev/shm\"]";

fn php_site(cfg: &TestConfig, name: &str, user: &TestUser, site_extra: &str) {
    cfg.write(&format!("www/{name}/shell.php"), SHELL);
    cfg.write(
        &format!("vhosts/{name}.toml"),
        &format!(
            "hosts = [\"{name}.test\"]\nroot = \"www/{name}\"\nuser = \"{}\"\n{site_extra}\n[php]\n{BASEDIR}\n",
            user.name
        ),
    );
}

async fn shell(b: &Binary, site: &str, query: &str) -> String {
    let r = get(
        b.addr,
        &format!("{site}.test"),
        &format!("/shell.php?{query}"),
    )
    .await;
    assert_eq!(r.status, 200, "{site} {query}: {}", r.text());
    r.text()
}

/// `pid:uid` pairs as the shell printed them.
fn procs(listing: &str) -> Vec<(i32, String)> {
    listing
        .split(',')
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (pid, uid) = e.split_once(':').unwrap();
            (pid.parse().unwrap(), uid.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn a_site_sees_its_own_tmp_and_processes_and_nothing_of_others() {
    if !polyhost::isolation::running_as_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    assert_eq!(
        polyhost::isolation::sandbox::unavailable(),
        None,
        "the sandbox must work on CI machines"
    );
    let cfg = TestConfig::outside_tmp();
    let (a, b, open) = (TestUser::new(), TestUser::new(), TestUser::new());
    php_site(&cfg, "a", &a, "");
    php_site(&cfg, "b", &b, "");
    php_site(&cfg, "open", &open, "sandbox = false");
    // The opted-out site's shell may write the host's /tmp (open_basedir
    // would stop PHP itself, not its user).
    let open_vhost = cfg.path().join("vhosts/open.toml");
    let text = std::fs::read_to_string(&open_vhost).unwrap();
    std::fs::write(
        &open_vhost,
        text.replace("\"/proc\"", "\"/tmp\", \"/proc\""),
    )
    .unwrap();
    open_up(cfg.path());
    let server = Binary::start(&cfg.main(), &[]).await;
    let secret = format!("secret-{}", std::process::id());

    // /tmp: A's file is A's alone, and survives A's other processes.
    assert_eq!(
        shell(&server, "a", &format!("op=write&n={secret}")).await,
        "wrote"
    );
    let a_tmp = cfg.path().join("state/sites/a/tmp").join(&secret);
    assert!(
        a_tmp.exists(),
        "A's /tmp is its state tmp dir: {} missing",
        a_tmp.display()
    );
    assert!(
        !Path::new("/tmp").join(&secret).exists(),
        "A's /tmp file leaked into the host's /tmp"
    );
    for _ in 0..4 {
        // Several php-fpm children answer: they all see it.
        assert!(shell(&server, "a", "op=ls")
            .await
            .split(',')
            .any(|f| f == secret));
    }
    let b_ls = shell(&server, "b", "op=ls").await;
    assert!(
        !b_ls.split(',').any(|f| f == secret),
        "B sees A's /tmp file: {b_ls}"
    );
    assert_eq!(shell(&server, "a", "op=shm").await, "shm ok");

    // /proc: only A's own processes; not B's php-fpm, not polyhost.
    let seen = procs(&shell(&server, "a", "op=procs").await);
    assert!(
        !seen.is_empty(),
        "A sees no process at all (not even itself)"
    );
    let a_uid = a.uid.to_string();
    let others: Vec<_> = seen.iter().filter(|(_, uid)| *uid != a_uid).collect();
    assert!(
        others.is_empty(),
        "A sees processes of other users: {others:?}"
    );
    let polyhost_pid = server.child.id().unwrap() as i32;
    assert!(
        !seen.iter().any(|(p, _)| *p == polyhost_pid),
        "A sees polyhost ({polyhost_pid})"
    );
    let b_pids = pids_of_uid(b.uid);
    assert!(!b_pids.is_empty(), "B has processes on the host");
    assert!(
        !seen.iter().any(|(p, _)| b_pids.contains(p)),
        "A sees B's processes {b_pids:?}: {seen:?}"
    );

    // Opted out: the host's /tmp and /proc.
    let open_secret = format!("{secret}-open");
    assert_eq!(
        shell(&server, "open", &format!("op=write&n={open_secret}")).await,
        "wrote"
    );
    let host_file = Path::new("/tmp").join(&open_secret);
    assert!(
        host_file.exists(),
        "sandbox = false: the site writes the host's /tmp"
    );
    let _ = std::fs::remove_file(&host_file);
    let open_seen = procs(&shell(&server, "open", "op=procs").await);
    assert!(
        open_seen.iter().any(|(p, _)| *p == polyhost_pid),
        "sandbox = false: the host's /proc"
    );
    server.terminate().await;
}

#[tokio::test]
async fn network_none_blocks_connections_that_the_default_allows() {
    if !polyhost::isolation::running_as_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = TestConfig::new();
    let (host, none) = (TestUser::new(), TestUser::new());
    php_site(&cfg, "host", &host, "");
    php_site(&cfg, "none", &none, "[sandbox]\nnetwork = \"none\"");
    open_up(cfg.path());
    let server = Binary::start(&cfg.main(), &[]).await;
    assert_eq!(
        shell(&server, "host", &format!("op=connect&port={port}")).await,
        "connected"
    );
    let blocked = shell(&server, "none", &format!("op=connect&port={port}")).await;
    assert!(
        blocked.starts_with("refused"),
        "network = \"none\" connected: {blocked}"
    );
    server.terminate().await;
}

#[test]
fn sandbox_keys_are_validated_with_their_file_and_key() {
    let cfg = TestConfig::new();
    cfg.write("www/x/index.html", "x");
    cfg.write(
        "vhosts/x.toml",
        "hosts = [\"x.test\"]\nroot = \"www/x\"\n[sandbox]\nnetwork = \"wifi\"\n[php]\n",
    );
    let err = polyhost::config::load(&cfg.main()).unwrap_err().to_string();
    assert!(
        err.contains("x.toml") && err.contains("sandbox.network") && err.contains("\"wifi\""),
        "{err}"
    );
    cfg.write(
        "vhosts/x.toml",
        "hosts = [\"x.test\"]\nroot = \"www/x\"\n[sandbox]\nenabled = false\nnetwork = \"none\"\n[php]\n",
    );
    let err = polyhost::config::load(&cfg.main()).unwrap_err().to_string();
    assert!(
        err.contains("sandbox.network") && err.contains("needs the sandbox"),
        "{err}"
    );
    cfg.write(
        "vhosts/x.toml",
        "hosts = [\"x.test\"]\nroot = \"www/x\"\nsandbox = false\n[php]\n",
    );
    let config = polyhost::config::load(&cfg.main()).unwrap();
    assert!(!config.sites.values().next().unwrap().sandbox.enabled);
}

/// Site code probing its view: `op=exists|write|read|unix&p=PATH`,
/// answering `yes`/`no`, `wrote` or `failed: ...` (PHP's message, Python's
/// errno), the file's text, or the first line a Unix socket sends.
const VIEW_SHELL: &str = r#"<?php
$p = $_GET['p'] ?? '';
switch ($_GET['op'] ?? '') {
case 'exists': echo file_exists($p) || is_link($p) ? 'yes' : 'no'; break;
case 'write': echo @file_put_contents($p, 'x') === false ? 'failed: ' . error_get_last()['message'] : 'wrote'; break;
case 'read': $r = @file_get_contents($p); echo $r === false ? 'failed: ' . error_get_last()['message'] : $r; break;
case 'unix': $s = @stream_socket_client('unix://' . $p, $errno, $errstr, 2); echo $s ? fgets($s) : "failed: $errstr"; break;
default: echo 'ok';
}
"#;

/// The same probe as a WSGI (`application`) and an ASGI (`app`) app.
const VIEW_APP: &str = r#"import os
import urllib.parse


def probe(query):
    qs = urllib.parse.parse_qs(query)
    op, path = qs.get("op", [""])[0], qs.get("p", [""])[0]
    try:
        if op == "exists":
            return "yes" if os.path.lexists(path) else "no"
        if op == "write":
            with open(path, "w") as f:
                f.write("x")
            return "wrote"
        if op == "read":
            with open(path) as f:
                return f.read()
    except OSError as e:
        return "failed: errno %d %s" % (e.errno, e.strerror)
    return "ok"


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [probe(environ.get("QUERY_STRING", "")).encode()]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": probe(scope["query_string"].decode()).encode()})
"#;

/// A site with the view (`paths` its `[sandbox]` list) or without (`None`):
/// PHP with `open_basedir = ["/"]` (the attacker's reach is its user's, not
/// PHP's filter), or Python (`wsgi`/`asgi`) running [`VIEW_APP`].
fn view_site(cfg: &TestConfig, name: &str, user: &TestUser, kind: &str, paths: Option<&str>) {
    let sandbox = paths.map_or(String::new(), |p| format!("[sandbox]\npaths = [{p}]\n"));
    let runtime = match kind {
        "php" => {
            cfg.write(&format!("www/{name}/shell.php"), VIEW_SHELL);
            "[php]\nopen_basedir = [\"/\"]\n".to_owned()
        }
        interface => {
            cfg.write("apps/viewprobe.py", VIEW_APP);
            cfg.write(&format!("www/{name}/static.txt"), "static\n");
            let callable = if interface == "asgi" {
                "app"
            } else {
                "application"
            };
            format!(
                "[python]\napp = \"viewprobe:{callable}\"\ninterface = \"{interface}\"\npath = [\"apps\"]\nworker = \"{}\"\n",
                python_worker_outside_tmp().display()
            )
        }
    };
    cfg.write(
        &format!("vhosts/{name}.toml"),
        &format!(
            "hosts = [\"{name}.test\"]\nroot = \"www/{name}\"\nuser = \"{}\"\n{sandbox}{runtime}",
            user.name
        ),
    );
}

/// What site `site`'s code answers to `op` on `path`.
async fn probe(b: &Binary, site: &str, kind: &str, op: &str, path: &Path) -> String {
    let script = if kind == "php" { "/shell.php" } else { "/" };
    let target = format!("{script}?op={op}&p={}", path.display());
    let r = get(b.addr, &format!("{site}.test"), &target).await;
    assert_eq!(r.status, 200, "{site} {target}: {}\n{}", r.text(), b.log());
    r.text()
}

/// `/etc/polyhost` exists while the test runs (made if absent, removed
/// after if it was made here and is still empty).
struct EtcPolyhost(bool);

impl EtcPolyhost {
    fn ensure() -> EtcPolyhost {
        EtcPolyhost(std::fs::create_dir("/etc/polyhost").is_ok())
    }
}

impl Drop for EtcPolyhost {
    fn drop(&mut self) {
        if self.0 {
            let _ = std::fs::remove_dir("/etc/polyhost");
        }
    }
}

#[tokio::test]
async fn in_its_view_a_site_finds_nothing_of_the_host_it_was_not_given() {
    if !polyhost::isolation::running_as_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let _etc = EtcPolyhost::ensure();
    let cfg = TestConfig::outside_tmp();
    let (a, b, py) = (TestUser::new(), TestUser::new(), TestUser::new());
    let shared = cfg.path().join("shared");
    cfg.write("shared/hello.txt", "shared text");
    let list = format!("{:?}", shared.display().to_string());
    view_site(&cfg, "a", &a, "php", Some(&list));
    view_site(&cfg, "py", &py, "wsgi", Some(&list));
    view_site(&cfg, "b", &b, "php", None);
    // Writable by everyone on the host: only the view's mount stops a write.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    for (site, user) in [("a", &a), ("py", &py)] {
        let uploads = cfg.path().join(format!("www/{site}/uploads"));
        std::fs::create_dir_all(&uploads).unwrap();
        std::os::unix::fs::chown(&uploads, Some(user.uid), None).unwrap();
    }
    open_up(cfg.path());
    let host_tmp_file = Path::new("/tmp").join(format!("polyhost-view-{}", std::process::id()));
    std::fs::write(&host_tmp_file, "host").unwrap();
    let server = Binary::start(&cfg.main(), &[]).await;
    let hidden = [
        cfg.path().join("www/b"),
        cfg.path().join("state/sites/b"),
        cfg.path().join("polyhost.toml"),
        cfg.path().join("vhosts"),
        "/home".into(),
        "/etc/polyhost".into(),
        "/root".into(),
        "/etc/shadow".into(),
        host_tmp_file.clone(),
    ];
    for (site, kind, user) in [("a", "php", &a), ("py", "wsgi", &py)] {
        for path in &hidden {
            let seen = probe(&server, site, kind, "exists", path).await;
            assert_eq!(seen, "no", "{site} ({kind}) sees {}", path.display());
        }
        for path in ["/usr/bin", "/dev/null", "/etc/passwd"] {
            let seen = probe(&server, site, kind, "exists", Path::new(path)).await;
            assert_eq!(seen, "yes", "{site} ({kind}) lacks {path}");
        }
        let own = cfg.path().join(format!("www/{site}/uploads/own.txt"));
        assert_eq!(probe(&server, site, kind, "write", &own).await, "wrote");
        assert!(own.exists(), "{site}'s write did not reach its root");
        let listed = probe(&server, site, kind, "read", &shared.join("hello.txt")).await;
        assert_eq!(listed, "shared text", "{site} ({kind})");
        let refused = probe(&server, site, kind, "write", &shared.join(site)).await;
        assert!(
            refused.contains("Read-only file system"),
            "{site} ({kind}) wrote into a read-only path: {refused}"
        );
        let passwd = probe(&server, site, kind, "read", Path::new("/etc/passwd")).await;
        assert!(
            passwd.contains(&user.name) && !passwd.contains(&b.name),
            "{site} ({kind})'s /etc/passwd: {passwd}"
        );
    }
    // A socket in a read-only path still takes connections (a database's).
    let db = UnixListener::bind(shared.join("db.sock")).unwrap();
    std::fs::set_permissions(
        shared.join("db.sock"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let greeter = std::thread::spawn(move || {
        use std::io::Write;
        let (mut conn, _) = db.accept().unwrap();
        conn.write_all(b"db hello\n").unwrap();
    });
    let greeting = probe(&server, "a", "php", "unix", &shared.join("db.sock")).await;
    assert_eq!(greeting, "db hello\n", "a socket in a listed path");
    greeter.join().unwrap();
    // Without the view, the same shell reaches what the view hides.
    let open = probe(&server, "b", "php", "exists", &cfg.path().join("www/a")).await;
    assert_eq!(open, "yes", "without a view, B sees A's root");
    server.terminate().await;
    let _ = std::fs::remove_file(&host_tmp_file);
}

#[tokio::test]
async fn php_wsgi_and_asgi_sites_serve_in_their_views() {
    if !polyhost::isolation::running_as_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let cfg = TestConfig::outside_tmp();
    let (php, wsgi, asgi) = (TestUser::new(), TestUser::new(), TestUser::new());
    cfg.write("www/php/index.php", "<?php echo 'php ', PHP_VERSION;");
    view_site(&cfg, "php", &php, "php", Some(""));
    view_site(&cfg, "wsgi", &wsgi, "wsgi", Some(""));
    view_site(&cfg, "asgi", &asgi, "asgi", Some(""));
    open_up(cfg.path());
    let server = Binary::start(&cfg.main(), &[]).await;
    let r = get(server.addr, "php.test", "/").await;
    assert!(
        r.status == 200 && r.text().starts_with("php "),
        "{}: {}\n{}",
        r.status,
        r.text(),
        server.log()
    );
    for site in ["wsgi", "asgi"] {
        let r = get(server.addr, &format!("{site}.test"), "/").await;
        assert_eq!(
            (r.status, r.text()),
            (200, "ok".into()),
            "{site}\n{}",
            server.log()
        );
        let r = get(server.addr, &format!("{site}.test"), "/static.txt").await;
        assert_eq!(r.status, 200, "{site}'s static file");
    }
    server.terminate().await;
}

#[test]
fn view_paths_are_checked_with_their_file_and_key() {
    let cfg = TestConfig::new();
    cfg.write("www/x/index.php", "x");
    let site = |paths: &str| {
        cfg.write(
            "vhosts/x.toml",
            &format!("hosts = [\"x.test\"]\nroot = \"www/x\"\n[sandbox]\npaths = {paths}\n[php]\n"),
        )
    };
    for (paths, want) in [
        ("[\"srv/shared\"]", "absolute path"),
        ("[\"/srv/../etc\"]", "absolute path"),
        ("[\"/\"]", "whole host"),
        ("[\"/usr\", \"/usr\"]", "listed twice"),
    ] {
        site(paths);
        let err = polyhost::config::load(&cfg.main()).unwrap_err().to_string();
        assert!(
            err.contains("x.toml") && err.contains("sandbox.paths[") && err.contains(want),
            "{paths}: {err}"
        );
    }
    let missing = cfg.path().join("no-such-dir");
    site(&format!("[{:?}]", missing.display().to_string()));
    let err = polyhost::check::check(&cfg.main()).unwrap_err().to_string();
    assert!(
        err.contains("x.toml") && err.contains("sandbox.paths[0]") && err.contains("no-such-dir"),
        "{err}"
    );
    site("[\"/usr/share\"]");
    let config = polyhost::config::load(&cfg.main()).unwrap();
    let view = config.sites.values().next().unwrap().sandbox.view.clone();
    assert_eq!(view, Some(vec!["/usr/share".into()]));
}

#[tokio::test]
async fn status_shows_whether_a_site_is_sandboxed_and_with_which_layers() {
    if !polyhost::isolation::running_as_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let cfg = TestConfig::outside_tmp();
    let (full, plain, off) = (TestUser::new(), TestUser::new(), TestUser::new());
    php_site(
        &cfg,
        "full",
        &full,
        "[sandbox]\nnetwork = \"none\"\npaths = []",
    );
    php_site(&cfg, "plain", &plain, "");
    php_site(&cfg, "off", &off, "sandbox = false");
    cfg.static_site("www", &["www.test"], "");
    open_up(cfg.path());
    let server = common::InProcess::start(&cfg).await;
    let layers = |s: polyhost::app::status::SiteStatus| {
        s.sandbox
            .map(|b| (b.on, b.layers.join(","), b.off_because.unwrap_or_default()))
    };
    assert_eq!(
        layers(server.site("full").await),
        Some((true, "namespaces,network,view".into(), String::new()))
    );
    assert_eq!(
        layers(server.site("plain").await),
        Some((true, "namespaces".into(), String::new()))
    );
    assert_eq!(
        layers(server.site("off").await),
        Some((false, String::new(), "sandbox = false".into()))
    );
    assert_eq!(layers(server.site("www").await), None, "a static site");
    server.stop().await;
}

#[tokio::test]
async fn a_site_that_swaps_its_python_path_for_a_link_to_another_site_does_not_start() {
    if !polyhost::isolation::running_as_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let cfg = TestConfig::outside_tmp();
    let (py, b) = (TestUser::new(), TestUser::new());
    view_site(&cfg, "b", &b, "php", None);
    cfg.write(
        "www/b/secret.py",
        "def application(e, s):\n    s('200 OK', [])\n    return [b'B secret']\n",
    );
    cfg.write("www/py/index.html", "py");
    let vhost = format!(
        "hosts = [\"py.test\"]\nroot = \"www/py\"\nuser = \"{}\"\n[sandbox]\npaths = []\n[python]\napp = \"secret:application\"\npath = [\"www/py/lib\"]\nworker = \"{}\"\n",
        py.name,
        python_worker_outside_tmp().display()
    );
    cfg.write("vhosts/py.toml", &vhost);
    // The site owns its root: it replaced its `lib` with a link to B's root.
    std::os::unix::fs::chown(cfg.path().join("www/py"), Some(py.uid), None).unwrap();
    std::os::unix::fs::symlink("../b", cfg.path().join("www/py/lib")).unwrap();
    open_up(cfg.path());
    let server = Binary::start(&cfg.main(), &[]).await;
    let r = get(server.addr, "py.test", "/app").await;
    assert_ne!(r.text(), "B secret", "B's root was bound into the view");
    assert_eq!(r.status, 503, "{}\n{}", r.text(), server.log());
    assert!(
        server.log().contains("could have planted"),
        "the refusal names the link: {}",
        server.log()
    );
    server.terminate().await;
}
