//! Decides what a request path names inside the document root: a PHP script
//! to execute (with its path info), something for the static upstream, a
//! directory that needs its trailing slash, or nothing. The file-system
//! lookups themselves are [`super::lookup`]'s.
//!
//! TODO(merge): use docroot::DocRoot (the static-files branch's shared
//! resolver, same rules) instead of [`super::lookup`] once both are merged.
//!
//! Invariants:
//! - The path is percent-decoded exactly once; `..`/`.` segments, NUL,
//!   backslash, an encoded slash and empty segments are refused before the
//!   file system is touched; so are dotfile segments (except `.well-known`),
//!   unless they come after a script (path info names no file).
//! - Every lookup is `openat2(root, rel, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`
//!   (see [`super::lookup`]): nothing outside the root is ever a script.
//! - Nothing is cached: every request looks at the file system as it is now,
//!   so a deleted, replaced or re-linked file is never run from a stale
//!   answer. [`resolve_cached`] makes that cheap enough for the async
//!   threads (`RESOLVE_CACHED`: answered from the kernel's caches or not at
//!   all); [`resolve`] then does the same lookup, blocking.
//! - A script is an existing regular file whose name ends in one of the
//!   site's `php.extensions` (`.php` by default, exact letter case): either
//!   the whole path, or the path up to the **first** segment with such an
//!   ending that names a regular file; the rest (from its `/`) is the path
//!   info (`/index.php/Main_Page`). A segment with such an ending that is a
//!   directory is looked through; one that is missing ends the search with
//!   404 (`/a.jpg/x.php/y` never runs `a.jpg`, and is not the front
//!   controller's); one that leaves the root is refused. php-fpm guesses
//!   nothing (`cgi.fix_pathinfo = 0`, `cgi.discard_path = 1`).
//! - A file whose name is PHP source ([`crate::upstream::php_source`]: a PHP
//!   ending or one of `php.extensions`, any letter case, or a backup of
//!   one) is never [`Target::Static`]: PHP source is never served as text.
//!   What is not executed is refused (403).

use std::borrow::Cow;
use std::path::Path;

use super::lookup::{lookup, open_root, Fail, Kind, Wait};
use crate::upstream::php_source::{ends_with_ignore_case, php_name, PhpName};
use crate::upstream::UpstreamError;

/// What a request path resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Execute this script.
    Script {
        /// URL path of the script (`SCRIPT_NAME`), decoded, starting with
        /// `/`; php-fpm gets root + `script_name` as `SCRIPT_FILENAME`.
        script_name: String,
        /// What follows the script in the path (`PATH_INFO`), decoded:
        /// empty, or starting with `/`.
        path_info: String,
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

fn resolve_with(root: &Path, raw_path: &str, rules: &Rules, wait: Wait) -> Result<Target, Fail> {
    let decoded = decode(raw_path)?;
    let rel = decoded.trim_start_matches('/');
    // Segments from the first dotfile on are never looked up as files; they
    // may only be a script's path info (`/index.php/.NET_Framework`).
    let hidden = hidden_from(rel);
    let mut splits = split_points(rel, &rules.extensions, hidden.unwrap_or(rel.len())).peekable();
    if hidden.is_some() && splits.peek().is_none() {
        return Err(Fail::Err(UpstreamError::Forbidden(
            "dotfile in path".into(),
        )));
    }
    let root_fd = open_root(root, wait)?;
    let lookup = |rel: &str| lookup(&root_fd, rel, wait);
    // PATH_INFO: the first segment ending in a PHP extension that names a
    // regular file is the script, the rest of the path its path info.
    for at in splits {
        let (script_rel, path_info) = rel.split_at(at);
        let name = script_rel.rsplit('/').next().unwrap_or_default();
        match lookup(script_rel)? {
            // `/lib.php/x.php/y`, `/dir.php/img.jpg`: look further.
            Some(Kind::Dir) => continue,
            Some(Kind::File) => {
                return match php_name(name, &rules.extensions) {
                    PhpName::Script => Ok(script(script_rel, path_info)),
                    // `/X.PHP/y`: PHP source, not executed (letter case).
                    _ => Err(Fail::Err(not_executed(name))),
                };
            }
            Some(Kind::Other) => {
                return Err(Fail::Err(UpstreamError::Forbidden(format!(
                    "{script_rel:?} is not a regular file"
                ))))
            }
            // `/missing.php/y`, `/avatar.jpg/x.php/y`: the script is not
            // there, and such a path is not the front controller's either.
            None => return Ok(Target::NotFound),
        }
    }
    if hidden.is_some() {
        return Err(Fail::Err(UpstreamError::Forbidden(
            "dotfile in path".into(),
        )));
    }
    let wants_dir = rel.is_empty() || rel.ends_with('/');
    let last = rel
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    match lookup(rel)? {
        Some(Kind::File) => match php_name(last, &rules.extensions) {
            PhpName::Not => Ok(Target::Static),
            PhpName::Script if !wants_dir => Ok(script(rel, "")),
            // `X.PHP`, `inc/db.inc`, `old.php5`, `wp-config.php~`: not
            // executed (php-fpm's security.limit_extensions follows
            // php.extensions) and never sent as text either.
            PhpName::Script | PhpName::Source => Err(Fail::Err(not_executed(last))),
        },
        Some(Kind::Dir) => {
            let index = if rel.is_empty() {
                "index.php".to_owned()
            } else {
                format!("{}/index.php", rel.trim_end_matches('/'))
            };
            match lookup(&index)? {
                Some(Kind::File) if wants_dir => Ok(script(&index, "")),
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
                Some(Kind::File) => Ok(script(fc, "")),
                _ => Ok(Target::NotFound),
            },
            None => Ok(Target::NotFound),
        },
    }
}

fn not_executed(name: &str) -> UpstreamError {
    UpstreamError::Forbidden(format!(
        "{name:?} is PHP source that this site does not execute (php.extensions)"
    ))
}

/// Where a script's path info may start: the offset of each `/` in `rel`
/// that ends a segment whose name ends in one of `extensions` (any letter
/// case; the exact case is checked once the file is found), before `limit`.
fn split_points<'a>(
    rel: &'a str,
    extensions: &'a [String],
    limit: usize,
) -> impl Iterator<Item = usize> + 'a {
    rel.match_indices('/')
        .map(|(at, _)| at)
        .take_while(move |&at| at < limit)
        .filter(move |&at| {
            let seg = rel[..at].rsplit('/').next().unwrap_or_default();
            extensions.iter().any(|e| ends_with_ignore_case(seg, e))
        })
}

/// The offset of the first segment of `rel` that names a dotfile (any
/// segment starting with `.` but `.well-known`), if any.
fn hidden_from(rel: &str) -> Option<usize> {
    let mut at = 0;
    for seg in rel.split('/') {
        if seg.starts_with('.') && seg != ".well-known" {
            return Some(at);
        }
        at += seg.len() + 1;
    }
    None
}

fn script(rel: &str, path_info: &str) -> Target {
    let mut script_name = String::with_capacity(rel.len() + 1);
    script_name.push('/');
    script_name.push_str(rel);
    Target::Script {
        script_name,
        path_info: path_info.to_owned(),
    }
}

/// Percent-decodes the path once and refuses what may not name a file (or
/// be a script's path info): an encoded slash or backslash, a backslash,
/// NUL, invalid UTF-8, `.`/`..` and empty segments. Dotfiles are refused
/// later ([`hidden_from`]), unless they are path info. Borrows `raw` when
/// it has no escapes (most paths).
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
    if decoded.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(UpstreamError::Forbidden("dot segment in path".into()));
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
        check("/a/%2E/b", Err(403));
        // Dotfiles are the resolver's (they may be path info).
        check("/.env", Ok("/.env"));
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
        std::fs::create_dir_all(root.join("dir.php")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("a.php"), "<?php").unwrap();
        std::fs::write(root.join("A.PHP"), "<?php").unwrap();
        std::fs::write(root.join("index.php"), "<?php").unwrap();
        std::fs::write(root.join("sub/index.php"), "<?php").unwrap();
        std::fs::write(root.join("dir.php/in.php"), "<?php").unwrap();
        std::fs::write(root.join("dir.php/img.jpg"), "x").unwrap();
        std::fs::write(root.join(".git/x.php"), "<?php").unwrap();
        std::fs::write(root.join("img.jpg"), "x").unwrap();
        std::fs::write(outside.join("evil.php"), "<?php").unwrap();
        std::os::unix::fs::symlink(outside.join("evil.php"), root.join("evil.php")).unwrap();
        std::os::unix::fs::symlink("../outside/evil.php", root.join("rel.php")).unwrap();
        std::os::unix::fs::symlink("../outside", root.join("outdir.php")).unwrap();
        std::os::unix::fs::symlink("a.php", root.join("inside.php")).unwrap();
        nix::unistd::mkfifo(&root.join("pipe.php"), nix::sys::stat::Mode::S_IRWXU).unwrap();

        let s = |rel: &str, path_info: &str| {
            Ok(Target::Script {
                script_name: format!("/{rel}"),
                path_info: path_info.to_owned(),
            })
        };
        let fc = Some("index.php");
        let cases: Vec<(&str, Option<&str>, Result<Target, u16>)> = vec![
            ("/a.php", None, s("a.php", "")),
            ("/inside.php", None, s("inside.php", "")),
            ("/", None, s("index.php", "")),
            ("/sub/", None, s("sub/index.php", "")),
            ("/sub", None, Ok(Target::AddSlash)),
            ("/plain/", None, Ok(Target::Static)),
            ("/img.jpg", None, Ok(Target::Static)),
            ("/A.PHP", None, Err(403)),
            ("/pipe.php", None, Err(403)), // not a regular file
            ("/evil.php", None, Err(403)),
            ("/rel.php", None, Err(403)),
            ("/missing.php", fc, Ok(Target::NotFound)),
            ("/pretty/url", fc, s("index.php", "")),
            ("/pretty/url", None, Ok(Target::NotFound)),
            // Path info: the first segment with a PHP ending that is a file.
            ("/a.php/", None, s("a.php", "/")),
            ("/a.php/x/y", None, s("a.php", "/x/y")),
            ("/a.php/x.php", None, s("a.php", "/x.php")),
            ("/a.php/a.php/x", None, s("a.php", "/a.php/x")),
            ("/index.php/Main_Page", fc, s("index.php", "/Main_Page")),
            (
                "/index.php/.NET_Framework",
                None,
                s("index.php", "/.NET_Framework"),
            ),
            ("/a.php/Caf%C3%A9%20x", None, s("a.php", "/Café x")),
            ("/a%2ephp/x", None, s("a.php", "/x")),
            ("/inside.php/x", None, s("inside.php", "/x")),
            ("/dir.php/in.php/x", None, s("dir.php/in.php", "/x")),
            ("/dir.php/img.jpg", None, Ok(Target::Static)),
            ("/dir.php/", None, Ok(Target::Static)),
            ("/sub/index.php/x", None, s("sub/index.php", "/x")),
            // Holes: nothing but a real script beneath the root runs.
            ("/img.jpg/x.php", None, Ok(Target::NotFound)),
            ("/img.jpg/x.php", fc, Ok(Target::NotFound)),
            ("/img.jpg/x.php/y", fc, Ok(Target::NotFound)),
            ("/missing.php/x", fc, Ok(Target::NotFound)),
            ("/A.PHP/x", None, Err(403)),
            ("/a.PHP/x", fc, Ok(Target::NotFound)), // no such file
            ("/evil.php/x", None, Err(403)),
            ("/rel.php/x", fc, Err(403)),
            ("/outdir.php/evil.php", fc, Err(403)),
            ("/pipe.php/x", None, Err(403)),
            ("/.git/x.php/y", None, Err(403)),
            ("/.git/x.php", fc, Err(403)),
            ("/a.php./x", None, Ok(Target::NotFound)),
            ("/a.php./x", fc, s("index.php", "")),
            ("/a.php%20/x", fc, s("index.php", "")),
            ("/a.php/../evil.php", None, Err(403)),
            ("/a.php/%2e%2e/x", None, Err(403)),
            ("/a.php%2fx", None, Err(400)),
            ("/a.php/x%2fy", None, Err(400)),
            ("/a.php%00/x", None, Err(400)),
            ("/a.php/x%00", None, Err(400)),
            ("/a.php//x", None, Err(400)),
        ];
        for (path, fc, want) in cases {
            let rules = rules(fc);
            let got = resolve(&root, path, &rules).map_err(|e| e.status().as_u16());
            assert_eq!(got, want, "{path} (front controller {fc:?})");
            // Right after, everything it looked at is cached: the
            // non-blocking lookup answers the same. The kernel leaves its
            // lock-free walk (so RESOLVE_CACHED gives up) for a file used as
            // a directory and for `..` in a symlink: those few lookups may
            // take the blocking path.
            let may_block = path.starts_with("/img.jpg/")
                || path.starts_with("/rel.php")
                || path.starts_with("/outdir.php");
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

    #[test]
    fn split_points_and_hidden_segments() {
        let ext = [".php".to_owned(), ".phtml".to_owned()];
        let points = |rel: &str| split_points(rel, &ext, rel.len()).collect::<Vec<_>>();
        assert_eq!(points("a.php/b.PHTML/c"), vec![5, 13]);
        assert_eq!(points("a.php"), Vec::<usize>::new());
        assert_eq!(points("a.php/"), vec![5]);
        assert_eq!(points("x/php/y.phpx/z"), Vec::<usize>::new());
        assert_eq!(
            split_points("a.php/.b.php/c", &ext, 6).collect::<Vec<_>>(),
            vec![5]
        );
        assert_eq!(hidden_from("a/.b/c"), Some(2));
        assert_eq!(hidden_from(".env"), Some(0));
        assert_eq!(hidden_from(".well-known/x"), None);
        assert_eq!(hidden_from("a/b"), None);
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
        assert!(matches!(both("/x.php/y"), Ok(Target::Script { .. })));
        std::fs::remove_file(&file).unwrap();
        assert_eq!(both("/x.php"), Ok(Target::NotFound));
        std::os::unix::fs::symlink(dir.path().join("evil.php"), &file).unwrap();
        assert_eq!(both("/x.php"), Err(403));
        std::fs::remove_file(&file).unwrap();
        std::fs::create_dir(&file).unwrap();
        assert_eq!(both("/x.php"), Ok(Target::Static));
        assert_eq!(both("/x.php/"), Ok(Target::Static));
        assert_eq!(both("/x.php/y"), Ok(Target::NotFound));
    }
}
