//! Decides what a request path names inside the document root: a PHP script
//! to execute (with its path info), something for the static upstream
//! (opened here, so the path is decoded and opened once), a directory that
//! needs its trailing slash, or nothing.
//!
//! Invariants:
//! - The path is percent-decoded exactly once, by the document root's one
//!   decoder (`docroot::decode_for`, [`Reading::Script`]), and every
//!   refusal's answer is that decoder's table (`docroot::Refusal::verdict`):
//!   `..`/`.` segments, NUL, backslash and an encoded slash are refused
//!   before the file system is touched, and empty segments collapsed;
//!   dotfile segments are refused too (404, except a leading
//!   `.well-known`), unless they come after a script (path info names no
//!   file), whether or not a script name follows them.
//! - Every lookup is `openat2(root, rel, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`:
//!   nothing outside the root is ever a script. A path with no PHP name in
//!   it (no segment ending in a PHP extension, no trailing slash) is first
//!   opened beneath the site's kept root handle (`DocRoot::beneath`, the
//!   directory the root's path names, reopened when it changes; see
//!   `docroot::current`): a regular file there is static, with no system
//!   call spent on the root (the hot path of a PHP site's assets).
//!   Everything else, a script above all, is decided beneath the root
//!   opened afresh (`docroot::fresh`: the directory php-fpm will open the
//!   script in, as its path names it at this very moment).
//! - No answer is cached (only the root's handle, above, and the static
//!   upstream's kept small files, each checked by a `statx` of its path
//!   first): every request looks at the file system as it is now, so a
//!   deleted, replaced or re-linked file is never run or sent from a stale
//!   answer. [`find_cached`] makes that cheap enough for the async
//!   threads (`RESOLVE_CACHED`: answered from the kernel's caches or not at
//!   all; a kept file's `statx` has no such mode, and on a network file
//!   system asks the server, as the static upstream's own `openat2` does);
//!   [`find`] then does the same lookup, blocking.
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
//!   upstream answers from that ([`Found::opened`], `Upstream::handle_opened`);
//!   or, for the hot case below, it is a small file the static upstream
//!   keeps, whose path names it unchanged now ([`Found::kept`],
//!   `static_files::hot`: one `statx`, the same answer an open would give).

use std::sync::Arc;

use crate::docroot::{self, Beneath, DocRoot, Kind, Opened, Reading, Refusal, RelPath, Wait};
use crate::upstream::php_source::{ends_with_ignore_case, php_name, PhpName};
use crate::upstream::static_files::hot;
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
    /// For [`Target::Static`]: the static upstream's kept copy of the file,
    /// checked unchanged just now (`static_files::hot`), instead of an open.
    pub kept: Option<Arc<hot::Entry>>,
}

impl From<Target> for Found {
    fn from(target: Target) -> Self {
        Found {
            target,
            opened: None,
            kept: None,
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
pub fn find(root: &DocRoot, raw_path: &str, rules: &Rules) -> Result<Found, UpstreamError> {
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
    root: &DocRoot,
    raw_path: &str,
    rules: &Rules,
) -> Option<Result<Found, UpstreamError>> {
    match find_with(root, raw_path, rules, Wait::CachedOnly) {
        Ok(found) => Some(Ok(found)),
        Err(Fail::Err(e)) => Some(Err(e)),
        Err(Fail::NotCached) => None,
    }
}

fn find_with(root: &DocRoot, raw_path: &str, rules: &Rules, wait: Wait) -> Result<Found, Fail> {
    let path = docroot::decode_for(raw_path, Reading::Script)?;
    let rel = path.as_str();
    // Segments from the first dotfile on are never looked up as files; they
    // may only be a script's path info (`/index.php/.NET_Framework`).
    let hidden = path.hidden_at();
    let mut splits = split_points(rel, &rules.extensions, hidden.unwrap_or(rel.len())).peekable();
    if hidden.is_some() && splits.peek().is_none() {
        return Err(Refusal::Hidden.verdict().into());
    }
    if hidden.is_none() && splits.peek().is_none() {
        if let Some(found) = static_file(root, &path, rules, wait)? {
            return Ok(found);
        }
    }
    let beneath = docroot::fresh(root.path(), wait)?;
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
    if hidden.is_some() {
        return Err(Refusal::Hidden.verdict().into());
    }
    whole_path(beneath, &path, rules)
}

/// The hot case, a static asset: a path with no PHP name in it that names a
/// regular file, opened beneath the root's kept handle (no `openat2` of the
/// root itself: see `docroot::current`). `None` when it names anything
/// else (a directory may hold `index.php`, nothing there may be the front
/// controller's): those are decided beneath the root opened afresh, where
/// php-fpm will open the script.
fn static_file(
    root: &DocRoot,
    path: &RelPath<'_>,
    rules: &Rules,
    wait: Wait,
) -> Result<Option<Found>, Fail> {
    let last = path.as_str().rsplit('/').next().unwrap_or_default();
    if path.trailing_slash() || php_name(last, &rules.extensions) != PhpName::Not {
        return Ok(None);
    }
    // Only on the async threads, whose static upstream keeps files.
    if wait == Wait::CachedOnly {
        if let Some(entry) = hot::lookup(root, path.as_str()) {
            return Ok(Some(Found {
                kept: Some(entry),
                ..static_target(None)
            }));
        }
    }
    match root.beneath(wait)?.open_rel(path) {
        Ok(opened @ Opened::File { .. }) => Ok(Some(static_target(Some(opened)))),
        Ok(Opened::Dir(_)) | Err(docroot::Fail::Refused(docroot::ResolveError::NotFound)) => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The whole path names the script, a static file or directory, or nothing.
fn whole_path(
    beneath: Beneath<std::os::fd::OwnedFd>,
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
                _ => {
                    // A directory with a PHP name (`/dir.php/`) was only looked up.
                    let dir = match opened.take() {
                        Some(dir) => dir,
                        None => beneath.open_rel(path)?,
                    };
                    Ok(static_target(Some(found_beneath(dir, beneath))))
                }
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

/// A directory keeps the root it was found beneath, for its index file.
fn found_beneath(opened: Opened, beneath: Beneath<std::os::fd::OwnedFd>) -> Opened {
    match opened {
        Opened::Dir(dir) => {
            Opened::Dir(dir.found_beneath(std::sync::Arc::new(beneath.into_root())))
        }
        file => file,
    }
}

fn static_target(opened: Option<Opened>) -> Found {
    Found {
        target: Target::Static,
        opened,
        kept: None,
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
mod tests;
