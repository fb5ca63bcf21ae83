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
//! - Nothing is cached: every request looks at the file system as it is now,
//!   so a deleted, replaced or re-linked file is never run from a stale
//!   answer. [`resolve_cached`] makes that cheap enough for the async
//!   threads: it asks the kernel to answer from its dentry cache only
//!   (`RESOLVE_CACHED`) and gives up rather than wait for a disk or a
//!   network file system; [`resolve`] then does the same lookup, blocking.
//!   The type of what was found is read with `statx(STATX_TYPE,
//!   STATX_DONT_SYNC)`, which NFS and FUSE answer without a round trip.
//! - Only the exact path of an existing regular file whose name ends in one
//!   of the site's `php.extensions` (`.php` by default, exact letter case)
//!   is ever a script: no path-info guessing (`/a.jpg/x.php` never runs
//!   `a.jpg`).
//! - A file whose name ends in a PHP source extension ([`PHP_SOURCE`] or one
//!   of `php.extensions`, any letter case), or in one of those followed by a
//!   backup ending ([`BACKUP`]: `wp-config.php~`, `config.php.bak`), is never
//!   [`Target::Static`]: PHP source is never served as text. What is not
//!   executed is refused (403).

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag, AT_FDCWD};
use nix::sys::stat::SFlag;
use rustix::fs::{AtFlags, StatxFlags};

use crate::upstream::UpstreamError;

/// What a request path resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Execute this script.
    Script {
        /// URL path of the script (`SCRIPT_NAME`), starting with `/`; php-fpm
        /// gets root + `script_name` as `SCRIPT_FILENAME`.
        script_name: String,
    },
    /// A directory with an `index.php`, requested without its trailing slash.
    AddSlash,
    /// An existing non-PHP file or a directory without `index.php`.
    Static,
    /// Nothing there, and no front controller takes it.
    NotFound,
}

/// What a site's PHP runs: from its `[php]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// `php.front_controller`: the script for paths that name no file.
    pub front_controller: Option<String>,
    /// `php.extensions`: the name endings executed (always with `.php`).
    pub extensions: Vec<String>,
}

impl Rules {
    pub fn of(php: &crate::config::PhpConfig) -> Rules {
        Rules {
            front_controller: php.front_controller.clone(),
            extensions: php.extensions.clone(),
        }
    }
}

/// Name endings of PHP source that a PHP site never serves as a file:
/// scripts of other PHP versions and conventions (which a server elsewhere
/// would have executed), include files, PHAR archives, highlighted source.
/// Refused unless listed in `php.extensions` (then executed).
pub const PHP_SOURCE: [&str; 12] = [
    ".php", ".php3", ".php4", ".php5", ".php7", ".php8", ".pht", ".phtml", ".phar", ".phps",
    ".phpt", ".inc",
];

/// Endings editors and people leave on copies of a file
/// (`wp-config.php~`, `config.php.bak`): a copy of PHP source is refused too.
pub const BACKUP: [&str; 5] = ["~", ".bak", ".old", ".orig", ".save"];

/// What a file name means to PHP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PhpName {
    /// Not PHP source: served as a static file.
    Not,
    /// Ends in one of the site's `php.extensions`, letter case and all: executed.
    Script,
    /// PHP source that is not executed: refused.
    Source,
}

fn php_name(name: &str, extensions: &[String]) -> PhpName {
    let (stem, backup) = match BACKUP.iter().find(|b| ends_with_ignore_case(name, b)) {
        // The ending is ASCII: cutting it leaves a char boundary.
        Some(b) => (&name[..name.len() - b.len()], true),
        None => (name, false),
    };
    let Some(dot) = stem.rfind('.') else {
        return PhpName::Not;
    };
    let ext = &stem[dot..];
    if !backup && extensions.iter().any(|e| e == ext) {
        return PhpName::Script;
    }
    let source = PHP_SOURCE
        .iter()
        .copied()
        .chain(extensions.iter().map(String::as_str))
        .any(|e| ext.eq_ignore_ascii_case(e));
    if source {
        PhpName::Source
    } else {
        PhpName::Not
    }
}

/// Resolves `raw_path` (the URI path as the client sent it, still
/// percent-encoded) against `root`. Blocking: call from a blocking thread.
pub fn resolve(root: &Path, raw_path: &str, rules: &Rules) -> Result<Target, UpstreamError> {
    resolve_with(root, raw_path, rules, Wait::Block).map_err(|e| match e {
        Fail::Err(e) => e,
        Fail::NotCached => UpstreamError::Internal("lookup refused to block".into()),
    })
}

/// [`resolve`] without blocking, for the async threads: `None` when a part
/// of the lookup is not in the kernel's dentry/inode caches (the kernel
/// answers `EAGAIN` to `RESOLVE_CACHED` rather than read a disk or ask a
/// network file system); then call [`resolve`] on a blocking thread. The
/// answer, when there is one, is exactly what [`resolve`] would give.
pub fn resolve_cached(
    root: &Path,
    raw_path: &str,
    rules: &Rules,
) -> Option<Result<Target, UpstreamError>> {
    match resolve_with(root, raw_path, rules, Wait::CachedOnly) {
        Ok(t) => Some(Ok(t)),
        Err(Fail::Err(e)) => Some(Err(e)),
        Err(Fail::NotCached) => None,
    }
}

/// Whether a lookup may wait for I/O.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    Block,
    /// `RESOLVE_CACHED`: answer from the kernel's caches or not at all.
    CachedOnly,
}

enum Fail {
    Err(UpstreamError),
    /// Only with [`Wait::CachedOnly`]: the answer needs I/O.
    NotCached,
}

impl From<UpstreamError> for Fail {
    fn from(e: UpstreamError) -> Self {
        Fail::Err(e)
    }
}

fn resolve_with(root: &Path, raw_path: &str, rules: &Rules, wait: Wait) -> Result<Target, Fail> {
    let decoded = decode(raw_path)?;
    let root_fd = match open_dir(root, wait) {
        Ok(fd) => fd,
        // EINVAL: a kernel older than 5.12 (no RESOLVE_CACHED).
        Err(Errno::EAGAIN | Errno::EINVAL) if wait == Wait::CachedOnly => {
            return Err(Fail::NotCached)
        }
        Err(e) => {
            return Err(Fail::Err(UpstreamError::Internal(format!(
                "cannot open document root {}: {}",
                root.display(),
                root_error(e)
            ))))
        }
    };
    let lookup = |rel: &str| lookup(&root_fd, rel, wait);
    let rel = decoded.trim_start_matches('/');
    let wants_dir = rel.is_empty() || rel.ends_with('/');
    let last = rel
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    match lookup(rel)? {
        Some(Kind::File) => match php_name(last, &rules.extensions) {
            PhpName::Not => Ok(Target::Static),
            PhpName::Script if !wants_dir => Ok(script(rel)),
            // `X.PHP`, `inc/db.inc`, `old.php5`, `wp-config.php~`: not
            // executed (php-fpm's security.limit_extensions follows
            // php.extensions) and never sent as text either.
            PhpName::Script | PhpName::Source => Err(Fail::Err(UpstreamError::Forbidden(format!(
                "{last:?} is PHP source that this site does not execute (php.extensions)"
            )))),
        },
        Some(Kind::Dir) => {
            let index = if rel.is_empty() {
                "index.php".to_owned()
            } else {
                format!("{}/index.php", rel.trim_end_matches('/'))
            };
            match lookup(&index)? {
                Some(Kind::File) if wants_dir => Ok(script(&index)),
                Some(Kind::File) => Ok(Target::AddSlash),
                _ => Ok(Target::Static),
            }
        }
        Some(Kind::Other) => Err(Fail::Err(UpstreamError::Forbidden(format!(
            "{rel:?} is not a regular file"
        )))),
        // A script that is not there is not the front controller's either.
        None if rules
            .extensions
            .iter()
            .any(|e| ends_with_ignore_case(last, e)) =>
        {
            Ok(Target::NotFound)
        }
        None => match rules.front_controller.as_deref() {
            Some(fc) => match lookup(fc)? {
                Some(Kind::File) => Ok(script(fc)),
                _ => Ok(Target::NotFound),
            },
            None => Ok(Target::NotFound),
        },
    }
}

fn script(rel: &str) -> Target {
    let mut script_name = String::with_capacity(rel.len() + 1);
    script_name.push('/');
    script_name.push_str(rel);
    Target::Script { script_name }
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    let (s, suffix) = (s.as_bytes(), suffix.as_bytes());
    s.len() >= suffix.len() && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Other,
}

/// `RESOLVE_CACHED` (Linux 5.12): `EAGAIN` unless the whole lookup can be
/// answered from the kernel's caches. nix 0.32 does not name it.
fn resolve_flags(base: ResolveFlag, wait: Wait) -> ResolveFlag {
    match wait {
        Wait::Block => base,
        Wait::CachedOnly => base | ResolveFlag::from_bits_retain(libc::RESOLVE_CACHED),
    }
}

/// The document root, opened afresh for every request (as
/// [`crate::docroot::open_root_dir`] does: no symlink anywhere in its path),
/// so the lookup happens in the directory php-fpm will open the script in.
fn open_dir(root: &Path, wait: Wait) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(resolve_flags(
            ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            wait,
        ));
    openat2(AT_FDCWD, root, how)
}

fn root_error(e: Errno) -> String {
    match e {
        Errno::ELOOP => "its path contains a symlink (refused: a site owner could point it anywhere; configure the real path)".to_owned(),
        e => std::io::Error::from(e).to_string(),
    }
}

/// `Ok(None)`: nothing there (or a file where a directory was needed).
fn lookup(root: &OwnedFd, rel: &str, wait: Wait) -> Result<Option<Kind>, Fail> {
    let rel = if rel.is_empty() { "." } else { rel };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(resolve_flags(
            ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            wait,
        ));
    let fd = match openat2(root, OsStr::from_bytes(rel.as_bytes()), how) {
        Ok(fd) => fd,
        // Not in the caches, a rename raced with the lookup, or a kernel
        // without RESOLVE_CACHED (EINVAL): the blocking lookup decides.
        Err(Errno::EAGAIN | Errno::EINVAL) if wait == Wait::CachedOnly => {
            return Err(Fail::NotCached)
        }
        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ENAMETOOLONG) => return Ok(None),
        Err(Errno::EXDEV | Errno::ELOOP) => {
            return Err(Fail::Err(UpstreamError::Forbidden(format!(
                "{rel:?} leads outside the document root"
            ))))
        }
        Err(Errno::EACCES | Errno::EPERM) => {
            return Err(Fail::Err(UpstreamError::Forbidden(format!(
                "{rel:?}: permission denied"
            ))))
        }
        Err(e) => return Err(Fail::Err(UpstreamError::Io(e.into()))),
    };
    // Only the type, which an inode never changes, and as cached
    // (STATX_DONT_SYNC): fstat would make NFS or FUSE revalidate all the
    // attributes, a network or daemon round trip on the async thread.
    let st = rustix::fs::statx(
        &fd,
        "",
        AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC,
        StatxFlags::TYPE,
    );
    drop(fd);
    let st = st.map_err(|e| UpstreamError::Io(e.into()))?;
    let fmt = SFlag::from_bits_truncate(u32::from(st.stx_mode) & SFlag::S_IFMT.bits());
    Ok(Some(if fmt == SFlag::S_IFREG {
        Kind::File
    } else if fmt == SFlag::S_IFDIR {
        Kind::Dir
    } else {
        Kind::Other
    }))
}

/// Percent-decodes the path once and refuses what may not name a file.
/// Borrows `raw` when it has no escapes (most paths).
pub fn decode(raw: &str) -> Result<Cow<'_, str>, UpstreamError> {
    let encoded_slash = raw.as_bytes().windows(3).any(|w| {
        w[0] == b'%' && (w[1..].eq_ignore_ascii_case(b"2f") || w[1..].eq_ignore_ascii_case(b"5c"))
    });
    if encoded_slash || raw.contains('\\') {
        return Err(UpstreamError::BadRequest(
            "encoded slash or backslash in path".into(),
        ));
    }
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| UpstreamError::BadRequest("path is not UTF-8".into()))?;
    if decoded.contains('\0') {
        return Err(UpstreamError::BadRequest("NUL in path".into()));
    }
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

    fn rules(front_controller: Option<&str>) -> Rules {
        Rules {
            front_controller: front_controller.map(str::to_owned),
            extensions: vec![".php".to_owned()],
        }
    }

    #[test]
    fn php_source_names() {
        use PhpName::*;
        let default = [".php".to_owned()];
        let phtml = [".php".to_owned(), ".phtml".to_owned()];
        let cases: &[(&str, &[String], PhpName)] = &[
            ("index.php", &default, Script),
            ("INDEX.PHP", &default, Source),
            ("a.b.php", &default, Script),
            ("x.phtml", &default, Source),
            ("x.phtml", &phtml, Script),
            ("x.PHTML", &phtml, Source),
            ("x.php5", &default, Source),
            ("x.Php7", &default, Source),
            ("lib.phar", &default, Source),
            ("db.inc", &default, Source),
            ("db.INC", &default, Source),
            ("t.phpt", &default, Source),
            ("s.phps", &default, Source),
            ("o.pht", &default, Source),
            ("wp-config.php~", &default, Source),
            ("wp-config.php.bak", &default, Source),
            ("x.phtml.orig", &phtml, Source),
            ("config.inc.save", &default, Source),
            ("style.css", &default, Not),
            ("notes.txt~", &default, Not),
            ("x.php.txt", &default, Not),
            ("archive.bak", &default, Not),
            ("php", &default, Not),
            ("x.phpx", &default, Not),
            ("été.php", &default, Script),
        ];
        for (name, extensions, want) in cases {
            assert_eq!(
                php_name(name, extensions),
                *want,
                "{name} with {extensions:?}"
            );
        }
    }

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
        check("/a%2Fb", Err(400));
        check("/a%2", Ok("/a%2")); // an incomplete escape stays as it is
        check("/%C3%A9t%C3%A9.php", Ok("/été.php"));
        assert!(matches!(decode("/plain/path.php"), Ok(Cow::Borrowed(_))));
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
        nix::unistd::mkfifo(&root.join("pipe.php"), nix::sys::stat::Mode::S_IRWXU).unwrap();

        let s = |rel: &str| {
            Ok(Target::Script {
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
            ("/pipe.php", None, Err(403)), // not a regular file
            ("/evil.php", None, Err(403)),
            ("/rel.php", None, Err(403)),
            ("/missing.php", Some("index.php"), Ok(Target::NotFound)),
            ("/pretty/url", Some("index.php"), s("index.php")),
            ("/pretty/url", None, Ok(Target::NotFound)),
        ];
        for (path, fc, want) in cases {
            let rules = rules(fc);
            let got = resolve(&root, path, &rules).map_err(|e| e.status().as_u16());
            assert_eq!(got, want, "{path} (front controller {fc:?})");
            // Right after, everything it looked at is cached: the
            // non-blocking lookup answers the same. The kernel leaves its
            // lock-free walk (so RESOLVE_CACHED gives up) for a file used as
            // a directory and for `..` in a symlink: those few refusals may
            // take the blocking path.
            let may_block = path.starts_with("/img.jpg/") || path == "/rel.php";
            let Some(cached) = resolve_cached(&root, path, &rules) else {
                assert!(
                    may_block,
                    "{path}: a lookup just made is answered from the caches"
                );
                continue;
            };
            let cached = cached.map_err(|e| e.status().as_u16());
            assert_eq!(cached, want, "cached: {path} (front controller {fc:?})");
        }
    }

    /// Nothing is remembered between requests: a script deleted, replaced
    /// by a symlink out of the root, or by a directory is seen as it is now.
    #[test]
    fn no_stale_answer_after_a_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(dir.path().join("evil.php"), "<?php").unwrap();
        let file = root.join("x.php");
        let both = |path: &str| {
            let blocking = resolve(&root, path, &rules(None)).map_err(|e| e.status().as_u16());
            let cached = resolve_cached(&root, path, &rules(None))
                .expect("answered from the caches")
                .map_err(|e| e.status().as_u16());
            assert_eq!(blocking, cached, "{path}");
            cached
        };
        std::fs::write(&file, "<?php").unwrap();
        assert!(matches!(both("/x.php"), Ok(Target::Script { .. })));
        std::fs::remove_file(&file).unwrap();
        assert_eq!(both("/x.php"), Ok(Target::NotFound));
        std::os::unix::fs::symlink(dir.path().join("evil.php"), &file).unwrap();
        assert_eq!(both("/x.php"), Err(403));
        std::fs::remove_file(&file).unwrap();
        std::fs::create_dir(&file).unwrap();
        assert_eq!(both("/x.php"), Ok(Target::Static));
        assert_eq!(both("/x.php/"), Ok(Target::Static));
    }
}
