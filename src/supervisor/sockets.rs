//! The supervisor owns every runtime socket: it binds each process's
//! listening Unix socket itself, in a directory only root can reach, and
//! hands the descriptor to the process it starts (see
//! [`Launcher::listen`](super::Launcher::listen) for who calls `listen(2)`).
//!
//! ```text
//! <state>/sockets/                       root:root 0700
//! <state>/sockets/<site>/                root:root 0700
//! <state>/sockets/<site>/<runtime>-<instance><generation>-<id>.sock   root 0600
//! ```
//!
//! Why: a socket a site's code can connect to is a way around the limits
//! polyhost sets for it (php-fpm takes `PHP_ADMIN_VALUE` from whoever
//! connects, so a script connecting to its own pool could lift its
//! `open_basedir`), and a socket reachable through a group lets a site that
//! shares that group run code as another. No site user can traverse
//! `sockets/`, whatever its groups; polyhost (root) needs no permission bits.
//! Connecting through `/proc/<pid>/fd/N` does not work either: it names the
//! socket's own inode, which no address is bound to.
//!
//! With a router process (`privsep`), the router (not root) must connect
//! to these sockets: it reaches them through the 0700 directories with
//! `CAP_DAC_READ_SEARCH`, and each socket is made the router user's
//! (`0600 router_user`, [`set_router_owner`]), since `connect(2)` needs write
//! permission on the socket itself. Site users still reach none.
//!
//! polyhost closes its copy of a listener once the process has started: when
//! the process dies, the listener dies with it and a connection is refused at
//! once (502/503), instead of waiting in a backlog nobody accepts from.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};

use super::launcher::Listen;
use crate::config::{ConfigError, ConfigErrors, SiteConfig, SiteName};

/// The longest path a Unix socket can be bound at (`sun_path` holds 108
/// bytes with its NUL).
const SOCKET_PATH_MAX: usize = 107;

/// What a socket's name adds to its site's directory, at most:
/// `/python-<instance><generation>-<id>.sock` with the instance's tag (one
/// byte, `supervisor::instance`), a generation and an id of up to 8 digits
/// each (a hundred million reloads, restarts or processes).
const SOCKET_NAME_ROOM: usize = "/python-".len() + 1 + 8 + 1 + 8 + ".sock".len();

/// No router user: the sockets stay root's.
const NO_ROUTER: u32 = u32::MAX;

/// The uid every runtime socket is given to (the router process's), or
/// [`NO_ROUTER`]. Process-wide: it is set once, before any site starts, by
/// the privilege-separated supervisor.
static ROUTER_OWNER: AtomicU32 = AtomicU32::new(NO_ROUTER);

/// From now on every runtime socket [`bind`] makes is owned by `uid` (the
/// router process's user), mode 0600. Call before any site starts.
pub fn set_router_owner(uid: u32) {
    ROUTER_OWNER.store(uid, Ordering::SeqCst);
}

fn router_owner() -> Option<u32> {
    Some(ROUTER_OWNER.load(Ordering::SeqCst)).filter(|&uid| uid != NO_ROUTER)
}

/// Every site that runs code can bind its runtime sockets under
/// `state_dir`: refused before anything starts (`check`, `serve`, reload)
/// rather than found as a crash loop of "File name too long".
pub fn check_paths(
    state_dir: &Path,
    sites: &std::collections::BTreeMap<SiteName, std::sync::Arc<SiteConfig>>,
) -> ConfigErrors {
    let mut errors = ConfigErrors::default();
    for site in sites.values().filter(|s| s.runs_code()) {
        let dir = sockets_root(state_dir).join(site.name.as_str());
        let longest = dir.as_os_str().len() + SOCKET_NAME_ROOM;
        if longest > SOCKET_PATH_MAX {
            errors.push(ConfigError::in_file(
                &site.file,
                "",
                format!(
                    "its runtime sockets in {} would have paths of up to {longest} bytes, \
                     over the {SOCKET_PATH_MAX} a Unix socket allows: use a shorter state_dir \
                     (polyhost.toml) or a shorter site (file) name",
                    dir.display()
                ),
            ));
        }
    }
    errors
}

/// `<state>/sockets`: the parent of every site's socket directory.
pub fn sockets_root(state_dir: &Path) -> PathBuf {
    state_dir.join("sockets")
}

/// Creates `dir` (and missing parents) as a directory only root can use:
/// owned by root, mode 0700, whatever it was before.
pub fn prepare_root_only_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other("not a directory"));
    }
    if crate::isolation::running_as_root() {
        std::os::unix::fs::chown(dir, Some(0), Some(0))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Binds a Unix stream socket at `path` (replacing a stale one) and, when
/// `listen` says polyhost listens, starts listening. The descriptor is
/// close-on-exec: only the process it is handed to inherits it.
pub fn bind(path: &Path, listen: &Listen) -> io::Result<OwnedFd> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    // Root ignores the mode, and the directory keeps everyone else out; 0600
    // still says whose socket it is. The router process connects as its own
    // user (with a search capability for the directories only): the socket
    // is its.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if let Some(uid) = router_owner() {
        std::os::unix::fs::lchown(path, Some(uid), Some(0))?;
    }
    if let Listen::Supervisor { backlog, .. } = listen {
        let backlog =
            Backlog::new(i32::try_from(*backlog).unwrap_or(i32::MAX)).unwrap_or(Backlog::MAXCONN);
        socket::listen(&fd, backlog)?;
    }
    Ok(fd)
}

/// Sockets of a previous run (killed with SIGKILL) are removed before
/// anything starts; so are the files an older polyhost kept in the sites'
/// own directories (sockets, and generated php-fpm configs that could hold
/// a site's secrets).
pub fn remove_stale(state_dir: &Path) {
    let remove_matching = |dir: &Path, ext: &str| {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for f in entries.filter_map(Result::ok) {
            let path = f.path();
            let name = f.file_name();
            if name.to_string_lossy().ends_with(ext) {
                // unlink never follows a symlink: a site-planted link is removed, not its target.
                let _ = std::fs::remove_file(&path);
            }
        }
    };
    let subdirs = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    };
    for dir in subdirs(&sockets_root(state_dir)) {
        remove_matching(&dir, ".sock");
    }
    let sites = state_dir.join("sites");
    for dir in subdirs(&sites) {
        remove_matching(&dir, ".sock");
    }
    remove_matching(&sites, ".php-fpm.conf");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::launcher::Probe;

    #[test]
    fn bound_sockets_listen_only_when_polyhost_listens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        std::fs::write(&path, "stale").unwrap();
        let bound = bind(&path, &Listen::Process).unwrap();
        assert_eq!(
            std::os::unix::net::UnixStream::connect(&path)
                .unwrap_err()
                .kind(),
            io::ErrorKind::ConnectionRefused,
            "bound, not listening"
        );
        drop(bound);
        let listening = bind(
            &path,
            &Listen::Supervisor {
                backlog: 16,
                probe: Probe::FastCgiGetValues,
            },
        )
        .unwrap();
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        let flags = nix::fcntl::fcntl(&listening, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0, "close-on-exec in polyhost");
    }

    #[test]
    fn stale_files_are_removed_and_others_kept() {
        let state = tempfile::tempdir().unwrap();
        let s = state.path();
        for d in ["sockets/a", "sites/a"] {
            std::fs::create_dir_all(s.join(d)).unwrap();
        }
        for f in [
            "sockets/a/php-1-1.sock",
            "sites/a/python-1-2.sock",
            "sites/a.php-1-1.php-fpm.conf",
            "sites/a/php-fpm.log",
            "sites/keep.txt",
        ] {
            std::fs::write(s.join(f), "").unwrap();
        }
        remove_stale(s);
        for (f, kept) in [
            ("sockets/a/php-1-1.sock", false),
            ("sites/a/python-1-2.sock", false),
            ("sites/a.php-1-1.php-fpm.conf", false),
            ("sites/a/php-fpm.log", true),
            ("sites/keep.txt", true),
        ] {
            assert_eq!(s.join(f).exists(), kept, "{f}");
        }
    }
}
