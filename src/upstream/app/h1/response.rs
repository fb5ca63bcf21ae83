//! A response head off the wire: `httparse` on the read buffer, the fields
//! as slices of one frozen copy of the head (no allocation per value), the
//! body's framing, and whether the app keeps the connection open.
//!
//! The connection's own fields are settled here and not kept in the map:
//! `Transfer-Encoding` (the framing), `Keep-Alive`, and a `Connection` that
//! names nothing but `close`/`keep-alive`; any other hop-by-hop field is
//! left for `upstream::hop::strip_hop_by_hop`, as before.

use bytes::BytesMut;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode, Version};

use super::decode::Framing;
use super::MAX_FIELDS;

/// The final response head.
pub(in crate::upstream::app) struct ResponseHead {
    pub(in crate::upstream::app) parts: http::response::Parts,
    pub(in crate::upstream::app) framing: Framing,
    /// The app closes the connection after this response (HTTP/1.0, or
    /// `Connection: close`).
    pub(in crate::upstream::app) close: bool,
}

/// Where a field lies in the head: name and value ranges.
#[derive(Clone, Copy, Default)]
struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

/// Parses the final head at the start of `buf` and takes it out;
/// `Ok(None)`: not all of it is here yet. Informational heads (1xx but
/// 101) before it are taken out and passed over.
pub(super) fn parse(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<ResponseHead>, String> {
    loop {
        let Some((len, code, version, count, spans)) = locate(buf)? else {
            return Ok(None);
        };
        let status = StatusCode::from_u16(code).map_err(|_| format!("sent status {code}"))?;
        let head = buf.split_to(len).freeze();
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            if buf.is_empty() {
                return Ok(None);
            }
            continue;
        }
        let mut fields = Fields::default();
        let mut headers = HeaderMap::with_capacity(count);
        for span in &spans[..count] {
            let name = &head[span.name.0..span.name.1];
            let value = &head[span.value.0..span.value.1];
            if !fields.settle(name, value)? {
                continue;
            }
            let name = HeaderName::from_bytes(name).map_err(|_| bad_field(name))?;
            let value = HeaderValue::from_maybe_shared(head.slice(span.value.0..span.value.1))
                .map_err(|_| bad_field(&head[span.name.0..span.name.1]))?;
            headers.append(name, value);
        }
        let framing = fields.framing(status, head_request, &mut headers)?;
        let mut parts = Response::new(()).into_parts().0;
        parts.status = status;
        parts.version = match version {
            0 => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        parts.headers = headers;
        let close = fields.close || version == 0;
        return Ok(Some(ResponseHead {
            parts,
            framing,
            close,
        }));
    }
}

type Located = (usize, u16, u8, usize, [Span; MAX_FIELDS]);

/// The head's length, status, minor version and field spans, if whole.
fn locate(buf: &[u8]) -> Result<Option<Located>, String> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut raw);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(format!(
                "sent a response head of more than {MAX_FIELDS} fields"
            ))
        }
        Err(e) => return Err(format!("sent a malformed response head ({e})")),
    };
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start, start + s.len())
    };
    let mut spans = [Span::default(); MAX_FIELDS];
    for (span, field) in spans.iter_mut().zip(response.headers.iter()) {
        span.name = at(field.name.as_bytes());
        span.value = at(field.value);
    }
    let code = response.code.unwrap_or(0);
    let version = response.version.unwrap_or(1);
    Ok(Some((len, code, version, response.headers.len(), spans)))
}

fn bad_field(name: &[u8]) -> String {
    format!(
        "sent a malformed header field {:?}",
        String::from_utf8_lossy(name)
    )
}

/// What the connection's fields said.
#[derive(Default)]
struct Fields {
    length: Option<u64>,
    chunked: Option<bool>,
    close: bool,
}

impl Fields {
    /// Notes a field; whether it goes into the map.
    fn settle(&mut self, name: &[u8], value: &[u8]) -> Result<bool, String> {
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(value)?;
            if self.length.is_some_and(|l| l != n) {
                return Err("sent conflicting Content-Length fields".into());
            }
            let first = self.length.is_none();
            self.length = Some(n);
            return Ok(first);
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            self.chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            return Ok(false);
        }
        if name.eq_ignore_ascii_case(b"keep-alive") {
            return Ok(false);
        }
        if name.eq_ignore_ascii_case(b"connection") {
            let mut only_ours = true;
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    only_ours = false;
                }
            }
            return Ok(!only_ours);
        }
        Ok(true)
    }

    /// How the body is delimited (RFC 9112 §6.3).
    fn framing(
        &self,
        status: StatusCode,
        head_request: bool,
        headers: &mut HeaderMap,
    ) -> Result<Framing, String> {
        let bodiless = head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        if bodiless {
            return Ok(Framing::Empty);
        }
        match (self.chunked, self.length) {
            (Some(true), _) => {
                // Chunked wins; a length beside it says nothing true.
                headers.remove(header::CONTENT_LENGTH);
                Ok(Framing::Chunked)
            }
            (Some(false), _) => {
                headers.remove(header::CONTENT_LENGTH);
                Ok(Framing::Eof)
            }
            (None, Some(0)) => Ok(Framing::Empty),
            (None, Some(n)) => Ok(Framing::Length(n)),
            (None, None) => Ok(Framing::Eof),
        }
    }
}

fn parse_length(value: &[u8]) -> Result<u64, String> {
    let value = value.trim_ascii();
    let ok = !value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit);
    if !ok {
        return Err(format!(
            "sent a bad Content-Length {:?}",
            String::from_utf8_lossy(value)
        ));
    }
    Ok(value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}
