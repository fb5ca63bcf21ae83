//! A site's `[python]` table, validated: the WSGI or ASGI application and
//! its workers' settings ([`PythonConfig`], [`PythonInterface`]), with every
//! bad key reported. A key that applies to the other interface only is an
//! error, not a silent no-op: `threads` on an ASGI site, `max_concurrency`,
//! `lifespan` or `[python.websocket]` on a WSGI site (each would otherwise
//! look like a setting that shapes the site's capacity or behaviour).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::python_version::{requested_version, RequestedVersion};
use super::*;
use crate::config::error::FileErrors;
use crate::config::raw::{RawPython, RawWebSocket};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PythonConfig {
    pub module: String,
    pub callable: String,
    pub path: Vec<PathBuf>,
    pub home: Option<PathBuf>,
    /// Mount prefix without trailing slash ("" for `/`).
    pub mount: String,
    pub processes: u64,
    pub threads: u64,
    pub start: StartPolicy,
    pub queue_timeout: Duration,
    pub request_timeout: Duration,
    pub startup_timeout: Duration,
    pub max_requests: Option<u64>,
    pub memory_per_process: Option<u64>,
    pub idle_timeout: Option<Duration>,
    pub worker: Option<PathBuf>,
    /// The CPython `major.minor` the site asks for (`python.version`, or
    /// the virtualenv's `pyvenv.cfg`); `None`: the default worker's.
    pub version: Option<RequestedVersion>,
    pub env: BTreeMap<String, String>,
    /// WSGI (threads) or ASGI (an event loop per process).
    pub interface: PythonInterface,
}

/// How the workers call the application.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum PythonInterface {
    /// WSGI: `threads` requests at once per process.
    Wsgi,
    /// ASGI 3.0: one event loop per process.
    Asgi(AsgiConfig),
}

/// An ASGI site's settings (`[python]` with `interface = "asgi"`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AsgiConfig {
    /// Requests and WebSockets in flight per process (`max_concurrency`).
    pub max_concurrency: u64,
    pub lifespan: Lifespan,
    pub websocket: WebSocketConfig,
}

/// Whether the worker runs the app's ASGI `lifespan` protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Lifespan {
    /// Run it; an app that does not support it is fine.
    Auto,
    /// Run it; an app that fails it does not start.
    On,
    /// Never run it.
    Off,
}

impl Lifespan {
    /// The worker's `--lifespan` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifespan::Auto => "auto",
            Lifespan::On => "on",
            Lifespan::Off => "off",
        }
    }
}

/// `[python.websocket]`: enforced by the worker, which frames WebSockets.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WebSocketConfig {
    /// Largest message (all fragments together), in bytes; above it: close 1009.
    pub max_message: u64,
    /// Ping the client this often (`None`: never).
    pub ping_interval: Option<Duration>,
    /// Close when a ping is not answered within this.
    pub ping_timeout: Duration,
    /// Close a WebSocket without a message either way for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            max_message: 16 << 20,
            ping_interval: Some(Duration::from_secs(20)),
            ping_timeout: Duration::from_secs(20),
            idle_timeout: None,
        }
    }
}

/// `max_concurrency`'s default, the contract's (`ASGI-CONTRACT`) and the worker's.
pub const DEFAULT_MAX_CONCURRENCY: u64 = 100;

impl PythonConfig {
    /// Requests one process serves at once: its threads (WSGI) or
    /// `max_concurrency` (ASGI, WebSockets included). The router's
    /// admission lets processes × this many in.
    pub fn per_process(&self) -> u64 {
        match &self.interface {
            PythonInterface::Wsgi => self.threads,
            PythonInterface::Asgi(asgi) => asgi.max_concurrency,
        }
    }

    /// "wsgi" or "asgi", for status and the worker's `--interface`.
    pub fn interface_name(&self) -> &'static str {
        match self.interface {
            PythonInterface::Wsgi => "wsgi",
            PythonInterface::Asgi(_) => "asgi",
        }
    }

    /// The ASGI settings, for an ASGI site.
    pub fn asgi(&self) -> Option<&AsgiConfig> {
        match &self.interface {
            PythonInterface::Wsgi => None,
            PythonInterface::Asgi(asgi) => Some(asgi),
        }
    }
}

pub(super) fn validate_python(
    raw: RawPython,
    site: &str,
    base: &Path,
    errs: &mut FileErrors<'_>,
) -> Option<PythonConfig> {
    let before = errs.errors.len();
    let asgi = match raw.interface.as_deref() {
        None | Some("wsgi") => false,
        Some("asgi") => true,
        Some(other) => {
            errs.add(
                "python.interface",
                format!("{other:?} is not an interface (expected \"wsgi\" or \"asgi\")"),
            );
            false
        }
    };
    let kind = if asgi { "an ASGI" } else { "a WSGI" };
    let (module, callable) = match raw.app.as_deref() {
        None => {
            let example = if asgi {
                "mysite.asgi:application"
            } else {
                "mysite.wsgi:application"
            };
            errs.add(
                "python.app",
                format!("missing: name {kind} application, e.g. app = \"{example}\""),
            );
            (String::new(), String::new())
        }
        Some(app) => match parse_app(app, kind) {
            Ok(pair) => pair,
            Err(msg) => {
                errs.add("python.app", msg);
                (String::new(), String::new())
            }
        },
    };
    if asgi && raw.threads.is_some() {
        errs.add(
            "python.threads",
            "applies to WSGI sites only: an ASGI site's concurrency per process is python.max_concurrency",
        );
    }
    let interface = if asgi {
        validate_asgi(&raw, errs)
    } else {
        let asgi_only = "applies to ASGI sites only (set python.interface = \"asgi\")";
        if raw.max_concurrency.is_some() {
            errs.add(
                "python.max_concurrency",
                format!("{asgi_only}; a WSGI site's concurrency per process is python.threads"),
            );
        }
        for (set, key) in [
            (raw.lifespan.is_some(), "python.lifespan"),
            (raw.websocket.is_some(), "python.websocket"),
        ] {
            if set {
                errs.add(key, asgi_only);
            }
        }
        PythonInterface::Wsgi
    };
    let mount = raw
        .mount
        .map(|m| {
            errs.check("python.mount", parse_mount(&m))
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let home = raw.home.map(|h| absolute(base, &h));
    let version = requested_version(site, raw.version.as_deref(), home.as_deref(), errs);
    let config = PythonConfig {
        interface,
        version,
        module,
        callable,
        path: raw
            .path
            .unwrap_or_default()
            .iter()
            .map(|p| absolute(base, p))
            .collect(),
        home,
        mount,
        processes: opt(errs, "python.processes", raw.processes, |v| {
            parse_count(v, 1, 256)
        })
        .unwrap_or(1),
        threads: opt(errs, "python.threads", raw.threads, |v| {
            parse_count(v, 1, 1024)
        })
        .unwrap_or(4),
        start: StartPolicy::OnDemand,
        queue_timeout: opt(
            errs,
            "python.queue_timeout",
            raw.queue_timeout,
            parse_duration,
        )
        .unwrap_or(Duration::from_secs(30)),
        request_timeout: opt(
            errs,
            "python.request_timeout",
            raw.request_timeout,
            parse_duration,
        )
        .unwrap_or(Duration::from_secs(60)),
        startup_timeout: opt(
            errs,
            "python.startup_timeout",
            raw.startup_timeout,
            parse_duration,
        )
        .unwrap_or(Duration::from_secs(30)),
        max_requests: opt(errs, "python.max_requests", raw.max_requests, |v| {
            parse_count(v, 1, u64::MAX >> 1)
        }),
        memory_per_process: opt(
            errs,
            "python.memory_per_process",
            raw.memory_per_process,
            parse_size,
        ),
        idle_timeout: opt(
            errs,
            "python.idle_timeout",
            raw.idle_timeout,
            parse_duration,
        )
        .filter(|d| !d.is_zero()),
        worker: raw.worker.map(|w| absolute(base, &w)),
        env: validate_env("python.env", raw.env.unwrap_or_default(), errs),
    };
    (errs.errors.len() == before).then_some(config)
}

/// `max_concurrency`, `lifespan` and `[python.websocket]` of an ASGI site.
fn validate_asgi(raw: &RawPython, errs: &mut FileErrors<'_>) -> PythonInterface {
    let max_concurrency = opt(
        errs,
        "python.max_concurrency",
        raw.max_concurrency.clone(),
        |v| parse_count(v, 1, 100_000),
    )
    .unwrap_or(DEFAULT_MAX_CONCURRENCY);
    let lifespan = match raw.lifespan.as_deref() {
        None | Some("auto") => Lifespan::Auto,
        Some("on") => Lifespan::On,
        Some("off") => Lifespan::Off,
        Some(other) => {
            errs.add(
                "python.lifespan",
                format!("{other:?} is not a lifespan mode (expected \"auto\", \"on\" or \"off\")"),
            );
            Lifespan::Auto
        }
    };
    let websocket = validate_websocket(raw.websocket.as_ref(), errs);
    PythonInterface::Asgi(AsgiConfig {
        max_concurrency,
        lifespan,
        websocket,
    })
}

/// Largest `websocket.max_message`: a message is held whole by the worker.
const MAX_MESSAGE_LIMIT: u64 = 1 << 30;

fn validate_websocket(raw: Option<&RawWebSocket>, errs: &mut FileErrors<'_>) -> WebSocketConfig {
    let mut ws = WebSocketConfig::default();
    let Some(raw) = raw else {
        return ws;
    };
    if let Some(size) = opt(
        errs,
        "python.websocket.max_message",
        raw.max_message.clone(),
        parse_size,
    ) {
        if (1..=MAX_MESSAGE_LIMIT).contains(&size) {
            ws.max_message = size;
        } else {
            errs.add(
                "python.websocket.max_message",
                format!("{size} bytes is not between 1 byte and 1G"),
            );
        }
    }
    // Durations go to the worker in whole seconds (rounded up).
    let secs = |errs: &mut FileErrors<'_>, key: &str, v: &Option<Scalar>| {
        opt(errs, key, v.clone(), parse_duration)
    };
    if let Some(d) = secs(errs, "python.websocket.ping_interval", &raw.ping_interval) {
        ws.ping_interval = (!d.is_zero()).then_some(d);
    }
    if let Some(d) = secs(errs, "python.websocket.ping_timeout", &raw.ping_timeout) {
        if d.is_zero() {
            errs.add(
                "python.websocket.ping_timeout",
                "must be more than 0 (to never ping, set ping_interval = \"0s\")",
            );
        } else {
            ws.ping_timeout = d;
        }
    }
    if let Some(d) = secs(errs, "python.websocket.idle_timeout", &raw.idle_timeout) {
        ws.idle_timeout = (!d.is_zero()).then_some(d);
    }
    ws
}

/// Splits `package.module:callable` (callable defaults to `application`);
/// `kind` ("a WSGI", "an ASGI") names what it should be in the error.
fn parse_app(app: &str, kind: &str) -> Result<(String, String), String> {
    let (module, callable) = app.split_once(':').unwrap_or((app, "application"));
    let ident = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|part| {
                !part.is_empty()
                    && !part.starts_with(|c: char| c.is_ascii_digit())
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
    };
    if ident(module) && ident(callable) {
        Ok((module.to_owned(), callable.to_owned()))
    } else {
        Err(format!(
            "{app:?} is not {kind} application reference (expected \"package.module:callable\")"
        ))
    }
}
