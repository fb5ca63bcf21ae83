//! The state directory's per-site part: who owns what, and how root
//! creates directories inside a directory a site owns without being tricked
//! by a planted symlink.
//!
//! ```text
//! <state>/                    root 0711  (traversable, not listable)
//! <state>/sites/              root 0711
//! <state>/sites/<site>/       <user>:<group> 0700  the site's own state (php-fpm's log
//!                                                  and pid file, sessions)
//! <state>/sites/<site>/tmp/   <user>:<group> 0700  the site's temporary files: TMPDIR
//!                                                  of its processes, PHP's sys_temp_dir
//!                                                  and upload_tmp_dir
//! <state>/sockets/            root 0700  (see super::sockets)
//! ```
//!
//! Nothing in a site's directory needs its group: polyhost is root, and the
//! runtime sockets are elsewhere. So another site that shares the group
//! reaches none of it.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::SiteSetupError;
use crate::isolation::{self, SiteIdentity};

/// `state_dir` and `state_dir/sites` are 0711: site users can traverse them
/// to reach their own directory, but cannot list other sites.
/// `state_dir/sockets` is root's alone.
pub(super) fn prepare_state_dir(state_dir: &Path) {
    let sites = state_dir.join("sites");
    if let Err(e) = std::fs::create_dir_all(&sites) {
        tracing::warn!(dir = %sites.display(), error = %e, "cannot create the sites state directory");
        return;
    }
    for dir in [state_dir, sites.as_path()] {
        if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot set permissions");
        }
    }
    let sockets = super::sockets::sockets_root(state_dir);
    if let Err(e) = super::sockets::prepare_root_only_dir(&sockets) {
        tracing::warn!(dir = %sockets.display(), error = %e, "cannot prepare the sockets directory");
    }
}

/// `<state_dir>/sites/<site>`: mode 0700, owned by the site user and group,
/// with its private `tmp` inside (see the module docs).
pub(super) fn prepare_site_dir(
    dir: &Path,
    identity: Option<&SiteIdentity>,
) -> Result<(), SiteSetupError> {
    let err = |path: &Path, source| SiteSetupError::Dir {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| err(dir, e))?;
    let owner = match (identity, isolation::running_as_root()) {
        (Some(id), true) => {
            std::os::unix::fs::chown(dir, Some(id.uid), Some(id.gid)).map_err(|e| err(dir, e))?;
            Some((id.uid, id.gid))
        }
        _ => None,
    };
    let parent = std::fs::File::open(dir).map_err(|e| err(dir, e))?;
    let tmp = dir.join("tmp");
    ensure_owned_dir(&parent, Path::new("tmp"), owner, 0o700).map_err(|e| err(&tmp, e))
}

/// Creates `parent/name` if missing and gives it `owner` (when polyhost is
/// root) and `mode`, never following a symlink at `name`: `parent` may be a
/// site's own directory, where the site could have planted one (to make
/// root chown `/etc`). A `name` that is not a plain directory is refused.
pub fn ensure_owned_dir(
    parent: &std::fs::File,
    name: &Path,
    owner: Option<(u32, u32)>,
    mode: u32,
) -> io::Result<()> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{fchmod, mkdirat, Mode};
    let perms = Mode::from_bits_truncate(mode);
    match mkdirat(parent, name, perms) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let dir = openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        io::Error::other(format!(
            "{} is not a plain directory ({e}); refusing to touch it",
            name.display()
        ))
    })?;
    if let Some((uid, gid)) = owner {
        nix::unistd::fchown(&dir, Some(uid.into()), Some(gid.into()))?;
    }
    fchmod(&dir, perms)?;
    Ok(())
}
