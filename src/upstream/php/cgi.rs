//! CGI response headers (what a PHP script's stdout starts with) → an HTTP
//! status and header map.
//!
//! Invariants: never panics; a header block that is not valid (no colon,
//! bad name or value, bad `Status`) is an error the caller turns into 502;
//! hop-by-hop headers from the script are dropped (the router owns the
//! connection); `Location` without `Status` means 302.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

/// Largest CGI header block accepted from a script.
pub const MAX_HEADER_BYTES: usize = 128 * 1024;

/// The parsed head of a CGI response.
#[derive(Debug)]
pub struct CgiHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// Finds the end of the header block: returns (header bytes, offset of the body).
pub fn split_head(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(pos) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + pos;
        let rest = &buf[nl + 1..];
        if rest.first() == Some(&b'\n') {
            return Some((nl, nl + 2));
        }
        if rest.starts_with(b"\r\n") {
            return Some((nl, nl + 3));
        }
        i = nl + 1;
    }
    None
}

/// Parses the header block (without the blank line). Header values share
/// `block`'s memory.
pub fn parse_head(block: &Bytes) -> Result<CgiHead, String> {
    let mut status = None;
    let mut headers = HeaderMap::new();
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let colon = line.iter().position(|&b| b == b':').ok_or_else(|| {
            format!(
                "header line without a colon: {:?}",
                String::from_utf8_lossy(line)
            )
        })?;
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"status") {
            status = Some(parse_status(value)?);
            continue;
        }
        let name = HeaderName::from_bytes(name)
            .map_err(|_| format!("invalid header name {:?}", String::from_utf8_lossy(name)))?;
        if is_hop_by_hop(&name) {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(block.slice_ref(value))
            .map_err(|_| format!("invalid value for header {name}"))?;
        headers.append(name, value);
    }
    let status = match status {
        Some(s) => s,
        None if headers.contains_key(http::header::LOCATION) => StatusCode::FOUND,
        None => StatusCode::OK,
    };
    Ok(CgiHead { status, headers })
}

fn parse_status(value: &[u8]) -> Result<StatusCode, String> {
    let code = value.split(|&b| b == b' ').next().unwrap_or_default();
    let bad = || format!("invalid Status header {:?}", String::from_utf8_lossy(value));
    if code.len() != 3 {
        return Err(bad());
    }
    let status = StatusCode::from_bytes(code).map_err(|_| bad())?;
    if !(200..=599).contains(&status.as_u16()) {
        return Err(bad());
    }
    Ok(status)
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One case: raw stdout → Ok((status, "name: value" lines, body offset)) or Err(substring).
    fn check(raw: &str, want: Result<(u16, &[&str], &str), &str>) {
        let got = match split_head(raw.as_bytes()) {
            None => Err("no end of headers".to_owned()),
            Some((end, body)) => parse_head(&Bytes::copy_from_slice(&raw.as_bytes()[..end]))
                .map(|h| (h, &raw[body..])),
        };
        match (got, want) {
            (Ok((head, body)), Ok((status, headers, want_body))) => {
                assert_eq!(head.status.as_u16(), status, "{raw:?}");
                let got: Vec<String> = head
                    .headers
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
                    .collect();
                assert_eq!(got, headers, "{raw:?}");
                assert_eq!(body, want_body, "{raw:?}");
            }
            (Err(e), Err(want)) => {
                assert!(e.contains(want), "{raw:?}: {e:?} does not contain {want:?}")
            }
            (got, want) => panic!("{raw:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn cgi_headers() {
        check(
            "Content-type: text/html\r\n\r\nbody",
            Ok((200, &["content-type: text/html"], "body")),
        );
        check(
            "Content-type: text/html\n\nbody\n\nmore",
            Ok((200, &["content-type: text/html"], "body\n\nmore")),
        );
        check(
            "Status: 404 Not Found\r\nX-A: 1\r\n\r\n",
            Ok((404, &["x-a: 1"], "")),
        );
        check("Location: /x\r\n\r\n", Ok((302, &["location: /x"], "")));
        check(
            "Status: 301\r\nLocation: /y\r\n\r\n",
            Ok((301, &["location: /y"], "")),
        );
        check(
            "Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",
            Ok((200, &["set-cookie: a=1", "set-cookie: b=2"], "")),
        );
        check(
            "X-Pad:   v  \r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
            Ok((200, &["x-pad: v"], "")),
        );
        check("X-Empty:\r\n\r\n", Ok((200, &["x-empty: "], "")));
        check("Status: 99\r\n\r\n", Err("invalid Status"));
        check("Status: 1000\r\n\r\n", Err("invalid Status"));
        check("Status: 101 Switching\r\n\r\n", Err("invalid Status"));
        check("Status: abc\r\n\r\n", Err("invalid Status"));
        check("no colon here\r\n\r\n", Err("without a colon"));
        check("Bad Name: x\r\n\r\n", Err("invalid header name"));
        check("X-Bad: a\x01b\r\n\r\n", Err("invalid value"));
        check("Content-type: text/html\r\n", Err("no end of headers"));
        check("", Err("no end of headers"));
    }
}
