//! One access log line: what it records of a request ([`LogFacts`], taken
//! before the request is handed to its upstream, and [`AccessRecord`]) and
//! its format ([`write_combined`]: combined log format plus the request time).
//!
//! Invariant: writing an ordinary request's line allocates nothing; it is a
//! copy into the log's buffer (the date is made once per second per thread;
//! only a target or header that needs escaping is copied).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use http::{header, Request, Version};

use super::SiteLogs;

/// What the access log line needs from the request, taken before the request
/// is handed to the upstream.
pub(crate) struct LogFacts {
    /// The client's address as text (see `upstream::client_ip::ip_text`).
    client: http::HeaderValue,
    pub(crate) method: http::Method,
    /// Cloned, not rendered: its parts share the request's bytes.
    pub(crate) uri: http::Uri,
    version: Version,
    referer: Option<http::HeaderValue>,
    user_agent: Option<http::HeaderValue>,
}

impl LogFacts {
    pub(crate) fn of<B>(req: &Request<B>, client: SocketAddr) -> Self {
        LogFacts {
            client: crate::upstream::client_ip::ip_text(client.ip()),
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            referer: req.headers().get(header::REFERER).cloned(),
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
        }
    }

    /// Writes the request's line to the site's access log: `status` and
    /// `bytes` as sent, the time taken since `start`.
    pub(crate) fn write(&self, logs: &SiteLogs, status: u16, bytes: u64, start: Instant) {
        self.write_record(logs, status, bytes, None, start);
    }

    /// The same facts in allocations of their own: the target and header
    /// values hyper parsed share its read buffer (8 KiB or more), which a
    /// WebSocket's line, written when it closes, must not keep alive.
    pub(crate) fn detached(self) -> Self {
        let copy = |v: Option<http::HeaderValue>| {
            v.and_then(|v| http::HeaderValue::from_bytes(v.as_bytes()).ok())
        };
        LogFacts {
            uri: self.uri.to_string().parse().unwrap_or_default(),
            referer: copy(self.referer),
            user_agent: copy(self.user_agent),
            ..self
        }
    }

    /// The request's HTTP version.
    pub(crate) fn version(&self) -> Version {
        self.version
    }

    /// Writes a WebSocket's line when its tunnel ends: its status (101;
    /// HTTP/2: 200), the bytes sent to the client, its whole life since the
    /// upgrade request, and, last, the bytes received from the client.
    pub(crate) fn write_tunnel(
        &self,
        logs: &SiteLogs,
        status: u16,
        sent: u64,
        received: u64,
        start: Instant,
    ) {
        self.write_record(logs, status, sent, Some(received), start);
    }

    fn write_record(
        &self,
        logs: &SiteLogs,
        status: u16,
        bytes: u64,
        received: Option<u64>,
        start: Instant,
    ) {
        let target = match self.uri.path_and_query() {
            // Absolute-form without a path (`http://h?x`): log `/?x`.
            Some(pq) if pq.as_str().starts_with('?') => std::borrow::Cow::Owned(format!("/{pq}")),
            Some(pq) => std::borrow::Cow::Borrowed(pq.as_str()),
            None => std::borrow::Cow::Owned(self.uri.to_string()), // authority-form, `*`
        };
        let record = AccessRecord {
            client: self.client.to_str().unwrap_or("-"),
            method: self.method.as_str(),
            target: &target,
            version: self.version,
            status,
            bytes,
            referer: header_text(&self.referer),
            user_agent: header_text(&self.user_agent),
            duration: start.elapsed(),
            received,
        };
        logs.access
            // Whole seconds are logged: the coarse clock is enough.
            .write_line(|out| write_combined(out, &record, crate::clock::coarse_wall()));
    }
}

/// A header value for the log; values that are not visible ASCII are left out.
fn header_text(value: &Option<http::HeaderValue>) -> Option<&str> {
    value.as_ref().and_then(|v| v.to_str().ok())
}

/// What one access log line records.
pub struct AccessRecord<'a> {
    /// The client's address as text.
    pub client: &'a str,
    pub method: &'a str,
    pub target: &'a str,
    pub version: http::Version,
    pub status: u16,
    pub bytes: u64,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub duration: Duration,
    /// A WebSocket's line: the bytes received from the client, written
    /// after the duration.
    pub received: Option<u64>,
}

/// Writes a record in combined log format followed by the request time:
/// `1.2.3.4 - - [25/Nov/2026:18:16:52 +0000] "GET / HTTP/1.1" 200 13 "-" "curl/8" 0.000123`
///
/// Byte appends and `itoa`, not `core::fmt`: this runs once per request.
pub fn write_combined(out: &mut Vec<u8>, r: &AccessRecord<'_>, now: SystemTime) {
    let version: &[u8] = match r.version {
        http::Version::HTTP_09 => b"HTTP/0.9",
        http::Version::HTTP_10 => b"HTTP/1.0",
        http::Version::HTTP_2 => b"HTTP/2.0",
        http::Version::HTTP_3 => b"HTTP/3.0",
        _ => b"HTTP/1.1",
    };
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(r.client.as_bytes());
    out.extend_from_slice(b" - - [");
    with_clf_time(now, |time| out.extend_from_slice(time.as_bytes()));
    out.extend_from_slice(b"] \"");
    out.extend_from_slice(r.method.as_bytes());
    out.push(b' ');
    push_escaped(out, r.target);
    out.push(b' ');
    out.extend_from_slice(version);
    out.extend_from_slice(b"\" ");
    out.extend_from_slice(num.format(r.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(num.format(r.bytes).as_bytes());
    out.extend_from_slice(b" \"");
    push_escaped(out, r.referer.unwrap_or("-"));
    out.extend_from_slice(b"\" \"");
    push_escaped(out, r.user_agent.unwrap_or("-"));
    out.extend_from_slice(b"\" ");
    // Seconds to the microsecond (truncated), as two integers: no float
    // formatting per line.
    out.extend_from_slice(num.format(r.duration.as_secs()).as_bytes());
    out.push(b'.');
    let micros = num.format(r.duration.subsec_micros()).as_bytes();
    out.extend(std::iter::repeat_n(b'0', 6 - micros.len()));
    out.extend_from_slice(micros);
    if let Some(n) = r.received {
        out.push(b' ');
        out.extend_from_slice(num.format(n).as_bytes());
    }
}

/// Calls `f` with `now` as `25/Nov/2026:18:16:52 +0000`. The text is made
/// once per second per thread (not per line); a cache by hand because no
/// crate at hand formats the CLF date.
fn with_clf_time<T>(now: SystemTime, f: impl FnOnce(&str) -> T) -> T {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            *text = clf_time(now);
            *cached = second;
        }
        f(text)
    })
}

/// `25/Nov/2026:18:16:52 +0000`, from the RFC 3339 form humantime gives.
fn clf_time(now: SystemTime) -> String {
    let iso = humantime::format_rfc3339_seconds(now).to_string(); // 2026-11-25T18:16:52Z
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = iso
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .unwrap_or(1);
    format!(
        "{}/{}/{}:{} +0000",
        iso.get(8..10).unwrap_or("01"),
        MONTHS[(month.clamp(1, 12)) - 1],
        iso.get(0..4).unwrap_or("1970"),
        iso.get(11..19).unwrap_or("00:00:00")
    )
}

/// Appends `s` with quotes, backslashes and control bytes escaped, so one
/// request is one line.
fn push_escaped(out: &mut Vec<u8>, s: &str) {
    let needs = |b: u8| b == b'"' || b == b'\\' || b.is_ascii_control();
    if !s.bytes().any(needs) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in s.bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b if b.is_ascii_control() => out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
            b => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_format() {
        let r = AccessRecord {
            client: "10.0.0.1",
            method: "GET",
            target: "/a?b=\"c\"",
            version: http::Version::HTTP_11,
            status: 200,
            bytes: 13,
            referer: None,
            user_agent: Some("curl/8.0"),
            duration: Duration::from_micros(1500),
            received: None,
        };
        let line = |t: SystemTime| {
            let mut out = Vec::new();
            write_combined(&mut out, &r, t);
            String::from_utf8(out).unwrap()
        };
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_630_612); // 2026-11-25T18:16:52Z
        assert_eq!(
            line(t),
            "10.0.0.1 - - [25/Nov/2026:18:16:52 +0000] \"GET /a?b=\\\"c\\\" HTTP/1.1\" 200 13 \"-\" \"curl/8.0\" 0.001500"
        );
        let slow = AccessRecord {
            duration: Duration::from_nanos(2_000_123_900),
            ..r
        };
        let mut out = Vec::new();
        write_combined(&mut out, &slow, t);
        assert!(String::from_utf8(out).unwrap().ends_with(" 2.000123"));
        // A WebSocket's line: bytes received from the client after the duration.
        let ws = AccessRecord {
            status: 101,
            received: Some(77),
            ..slow
        };
        let mut out = Vec::new();
        write_combined(&mut out, &ws, t);
        let ws = String::from_utf8(out).unwrap();
        assert!(
            ws.ends_with("\" 101 13 \"-\" \"curl/8.0\" 2.000123 77"),
            "{ws}"
        );
        // Escapes: quotes, backslashes and control bytes, in place.
        let odd = AccessRecord {
            target: "/a\\b",
            referer: Some("x\"y"),
            user_agent: Some("tab\there\u{7f}"),
            bytes: 0,
            duration: Duration::from_secs(61),
            ..r
        };
        let mut out = Vec::new();
        write_combined(&mut out, &odd, t);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "10.0.0.1 - - [25/Nov/2026:18:16:52 +0000] \"GET /a\\\\b HTTP/1.1\" 200 0 \"x\\\"y\" \"tab\\x09here\\x7f\" 61.000000"
        );
        // The time cached for one second is not reused for the next.
        let next = line(t + Duration::from_secs(1));
        assert!(next.contains("[25/Nov/2026:18:16:53 +0000]"), "{next}");
    }
}
