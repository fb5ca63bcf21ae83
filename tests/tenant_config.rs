//! What a site can reach through polyhost's configuration, attacked as the
//! site would (from its code, or `runuser` as its user) against the real
//! binary: two sites that run code never share a uid or a group (check, as
//! any user, serve and reload refuse it); a site cannot steer the
//! operator's terminal through `polyhost status`; a token in a file site
//! code can read is refused; the metrics listener asks for its token. Logs:
//! tests/site_logs.rs.

mod admin_support;
mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use admin_support::{cli, TestGroup};
use common::{eventually, field, get, python_test_site, runuser, Binary, TestConfig, TestUser};
use expect_test::{expect, Expect};

/// Runs the real binary to completion (bounded): exit code, stdout, stderr.
fn polyhost(args: &[&str]) -> (i32, String, String) {
    let _pause = polyhost::isolation::pause_reaper();
    let mut child = Command::new(env!("CARGO_BIN_EXE_polyhost"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "polyhost {args:?} did not exit within 30 s; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn group_gid(name: &str) -> u32 {
    nix::unistd::Group::from_name(name)
        .unwrap()
        .unwrap()
        .gid
        .as_raw()
}

/// `text` with the given (value, placeholder) pairs replaced, longest value first.
fn scrub(text: &str, pairs: &[(String, &str)]) -> String {
    let mut pairs: Vec<&(String, &str)> = pairs.iter().collect();
    pairs.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
    pairs
        .iter()
        .fold(text.to_owned(), |t, (v, p)| t.replace(v.as_str(), p))
}

fn append(cfg: &TestConfig, rel: &str, extra: &str) {
    let text = std::fs::read_to_string(cfg.path().join(rel)).unwrap();
    cfg.write(rel, &format!("{text}{extra}"));
}

// ---- two sites that run code never share a uid or a group ----

#[test]
fn check_and_serve_refuse_two_sites_that_run_code_as_one_user_or_group() {
    let cfg = TestConfig::new();
    let (shared, u2, u3) = (TestUser::new(), TestUser::new(), TestUser::new());
    let group = TestGroup::new();
    cfg.write("www/x/index.html", "x");
    let python = "[python]\napp = \"x\"\nworker = \"/bin/true\"\n";
    // One user for two Python sites (and a static one, which runs no code).
    for name in ["py-a", "py-b"] {
        cfg.write(
            &format!("vhosts/{name}.toml"),
            &format!(
                "hosts = [\"{name}.test\"]\nroot = \"www/x\"\nuser = \"{}\"\n{python}",
                shared.name
            ),
        );
    }
    cfg.write(
        "vhosts/www.toml",
        &format!(
            "hosts = [\"www.test\"]\nroot = \"www/x\"\nuser = \"{}\"\n",
            shared.name
        ),
    );
    // Two users in one group: a PHP site and a Python site.
    cfg.write(
        "vhosts/php-c.toml",
        &format!(
            "hosts = [\"c.test\"]\nroot = \"www/x\"\nuser = \"{}\"\ngroup = \"{}\"\n[php]\n",
            u2.name, group.name
        ),
    );
    cfg.write(
        "vhosts/py-d.toml",
        &format!(
            "hosts = [\"d.test\"]\nroot = \"www/x\"\nuser = \"{}\"\ngroup = \"{}\"\n{python}",
            u3.name, group.name
        ),
    );
    let scrubbed = |text: &str| {
        scrub(
            text,
            &[
                (cfg.path().display().to_string(), "$DIR"),
                (shared.name.clone(), "$SHARED"),
                (group.name.clone(), "$GROUP"),
                (format!("uid {}", shared.uid), "uid $UID"),
                (format!("gid {}", shared.gid()), "gid $SHARED_GID"),
                (format!("gid {}", group_gid(&group.name)), "gid $GID"),
            ],
        )
    };
    let main = cfg.main().display().to_string();
    let (code, _, stderr) = polyhost(&["check", "--config", &main]);
    assert_eq!(code, 1, "{stderr}");
    expect![[r#"
        $DIR/vhosts/py-b.toml: user: site py-b would run as user `$SHARED` (uid $UID), as site py-a does ($DIR/vhosts/py-a.toml): each could run code as the other and read its files; give every site that runs PHP or Python a user of its own
        $DIR/vhosts/py-b.toml: group: site py-b would run with group `$SHARED` (gid $SHARED_GID, the primary group of user $SHARED), as site py-a does ($DIR/vhosts/py-a.toml): each could reach the other's sockets and group-readable files; give every site that runs PHP or Python a group of its own (e.g. its user's own group)
        $DIR/vhosts/py-d.toml: group: site py-d would run with group `$GROUP` (gid $GID, its `group`), as site php-c does ($DIR/vhosts/php-c.toml): each could reach the other's sockets and group-readable files; give every site that runs PHP or Python a group of its own (e.g. its user's own group)
        polyhost check: 3 error(s) in $DIR/polyhost.toml
    "#]]
    .assert_eq(&scrubbed(&stderr));

    // serve refuses the same set before any site starts.
    let (code, _, stderr) = polyhost(&["serve", "--config", &main]);
    assert_eq!(code, 1, "{stderr}");
    for line in [
        "vhosts/py-b.toml: user: site py-b would run as user",
        "vhosts/py-d.toml: group: site py-d would run with group",
    ] {
        assert!(stderr.contains(line), "{stderr}");
    }
    assert!(common::pids_of_uid(shared.uid).is_empty());

    // Each with a user and group of its own: valid.
    let u4 = TestUser::new();
    cfg.write(
        "vhosts/py-b.toml",
        &format!(
            "hosts = [\"py-b.test\"]\nroot = \"www/x\"\nuser = \"{}\"\n{python}",
            u4.name
        ),
    );
    cfg.write(
        "vhosts/php-c.toml",
        &format!(
            "hosts = [\"c.test\"]\nroot = \"www/x\"\nuser = \"{}\"\n[php]\n",
            u2.name
        ),
    );
    let (code, stdout, stderr) = polyhost(&["check", "--config", &main]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

/// `polyhost check` run by an unprivileged user (a panel's) gives the answer
/// `serve` as root would: it resolves the configured users and applies the
/// rule, though it runs as neither.
#[test]
fn check_as_an_unprivileged_user_refuses_two_sites_sharing_a_user() {
    let cfg = TestConfig::new();
    let shared = TestUser::new();
    cfg.write("www/x/index.html", "x");
    for name in ["php-a", "php-b"] {
        cfg.write(
            &format!("vhosts/{name}.toml"),
            &format!(
                "hosts = [\"{name}.test\"]\nroot = \"www/x\"\nuser = \"{}\"\n[php]\n",
                shared.name
            ),
        );
    }
    common::open_up(cfg.path());
    let main = cfg.main().display().to_string();
    let check = |user: &str| {
        let _pause = polyhost::isolation::pause_reaper();
        let out = Command::new("runuser")
            .args(["-u", user, "--", env!("CARGO_BIN_EXE_polyhost")])
            .args(["check", "--config", &main])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = check("nobody");
    assert_eq!(code, 1, "{stderr}");
    let stderr = scrub(
        &stderr,
        &[
            (cfg.path().display().to_string(), "$DIR"),
            (shared.name.clone(), "$SHARED"),
            (format!("uid {}", shared.uid), "uid $UID"),
            (format!("gid {}", shared.gid()), "gid $GID"),
        ],
    );
    expect![[r#"
        $DIR/vhosts/php-b.toml: user: site php-b would run as user `$SHARED` (uid $UID), as site php-a does ($DIR/vhosts/php-a.toml): each could run code as the other and read its files; give every site that runs PHP or Python a user of its own
        $DIR/vhosts/php-b.toml: group: site php-b would run with group `$SHARED` (gid $GID, the primary group of user $SHARED), as site php-a does ($DIR/vhosts/php-a.toml): each could reach the other's sockets and group-readable files; give every site that runs PHP or Python a group of its own (e.g. its user's own group)
        polyhost check: 2 error(s) in $DIR/polyhost.toml
    "#]]
    .assert_eq(&stderr);

    // A user that does not exist is refused as well, not taken for the caller.
    cfg.write(
        "vhosts/php-b.toml",
        "hosts = [\"php-b.test\"]\nroot = \"www/x\"\nuser = \"polyhost-no-such-user\"\n[php]\n",
    );
    let (code, stderr) = check("nobody");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("vhosts/php-b.toml: user:") && stderr.contains("polyhost-no-such-user"),
        "{stderr}"
    );
    // Each site with a user of its own: valid, for nobody as for root.
    let other = TestUser::new();
    cfg.write(
        "vhosts/php-b.toml",
        &format!(
            "hosts = [\"php-b.test\"]\nroot = \"www/x\"\nuser = \"{}\"\n[php]\n",
            other.name
        ),
    );
    let (code, stderr) = check("nobody");
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test]
async fn a_reload_that_would_share_a_user_is_refused_and_the_running_sites_keep_serving() {
    let cfg = TestConfig::new();
    let (ua, ub) = (TestUser::new(), TestUser::new());
    python_test_site(&cfg, "py-a", &ua, "pyapp", "", "threads = 1");
    python_test_site(&cfg, "py-b", &ub, "pyapp", "", "threads = 1");
    let bin = Binary::start(&cfg.main(), &[]).await;
    let b = get(bin.addr, "py-b.test", "/").await;
    assert_eq!(field(&b.text(), "uid"), ub.uid.to_string(), "{}", bin.log());

    // py-b's panel entry now names py-a's user.
    python_test_site(&cfg, "py-b", &ua, "pyapp", "", "threads = 1");
    let socket = cfg.path().join("state/admin.sock");
    let out = cli(&socket, &["reload"], None).await;
    assert_eq!(out.code, 1, "{out:?}");
    expect![[r#"
        $DIR/vhosts/py-b.toml: user: site py-b would run as user `$A` (uid $UID), as site py-a does ($DIR/vhosts/py-a.toml): each could run code as the other and read its files; give every site that runs PHP or Python a user of its own
        $DIR/vhosts/py-b.toml: group: site py-b would run with group `$A` (gid $GID, the primary group of user $A), as site py-a does ($DIR/vhosts/py-a.toml): each could reach the other's sockets and group-readable files; give every site that runs PHP or Python a group of its own (e.g. its user's own group)
        polyhost reload: refused: the configuration is invalid; nothing changed and the running sites keep serving. Fix these and reload again
    "#]]
    .assert_eq(&scrub(
        &out.stderr,
        &[
            (cfg.path().display().to_string(), "$DIR"),
            (ua.name.clone(), "$A"),
            (format!("uid {}", ua.uid), "uid $UID"),
            (format!("gid {}", ua.gid()), "gid $GID"),
        ],
    ));
    // The old set serves on: py-b still runs as its own user.
    let b = get(bin.addr, "py-b.test", "/").await;
    assert_eq!(field(&b.text(), "uid"), ub.uid.to_string(), "{}", bin.log());
    let status = cli(&socket, &["status", "--json"], None).await;
    let status: polyhost::app::status::ServerStatus = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status.reloads_failed, 1);

    // A user of its own is fine; its logs follow it to the new group.
    let uc = TestUser::new();
    python_test_site(&cfg, "py-b", &uc, "pyapp", "", "threads = 1");
    let out = cli(&socket, &["reload"], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    let b = get(bin.addr, "py-b.test", "/").await;
    assert_eq!(field(&b.text(), "uid"), uc.uid.to_string(), "{}", bin.log());
    let log = std::fs::metadata(cfg.path().join("log/py-b.access.log")).unwrap();
    // Owned by the router process's user, who writes it (`privsep`).
    assert_eq!((log.uid(), log.gid()), (common::router_uid(), uc.gid()));
    assert!(bin.terminate().await.success());
}

#[test]
fn no_site_runs_code_as_a_user_of_the_hosts_own_daemons() {
    let cfg = TestConfig::new();
    cfg.write("www/x/index.php", "<?php echo 1;");
    for (name, user, php) in [
        ("web", "www-data", true),
        ("drop", "nobody", true),
        ("files", "www-data", false),
    ] {
        let php = if php { "[php]\n" } else { "" };
        cfg.write(
            &format!("vhosts/{name}.toml"),
            &format!("hosts = [\"{name}.test\"]\nroot = \"www/x\"\nuser = \"{user}\"\n{php}"),
        );
    }
    let main = cfg.main().display().to_string();
    let (code, _, stderr) = polyhost(&["check", "--config", &main]);
    assert_eq!(code, 1, "{stderr}");
    for want in [
        "vhosts/web.toml: user: user `www-data` (uid 33) belongs to the host's own daemons",
        "vhosts/drop.toml: user: user `nobody` (uid 65534) belongs to the host's own daemons",
    ] {
        assert!(stderr.contains(want), "{want:?} in:\n{stderr}");
    }
    assert!(
        !stderr.contains("files.toml"),
        "a static site runs no code: {stderr}"
    );
}

#[tokio::test]
async fn a_value_php_fpm_cannot_hold_is_refused_by_check_and_reload_naming_its_key() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    cfg.write("www/shop/index.php", "<?php echo 'shop ok';");
    let vhost = |extra: &str| {
        cfg.write(
            "vhosts/shop.toml",
            &format!(
                "hosts = [\"shop.test\"]\nroot = \"www/shop\"\nuser = \"{}\"\n{extra}[php]\n",
                user.name
            ),
        )
    };
    vhost("");
    common::open_up(cfg.path());
    let bin = Binary::start(&cfg.main(), &[]).await;
    assert_eq!(get(bin.addr, "shop.test", "/").await.text(), "shop ok");
    // A password with a quote: php-fpm's pool config has no way to hold it.
    vhost("[env]\nDB_PASSWORD = \"it's\"\n");
    let main = cfg.main().display().to_string();
    let (code, _, stderr) = polyhost(&["check", "--config", &main]);
    let want = "$DIR/vhosts/shop.toml: env.DB_PASSWORD: \"it's\": php-fpm's config cannot hold the character '\\'' in a value";
    assert_eq!(code, 1, "{stderr}");
    let dir = cfg.path().display().to_string();
    assert!(stderr.replace(&dir, "$DIR").contains(want), "{stderr}");
    let out = cli(&cfg.path().join("state/admin.sock"), &["reload"], None).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.replace(&dir, "$DIR").contains(want), "{out:?}");
    // Nothing changed: the site serves on.
    assert_eq!(get(bin.addr, "shop.test", "/").await.text(), "shop ok");
    assert!(bin.terminate().await.success());
}

// ---- the CLI and site-controlled text ----

#[tokio::test]
async fn a_site_cannot_write_to_the_operators_terminal_through_polyhost_status() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    // Site code appends escape sequences to its php-fpm master's log (which
    // polyhost quotes as the site's last error), then kills the master.
    cfg.write(
        "www/esc/esc.php",
        r#"<?php
$master = posix_getppid();
$line = "\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\xc2\x9b31mFAKE\rstate      running";
$sh = 'for f in /proc/' . $master . '/fd/*; do case "$(readlink "$f")" in *php-fpm.log) printf "%s\n" "$1" >> "$f";; esac; done; kill -9 ' . $master;
shell_exec('sh -c ' . escapeshellarg($sh) . ' sh ' . escapeshellarg($line));
echo "done";
"#,
    );
    cfg.write(
        "vhosts/esc.toml",
        &format!(
            "hosts = [\"esc.test\"]\nroot = \"www/esc\"\nuser = \"{}\"\n[php]\n",
            user.name
        ),
    );
    common::open_up(cfg.path());
    let bin = Binary::start(&cfg.main(), &[]).await;
    let socket = cfg.path().join("state/admin.sock");
    // The request dies with its master; its answer does not matter.
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        get(bin.addr, "esc.test", "/esc.php"),
    )
    .await;
    let quoted = eventually(Duration::from_secs(20), || async {
        let out = cli(&socket, &["status", "esc", "--json"], None).await;
        out.stdout.contains("FAKE")
    })
    .await;
    assert!(
        quoted,
        "the site's line never reached last_error; log:\n{}",
        bin.log()
    );

    let raw_control = |s: &str| s.chars().any(|c| c != '\n' && c.is_control());
    for args in [
        &["status", "esc"][..],
        &["status"],
        &["status", "esc", "--json"],
        &["status", "--json"],
    ] {
        let out = cli(&socket, args, None).await;
        assert_eq!(out.code, 0, "{out:?}");
        assert!(
            !raw_control(&out.stdout) && !raw_control(&out.stderr),
            "polyhost {args:?} printed raw control characters: {:?}",
            out.stdout
        );
    }
    let detail = cli(&socket, &["status", "esc"], None).await.stdout;
    assert!(
        detail.contains(r"\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\u{9b}31mFAKE\x0dstate      running"),
        "{detail}"
    );
    assert!(bin.terminate().await.success());
}

// ---- tokens ----

fn check_errors(cfg: &TestConfig, names: &[(String, &str)], want: Expect) {
    let main = cfg.main().display().to_string();
    let (code, stdout, stderr) = polyhost(&["check", "--config", &main]);
    assert_eq!(code, 1, "{stdout}");
    let mut pairs = vec![(cfg.path().display().to_string(), "$DIR")];
    pairs.extend(names.iter().cloned());
    want.assert_eq(&scrub(&stderr, &pairs));
}

fn check_passes(cfg: &TestConfig) {
    let main = cfg.main().display().to_string();
    let (code, stdout, stderr) = polyhost(&["check", "--config", &main]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_token_in_a_file_a_site_can_read_is_refused() {
    let cfg = TestConfig::new();
    let site_user = TestUser::new();
    append(
        &cfg,
        "polyhost.toml",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret-admin-token\"\n",
    );
    cfg.static_site("www", &["www.test"], "");
    common::open_up(cfg.path());
    let main = cfg.main();
    chmod(&main, 0o644);

    // The attack: a site's user reads the token.
    let (ok, out) = runuser(&site_user.name, &["cat", &main.display().to_string()]);
    assert!(ok && out.contains("s3cret-admin-token"), "{out}");
    // polyhost refuses it: check, and serve.
    check_errors(
        &cfg,
        &[],
        expect![[r#"
            $DIR/polyhost.toml: admin.token: the token is in a file that every user can read or write (mode 0644): site code could read it; make the file private (chmod 600, owner root; or 640 with group root or the [admin] group), or move the token to admin.token_file or to the environment (POLYHOST_ADMIN__TOKEN)
            polyhost check: 1 error(s) in $DIR/polyhost.toml
        "#]],
    );
    let (code, _, stderr) = polyhost(&["serve", "--config", &main.display().to_string()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "polyhost.toml: admin.token: the token is in a file that every user can read"
        ),
        "{stderr}"
    );

    // Private (group root may read): the site user cannot read it, polyhost accepts it.
    chmod(&main, 0o640);
    let (ok, out) = runuser(&site_user.name, &["cat", &main.display().to_string()]);
    assert!(!ok && !out.contains("s3cret"), "{out}");
    check_passes(&cfg);

    // In a fragment that a site's group can read.
    let text = std::fs::read_to_string(&main).unwrap();
    cfg.write(
        "polyhost.toml",
        &text.replace("token = \"s3cret-admin-token\"\n", ""),
    );
    chmod(&main, 0o600);
    let fragment = cfg.write(
        "conf.d/20-admin.toml",
        "[admin]\ntoken = \"s3cret-admin-token\"\n",
    );
    std::os::unix::fs::chown(&fragment, Some(0), Some(site_user.gid())).unwrap();
    chmod(&fragment, 0o640);
    let (ok, out) = runuser(&site_user.name, &["cat", &fragment.display().to_string()]);
    assert!(ok && out.contains("s3cret-admin-token"), "{out}");
    check_errors(
        &cfg,
        &[(site_user.name.clone(), "$SITE")],
        expect![[r#"
            $DIR/conf.d/20-admin.toml: admin.token: the token is in a file that group `$SITE` can read or write (mode 0640): site code could read it; make the file private (chmod 600, owner root; or 640 with group root or the [admin] group), or move the token to admin.token_file or to the environment (POLYHOST_ADMIN__TOKEN)
            polyhost check: 1 error(s) in $DIR/polyhost.toml
        "#]],
    );
    std::fs::remove_file(&fragment).unwrap();

    // admin.token_file: the same rule for the file it names.
    append(
        &cfg,
        "polyhost.toml",
        "token_file = \"secrets/admin.token\"\n",
    );
    chmod(&main, 0o600);
    let token = cfg.write("secrets/admin.token", "s3cret-from-file\n");
    chmod(&token, 0o644);
    check_errors(
        &cfg,
        &[],
        expect![[r#"
            $DIR/polyhost.toml: admin.token_file: $DIR/secrets/admin.token every user can read or write (mode 0644): site code could read the token; make it private (chmod 600, owner root; or 640 with group root or the [admin] group)
            polyhost check: 1 error(s) in $DIR/polyhost.toml
        "#]],
    );
    chmod(&token, 0o600);
    check_passes(&cfg);
}

#[tokio::test]
async fn the_metrics_listener_refuses_a_scrape_without_its_token() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    python_test_site(&cfg, "py", &user, "pyapp", "", "threads = 1");
    append(
        &cfg,
        "polyhost.toml",
        "[metrics]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"metrics.token\"\n",
    );
    let token = cfg.write("metrics.token", "scrape-s3cret\n");
    chmod(&token, 0o600);
    let bin = Binary::start(&cfg.main(), &[]).await;
    let found = eventually(Duration::from_secs(10), || async {
        bin.log()
            .contains("metrics listening (bearer token required)")
    })
    .await;
    assert!(found, "{}", bin.log());
    let log = bin.log();
    let addr: std::net::SocketAddr = log
        .lines()
        .find(|l| l.contains("metrics listening"))
        .and_then(|l| l.split("addr=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"));

    // From the site's code: its neighbours' request counts are not its to read.
    let probe = format!("import urllib.request\ntry:\n  urllib.request.urlopen('http://{addr}/metrics').read()\n  print('read')\nexcept Exception as e:\n  print(e)\n");
    let (_, out) = runuser(&user.name, &["python3", "-c", &probe]);
    assert!(out.contains("HTTP Error 401"), "{out}");

    for auth in [None, Some("Bearer wrong"), Some("Bearer scrape-s3cret")] {
        let mut req = common::request("GET", "x", "/metrics");
        if let Some(a) = auth {
            req.headers_mut()
                .insert("authorization", a.parse().unwrap());
        }
        let r = common::Client::connect(addr).await.send(req).await;
        match auth {
            Some("Bearer scrape-s3cret") => {
                assert_eq!(r.status, 200, "{}", r.text());
                assert!(r.text().contains("polyhost_requests_total"), "{}", r.text());
            }
            _ => {
                assert_eq!(r.status, 401, "{auth:?}: {}", r.text());
                assert!(r.text().contains("[metrics] token"), "{}", r.text());
            }
        }
    }
    assert!(bin.terminate().await.success());
}
