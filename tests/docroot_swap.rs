//! A site's document root replaced under a running polyhost (a deploy that
//! renames a new tree over the old one, a panel that swaps the root for a
//! symlink): the real binary, a static site and a PHP site on a real
//! php-fpm pool. The root's handle is kept between requests
//! (`docroot::current`); these show it follows the path: new content, a
//! refusal, never the old tree for long and never a tree a symlink points at.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{get, open_up, Binary, TestConfig, TestUser};

/// How long the root's watcher may take to tell a change on a busy machine.
const BOUND: Duration = Duration::from_secs(10);

/// A tree with `a.txt` saying `text` and a script only this tree has.
fn tree(at: &Path, text: &str, script: &str) {
    std::fs::create_dir_all(at).unwrap();
    std::fs::write(at.join("a.txt"), text).unwrap();
    std::fs::write(at.join(script), format!("<?php echo 'ran {script}';")).unwrap();
}

/// GETs `path` until it answers `want` (status and body) within [`BOUND`];
/// every answer meanwhile must be one of `meanwhile`. Then `want` holds for
/// the requests that follow.
async fn settles(
    bin: &Binary,
    host: &str,
    path: &str,
    want: (u16, &str),
    meanwhile: &[(u16, &str)],
) {
    let start = Instant::now();
    let mut seen: Vec<(u16, String)> = Vec::new();
    loop {
        let r = get(bin.addr, host, path).await;
        let got = (r.status, r.text());
        assert!(
            !got.1.contains("SECRET"),
            "{host}{path}: served from outside the root: {got:?}"
        );
        if got.0 == want.0 && (want.1.is_empty() || got.1 == want.1) {
            break;
        }
        assert!(
            meanwhile
                .iter()
                .any(|m| m.0 == got.0 && (m.1.is_empty() || m.1 == got.1)),
            "{host}{path}: {got:?} is neither {want:?} nor one of {meanwhile:?}\n{}",
            bin.log()
        );
        if seen.last() != Some(&got) {
            seen.push(got);
        }
        assert!(
            start.elapsed() < BOUND,
            "{host}{path}: not {want:?} after {BOUND:?}; saw {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..20 {
        let r = get(bin.addr, host, path).await;
        assert_eq!(r.status, want.0, "{host}{path}: once seen, it stays");
        if !want.1.is_empty() {
            assert_eq!(r.text(), want.1, "{host}{path}: once seen, it stays");
        }
    }
}

#[tokio::test]
async fn a_root_replaced_under_a_running_site_serves_the_new_tree_and_no_symlink() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    let www = cfg.path().join("www");
    tree(&www.join("st"), "static v1", "unused.php");
    tree(&www.join("ph"), "php v1", "one.php");
    let outside = cfg.path().join("elsewhere");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("a.txt"), "SECRET of another site").unwrap();
    cfg.write(
        "vhosts/st.toml",
        "hosts = [\"st.test\"]\nroot = \"www/st\"\n",
    );
    cfg.write(
        "vhosts/ph.toml",
        &format!(
            "hosts = [\"ph.test\"]\nroot = \"www/ph\"\nuser = \"{}\"\n[php]\n",
            user.name
        ),
    );
    open_up(cfg.path());
    let bin = Binary::start(&cfg.main(), &[]).await;
    settles(&bin, "st.test", "/a.txt", (200, "static v1"), &[]).await;
    settles(&bin, "ph.test", "/a.txt", (200, "php v1"), &[]).await;
    settles(&bin, "ph.test", "/one.php", (200, "ran one.php"), &[]).await;

    // A deploy: each new tree built beside its root, then renamed over it.
    for (site, text, script) in [
        ("st", "static v2", "unused.php"),
        ("ph", "php v2", "two.php"),
    ] {
        let next = www.join(format!("{site}.next"));
        tree(&next, text, script);
        std::fs::rename(www.join(site), www.join(format!("{site}.old"))).unwrap();
        std::fs::rename(&next, www.join(site)).unwrap();
    }
    // A script is decided in the tree the root's path names at once.
    let r = get(bin.addr, "ph.test", "/two.php").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ran two.php"));
    assert_eq!(get(bin.addr, "ph.test", "/one.php").await.status, 404);
    // Static files follow within the watcher's delay, from no third tree.
    settles(
        &bin,
        "st.test",
        "/a.txt",
        (200, "static v2"),
        &[(200, "static v1")],
    )
    .await;
    settles(
        &bin,
        "ph.test",
        "/a.txt",
        (200, "php v2"),
        &[(200, "php v1")],
    )
    .await;

    // The root swapped for a symlink to another site's files: refused (the
    // root's path must hold no symlink), never followed.
    for site in ["st", "ph"] {
        let link = www.join(format!("{site}.link"));
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        std::fs::rename(&link, www.join(site)).unwrap_or_else(|e| {
            // rename(2) cannot put a symlink over a directory: move it away first.
            assert_eq!(e.raw_os_error(), Some(libc::EISDIR), "{e}");
            std::fs::rename(www.join(site), www.join(format!("{site}.v2"))).unwrap();
            std::fs::rename(&link, www.join(site)).unwrap();
        });
    }
    settles(
        &bin,
        "st.test",
        "/a.txt",
        (500, ""),
        &[(200, "static v2"), (404, "")],
    )
    .await;
    settles(
        &bin,
        "ph.test",
        "/a.txt",
        (500, ""),
        &[(200, "php v2"), (404, "")],
    )
    .await;
    settles(&bin, "ph.test", "/two.php", (500, ""), &[]).await;

    // Renamed away with nothing in its place: not found, not the old tree.
    std::fs::remove_file(www.join("st")).unwrap();
    settles(&bin, "st.test", "/a.txt", (404, ""), &[(500, "")]).await;
}
