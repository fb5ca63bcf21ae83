//! The WSGI `environ` of one request (PEP 3333): CGI variables from the request
//! line, `HTTP_*` from the headers, the router's reserved `x-polyhost-*`
//! headers, and the `wsgi.*` keys. Constant keys live in a template dict that
//! is copied per request.

use std::cell::RefCell;
use std::collections::HashMap;

use http::header::{HeaderName, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST};
use http::request::Parts;
use http::Version;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyString, PyTuple};
use pyo3::{intern, Py};

use crate::errors::ErrorStream;
use crate::file_wrapper::FileWrapper;
use crate::input::Input;

pub const H_REMOTE_ADDR: &str = "x-polyhost-remote-addr";
pub const H_SCHEME: &str = "x-polyhost-scheme";
pub const H_SCRIPT_NAME: &str = "x-polyhost-script-name";
pub const H_SERVER_NAME: &str = "x-polyhost-server-name";
pub const H_SERVER_PORT: &str = "x-polyhost-server-port";
const RESERVED_PREFIX: &str = "x-polyhost-";

/// The keys that are the same for every request of this process.
pub fn template(py: Python<'_>, multithread: bool, multiprocess: bool) -> PyResult<Py<PyDict>> {
    let d = PyDict::new(py);
    d.set_item("wsgi.version", PyTuple::new(py, [1, 0])?)?;
    d.set_item("wsgi.errors", Bound::new(py, ErrorStream)?)?;
    d.set_item("wsgi.multithread", PyBool::new(py, multithread))?;
    d.set_item("wsgi.multiprocess", PyBool::new(py, multiprocess))?;
    d.set_item("wsgi.run_once", false)?;
    d.set_item("wsgi.input_terminated", true)?;
    d.set_item("wsgi.file_wrapper", py.get_type::<FileWrapper>())?;
    d.set_item("SCRIPT_NAME", "")?;
    d.set_item("QUERY_STRING", "")?;
    Ok(d.unbind())
}

/// Bytes as a latin-1 `str` (PEP 3333 native strings).
fn latin1<'py>(py: Python<'py>, b: &[u8]) -> Bound<'py, PyString> {
    match std::str::from_utf8(b) {
        Ok(s) if b.is_ascii() => PyString::new(py, s),
        _ => PyString::new(py, &b.iter().map(|&c| char::from(c)).collect::<String>()),
    }
}

fn header<'a>(parts: &'a Parts, name: &str) -> Option<&'a [u8]> {
    parts.headers.get(name).map(|v| v.as_bytes())
}

thread_local! {
    /// `HTTP_*` keys by header name, so common headers cost no allocation.
    static KEYS: RefCell<HashMap<HeaderName, Py<PyString>>> = RefCell::new(HashMap::new());
}
const MAX_CACHED_KEYS: usize = 512;

fn http_key<'py>(py: Python<'py>, name: &HeaderName) -> Bound<'py, PyString> {
    KEYS.with(|k| {
        if let Some(key) = k.borrow().get(name) {
            return key.bind(py).clone();
        }
        let mut s = String::with_capacity(5 + name.as_str().len());
        s.push_str("HTTP_");
        s.extend(name.as_str().chars().map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        }));
        let key = PyString::intern(py, &s);
        let mut k = k.borrow_mut();
        if k.len() < MAX_CACHED_KEYS {
            k.insert(name.clone(), key.clone().unbind());
        }
        key
    })
}

/// Splits `IP:PORT` / `[IPv6]:PORT`.
fn split_addr(v: &[u8]) -> (&[u8], &[u8]) {
    match v.iter().rposition(|&b| b == b':') {
        Some(i) => {
            let host = &v[..i];
            let host = host
                .strip_prefix(b"[")
                .and_then(|h| h.strip_suffix(b"]"))
                .unwrap_or(host);
            (host, &v[i + 1..])
        }
        None => (v, b""),
    }
}

/// `PATH_INFO`: the percent-decoded path without the mount prefix.
fn path_info<'a>(decoded: &'a [u8], script_name: &[u8]) -> &'a [u8] {
    match decoded.strip_prefix(script_name) {
        Some(rest) if rest.is_empty() || rest.starts_with(b"/") => rest,
        _ => decoded,
    }
}

/// Builds the environ for one request.
pub fn build<'py>(
    py: Python<'py>,
    template: &Py<PyDict>,
    parts: &Parts,
    input: Bound<'py, Input>,
) -> PyResult<Bound<'py, PyDict>> {
    let env = template.bind(py).copy()?;
    env.set_item(intern!(py, "REQUEST_METHOD"), parts.method.as_str())?;

    let path = parts.uri.path();
    let script_name = header(parts, H_SCRIPT_NAME).unwrap_or(b"");
    let script_name = script_name.strip_suffix(b"/").unwrap_or(script_name);
    let decoded: std::borrow::Cow<'_, [u8]> =
        percent_encoding::percent_decode(path.as_bytes()).into();
    if !script_name.is_empty() {
        env.set_item(intern!(py, "SCRIPT_NAME"), latin1(py, script_name))?;
    }
    env.set_item(
        intern!(py, "PATH_INFO"),
        latin1(py, path_info(&decoded, script_name)),
    )?;
    if let Some(q) = parts.uri.query() {
        env.set_item(intern!(py, "QUERY_STRING"), q)?;
    }
    let request_uri = parts.uri.path_and_query().map_or(path, |pq| pq.as_str());
    env.set_item(intern!(py, "REQUEST_URI"), request_uri)?;
    let protocol = match parts.version {
        Version::HTTP_10 => intern!(py, "HTTP/1.0"),
        Version::HTTP_2 => intern!(py, "HTTP/2"),
        Version::HTTP_3 => intern!(py, "HTTP/3"),
        Version::HTTP_09 => intern!(py, "HTTP/0.9"),
        _ => intern!(py, "HTTP/1.1"),
    };
    env.set_item(intern!(py, "SERVER_PROTOCOL"), protocol)?;

    let https = header(parts, H_SCHEME) == Some(b"https");
    env.set_item(
        intern!(py, "wsgi.url_scheme"),
        if https {
            intern!(py, "https")
        } else {
            intern!(py, "http")
        },
    )?;
    if https {
        env.set_item(intern!(py, "HTTPS"), intern!(py, "on"))?;
    }

    let (remote_ip, remote_port) =
        split_addr(header(parts, H_REMOTE_ADDR).unwrap_or(b"127.0.0.1:0"));
    env.set_item(intern!(py, "REMOTE_ADDR"), latin1(py, remote_ip))?;
    env.set_item(intern!(py, "REMOTE_PORT"), latin1(py, remote_port))?;

    // SERVER_NAME/PORT: the router's, else the Host header, else defaults.
    let host = header(parts, HOST.as_str()).map(split_host);
    let server_name = header(parts, H_SERVER_NAME)
        .or(host.map(|h| h.0))
        .unwrap_or(b"localhost");
    let default_port: &[u8] = if https { b"443" } else { b"80" };
    let server_port = header(parts, H_SERVER_PORT)
        .or(host.and_then(|h| h.1))
        .unwrap_or(default_port);
    env.set_item(intern!(py, "SERVER_NAME"), latin1(py, server_name))?;
    env.set_item(intern!(py, "SERVER_PORT"), latin1(py, server_port))?;

    for name in parts.headers.keys() {
        let n = name.as_str();
        if n.starts_with(RESERVED_PREFIX) || n.contains('_') {
            // Reserved for the router; underscores would let a client forge
            // `HTTP_X_FOO` with `x_foo` (Apache and nginx drop them too).
            continue;
        }
        let mut values = parts.headers.get_all(name).iter();
        let Some(first) = values.next() else { continue };
        let value = match values.next() {
            None => latin1(py, first.as_bytes()),
            Some(second) => {
                let sep: &[u8] = if *name == COOKIE { b"; " } else { b"," };
                let mut joined = first.as_bytes().to_vec();
                for v in std::iter::once(second).chain(values) {
                    joined.extend_from_slice(sep);
                    joined.extend_from_slice(v.as_bytes());
                }
                latin1(py, &joined)
            }
        };
        if *name == CONTENT_TYPE {
            env.set_item(intern!(py, "CONTENT_TYPE"), value)?;
        } else if *name == CONTENT_LENGTH {
            env.set_item(intern!(py, "CONTENT_LENGTH"), value)?;
        } else {
            env.set_item(http_key(py, name), value)?;
        }
    }
    env.set_item(intern!(py, "wsgi.input"), input)?;
    Ok(env)
}

/// Splits a Host header into name and optional port.
fn split_host(h: &[u8]) -> (&[u8], Option<&[u8]>) {
    if h.starts_with(b"[") {
        // [v6]:port
        return match h.iter().position(|&b| b == b']') {
            Some(i) => (&h[..=i], h[i + 1..].strip_prefix(b":")),
            None => (h, None),
        };
    }
    match h.iter().rposition(|&b| b == b':') {
        Some(i) => (&h[..i], Some(&h[i + 1..])),
        None => (h, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(split_addr(b"1.2.3.4:5678"), (&b"1.2.3.4"[..], &b"5678"[..]));
        assert_eq!(split_addr(b"[::1]:5678"), (&b"::1"[..], &b"5678"[..]));
        assert_eq!(split_addr(b"nonsense"), (&b"nonsense"[..], &b""[..]));
        assert_eq!(
            split_host(b"example.test:8080"),
            (&b"example.test"[..], Some(&b"8080"[..]))
        );
        assert_eq!(split_host(b"[::1]:81"), (&b"[::1]"[..], Some(&b"81"[..])));
        assert_eq!(split_host(b"example.test"), (&b"example.test"[..], None));
    }

    #[test]
    fn path_info_split() {
        let check = |path: &[u8], script: &[u8], want: &[u8]| {
            assert_eq!(path_info(path, script), want, "{path:?} {script:?}");
        };
        check(b"/app/x/y", b"/app", b"/x/y");
        check(b"/app", b"/app", b"");
        check(b"/application", b"/app", b"/application");
        check(b"/x", b"", b"/x");
    }
}
