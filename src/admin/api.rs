//! The admin API's endpoints: one request → one call on
//! [`Server`] → one JSON (or Prometheus text) response. See
//! `docs/admin-api.md` for every endpoint with examples.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/v1/status` | [`ServerStatus`](crate::app::status::ServerStatus) |
//! | GET | `/v1/sites/{name}` | [`SiteStatus`](crate::app::status::SiteStatus), 404 |
//! | POST | `/v1/reload` | [`ReloadReport`](crate::app::ReloadReport), 422 [`ErrorBody`] with `errors` |
//! | POST | `/v1/sites/{name}/restart`, `/stop`, `/start` | [`ActionDone`], 404 |
//! | POST | `/v1/logs/reopen` | [`LogsReopened`](crate::app::LogsReopened), 503 |
//! | GET | `/metrics` | Prometheus text |
//! | * | `/v1/cluster/...` | [`super::cluster`] (a node with `[cluster]`) |
//!
//! Every error is an [`ErrorBody`] whose message says what to do next.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};

use crate::app::status::SiteStatus;
use crate::app::{ControlError, Server};
use crate::config::ConfigErrors;

/// Whether a connection may use the API.
#[derive(Clone, Debug)]
pub enum Access {
    /// Peer credentials checked and accepted.
    Granted,
    /// Refused, with the reason (answered with 403).
    Denied(Arc<str>),
    /// Each request must carry `Authorization: Bearer <token>`.
    Token(Arc<str>),
    /// No check (the metrics-only listener without a token).
    Open,
}

/// Which endpoints a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Admin,
    MetricsOnly,
}

/// An error answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: String,
    /// Configuration errors of a refused reload, each with file and key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ConfigProblem>,
}

/// One configuration error of a refused reload.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConfigProblem {
    /// The file (or `environment variable POLYHOST_...`) at fault.
    pub file: String,
    /// Dotted key, empty when the whole file is at fault.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

/// The answer to restart/stop/start.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ActionDone {
    pub site: String,
    pub action: String,
    pub message: String,
    pub status: Option<SiteStatus>,
}

pub(super) type Resp = Response<Full<Bytes>>;

/// Answers one request. Never panics on any input.
pub async fn handle<B>(req: Request<B>, server: &Server, access: &Access, scope: Scope) -> Resp
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match access {
        Access::Granted | Access::Open => {}
        Access::Denied(why) => return error(StatusCode::FORBIDDEN, why.to_string()),
        Access::Token(token) => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
                let mut r = error(
                    StatusCode::UNAUTHORIZED,
                    match scope {
                        Scope::Admin => "missing or wrong bearer token: send `Authorization: Bearer <[admin] token>`",
                        Scope::MetricsOnly => "missing or wrong bearer token: send `Authorization: Bearer <[metrics] token>`",
                    },
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                // A client without the token gets no kept-alive connection
                // to hold.
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return r;
            }
        }
    }
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let method = parts.method.clone();
    if scope == Scope::MetricsOnly && segments != ["metrics"] {
        return error(
            StatusCode::NOT_FOUND,
            "this listener serves only GET /metrics; use the admin socket for the API",
        );
    }
    match (segments.as_slice(), &method) {
        (["metrics"], &Method::GET) => {
            let body = super::metrics::scrape(server).await;
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(super::metrics::CONTENT_TYPE),
            );
            r
        }
        (["v1", "status"], &Method::GET) => json(StatusCode::OK, &server.status().await),
        (["v1", "sites", name], &Method::GET) => match server.site_status(name).await {
            Ok(s) => json(StatusCode::OK, &s),
            Err(e) => control_error(e),
        },
        (["v1", "reload"], &Method::POST) => match server.reload().await {
            Ok(report) => json(StatusCode::OK, &report),
            Err(e) => control_error(e),
        },
        (["v1", "logs", "reopen"], &Method::POST) => match server.reopen_logs().await {
            Ok(done) => json(StatusCode::OK, &done),
            Err(e) => control_error(e),
        },
        (["v1", "sites", name, action @ ("restart" | "stop" | "start")], &Method::POST) => {
            site_action(server, name, action).await
        }
        (["v1", "upgrade"], &Method::POST) => match upgrade_timeout(parts.uri.query()) {
            Ok(timeout) => upgrade(server, timeout).await,
            Err(why) => error(StatusCode::BAD_REQUEST, why),
        },
        (["v1", "cluster", rest @ ..], _) => {
            super::cluster::handle(rest, &method, body, server).await
        }
        (["metrics"] | ["v1", "status"] | ["v1", "sites", _], _) => not_allowed("GET"),
        (["v1", "reload"]
        | ["v1", "upgrade"]
        | ["v1", "logs", "reopen"]
        | ["v1", "sites", _, "restart" | "stop" | "start"], _) => {
            not_allowed("POST")
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!(
                "no endpoint {method} {path:?}; the API has GET /v1/status, GET /v1/sites/NAME, \
                 POST /v1/reload, POST /v1/logs/reopen, POST /v1/upgrade, POST /v1/sites/NAME/restart|stop|start, GET /metrics, \
                 /v1/cluster/... (see docs/admin-api.md)"
            ),
        ),
    }
}

async fn site_action(server: &Server, name: &str, action: &str) -> Resp {
    let (result, message) = match action {
        "restart" => (
            server.restart_site(name).await,
            "rolling restart: new processes start, old ones finish their requests and stop",
        ),
        "stop" => (
            server.stop_site(name).await,
            "stopped: its requests get 503 until it is started again (polyhost start SITE)",
        ),
        _ => (
            server.start_site(name).await,
            "started: its processes start now or on the first request",
        ),
    };
    if let Err(e) = result {
        return control_error(e);
    }
    let status = server.site_status(name).await.ok();
    let state = status.as_ref().map_or("", |s| s.state.as_str());
    let message = match (action, state) {
        ("restart", "static") => "a static site has no processes; nothing to restart",
        ("restart", "idle") => "no processes running (idle); the next request starts new ones",
        ("restart", "stopped") => {
            "stopped by the operator; nothing to restart (start it with `polyhost start SITE`)"
        }
        _ => message,
    };
    json(
        StatusCode::OK,
        &ActionDone {
            site: name.to_owned(),
            action: action.to_owned(),
            message: message.to_owned(),
            status,
        },
    )
}

fn control_error(e: ControlError) -> Resp {
    match e {
        ControlError::NoSuchSite(name) => error(
            StatusCode::NOT_FOUND,
            format!("no site named {name:?}; `polyhost status` lists the sites"),
        ),
        e @ ControlError::RouterSilent(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{e}; it may be restarting: try again (the supervisor restarts it on the same listeners)"),
        ),
        ControlError::ShuttingDown => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "polyhost is shutting down; try again once it runs again",
        ),
        ControlError::Config(errors) => config_errors(
            errors,
            "the configuration is invalid; nothing changed and the running sites keep serving. Fix these and reload again",
        ),
        ControlError::Setup(errors) => config_errors(
            errors,
            "the site could not be set up; nothing changed. Fix these and try again",
        ),
    }
}

pub(super) fn config_errors(errors: ConfigErrors, message: &str) -> Resp {
    json(
        StatusCode::UNPROCESSABLE_ENTITY,
        &ErrorBody {
            error: message.to_owned(),
            errors: errors
                .iter()
                .map(|e| ConfigProblem {
                    file: e.source.to_string(),
                    key: e.key.clone(),
                    message: e.message.clone(),
                })
                .collect(),
        },
    )
}

pub(super) fn not_allowed(allow: &'static str) -> Resp {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("use {allow} for this endpoint"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// `?timeout=SECONDS` of `POST /v1/upgrade` (default
/// `app::upgrade::DEFAULT_TIMEOUT`).
fn upgrade_timeout(query: Option<&str>) -> Result<std::time::Duration, String> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(crate::app::upgrade::DEFAULT_TIMEOUT);
    };
    let bad = || format!("bad query {query:?}: the only parameter is timeout=SECONDS (1 to 3600)");
    let secs: u64 = query
        .strip_prefix("timeout=")
        .and_then(|v| v.parse().ok())
        .filter(|s| (1..=3600).contains(s))
        .ok_or_else(bad)?;
    Ok(std::time::Duration::from_secs(secs))
}

async fn upgrade(server: &Server, timeout: std::time::Duration) -> Resp {
    use crate::app::upgrade::UpgradeError;
    match server.upgrade(timeout).await {
        Ok(done) => json(StatusCode::OK, &done),
        Err(e @ (UpgradeError::Busy | UpgradeError::PredecessorRunning(_))) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Err(e @ (UpgradeError::Unsupported | UpgradeError::ShuttingDown)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(e @ (UpgradeError::Start { .. } | UpgradeError::Failed { .. })) => {
            error(StatusCode::BAD_GATEWAY, e.to_string())
        }
    }
}

pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    json(
        status,
        &ErrorBody {
            error: message.into(),
            errors: Vec::new(),
        },
    )
}

pub(super) fn json<T: Serialize>(status: StatusCode, value: &T) -> Resp {
    let (status, body) = match serde_json::to_vec_pretty(value) {
        Ok(mut b) => {
            b.push(b'\n');
            (status, b)
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": format!("cannot encode the answer: {e}") })
                .to_string()
                .into_bytes(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn the_upgrade_timeout_is_whole_seconds_in_range() {
        assert_eq!(
            super::upgrade_timeout(None),
            Ok(crate::app::upgrade::DEFAULT_TIMEOUT)
        );
        assert_eq!(
            super::upgrade_timeout(Some("timeout=7")),
            Ok(Duration::from_secs(7))
        );
        for bad in ["timeout=0", "timeout=3601", "timeout=x", "wait=3"] {
            let err = super::upgrade_timeout(Some(bad)).unwrap_err();
            assert!(err.contains("timeout=SECONDS"), "{bad}: {err}");
        }
    }
}
