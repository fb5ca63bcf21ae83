//! Bearer tokens (`admin.token`, `metrics.token`) and the files that hold
//! them. A token is only as secret as the file it is in: every file that
//! holds one — a layer of the configuration (`polyhost.toml`, a fragment) or
//! a `token_file` — must be private, or site code (any local user) could read
//! it and drive the admin API over TCP. The rule, checked by `polyhost
//! check`, at start and on every reload:
//!
//! - owned by root (or by the user polyhost runs as);
//! - no permission for others;
//! - group permissions only for group root (gid 0) or the `[admin] group`,
//!   whose members may use the admin socket anyway.
//!
//! Tokens set through the environment (`POLYHOST_ADMIN__TOKEN`) need no
//! file: only root (the service's owner) reads a root process's environment.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use figment::providers::{Format, Toml};
use figment::Figment;

use super::error::{ConfigError, ConfigErrors};

/// The keys whose values are secrets.
pub(crate) const INLINE_TOKENS: [&str; 4] = [
    "admin.token",
    "metrics.token",
    "acme.eab_hmac_key",
    "cluster.password",
];

/// The longest token file read (a token is a line, not a document).
const MAX_TOKEN_FILE: u64 = 4096;

/// Refuses every layer file (main file, fragments) that holds a token and
/// that someone other than root (or the `[admin] group`) could read. The
/// error names the file and the key.
pub(crate) fn check_layers(files: &[&Path], admin_group: Option<&str>, errors: &mut ConfigErrors) {
    for &file in files {
        let layer = Figment::from(Toml::file_exact(file));
        for key in INLINE_TOKENS {
            if layer.find_value(key).is_err() {
                continue;
            }
            if let Err(why) = private(file, admin_group) {
                let env = format!("POLYHOST_{}", key.to_ascii_uppercase().replace('.', "__"));
                let file_key = if key.starts_with("acme.") {
                    String::new()
                } else if key == "cluster.password" {
                    "cluster.password_file or ".to_owned()
                } else {
                    format!("{key}_file or ")
                };
                errors.push(ConfigError::in_file(
                    file,
                    key,
                    format!(
                        "the token is in a file that {why}: site code could read it; make the file private \
                         (chmod 600, owner root; or 640 with group root or the [admin] group), \
                         or move the token to {file_key}to the environment ({env})"
                    ),
                ));
            }
        }
    }
}

/// Reads a `token_file`: private (see the module doc), one line of UTF-8,
/// surrounding whitespace trimmed, not empty.
pub(crate) fn read_token_file(path: &Path, admin_group: Option<&str>) -> Result<String, String> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if let Err(why) = private_meta(&meta, admin_group) {
        return Err(format!(
            "{} {why}: site code could read the token; make it private (chmod 600, owner root; \
             or 640 with group root or the [admin] group)",
            path.display()
        ));
    }
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| {
            format!(
                "cannot read {}: {e} (a token is one line of text)",
                path.display()
            )
        })?;
    if text.len() as u64 > MAX_TOKEN_FILE {
        return Err(format!(
            "{} is longer than {MAX_TOKEN_FILE} bytes; it should hold only the token",
            path.display()
        ));
    }
    let token = text.trim();
    if token.is_empty() {
        return Err(format!(
            "{} is empty; write the token into it",
            path.display()
        ));
    }
    if token.contains(['\n', '\r']) {
        return Err(format!(
            "{} holds more than one line; it should hold only the token",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

fn private(path: &Path, admin_group: Option<&str>) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot be checked ({e})"))?;
    private_meta(&meta, admin_group)
}

/// `Err(why)` when someone besides root (or polyhost's user, or the admin
/// group) may read or write the file.
fn private_meta(meta: &std::fs::Metadata, admin_group: Option<&str>) -> Result<(), String> {
    let mode = meta.mode() & 0o777;
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(format!("is owned by {}", user_name(meta.uid())));
    }
    if mode & 0o006 != 0 {
        return Err(format!("every user can read or write (mode {mode:04o})"));
    }
    let admin_gid = admin_group
        .and_then(|g| nix::unistd::Group::from_name(g).ok().flatten())
        .map(|g| g.gid.as_raw());
    if mode & 0o060 != 0 && meta.gid() != 0 && Some(meta.gid()) != admin_gid {
        return Err(format!(
            "group `{}` can read or write (mode {mode:04o})",
            group_name(meta.gid())
        ));
    }
    Ok(())
}

fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("user `{}` (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

fn group_name(gid: u32) -> String {
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        Ok(Some(g)) => g.name,
        _ => gid.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn with_mode(text: &str, mode: u32) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        f
    }

    #[test]
    fn a_private_token_file_is_read_and_trimmed() {
        let f = with_mode("  s3cret\n", 0o600);
        assert_eq!(read_token_file(f.path(), None).unwrap(), "s3cret");
    }

    #[test]
    fn open_empty_and_multi_line_files_are_refused() {
        let f = with_mode("s3cret\n", 0o644);
        let e = read_token_file(f.path(), None).unwrap_err();
        assert!(
            e.contains("every user can read or write (mode 0644)"),
            "{e}"
        );
        let f = with_mode("s3cret\n", 0o602);
        assert!(read_token_file(f.path(), None).is_err());
        let f = with_mode("\n", 0o600);
        assert!(read_token_file(f.path(), None)
            .unwrap_err()
            .contains("is empty"));
        let f = with_mode("a\nb\n", 0o600);
        assert!(read_token_file(f.path(), None)
            .unwrap_err()
            .contains("more than one line"));
        let f = with_mode(&"x".repeat(5000), 0o600);
        assert!(read_token_file(f.path(), None)
            .unwrap_err()
            .contains("longer than"));
    }

    #[test]
    fn group_read_is_fine_only_for_the_root_group() {
        if !nix::unistd::geteuid().is_root() {
            return; // chown needs root
        }
        let f = with_mode("s3cret\n", 0o640);
        std::os::unix::fs::chown(f.path(), Some(0), Some(0)).unwrap();
        assert_eq!(read_token_file(f.path(), None).unwrap(), "s3cret");
        // nogroup (65534 on Debian) is some other group.
        std::os::unix::fs::chown(f.path(), Some(0), Some(65534)).unwrap();
        let e = read_token_file(f.path(), None).unwrap_err();
        assert!(e.contains("can read or write (mode 0640)"), "{e}");
        assert_eq!(
            read_token_file(f.path(), Some(&group_name(65534))).unwrap(),
            "s3cret",
            "the [admin] group may read it"
        );
    }
}
