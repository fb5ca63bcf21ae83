//! The admin API's cluster endpoints (`/v1/cluster/...`): on a node with
//! `[cluster]`, the `polyhost cluster` operations of
//! [`crate::cluster::control`] with the node's own etcd settings, so a
//! panel that already talks to a node's socket needs no etcd client.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | PUT | `/v1/cluster/sites/{name}` | the vhost TOML | [`ClusterDone`], 422 with `errors` |
//! | DELETE | `/v1/cluster/sites/{name}` | | [`ClusterDone`], 404 |
//! | POST | `/v1/cluster/sites/{name}/place` | [`PlaceBody`] | [`ClusterDone`], 409 |
//! | POST | `/v1/cluster/sites/{name}/move` | [`MoveBody`] | [`ClusterDone`], 409, 504 |
//! | POST | `/v1/cluster/nodes/{node}/drain` | [`MoveBody`] without `node` | [`DrainReport`] |
//! | GET | `/v1/cluster/status` | | [`Status`] (`cluster status --json`) |
//!
//! Statuses mirror the CLI's exit codes: refused (exit 1) → 409, etcd
//! unreachable (exit 2) → 503, a move rolled back (exit 3) → 504. Without
//! `[cluster]` every cluster endpoint answers 404 saying so.
//!
//! Invariant: a site's text is validated exactly as `cluster put` does
//! ([`control::site_errors`], relative paths against the node's base
//! directory, as the node resolves them) before anything is written.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};

use super::api::{config_errors, error, json, not_allowed, Resp};
use crate::app::Server;
use crate::cluster::control::{self, Cluster, ClusterError, MoveOptions, MoveOutcome, Status};
use crate::cluster::etcd::EtcdSettings;

/// The largest request body a cluster endpoint reads (a vhost file).
const MAX_BODY: usize = 1024 * 1024;
/// How long a request body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to put, remove, place and move.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClusterDone {
    pub site: String,
    /// `put`, `remove`, `place` or `move`.
    pub action: String,
    /// The node the site is placed on (place, move).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub message: String,
}

/// `POST /v1/cluster/sites/{name}/place`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceBody {
    pub node: String,
    #[serde(default)]
    pub singleton: bool,
}

/// `POST .../move` (`node` required) and `.../drain` (no `node`); the
/// timeouts in seconds default as the CLI's (120 and 30).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveBody {
    pub node: Option<String>,
    pub ready_timeout: Option<u64>,
    pub switch_timeout: Option<u64>,
}

/// The answer to drain: one line per site placed on the node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DrainReport {
    pub node: String,
    pub sites: Vec<DrainedSite>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DrainedSite {
    pub site: String,
    pub moved: bool,
    pub message: String,
}

/// Answers one `/v1/cluster/...` request; `rest` is the path after it.
pub async fn handle<B>(rest: &[&str], method: &Method, body: B, server: &Server) -> Resp
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(allowed) = methods(rest) else {
        return error(
            StatusCode::NOT_FOUND,
            "no such cluster endpoint; see docs/admin-api.md (Cluster)",
        );
    };
    if !allowed.split(", ").any(|m| m == method.as_str()) {
        return not_allowed(allowed);
    }
    let Some(config) = server.config().await.server.cluster else {
        return error(
            StatusCode::NOT_FOUND,
            "this node has no [cluster] table in polyhost.toml; the cluster endpoints \
             need it (or run `polyhost cluster --etcd URL ...` from anywhere)",
        );
    };
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let settings = crate::cluster::node::settings(&config);
    if let (["sites", name], &Method::PUT) = (rest, method) {
        // Validated before etcd is asked: an invalid site is 422 even without it.
        let site = match valid_site(server, &settings, name, &body).await {
            Ok(site) => site,
            Err(r) => return *r,
        };
        return match connect(&settings).await {
            Ok(mut cluster) => put(&mut cluster, name, site).await,
            Err(why) => unreachable(&why),
        };
    }
    match connect(&settings).await {
        Ok(mut cluster) => dispatch(&mut cluster, rest, method, &body).await,
        Err(why) => unreachable(&why),
    }
}

/// The methods a cluster path takes; `None`: no such path.
fn methods(rest: &[&str]) -> Option<&'static str> {
    match rest {
        ["status"] => Some("GET"),
        ["sites", _] => Some("PUT, DELETE"),
        ["sites", _, "place" | "move"] | ["nodes", _, "drain"] => Some("POST"),
        _ => None,
    }
}

/// Every endpoint but PUT, once its method is checked.
async fn dispatch(cluster: &mut Cluster, rest: &[&str], method: &Method, body: &[u8]) -> Resp {
    match (rest, method) {
        (["status"], _) => match cluster.snapshot().await {
            Ok(snap) => json(StatusCode::OK, &Status::of(&snap)),
            Err(e) => cluster_error(e),
        },
        (["sites", name], _) => remove(cluster, name).await,
        (["sites", name, "place"], _) => place(cluster, name, body).await,
        (["sites", name, _], _) => move_site(cluster, name, body).await,
        (["nodes", node, _], _) => drain(cluster, node, body).await,
        _ => error(StatusCode::NOT_FOUND, "no such cluster endpoint"),
    }
}

async fn read_body<B>(body: B) -> Result<Bytes, String>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let read = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect());
    match read.await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) => Err(format!(
            "cannot read the request body (at most {MAX_BODY} bytes): {e}"
        )),
        Err(_) => Err(format!(
            "the request body did not arrive within {BODY_TIMEOUT:?}"
        )),
    }
}

/// A site's text and the base its relative paths resolve against, once
/// valid.
struct ValidSite {
    text: String,
    base: std::path::PathBuf,
}

async fn valid_site(
    server: &Server,
    settings: &EtcdSettings,
    name: &str,
    body: &[u8],
) -> Result<ValidSite, Box<Resp>> {
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "the body must be the site's vhost file as UTF-8 TOML text",
        )));
    };
    let base = server.config().await.server.base_dir;
    match control::site_errors(&settings.keys(), name, text, &base) {
        Ok(()) => Ok(ValidSite {
            text: text.to_owned(),
            base,
        }),
        Err(errors) => Err(Box::new(config_errors(
            errors,
            "the site is invalid; nothing was written to etcd. Fix these and put it again",
        ))),
    }
}

/// Connects to the node's etcd; `Err` says why not.
async fn connect(settings: &EtcdSettings) -> Result<Cluster, String> {
    Cluster::connect(settings)
        .await
        .map_err(|e| format!("{e:#}"))
}

async fn put(cluster: &mut Cluster, name: &str, site: ValidSite) -> Resp {
    match cluster.put_site(name, &site.text, &site.base).await {
        Ok(()) => done(name, "put", None, format!("stored sites/{name}")),
        Err(e) => cluster_error(e),
    }
}

async fn remove(cluster: &mut Cluster, name: &str) -> Resp {
    match cluster.remove_site(name).await {
        Ok(true) => done(
            name,
            "remove",
            None,
            format!("removed sites/{name} and placement/{name}; its node stops it"),
        ),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("no site {name:?} in etcd; GET /v1/cluster/status lists them"),
        ),
        Err(e) => cluster_error(e),
    }
}

async fn place(cluster: &mut Cluster, name: &str, body: &[u8]) -> Resp {
    let args: PlaceBody = match parse(body) {
        Ok(a) => a,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match cluster.place(name, &args.node, args.singleton).await {
        Ok(()) => done(
            name,
            "place",
            Some(args.node.clone()),
            format!("placed {name} on {}", args.node),
        ),
        Err(e) => cluster_error(e),
    }
}

async fn move_site(cluster: &mut Cluster, name: &str, body: &[u8]) -> Resp {
    let args: MoveBody = match parse(body) {
        Ok(a) => a,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let Some(to) = args.node.clone() else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body needs the target: {\"node\": \"NODE\"}",
        );
    };
    match cluster.move_site(name, &to, options(&args)).await {
        Ok(outcome) => done(name, "move", Some(to), moved(name, outcome)),
        Err(e) => cluster_error(e),
    }
}

async fn drain(cluster: &mut Cluster, node: &str, body: &[u8]) -> Resp {
    let args: MoveBody = match parse(body) {
        Ok(a) => a,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    if args.node.is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            "drain chooses the target nodes itself; give only ready_timeout and switch_timeout",
        );
    }
    let mut status = StatusCode::OK;
    let mut sites = Vec::new();
    for (site, result) in cluster.drain(node, options(&args)).await {
        let (is_moved, message) = match result {
            Ok(outcome) => (true, moved(&site, outcome)),
            Err(e) => {
                let s = cluster_status(&e);
                if worse(s, status) {
                    status = s;
                }
                (false, e.to_string())
            }
        };
        sites.push(DrainedSite {
            site,
            moved: is_moved,
            message,
        });
    }
    let report = DrainReport {
        node: node.to_owned(),
        sites,
    };
    json(status, &report)
}

/// The order of a drain's answer: 503 over 504 over 409 over 200.
fn worse(a: StatusCode, b: StatusCode) -> bool {
    let rank = |s: StatusCode| match s {
        StatusCode::SERVICE_UNAVAILABLE => 3,
        StatusCode::GATEWAY_TIMEOUT => 2,
        StatusCode::CONFLICT => 1,
        _ => 0,
    };
    rank(a) > rank(b)
}

/// A JSON body (empty means `{}`); 400 saying what is wrong.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| format!("bad JSON body: {e}"))
}

fn options(args: &MoveBody) -> MoveOptions {
    let d = MoveOptions::default();
    MoveOptions {
        ready_timeout: args
            .ready_timeout
            .map_or(d.ready_timeout, Duration::from_secs),
        switch_timeout: args
            .switch_timeout
            .map_or(d.switch_timeout, Duration::from_secs),
    }
}

fn moved(name: &str, outcome: MoveOutcome) -> String {
    match outcome {
        MoveOutcome::Unchanged => format!("{name} is already on that node"),
        MoveOutcome::Moved { from, to } => format!("moved {name} from {from} to {to}"),
    }
}

fn done(site: &str, action: &str, node: Option<String>, message: String) -> Resp {
    json(
        StatusCode::OK,
        &ClusterDone {
            site: site.to_owned(),
            action: action.to_owned(),
            node,
            message,
        },
    )
}

/// The CLI's exit codes as statuses: refused 409, etcd 503, rolled back 504.
fn cluster_status(e: &ClusterError) -> StatusCode {
    match e {
        ClusterError::Refused(_) => StatusCode::CONFLICT,
        ClusterError::Etcd(_) => StatusCode::SERVICE_UNAVAILABLE,
        ClusterError::RolledBack(_) => StatusCode::GATEWAY_TIMEOUT,
    }
}

fn cluster_error(e: ClusterError) -> Resp {
    match e {
        ClusterError::Etcd(_) => unreachable(&e.to_string()),
        e => error(cluster_status(&e), e.to_string()),
    }
}

fn unreachable(why: &str) -> Resp {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{why}: is etcd running? This node keeps serving its last state; try again"),
    )
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    #[test]
    fn each_path_takes_its_methods_and_others_are_unknown() {
        assert_eq!(super::methods(&["status"]), Some("GET"));
        assert_eq!(super::methods(&["sites", "shop"]), Some("PUT, DELETE"));
        assert_eq!(super::methods(&["sites", "shop", "move"]), Some("POST"));
        assert_eq!(super::methods(&["nodes", "web-1", "drain"]), Some("POST"));
        assert_eq!(super::methods(&["sites", "shop", "drain"]), None);
        assert_eq!(super::methods(&[]), None);
    }

    #[test]
    fn a_drain_answers_with_its_worst_move() {
        use StatusCode as S;
        assert!(super::worse(S::SERVICE_UNAVAILABLE, S::GATEWAY_TIMEOUT));
        assert!(super::worse(S::GATEWAY_TIMEOUT, S::CONFLICT));
        assert!(super::worse(S::CONFLICT, S::OK));
        assert!(!super::worse(S::CONFLICT, S::GATEWAY_TIMEOUT));
    }

    #[test]
    fn an_empty_body_is_an_empty_object_and_unknown_fields_are_refused() {
        let empty: super::MoveBody = super::parse(b" \n").unwrap();
        assert!(empty.node.is_none() && empty.ready_timeout.is_none());
        let err = super::parse::<super::PlaceBody>(br#"{"node":"a","nodes":1}"#).unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }
}
