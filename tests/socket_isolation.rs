//! Runtime sockets, generated configs and temporary files, attacked from
//! inside a site against the real binary (as root, with real php-fpm,
//! CPython and users): a site's code cannot connect to any runtime socket,
//! not even its own (a connection to its own php-fpm pool would let it send
//! `PHP_ADMIN_VALUE` and lift its `open_basedir`); a site that shares a
//! group with another reaches neither that site's socket nor its generated
//! php-fpm config (with its `[env]` secrets); its temporary files are in its
//! private directory, not the shared `/tmp`. See `src/supervisor/sockets.rs`
//! and "Files and permissions" in `src/runtime/php/pool_config.rs`.

mod common;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{field, get, open_up, pids_of_uid, Binary, TestConfig, TestUser};

/// PHP that speaks FastCGI to `?socket=` and asks it to run `?script=` with
/// `PHP_ADMIN_VALUE` lifting `open_basedir`: what a site's code would do to
/// escape its limits. Prints `refused: <why>` or `connected: <raw answer>`.
const FCGI_PHP: &str = r#"<?php
function rec($type, $content) {
    return pack('CCnnCC', 1, $type, 1, strlen($content), 0, 0) . $content;
}
function nv($k, $v) {
    $l = function ($n) { return $n < 128 ? chr($n) : pack('N', $n | 0x80000000); };
    return $l(strlen($k)) . $l(strlen($v)) . $k . $v;
}
$s = @stream_socket_client('unix://' . $_GET['socket'], $errno, $errstr, 2);
if (!$s) { echo "refused: $errstr"; exit; }
$params = nv('SCRIPT_FILENAME', $_GET['script'] ?? '/nonexistent.php')
    . nv('REQUEST_METHOD', 'GET')
    . nv('PHP_ADMIN_VALUE', "open_basedir=/\nmemory_limit=1G");
fwrite($s, rec(1, pack('nCx5', 1, 0)) . rec(4, $params) . rec(4, '') . rec(5, ''));
stream_set_timeout($s, 5);
$out = '';
while (!feof($s)) {
    $chunk = fread($s, 65536);
    if ($chunk === false || ($chunk === '' && stream_get_meta_data($s)['timed_out'])) { break; }
    $out .= $chunk;
}
echo "connected: " . $out;
"#;

/// Tries every descriptor of the PHP child as a Unix socket path
/// (`/proc/self/fd/N` names the socket's own inode, which nothing is bound to).
const FDPROBE_PHP: &str = r#"<?php
$hits = [];
for ($i = 0; $i < 64; $i++) {
    $s = @stream_socket_client("unix:///proc/self/fd/$i", $errno, $errstr, 1);
    if ($s) { $hits[] = $i; fclose($s); }
}
echo 'connected=' . (count($hits) ? implode(',', $hits) : 'none');
"#;

/// Where PHP puts temporary files.
const TEMP_PHP: &str = r#"<?php
$t = tmpfile();
$n = @tempnam('', 'x');
echo 'sys=' . sys_get_temp_dir() . ' tmpfile=' . dirname(stream_get_meta_data($t)['uri'])
    . ' tempnam=' . ($n === false ? 'failed' : dirname($n)) . ' upload=' . ini_get('upload_tmp_dir');
if ($n !== false) { unlink($n); }
"#;

/// A PHP site `name` running as `user` (and `group`, when given), `extra`
/// after its `[php]` table, with the attack scripts above, `passwd.php`
/// (reads /etc/passwd), `leak.php` (prints its `DB_PASSWORD`), `ini.php`
/// (its limits) and `reload.php` (SIGUSR2 to its own master).
fn php_site(cfg: &TestConfig, name: &str, user: &TestUser, group: Option<&str>, extra: &str) {
    for (file, text) in [
        ("fcgi.php", FCGI_PHP),
        ("fdprobe.php", FDPROBE_PHP),
        ("temp.php", TEMP_PHP),
        (
            "passwd.php",
            "<?php $d = @file_get_contents('/etc/passwd'); echo $d === false ? 'denied' : $d;",
        ),
        ("leak.php", "<?php echo 'secret=' . getenv('DB_PASSWORD');"),
        (
            "ini.php",
            "<?php echo 'memory_limit=' . ini_get('memory_limit') . ' open_basedir=' . ini_get('open_basedir');",
        ),
        (
            "reload.php",
            "<?php echo posix_kill(posix_getppid(), 12 /* SIGUSR2 */) ? 'sent' : 'failed';",
        ),
    ] {
        cfg.write(&format!("www/{name}/{file}"), text);
    }
    let group = group
        .map(|g| format!("group = \"{g}\"\n"))
        .unwrap_or_default();
    cfg.write(
        &format!("vhosts/{name}.toml"),
        &format!(
            "hosts = [\"{name}.test\"]\nroot = \"www/{name}\"\nuser = \"{}\"\n{group}[php]\nmax_children = 2\n{extra}\n",
            user.name
        ),
    );
    open_up(cfg.path());
}

/// Every socket file under the state directory, as root sees it.
fn sockets_under(state: &Path) -> Vec<PathBuf> {
    files_under(state)
        .into_iter()
        .filter(|p| {
            std::fs::symlink_metadata(p)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        })
        .collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_under(&p)),
            Ok(_) => out.push(p),
            Err(_) => {}
        }
    }
    out
}

/// The one socket of `site`'s runtime, waiting (bounded) for it to exist.
async fn socket_of(state: &Path, site: &str) -> PathBuf {
    let mut found = Vec::new();
    let seen = common::eventually(Duration::from_secs(10), || {
        found = sockets_under(state)
            .into_iter()
            .filter(|p| p.components().any(|c| c.as_os_str() == site))
            .collect();
        std::future::ready(found.len() == 1)
    })
    .await;
    assert!(
        seen,
        "one socket for {site} under {}: {found:?}",
        state.display()
    );
    found.remove(0)
}

/// The pid of `site`'s php-fpm master, from its pid file.
fn master_pid(state: &Path, site: &str) -> i32 {
    let pid_file = files_under(&state.join("sites").join(site))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "pid"))
        .expect("the master's pid file");
    std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Runs `cmd` with exactly a site process's credentials: `uid`, primary
/// group `gid` and no other group.
fn as_site(uid: u32, gid: u32, cmd: &[&str]) -> std::process::Output {
    std::process::Command::new("timeout")
        .args(["10", "setpriv"])
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg(format!("--groups={gid}"))
        .arg("--")
        .args(cmd)
        .output()
        .expect("setpriv")
}

/// A Python connect from the shell of `user` (its own groups, as `runuser` gives them).
fn runuser_connect(user: &str, socket: &Path) -> std::process::Output {
    std::process::Command::new("runuser")
        .args(["-u", user, "--", "python3", "-c"])
        .arg("import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])")
        .arg(socket)
        .output()
        .expect("runuser")
}

/// A socket every site can reach, accepting and closing connections: shows
/// that the probes connect where nothing stops them.
fn reachable_socket(cfg: &TestConfig) -> (PathBuf, std::thread::JoinHandle<()>) {
    use std::os::unix::fs::PermissionsExt;
    let path = cfg.path().join("reachable.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let accept = std::thread::spawn(move || {
        // Two probes (PHP and runuser); the thread ends with the test.
        for _ in 0..2 {
            match listener.accept() {
                Ok((conn, _)) => drop(conn),
                Err(_) => return,
            }
        }
    });
    (path, accept)
}

/// A Unix group created for a test, deleted on drop.
struct TestGroup {
    name: String,
    gid: u32,
}

impl TestGroup {
    fn new() -> TestGroup {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "polyhost-g{}-{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let add = || {
            std::process::Command::new("groupadd")
                .args(["--system", &name])
                .output()
                .unwrap()
        };
        let mut out = add();
        // Exit 9: left by an earlier test process with our (reused) pid.
        if out.status.code() == Some(9) {
            let _ = std::process::Command::new("groupdel").arg(&name).output();
            out = add();
        }
        assert!(out.status.success(), "groupadd: {out:?}");
        let gid = nix::unistd::Group::from_name(&name)
            .unwrap()
            .unwrap()
            .gid
            .as_raw();
        TestGroup { name, gid }
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("groupdel")
            .arg(&self.name)
            .output();
    }
}

#[tokio::test]
async fn php_code_cannot_connect_to_its_own_pool_to_lift_its_limits() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    php_site(&cfg, "blog", &user, None, "");
    let (reachable, _accept) = reachable_socket(&cfg);
    let bin = Binary::start(&cfg.main(), &[]).await;
    let state = cfg.path().join("state");
    let root = std::fs::canonicalize(cfg.path().join("www/blog")).unwrap();

    // The limit holds for a normal request...
    let normal = get(bin.addr, "blog.test", "/passwd.php").await;
    assert_eq!(
        (normal.status, normal.text().as_str()),
        (200, "denied"),
        "{}",
        bin.log()
    );
    let sock = socket_of(&state, "blog").await;
    // ... and the script cannot reach its own pool to send PHP_ADMIN_VALUE.
    let attack = get(
        bin.addr,
        "blog.test",
        &format!(
            "/fcgi.php?socket={}&script={}/passwd.php",
            sock.display(),
            root.display()
        ),
    )
    .await
    .text();
    assert!(
        attack.starts_with("refused: ") && attack.contains("Permission denied"),
        "site code reached its own pool at {}: {attack}",
        sock.display()
    );
    assert!(!attack.contains("root:x:0:0"), "{attack}");
    // Not through its own descriptors either.
    let fds = get(bin.addr, "blog.test", "/fdprobe.php").await.text();
    assert_eq!(fds, "connected=none");
    // The probe itself connects where nothing stops it.
    let control = get(
        bin.addr,
        "blog.test",
        &format!("/fcgi.php?socket={}", reachable.display()),
    )
    .await
    .text();
    assert!(control.starts_with("connected: "), "{control}");

    // The site user's own shell: neither the socket nor its directory.
    let connect = runuser_connect(&user.name, &sock);
    assert!(
        !connect.status.success()
            && String::from_utf8_lossy(&connect.stderr).contains("PermissionError"),
        "runuser -u {} connected to {}: {connect:?}",
        user.name,
        sock.display()
    );
    let dir = sock.parent().unwrap();
    let ls = std::process::Command::new("runuser")
        .args(["-u", &user.name, "--", "ls"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        !ls.status.success(),
        "runuser -u {} listed {}: {ls:?}",
        user.name,
        dir.display()
    );
    let control = runuser_connect(&user.name, &reachable);
    assert!(control.status.success(), "{control:?}");

    // PHP's temporary files are in the site's private directory.
    let tmp = std::fs::canonicalize(state.join("sites/blog/tmp")).unwrap();
    let temp = get(bin.addr, "blog.test", "/temp.php").await.text();
    for key in ["sys", "tmpfile", "tempnam", "upload"] {
        let dir = field(&temp, key);
        assert_eq!(
            std::fs::canonicalize(dir).ok().as_deref(),
            Some(tmp.as_path()),
            "{key} in {temp}"
        );
    }

    assert!(bin.terminate().await.success());
    common::check_hygiene(&state);
}

#[tokio::test]
async fn wsgi_code_cannot_connect_to_its_own_worker_and_gets_a_private_tmpdir() {
    use std::os::unix::fs::MetadataExt;
    let cfg = TestConfig::new();
    let user = TestUser::new();
    common::python_test_site(&cfg, "app", &user, "pyapp:isolation_app", "", "");
    let (reachable, _accept) = reachable_socket(&cfg);
    let bin = Binary::start(&cfg.main(), &[]).await;
    let state = cfg.path().join("state");

    let ids = get(bin.addr, "app.test", "/ids").await;
    assert_eq!(ids.status, 200, "{}", bin.log());
    let sock = socket_of(&state, "app").await;
    let own = get(
        bin.addr,
        "app.test",
        &format!("/connect?path={}", sock.display()),
    )
    .await
    .text();
    assert_eq!(own, "refused: PermissionError", "{}", sock.display());
    let control = get(
        bin.addr,
        "app.test",
        &format!("/connect?path={}", reachable.display()),
    )
    .await
    .text();
    assert_eq!(control, "connected");
    let shell = runuser_connect(&user.name, &sock);
    assert!(!shell.status.success(), "{shell:?}");

    // tempfile's directory is the site's own, not the shared /tmp.
    let tmp = std::fs::canonicalize(state.join("sites/app/tmp")).unwrap();
    let meta = std::fs::metadata(&tmp).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (user.uid, 0o700),
        "{}",
        tmp.display()
    );
    let answer = get(bin.addr, "app.test", "/tmpdir").await.text();
    assert_eq!(
        std::fs::canonicalize(field(&answer, "gettempdir"))
            .ok()
            .as_deref(),
        Some(tmp.as_path()),
        "{answer}"
    );
    assert_eq!(
        std::fs::canonicalize(Path::new(field(&answer, "file")).parent().unwrap())
            .ok()
            .as_deref(),
        Some(tmp.as_path()),
        "{answer}"
    );

    assert!(bin.terminate().await.success());
    common::check_hygiene(&state);
}

#[tokio::test]
async fn sites_sharing_a_group_reach_neither_each_others_pool_nor_config() {
    // polyhost refuses two sites that run code with one group
    // (tests/tenant_config.rs); this is the layer beneath that rule: site C's
    // code cannot reach D's pool, and a process of C's user holding D's group
    // (what a shared group would give C) reads nothing of D's.
    const SECRET: &str = "d-database-password-5f1c";
    let cfg = TestConfig::new();
    let shared = TestGroup::new();
    let (uc, ud) = (TestUser::new(), TestUser::new());
    php_site(&cfg, "site-c", &uc, None, "");
    php_site(
        &cfg,
        "site-d",
        &ud,
        Some(&shared.name),
        &format!("[env]\nDB_PASSWORD = \"{SECRET}\""),
    );
    let bin = Binary::start(&cfg.main(), &[]).await;
    let state = cfg.path().join("state");
    let d_root = std::fs::canonicalize(cfg.path().join("www/site-d")).unwrap();

    // Both pools run; D, with the group C's processes will borrow, has its secret.
    for site in ["site-c", "site-d"] {
        let r = get(bin.addr, &format!("{site}.test"), "/leak.php").await;
        assert_eq!(r.status, 200, "{site}: {}\n{}", r.text(), bin.log());
    }
    assert_eq!(
        get(bin.addr, "site-d.test", "/leak.php").await.text(),
        format!("secret={SECRET}")
    );
    let d_sock = socket_of(&state, "site-d").await;
    let _ = socket_of(&state, "site-c").await;

    // C's code cannot run code as D through D's pool, nor through any socket.
    for sock in sockets_under(&state) {
        let attack = get(
            bin.addr,
            "site-c.test",
            &format!(
                "/fcgi.php?socket={}&script={}/leak.php",
                sock.display(),
                d_root.display()
            ),
        )
        .await
        .text();
        assert!(
            attack.starts_with("refused: ") && !attack.contains(SECRET),
            "site-c reached {} (site-d's is {}): {attack}",
            sock.display(),
            d_sock.display()
        );
    }

    // C's user with D's group (uid C, group shared) reads nothing of D's: no file of the
    // state directory, no descriptor or environment of D's processes.
    let mut candidates = files_under(&state);
    for pid in pids_of_uid(ud.uid) {
        candidates.push(PathBuf::from(format!("/proc/{pid}/environ")));
        candidates.extend(files_under(Path::new(&format!("/proc/{pid}/fd"))));
    }
    assert!(
        candidates.iter().any(|p| p.starts_with("/proc")),
        "site-d has processes"
    );
    for path in &candidates {
        let path = path.to_string_lossy();
        let read = as_site(uc.uid, shared.gid, &["head", "-c", "1000000", &path]);
        assert!(
            !String::from_utf8_lossy(&read.stdout).contains(SECRET),
            "site-c read site-d's secret from {path}"
        );
    }
    // The check sees a secret where one is readable: D reads its own config
    // (the memfd its processes inherited).
    let configs: Vec<&PathBuf> = candidates
        .iter()
        .filter(|p| std::fs::read_link(p).is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:")))
        .collect();
    let own = configs.iter().any(|p| {
        let out = as_site(
            ud.uid,
            shared.gid,
            &["head", "-c", "1000000", &p.to_string_lossy()],
        );
        String::from_utf8_lossy(&out.stdout).contains(SECRET)
    });
    assert!(own, "site-d reads its own config: {configs:?}");

    assert!(bin.terminate().await.success());
    common::check_hygiene(&state);
}

#[tokio::test]
async fn the_sealed_config_cannot_be_changed_and_a_reload_from_site_code_rereads_it() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    php_site(
        &cfg,
        "blog",
        &user,
        None,
        "[php.ini]\nmemory_limit = \"48M\"",
    );
    let bin = Binary::start(&cfg.main(), &[]).await;
    let state = cfg.path().join("state");
    let before = get(bin.addr, "blog.test", "/ini.php").await;
    assert_eq!(before.status, 200, "{}\n{}", before.text(), bin.log());
    assert!(
        before.text().starts_with("memory_limit=48M open_basedir=/"),
        "{}",
        before.text()
    );
    let master = master_pid(&state, "blog");

    // The site user finds its config among its master's descriptors, and can
    // read it, but neither write, truncate nor replace its contents.
    let config = files_under(Path::new(&format!("/proc/{master}/fd")))
        .into_iter()
        .find(|p| std::fs::read_link(p).is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:")))
        .expect("the master holds its config as a memfd");
    let gid = nix::unistd::User::from_name(&user.name)
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    let path = config.to_string_lossy().into_owned();
    let read = as_site(user.uid, gid, &["cat", &path]);
    assert!(
        String::from_utf8_lossy(&read.stdout).contains("php_admin_value[memory_limit] = '48M'"),
        "{read:?}"
    );
    for cmd in [
        format!("printf 'php_admin_value[open_basedir] = /' >> {path}"),
        format!("printf '[global]' 1<> {path}"),
        format!(": > {path}"),
    ] {
        let write = as_site(user.uid, gid, &["sh", "-c", &cmd]);
        assert!(!write.status.success(), "{cmd}: {write:?}");
    }

    // SIGUSR2 from the site's code: the master re-executes itself, reads the
    // same sealed config again and keeps the socket polyhost gave it.
    // (Its own answer may be cut: the reload ends the child that sends it.)
    let _ = get(bin.addr, "blog.test", "/reload.php").await;
    let log = state.join("sites/blog/php-fpm.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.matches("using inherited socket").count() >= 2
            && text.contains("Reloading in progress")
        {
            let r = get(bin.addr, "blog.test", "/ini.php").await;
            if r.status == 200 {
                break r.text();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reload seen within 10 s; php-fpm log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(after, before.text(), "the same limits after the reload");
    assert_eq!(
        master_pid(&state, "blog"),
        master,
        "the master re-executed in place"
    );
    assert_eq!(
        get(bin.addr, "blog.test", "/passwd.php").await.text(),
        "denied"
    );

    assert!(bin.terminate().await.success());
    common::check_hygiene(&state);
}
