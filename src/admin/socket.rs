//! The admin Unix socket: binding it safely and deciding who may talk to it.
//!
//! Binding: a leftover socket from a polyhost that died is removed, but only
//! if it is a socket and nothing answers on it; when a live process answers,
//! starting is refused. The socket is bound under a temporary name, given
//! its mode (0600, or 0660 with `[admin] group`) and group, and renamed into
//! place, so there is no moment at which it is open to others.
//!
//! Peers: the file mode is the first gate; the peer's credentials
//! (SO_PEERCRED) are the second: root, polyhost's own user, or a member of
//! `[admin] group` (primary or supplementary group of the connecting
//! process). Anyone else gets 403 on every request.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::unix::UCred;
use tokio::net::UnixListener;

use super::api::Access;
use super::AdminError;
use crate::config::AdminConfig;

/// Who may use the API besides root.
#[derive(Clone, Debug)]
pub struct PeerPolicy {
    own_uid: u32,
    group: Option<(String, u32)>,
}

impl PeerPolicy {
    pub fn new(group: Option<(String, u32)>) -> Self {
        PeerPolicy {
            own_uid: nix::unistd::geteuid().as_raw(),
            group,
        }
    }

    /// Root, polyhost's own user, or a member of the admin group.
    pub fn check(&self, cred: &UCred) -> Access {
        let uid = cred.uid();
        if uid == 0 || uid == self.own_uid {
            return Access::Granted;
        }
        if let Some((_, gid)) = &self.group {
            let supplementary = cred.pid().map(process_groups).unwrap_or_default();
            if cred.gid() == *gid || supplementary.contains(gid) {
                return Access::Granted;
            }
        }
        let fix = match &self.group {
            Some((name, _)) => format!("run it as root or as a member of group {name:?}"),
            None => "run it as root, or set [admin] group to let a group in".to_owned(),
        };
        tracing::warn!(uid, pid = ?cred.pid(), "admin API: refused a connection");
        Access::Denied(Arc::from(format!(
            "permission denied: uid {uid} may not use the admin API; {fix}"
        )))
    }
}

/// Supplementary groups of a process, from `/proc/<pid>/status`.
fn process_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Groups:").map(|g| {
                    g.split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect()
                })
            })
        })
        .unwrap_or_default()
}

/// Binds the admin socket (see the module doc).
pub async fn bind(config: &AdminConfig) -> Result<(UnixListener, PeerPolicy), AdminError> {
    let path = &config.socket;
    let io = |action: &'static str| {
        move |source| AdminError::Io {
            path: path.clone(),
            action,
            source,
        }
    };
    let group = admin_group(config)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io("cannot create its directory"))?;
    }
    remove_stale(path).await?;

    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "admin.sock".into());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io("cannot bind"))?;
    let placed = (|| {
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if let Some((_, gid)) = &group {
            std::os::unix::fs::chown(&tmp, None, Some(*gid))?;
        }
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("cannot set its mode, group or name")(e));
    }
    Ok((listener, PeerPolicy::new(group)))
}

/// `[admin] group`, resolved to its gid.
pub fn admin_group(config: &AdminConfig) -> Result<Option<(String, u32)>, AdminError> {
    match &config.group {
        Some(name) => {
            let gid = nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| AdminError::NoSuchGroup(name.clone()))?
                .gid
                .as_raw();
            Ok(Some((name.clone(), gid)))
        }
        None => Ok(None),
    }
}

/// Removes a socket nobody answers on; refuses when someone does.
async fn remove_stale(path: &PathBuf) -> Result<(), AdminError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(AdminError::Io {
                path: path.clone(),
                action: "cannot inspect it",
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(AdminError::NotASocket { path: path.clone() });
    }
    match tokio::net::UnixStream::connect(path).await {
        Ok(stream) => {
            let pid = stream
                .peer_cred()
                .ok()
                .and_then(|c| c.pid())
                .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
            Err(AdminError::InUse {
                path: path.clone(),
                pid,
            })
        }
        Err(_) => {
            tracing::info!(socket = %path.display(), "removing a stale admin socket");
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(source) => Err(AdminError::Io {
                    path: path.clone(),
                    action: "cannot remove the stale socket",
                    source,
                }),
            }
        }
    }
}

/// Removes the socket at shutdown.
pub fn remove(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}
