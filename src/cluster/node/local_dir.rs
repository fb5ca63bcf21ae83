//! The node's site directory (`config::cluster_vhosts_dir`): the last
//! applied state, one `NAME.toml` per site placed here (0600, in a 0700
//! directory), plus `singletons` (their names, one a line) so a node
//! started while etcd is down knows which sites to stop when it cannot
//! renew its lease. Every file is written whole (temporary file, then
//! rename): a load never sees half a file.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const SINGLETONS: &str = "singletons";

pub struct LocalDir {
    path: PathBuf,
}

impl LocalDir {
    pub fn new(path: PathBuf) -> LocalDir {
        LocalDir { path }
    }

    /// The sites in the directory (name → text) and the singletons among them.
    pub fn read(&self) -> (BTreeMap<String, String>, BTreeSet<String>) {
        let mut sites = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                let name = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned);
                if let (Some(name), true) = (name, path.extension().is_some_and(|e| e == "toml")) {
                    if let Ok(text) = std::fs::read_to_string(&path) {
                        sites.insert(name, text);
                    }
                }
            }
        }
        let singletons = std::fs::read_to_string(self.path.join(SINGLETONS))
            .unwrap_or_default()
            .lines()
            .filter(|n| sites.contains_key(*n))
            .map(str::to_owned)
            .collect();
        (sites, singletons)
    }

    /// Makes the directory hold exactly `files` (`now` is what it holds):
    /// changed and new files written, others removed.
    pub fn write(
        &self,
        files: &BTreeMap<String, String>,
        singletons: &BTreeSet<String>,
        now: &BTreeMap<String, String>,
    ) -> std::io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)?;
        for (name, text) in files {
            if now.get(name) != Some(text) {
                write_whole(&self.path, &format!("{name}.toml"), text)?;
            }
        }
        for name in now.keys().filter(|n| !files.contains_key(*n)) {
            match std::fs::remove_file(self.path.join(format!("{name}.toml"))) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let list: String = singletons.iter().map(|n| format!("{n}\n")).collect();
        write_whole(&self.path, SINGLETONS, &list)
    }
}

/// `dir/name` replaced whole by `text` (0600): a hidden temporary file
/// (no `.toml` ending: a load never reads it), synced, renamed over.
fn write_whole(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_removes_and_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LocalDir::new(tmp.path().join("cluster/vhosts"));
        let files = BTreeMap::from([
            ("a".to_owned(), "x".to_owned()),
            ("b".to_owned(), "y".to_owned()),
        ]);
        let singles = BTreeSet::from(["b".to_owned()]);
        dir.write(&files, &singles, &BTreeMap::new()).unwrap();
        assert_eq!(dir.read(), (files.clone(), singles));
        let fewer = BTreeMap::from([("a".to_owned(), "z".to_owned())]);
        dir.write(&fewer, &BTreeSet::new(), &files).unwrap();
        assert_eq!(dir.read(), (fewer, BTreeSet::new()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.path().join("cluster/vhosts/a.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
