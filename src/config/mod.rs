//! Configuration: files in, validated values out.
//!
//! `polyhost.toml` (+ `include`d fragments + `POLYHOST_*` env, via figment)
//! gives the [`ServerConfig`]; each `vhosts_dir/<site>.toml` gives one
//! [`SiteConfig`]. Raw serde structs (`raw`) are validated once into typed
//! values (`types`, `site`, `server`); the rest of polyhost never sees a raw
//! string. A load reports every error, each naming file and key ([`ConfigErrors`]).
//!
//! Invariant: [`load`] either returns a complete, consistent [`Config`] or
//! errors; there is no half-loaded state. Reload builds a new `Config` and
//! compares it with the old one.

mod acme;
mod cluster;
mod env;
mod error;
mod front;
mod raw;
mod secret;
mod server;
mod site;
#[cfg(test)]
pub(crate) mod tests_support;
mod tls;
mod types;
mod vhosts;
mod views;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub use acme::{read_roots, AcmeConfig, OnDemand};
pub use cluster::{
    cluster_site_file, cluster_vhosts_dir, ClusterConfig, DEFAULT_CAPACITY, DEFAULT_CLUSTER_PREFIX,
    DEFAULT_LEASE_TTL,
};

pub use env::{ignored_env, IgnoredEnv};
pub use error::{ConfigError, ConfigErrors, Source};
pub use front::{FrontConfig, IpCidr, ServerLimits};
pub use server::{
    AdminConfig, AdminToken, ServerConfig, SiteScheduling, DEFAULT_INCLUDE, DEFAULT_LISTEN,
};
pub use site::{virtualenv_version, PythonVersion, RequestedVersion, VersionSource};
pub use site::{
    AppConfig, AppListen, AsgiConfig, IniValue, Lifespan, Limits, PhpConfig, PhpMode, PythonConfig,
    PythonInterface, SandboxConfig, SandboxNetwork, SiteConfig, SiteProblem, StartPolicy,
    StaticConfig, WebSocketConfig, DEFAULT_APP_PATH, DEFAULT_BODY_LIMIT, RESERVED_PHP_INI,
};
pub use tls::{acme_files, crypto_provider, load_certified_key, LoadedPair, SiteTls, TlsKey};
pub use types::{parse_duration, parse_size, HostPattern, Scalar, SiteName};

/// Everything polyhost serves, validated.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    pub server: ServerConfig,
    pub sites: BTreeMap<SiteName, Arc<SiteConfig>>,
}

/// Loads and validates the main file, its fragments, the environment and
/// every vhost file. All errors of all files are returned together.
pub fn load(main: &Path) -> Result<Config, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let server = server::load_server(main, &mut errors);
    let mut sites = match &server {
        Some(s) => match &s.cluster {
            Some(c) => vhosts::load_sites_with_cluster(
                &s.vhosts_dir,
                &cluster_vhosts_dir(&s.state_dir),
                &c.prefix,
                &s.base_dir,
                &mut errors,
            ),
            None => vhosts::load_sites(&s.vhosts_dir, &s.base_dir, &mut errors),
        },
        None => BTreeMap::new(),
    };
    if let Some(s) = &server {
        locate_acme_certificates(&mut sites, &s.state_dir);
        check_on_demand_sites(&sites, s, &mut errors);
    }
    match server {
        Some(server) if errors.is_empty() => Ok(Config { server, sites }),
        _ => Err(errors),
    }
}

/// Loads only the server-wide part (main file, fragments, env), not the
/// vhost files: what a client of the admin API needs to find the socket,
/// even while a vhost file is invalid.
pub fn load_server(main: &Path) -> Result<ServerConfig, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    match server::load_server(main, &mut errors) {
        Some(server) if errors.is_empty() => Ok(server),
        _ => Err(errors),
    }
}

/// Validates `text` exactly as the vhost file of site `name` would be;
/// `file` is what the errors call it (for a site from etcd, its key:
/// [`cluster_site_file`]). Relative paths resolve against `base`.
pub fn site_from_text(
    name: &str,
    file: &Path,
    text: &str,
    base: &Path,
) -> Result<SiteConfig, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    match vhosts::site_from_text(name, file, text, base, &mut errors) {
        Some(site) if errors.is_empty() => Ok(site),
        _ => Err(errors),
    }
}

/// `[tls] on_demand = true` needs `[acme] on_demand = true`.
fn check_on_demand_sites(
    sites: &BTreeMap<SiteName, Arc<SiteConfig>>,
    server: &ServerConfig,
    errors: &mut ConfigErrors,
) {
    if server.acme.on_demand.is_some() {
        return;
    }
    for site in sites.values() {
        if site.tls.as_ref().is_some_and(|t| t.on_demand) {
            errors.push(ConfigError::in_file(
                &site.file,
                "tls.on_demand",
                "needs [acme] on_demand = true (and ask) in the main file",
            ));
        }
    }
}

/// Points every `tls.acme` site at its stored certificate (loaded if there).
fn locate_acme_certificates(sites: &mut BTreeMap<SiteName, Arc<SiteConfig>>, state_dir: &Path) {
    for (name, site) in sites.iter_mut() {
        if site.tls.as_ref().is_some_and(|t| t.acme) {
            let site = Arc::make_mut(site);
            if let Some(tls) = site.tls.as_mut() {
                tls.locate_acme(state_dir, &name.to_string());
            }
        }
    }
}
