//! The ASGI `http` and `websocket` scopes, built in one call from a request
//! head parsed by [`crate::head`] (the same parser and the same reading of
//! the router's reserved `x-polyhost-*` fields as the WSGI environ).
//!
//! Invariants: reserved fields never reach the app's `headers`; header
//! names are lowercased; `path` is the percent-decoded full path (the mount
//! included, as uvicorn and Starlette expect) and `root_path` the mount;
//! a WebSocket handshake that is not version 13 with a 16-byte key is
//! refused here (400), before any scope exists.

use polyhost_protocol::header::is_reserved;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use pyo3::{intern, IntoPyObjectExt};

use super::shared::{Kind, Shared};
use crate::environ::{meta, split_addr, split_host, split_target};
use crate::head::{self, BodyLength, Parsed, RequestHead};

/// The ASGI spec version the worker implements (`scope["asgi"]["spec_version"]`).
pub const SPEC_VERSION: &str = "2.4";

/// Header names most requests carry, lowercased: each scope's `headers`
/// shares one `bytes` object per name (immutable, so sharing is safe)
/// instead of a new one per request. Every open WebSocket keeps its scope,
/// so this is memory as well as allocations (about 50 bytes a name).
const COMMON_NAMES: &[&[u8]] = &[
    b"host",
    b"user-agent",
    b"accept",
    b"accept-encoding",
    b"accept-language",
    b"connection",
    b"upgrade",
    b"cookie",
    b"content-type",
    b"content-length",
    b"cache-control",
    b"origin",
    b"referer",
    b"pragma",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-real-ip",
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
    b"sec-fetch-mode",
    b"sec-fetch-site",
    b"sec-fetch-dest",
];

/// Header values as common as those names (`Connection: upgrade`,
/// `Sec-WebSocket-Version: 13`, `X-Forwarded-Proto: http`...), shared the same way.
const COMMON_VALUES: &[&[u8]] = &[
    b"upgrade",
    b"websocket",
    b"13",
    b"http",
    b"https",
    b"keep-alive",
    b"close",
    b"*/*",
    b"no-cache",
    b"gzip, deflate",
    b"gzip, deflate, br",
    b"gzip, deflate, br, zstd",
    b"permessage-deflate; client_max_window_bits",
];

/// The parts of a scope that are the same for every request of this process.
#[pyclass(frozen, module = "polyhost")]
pub struct ScopeTemplate {
    asgi: Py<PyDict>,
    ws_extensions: Py<PyDict>,
    http_extensions: Py<PyDict>,
    /// [`COMMON_NAMES`] as `bytes`, in that order.
    names: Vec<Py<PyBytes>>,
    /// [`COMMON_VALUES`] as `bytes`, in that order.
    values: Vec<Py<PyBytes>>,
    /// Header pairs, paths, `server` tuples and client addresses that
    /// scopes share (see [`super::shared`]).
    shared: Shared,
}

/// The shared `bytes` of `b` if it is one of `common`, else a new one.
fn shared<'py>(
    py: Python<'py>,
    common: &[&[u8]],
    made: &[Py<PyBytes>],
    b: &[u8],
) -> Bound<'py, PyBytes> {
    match common.iter().position(|c| *c == b) {
        Some(i) => made[i].bind(py).clone(),
        None => PyBytes::new(py, b),
    }
}

#[pymethods]
impl ScopeTemplate {
    #[new]
    fn new(py: Python<'_>) -> PyResult<Self> {
        let asgi = PyDict::new(py);
        asgi.set_item("version", "3.0")?;
        asgi.set_item("spec_version", SPEC_VERSION)?;
        let ws = PyDict::new(py);
        ws.set_item("websocket.http.response", PyDict::new(py))?;
        let http = PyDict::new(py);
        http.set_item("http.response.trailers", PyDict::new(py))?;
        http.set_item("http.response.pathsend", PyDict::new(py))?;
        Ok(Self {
            asgi: asgi.unbind(),
            ws_extensions: ws.unbind(),
            http_extensions: http.unbind(),
            names: COMMON_NAMES
                .iter()
                .map(|n| PyBytes::new(py, n).unbind())
                .collect(),
            values: COMMON_VALUES
                .iter()
                .map(|v| PyBytes::new(py, v).unbind())
                .collect(),
            shared: Shared::default(),
        })
    }

    /// The `asgi` dict (for the lifespan scope).
    #[getter]
    fn asgi(&self, py: Python<'_>) -> Py<PyDict> {
        self.asgi.clone_ref(py)
    }

    /// Parses the head at the start of `buf`. Returns `None` while it is
    /// incomplete; `(status, reason)` for a request refused before the app
    /// sees it (the connection then closes); else `(head_len, scope,
    /// chunked, content_length, keep_alive, expect_continue, ws_key)`, with
    /// `ws_key` `None` for plain HTTP. `state` (lifespan state) is copied
    /// into the scope when given.
    fn parse<'py>(
        &self,
        py: Python<'py>,
        buf: &[u8],
        state: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let head = match head::parse(buf) {
            Parsed::Partial => return Ok(None),
            Parsed::Invalid(r) => {
                return Some((r.status(), r.reason()).into_pyobject(py)).transpose()
            }
            Parsed::Complete(h) => h,
        };
        let ws_key = match websocket_key(buf, &head) {
            Ok(k) => k,
            Err(why) => return Some((400u16, why).into_pyobject(py)).transpose(),
        };
        let scope = self.build(py, buf, &head, state, ws_key.is_some())?;
        let (chunked, length) = match head.body {
            BodyLength::Length(n) => (false, n),
            BodyLength::Chunked => (true, 0),
        };
        let key = ws_key.map(|k| PyBytes::new(py, k));
        Some(
            (
                head.len,
                scope,
                chunked,
                length,
                head.keep_alive,
                head.expect_continue,
                key,
            )
                .into_pyobject(py),
        )
        .transpose()
    }
}

/// `Some(key)` for a WebSocket handshake, `None` for plain HTTP, `Err` for
/// an upgrade to websocket that RFC 6455 §4.2.1 does not allow.
fn websocket_key<'b>(buf: &'b [u8], head: &RequestHead) -> Result<Option<&'b [u8]>, &'static str> {
    let field = |name: &[u8]| {
        head.headers
            .iter()
            .find(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(name))
            .map(|(_, v)| buf[v.clone()].trim_ascii())
    };
    let upgrade = field(b"upgrade").is_some_and(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"websocket"))
    });
    if !upgrade {
        return Ok(None);
    }
    if &buf[head.method.clone()] != b"GET" || head.http10 {
        return Err("a WebSocket handshake is a GET over HTTP/1.1");
    }
    if field(b"sec-websocket-version") != Some(b"13") {
        return Err("unsupported WebSocket version (13 only)");
    }
    match field(b"sec-websocket-key") {
        // 16 bytes in base64 are 24 characters.
        Some(k) if k.len() == 24 => Ok(Some(k)),
        _ => Err("missing or invalid Sec-WebSocket-Key"),
    }
}

fn port(p: &[u8]) -> Option<u16> {
    std::str::from_utf8(p).ok()?.parse().ok()
}

impl ScopeTemplate {
    fn build<'py>(
        &self,
        py: Python<'py>,
        buf: &[u8],
        head: &RequestHead,
        state: Option<&Bound<'py, PyDict>>,
        websocket: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let scope = PyDict::new(py);
        let m = meta(buf, head);
        let https = m.scheme == Some(b"https");
        if websocket {
            scope.set_item(intern!(py, "type"), intern!(py, "websocket"))?;
            let scheme = if https { "wss" } else { "ws" };
            scope.set_item(intern!(py, "scheme"), scheme)?;
            scope.set_item(
                intern!(py, "extensions"),
                self.ws_extensions.bind(py).copy()?,
            )?;
        } else {
            scope.set_item(intern!(py, "type"), intern!(py, "http"))?;
            let method = &buf[head.method.clone()];
            let method = match method {
                b"GET" => intern!(py, "GET").clone(),
                b"POST" => intern!(py, "POST").clone(),
                b"HEAD" => intern!(py, "HEAD").clone(),
                _ => crate::environ::latin1(py, method),
            };
            scope.set_item(intern!(py, "method"), method)?;
            let scheme = if https {
                intern!(py, "https")
            } else {
                intern!(py, "http")
            };
            scope.set_item(intern!(py, "scheme"), scheme)?;
            scope.set_item(
                intern!(py, "extensions"),
                self.http_extensions.bind(py).copy()?,
            )?;
        }
        scope.set_item(intern!(py, "asgi"), self.asgi.bind(py))?;
        let version = if head.http10 {
            intern!(py, "1.0")
        } else {
            intern!(py, "1.1")
        };
        scope.set_item(intern!(py, "http_version"), version)?;

        let (raw_path, query, _) = split_target(&buf[head.target.clone()]);
        let path = self.shared.get(py, Kind::Path, &[raw_path], || {
            let decoded: std::borrow::Cow<'_, [u8]> =
                percent_encoding::percent_decode(raw_path).into();
            Ok(PyString::new(py, &String::from_utf8_lossy(&decoded)).into_any())
        })?;
        scope.set_item(intern!(py, "path"), path)?;
        let raw = self.shared.get(py, Kind::RawPath, &[raw_path], || {
            Ok(PyBytes::new(py, raw_path).into_any())
        })?;
        scope.set_item(intern!(py, "raw_path"), raw)?;
        scope.set_item(
            intern!(py, "query_string"),
            PyBytes::new(py, query.unwrap_or(b"")),
        )?;
        let mount = m.script_name.unwrap_or(b"");
        let mount = mount.strip_suffix(b"/").unwrap_or(mount);
        let root_path = percent_encoding::percent_decode(mount).decode_utf8_lossy();
        scope.set_item(intern!(py, "root_path"), PyString::new(py, &root_path))?;

        // Collected first: the list is then made at its exact length (one
        // allocation, no spare slots kept for the scope's life).
        let mut headers = Vec::with_capacity(head.headers.len());
        let mut subprotocols = Vec::new();
        let mut lower = Vec::with_capacity(64);
        for (n, v) in &head.headers {
            let name = &buf[n.clone()];
            if is_reserved(name) {
                continue;
            }
            let value = &buf[v.clone()];
            lower.clear();
            lower.extend(name.iter().map(u8::to_ascii_lowercase));
            if websocket && lower == b"sec-websocket-protocol" {
                subprotocols.extend(
                    value
                        .split(|&b| b == b',')
                        .map(<[u8]>::trim_ascii)
                        .filter(|p| !p.is_empty())
                        .map(|p| String::from_utf8_lossy(p).into_owned()),
                );
            }
            headers.push(self.header(py, &lower, value)?);
        }
        scope.set_item(intern!(py, "headers"), PyList::new(py, headers)?)?;
        if websocket {
            // The spec's type is an iterable: none offered (almost every
            // WebSocket) is the one empty tuple, not a new list each.
            if subprotocols.is_empty() {
                scope.set_item(intern!(py, "subprotocols"), PyTuple::empty(py))?;
            } else {
                scope.set_item(intern!(py, "subprotocols"), subprotocols)?;
            }
        }

        let client = match m.remote_addr.map(split_addr) {
            Some((ip, p)) if std::str::from_utf8(ip).is_ok() => {
                let ip = self.shared.get(py, Kind::ClientIp, &[ip], || {
                    Ok(PyString::new(py, std::str::from_utf8(ip).unwrap_or_default()).into_any())
                })?;
                (ip, port(p).unwrap_or(0)).into_py_any(py)?
            }
            _ => py.None(),
        };
        scope.set_item(intern!(py, "client"), client)?;
        let host = m.host.map(split_host);
        let server_name = m.server_name.or(host.map(|h| h.0));
        let default_port: u16 = if https { 443 } else { 80 };
        let server_port = m
            .server_port
            .or(host.and_then(|h| h.1))
            .and_then(port)
            .unwrap_or(default_port);
        let server = match server_name.filter(|n| std::str::from_utf8(n).is_ok()) {
            Some(n) => self
                .shared
                .get(py, Kind::Server, &[n, &server_port.to_le_bytes()], || {
                    let name = std::str::from_utf8(n).unwrap_or_default();
                    (name, server_port).into_bound_py_any(py)
                })?
                .unbind(),
            None => py.None(),
        };
        scope.set_item(intern!(py, "server"), server)?;
        if let Some(state) = state {
            scope.set_item(intern!(py, "state"), state.copy()?)?;
        }
        Ok(scope)
    }
}

impl ScopeTemplate {
    /// The `(name, value)` tuple of a header, `name` lowercased: shared
    /// with every scope that has the same pair when the name is a common
    /// one (a handshake's key, unique to it, never is).
    fn header<'py>(
        &self,
        py: Python<'py>,
        name: &[u8],
        value: &[u8],
    ) -> PyResult<Bound<'py, PyAny>> {
        let make = || {
            (
                shared(py, COMMON_NAMES, &self.names, name),
                shared(py, COMMON_VALUES, &self.values, value),
            )
                .into_bound_py_any(py)
        };
        let common = COMMON_NAMES.contains(&name) && name != b"sec-websocket-key";
        if common {
            self.shared.get(py, Kind::Header, &[name, value], make)
        } else {
            make()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(raw: &str) -> Result<Option<String>, &'static str> {
        let Parsed::Complete(h) = head::parse(raw.as_bytes()) else {
            panic!("{raw:?} does not parse")
        };
        websocket_key(raw.as_bytes(), &h).map(|k| k.map(|k| String::from_utf8_lossy(k).into()))
    }

    #[test]
    fn websocket_handshakes() {
        let ok = "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        assert_eq!(
            key(ok).unwrap().as_deref(),
            Some("dGhlIHNhbXBsZSBub25jZQ==")
        );
        assert_eq!(key("GET / HTTP/1.1\r\n\r\n").unwrap(), None);
        assert_eq!(key("GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n").unwrap(), None);
        assert!(key(&ok.replace("13", "8")).is_err());
        assert!(key(&ok.replace("GET", "POST")).is_err());
        assert!(key(&ok.replace("dGhlIHNhbXBsZSBub25jZQ==", "short")).is_err());
    }
}
