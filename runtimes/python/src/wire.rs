//! The bytes of a response on the wire: the status line, the app's header
//! fields (checked), the framing fields the worker adds, chunk framing, and
//! the small pages the worker answers by itself. Pure functions.
//!
//! Invariants: nothing the app passes reaches the wire unchecked: a status
//! is three digits and a reason of visible text, a name is an RFC 9110
//! token, a value has no control characters but tab; `Connection`,
//! `Keep-Alive` and `Transfer-Encoding` belong to the worker and are dropped,
//! and `Content-Length` is taken aside (the worker writes the framing).

use http::StatusCode;

/// The head of a response as `start_response` recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub status: u16,
    /// The app's reason phrase, when it differs from the standard one.
    pub reason: Option<Vec<u8>>,
    /// The app's fields, each `name: value\r\n`, in order.
    pub lines: Vec<u8>,
    /// The app's `Content-Length` values, as given.
    pub lengths: Vec<Vec<u8>>,
}

impl Pending {
    /// The app's Content-Length: `Ok(None)` if it set none.
    pub fn content_length(&self) -> Result<Option<u64>, String> {
        let Some(first) = self.lengths.first() else {
            return Ok(None);
        };
        let n = crate::head::parse_length(first).ok_or_else(|| {
            format!(
                "invalid Content-Length {:?}",
                String::from_utf8_lossy(first)
            )
        })?;
        if self.lengths.iter().any(|l| l != first) {
            return Err("more than one Content-Length header".into());
        }
        Ok(Some(n))
    }

    /// Statuses whose responses never have a body.
    pub fn bodiless(&self) -> bool {
        self.status < 200 || self.status == 204 || self.status == 304
    }
}

/// `NNN` or `NNN reason`; the reason is kept only when it is not the standard one.
pub fn parse_status_line(raw: &[u8]) -> Option<(u16, Option<Vec<u8>>)> {
    let (code, rest) = raw.split_at(raw.len().min(3));
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = StatusCode::from_bytes(code).ok()?;
    let reason = match rest {
        [] => None,
        [b' ', reason @ ..] => {
            if !reason
                .iter()
                .all(|&b| b == b'\t' || b == b' ' || visible(b))
            {
                return None;
            }
            (status.canonical_reason().map(str::as_bytes) != Some(reason)).then(|| reason.to_vec())
        }
        _ => return None,
    };
    Some((status.as_u16(), reason))
}

fn visible(b: u8) -> bool {
    (0x21..0x7f).contains(&b) || b >= 0x80
}

/// An RFC 9110 token character.
fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Why a header field cannot be sent.
#[derive(Debug, PartialEq, Eq)]
pub enum FieldError {
    Name,
    Value,
}

/// Adds one of the app's fields to `p` (or drops it, if the worker owns it).
pub fn add_field(p: &mut Pending, name: &[u8], value: &[u8]) -> Result<(), FieldError> {
    if name.is_empty() || !name.iter().all(|&b| tchar(b)) {
        return Err(FieldError::Name);
    }
    if !value.iter().all(|&b| b == b'\t' || b == b' ' || visible(b)) {
        return Err(FieldError::Value);
    }
    if name.eq_ignore_ascii_case(b"content-length") {
        p.lengths.push(value.to_vec());
    } else if !(name.eq_ignore_ascii_case(b"connection")
        || name.eq_ignore_ascii_case(b"keep-alive")
        || name.eq_ignore_ascii_case(b"transfer-encoding"))
    {
        p.lines.extend_from_slice(name);
        p.lines.extend_from_slice(b": ");
        p.lines.extend_from_slice(value);
        p.lines.extend_from_slice(b"\r\n");
    }
    Ok(())
}

/// How a response body is delimited, as announced in its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: n`.
    Length(u64),
    Chunked,
    /// Neither (HTTP/1.0 streams): the body ends when the connection closes.
    Close,
    /// No body follows (HEAD, 1xx/204/304); `Content-Length: n` announced if `Some`.
    None(Option<u64>),
}

/// Writes the head: status line, the app's fields, framing, `Connection`.
pub fn encode_head(out: &mut Vec<u8>, p: &Pending, framing: Framing, close: bool, http10: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(p.status));
    out.push(b' ');
    match &p.reason {
        Some(r) => out.extend_from_slice(r),
        None => out.extend_from_slice(
            StatusCode::from_u16(p.status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("")
                .as_bytes(),
        ),
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&p.lines);
    match framing {
        Framing::Length(n) | Framing::None(Some(n)) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Close | Framing::None(None) => {}
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The line before a chunk of `len` bytes (its end is [`CHUNK_END`]).
pub fn chunk_prefix(len: usize) -> ChunkPrefix {
    let mut p = ChunkPrefix {
        bytes: [0; 18],
        start: 16,
    };
    p.bytes[16] = b'\r';
    p.bytes[17] = b'\n';
    let mut n = len;
    loop {
        p.start -= 1;
        p.bytes[p.start] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    p
}

/// `{len:x}\r\n` without an allocation.
pub struct ChunkPrefix {
    bytes: [u8; 18],
    start: usize,
}

impl ChunkPrefix {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

pub const CHUNK_END: &[u8] = b"\r\n";
/// The last chunk of a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A whole `text/plain` response the worker makes itself (500, 400, 431).
pub fn simple_response(status: u16, text: &str, close: bool) -> Vec<u8> {
    let body = format!("{text}\n");
    let mut p = Pending {
        status,
        reason: None,
        lines: Vec::new(),
        lengths: Vec::new(),
    };
    let _ = add_field(&mut p, b"content-type", b"text/plain; charset=utf-8");
    let mut out = Vec::with_capacity(128 + body.len());
    encode_head(
        &mut out,
        &p,
        Framing::Length(body.len() as u64),
        close,
        false,
    );
    out.extend_from_slice(body.as_bytes());
    out
}

/// The response for a failure before the app's headers went out.
pub fn error_page(status: u16, close: bool) -> Vec<u8> {
    let text = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    simple_response(status, text, close)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let check = |raw: &str, want: Option<(u16, Option<&str>)>| {
            let got = parse_status_line(raw.as_bytes())
                .map(|(s, r)| (s, r.map(|r| String::from_utf8(r).unwrap())));
            let want = want.map(|(s, r)| (s, r.map(str::to_owned)));
            assert_eq!(got, want, "{raw:?}");
        };
        check("200 OK", Some((200, None)));
        check("200", Some((200, None)));
        check("404 Not Found", Some((404, None)));
        check("200 Fine Thanks", Some((200, Some("Fine Thanks"))));
        check("299 Custom", Some((299, Some("Custom"))));
        check("twohundred", None);
        check("20", None);
        check("200OK", None);
        check("099 Low", None);
        check("200 bad\r\nInjected: 1", None);
    }

    fn pending(fields: &[(&str, &str)]) -> Result<Pending, FieldError> {
        let mut p = Pending {
            status: 200,
            reason: None,
            lines: Vec::new(),
            lengths: Vec::new(),
        };
        for (n, v) in fields {
            add_field(&mut p, n.as_bytes(), v.as_bytes())?;
        }
        Ok(p)
    }

    #[test]
    fn fields_are_checked_and_framing_is_ours() {
        let p = pending(&[
            ("Content-Type", "text/plain"),
            ("Connection", "close"),
            ("Transfer-Encoding", "chunked"),
            ("X-Tab", "a\tb"),
            ("content-length", "3"),
        ])
        .unwrap();
        assert_eq!(p.lines, b"Content-Type: text/plain\r\nX-Tab: a\tb\r\n");
        assert_eq!(p.content_length(), Ok(Some(3)));
        assert_eq!(pending(&[("Bad Name", "x")]), Err(FieldError::Name));
        assert_eq!(
            pending(&[("X", "a\r\nInjected: 1")]),
            Err(FieldError::Value)
        );
        assert_eq!(pending(&[("X", "nul\0")]), Err(FieldError::Value));
        assert!(pending(&[("Content-Length", "x")])
            .unwrap()
            .content_length()
            .is_err());
        assert!(pending(&[("Content-Length", "1"), ("Content-Length", "2")])
            .unwrap()
            .content_length()
            .is_err());
    }

    #[test]
    fn heads() {
        let mut p = pending(&[("Content-Type", "text/plain")]).unwrap();
        let head = |p: &Pending, f, close, http10| {
            let mut out = Vec::new();
            encode_head(&mut out, p, f, close, http10);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            head(&p, Framing::Length(13), false, false),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 13\r\n\r\n"
        );
        assert_eq!(
            head(&p, Framing::Chunked, true, false),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        p.status = 299;
        p.reason = Some(b"Quite Fine".to_vec());
        assert_eq!(
            head(&p, Framing::None(None), false, true),
            "HTTP/1.1 299 Quite Fine\r\nContent-Type: text/plain\r\nconnection: keep-alive\r\n\r\n"
        );
        assert_eq!(chunk_prefix(255).as_bytes(), b"ff\r\n");
        assert_eq!(chunk_prefix(0).as_bytes(), b"0\r\n");
        let mut out = Vec::new();
        push_decimal(&mut out, 0);
        push_decimal(&mut out, u64::MAX);
        assert_eq!(out, b"018446744073709551615");
        let page = String::from_utf8(error_page(500, false)).unwrap();
        assert!(
            page.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{page}"
        );
        assert!(
            page.ends_with("content-length: 22\r\n\r\nInternal Server Error\n"),
            "{page}"
        );
    }
}
