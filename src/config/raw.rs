//! The configuration as written: serde structs that mirror the files key for
//! key. Unknown keys are rejected (`deny_unknown_fields`) so typos never pass
//! silently. Nothing outside `config` sees these types; they are validated
//! into the types of `config::site` and `config::server`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::types::Scalar;

/// `polyhost.toml`, merged with its `include`d fragments and `POLYHOST_*` env.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Vec<String>>,
    pub vhosts_dir: Option<String>,
    /// Read separately, before the fragments are merged (see `server::load_server`).
    #[allow(dead_code)]
    pub include: Option<OneOrMany>,
    pub state_dir: Option<String>,
    pub log_dir: Option<String>,
    pub default_user: Option<String>,
    pub default_group: Option<String>,
    pub shutdown_timeout: Option<Scalar>,
    pub log_level: Option<String>,
    pub cgroups: Option<String>,
    pub site_scheduling: Option<String>,
    pub router_user: Option<String>,
    pub admin: Option<RawAdmin>,
    pub metrics: Option<RawMetrics>,
    // The front door (see `config::front`).
    pub tls_listen: Option<Vec<String>>,
    pub h2c: Option<bool>,
    pub router_threads: Option<Scalar>,
    pub trusted_proxies: Option<Vec<String>>,
    pub trusted_proxy_users: Option<Vec<String>>,
    pub limits: Option<super::front::RawServerLimits>,
    pub acme: Option<super::acme::RawAcme>,
    pub cluster: Option<super::cluster::RawCluster>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub socket: Option<String>,
    pub group: Option<String>,
    pub listen: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<String>,
}

/// One `vhosts/<site>.toml` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub hosts: Option<Vec<String>>,
    pub default: Option<bool>,
    pub root: Option<String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub limits: Option<RawLimits>,
    pub env: Option<BTreeMap<String, String>>,
    #[serde(rename = "static")]
    pub static_files: Option<RawStatic>,
    pub php: Option<RawPhp>,
    pub python: Option<RawPython>,
    pub app: Option<RawApp>,
    pub tls: Option<super::tls::RawTls>,
    pub sandbox: Option<super::site::RawSandbox>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub memory: Option<Scalar>,
    pub processes: Option<Scalar>,
    pub cpu: Option<Scalar>,
    pub body: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatic {
    pub index: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub cache_max_age: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPhp {
    pub fpm: Option<String>,
    pub mode: Option<String>,
    pub start: Option<String>,
    pub max_children: Option<Scalar>,
    pub max_requests: Option<Scalar>,
    pub idle_timeout: Option<Scalar>,
    pub pool_idle_timeout: Option<Scalar>,
    pub request_timeout: Option<Scalar>,
    pub startup_timeout: Option<Scalar>,
    pub front_controller: Option<String>,
    pub extensions: Option<Vec<String>>,
    pub open_basedir: Option<Vec<String>>,
    pub ini: Option<BTreeMap<String, Scalar>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPython {
    pub app: Option<String>,
    pub path: Option<Vec<String>>,
    pub home: Option<String>,
    pub mount: Option<String>,
    pub processes: Option<Scalar>,
    pub threads: Option<Scalar>,
    pub queue_timeout: Option<Scalar>,
    pub request_timeout: Option<Scalar>,
    pub startup_timeout: Option<Scalar>,
    pub max_requests: Option<Scalar>,
    pub memory_per_process: Option<Scalar>,
    pub idle_timeout: Option<Scalar>,
    pub worker: Option<String>,
    pub version: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub interface: Option<String>,
    pub max_concurrency: Option<Scalar>,
    pub lifespan: Option<String>,
    pub websocket: Option<RawWebSocket>,
}

/// `[app]`: any program that serves HTTP/1.1 (issue 22).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    pub command: Option<Vec<String>>,
    pub cwd: Option<String>,
    pub processes: Option<Scalar>,
    pub listen: Option<String>,
    pub mount: Option<String>,
    pub ready: Option<String>,
    pub start: Option<String>,
    pub startup_timeout: Option<Scalar>,
    pub max_concurrency: Option<Scalar>,
    pub queue_timeout: Option<Scalar>,
    pub request_timeout: Option<Scalar>,
    pub max_requests: Option<Scalar>,
    pub memory_per_process: Option<Scalar>,
    pub idle_timeout: Option<Scalar>,
    pub env: Option<BTreeMap<String, String>>,
}

/// `[python.websocket]` (ASGI sites).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebSocket {
    pub max_message: Option<Scalar>,
    pub ping_interval: Option<Scalar>,
    pub ping_timeout: Option<Scalar>,
    pub idle_timeout: Option<Scalar>,
}
