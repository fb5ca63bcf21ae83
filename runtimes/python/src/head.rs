//! The request head: parsed by `httparse` from a connection's read buffer,
//! kept as offsets into that buffer (so no borrow outlives the parse), with
//! the facts about framing and the connection that the worker acts on.
//!
//! Invariants: a [`RequestHead`] is only ever read against the very bytes it
//! was parsed from (the buffer is not touched until the environ is built);
//! a request whose framing is ambiguous (unknown transfer coding, differing
//! Content-Lengths) is rejected, never guessed.

use std::ops::Range;

/// Header fields parsed without a heap allocation; more take a second pass.
const STACK_HEADERS: usize = 64;
/// The router forwards up to 1,000 client fields and adds its own.
pub const MAX_HEADERS: usize = polyhost_protocol::limits::MAX_REQUEST_FIELDS;
/// The router's largest `max_header_size` (1 MiB) plus room for its own fields.
pub const MAX_HEAD: usize = polyhost_protocol::limits::MAX_REQUEST_HEAD;

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// `Content-Length: n` (absent means 0).
    Length(u64),
    Chunked,
}

/// A parsed request head; ranges index the buffer it was parsed from.
#[derive(Debug)]
pub struct RequestHead {
    /// Bytes of the head, the final blank line included.
    pub len: usize,
    pub method: Range<usize>,
    pub target: Range<usize>,
    pub http10: bool,
    /// (name, value) of every field, in order.
    pub headers: Vec<(Range<usize>, Range<usize>)>,
    pub body: BodyLength,
    /// The client allows another request on this connection.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

impl RequestHead {
    /// The whole body is among the `buffered` bytes read with the head
    /// (a chunked body's end is not known before it is parsed: no).
    pub fn body_buffered(&self, buffered: usize) -> bool {
        match self.body {
            BodyLength::Length(n) => buffered.saturating_sub(self.len) as u64 >= n,
            BodyLength::Chunked => false,
        }
    }
}

/// Why a request is refused before the app sees it (the connection closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// 400, with the reason.
    BadRequest(&'static str),
    /// 431: the head is larger than [`MAX_HEAD`] or has more than [`MAX_HEADERS`] fields.
    TooLarge,
}

impl Reject {
    pub fn status(self) -> u16 {
        match self {
            Reject::BadRequest(_) => 400,
            Reject::TooLarge => 431,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Reject::BadRequest(why) => why,
            Reject::TooLarge => "request head too large",
        }
    }
}

#[derive(Debug)]
pub enum Parsed {
    Complete(RequestHead),
    /// More bytes are needed.
    Partial,
    Invalid(Reject),
}

/// Parses the head at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; STACK_HEADERS];
    match parse_with(buf, &mut headers) {
        Err(httparse::Error::TooManyHeaders) => {}
        other => return finish(buf, other),
    }
    let mut headers = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    match parse_with(buf, &mut headers) {
        Err(httparse::Error::TooManyHeaders) => Parsed::Invalid(Reject::TooLarge),
        other => finish(buf, other),
    }
}

type Outcome = Result<Option<RequestHead>, httparse::Error>;

fn finish(buf: &[u8], outcome: Outcome) -> Parsed {
    match outcome {
        Ok(Some(head)) => Parsed::Complete(head),
        Ok(None) if buf.len() >= MAX_HEAD => Parsed::Invalid(Reject::TooLarge),
        Ok(None) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => Parsed::Invalid(Reject::TooLarge),
        Err(e) => Parsed::Invalid(Reject::BadRequest(describe(e))),
    }
}

fn describe(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine | httparse::Error::Token => "malformed request line",
        httparse::Error::Status => "invalid status",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "unsupported HTTP version",
    }
}

fn offset(buf: &[u8], part: &[u8]) -> Range<usize> {
    // `part` is a sub-slice of `buf` (httparse only borrows from its input).
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

fn parse_with<'b>(
    buf: &'b [u8],
    headers: &mut [httparse::Header<'b>],
) -> Result<Option<RequestHead>, httparse::Error> {
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(httparse::Error::Token);
    };
    let http10 = version == 0;
    let mut head = RequestHead {
        len,
        method: offset(buf, method.as_bytes()),
        target: offset(buf, target.as_bytes()),
        http10,
        headers: Vec::with_capacity(req.headers.len()),
        body: BodyLength::Length(0),
        keep_alive: !http10,
        expect_continue: false,
    };
    let mut length: Option<u64> = None;
    let mut chunked = None;
    for h in req.headers.iter() {
        head.headers
            .push((offset(buf, h.name.as_bytes()), offset(buf, h.value)));
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(h.value).ok_or(httparse::Error::HeaderValue)?;
            if length.is_some_and(|l| l != n) {
                return Err(httparse::Error::HeaderValue);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only the last coding matters: it must be chunked.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    head.keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    head.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            head.expect_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    head.body = match (chunked, length) {
        (Some(true), length) => {
            // Both framings: chunked wins, and the connection is not reused
            // (RFC 9112 §6.3: a smuggling attempt or a broken intermediary).
            if length.is_some() {
                head.keep_alive = false;
            }
            BodyLength::Chunked
        }
        (Some(false), _) => return Err(httparse::Error::HeaderValue),
        (None, length) => BodyLength::Length(length.unwrap_or(0)),
    };
    Ok(Some(head))
}

/// A Content-Length value: digits only (no sign, no list), at most u64.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &[u8]) -> RequestHead {
        match parse(raw) {
            Parsed::Complete(h) => h,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(raw)),
        }
    }

    #[test]
    fn request_line_and_fields() {
        let raw = b"POST /a/b?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello";
        let h = complete(raw);
        assert_eq!(&raw[h.method.clone()], b"POST");
        assert_eq!(&raw[h.target.clone()], b"/a/b?x=1");
        assert_eq!(h.len, raw.len() - 5);
        assert_eq!(h.body, BodyLength::Length(5));
        assert!(h.keep_alive && !h.http10 && !h.expect_continue);
        let names: Vec<&[u8]> = h.headers.iter().map(|(n, _)| &raw[n.clone()]).collect();
        assert_eq!(names, [&b"Host"[..], b"Content-Length", b"X-A"]);
        assert_eq!(&raw[h.headers[2].1.clone()], b"1");
    }

    #[test]
    fn framing_and_connection() {
        let check = |raw: &str, body: Option<BodyLength>, keep_alive: bool| match (
            parse(raw.as_bytes()),
            body,
        ) {
            (Parsed::Complete(h), Some(b)) => {
                assert_eq!((h.body, h.keep_alive), (b, keep_alive), "{raw:?}")
            }
            (Parsed::Invalid(Reject::BadRequest(_)), None) => {}
            (other, _) => panic!("{other:?} for {raw:?}"),
        };
        use BodyLength::*;
        check("GET / HTTP/1.1\r\n\r\n", Some(Length(0)), true);
        check("GET / HTTP/1.0\r\n\r\n", Some(Length(0)), false);
        check(
            "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
            Some(Length(0)),
            true,
        );
        check(
            "GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n",
            Some(Length(0)),
            false,
        );
        check(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            Some(Chunked),
            true,
        );
        check(
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
            Some(Chunked),
            false,
        );
        check(
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            Some(Length(3)),
            true,
        );
        check(
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            None,
            true,
        );
        check(
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            None,
            true,
        );
        check("POST / HTTP/1.1\r\nContent-Length: -3\r\n\r\n", None, true);
        check(
            "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
            None,
            true,
        );
        check("GET / HTTP/2.0\r\n\r\n", None, true);
        check("GET /\x01 HTTP/1.1\r\n\r\n", None, true);
    }

    #[test]
    fn partial_and_too_large() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        ));
        assert!(matches!(parse(b""), Parsed::Partial));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS + 1 {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&many), Parsed::Invalid(Reject::TooLarge)));
        // More than the stack holds, fewer than the limit: fine.
        let mut some = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..200 {
            some.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        some.extend_from_slice(b"\r\n");
        assert_eq!(complete(&some).headers.len(), 200);
        let mut huge = b"GET / HTTP/1.1\r\nx: ".to_vec();
        huge.resize(MAX_HEAD + 1, b'a');
        assert!(matches!(parse(&huge), Parsed::Invalid(Reject::TooLarge)));
    }

    #[test]
    fn expect_continue() {
        let h = complete(b"PUT / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 9\r\n\r\n");
        assert!(h.expect_continue);
    }
}
