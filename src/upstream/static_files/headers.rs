//! The response header values of a file that cost an allocation or a
//! lookup to make, made once and reused: `Content-Type` per file name
//! extension, `Last-Modified` per modification second.
//!
//! Invariants:
//! - A cached value is exactly what would be made afresh
//!   ([`content_type_uncached`], [`httpdate::fmt_http_date`]).
//! - The caches are per thread (no lock on the request path) and bounded:
//!   only extensions `mime_guess` knows are kept (its table is finite; an
//!   unknown extension is `application/octet-stream`, a static value), and
//!   `Last-Modified` keeps one second.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::SystemTime;

use http::HeaderValue;

/// The longest extension looked up in the cache; longer ones (none that
/// `mime_guess` knows is this long) are typed afresh each time.
const MAX_EXTENSION: usize = 16;

const OCTET_STREAM: &str = "application/octet-stream";

thread_local! {
    /// Lower-case extension → its `Content-Type`.
    static BY_EXTENSION: RefCell<HashMap<Box<[u8]>, HeaderValue>> = RefCell::new(HashMap::new());
}

/// `Content-Type` for the file at `rel` (a path below the root), by its
/// extension in any letter case.
pub(super) fn content_type(rel: &str) -> HeaderValue {
    let name = rel.rsplit('/').next().unwrap_or_default();
    // As `Path::extension`, which `mime_guess` reads: `.css` has none.
    let Some((_, ext)) = name.rsplit_once('.').filter(|(stem, _)| !stem.is_empty()) else {
        return HeaderValue::from_static(OCTET_STREAM);
    };
    if ext.is_empty() || ext.len() > MAX_EXTENSION {
        return content_type_uncached(rel);
    }
    let mut lower = [0u8; MAX_EXTENSION];
    let lower = &mut lower[..ext.len()];
    lower.copy_from_slice(ext.as_bytes());
    lower.make_ascii_lowercase();
    BY_EXTENSION.with_borrow_mut(|cache| {
        if let Some(v) = cache.get(&*lower) {
            return v.clone();
        }
        let v = content_type_uncached(rel);
        if v != OCTET_STREAM {
            cache.insert(lower.into(), v.clone());
        }
        v
    })
}

/// Types a browser reads as text get `charset=utf-8`.
pub(super) fn content_type_uncached(rel: &str) -> HeaderValue {
    let mime = mime_guess::from_path(rel)
        .first_raw()
        .unwrap_or(OCTET_STREAM);
    let texty = mime.starts_with("text/")
        || matches!(
            mime,
            "application/javascript" | "application/json" | "application/xml" | "image/svg+xml"
        );
    if texty {
        HeaderValue::try_from(format!("{mime}; charset=utf-8"))
            .unwrap_or_else(|_| HeaderValue::from_static(OCTET_STREAM))
    } else {
        HeaderValue::from_static(mime)
    }
}

/// `Last-Modified` for a modification time in whole seconds.
pub(super) fn last_modified(time: SystemTime) -> Option<HeaderValue> {
    thread_local! {
        static LAST: RefCell<Option<(SystemTime, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| {
        if let Some((_, v)) = last.as_ref().filter(|(t, _)| *t == time) {
            return Some(v.clone());
        }
        let v = HeaderValue::try_from(httpdate::fmt_http_date(time)).ok()?;
        *last = Some((time, v.clone()));
        Some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn cached_content_types_are_the_uncached_ones() {
        for rel in [
            "a.txt",
            "b/A.TXT",
            "c.Txt",
            "x.css",
            "y.png",
            "z.PNG",
            "s.svg",
            "j.js",
            "m.json",
            "noext",
            "dot.",
            "weird.zzzzqq",
            "long.abcdefghijklmnopqrstuvwxyz",
            ".hidden",
            ".css",
            "d.d/x",
        ] {
            for _ in 0..2 {
                assert_eq!(content_type(rel), content_type_uncached(rel), "{rel}");
            }
        }
    }

    #[test]
    fn unknown_extensions_are_not_kept() {
        for i in 0..100 {
            assert_eq!(content_type(&format!("f.unknown{i}")), OCTET_STREAM);
        }
        let kept = BY_EXTENSION.with_borrow(|cache| cache.len());
        assert_eq!(kept, 0, "unknown extensions kept");
        content_type("a.css");
        content_type("b.CSS");
        assert_eq!(BY_EXTENSION.with_borrow(|cache| cache.len()), 1);
    }

    #[test]
    fn last_modified_follows_the_time() {
        let a = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let b = a + Duration::from_secs(1);
        for t in [a, a, b, a, b, b] {
            assert_eq!(
                last_modified(t).unwrap(),
                httpdate::fmt_http_date(t).as_str()
            );
        }
    }
}
