//! Kept files over real files in a temporary root: what is kept, and that a
//! change of any kind is seen on the next lookup.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;
use crate::docroot::{Reader, SETTLE};
use crate::upstream::static_files::Described;

fn root() -> (tempfile::TempDir, DocRoot) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("site")).unwrap();
    let root = DocRoot::open(&dir.path().join("site"), Reader::Anyone).unwrap();
    (dir, root)
}

/// Writes the files, then waits (bounded) until every one is settled.
fn settled_files(dir: &Path, files: &[(&str, &[u8])]) {
    for (name, bytes) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
    }
    let deadline = Instant::now() + SETTLE + Duration::from_secs(10);
    for (name, _) in files {
        loop {
            let meta = std::fs::metadata(dir.join(name)).unwrap();
            if Version::of(&meta).settled(SystemTime::now()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not settled by the deadline: {meta:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Opens `rel` as the static upstream does and keeps it if it may be.
fn keep_rel(root: &DocRoot, rel: &str) -> Option<Arc<Entry>> {
    let file = root.resolve_relative(rel).expect("the file opens");
    let kept = keepable(&file)?;
    Some(keep(root, &file, kept, Described::of(&file)))
}

#[test]
fn a_settled_small_file_is_kept_and_answers_until_it_changes() {
    let (dir, root) = root();
    let site = dir.path().join("site");
    settled_files(&site, &[("a.txt", b"one"), ("d/b.css", b"b {}")]);
    let entry = keep_rel(&root, "a.txt").expect("a settled small file is kept");
    assert_eq!(&entry.bytes[..], b"one");
    keep_rel(&root, "d/b.css").expect("kept too");
    assert_eq!(kept().0, 2);

    let found = lookup(&root, "a.txt").expect("kept and unchanged");
    assert_eq!((&found.bytes[..], found.rel_path()), (&b"one"[..], "a.txt"));
    assert!(lookup(&root, "d/b.css").is_some());
    assert!(lookup(&root, "missing.txt").is_none());
    // Another root never finds this root's files, even at the same path.
    let (_other_dir, other) = self::root();
    assert!(lookup(&other, "a.txt").is_none());

    // Past the file times' clock tick, so the rewrite gets a new time.
    std::thread::sleep(Duration::from_millis(50));
    std::fs::write(site.join("a.txt"), b"two").unwrap();
    assert!(
        lookup(&root, "a.txt").is_none(),
        "a rewritten file answered"
    );
    assert_eq!(kept().0, 1, "the changed file's entry is dropped");
    assert!(
        keep_rel(&root, "a.txt").is_none(),
        "a file changed just now is not kept"
    );
}

#[test]
fn every_change_to_a_kept_file_is_seen_at_once() {
    let (dir, root) = root();
    let site = dir.path().join("site");
    let names = [
        "chmod",
        "link",
        "replaced",
        "symlink-out",
        "removed",
        "renamed",
    ];
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (*n, &b"kept"[..])).collect();
    settled_files(&site, &files);
    std::fs::write(dir.path().join("outside"), b"SECRET").unwrap();
    for name in names {
        keep_rel(&root, name).unwrap_or_else(|| panic!("{name} is kept"));
        assert!(lookup(&root, name).is_some(), "{name} is found");
    }
    std::fs::set_permissions(site.join("chmod"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::hard_link(site.join("link"), dir.path().join("second-name")).unwrap();
    std::fs::write(site.join("new"), b"kept").unwrap();
    std::fs::rename(site.join("new"), site.join("replaced")).unwrap();
    std::fs::remove_file(site.join("symlink-out")).unwrap();
    symlink(dir.path().join("outside"), site.join("symlink-out")).unwrap();
    std::fs::remove_file(site.join("removed")).unwrap();
    std::fs::rename(site.join("renamed"), site.join("elsewhere")).unwrap();
    for name in names {
        assert!(
            lookup(&root, name).is_none(),
            "{name}: answered after the change"
        );
    }
    assert_eq!(kept(), (0, 0));
}

#[test]
fn only_small_settled_files_wholly_read_are_kept() {
    let (dir, root) = root();
    let site = dir.path().join("site");
    let big = vec![b'x'; MAX_FILE as usize + 1];
    let limit = vec![b'y'; MAX_FILE as usize];
    settled_files(&site, &[("big", &big), ("limit", &limit), ("empty", b"")]);
    assert!(
        keep_rel(&root, "big").is_none(),
        "a file over MAX_FILE is kept"
    );
    assert_eq!(keep_rel(&root, "limit").unwrap().bytes.len(), limit.len());
    assert_eq!(keep_rel(&root, "empty").unwrap().bytes.len(), 0);
    std::fs::write(site.join("fresh"), b"new").unwrap();
    assert!(
        keep_rel(&root, "fresh").is_none(),
        "an unsettled file is kept"
    );
    // Kept again: one entry per path, its cost counted once.
    keep_rel(&root, "limit").unwrap();
    let (n, cost) = kept();
    assert_eq!(n, 2);
    assert_eq!(
        cost,
        limit.len() + "limit".len() + "empty".len() + 2 * ENTRY_OVERHEAD
    );
}

#[test]
fn the_budget_drops_the_least_recently_used() {
    let (dir, root) = root();
    let site = dir.path().join("site");
    settled_files(&site, &[("a", b"a")]);
    let entry = keep_rel(&root, "a").unwrap();
    let chunk = BUDGET / 4;
    let big = |i: u64| {
        Arc::new(Entry {
            root: root.id(),
            rel: format!("big{i}").into(),
            version: entry.version,
            described: Described::of(&root.resolve_relative("a").unwrap()),
            bytes: Bytes::from(vec![0u8; chunk]),
        })
    };
    HOT.with_borrow_mut(|hot| {
        for i in 0..8 {
            hot.insert(1000 + i, big(i));
            // The first file is used between inserts: it stays.
            assert!(
                hot.entries.get(&hot.key(root.id(), "a")).is_some(),
                "after {i}"
            );
            assert!(hot.cost <= BUDGET, "over budget after {i}: {}", hot.cost);
        }
        assert!(
            hot.entries.peek(&1000).is_none(),
            "the oldest big entry stays"
        );
        assert!(hot.entries.peek(&1007).is_some(), "the newest is gone");
        let counted: usize = hot.entries.iter().map(|(_, e)| e.cost()).sum();
        assert_eq!(counted, hot.cost);
        // What the metrics show of this thread: every file kept, either
        // held or evicted.
        let counts = hot.counts.own();
        assert_eq!(
            (counts.files, counts.bytes, counts.evicted),
            (
                hot.entries.len() as u64,
                hot.cost as u64,
                counts.stored - hot.entries.len() as u64
            ),
            "{counts:?}"
        );
        assert!(counts.evicted >= 1, "{counts:?}");
    });
}
