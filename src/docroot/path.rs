//! Request-path rules, pure string work: the one decoder of request paths
//! ([`decode_for`]) and the one table of verdicts ([`Refusal::verdict`]),
//! used by the static upstream and by PHP's script resolution alike. The
//! kernel (`openat2` with `RESOLVE_BENEATH`) is the real fence; these rules
//! keep obviously hostile paths away from it and hide dotfiles.
//!
//! Invariants:
//! - A path is percent-decoded exactly once (`%252e` is the name `%2e`).
//! - Every refusal is a [`Refusal`], and its answer comes from
//!   [`Refusal::verdict`] only. Rules are checked in one order, so a path
//!   that breaks two gets the first one's answer (a traversal after a
//!   dotfile is a traversal).
//! - A dotfile is any segment starting with `.`, except `.well-known` as the
//!   first segment (ACME HTTP-01 challenges and the like).

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use super::ResolveError;

/// The only dot-directory that is served, and only at the top.
const WELL_KNOWN: &str = ".well-known";

/// What a decoded path is read as. The few rules whose answers still differ
/// between the two say so in [`Refusal::verdict`]; every other rule is the
/// same for both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// A file or directory to send (the static upstream).
    File,
    /// A path that may be a script followed by path info (a PHP site): a
    /// dotfile is not refused here, since path info names no file
    /// ([`RelPath::hidden_at`]).
    Script,
}

/// Every rule a request path can break.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not starting with `/`.
    NotAbsolute,
    /// An encoded slash or backslash (`%2f`, `%5c`): refused, never interpreted.
    EncodedSeparator,
    /// Invalid UTF-8 once decoded.
    NotUtf8,
    /// A NUL byte.
    Nul,
    /// A backslash.
    Backslash,
    /// A `.` or `..` segment, encoded or not.
    DotSegment,
    /// An empty segment (`//`).
    EmptySegment,
    /// A dotfile: never revealed.
    Hidden,
    /// A dotfile followed by a segment with a PHP ending
    /// (`/.git/x.php/y`): an attempt to reach a hidden script.
    HiddenScript,
}

impl Refusal {
    /// The one table of verdicts. `None`: not refused (the segment is
    /// dropped). Rows marked *contested* answer differently by [`Reading`]
    /// because existing tests pin both answers (`docs/php.md` and
    /// `tests/php_path_info.rs` the PHP one; `tests/static_files.rs` and
    /// `docroot::tests` the static one); choosing one is a behaviour change
    /// left to a decision.
    pub fn verdict(self, reading: Reading) -> Option<ResolveError> {
        use Refusal::*;
        use ResolveError::{BadRequest, Forbidden, NotFound};
        Some(match (self, reading) {
            (NotAbsolute, _) => BadRequest("the path must start with /"),
            (NotUtf8, _) => BadRequest("the path is not UTF-8 once decoded"),
            (DotSegment, _) => Forbidden("`.` or `..` segment in path"),
            (Hidden, _) => NotFound,
            (HiddenScript, _) => Forbidden("dotfile in front of a script"),
            // Contested: 403 for a file, 400 for a script path.
            (EncodedSeparator, Reading::File) => Forbidden("encoded slash in path"),
            (EncodedSeparator, Reading::Script) => BadRequest("encoded slash or backslash in path"),
            (Nul, Reading::File) => Forbidden("NUL byte in path"),
            (Nul, Reading::Script) => BadRequest("NUL in path"),
            (Backslash, Reading::File) => Forbidden("backslash in path"),
            (Backslash, Reading::Script) => BadRequest("backslash in path"),
            // Contested: collapsed for a file, 400 for a script path.
            (EmptySegment, Reading::File) => return None,
            (EmptySegment, Reading::Script) => BadRequest("empty path segment"),
        })
    }
}

/// A checked path relative to a document root: decoded, no leading slash,
/// no empty, `.` or `..` segments, no NUL or backslash; no dotfile but a
/// leading `.well-known`, except where [`Reading::Script`] allows one
/// ([`RelPath::hidden_at`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelPath<'a> {
    rel: Cow<'a, str>,
    trailing_slash: bool,
    hidden_at: Option<usize>,
}

impl RelPath<'_> {
    /// The relative path (`""` for the root itself).
    pub fn as_str(&self) -> &str {
        &self.rel
    }

    /// Whether the path ended in `/`.
    pub fn trailing_slash(&self) -> bool {
        self.trailing_slash
    }

    /// Where the first dotfile segment starts in [`RelPath::as_str`] (only
    /// with [`Reading::Script`]; a file reading refuses dotfiles): what
    /// comes from there on is never looked up as a file, and may only be a
    /// script's path info.
    pub fn hidden_at(&self) -> Option<usize> {
        self.hidden_at
    }
}

/// Decodes the raw path of a request URI (percent-encoded, no query) for
/// the static upstream ([`Reading::File`]).
pub fn decode(raw: &str) -> Result<RelPath<'_>, ResolveError> {
    decode_for(raw, Reading::File)
}

/// Decodes the raw path of a request URI exactly once and checks it.
/// Borrows `raw` when nothing needs changing (most paths).
pub fn decode_for(raw: &str, reading: Reading) -> Result<RelPath<'_>, ResolveError> {
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(refused(Refusal::NotAbsolute, reading));
    };
    if has_encoded_separator(rest, reading) {
        return Err(refused(Refusal::EncodedSeparator, reading));
    }
    let decoded = percent_decode_str(rest)
        .decode_utf8()
        .map_err(|_| refused(Refusal::NotUtf8, reading))?;
    check(decoded, reading)
}

/// Checks a path that is already decoded (a configured script name, an
/// index file name), relative to the root, as a file; leading slashes are
/// allowed and ignored.
pub fn check_relative(rel: &str) -> Result<RelPath<'_>, ResolveError> {
    check(Cow::Borrowed(rel.trim_start_matches('/')), Reading::File)
}

/// The verdict of a rule that is refused in every reading.
fn refused(rule: Refusal, reading: Reading) -> ResolveError {
    rule.verdict(reading)
        .unwrap_or(ResolveError::BadRequest("refused request path"))
}

/// `%2f` always; with [`Reading::Script`], `%5c` and a raw backslash too
/// (refused before decoding, as one rule).
fn has_encoded_separator(raw: &str, reading: Reading) -> bool {
    let script = reading == Reading::Script;
    raw.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && (w[1..].eq_ignore_ascii_case(b"2f")
                || (script && w[1..].eq_ignore_ascii_case(b"5c")))
    }) || (script && raw.contains('\\'))
}

/// `path`: decoded, without its leading `/`.
fn check(path: Cow<'_, str>, reading: Reading) -> Result<RelPath<'_>, ResolveError> {
    if path.contains('\0') {
        return Err(refused(Refusal::Nul, reading));
    }
    if path.contains('\\') {
        return Err(refused(Refusal::Backslash, reading));
    }
    // Every `.`/`..` before empty segments and dotfiles, so a traversal
    // attempt is always reported as one, whatever else the path holds.
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(refused(Refusal::DotSegment, reading));
    }
    let empty_segment = path.starts_with('/') || path.contains("//");
    if empty_segment {
        if let Some(e) = Refusal::EmptySegment.verdict(reading) {
            return Err(e);
        }
    }
    let trailing_slash = path.is_empty() || path.ends_with('/');
    let rel = match reading {
        // A script path keeps its trailing slash: `/a.php/` is a script
        // with path info `/`, `/dir/` asks for a directory's index.
        Reading::Script => path,
        Reading::File if empty_segment => Cow::Owned(join_segments(&path)),
        Reading::File => without_trailing_slash(path),
    };
    let hidden_at = hidden_at(&rel);
    if hidden_at.is_some() && reading == Reading::File {
        return Err(refused(Refusal::Hidden, reading));
    }
    Ok(RelPath {
        rel,
        trailing_slash,
        hidden_at,
    })
}

fn without_trailing_slash(path: Cow<'_, str>) -> Cow<'_, str> {
    match path {
        Cow::Borrowed(p) => Cow::Borrowed(p.trim_end_matches('/')),
        Cow::Owned(p) => Cow::Owned(p.trim_end_matches('/').to_owned()),
    }
}

/// Drops empty segments (`a//b` is `a/b`) and a trailing slash.
fn join_segments(path: &str) -> String {
    path.split('/')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

/// The offset of the first dotfile segment of `rel`, if any.
fn hidden_at(rel: &str) -> Option<usize> {
    let mut at = 0;
    for (i, seg) in rel.split('/').enumerate() {
        if seg.starts_with('.') && !(i == 0 && seg == WELL_KNOWN) {
            return Some(at);
        }
        at += seg.len() + 1;
    }
    None
}
