//! Validators and the request conditions evaluated against them (RFC 9110
//! §13: `If-Match`, `If-Unmodified-Since`, `If-None-Match`,
//! `If-Modified-Since`, `If-Range`) and the `Range` header (§14). Pure
//! functions of the request headers and the file's `fstat`, so they are
//! tested with tables.
//!
//! Written here rather than taken from hyper-staticfile's
//! `FileResponseBuilder`, which (0.10) evaluates only `If-Modified-Since`:
//! no `If-None-Match`, no `If-Match`/`If-Unmodified-Since` (412), no
//! `Content-Range` on 416, a weak ETag matched against `If-Range`, and HEAD
//! responses without `Content-Type`.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{header, HeaderMap, HeaderName, Method};

/// Last second `httpdate` can format (9999-12-31T23:59:59Z).
const MAX_HTTP_DATE: u64 = 253_402_300_799;

/// What identifies one version of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validators {
    /// Strong entity tag, quoted: inode, size and mtime to the nanosecond.
    pub etag: String,
    /// Modification time in whole seconds; `None` when it cannot be
    /// expressed as an HTTP date (before 1970 or after 9999).
    pub last_modified: Option<SystemTime>,
    /// Size in bytes.
    pub len: u64,
}

impl Validators {
    pub fn from_metadata(meta: &Metadata) -> Validators {
        Validators::new(meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec())
    }

    pub fn new(ino: u64, len: u64, mtime: i64, mtime_nsec: i64) -> Validators {
        let last_modified = u64::try_from(mtime)
            .ok()
            .filter(|s| *s <= MAX_HTTP_DATE)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s));
        Validators {
            etag: etag(ino, len, mtime, mtime_nsec),
            last_modified,
            len,
        }
    }
}

/// `"ino-len-mtime.nsec"` in lower-case hex, as
/// `format!("\"{ino:x}-{len:x}-{mtime:x}.{mtime_nsec:x}\"")` writes it (a
/// negative time in two's complement), into one right-sized allocation:
/// by hand because this runs for every file served, and `format!`'s
/// machinery was a visible share of a small file's CPU.
fn etag(ino: u64, len: u64, mtime: i64, mtime_nsec: i64) -> String {
    fn digits(n: u64) -> u32 {
        (64 - n.leading_zeros()).div_ceil(4).max(1)
    }
    fn hex(out: &mut String, n: u64) {
        for shift in (0..digits(n)).rev() {
            let d = ((n >> (shift * 4)) & 0xf) as u8;
            out.push(char::from(if d < 10 { b'0' + d } else { b'a' + d - 10 }));
        }
    }
    let (mtime, mtime_nsec) = (mtime as u64, mtime_nsec as u64);
    // Exactly the length: the text becomes a header value without a copy
    // (`Bytes::from` a full `Vec`).
    let len_ = [ino, len, mtime, mtime_nsec]
        .map(digits)
        .iter()
        .sum::<u32>() as usize;
    let mut out = String::with_capacity(2 + 3 + len_);
    out.push('"');
    hex(&mut out, ino);
    out.push('-');
    hex(&mut out, len);
    out.push('-');
    hex(&mut out, mtime);
    out.push('.');
    hex(&mut out, mtime_nsec);
    out.push('"');
    out
}

/// What to answer, once the conditions are evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// 200 with the whole file.
    Full,
    /// 206 with bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 304.
    NotModified,
    /// 412.
    PreconditionFailed,
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Evaluates the conditional headers in the order RFC 9110 §13.2.2 gives,
/// then `Range` (GET only; §14.2: ignored for other methods).
pub fn decide(method: &Method, headers: &HeaderMap, v: &Validators) -> Decision {
    if let Some(list) = header_list(headers, &header::IF_MATCH) {
        if !etag_matches(&list, &v.etag, Compare::Strong) {
            return Decision::PreconditionFailed;
        }
    } else if let (Some(lm), Some(date)) =
        (v.last_modified, date(headers, &header::IF_UNMODIFIED_SINCE))
    {
        if lm > date {
            return Decision::PreconditionFailed;
        }
    }
    if let Some(list) = header_list(headers, &header::IF_NONE_MATCH) {
        if etag_matches(&list, &v.etag, Compare::Weak) {
            return Decision::NotModified;
        }
    } else if let (Some(lm), Some(date)) =
        (v.last_modified, date(headers, &header::IF_MODIFIED_SINCE))
    {
        // A date in the future is invalid (§13.1.3) and ignored.
        if lm <= date && date <= SystemTime::now() {
            return Decision::NotModified;
        }
    }
    if method != Method::GET {
        return Decision::Full;
    }
    let Some(range) = headers.get(header::RANGE).and_then(|r| r.to_str().ok()) else {
        return Decision::Full;
    };
    if let Some(if_range) = headers.get(header::IF_RANGE) {
        if !if_range_matches(if_range.to_str().unwrap_or(""), v) {
            return Decision::Full;
        }
    }
    match parse_range(range, v.len) {
        RangeSpec::Ignore => Decision::Full,
        RangeSpec::Unsatisfiable => Decision::Unsatisfiable,
        RangeSpec::Bytes { start, end } => Decision::Partial { start, end },
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Compare {
    Strong,
    Weak,
}

/// All instances of a list header joined, or `None` when absent. Values
/// that are not visible ASCII are dropped (they cannot match).
fn header_list(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    Some(
        values
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    let value = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(value.trim()).ok()
}

/// Whether `ours` (a quoted strong tag) is in `list` (`*` or a list of
/// entity tags). A malformed list matches nothing.
fn etag_matches(list: &str, ours: &str, cmp: Compare) -> bool {
    if list.trim() == "*" {
        return true;
    }
    let ours = ours.trim_matches('"');
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        if rest.is_empty() {
            return false;
        }
        let (weak, tag) = match rest.strip_prefix("W/") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let Some(tag) = tag.strip_prefix('"') else {
            return false;
        };
        let Some(end) = tag.find('"') else {
            return false;
        };
        if &tag[..end] == ours && (cmp == Compare::Weak || !weak) {
            return true;
        }
        rest = &tag[end + 1..];
    }
}

/// `If-Range`: an entity tag (strong comparison) or the exact `Last-Modified` date.
fn if_range_matches(value: &str, v: &Validators) -> bool {
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        return !value.starts_with("W/") && etag_matches(value, &v.etag, Compare::Strong);
    }
    match (httpdate::parse_http_date(value), v.last_modified) {
        (Ok(date), Some(lm)) => date == lm,
        _ => false,
    }
}

/// A parsed `Range` header against a file of `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// Not a single byte range we understand: serve the whole file (a
    /// server may ignore `Range`, §14.2). Multiple ranges land here too:
    /// the whole file is cheaper than multipart/byteranges, and no client
    /// depends on them.
    Ignore,
    /// No byte of the range exists.
    Unsatisfiable,
    /// Bytes `start..=end`, clamped to the file.
    Bytes { start: u64, end: u64 },
}

pub fn parse_range(value: &str, len: u64) -> RangeSpec {
    let value = value.trim();
    let Some(spec) = value
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .map(|_| value[6..].trim())
    else {
        return RangeSpec::Ignore;
    };
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let Some(suffix) = number(last) else {
            return RangeSpec::Ignore;
        };
        if suffix == 0 || len == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Bytes {
            start: len - suffix.min(len),
            end: len - 1,
        };
    }
    let Some(start) = number(first) else {
        return RangeSpec::Ignore;
    };
    let end = if last.is_empty() {
        None
    } else {
        match number(last) {
            Some(end) if end >= start => Some(end),
            _ => return RangeSpec::Ignore,
        }
    };
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Bytes {
        start,
        end: end.unwrap_or(u64::MAX).min(len - 1),
    }
}

/// Digits only (`u64::from_str` would also take a leading `+`).
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn range_table() {
        use RangeSpec::*;
        let len = 100;
        let cases = [
            ("bytes=0-9", Bytes { start: 0, end: 9 }),
            ("bytes=10-", Bytes { start: 10, end: 99 }),
            ("bytes=-5", Bytes { start: 95, end: 99 }),
            ("bytes=-500", Bytes { start: 0, end: 99 }),
            ("bytes=90-500", Bytes { start: 90, end: 99 }),
            ("BYTES=1-1", Bytes { start: 1, end: 1 }),
            ("bytes= 2 - 3 ", Bytes { start: 2, end: 3 }),
            ("bytes=100-", Unsatisfiable),
            ("bytes=100-200", Unsatisfiable),
            ("bytes=-0", Unsatisfiable),
            ("bytes=5-4", Ignore),
            ("bytes=0-1,5-6", Ignore),
            ("bytes=+1-2", Ignore),
            ("bytes=a-b", Ignore),
            ("bytes=-", Ignore),
            ("bytes=99999999999999999999999-", Ignore),
            ("items=0-1", Ignore),
            ("bytes", Ignore),
            ("", Ignore),
            ("bytés=0-1", Ignore),
        ];
        for (value, want) in cases {
            assert_eq!(parse_range(value, len), want, "Range: {value}");
        }
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-1", 0), Unsatisfiable);
    }

    fn validators() -> Validators {
        // 2023-11-14T22:13:20Z
        Validators::new(7, 100, 1_700_000_000, 5)
    }

    fn check(method: Method, headers: &[(&str, &str)], want: Decision) {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        assert_eq!(
            decide(&method, &map, &validators()),
            want,
            "{method} {headers:?}"
        );
    }

    #[test]
    fn conditions_table() {
        use Decision::*;
        let etag = validators().etag;
        let weak = format!("W/{etag}");
        let lm = "Tue, 14 Nov 2023 22:13:20 GMT";
        let before = "Tue, 14 Nov 2023 22:13:19 GMT";
        let after = "Wed, 15 Nov 2023 00:00:00 GMT";
        let future = "Fri, 01 Jan 9999 00:00:00 GMT";
        let get = Method::GET;
        type Case<'a> = (Method, Vec<(&'a str, &'a str)>, Decision);
        let cases: Vec<Case> = vec![
            (get.clone(), vec![], Full),
            (get.clone(), vec![("if-none-match", &etag)], NotModified),
            (get.clone(), vec![("if-none-match", &weak)], NotModified),
            (get.clone(), vec![("if-none-match", "\"x\", \"y\"")], Full),
            (
                get.clone(),
                vec![("if-none-match", "\"x\""), ("if-none-match", &etag)],
                NotModified,
            ),
            (get.clone(), vec![("if-none-match", "*")], NotModified),
            (get.clone(), vec![("if-none-match", "garbage")], Full),
            (get.clone(), vec![("if-modified-since", lm)], NotModified),
            (get.clone(), vec![("if-modified-since", after)], NotModified),
            (get.clone(), vec![("if-modified-since", before)], Full),
            (get.clone(), vec![("if-modified-since", future)], Full),
            (get.clone(), vec![("if-modified-since", "yesterday")], Full),
            // If-None-Match wins over If-Modified-Since.
            (
                get.clone(),
                vec![("if-none-match", "\"x\""), ("if-modified-since", after)],
                Full,
            ),
            (get.clone(), vec![("if-match", &etag)], Full),
            (get.clone(), vec![("if-match", "*")], Full),
            (get.clone(), vec![("if-match", &weak)], PreconditionFailed),
            (get.clone(), vec![("if-match", "\"x\"")], PreconditionFailed),
            (
                get.clone(),
                vec![("if-unmodified-since", before)],
                PreconditionFailed,
            ),
            (get.clone(), vec![("if-unmodified-since", lm)], Full),
            (get.clone(), vec![("if-unmodified-since", "nonsense")], Full),
            // If-Match wins over If-Unmodified-Since.
            (
                get.clone(),
                vec![("if-match", &etag), ("if-unmodified-since", before)],
                Full,
            ),
            (
                get.clone(),
                vec![("range", "bytes=0-9")],
                Partial { start: 0, end: 9 },
            ),
            (get.clone(), vec![("range", "bytes=200-")], Unsatisfiable),
            (
                get.clone(),
                vec![("range", "bytes=0-9"), ("if-range", &etag)],
                Partial { start: 0, end: 9 },
            ),
            (
                get.clone(),
                vec![("range", "bytes=0-9"), ("if-range", lm)],
                Partial { start: 0, end: 9 },
            ),
            (
                get.clone(),
                vec![("range", "bytes=0-9"), ("if-range", "\"old\"")],
                Full,
            ),
            (
                get.clone(),
                vec![("range", "bytes=0-9"), ("if-range", &weak)],
                Full,
            ),
            (
                get.clone(),
                vec![("range", "bytes=0-9"), ("if-range", before)],
                Full,
            ),
            (Method::HEAD, vec![("range", "bytes=0-9")], Full),
            (Method::HEAD, vec![("if-none-match", &etag)], NotModified),
        ];
        for (method, headers, want) in cases {
            check(method, &headers, want);
        }
    }

    #[test]
    fn odd_modification_times_have_no_date() {
        assert_eq!(Validators::new(1, 1, -5, 0).last_modified, None);
        assert_eq!(Validators::new(1, 1, i64::MAX, 0).last_modified, None);
        assert!(Validators::new(1, 1, 0, 0).last_modified.is_some());
        let v = Validators::new(1, 1, -5, 0);
        // Without a date, date conditions are ignored.
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_static("Tue, 14 Nov 2023 22:13:20 GMT"),
        );
        assert_eq!(decide(&Method::GET, &h, &v), Decision::Full);
    }

    #[test]
    fn etag_is_the_formatted_one() {
        for (ino, len, mtime, nsec) in [
            (0, 0, 0, 0),
            (1, 13, 1_700_000_000, 999_999_999),
            (u64::MAX, u64::MAX, i64::MIN, i64::MAX),
            (0xabcdef, 0x10, -1, 15),
        ] {
            assert_eq!(
                etag(ino, len, mtime, nsec),
                format!("\"{ino:x}-{len:x}-{mtime:x}.{nsec:x}\"")
            );
        }
    }
}
