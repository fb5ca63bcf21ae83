//! The cgroup filesystem: reading and writing control files (one value
//! per write, never creating a file), listing sub-cgroups and their
//! processes, and removing directories while the kernel drains them.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{CgroupError, Result};

/// How long [`SiteCgroup::remove`](super::SiteCgroup::remove) retries
/// `rmdir` while the kernel drains.
const RMDIR_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { op, path, source }
}

pub(super) fn make_dir(dir: &Path) -> Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("create", dir)(e)),
    }
}

/// Writes a cgroup file in one `write` (cgroup files take one value per write).
/// Never creates the file: a missing control file is an error.
pub(crate) fn write_file(path: &Path, value: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io_err("open", path))?;
    f.write_all(value.as_bytes()).map_err(io_err("write", path))
}

pub(crate) fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(io_err("read", path))
}

/// Reads a file holding one number.
pub(crate) fn read_u64(path: &Path) -> Result<u64> {
    let text = read_file(path)?;
    text.trim().parse().map_err(|_| CgroupError::Io {
        op: "parse",
        path: path.to_path_buf(),
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a number: {text:?}"),
        ),
    })
}

/// A `pids.max` file's value: `max` (or no file: no pids controller) is
/// no limit. Like `memory.max`, a value that does not parse reads as none
/// rather than failing the whole [`Usage`] (which also counts OOM kills).
pub(crate) fn read_pids_max(path: &Path) -> Result<Option<u64>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().parse().ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// `key value` lines (memory.events, memory.oom_control, memory.stat).
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

pub(super) fn sub_dirs(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

pub(super) fn procs_recursive(dir: &Path, out: &mut BTreeSet<i32>) -> Result<()> {
    let file = dir.join("cgroup.procs");
    match std::fs::read_to_string(&file) {
        Ok(text) => out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read", &file)(e)),
    }
    for sub in sub_dirs(dir)? {
        procs_recursive(&dir.join(sub), out)?;
    }
    Ok(())
}

/// rmdir of the sub-cgroups (deepest first), then of `dir`.
pub(super) fn remove_tree(dir: &Path) -> Result<()> {
    for sub in sub_dirs(dir)? {
        remove_tree(&dir.join(sub))?;
    }
    rmdir_retrying(dir)
}

pub(super) fn rmdir_retrying(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + RMDIR_TIMEOUT;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(io_err("remove", dir)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_values() {
        let events = "low 0\nhigh 3\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(events, "oom_kill"), Some(1));
        assert_eq!(keyed_value(events, "oom"), Some(2));
        assert_eq!(keyed_value(events, "nope"), None);
    }
}
