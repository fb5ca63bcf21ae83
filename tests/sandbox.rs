//! The per-site sandbox (issue 21), attacked from site code as a tenant
//! would: a PHP shell in site A looks at `/tmp`, `/dev/shm`, `/proc` and the
//! network, against the real binary. Root only (namespaces and mounts); CI
//! runs as root.

mod common;

use std::path::Path;

use common::{get, open_up, pids_of_uid, Binary, TestConfig, TestUser};

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
