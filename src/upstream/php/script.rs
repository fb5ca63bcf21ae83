//! Decides what a request path names inside the document root: a PHP script
//! to execute, something for the static upstream, a directory that needs its
//! trailing slash, or nothing.
//!
//! TODO(merge): use docroot::DocRoot (the static-files branch's shared
//! resolver, same rules) instead of [`resolve_path`] once both are merged.
//!
//! Invariants:
//! - The path is percent-decoded exactly once; `..`/`.` segments, NUL,
//!   backslash, an encoded slash and dotfile segments (except `.well-known`)
//!   are refused before the file system is touched.
//! - Every lookup is `openat2(root, rel, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`:
//!   the kernel refuses any path (`..`, absolute symlink, symlink chain) that
//!   would leave the root, so there is no check-then-open race.
//! - Only the exact path of an existing regular file named `*.php` is ever a
//!   script: no path-info guessing (`/a.jpg/x.php` never runs `a.jpg`).
//! - A file whose name ends in `.php` in any letter case is never
//!   [`Target::Static`]: PHP source is never served as text.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, SFlag};

use crate::upstream::UpstreamError;

/// What a request path resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Execute this script.
    Script {
        /// Absolute path handed to php-fpm (`SCRIPT_FILENAME`): root + `script_name`.
        filename: PathBuf,
        /// URL path of the script (`SCRIPT_NAME`), starting with `/`.
        script_name: String,
    },
    /// A directory with an `index.php`, requested without its trailing slash.
    AddSlash,
    /// An existing non-PHP file or a directory without `index.php`.
    Static,
    /// Nothing there, and no front controller takes it.
    NotFound,
}

/// Resolves `raw_path` (the URI path as the client sent it, still
/// percent-encoded) against `root`. Blocking: call from a blocking thread.
pub fn resolve(
    root: &Path,
    raw_path: &str,
    front_controller: Option<&str>,
) -> Result<Target, UpstreamError> {
    let decoded = decode(raw_path)?;
    let root_fd = open_dir(root).map_err(|e| {
        UpstreamError::Internal(format!("cannot open document root {}: {e}", root.display()))
    })?;
    let rel = decoded.trim_start_matches('/');
    let wants_dir = rel.is_empty() || rel.ends_with('/');
    let last = rel
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let php_name = last.to_ascii_lowercase().ends_with(".php");
    match lookup(&root_fd, rel)? {
        Some(Kind::File) if php_name => {
            if last.ends_with(".php") && !wants_dir {
                Ok(script(root, rel))
            } else {
                // `X.PHP`: php-fpm's security.limit_extensions would refuse
                // it, and it must never go out as text either.
                Err(UpstreamError::Forbidden(format!(
                    "{last:?} is not executable as PHP"
                )))
            }
        }
        Some(Kind::File) => Ok(Target::Static),
        Some(Kind::Dir) => {
            let index = if rel.is_empty() {
                "index.php".to_owned()
            } else {
                format!("{}/index.php", rel.trim_end_matches('/'))
            };
            match lookup(&root_fd, &index)? {
                Some(Kind::File) if wants_dir => Ok(script(root, &index)),
                Some(Kind::File) => Ok(Target::AddSlash),
                _ => Ok(Target::Static),
            }
        }
        Some(Kind::Other) => Err(UpstreamError::Forbidden(format!(
            "{rel:?} is not a regular file"
        ))),
        None if php_name => Ok(Target::NotFound),
        None => match front_controller {
            Some(fc) => match lookup(&root_fd, fc)? {
                Some(Kind::File) => Ok(script(root, fc)),
                _ => Ok(Target::NotFound),
            },
            None => Ok(Target::NotFound),
        },
    }
}

fn script(root: &Path, rel: &str) -> Target {
    Target::Script {
        filename: root.join(rel),
        script_name: format!("/{rel}"),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Other,
}

fn open_dir(root: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(root)?;
    Ok(OwnedFd::from(dir))
}

/// `Ok(None)`: nothing there (or a file where a directory was needed).
fn lookup(root: &OwnedFd, rel: &str) -> Result<Option<Kind>, UpstreamError> {
    let rel = if rel.is_empty() { "." } else { rel };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(root, OsStr::from_bytes(rel.as_bytes()), how) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ENAMETOOLONG) => return Ok(None),
        Err(Errno::EXDEV | Errno::ELOOP) => {
            return Err(UpstreamError::Forbidden(format!(
                "{rel:?} leads outside the document root"
            )))
        }
        Err(Errno::EACCES | Errno::EPERM) => {
            return Err(UpstreamError::Forbidden(format!(
                "{rel:?}: permission denied"
            )))
        }
        Err(e) => return Err(UpstreamError::Io(e.into())),
    };
    let st = fstat(&fd);
    drop(fd);
    let st = st.map_err(|e| UpstreamError::Io(e.into()))?;
    let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    Ok(Some(if fmt == SFlag::S_IFREG {
        Kind::File
    } else if fmt == SFlag::S_IFDIR {
        Kind::Dir
    } else {
        Kind::Other
    }))
}

/// Percent-decodes the path once and refuses what may not name a file.
pub fn decode(raw: &str) -> Result<String, UpstreamError> {
    let lower = raw.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || raw.contains('\\') {
        return Err(UpstreamError::BadRequest(
            "encoded slash or backslash in path".into(),
        ));
    }
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    if bytes.contains(&0) {
        return Err(UpstreamError::BadRequest("NUL in path".into()));
    }
    let decoded = String::from_utf8(bytes)
        .map_err(|_| UpstreamError::BadRequest("path is not UTF-8".into()))?;
    if !decoded.starts_with('/') {
        return Err(UpstreamError::BadRequest(
            "path does not start with /".into(),
        ));
    }
    for seg in decoded.split('/') {
        if seg == "." || seg == ".." {
            return Err(UpstreamError::Forbidden("dot segment in path".into()));
        }
        if seg.starts_with('.') && seg != ".well-known" {
            return Err(UpstreamError::Forbidden("dotfile in path".into()));
        }
    }
    if decoded.contains("//") {
        return Err(UpstreamError::BadRequest("empty path segment".into()));
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, want: Result<&str, u16>) {
        match (decode(raw), want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{raw}"),
            (Err(e), Err(status)) => assert_eq!(e.status().as_u16(), status, "{raw}: {e}"),
            (got, want) => panic!("{raw}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn decoding() {
        check("/a%20b.php", Ok("/a b.php"));
        check("/%2e%2e/etc/passwd", Err(403));
        check("/a/../b", Err(403));
        check("/.env", Err(403));
        check("/.well-known/x", Ok("/.well-known/x"));
        check("/a%2fb", Err(400));
        check("/a%5Cb", Err(400));
        check("/a\\b", Err(400));
        check("/x.php%00.txt", Err(400));
        check("/%25252e", Ok("/%252e")); // decoded once only
        check("/%ff", Err(400));
        check("//x", Err(400));
    }

    #[test]
    fn resolving() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(root.join("plain")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("a.php"), "<?php").unwrap();
        std::fs::write(root.join("A.PHP"), "<?php").unwrap();
        std::fs::write(root.join("index.php"), "<?php").unwrap();
        std::fs::write(root.join("sub/index.php"), "<?php").unwrap();
        std::fs::write(root.join("img.jpg"), "x").unwrap();
        std::fs::write(outside.join("evil.php"), "<?php").unwrap();
        std::os::unix::fs::symlink(outside.join("evil.php"), root.join("evil.php")).unwrap();
        std::os::unix::fs::symlink("../outside/evil.php", root.join("rel.php")).unwrap();
        std::os::unix::fs::symlink("a.php", root.join("inside.php")).unwrap();

        let s = |rel: &str| {
            Ok(Target::Script {
                filename: root.join(rel),
                script_name: format!("/{rel}"),
            })
        };
        let cases: Vec<(&str, Option<&str>, Result<Target, u16>)> = vec![
            ("/a.php", None, s("a.php")),
            ("/inside.php", None, s("inside.php")),
            ("/", None, s("index.php")),
            ("/sub/", None, s("sub/index.php")),
            ("/sub", None, Ok(Target::AddSlash)),
            ("/plain/", None, Ok(Target::Static)),
            ("/img.jpg", None, Ok(Target::Static)),
            ("/img.jpg/x.php", None, Ok(Target::NotFound)),
            ("/img.jpg/x.php", Some("index.php"), Ok(Target::NotFound)),
            ("/a.php/", None, Ok(Target::NotFound)),
            ("/A.PHP", None, Err(403)),
            ("/evil.php", None, Err(403)),
            ("/rel.php", None, Err(403)),
            ("/missing.php", Some("index.php"), Ok(Target::NotFound)),
            ("/pretty/url", Some("index.php"), s("index.php")),
            ("/pretty/url", None, Ok(Target::NotFound)),
        ];
        for (path, fc, want) in cases {
            let got = resolve(&root, path, fc).map_err(|e| e.status().as_u16());
            assert_eq!(got, want, "{path} (front controller {fc:?})");
        }
    }
}
