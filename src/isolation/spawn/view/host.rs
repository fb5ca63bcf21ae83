//! What the view takes from the host, looked up in the parent: the `/etc`
//! names it holds, the resolution of a path through the symlinks the site
//! cannot have planted, and the generated `passwd` and `group`.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use super::{at, exists, ETC, ETC_PREFIXES};
use crate::isolation::SiteIdentity;

/// The names under `/etc` a view holds: [`ETC`] and those starting with
/// one of [`ETC_PREFIXES`], that the host has.
pub(super) fn etc_names() -> Vec<String> {
    let mut names: Vec<String> = ETC
        .iter()
        .filter(|n| exists(&Path::new("/etc").join(n)))
        .map(|n| n.to_string())
        .collect();
    if let Ok(dir) = std::fs::read_dir("/etc") {
        names.extend(dir.filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            ETC_PREFIXES
                .iter()
                .any(|p| name.starts_with(p))
                .then_some(name)
        }));
    }
    names
}

/// `path` with every symlink on the way followed (each one reported to
/// `link` with its text), refusing a symlink the site may have planted
/// (see [`trusted_link`]) and more than 32 of them.
pub(super) fn resolve(path: &Path, link: &mut dyn FnMut(&Path, &Path)) -> io::Result<PathBuf> {
    let mut pending: Vec<PathBuf> = vec![path.to_path_buf()];
    let mut real = PathBuf::from("/");
    let mut hops = 0;
    while let Some(next) = pending.pop() {
        for (i, c) in next.components().enumerate() {
            match c {
                Component::RootDir => real = PathBuf::from("/"),
                Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => drop(real.pop()),
                Component::Normal(name) => {
                    let candidate = real.join(name);
                    let meta =
                        std::fs::symlink_metadata(&candidate).map_err(|e| at(&candidate, e))?;
                    if !meta.file_type().is_symlink() {
                        real = candidate;
                        continue;
                    }
                    hops += 1;
                    if hops > 32 || !trusted_link(&candidate, &meta) {
                        return Err(at(&candidate, untrusted()));
                    }
                    let text = std::fs::read_link(&candidate).map_err(|e| at(&candidate, e))?;
                    link(&candidate, &text);
                    let rest: PathBuf = next.components().skip(i + 1).collect();
                    pending.push(real.join(&text).join(rest));
                    break;
                }
            }
        }
    }
    Ok(real)
}

/// A symlink the site cannot have planted: owned by root, in a directory
/// owned by root that neither group nor others may write.
fn trusted_link(link: &Path, meta: &std::fs::Metadata) -> bool {
    meta.uid() == 0
        && link.parent().is_some_and(|dir| {
            std::fs::symlink_metadata(dir).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0)
        })
}

fn untrusted() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "a symlink the site could have planted (or too many): configure the real path",
    )
}

/// `passwd` and `group` contents for the view.
pub(super) fn users_files(identity: Option<&SiteIdentity>) -> (String, String) {
    let mut passwd = String::from("root:x:0:0:root:/root:/usr/sbin/nologin\n");
    let mut group = String::from("root:x:0:\n");
    if let Some(id) = identity {
        let group_name = nix::unistd::Group::from_gid(id.gid.into())
            .ok()
            .flatten()
            .map_or_else(|| id.user.clone(), |g| g.name);
        passwd.push_str(&format!(
            "{0}:x:{1}:{2}:{0}:{3}:/usr/sbin/nologin\n",
            id.user,
            id.uid,
            id.gid,
            id.home.display()
        ));
        if id.gid != 65534 {
            group.push_str(&format!("{group_name}:x:{}:\n", id.gid));
        }
    }
    passwd.push_str("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
    group.push_str("nogroup:x:65534:\n");
    (passwd, group)
}
