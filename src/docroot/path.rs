//! Request-path rules, pure string work: percent-decode once, then refuse
//! what must never reach the file system. The kernel (`openat2` with
//! `RESOLVE_BENEATH`) is the real fence; these rules keep obviously hostile
//! paths away from it and hide dotfiles.

use percent_encoding::percent_decode_str;

use super::ResolveError;

/// The only dot-directory that is served (ACME HTTP-01 challenges and the like).
const WELL_KNOWN: &str = ".well-known";

/// A checked path relative to a document root: no leading slash, no empty,
/// `.` or `..` segments, no NUL or backslash, no dotfiles but `.well-known`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelPath {
    rel: String,
    trailing_slash: bool,
}

impl RelPath {
    /// The relative path (`""` for the root itself).
    pub fn as_str(&self) -> &str {
        &self.rel
    }

    /// Whether the path ended in `/`.
    pub fn trailing_slash(&self) -> bool {
        self.trailing_slash
    }
}

/// Decodes the raw path of a request URI (percent-encoded, no query) exactly
/// once and checks it. An encoded slash (`%2f`) is refused rather than
/// interpreted; a double-encoded `%252e` decodes to the literal name `%2e`.
pub fn decode(raw: &str) -> Result<RelPath, ResolveError> {
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(ResolveError::BadRequest("the path must start with /"));
    };
    if contains_ignore_case(rest, "%2f") {
        return Err(ResolveError::Forbidden("encoded slash in path"));
    }
    let decoded = percent_decode_str(rest)
        .decode_utf8()
        .map_err(|_| ResolveError::BadRequest("the path is not UTF-8 once decoded"))?;
    check_segments(&decoded)
}

/// Checks a path that is already decoded (a configured script name, the
/// script part of a request path), relative to the root; leading slashes
/// are allowed and ignored.
pub fn check_relative(rel: &str) -> Result<RelPath, ResolveError> {
    check_segments(rel.trim_start_matches('/'))
}

fn check_segments(path: &str) -> Result<RelPath, ResolveError> {
    if path.contains('\0') {
        return Err(ResolveError::Forbidden("NUL byte in path"));
    }
    if path.contains('\\') {
        return Err(ResolveError::Forbidden("backslash in path"));
    }
    let mut segments = Vec::new();
    // Refuse every `.`/`..` before looking at dotfiles, so a traversal
    // attempt is always reported as one, whatever follows it.
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        if seg == "." || seg == ".." {
            return Err(ResolveError::Forbidden("`.` or `..` segment in path"));
        }
        segments.push(seg);
    }
    for (i, seg) in segments.iter().enumerate() {
        if seg.starts_with('.') && !(i == 0 && *seg == WELL_KNOWN) {
            return Err(ResolveError::NotFound);
        }
    }
    Ok(RelPath {
        rel: segments.join("/"),
        // The root itself always counts as "ending in a slash".
        trailing_slash: path.is_empty() || path.ends_with('/'),
    })
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}
