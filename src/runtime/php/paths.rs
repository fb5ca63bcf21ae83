//! Where a site's php-fpm pool keeps its files: the per-site paths under
//! polyhost's state directory ([`PhpPoolPaths`], created with the owners and
//! modes of "Files and permissions" in `super::pool_config`), and which
//! php-fpm binary runs ([`find_fpm_binary`]).

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

/// The newest `php-fpm*` binary in `/usr/sbin` (`php-fpm8.3` before
/// `php-fpm8.2`, a versioned one before a plain `php-fpm`).
pub fn find_fpm_binary() -> Option<PathBuf> {
    find_fpm_in(Path::new("/usr/sbin"))
}

/// [`find_fpm_binary`] in another directory (tests).
pub fn find_fpm_in(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let names = std::fs::read_dir(dir).ok()?.filter_map(|e| {
        let e = e.ok()?;
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
