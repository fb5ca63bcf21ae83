//! A site's logs, attacked as the site would (from its code, or `runuser`
//! as its user) against the real binary: a site reads its own access and
//! error logs and no other site's, cannot list `log_dir`, and cannot stop
//! polyhost (or keep it writing into a file the site holds) by hard-linking
//! another site's log. See docs/isolation.md "Site logs".

mod admin_support;
mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use admin_support::cli;
use common::{eventually, get, python_test_site, runuser, Binary, TestConfig, TestUser};

#[tokio::test]
async fn a_site_reads_its_own_logs_and_no_other_sites() {
    let cfg = TestConfig::new();
    let (ua, ub) = (TestUser::new(), TestUser::new());
    python_test_site(&cfg, "py-a", &ua, "pyapp", "", "threads = 1");
    python_test_site(&cfg, "py-b", &ub, "pyapp", "", "threads = 1");
    cfg.static_site("www", &["www.test"], "");
    // What an older polyhost left: a listable log directory, a 0644 log.
    let log = cfg.path().join("log");
    std::fs::create_dir_all(&log).unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o755)).unwrap();
    let old = log.join("py-b.access.log");
    std::fs::write(
        &old,
        "10.0.0.9 - - \"GET /reset?token=OLD-SECRET HTTP/1.1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
    // And the log of a site removed while polyhost was stopped, whose group
    // id has since gone to py-a's user.
    let gone = log.join("gone.access.log");
    std::fs::write(&gone, "GET /?token=GONE-SECRET\n").unwrap();
    std::os::unix::fs::chown(&gone, Some(0), Some(ua.gid())).unwrap();
    std::fs::set_permissions(&gone, std::fs::Permissions::from_mode(0o640)).unwrap();
    let bin = Binary::start(&cfg.main(), &[]).await;

    for (host, path) in [
        ("py-a.test", "/?token=A-OWN"),
        ("py-b.test", "/?token=B-SECRET"),
        ("www.test", "/?token=W-SECRET"),
    ] {
        assert_eq!(get(bin.addr, host, path).await.status, 200, "{}", bin.log());
    }
    let logged = eventually(Duration::from_secs(10), || async {
        ["py-a", "py-b", "www"].iter().all(|s| {
            std::fs::read_to_string(log.join(format!("{s}.access.log")))
                .is_ok_and(|t| t.contains("SECRET") || t.contains("A-OWN"))
        })
    })
    .await;
    assert!(logged, "the access logs were not flushed");

    // From py-a's code: another site's logs (access and error, PHP or
    // Python or static) are out of reach, old and new; its own are not.
    let read = |f: &Path| {
        let path = format!("/read?f={}", f.display());
        async move { get(bin.addr, "py-a.test", &path).await.text() }
    };
    for other in [
        "py-b.access.log",
        "py-b.error.log",
        "www.access.log",
        "www.error.log",
        "gone.access.log",
    ] {
        let got = read(&log.join(other)).await;
        assert_eq!(got, "denied: PermissionError", "{other}: {got}");
    }
    let own = read(&log.join("py-a.access.log")).await;
    assert!(own.contains("token=A-OWN"), "{own}");
    // As py-b's neighbour at a shell: no listing either.
    let (listed, out) = runuser(&ua.name, &["ls", &log.display().to_string()]);
    assert!(!listed, "{out}");
    let (read_b, out) = runuser(&ua.name, &["cat", &old.display().to_string()]);
    assert!(!read_b && !out.contains("SECRET"), "{out}");

    // The files: 0640 <router user>:<site group>, a static site's
    // <router user>:root (polyhost serve as root: the router process writes them).
    let owner = common::router_uid();
    for (file, gid) in [
        ("py-a.access.log", ua.gid()),
        ("py-b.access.log", ub.gid()),
        ("py-b.error.log", ub.gid()),
        ("www.access.log", 0),
    ] {
        let meta = std::fs::metadata(log.join(file)).unwrap();
        assert_eq!(
            (meta.mode() & 0o777, meta.uid(), meta.gid()),
            (0o640, owner, gid),
            "{file}"
        );
    }
    assert_eq!(std::fs::metadata(&log).unwrap().mode() & 0o007, 0o001);

    // A site removed by a reload: its logs go back to root.
    std::fs::remove_file(cfg.path().join("vhosts/py-b.toml")).unwrap();
    let out = cli(&cfg.path().join("state/admin.sock"), &["reload"], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    for file in ["py-b.access.log", "py-b.error.log", "gone.access.log"] {
        assert_eq!(
            std::fs::metadata(log.join(file)).unwrap().gid(),
            0,
            "{file}"
        );
    }
    assert!(bin.terminate().await.success());
}

/// Where `fs.protected_hardlinks` is 0, a site can hard-link another site's
/// log into its own directory. That must not keep polyhost from starting
/// (every site down) nor keep polyhost writing to an inode the site holds a
/// name of: the linked file is moved aside, a new one made, all sites serve.
#[tokio::test]
async fn a_hard_link_to_another_sites_log_does_not_stop_polyhost() {
    let cfg = TestConfig::new();
    let (ua, ub) = (TestUser::new(), TestUser::new());
    python_test_site(&cfg, "py-a", &ua, "pyapp", "", "threads = 1");
    python_test_site(&cfg, "py-b", &ub, "pyapp", "", "threads = 1");
    cfg.static_site("www", &["www.test"], "");
    let log = cfg.path().join("log");
    let bin = Binary::start(&cfg.main(), &[]).await;
    for host in ["py-a.test", "py-b.test", "www.test"] {
        assert_eq!(
            get(bin.addr, host, "/?token=BEFORE").await.status,
            200,
            "{}",
            bin.log()
        );
    }
    let b_access = log.join("py-b.access.log");
    common::wait_for(
        "py-b's request in its access log",
        Duration::from_secs(10),
        async || common::file_text(&b_access),
        |t| t.0.contains("token=BEFORE"),
    )
    .await;

    // py-a links py-b's logs into a directory of its own. With
    // fs.protected_hardlinks = 1 (this host's default) the kernel refuses
    // it, so the test makes the same links as root.
    let home = cfg.path().join("home-a");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(ua.uid), Some(ua.gid())).unwrap();
    let mut links = Vec::new();
    for file in ["py-b.access.log", "py-b.error.log"] {
        let (src, dst) = (log.join(file), home.join(file));
        let (linked, out) = runuser(
            &ua.name,
            &["ln", &src.display().to_string(), &dst.display().to_string()],
        );
        let protected = std::fs::read_to_string("/proc/sys/fs/protected_hardlinks")
            .is_ok_and(|v| v.trim() == "1");
        if !linked {
            assert!(
                protected,
                "ln as py-a failed although links are not protected: {out}"
            );
            std::fs::hard_link(&src, &dst).unwrap();
        }
        links.push(dst);
    }
    assert!(bin.terminate().await.success());
    let before: Vec<String> = links
        .iter()
        .map(|l| std::fs::read_to_string(l).unwrap())
        .collect();

    // The next start serves every site.
    let bin = Binary::start(&cfg.main(), &[]).await;
    for host in ["py-a.test", "py-b.test", "www.test"] {
        let r = get(bin.addr, host, "/?token=AFTER").await;
        assert_eq!(r.status, 200, "{host}: {}", bin.log());
    }
    common::wait_for(
        "py-b's request in its new access log",
        Duration::from_secs(10),
        async || common::file_text(&b_access),
        |t| t.0.contains("token=AFTER"),
    )
    .await;
    // py-b's logs are new files, its own; the linked ones got no new line
    // and are root's alone.
    for file in ["py-b.access.log", "py-b.error.log"] {
        let meta = std::fs::symlink_metadata(log.join(file)).unwrap();
        assert_eq!(
            (meta.nlink(), meta.mode() & 0o777, meta.uid(), meta.gid()),
            (1, 0o640, common::router_uid(), ub.gid()),
            "{file}"
        );
    }
    for (link, text) in links.iter().zip(&before) {
        assert_eq!(
            &std::fs::read_to_string(link).unwrap(),
            text,
            "{}",
            link.display()
        );
        assert_eq!(
            std::fs::metadata(link).unwrap().gid(),
            0,
            "{}",
            link.display()
        );
    }
    assert!(
        bin.log().contains("moved it aside"),
        "no warning in polyhost's log:\n{}",
        bin.log()
    );
    assert!(bin.terminate().await.success());
}
