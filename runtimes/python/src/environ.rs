//! The WSGI `environ` of one request (PEP 3333), built straight from the
//! parsed head: CGI variables from the request line, `HTTP_*` from the
//! fields, the router's reserved `x-polyhost-*` fields
//! (`polyhost_protocol::header`, never turned into `HTTP_*`), and the `wsgi.*`
//! keys. Constant keys live in a template dict that is copied per request;
//! `HTTP_*` key strings are interned once per thread and field name.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use polyhost_protocol::header::{self as reserved, is_reserved};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyString, PyTuple};
use pyo3::{intern, Py};

use crate::errors::ErrorStream;
use crate::file_wrapper::FileWrapper;
use crate::head::RequestHead;
use crate::input::Input;

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
pub fn latin1<'py>(py: Python<'py>, b: &[u8]) -> Bound<'py, PyString> {
    match std::str::from_utf8(b) {
        Ok(s) if b.is_ascii() => PyString::new(py, s),
        _ => PyString::new(py, &b.iter().map(|&c| char::from(c)).collect::<String>()),
    }
}

/// A multiplicative hash for short keys: the cache is per thread and keyed
/// by names the router sends, so flooding is not a concern.
#[derive(Default)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// The last string made for a key; the next request often repeats it
/// (host, scheme, client address, user agent), and `str` is immutable.
#[derive(Default)]
struct Last(Option<(Box<[u8]>, Py<PyString>)>);

/// Values longer than this are not remembered.
const MAX_REMEMBERED: usize = 256;

impl Last {
    fn get<'py>(&mut self, py: Python<'py>, b: &[u8]) -> Bound<'py, PyString> {
        if let Some((bytes, s)) = &self.0 {
            if **bytes == *b {
                return s.bind(py).clone();
            }
        }
        let s = latin1(py, b);
        if b.len() <= MAX_REMEMBERED {
            self.0 = Some((b.into(), s.clone().unbind()));
        }
        s
    }
}

/// An `HTTP_*` key and the field's last value.
struct Field {
    key: Py<PyString>,
    last: Last,
}

/// Per-thread strings: keys by field name as sent, and the CGI values.
#[derive(Default)]
struct Cache {
    fields: HashMap<Box<[u8]>, Field, BuildHasherDefault<FastHasher>>,
    script_name: Last,
    path_info: Last,
    query: Last,
    uri: Last,
    remote_ip: Last,
    remote_port: Last,
    server_name: Last,
    server_port: Last,
}

/// Field names remembered per thread (others are built per request).
const MAX_CACHED_KEYS: usize = 512;

thread_local! {
    /// Per thread, so the strings cost no lock; only touched by [`build`].
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

fn http_key<'py>(py: Python<'py>, name: &[u8]) -> Bound<'py, PyString> {
    let mut s = String::with_capacity(5 + name.len());
    s.push_str("HTTP_");
    s.extend(name.iter().map(|&c| {
        if c == b'-' {
            '_'
        } else {
            char::from(c.to_ascii_uppercase())
        }
    }));
    PyString::intern(py, &s)
}

/// The key and value strings of one field (`value` already joined).
fn field<'py>(
    py: Python<'py>,
    cache: &mut Cache,
    name: &[u8],
    value: &[u8],
) -> (Bound<'py, PyString>, Bound<'py, PyString>) {
    if let Some(f) = cache.fields.get_mut(name) {
        return (f.key.bind(py).clone(), f.last.get(py, value));
    }
    let key = http_key(py, name);
    if cache.fields.len() >= MAX_CACHED_KEYS {
        return (key, latin1(py, value));
    }
    let mut f = Field {
        key: key.clone().unbind(),
        last: Last::default(),
    };
    let value = f.last.get(py, value);
    cache.fields.insert(name.into(), f);
    (key, value)
}

/// Splits `IP:PORT` / `[IPv6]:PORT`.
pub(crate) fn split_addr(v: &[u8]) -> (&[u8], &[u8]) {
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
pub(crate) fn path_info<'a>(decoded: &'a [u8], script_name: &[u8]) -> &'a [u8] {
    match decoded.strip_prefix(script_name) {
        Some(rest) if rest.is_empty() || rest.starts_with(b"/") => rest,
        _ => decoded,
    }
}

/// The request target split as hyper's `Uri` would: path, query, and the
/// path with query (`REQUEST_URI`).
pub(crate) fn split_target(t: &[u8]) -> (&[u8], Option<&[u8]>, &[u8]) {
    let t = t.split(|&b| b == b'#').next().unwrap_or(t);
    let pq: &[u8] = if t.starts_with(b"/") {
        t
    } else if let Some(i) = t.windows(3).position(|w| w == b"://") {
        // absolute-form: drop scheme and authority.
        let rest = &t[i + 3..];
        match rest.iter().position(|&b| b == b'/' || b == b'?') {
            Some(j) => &rest[j..],
            None => b"",
        }
    } else {
        // `*` (OPTIONS) or authority-form (CONNECT).
        return (t, None, t);
    };
    let (path, query) = match pq.iter().position(|&b| b == b'?') {
        Some(i) => (&pq[..i], Some(&pq[i + 1..])),
        None => (pq, None),
    };
    let path: &[u8] = if path.is_empty() { b"/" } else { path };
    let request_uri = if pq.is_empty() || pq.starts_with(b"?") {
        path
    } else {
        pq
    };
    (path, query, request_uri)
}

/// The values the worker reads out of the fields before building `HTTP_*`.
#[derive(Default)]
pub(crate) struct Meta<'b> {
    pub host: Option<&'b [u8]>,
    pub remote_addr: Option<&'b [u8]>,
    pub scheme: Option<&'b [u8]>,
    pub script_name: Option<&'b [u8]>,
    pub server_name: Option<&'b [u8]>,
    pub server_port: Option<&'b [u8]>,
}

pub(crate) fn meta<'b>(buf: &'b [u8], head: &RequestHead) -> Meta<'b> {
    let mut m = Meta::default();
    for (n, v) in &head.headers {
        let name = &buf[n.clone()];
        let value = Some(&buf[v.clone()]);
        let slot = if name.eq_ignore_ascii_case(b"host") {
            &mut m.host
        } else if is_reserved(name) {
            let prefix = reserved::RESERVED_PREFIX.len();
            let rest = &name[prefix..];
            let key = |full: &str| rest.eq_ignore_ascii_case(&full.as_bytes()[prefix..]);
            if key(reserved::REMOTE_ADDR) {
                &mut m.remote_addr
            } else if key(reserved::SCHEME) {
                &mut m.scheme
            } else if key(reserved::SCRIPT_NAME) {
                &mut m.script_name
            } else if key(reserved::SERVER_NAME) {
                &mut m.server_name
            } else if key(reserved::SERVER_PORT) {
                &mut m.server_port
            } else {
                continue;
            }
        } else {
            continue;
        };
        if slot.is_none() {
            *slot = value;
        }
    }
    m
}

fn method<'py>(py: Python<'py>, m: &[u8]) -> Bound<'py, PyString> {
    match m {
        b"GET" => intern!(py, "GET").clone(),
        b"POST" => intern!(py, "POST").clone(),
        b"HEAD" => intern!(py, "HEAD").clone(),
        b"PUT" => intern!(py, "PUT").clone(),
        b"DELETE" => intern!(py, "DELETE").clone(),
        b"PATCH" => intern!(py, "PATCH").clone(),
        b"OPTIONS" => intern!(py, "OPTIONS").clone(),
        _ => latin1(py, m),
    }
}

/// The environ of one request, with `REQUEST_METHOD` and `REQUEST_URI`
/// (for the error log, which must not trust an environ the app may change).
pub struct Environ<'py> {
    pub dict: Bound<'py, PyDict>,
    pub method: Bound<'py, PyString>,
    pub uri: Bound<'py, PyString>,
}

/// Builds the environ for one request whose head was parsed from `buf`;
/// the caller adds `wsgi.input` ([`set_input`]).
pub fn build<'py>(
    py: Python<'py>,
    template: &Py<PyDict>,
    buf: &[u8],
    head: &RequestHead,
) -> PyResult<Environ<'py>> {
    CACHE.with(|c| build_with(py, &mut c.borrow_mut(), template, buf, head))
}

fn build_with<'py>(
    py: Python<'py>,
    cache: &mut Cache,
    template: &Py<PyDict>,
    buf: &[u8],
    head: &RequestHead,
) -> PyResult<Environ<'py>> {
    let env = template.bind(py).copy()?;
    let method = method(py, &buf[head.method.clone()]);
    env.set_item(intern!(py, "REQUEST_METHOD"), &method)?;

    let (path, query, request_uri) = split_target(&buf[head.target.clone()]);
    let m = meta(buf, head);
    let script_name = m.script_name.unwrap_or(b"");
    let script_name = script_name.strip_suffix(b"/").unwrap_or(script_name);
    let decoded: std::borrow::Cow<'_, [u8]> = percent_encoding::percent_decode(path).into();
    if !script_name.is_empty() {
        env.set_item(
            intern!(py, "SCRIPT_NAME"),
            cache.script_name.get(py, script_name),
        )?;
    }
    env.set_item(
        intern!(py, "PATH_INFO"),
        cache.path_info.get(py, path_info(&decoded, script_name)),
    )?;
    if let Some(q) = query {
        env.set_item(intern!(py, "QUERY_STRING"), cache.query.get(py, q))?;
    }
    let uri = cache.uri.get(py, request_uri);
    env.set_item(intern!(py, "REQUEST_URI"), &uri)?;
    let protocol = if head.http10 {
        intern!(py, "HTTP/1.0")
    } else {
        intern!(py, "HTTP/1.1")
    };
    env.set_item(intern!(py, "SERVER_PROTOCOL"), protocol)?;

    let https = m.scheme == Some(b"https");
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

    let (remote_ip, remote_port) = split_addr(m.remote_addr.unwrap_or(b"127.0.0.1:0"));
    env.set_item(
        intern!(py, "REMOTE_ADDR"),
        cache.remote_ip.get(py, remote_ip),
    )?;
    env.set_item(
        intern!(py, "REMOTE_PORT"),
        cache.remote_port.get(py, remote_port),
    )?;

    // SERVER_NAME/PORT: the router's, else the Host header, else defaults.
    let host = m.host.map(split_host);
    let server_name = m.server_name.or(host.map(|h| h.0)).unwrap_or(b"localhost");
    let default_port: &[u8] = if https { b"443" } else { b"80" };
    let server_port = m
        .server_port
        .or(host.and_then(|h| h.1))
        .unwrap_or(default_port);
    env.set_item(
        intern!(py, "SERVER_NAME"),
        cache.server_name.get(py, server_name),
    )?;
    env.set_item(
        intern!(py, "SERVER_PORT"),
        cache.server_port.get(py, server_port),
    )?;

    let fields = &head.headers;
    for (i, (n, v)) in fields.iter().enumerate() {
        let name = &buf[n.clone()];
        if name.contains(&b'_') || is_reserved(name) {
            // Reserved for the router; underscores would let a client forge
            // `HTTP_X_FOO` with `x_foo` (Apache and nginx drop them too).
            continue;
        }
        let same = |(m, _): &(std::ops::Range<usize>, std::ops::Range<usize>)| {
            buf[m.clone()].eq_ignore_ascii_case(name)
        };
        if fields[..i].iter().any(same) {
            continue; // joined at its first occurrence
        }
        let mut repeats = fields[i + 1..].iter().filter(|f| same(f)).peekable();
        let joined;
        let value: &[u8] = if repeats.peek().is_none() {
            &buf[v.clone()]
        } else {
            let sep: &[u8] = if name.eq_ignore_ascii_case(b"cookie") {
                b"; "
            } else {
                b","
            };
            let mut all = buf[v.clone()].to_vec();
            for (_, v) in repeats {
                all.extend_from_slice(sep);
                all.extend_from_slice(&buf[v.clone()]);
            }
            joined = all;
            &joined
        };
        if name.eq_ignore_ascii_case(b"content-type") {
            env.set_item(intern!(py, "CONTENT_TYPE"), latin1(py, value))?;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            env.set_item(intern!(py, "CONTENT_LENGTH"), latin1(py, value))?;
        } else {
            let (key, value) = field(py, cache, name, value);
            env.set_item(key, value)?;
        }
    }
    Ok(Environ {
        dict: env,
        method,
        uri,
    })
}

pub fn set_input(env: &Bound<'_, PyDict>, input: Bound<'_, Input>) -> PyResult<()> {
    env.set_item(intern!(env.py(), "wsgi.input"), input)
}

/// Splits a Host header into name and optional port.
pub(crate) fn split_host(h: &[u8]) -> (&[u8], Option<&[u8]>) {
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
    fn targets() {
        let check = |t: &str, want: (&str, Option<&str>, &str)| {
            let (p, q, u) = split_target(t.as_bytes());
            let got = (
                std::str::from_utf8(p).unwrap(),
                q.map(|q| std::str::from_utf8(q).unwrap()),
                std::str::from_utf8(u).unwrap(),
            );
            assert_eq!(got, want, "{t}");
        };
        check("/a/b?x=1", ("/a/b", Some("x=1"), "/a/b?x=1"));
        check("/a?", ("/a", Some(""), "/a?"));
        check("/", ("/", None, "/"));
        check("http://h:80/p?q", ("/p", Some("q"), "/p?q"));
        check("http://h", ("/", None, "/"));
        check("*", ("*", None, "*"));
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
