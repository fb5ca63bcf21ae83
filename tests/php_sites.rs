//! PHP sites end to end, in process: real php-fpm pools started by the
//! supervisor as the sites' users, behind the router. Covers the pool's
//! lifecycle (start, SIGKILL → 502 for in-flight requests only → back),
//! separation of two PHP sites, PHP beside Python in one polyhost, and a
//! real PHP application from Debian's packages (Adminer).

mod common;

use std::time::Duration;

use common::{get, open_up, python_worker, InProcess, TestConfig, TestUser};

fn php_site(cfg: &TestConfig, name: &str, user: &TestUser, extra: &str) {
    cfg.write(
        &format!("www/{name}/index.php"),
        "<?php echo 'user=' . posix_getpwuid(posix_geteuid())['name'] . ' pid=' . getmypid();",
    );
    cfg.write(
        &format!("www/{name}/read.php"),
        "<?php $d = @file_get_contents($_GET['f']); echo $d === false ? 'denied' : $d;",
    );
    cfg.write(
        &format!("www/{name}/slow.php"),
        // `mark`: a file to create first (a marker: the request reached PHP).
        "<?php if (isset($_GET['mark'])) touch($_GET['mark']); sleep((int)$_GET['s']); echo 'slept';",
    );
    cfg.write(&format!("www/{name}/style.css"), "body{}\n");
    cfg.write(
        &format!("vhosts/{name}.toml"),
        &format!("hosts = [\"{name}.test\"]\nroot = \"www/{name}\"\nuser = \"{}\"\n[php]\nmax_children = 4\n{extra}\n", user.name),
    );
    open_up(cfg.path());
}

#[tokio::test]
async fn php_sites_run_on_their_own_pools_as_their_own_users() {
    let cfg = TestConfig::new();
    let (ua, ub) = (TestUser::new(), TestUser::new());
    php_site(&cfg, "php-a", &ua, "");
    php_site(&cfg, "php-b", &ub, "");
    // php-a may not read php-b's 0600 file (and open_basedir keeps it in its root anyway).
    let secret = cfg.write("www/php-b/secret.txt", "b's secret");
    std::os::unix::fs::chown(&secret, Some(ub.uid), None).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let server = InProcess::start(&cfg).await;

    let a = get(server.addr, "php-a.test", "/").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(
        a.text().starts_with(&format!("user={} ", ua.name)),
        "{}",
        a.text()
    );
    let b = get(server.addr, "php-b.test", "/index.php").await;
    assert!(
        b.text().starts_with(&format!("user={} ", ub.name)),
        "{}",
        b.text()
    );
    let css = get(server.addr, "php-a.test", "/style.css").await;
    assert_eq!(
        (css.status, css.text().as_str()),
        (200, "body{}\n"),
        "static next to PHP"
    );

    let path = format!("/read.php?f={}", secret.display());
    assert_eq!(get(server.addr, "php-a.test", &path).await.text(), "denied");
    assert_eq!(
        get(server.addr, "php-b.test", &path).await.text(),
        "b's secret"
    );
    // The master runs as the site user too: no root process in the site.
    let status = server.site("php-a").await;
    assert_eq!(status.runtime, "php");
    let master = status.pids[0];
    let uid = std::fs::read_to_string(format!("/proc/{master}/status")).unwrap();
    assert!(
        uid.lines()
            .any(|l| l.starts_with("Uid:") && l.contains(&ua.uid.to_string())),
        "{uid}"
    );
    server.stop().await;
}

#[tokio::test]
async fn sigkill_of_php_fpm_fails_only_in_flight_requests_and_the_pool_comes_back() {
    let cfg = TestConfig::new();
    let (ua, ub) = (TestUser::new(), TestUser::new());
    php_site(&cfg, "victim", &ua, "");
    php_site(&cfg, "bystander", &ub, "");
    let server = InProcess::start(&cfg).await;
    assert_eq!(get(server.addr, "victim.test", "/").await.status, 200);
    let addr = server.addr;
    // Steady traffic on the other site throughout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let bystander = tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            if get(addr, "bystander.test", "/").await.status == 200 {
                ok += 1
            } else {
                failed += 1
            }
        }
        (ok, failed)
    });
    // Within the site's root (open_basedir).
    let marker = common::marker_dir(&cfg.path().join("www/victim"), &ua).join("slow");
    let path = format!("/slow.php?s=5&mark={}", marker.display());
    let in_flight = tokio::spawn(async move { get(addr, "victim.test", &path).await });
    common::wait_for_marker(&marker).await;
    let master = server.site("victim").await.pids[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(master),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 502, "the in-flight request fails: {}", r.text());
    let back = common::eventually(Duration::from_secs(10), || async {
        get(addr, "victim.test", "/").await.status == 200
    })
    .await;
    assert!(back, "the pool is back");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = bystander.await.unwrap();
    assert!(
        ok > 10 && failed == 0,
        "the other site was served throughout: {ok} ok, {failed} failed"
    );
    assert!(server.site("victim").await.restarts >= 1);
    server.stop().await;
}

/// A PHP site `blog` run by `php_user` and a Python site `shop` (4 threads)
/// run by `python_user`, side by side.
fn blog_and_shop(cfg: &TestConfig, php_user: &TestUser, python_user: &TestUser) {
    php_site(cfg, "blog", php_user, "");
    cfg.write("apps/pyapp.py", include_str!("apps/pyapp.py"));
    cfg.write(
        "vhosts/shop.toml",
        &format!(
            "hosts = [\"shop.test\"]\nroot = \"www/blog\"\nuser = \"{}\"\n[python]\napp = \"pyapp\"\npath = [\"apps\"]\nthreads = 4\nworker = \"{}\"\n",
            python_user.name,
            python_worker().display()
        ),
    );
    open_up(cfg.path());
}

#[tokio::test]
async fn php_and_python_sites_in_one_polyhost() {
    let cfg = TestConfig::new();
    let (ua, ub) = (TestUser::new(), TestUser::new());
    blog_and_shop(&cfg, &ua, &ub);
    let server = InProcess::start(&cfg).await;
    let addr = server.addr;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            tokio::spawn(async move {
                let host = if i % 2 == 0 { "blog.test" } else { "shop.test" };
                get(addr, host, "/").await
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let want = if i % 2 == 0 { "user=" } else { "pid=" };
        assert!(r.text().starts_with(want), "{}", r.text());
    }
    server.stop().await;
}

#[tokio::test]
async fn adminer_from_debian_renders_its_main_pages() {
    let adminer = std::path::Path::new("/usr/share/adminer");
    assert!(
        adminer.join("adminer/index.php").exists(),
        "Debian's adminer package is missing: run ./scripts/setup.sh"
    );
    let cfg = TestConfig::new();
    let user = TestUser::new();
    php_site(&cfg, "dbadmin", &user, "");
    // Install the application (the whole package tree) into the site's document root.
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(adminer)
        .arg(cfg.path().join("www/dbadmin/adm"))
        .status()
        .unwrap();
    assert!(status.success());
    open_up(cfg.path());
    let _ = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(cfg.path().join("www"))
        .status();
    let server = InProcess::start(&cfg).await;
    let login = get(server.addr, "dbadmin.test", "/adm/adminer/").await;
    assert_eq!(login.status, 200, "{}", login.text());
    assert!(
        login.text().contains("Login - Adminer"),
        "{}",
        &login.text()[..login.text().len().min(500)]
    );
    let css = get(
        server.addr,
        "dbadmin.test",
        "/adm/adminer/static/default.css",
    )
    .await;
    assert_eq!(css.status, 200);
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    // Its second application, Adminer Editor, from the same package.
    let editor = get(server.addr, "dbadmin.test", "/adm/editor/").await;
    assert_eq!(editor.status, 200, "{}", editor.text());
    assert!(editor.text().contains("Editor"), "{}", editor.text());
    // A database login attempt is answered by the application (SQLite without a password is refused by Adminer itself).
    let refused = get(
        server.addr,
        "dbadmin.test",
        "/adm/adminer/?sqlite=&username=",
    )
    .await;
    assert!(refused.text().contains("Adminer"), "{}", refused.text());
    server.stop().await;
}

#[tokio::test]
async fn an_ondemand_pool_serves_concurrent_requests_without_waiting_on_idle_connections() {
    // An ondemand master forks only when no child waits in accept: with
    // kept-alive connections a request could be left in its backlog until an
    // idle connection closed (2 × idle_timeout, measured) before the router
    // nudged the master (`upstream::php::warm::watch`).
    let cfg = TestConfig::new();
    let user = TestUser::new();
    php_site(
        &cfg,
        "ondemand",
        &user,
        "mode = \"ondemand\"\nidle_timeout = \"10s\"",
    );
    let server = InProcess::start(&cfg).await;
    assert_eq!(get(server.addr, "ondemand.test", "/").await.status, 200);
    let addr = server.addr;
    let t = std::time::Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { get(addr, "ondemand.test", "/").await.status }))
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "concurrent requests took {:?}",
        t.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn a_pool_that_cannot_start_reports_php_fpm_own_error_and_only_its_site_gets_503() {
    let cfg = TestConfig::new();
    let (ua, ub) = (TestUser::new(), TestUser::new());
    // A real php-fpm that fails at start: pointed at a configuration file that does not exist.
    let wrapper = cfg.write(
        "bin/php-fpm-broken",
        &format!(
            "#!/bin/sh\nexec {} \"$@\" -y /nonexistent-dir/php-fpm.conf\n",
            polyhost::runtime::php::find_fpm_binary().unwrap().display()
        ),
    );
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    php_site(
        &cfg,
        "broken",
        &ua,
        &format!("fpm = \"{}\"\nstartup_timeout = \"2s\"", wrapper.display()),
    );
    php_site(&cfg, "fine", &ub, "");
    let server = InProcess::start(&cfg).await;
    let r = get(server.addr, "broken.test", "/").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        get(server.addr, "fine.test", "/").await.status,
        200,
        "the other site is served"
    );
    let log = cfg.path().join("log/broken.error.log");
    let found = common::eventually(Duration::from_secs(10), || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("failed to open configuration file '/nonexistent-dir/php-fpm.conf'")
    })
    .await;
    assert!(
        found,
        "php-fpm's own message in the site's error log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let status = server.site("broken").await;
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("exit status"),
        "{status:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn after_sigkill_of_polyhost_no_php_fpm_survives_the_next_start() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    // No recycling: a recycled static pool runs spare children beside them.
    php_site(&cfg, "pool", &user, "mode = \"static\"\nmax_requests = 0");
    let bin = common::Binary::start(&cfg.main(), &[]).await;
    assert_eq!(
        get(bin.addr, "pool.test", "/").await.status,
        200,
        "{}",
        bin.log()
    );
    // php-fpm accepts on its socket before it has forked every static child.
    let pool_up = common::eventually(Duration::from_secs(10), || async {
        common::pids_of_uid(user.uid).len() >= 5
    })
    .await;
    assert!(
        pool_up,
        "master and 4 children: {:?}\n{}",
        common::pids_of_uid(user.uid),
        bin.log()
    );
    let mut child = bin.child;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    // The master dies with polyhost (parent-death signal); php-fpm's children
    // may outlive it, but the next start removes whatever is left in the
    // site's cgroup before it starts anything.
    let master_gone = common::eventually(Duration::from_secs(5), || async {
        common::pids_of_uid(user.uid).len() < 5
    })
    .await;
    assert!(master_gone, "{:?}", common::pids_of_uid(user.uid));
    let bin = common::Binary::start(&cfg.main(), &[]).await;
    let r = get(bin.addr, "pool.test", "/").await;
    assert_eq!(r.status, 200, "{}", bin.log());
    // The new pool (a master and its 4 static children) comes up; nothing
    // else of the site's user is left: every process descends from the new polyhost.
    let full = common::eventually(Duration::from_secs(10), || async {
        common::pids_of_uid(user.uid).len() == 5
    })
    .await;
    let pids = common::pids_of_uid(user.uid);
    assert!(full, "only the new pool's processes: {pids:?}");
    let polyhost = bin.child.id().unwrap() as i32;
    let parent = |pid: i32| -> i32 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    for pid in &pids {
        let p = parent(*pid);
        assert!(
            p == polyhost || parent(p) == polyhost,
            "pid {pid} (parent {p}) is not of the new pool"
        );
    }
    assert!(bin.terminate().await.success());
    assert!(
        common::pids_of_uid(user.uid).is_empty(),
        "nothing survives a clean stop"
    );
}

#[tokio::test]
async fn static_paths_on_a_php_site_never_serve_php_source() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    php_site(&cfg, "wp", &user, "");
    let vhost = std::fs::read_to_string(cfg.path().join("vhosts/wp.toml")).unwrap();
    cfg.write(
        "vhosts/wp.toml",
        &vhost.replace("[php]", "[static]\npaths = [\"/wp-content\"]\n\n[php]"),
    );
    cfg.write(
        "www/wp/wp-content/plugins/x/settings.php",
        "<?php $db_password = 'hunter2'; echo 'ran';",
    );
    cfg.write("www/wp/wp-content/style.css", "a{}\n");
    open_up(cfg.path());
    let server = InProcess::start(&cfg).await;
    let r = get(server.addr, "wp.test", "/wp-content/plugins/x/settings.php").await;
    assert!(
        !r.text().contains("hunter2"),
        "PHP source served: {}",
        r.text()
    );
    assert_eq!((r.status, r.text().as_str()), (200, "ran"));
    let css = get(server.addr, "wp.test", "/wp-content/style.css").await;
    assert_eq!((css.status, css.text().as_str()), (200, "a{}\n"));
    server.stop().await;
}

/// PHP source under other names (`.phtml`, `.php5`, `.inc`, a PHAR, an
/// editor's backup of a script) was served as plain text by a PHP site: it
/// is refused unless the site lists the ending in `php.extensions`, and then
/// php-fpm executes it.
#[tokio::test]
async fn php_source_under_other_endings_is_refused_unless_listed_as_php() {
    let cfg = TestConfig::new();
    let (ua, ub) = (TestUser::new(), TestUser::new());
    php_site(&cfg, "plain", &ua, "");
    php_site(&cfg, "phtml", &ub, "extensions = [\".php\", \".phtml\"]");
    const SECRET: &str = "db_password_hunter2";
    let names = [
        "view.phtml",
        "old.php3",
        "old.php4",
        "old.php5",
        "new.php7",
        "new.php8",
        "short.pht",
        "lib.phar",
        "hl.phps",
        "t.phpt",
        "db.inc",
        "DB.INC",
        "X.PHP",
        "X.pHtml",
        "wp-config.php~",
        "wp-config.php.bak",
        "wp-config.php.old",
        "wp-config.php.orig",
        "wp-config.php.save",
        "view.phtml.bak",
    ];
    for site in ["plain", "phtml"] {
        for name in names {
            cfg.write(
                &format!("www/{site}/{name}"),
                &format!("<?php /* {SECRET} */ echo 'ran ' . basename(__FILE__);"),
            );
        }
    }
    open_up(cfg.path());
    let server = InProcess::start(&cfg).await;
    for (site, name) in ["plain", "phtml"]
        .into_iter()
        .flat_map(|s| names.iter().map(move |n| (s, *n)))
    {
        let r = get(server.addr, &format!("{site}.test"), &format!("/{name}")).await;
        assert!(
            !r.text().contains(SECRET),
            "{site}: /{name}: PHP source served: {}",
            r.text()
        );
        if site == "phtml" && name == "view.phtml" {
            assert_eq!(
                (r.status, r.text().as_str()),
                (200, "ran view.phtml"),
                "a listed ending is executed"
            );
        } else {
            assert_eq!(r.status, 403, "{site}: /{name}: {}", r.text());
        }
    }
    // Everything else as before.
    let r = get(server.addr, "plain.test", "/style.css").await;
    assert_eq!((r.status, r.text().as_str()), (200, "body{}\n"));
    assert!(get(server.addr, "plain.test", "/")
        .await
        .text()
        .starts_with("user="));
    server.stop().await;
}

/// The numeric fields of a `/proc/.../stat` line after the command's closing
/// parenthesis: index 0 is field 3 (state).
fn stat_fields(stat: &str) -> Vec<i64> {
    stat.rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(-1))
                .collect()
        })
        .unwrap_or_default()
}

/// `(tid, scheduling policy)` of every thread of `pid` (policy: field 41).
fn thread_policies(pid: i64) -> Vec<(i64, i64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten();
    tasks
        .filter_map(|task| {
            let tid = task.file_name().to_string_lossy().parse().ok()?;
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            Some((tid, stat_fields(&stat)[41 - 3]))
        })
        .collect()
}

/// Every process in the sessions `leaders` (a site process leads its own
/// session, and php-fpm's children stay in the master's): session is field 6.
fn session_members(leaders: &[i64]) -> Vec<i64> {
    let pids = std::fs::read_dir("/proc").unwrap().flatten();
    pids.filter_map(|e| e.file_name().to_string_lossy().parse::<i64>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| leaders.contains(&stat_fields(&stat)[6 - 3]))
        })
        .collect()
}

#[tokio::test]
async fn site_processes_run_under_sched_batch_unless_site_scheduling_is_normal() {
    const SCHED_OTHER: i64 = 0;
    const SCHED_BATCH: i64 = 3;
    for (setting, want) in [
        ("", SCHED_BATCH),
        ("site_scheduling = \"normal\"", SCHED_OTHER),
    ] {
        let cfg = TestConfig::new();
        cfg.main_extra(setting);
        let (ua, ub) = (TestUser::new(), TestUser::new());
        blog_and_shop(&cfg, &ua, &ub);
        let server = InProcess::start(&cfg).await;
        for host in ["blog.test", "shop.test"] {
            let r = get(server.addr, host, "/").await;
            assert_eq!(r.status, 200, "{host}: {}", r.text());
        }
        let mut leaders = server.site("blog").await.pids;
        leaders.extend(server.site("shop").await.pids);
        let leaders: Vec<i64> = leaders.into_iter().map(i64::from).collect();
        // php-fpm master + at least one child; the worker's main thread + 4
        // request threads (the worker listens before its last threads run).
        let (_, policies) = common::wait_for(
            &format!("{setting:?}: php-fpm master and child, the worker and its threads"),
            Duration::from_secs(10),
            async || {
                let members = session_members(&leaders);
                let policies: Vec<_> = members
                    .iter()
                    .flat_map(|&pid| thread_policies(pid))
                    .collect();
                (members, policies)
            },
            |(members, policies)| members.len() >= 3 && policies.len() >= 6,
        )
        .await;
        assert!(
            policies.iter().all(|&(_, p)| p == want),
            "{setting:?}: every site thread should have policy {want}: {policies:?}"
        );
        // polyhost itself (this test process) keeps the normal policy.
        let own = thread_policies(i64::from(std::process::id()));
        assert!(
            !own.is_empty() && own.iter().all(|&(_, p)| p == SCHED_OTHER),
            "{own:?}"
        );
        server.stop().await;
    }
}
