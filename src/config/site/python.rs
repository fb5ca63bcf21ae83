//! A site's `[python]` table, validated: the WSGI application and its
//! workers' settings ([`PythonConfig`]), with every bad key reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::config::error::FileErrors;
use crate::config::raw::RawPython;

#[derive(Clone, Debug, PartialEq)]
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
    pub env: BTreeMap<String, String>,
}

pub(super) fn validate_python(
    raw: RawPython,
    base: &Path,
    errs: &mut FileErrors<'_>,
) -> Option<PythonConfig> {
    let before = errs.errors.len();
    let (module, callable) = match raw.app.as_deref() {
        None => {
            errs.add(
                "python.app",
                "missing: name the WSGI application, e.g. app = \"mysite.wsgi:application\"",
            );
            (String::new(), String::new())
        }
        Some(app) => match parse_app(app) {
            Ok(pair) => pair,
            Err(msg) => {
                errs.add("python.app", msg);
                (String::new(), String::new())
            }
        },
    };
    let mount = raw
        .mount
        .map(|m| {
            errs.check("python.mount", parse_mount(&m))
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let config = PythonConfig {
        module,
        callable,
        path: raw
            .path
            .unwrap_or_default()
            .iter()
            .map(|p| absolute(base, p))
            .collect(),
        home: raw.home.map(|h| absolute(base, &h)),
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

/// Splits `package.module:callable` (callable defaults to `application`).
fn parse_app(app: &str) -> Result<(String, String), String> {
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
            "{app:?} is not a WSGI application reference (expected \"package.module:callable\")"
        ))
    }
}
