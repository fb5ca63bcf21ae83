//! Decides what a request path names inside the document root: a PHP script
//! to execute (with its path info), something for the static upstream
//! (opened here, so the path is decoded and opened once), a directory that
//! needs its trailing slash, or nothing.
//!
//! Invariants:
//! - The path is percent-decoded exactly once, by the document root's one
//!   decoder (`docroot::decode_for`, [`Reading::Script`]), and every
//!   refusal's answer is that decoder's table (`docroot::Refusal::verdict`):
//!   `..`/`.` segments, NUL, backslash, an encoded slash and empty segments
//!   are refused before the file system is touched; so are dotfile
//!   segments (except a leading `.well-known`), unless they come after a
//!   script (path info names no file).
//! - Every lookup is `openat2(root, rel, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`
//!   beneath the root opened afresh (`docroot::fresh`: the directory
//!   php-fpm will open the script in): nothing outside the root is ever a
//!   script.
//! - Nothing is cached: every request looks at the file system as it is now,
//!   so a deleted, replaced or re-linked file is never run from a stale
//!   answer. [`find_cached`] makes that cheap enough for the async
//!   threads (`RESOLVE_CACHED`: answered from the kernel's caches or not at
//!   all); [`find`] then does the same lookup, blocking.
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
//! - What is [`Target::Static`] was opened here for reading (a path whose
//!   last name is no PHP name is opened, not only looked up), and the static
//!   upstream answers from that ([`Found::opened`], `Upstream::handle_opened`).

use std::path::Path;

use crate::docroot::{self, Beneath, Kind, Opened, Reading, Refusal, RelPath, Wait};
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

/// What [`find`] found: the target and, for [`Target::Static`], what was
/// opened for the static upstream.
#[derive(Debug)]
pub struct Found {
    pub target: Target,
    pub opened: Option<Opened>,
}

impl From<Target> for Found {
    fn from(target: Target) -> Self {
        Found {
            target,
            opened: None,
        }
    }
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

/// Why a lookup gave no answer.
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

impl From<docroot::ResolveError> for Fail {
    fn from(e: docroot::ResolveError) -> Self {
        Fail::Err(e.into())
    }
}

impl From<docroot::Fail> for Fail {
    fn from(e: docroot::Fail) -> Self {
        match e {
            docroot::Fail::Refused(e) => e.into(),
            docroot::Fail::NotCached => Fail::NotCached,
        }
    }
}

/// Finds what `raw_path` (the URI path as the client sent it, still
/// percent-encoded) names beneath `root`. Blocking: call from a blocking
/// thread.
pub fn find(root: &Path, raw_path: &str, rules: &Rules) -> Result<Found, UpstreamError> {
    find_with(root, raw_path, rules, Wait::Block).map_err(|e| match e {
        Fail::Err(e) => e,
        Fail::NotCached => UpstreamError::Internal("lookup refused to block".into()),
    })
}

/// [`find`] without blocking, for the async threads: `None` when a part
/// of the lookup is not in the kernel's dentry/inode caches (the kernel
/// answers `EAGAIN` to `RESOLVE_CACHED` rather than read a disk or ask a
/// network file system); then call [`find`] on a blocking thread. The
/// answer, when there is one, is exactly what [`find`] would give.
pub fn find_cached(
    root: &Path,
    raw_path: &str,
    rules: &Rules,
) -> Option<Result<Found, UpstreamError>> {
    match find_with(root, raw_path, rules, Wait::CachedOnly) {
        Ok(found) => Some(Ok(found)),
        Err(Fail::Err(e)) => Some(Err(e)),
        Err(Fail::NotCached) => None,
    }
}

/// [`find`]'s target alone.
pub fn resolve(root: &Path, raw_path: &str, rules: &Rules) -> Result<Target, UpstreamError> {
    find(root, raw_path, rules).map(|found| found.target)
}

/// [`find_cached`]'s target alone.
pub fn resolve_cached(
    root: &Path,
    raw_path: &str,
    rules: &Rules,
) -> Option<Result<Target, UpstreamError>> {
    find_cached(root, raw_path, rules).map(|found| found.map(|found| found.target))
}

fn find_with(root: &Path, raw_path: &str, rules: &Rules, wait: Wait) -> Result<Found, Fail> {
    let path = docroot::decode_for(raw_path, Reading::Script)?;
    let rel = path.as_str();
    // Segments from the first dotfile on are never looked up as files; they
    // may only be a script's path info (`/index.php/.NET_Framework`).
    let hidden = path.hidden_at();
    let mut splits = split_points(rel, &rules.extensions, hidden.unwrap_or(rel.len())).peekable();
    if let (Some(at), None) = (hidden, splits.peek()) {
        return Err(hidden_refusal(rel, at, rules).into());
    }
    let beneath = docroot::fresh(root, wait)?;
    // PATH_INFO: the first segment ending in a PHP extension that names a
    // regular file is the script, the rest of the path its path info.
    for at in splits {
        let (script_rel, path_info) = rel.split_at(at);
        let name = script_rel.rsplit('/').next().unwrap_or_default();
        match beneath.kind(script_rel)? {
            // `/lib.php/x.php/y`, `/dir.php/img.jpg`: look further.
            Some(Kind::Dir) => continue,
            Some(Kind::File) => {
                return match php_name(name, &rules.extensions) {
                    PhpName::Script => Ok(script(script_rel, path_info)),
                    // `/X.PHP/y`: PHP source, not executed (letter case).
                    _ => Err(not_executed(name).into()),
                };
            }
            Some(Kind::Other) => return Err(not_regular(script_rel).into()),
            // `/missing.php/y`, `/avatar.jpg/x.php/y`: the script is not
            // there, and such a path is not the front controller's either.
            None => return Ok(Target::NotFound.into()),
        }
    }
    if let Some(at) = hidden {
        return Err(hidden_refusal(rel, at, rules).into());
    }
    whole_path(&beneath, &path, rules)
}

/// The whole path names the script, a static file or directory, or nothing.
fn whole_path(
    beneath: &Beneath<std::os::fd::OwnedFd>,
    path: &RelPath<'_>,
    rules: &Rules,
) -> Result<Found, Fail> {
    let rel = path.as_str();
    let wants_dir = path.trailing_slash();
    let last = rel
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let name = php_name(last, &rules.extensions);
    // A name that is no PHP name is opened for reading at once: if it is a
    // file, the static upstream sends it from this very descriptor.
    let (kind, mut opened) = if name == PhpName::Not {
        match beneath.open_rel(path) {
            Ok(opened @ Opened::File { .. }) => (Some(Kind::File), Some(opened)),
            Ok(opened @ Opened::Dir(_)) => (Some(Kind::Dir), Some(opened)),
            Err(docroot::Fail::Refused(docroot::ResolveError::NotFound)) => (None, None),
            Err(e) => return Err(e.into()),
        }
    } else {
        (beneath.kind(rel)?, None)
    };
    match kind {
        Some(Kind::File) => match name {
            PhpName::Not => Ok(static_target(opened)),
            PhpName::Script if !wants_dir => Ok(script(rel, "")),
            // `X.PHP`, `inc/db.inc`, `old.php5`, `wp-config.php~`: not
            // executed (php-fpm's security.limit_extensions follows
            // php.extensions) and never sent as text either.
            PhpName::Script | PhpName::Source => Err(not_executed(last).into()),
        },
        Some(Kind::Dir) => {
            let index = if rel.is_empty() {
                "index.php".to_owned()
            } else {
                format!("{}/index.php", rel.trim_end_matches('/'))
            };
            match beneath.kind(&index)? {
                Some(Kind::File) if wants_dir => Ok(script(&index, "")),
                Some(Kind::File) => Ok(Target::AddSlash.into()),
                // A directory with a PHP name (`/dir.php/`) was only looked up.
                _ if opened.is_none() => Ok(static_target(Some(beneath.open_rel(path)?))),
                _ => Ok(static_target(opened.take())),
            }
        }
        Some(Kind::Other) => Err(not_regular(rel).into()),
        // A script that is not there is not the front controller's either.
        None if rules
            .extensions
            .iter()
            .any(|e| ends_with_ignore_case(last, e)) =>
        {
            Ok(Target::NotFound.into())
        }
        None => match rules.front_controller.as_deref() {
            Some(fc) => match beneath.kind(fc)? {
                Some(Kind::File) => Ok(script(fc, "")),
                _ => Ok(Target::NotFound.into()),
            },
            None => Ok(Target::NotFound.into()),
        },
    }
}

fn static_target(opened: Option<Opened>) -> Found {
    Found {
        target: Target::Static,
        opened,
    }
}

fn not_executed(name: &str) -> UpstreamError {
    UpstreamError::Forbidden(format!(
        "{name:?} is PHP source that this site does not execute (php.extensions)"
    ))
}

fn not_regular(rel: &str) -> UpstreamError {
    UpstreamError::Forbidden(format!("{rel:?} is not a regular file"))
}

/// The answer to a dotfile at `at` in `rel` ([`Refusal::verdict`]): a
/// hidden script when a later segment ends in one of the site's
/// `php.extensions` (`/.git/x.php/y`), else a hidden file (404, as on
/// every site).
fn hidden_refusal(rel: &str, at: usize, rules: &Rules) -> docroot::ResolveError {
    let before_script = rel[at..].split('/').skip(1).any(|seg| {
        rules
            .extensions
            .iter()
            .any(|e| ends_with_ignore_case(seg, e))
    });
    let refusal = if before_script {
        Refusal::HiddenScript
    } else {
        Refusal::Hidden
    };
    refusal
        .verdict(Reading::Script)
        .unwrap_or(docroot::ResolveError::NotFound)
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

fn script(rel: &str, path_info: &str) -> Found {
    let mut script_name = String::with_capacity(rel.len() + 1);
    script_name.push('/');
    script_name.push_str(rel);
    Target::Script {
        script_name,
        path_info: path_info.to_owned(),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// The one decoder as a PHP site reads a path, with the leading `/`
    /// kept (as the decoder this module had before `docroot`'s).
    fn decode(raw: &str) -> Result<Cow<'_, str>, UpstreamError> {
        let path = docroot::decode_for(raw, Reading::Script)?;
        Ok(if raw.get(1..) == Some(path.as_str()) {
            Cow::Borrowed(raw)
        } else {
            Cow::Owned(format!("/{}", path.as_str()))
        })
    }

    /// Where the decoder finds the first dotfile of a decoded path.
    fn hidden_from(rel: &str) -> Option<usize> {
        docroot::decode_for(&format!("/{rel}"), Reading::Script)
            .unwrap()
            .hidden_at()
    }

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

    /// What is static was opened here, once: a file for reading, a
    /// directory without `index.php` as a directory; a dotfile is hidden
    /// (404) unless a script name follows it (403), and `.well-known` is
    /// exempt only at the top.
    #[test]
    fn static_targets_come_opened_and_dotfiles_follow_the_one_table() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("plain")).unwrap();
        std::fs::create_dir_all(root.join("a/.well-known")).unwrap();
        std::fs::create_dir_all(root.join(".well-known")).unwrap();
        std::fs::write(root.join("img.jpg"), "x").unwrap();
        std::fs::write(root.join(".well-known/t"), "x").unwrap();
        std::fs::write(root.join("a/.well-known/t"), "x").unwrap();
        std::fs::write(root.join("a.php"), "<?php").unwrap();
        let found = |path: &str| find(root, path, &rules(None));
        let img = found("/img.jpg").unwrap();
        assert_eq!(img.target, Target::Static);
        assert!(matches!(img.opened, Some(Opened::File { ref rel, .. }) if rel == "img.jpg"));
        let plain = found("/plain/").unwrap();
        assert!(matches!(plain.opened, Some(Opened::Dir(ref d)) if d.rel_path() == "plain"));
        assert!(found("/a.php").unwrap().opened.is_none());
        assert!(matches!(
            found("/.well-known/t").unwrap().opened,
            Some(Opened::File { .. })
        ));
        let status = |path: &str| {
            found(path)
                .map(|_| 200)
                .unwrap_or_else(|e| e.status().as_u16())
        };
        assert_eq!(status("/a/.well-known/t"), 404);
        assert_eq!(status("/.env"), 404);
        assert_eq!(status("/.env/x.php"), 403);
        assert_eq!(status("/a.php/.env"), 200); // path info
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
