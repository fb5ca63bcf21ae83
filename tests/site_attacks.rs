//! Attacks a site's owner makes on polyhost itself, against the real binary:
//! planting files in the site's own document root that the site's user could
//! not read (root-only files, hard links to them) and asking the router to
//! serve them; and a fork bomb that fills the site's process limit so that
//! `polyhost restart` cannot start a new generation beside it.
//!
//! Hygiene: everything runs as throw-away users; the [`Binary`]'s cgroup
//! sweep kills what is left in a site's cgroup (by the pids listed there) if
//! a test fails before polyhost stops cleanly.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cgroups::{polyhost_cgroup_dirs, procs};
use common::{get, open_up, pids_of_uid, Binary, TestConfig, TestUser};

/// The cgroup directories of site `site` of that polyhost.
fn site_cgroup_dirs(state_dir: &Path, site: &str) -> Vec<PathBuf> {
    polyhost_cgroup_dirs(state_dir)
        .into_iter()
        .map(|p| p.join(site))
        .filter(|p| p.is_dir())
        .collect()
}

/// The processes of user `uid` whose command is `name`.
fn user_procs_named(uid: u32, name: &str) -> Vec<i32> {
    pids_of_uid(uid)
        .into_iter()
        .filter(|p| comm(*p) == name)
        .collect()
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Runs the real CLI against the polyhost of `main`; (exit code, output).
async fn polyhost_cli(main: &Path, args: &[&str]) -> (i32, String) {
    let mut argv = vec!["--config".to_owned(), main.display().to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_polyhost"))
        .args(&argv)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A PHP site run by `user` with `extra` in its site table, and
/// `index.php` answering `pid=<pid of the php-fpm child>`.
fn php_site(cfg: &TestConfig, name: &str, user: &TestUser, site_extra: &str, php_extra: &str) {
    cfg.write(
        &format!("www/{name}/index.php"),
        "<?php echo 'pid=' . getmypid();",
    );
    cfg.write(
        &format!("vhosts/{name}.toml"),
        &format!(
            "hosts = [\"{name}.test\"]\nroot = \"www/{name}\"\nuser = \"{}\"\n{site_extra}\n[php]\n{php_extra}\n",
            user.name
        ),
    );
    open_up(cfg.path());
}

/// The site's code forks until the site's process limit (32) is reached and
/// keeps trying; `polyhost restart` must still bring the site back, and no
/// process of the bomb may survive it.
#[tokio::test]
async fn restart_recovers_a_site_whose_fork_bomb_holds_its_process_limit() {
    const LIMIT: usize = 32;
    let cfg = TestConfig::new();
    let user = TestUser::new();
    // perl forks forever, every child too (fork failures do not stop it);
    // `ulimit -p` (RLIMIT_NPROC) bounds it even if the cgroup did not.
    cfg.write(
        "www/bomb/bomb.php",
        "<?php shell_exec(\"ulimit -p 100; perl -e 'fork while 1' >/dev/null 2>&1 &\"); echo 'lit';",
    );
    php_site(
        &cfg,
        "bomb",
        &user,
        &format!("[limits]\nprocesses = {LIMIT}\ncpu = 0.5"),
        // No recycling: a recycled static pool runs one spare child more.
        "mode = \"static\"\nmax_children = 2\nmax_requests = 0",
    );
    let bin = Binary::start(&cfg.main(), &[]).await;
    let first = get(bin.addr, "bomb.test", "/").await;
    assert_eq!(first.status, 200, "{}\n{}", first.text(), bin.log());

    let dirs = site_cgroup_dirs(&cfg.path().join("state"), "bomb");
    let pids_dir = dirs
        .iter()
        .find(|d| d.join("pids.max").exists())
        .unwrap_or_else(|| panic!("no pids cgroup for the site among {dirs:?}"))
        .clone();
    let max = std::fs::read_to_string(pids_dir.join("pids.max")).unwrap();
    assert_eq!(max.trim(), LIMIT.to_string(), "the bomb must be bounded");
    let current = || -> usize {
        std::fs::read_to_string(pids_dir.join("pids.current"))
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0)
    };

    let lit = get(bin.addr, "bomb.test", "/bomb.php").await;
    assert_eq!(lit.text(), "lit", "{}", bin.log());
    // Every place the pool (a master and 2 children) leaves is the bomb's.
    let perl = || -> Vec<i32> {
        procs(&pids_dir)
            .into_iter()
            .filter(|p| comm(*p) == "perl")
            .collect()
    };
    let full = common::eventually(Duration::from_secs(20), || async {
        current() >= LIMIT && perl().len() >= LIMIT - 3
    })
    .await;
    let bomb = perl();
    assert!(
        full,
        "the bomb did not reach the limit: pids.current = {}, bomb processes {bomb:?}",
        current()
    );

    let (code, out) = polyhost_cli(&cfg.main(), &["restart", "bomb"]).await;
    assert_eq!(code, 0, "{out}");

    // Back within a bounded time, with only php-fpm left in the site.
    let started = Instant::now();
    let seen = loop {
        let names: Vec<String> = procs(&pids_dir).iter().map(|p| comm(*p)).collect();
        let r = get(bin.addr, "bomb.test", "/").await;
        let perl = user_procs_named(user.uid, "perl");
        let seen = format!(
            "status {} {:?}, site processes {names:?}, perl processes of the site user {perl:?}",
            r.status,
            r.text()
        );
        // The pool is a master and its 2 static children.
        if r.status == 200
            && names.len() == 3
            && names.iter().all(|n| n.starts_with("php-fpm"))
            && perl.is_empty()
        {
            break seen;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not recovered after {:?}: {seen}\n{}",
            started.elapsed(),
            bin.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("recovered after {:?}: {seen}", started.elapsed());
    for pid in bomb {
        assert_ne!(comm(pid), "perl", "bomb process {pid} survived the restart");
    }
    assert!(bin.terminate().await.success());
    assert!(
        pids_of_uid(user.uid).is_empty(),
        "{:?}",
        pids_of_uid(user.uid)
    );
}

/// Writes `content` to `path` owned by `uid:gid` with `mode`.
fn plant(path: &Path, content: &str, uid: u32, gid: u32, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Gives `path` a POSIX access ACL (`system.posix_acl_access`, as `setfacl`
/// writes it): owner rw, `user:uid` with `perm`, owning group none, mask r,
/// others `other`. The kernel sets the mode's group bits to the mask.
fn acl_for_user(path: &Path, uid: u32, perm: u16, other: u16) {
    let mut value = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX), // USER_OBJ
        (0x02, perm, uid),         // USER
        (0x04, 0, u32::MAX),       // GROUP_OBJ
        (0x10, 4, u32::MAX),       // MASK
        (0x20, other, u32::MAX),   // OTHER
    ] {
        value.extend(tag.to_le_bytes());
        value.extend(perm.to_le_bytes());
        value.extend(id.to_le_bytes());
    }
    let file = std::fs::File::open(path).unwrap();
    rustix::fs::fsetxattr(
        &file,
        "system.posix_acl_access",
        &value,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap_or_else(|e| panic!("setting an ACL on {}: {e}", path.display()));
}

/// What the site owner (or a careless admin) leaves in the site's root, and
/// whether the router may serve it to the site: only what the site's user
/// could read itself.
#[tokio::test]
async fn static_files_are_served_only_if_the_site_user_could_read_them() {
    let cfg = TestConfig::new();
    let (site_user, other) = (TestUser::new(), TestUser::new());
    let (uid, gid) = (site_user.uid, site_user.gid());
    let root = cfg.path().join("www/files");
    // Outside the root: a root-only secret and a world-readable root file.
    let secret = cfg.path().join("private/secret.txt");
    plant(&secret, "SECRET of root", 0, 0, 0o600);
    let public = cfg.path().join("private/public.txt");
    plant(&public, "public but not the site's", 0, 0, 0o644);

    plant(&root.join("root-only.txt"), "SECRET root-only", 0, 0, 0o600);
    plant(&root.join("world.txt"), "world", 0, 0, 0o644);
    plant(&root.join("own.txt"), "own", uid, gid, 0o600);
    plant(&root.join("team.txt"), "team", other.uid, gid, 0o640);
    plant(
        &root.join("not-team.txt"),
        "SECRET other",
        other.uid,
        other.gid(),
        0o640,
    );
    // Group members get the group's bits, not the others'.
    plant(
        &root.join("group-denied.txt"),
        "SECRET group-denied",
        0,
        gid,
        0o604,
    );
    // Hard links, made as root (protected_hardlinks does not stop root):
    // to a root-only file, to a world-readable one, and the site's own.
    std::fs::hard_link(&secret, root.join("shadow.txt")).unwrap();
    std::fs::hard_link(&public, root.join("public-link.txt")).unwrap();
    std::fs::hard_link(root.join("own.txt"), root.join("own-link.txt")).unwrap();
    // ACLs: a root-only file (0640 root:root) with an entry granting the
    // site's user, and a world-readable one (0644) whose entry denies it.
    plant(&root.join("acl-granted.txt"), "acl granted", 0, 0, 0o600);
    acl_for_user(&root.join("acl-granted.txt"), uid, 4, 0);
    plant(
        &root.join("acl-denied.txt"),
        "SECRET acl-denied",
        0,
        0,
        0o600,
    );
    acl_for_user(&root.join("acl-denied.txt"), uid, 0, 4);
    for (name, mode) in [("acl-granted.txt", 0o640), ("acl-denied.txt", 0o644)] {
        let meta = std::fs::metadata(root.join(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
    }
    // An index file the site cannot read is not served either.
    plant(&root.join("locked/index.html"), "SECRET index", 0, 0, 0o600);
    cfg.write(
        "vhosts/files.toml",
        &format!(
            "hosts = [\"files.test\"]\nroot = \"www/files\"\nuser = \"{}\"\n",
            site_user.name
        ),
    );
    // The same files for a static site without a user: world-readable only.
    cfg.write(
        "vhosts/nouser.toml",
        "hosts = [\"nouser.test\"]\nroot = \"www/files\"\n",
    );
    let bin = Binary::start(&cfg.main(), &[]).await;

    let cases: &[(&str, &str, u16)] = &[
        ("files.test", "/root-only.txt", 403),
        ("files.test", "/world.txt", 200),
        ("files.test", "/own.txt", 200),
        ("files.test", "/team.txt", 200),
        ("files.test", "/not-team.txt", 403),
        ("files.test", "/group-denied.txt", 403),
        ("files.test", "/shadow.txt", 403),
        ("files.test", "/public-link.txt", 403),
        ("files.test", "/own-link.txt", 200),
        ("files.test", "/acl-granted.txt", 200),
        ("files.test", "/acl-denied.txt", 403),
        ("files.test", "/locked/", 403),
        ("nouser.test", "/world.txt", 200),
        ("nouser.test", "/root-only.txt", 403),
        ("nouser.test", "/own.txt", 403),
        ("nouser.test", "/team.txt", 403),
        ("nouser.test", "/own-link.txt", 403),
    ];
    let mut wrong = Vec::new();
    for (host, path, want) in cases {
        let r = get(bin.addr, host, path).await;
        if r.status != *want || (r.status != 200 && r.text().contains("SECRET")) {
            wrong.push(format!(
                "{host}{path}: {} {:?}, want {want}",
                r.status,
                r.text()
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}\n{}", bin.log());
    assert!(bin.terminate().await.success());
}

/// On a PHP site the router serves the non-PHP files itself: the same rule.
#[tokio::test]
async fn a_php_site_static_files_follow_the_site_user_too() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    php_site(&cfg, "php", &user, "", "");
    let root = cfg.path().join("www/php");
    plant(&root.join("root-only.css"), "SECRET", 0, 0, 0o600);
    plant(&root.join("own.css"), "own", user.uid, user.gid(), 0o600);
    let bin = Binary::start(&cfg.main(), &[]).await;
    let denied = get(bin.addr, "php.test", "/root-only.css").await;
    let own = get(bin.addr, "php.test", "/own.css").await;
    assert_eq!(
        (denied.status, own.status, own.text().as_str()),
        (403, 200, "own"),
        "{}",
        bin.log()
    );
    assert!(bin.terminate().await.success());
}

/// The router keeps small files in memory, and checks each against the file
/// system on every request: whatever the site's user changes (from a
/// shell, as its code could) is what the very next request gets, on a
/// static site and on a PHP site's assets alike.
#[tokio::test]
async fn kept_files_follow_every_change_the_site_user_makes() {
    const NAMES: [&str; 4] = ["rewrite.css", "symlink.css", "chmod.css", "remove.css"];
    let cfg = TestConfig::new();
    let (user, other) = (TestUser::new(), TestUser::new());
    // Another site's file, world-readable: only the root's fence keeps it out.
    let foreign = cfg.path().join("www/other/secret.css");
    plant(&foreign, "SECRET!!", other.uid, other.gid(), 0o644);
    php_site(&cfg, "php", &user, "", "");
    cfg.write(
        "vhosts/files.toml",
        &format!(
            "hosts = [\"files.test\"]\nroot = \"www/files\"\nuser = \"{}\"\n",
            user.name
        ),
    );
    let roots = [("files.test", "www/files"), ("php.test", "www/php")];
    for (_, dir) in roots {
        for name in NAMES {
            plant(
                &cfg.path().join(dir).join(name),
                "body { }",
                user.uid,
                user.gid(),
                0o644,
            );
        }
        // The site's own directory, as a site owner has it.
        std::os::unix::fs::chown(cfg.path().join(dir), Some(user.uid), Some(user.gid())).unwrap();
    }
    open_up(cfg.path());
    // Kept only once settled: two seconds after their last change.
    let paths: Vec<PathBuf> = roots
        .iter()
        .flat_map(|(_, dir)| NAMES.map(|name| cfg.path().join(dir).join(name)))
        .collect();
    common::wait_for(
        "the files to settle (their last change 2 s old)",
        Duration::from_secs(15),
        async || {
            let unsettled = |p: &&PathBuf| {
                changed_at(p).elapsed().unwrap_or_default() <= polyhost::docroot::SETTLE
            };
            paths.iter().filter(unsettled).cloned().collect::<Vec<_>>()
        },
        Vec::is_empty,
    )
    .await;
    // A metrics listener to read what was kept. The test config runs two
    // router threads, whatever the machine's CPUs: the bounds below.
    cfg.main_extra("[metrics]\nlisten = \"127.0.0.1:0\"");
    let bin = Binary::start(&cfg.main(), &[]).await;
    let metrics = bin.logged_addr("metrics listening").await;
    // Several connections: each of the router's threads keeps its own.
    for (host, _) in roots {
        for name in NAMES {
            for _ in 0..6 {
                let r = get(bin.addr, host, &format!("/{name}")).await;
                assert_eq!(
                    (r.status, r.text()),
                    (200, "body { }".into()),
                    "{host}/{name}"
                );
            }
        }
    }
    // 48 requests for 8 files: each kept once per thread at most, every
    // later request for it on that thread answered from memory.
    let first = kept_metrics(metrics).await;
    assert!(
        (8..=16).contains(&first.stored)
            && (8..=16).contains(&first.files)
            && first.bytes >= 8 * 8
            && first.answers >= 48 - 16
            && first.answers + first.stored <= 48
            && first.changed == 0,
        "{first:?}"
    );
    for (_, dir) in roots {
        let dir = cfg.path().join(dir);
        let script = format!(
            "cd {dir} && printf 'BODY {{ }}' > rewrite.css && ln -sf {foreign} symlink.css \
             && chmod 000 chmod.css && rm remove.css",
            dir = dir.display(),
            foreign = foreign.display()
        );
        let (ok, out) = common::runuser(&user.name, &["sh", "-c", &script]);
        assert!(ok, "the site's user changes its files: {out}");
    }
    let mut wrong = Vec::new();
    for (host, _) in roots {
        let want = [
            ("rewrite.css", 200, "BODY { }"),
            ("symlink.css", 403, ""),
            ("chmod.css", 403, ""),
            ("remove.css", 404, ""),
        ];
        for _ in 0..6 {
            for (name, status, text) in want {
                let r = get(bin.addr, host, &format!("/{name}")).await;
                let body = r.text();
                if r.status != status || (status == 200 && body != text) || body.contains("SECRET")
                {
                    wrong.push(format!("{host}/{name}: {} {body:?}", r.status));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}\n{}", bin.log());
    // The changes were seen and the kept copies dropped; nothing new kept
    // (the rewritten file is not settled, the others are refused).
    let after = kept_metrics(metrics).await;
    assert!(
        after.changed >= 1 && after.files < first.files && after.stored == first.stored,
        "before the changes {first:?}, after {after:?}"
    );
    assert!(bin.terminate().await.success());
}

/// The `polyhost_static_kept_*` families of a scrape.
#[derive(Debug)]
struct Kept {
    files: u64,
    bytes: u64,
    answers: u64,
    stored: u64,
    changed: u64,
}

async fn kept_metrics(metrics: std::net::SocketAddr) -> Kept {
    let text = get(metrics, "x", "/metrics").await.text();
    let value = |series: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in the scrape:\n{text}"))
    };
    Kept {
        files: value("polyhost_static_kept_files"),
        bytes: value("polyhost_static_kept_bytes"),
        answers: value("polyhost_static_kept_answers_total"),
        stored: value("polyhost_static_kept_stored_total"),
        changed: value("polyhost_static_kept_dropped_total{reason=\"changed\"}"),
    }
}

/// When a file's inode last changed (its `ctime`).
fn changed_at(path: &Path) -> std::time::SystemTime {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap();
    std::time::UNIX_EPOCH + Duration::new(meta.ctime() as u64, meta.ctime_nsec() as u32)
}
