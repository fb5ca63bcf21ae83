//! The kept root handle against a root replaced, renamed away, swapped for
//! a symlink, or moved with a directory above it, under a DocRoot in use.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::docroot::{DocRoot, OpenFile, Reader, ResolveError, Resolved, Wait};

/// How long the watcher may take to tell a change on a busy machine.
const BOUND: Duration = Duration::from_secs(10);

fn read(f: OpenFile) -> String {
    fs::read_to_string(format!("/proc/self/fd/{}", f.file().as_raw_fd())).unwrap()
}

/// What `/a.txt` gives now: its text, or the error's name.
fn get(root: &DocRoot, path: &str) -> String {
    match root.resolve(path) {
        Ok(Resolved::File(f)) => read(f),
        Ok(Resolved::Dir(d)) => {
            match root.open_index(&d, &["index.html".to_owned()], Wait::Block) {
                Ok(Some(f)) => read(f),
                other => format!("dir: {other:?}"),
            }
        }
        Err(ResolveError::NotFound) => "404".into(),
        Err(ResolveError::Root(_)) => "root refused".into(),
        Err(e) => format!("error: {e}"),
    }
}

/// Asks until `want` comes (within [`BOUND`]); every answer meanwhile must
/// be one of `allowed`. Then `want` holds for the requests that follow.
fn settles(root: &DocRoot, path: &str, want: &str, allowed: &[&str]) {
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        let got = get(root, path);
        if got == want {
            break;
        }
        assert!(
            allowed.contains(&got.as_str()),
            "{path}: {got:?} is neither {want:?} nor one of {allowed:?}"
        );
        if seen.last() != Some(&got) {
            seen.push(got);
        }
        assert!(
            start.elapsed() < BOUND,
            "{path}: still not {want:?} after {BOUND:?}; saw {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    for _ in 0..50 {
        assert_eq!(get(root, path), want, "{path}: once seen, it stays");
    }
}

fn site(dir: &Path, text: &str) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("a.txt"), text).unwrap();
    fs::write(dir.join("sub/index.html"), format!("{text} index")).unwrap();
}

#[test]
fn a_root_replaced_by_rename_serves_the_new_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("public_html");
    site(&path, "old");
    let root = DocRoot::open(&path, Reader::Anyone).unwrap();
    assert_eq!(get(&root, "/a.txt"), "old");
    // A deploy: the new tree is built beside, then renamed over the root.
    let next = tmp.path().join("release-2");
    site(&next, "new");
    fs::rename(&path, tmp.path().join("release-1")).unwrap();
    fs::rename(&next, &path).unwrap();
    settles(&root, "/a.txt", "new", &["old", "404"]);
    settles(&root, "/sub/", "new index", &[]);
}

#[test]
fn a_root_renamed_away_is_not_found_until_one_is_back() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("public_html");
    site(&path, "old");
    let root = DocRoot::open(&path, Reader::Anyone).unwrap();
    assert_eq!(get(&root, "/a.txt"), "old");
    fs::rename(&path, tmp.path().join("suspended")).unwrap();
    settles(&root, "/a.txt", "404", &["old"]);
    settles(&root, "/sub/", "404", &[]);
    site(&path, "back");
    settles(&root, "/a.txt", "back", &["404"]);
}

#[test]
fn a_root_swapped_for_a_symlink_is_refused_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("public_html");
    let elsewhere = tmp.path().join("another-site");
    site(&path, "old");
    site(&elsewhere, "SECRET");
    let root = DocRoot::open(&path, Reader::Anyone).unwrap();
    assert_eq!(get(&root, "/a.txt"), "old");
    // The site owner points the root at another site's files (a symlink
    // renamed over the root, as `ln -sfn` does).
    fs::rename(&path, tmp.path().join("old")).unwrap();
    symlink(&elsewhere, tmp.path().join("link")).unwrap();
    fs::rename(tmp.path().join("link"), &path).unwrap();
    settles(&root, "/a.txt", "root refused", &["old", "404"]);
    settles(&root, "/sub/", "root refused", &[]);
    // Put right, it serves again.
    fs::remove_file(&path).unwrap();
    site(&path, "fixed");
    settles(&root, "/a.txt", "fixed", &["root refused", "404"]);
}

#[test]
fn a_directory_above_the_root_moved_is_noticed_too() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home/alice");
    let path = home.join("public_html");
    site(&path, "old");
    let root = DocRoot::open(&path, Reader::Anyone).unwrap();
    assert_eq!(get(&root, "/a.txt"), "old");
    // /home/alice replaced whole (a restored backup), the root inside it new.
    let restored = tmp.path().join("home/alice.restored");
    site(&restored.join("public_html"), "new");
    fs::rename(&home, tmp.path().join("home/alice.old")).unwrap();
    fs::rename(&restored, &home).unwrap();
    settles(&root, "/a.txt", "new", &["old", "404"]);
    // And the new directories are watched in their turn.
    let again = tmp.path().join("home/alice.again");
    site(&again.join("public_html"), "again");
    fs::rename(&home, tmp.path().join("home/alice.new")).unwrap();
    fs::rename(&again, &home).unwrap();
    settles(&root, "/a.txt", "again", &["new", "404"]);
}

#[test]
fn a_root_that_stays_put_is_not_reopened() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("public_html");
    site(&path, "same");
    let root = DocRoot::open(&path, Reader::Anyone).unwrap();
    let before = root
        .inner
        .current
        .get(super::Wait::Block)
        .unwrap()
        .into_arc();
    // Changes beside the root and inside it are no reason to reopen.
    fs::write(tmp.path().join("public_html.bak"), "x").unwrap();
    fs::write(path.join("b.txt"), "b").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(get(&root, "/b.txt"), "b");
    let after = root
        .inner
        .current
        .get(super::Wait::Block)
        .unwrap()
        .into_arc();
    assert_eq!(
        before.as_raw_fd(),
        after.as_raw_fd(),
        "the kept handle is the same one"
    );
    assert!(std::sync::Arc::ptr_eq(&before, &after));
}

/// Descriptors of this process open on `path`.
fn descriptors_on(path: &Path) -> usize {
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target == path)
        .count()
}

#[test]
fn an_idle_root_holds_no_handle_and_no_watch_and_opens_again_by_path() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("public_html");
    site(&path, "one");
    let root = DocRoot::open(&path, Reader::Anyone).unwrap();
    let current = &root.inner.current;
    assert_eq!(
        current.held(),
        (false, 0),
        "nothing is kept before a request"
    );
    assert_eq!(descriptors_on(&path), 0);
    assert_eq!(get(&root, "/a.txt"), "one");
    let depth = path.components().count() - 1;
    assert_eq!(current.held(), (true, depth), "kept, its path watched");
    assert_eq!(descriptors_on(&path), 1);
    // Used since the last sweep: kept.
    current.sweep();
    assert_eq!(current.held(), (true, depth));
    // A whole period unused: closed, its watches removed.
    current.sweep();
    assert_eq!(current.held(), (false, 0), "an idle root holds nothing");
    assert_eq!(descriptors_on(&path), 0);
    // Replaced while nothing watched it: the next request opens the root
    // by its path, so it serves the new tree at once.
    let next = tmp.path().join("release-2");
    site(&next, "two");
    fs::rename(&path, tmp.path().join("release-1")).unwrap();
    fs::rename(&next, &path).unwrap();
    assert_eq!(get(&root, "/a.txt"), "two");
    assert_eq!(current.held(), (true, depth));
    // And watched again: a later swap is noticed.
    let third = tmp.path().join("release-3");
    site(&third, "three");
    fs::rename(&path, tmp.path().join("release-2")).unwrap();
    fs::rename(&third, &path).unwrap();
    settles(&root, "/a.txt", "three", &["two", "404"]);
    // Swapped for a symlink while closed: refused on the next request.
    current.sweep();
    current.sweep();
    assert_eq!(current.held(), (false, 0));
    fs::rename(&path, tmp.path().join("release-3")).unwrap();
    symlink(tmp.path().join("release-1"), &path).unwrap();
    assert_eq!(get(&root, "/a.txt"), "root refused");
    assert_eq!(current.held(), (false, 0), "a refused root keeps nothing");
}
