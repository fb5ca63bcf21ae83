//! The server-level `[cluster]` table: this server is a node of a polyhost
//! cluster (issue 26) whose sites come from etcd. Validated into
//! [`ClusterConfig`]; absent, polyhost serves its files alone. The agent
//! that uses it is `crate::cluster::node`.
//!
//! Sites placed on this node are written to [`cluster_vhosts_dir`]
//! (`state_dir/cluster/vhosts`), which [`super::load`] reads besides
//! `vhosts_dir`; a site loaded from there is named after its etcd key
//! ([`cluster_site_file`]) in every message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::error::FileErrors;
use super::types::{parse_duration, Scalar, SiteName};

/// The default key prefix in etcd (the same as `cluster::schema::DEFAULT_PREFIX`).
pub const DEFAULT_CLUSTER_PREFIX: &str = "/polyhost/";
/// `[cluster] capacity` when not set: how many sites the node takes.
pub const DEFAULT_CAPACITY: u32 = 100;
/// `[cluster] lease_ttl` when not set.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);

/// `[cluster]`, validated.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterConfig {
    /// etcd client URLs (`etcd`).
    pub endpoints: Vec<String>,
    /// Key prefix, always ending in `/`.
    pub prefix: String,
    /// This node's name (`nodes/NODE`, `placement` values).
    pub node: String,
    /// Where the front reaches this node's plain-HTTP listener (`host:port`).
    pub advertise: String,
    /// Where the front reaches this node's TLS listener (SNI passthrough).
    pub advertise_tls: Option<String>,
    pub capacity: u32,
    /// The lease `nodes/NODE` is kept under; also how long the node keeps
    /// its `singleton` sites running without renewing it.
    pub lease_ttl: Duration,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub user: Option<String>,
    /// `password` or `password_file` (or `POLYHOST_CLUSTER__PASSWORD`):
    /// a secret, so never serialised (the router is not told).
    #[serde(skip)]
    pub password: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub etcd: Option<super::raw::OneOrMany>,
    pub prefix: Option<String>,
    pub node: Option<String>,
    pub advertise: Option<String>,
    pub advertise_tls: Option<String>,
    pub capacity: Option<Scalar>,
    pub lease_ttl: Option<Scalar>,
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<String>,
}

/// Where the sites placed on this node are kept: the node's last applied
/// state, read by every load besides `vhosts_dir`.
pub fn cluster_vhosts_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("cluster").join("vhosts")
}

/// The name a site from etcd goes by in messages: `etcd:` and its key.
pub fn cluster_site_file(prefix: &str, site: &str) -> PathBuf {
    PathBuf::from(format!("etcd:{prefix}sites/{site}"))
}

pub(crate) fn validate_cluster(
    raw: RawCluster,
    base: &Path,
    admin_group: Option<&str>,
    errs: &mut FileErrors<'_>,
) -> Option<ClusterConfig> {
    let before = errs.errors.len();
    let endpoints = validate_endpoints(raw.etcd, errs);
    let prefix = validate_prefix(raw.prefix, errs);
    let node = match raw.node {
        None => {
            errs.add(
                "cluster.node",
                "required: this node's name in the cluster, e.g. \"web-3\"",
            );
            String::new()
        }
        // A node name is a key part and a HAProxy backend name: a site name's rules fit.
        Some(n) => {
            if let Err(msg) = SiteName::parse(&n) {
                errs.add(
                    "cluster.node",
                    msg.replace(
                        "site name (the file name without .toml must match",
                        "node name (it must match",
                    ),
                );
            }
            n
        }
    };
    let advertise = match raw.advertise {
        None => {
            errs.add("cluster.advertise", "required: where the front reaches this node's plain-HTTP listener, e.g. \"10.0.0.3:80\"");
            String::new()
        }
        Some(a) => check_host_port("cluster.advertise", a, errs),
    };
    let advertise_tls = raw
        .advertise_tls
        .map(|a| check_host_port("cluster.advertise_tls", a, errs));
    let capacity = raw.capacity.map_or(DEFAULT_CAPACITY, |c| match c {
        Scalar::Int(n) if n > 0 && n <= i64::from(u32::MAX) => n as u32,
        other => {
            errs.add(
                "cluster.capacity",
                format!("{other} is not a number of sites (a whole number above 0)"),
            );
            DEFAULT_CAPACITY
        }
    });
    let lease_ttl = validate_ttl(raw.lease_ttl, errs);
    let file = |key: &str, value: Option<String>, errs: &mut FileErrors<'_>| {
        value.and_then(|v| {
            let path = base.join(v);
            if path.is_file() {
                Some(path)
            } else {
                errs.add(
                    key,
                    format!("{} is not a readable PEM file", path.display()),
                );
                None
            }
        })
    };
    let ca_file = file("cluster.ca_file", raw.ca_file, errs);
    let cert_file = file("cluster.cert_file", raw.cert_file, errs);
    let key_file = file("cluster.key_file", raw.key_file, errs);
    if cert_file.is_some() != key_file.is_some() {
        errs.add(
            "cluster.cert_file",
            "etcd client certificates need both cert_file and key_file",
        );
    }
    let password = validate_password(raw.password, raw.password_file, base, admin_group, errs);
    if password.is_some() != raw.user.is_some() {
        errs.add(
            "cluster.user",
            "etcd authentication needs both user and password (or password_file)",
        );
    }
    if errs.errors.len() > before {
        return None;
    }
    Some(ClusterConfig {
        endpoints,
        prefix,
        node,
        advertise,
        advertise_tls,
        capacity,
        lease_ttl,
        ca_file,
        cert_file,
        key_file,
        user: raw.user,
        password,
    })
}

fn validate_endpoints(
    raw: Option<super::raw::OneOrMany>,
    errs: &mut FileErrors<'_>,
) -> Vec<String> {
    let endpoints = raw.map(super::raw::OneOrMany::into_vec).unwrap_or_default();
    if endpoints.is_empty() {
        errs.add(
            "cluster.etcd",
            "required: etcd's client URLs, e.g. [\"http://127.0.0.1:2379\"]",
        );
    }
    for (i, e) in endpoints.iter().enumerate() {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            errs.add(&format!("cluster.etcd[{i}]"), format!("{e:?} is not a URL: expected e.g. \"http://127.0.0.1:2379\" or \"https://etcd-1:2379\""));
        }
    }
    endpoints
}

fn validate_prefix(raw: Option<String>, errs: &mut FileErrors<'_>) -> String {
    let Some(mut prefix) = raw else {
        return DEFAULT_CLUSTER_PREFIX.to_owned();
    };
    if !prefix.starts_with('/') || prefix.contains(char::is_whitespace) {
        errs.add("cluster.prefix", format!("{prefix:?} is not a key prefix: expected a path such as \"{DEFAULT_CLUSTER_PREFIX}\""));
    }
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    prefix
}

fn validate_ttl(raw: Option<Scalar>, errs: &mut FileErrors<'_>) -> Duration {
    let Some(v) = raw else {
        return DEFAULT_LEASE_TTL;
    };
    match parse_duration(&v) {
        // etcd leases count whole seconds; below 2 s a keep-alive cannot keep up.
        Ok(d) if d >= Duration::from_secs(2) && d <= Duration::from_secs(3600) => {
            Duration::from_secs(d.as_secs())
        }
        Ok(_) => {
            errs.add(
                "cluster.lease_ttl",
                format!("{v}: expected between \"2s\" and \"1h\""),
            );
            DEFAULT_LEASE_TTL
        }
        Err(msg) => {
            errs.add("cluster.lease_ttl", msg);
            DEFAULT_LEASE_TTL
        }
    }
}

/// `host:port` with a numeric port (a name or an address; the front resolves it).
fn check_host_port(key: &str, value: String, errs: &mut FileErrors<'_>) -> String {
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok {
        errs.add(
            key,
            format!("{value:?} is not host:port (e.g. \"10.0.0.3:80\")"),
        );
    }
    value
}

fn validate_password(
    inline: Option<String>,
    file: Option<String>,
    base: &Path,
    admin_group: Option<&str>,
    errs: &mut FileErrors<'_>,
) -> Option<String> {
    match (inline.filter(|p| !p.is_empty()), file) {
        (Some(_), Some(_)) => {
            errs.add(
                "cluster.password_file",
                "set cluster.password or cluster.password_file, not both",
            );
            None
        }
        (Some(p), None) => Some(p),
        (None, Some(f)) => errs.check(
            "cluster.password_file",
            super::secret::read_token_file(&base.join(f), admin_group),
        ),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigErrors;

    fn check(text: &str) -> Result<ClusterConfig, String> {
        let raw: RawCluster = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut errors = ConfigErrors::default();
        let file = Path::new("polyhost.toml");
        let mut errs = FileErrors::new(file, &mut errors);
        let c = validate_cluster(raw, Path::new("/nonexistent"), None, &mut errs);
        c.ok_or_else(|| errors.to_string())
    }

    #[test]
    fn defaults_and_required_keys() {
        let c = check(
            "etcd = \"http://127.0.0.1:2379\"\nnode = \"web-3\"\nadvertise = \"10.0.0.3:80\"",
        )
        .unwrap();
        assert_eq!(c.prefix, "/polyhost/");
        assert_eq!(c.capacity, 100);
        assert_eq!(c.lease_ttl, Duration::from_secs(5));
        assert_eq!(c.endpoints, vec!["http://127.0.0.1:2379".to_owned()]);
        let err = check("etcd = []").unwrap_err();
        expect_test::expect![[r#"
            polyhost.toml: cluster.etcd: required: etcd's client URLs, e.g. ["http://127.0.0.1:2379"]
            polyhost.toml: cluster.node: required: this node's name in the cluster, e.g. "web-3"
            polyhost.toml: cluster.advertise: required: where the front reaches this node's plain-HTTP listener, e.g. "10.0.0.3:80""#]]
        .assert_eq(&err);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = check(
            "etcd = [\"127.0.0.1:2379\"]\nnode = \"Web_3\"\nadvertise = \"10.0.0.3\"\nlease_ttl = \"1s\"\nprefix = \"ph\"\ncapacity = 0\nuser = \"node\"",
        )
        .unwrap_err();
        expect_test::expect![[r#"
            polyhost.toml: cluster.etcd[0]: "127.0.0.1:2379" is not a URL: expected e.g. "http://127.0.0.1:2379" or "https://etcd-1:2379"
            polyhost.toml: cluster.prefix: "ph" is not a key prefix: expected a path such as "/polyhost/"
            polyhost.toml: cluster.node: "Web_3" is not a valid node name (it must match [a-z0-9][a-z0-9-]*, at most 48 characters)
            polyhost.toml: cluster.advertise: "10.0.0.3" is not host:port (e.g. "10.0.0.3:80")
            polyhost.toml: cluster.capacity: 0 is not a number of sites (a whole number above 0)
            polyhost.toml: cluster.lease_ttl: "1s": expected between "2s" and "1h"
            polyhost.toml: cluster.user: etcd authentication needs both user and password (or password_file)"#]]
        .assert_eq(&err);
    }

    #[test]
    fn site_files_and_directory() {
        assert_eq!(
            cluster_site_file("/polyhost/", "shop"),
            PathBuf::from("etcd:/polyhost/sites/shop")
        );
        assert_eq!(
            cluster_vhosts_dir(Path::new("/run/ph")),
            PathBuf::from("/run/ph/cluster/vhosts")
        );
    }
}
