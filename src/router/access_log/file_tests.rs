//! Unit tests of `file`: a log's descriptor, ownership, rotation and the
//! log directory.

use super::*;

#[test]
fn the_log_dir_is_made_private_and_an_open_one_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    prepare_log_dir(&dir).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&dir), 0o711);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    prepare_log_dir(&dir).unwrap();
    assert_eq!(mode(&dir), 0o751, "no listing by others");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = prepare_log_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("writable by other users (mode 0777)"), "{err}");
}

/// Descriptors of this process open on `path`.
fn descriptors_on(path: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target == path)
        .count()
}

#[test]
fn a_quiet_log_holds_no_descriptor_and_loses_no_line() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("shop.access.log");
    let log = LogFile::open(&path).unwrap();
    let mode = || std::fs::metadata(&path).unwrap().mode() & 0o777;
    assert_eq!(mode(), 0o640, "made at setup");
    assert!(!log.is_open());
    assert_eq!(descriptors_on(&path), 0, "set up: no descriptor held");
    log.line("one");
    log.line("two");
    log.flush();
    assert!(log.is_open(), "open while lines come");
    assert_eq!(descriptors_on(&path), 1);
    log.line("three");
    // Quiet for CLOSE_AFTER (the flusher's thread may visit too): the
    // pending line is written, then the descriptor closed.
    for _ in 0..=super::super::flusher::CLOSE_TICKS {
        if !log.tick() {
            break;
        }
    }
    assert!(!log.is_open(), "closed after CLOSE_AFTER without a line");
    assert_eq!(descriptors_on(&path), 0);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\nthree\n");
    // Reopened by the next line with the rules of setup: loosened
    // meanwhile, it is 0640 again; a symlink planted meanwhile is moved
    // aside, never followed.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    log.line("four");
    log.flush();
    assert_eq!(mode(), 0o640);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "one\ntwo\nthree\nfour\n"
    );
    for _ in 0..=super::super::flusher::CLOSE_TICKS {
        if !log.tick() {
            break;
        }
    }
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::write(&elsewhere, "").unwrap();
    std::fs::rename(&path, tmp.path().join("kept")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
    log.line("five");
    drop(log);
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "five\n");
}

#[test]
fn a_reopen_ends_the_renamed_file_and_the_next_line_starts_a_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("shop.access.log");
    let rotated = tmp.path().join("shop.access.log.1");
    let log = LogFile::open(&path).unwrap();
    log.line("one");
    log.flush();
    std::fs::rename(&path, &rotated).unwrap();
    log.line("two");
    log.recreate().unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "",
        "made again, empty"
    );
    log.reopen();
    assert!(!log.is_open());
    log.line("three");
    log.flush();
    assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "one\ntwo\n");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
}

#[test]
fn a_group_given_while_closed_is_set_now_and_at_every_open() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("shop.error.log");
    let log = LogFile::open(&path).unwrap();
    let group = nix::unistd::getegid().as_raw() + u32::from(nix::unistd::geteuid().is_root());
    let gid = || std::fs::metadata(&path).unwrap().gid();
    log.give_to_group(Some(group)).unwrap();
    assert!(!log.is_open(), "given without keeping a descriptor");
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    assert_eq!(gid(), group);
    std::os::unix::fs::chown(&path, None, Some(0)).unwrap();
    log.line("x");
    log.flush();
    assert_eq!(gid(), group, "set again when the file is opened again");
}

#[test]
fn a_log_file_is_tightened_and_never_opened_through_a_link() {
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("shop.access.log");
    std::fs::write(&old, "old line\n").unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = LogFile::open(&old).unwrap();
    assert_eq!(std::fs::metadata(&old).unwrap().mode() & 0o777, 0o640);
    log.line("new line");
    drop(log);
    assert_eq!(
        std::fs::read_to_string(&old).unwrap(),
        "old line\nnew line\n"
    );

    // A symlink, a second hard link, a fifo, a directory: moved aside
    // (the link itself, never its target), and a new file made.
    let target = tmp.path().join("elsewhere");
    std::fs::write(&target, "target\n").unwrap();
    let symlink = tmp.path().join("sym.access.log");
    std::os::unix::fs::symlink(&target, &symlink).unwrap();
    let hard = tmp.path().join("hard.access.log");
    std::fs::hard_link(&target, &hard).unwrap();
    let fifo = tmp.path().join("fifo.access.log");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let dir = tmp.path().join("dir.access.log");
    std::fs::create_dir(&dir).unwrap();
    for path in [&symlink, &hard, &fifo, &dir] {
        let log = LogFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        log.line("fresh");
        drop(log);
        let meta = std::fs::symlink_metadata(path).unwrap();
        assert!(
            meta.is_file() && meta.nlink() == 1,
            "{}: {meta:?}",
            path.display()
        );
        assert_eq!(std::fs::read_to_string(path).unwrap(), "fresh\n");
        let name = path.file_name().unwrap().to_str().unwrap();
        let aside: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter(|n| n.starts_with(&format!("{name}.moved-")))
            .collect();
        assert_eq!(aside.len(), 1, "{name}: {aside:?}");
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "target\n");
    assert_eq!(std::fs::metadata(&target).unwrap().nlink(), 2, "kept aside");
}
