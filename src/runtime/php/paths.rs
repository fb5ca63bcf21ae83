//! Where a site's php-fpm pool keeps its files: the per-site paths under
//! polyhost's state directory ([`PhpPoolPaths`], created with the owners and
//! modes of "Files and permissions" in `super::pool_config`), the system's
//! PHP library directories every site may read ([`system_include_dirs`]),
//! and which php-fpm binary runs ([`find_fpm_binary`]).

use std::path::{Path, PathBuf};

use crate::config::SiteName;
use crate::supervisor::site_dirs::ensure_owned_dir;

/// Per-site paths of a php-fpm pool under polyhost's state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhpPoolPaths {
    /// `<state>/sites/<site>`: the site's own state, owned by the site user, 0700.
    pub site_dir: PathBuf,
    /// The pool's FastCGI socket (`listen`). polyhost replaces the default,
    /// `<site_dir>/php.sock` (for a php-fpm that binds its own socket, as in
    /// tests), with the socket it bound for the master.
    pub socket: PathBuf,
    /// `<site_dir>/php-fpm.pid`.
    pub pid: PathBuf,
    /// `<site_dir>/php-fpm.log`: the master's own error log.
    pub fpm_log: PathBuf,
    /// `<site_dir>/tmp`: uploads and temp files.
    pub tmp: PathBuf,
    /// `<site_dir>/sessions`: PHP session files.
    pub sessions: PathBuf,
}

impl PhpPoolPaths {
    pub fn new(state_dir: &Path, site: &SiteName) -> Self {
        let sites = state_dir.join("sites");
        let site_dir = sites.join(site.as_str());
        PhpPoolPaths {
            socket: site_dir.join("php.sock"),
            pid: site_dir.join("php-fpm.pid"),
            fpm_log: site_dir.join("php-fpm.log"),
            tmp: site_dir.join("tmp"),
            sessions: site_dir.join("sessions"),
            site_dir,
        }
    }

    /// Creates the directories with the owners and modes of the module doc
    /// (must run as root). Idempotent.
    ///
    /// `sites/` and `sites/<site>` sit in root-owned directories, so their
    /// paths can be used as they are. `tmp` and `sessions` sit in the
    /// site-owned `sites/<site>`, where the site user could have replaced
    /// them with symlinks: they are created and changed only through
    /// [`ensure_owned_dir`].
    pub fn create_dirs(&self, uid: u32, gid: u32) -> std::io::Result<()> {
        use std::os::unix::fs::{chown, PermissionsExt};
        let sites = self.site_dir.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(sites)?;
        std::fs::set_permissions(sites, std::fs::Permissions::from_mode(0o711))?;
        std::fs::create_dir_all(&self.site_dir)?;
        chown(&self.site_dir, Some(uid), Some(gid))?;
        std::fs::set_permissions(&self.site_dir, std::fs::Permissions::from_mode(0o700))?;
        let site_dir = std::fs::File::open(&self.site_dir)?;
        for dir in [&self.tmp, &self.sessions] {
            let name = dir
                .file_name()
                .ok_or_else(|| std::io::Error::other("a site directory without a name"))?;
            ensure_owned_dir(&site_dir, Path::new(name), Some((uid, gid)), 0o700)?;
        }
        Ok(())
    }
}

/// The directories distributions install PHP libraries into, which PHP's
/// compiled-in `include_path` names: `/usr/share/php` (Debian, Ubuntu,
/// Fedora, RHEL: PEAR and the `php-*` library packages) and
/// `/usr/share/pear` (Fedora, RHEL, Arch).
pub const SYSTEM_INCLUDE_CANDIDATES: [&str; 2] = ["/usr/share/php", "/usr/share/pear"];

/// Those of [`SYSTEM_INCLUDE_CANDIDATES`] that are system code, read-only to
/// every site: existing directories that are, like every directory above
/// them, owned by root and writable by no one else (no symlink on the way).
/// A default `open_basedir` adds them, so packaged libraries (`require
/// 'php-gettext/...'`) load.
pub fn system_include_dirs() -> Vec<PathBuf> {
    SYSTEM_INCLUDE_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .filter(|dir| root_only_writable(dir))
        .collect()
}

/// `dir` and each directory above it: a real directory (no symlink), owned
/// by root, without group or other write permission.
fn root_only_writable(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    dir.is_absolute()
        && dir.ancestors().all(|d| {
            std::fs::symlink_metadata(d)
                .is_ok_and(|m| m.is_dir() && m.uid() == 0 && m.mode() & 0o022 == 0)
        })
}

/// The newest `php-fpm*` binary in `/usr/sbin` (`php-fpm8.3` before
/// `php-fpm8.2`, a versioned one before a plain `php-fpm`). Asked by every
/// PHP site built: the answer is kept while `/usr/sbin` is unchanged (its
/// modification and change times: a package installed or removed).
pub fn find_fpm_binary() -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    type Kept = Option<((u64, u64, i64, i64, i64, i64), Option<PathBuf>)>;
    static KEPT: std::sync::Mutex<Kept> = std::sync::Mutex::new(None);
    let dir = Path::new("/usr/sbin");
    let stamp = std::fs::metadata(dir).ok().map(|m| {
        (
            m.dev(),
            m.ino(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        )
    });
    let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    if let (Some(stamp), Some((at, found))) = (stamp, kept.as_ref()) {
        if stamp == *at {
            return found.clone();
        }
    }
    let found = find_fpm_in(dir);
    *kept = stamp.map(|stamp| (stamp, found.clone()));
    found
}

/// [`find_fpm_binary`] in another directory (tests).
pub fn find_fpm_in(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let names = std::fs::read_dir(dir).ok()?.filter_map(|e| {
        let e = e.ok()?;
        // Only the candidates are looked at (`/usr/sbin` holds hundreds).
        if !e.file_name().as_encoded_bytes().starts_with(b"php-fpm") {
            return None;
        }
        let meta = std::fs::metadata(e.path()).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0)
            .then(|| e.file_name().into_string().ok())?
    });
    newest_fpm(names).map(|n| dir.join(n))
}

fn newest_fpm(names: impl Iterator<Item = String>) -> Option<String> {
    names
        .filter_map(|n| {
            let v = n.strip_prefix("php-fpm")?;
            let version: Option<Vec<u32>> = if v.is_empty() {
                Some(vec![])
            } else {
                v.split('.').map(|p| p.parse().ok()).collect()
            };
            Some((version?, n))
        })
        .max()
        .map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_include_dirs_are_root_only_writable() {
        use std::os::unix::fs::PermissionsExt;
        assert!(root_only_writable(Path::new("/usr")));
        assert!(!root_only_writable(Path::new("/tmp")), "world-writable");
        assert!(!root_only_writable(Path::new("/nonexistent-polyhost")));
        assert!(!root_only_writable(Path::new("usr/share")), "relative");
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let lib = dir.path().join("lib");
        std::fs::create_dir(&lib).unwrap();
        assert!(!root_only_writable(&lib), "below /tmp");
        for d in system_include_dirs() {
            assert!(SYSTEM_INCLUDE_CANDIDATES.contains(&d.to_str().unwrap()));
        }
    }

    #[test]
    fn newest_fpm_binary() {
        let pick = |names: &[&str]| newest_fpm(names.iter().map(|s| s.to_string()));
        assert_eq!(
            pick(&["php-fpm8.2", "php-fpm8.3", "php"]).as_deref(),
            Some("php-fpm8.3")
        );
        assert_eq!(
            pick(&["php-fpm8.10", "php-fpm8.9"]).as_deref(),
            Some("php-fpm8.10")
        );
        assert_eq!(
            pick(&["php-fpm", "php-fpm7.4"]).as_deref(),
            Some("php-fpm7.4")
        );
        assert_eq!(pick(&["php-fpm"]).as_deref(), Some("php-fpm"));
        assert_eq!(pick(&["php-fpm8.2.bak", "php8.2"]), None);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find_fpm_in(dir.path()), None);
    }

    #[test]
    fn create_dirs_refuses_a_site_planted_symlink_and_leaves_its_target_alone() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let state = tempfile::tempdir().unwrap();
        let victim = tempfile::tempdir().unwrap();
        std::fs::set_permissions(victim.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let before = std::fs::metadata(victim.path()).unwrap();
        let paths = PhpPoolPaths::new(state.path(), &SiteName::parse("blog").unwrap());
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        paths.create_dirs(uid, gid).unwrap();
        // The site owner swaps its tmp dir for a symlink to a directory of someone else.
        std::fs::remove_dir(&paths.tmp).unwrap();
        std::os::unix::fs::symlink(victim.path(), &paths.tmp).unwrap();
        let err = paths.create_dirs(4242, 4242).unwrap_err();
        assert!(err.to_string().contains("not a plain directory"), "{err}");
        let after = std::fs::metadata(victim.path()).unwrap();
        assert_eq!(
            (after.uid(), after.gid(), after.mode()),
            (before.uid(), before.gid(), before.mode())
        );
    }
}
