//! The server-wide configuration: `polyhost.toml`, the fragments it
//! `include`s, and `POLYHOST_*` environment overrides, layered with figment
//! (main file, then fragments in name order, then the environment; see
//! `config::env` for which variables count).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Figment;

use super::error::{ConfigError, ConfigErrors, FileErrors, Source};
use super::raw::RawServer;
use super::types::parse_duration;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServerConfig {
    /// The main file as given on the command line.
    pub main_file: PathBuf,
    /// Directory relative paths are resolved against (the main file's).
    pub base_dir: PathBuf,
    pub listen: Vec<SocketAddr>,
    pub vhosts_dir: PathBuf,
    /// Fragment files merged into this config, in merge order.
    pub fragments: Vec<PathBuf>,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    pub default_user: Option<String>,
    pub default_group: Option<String>,
    pub shutdown_timeout: Duration,
    pub log_level: String,
    /// Use cgroups for site limits when the host offers them (`true`), or never.
    pub cgroups: bool,
    /// Scheduling policy of every site process (`site_scheduling`).
    pub site_scheduling: SiteScheduling,
    /// The user the router process runs as when polyhost runs as root
    /// (`router_user`; never root).
    pub router_user: String,
    pub admin: AdminConfig,
    /// `[metrics] listen`: a TCP address serving only `/metrics`.
    pub metrics_listen: Option<SocketAddr>,
    /// `[metrics] token` (or `token_file`): bearer token required on
    /// `metrics_listen`; none: that listener is open. Never serialised.
    #[serde(skip)]
    pub metrics_token: Option<AdminToken>,
    /// TLS listeners, h2c, trusted proxies, connection and request limits.
    pub front: super::front::FrontConfig,
    /// `[acme]`: the CA of sites with `tls.acme` (defaults when absent).
    pub acme: super::acme::AcmeConfig,
    /// `[cluster]`: this server is a node of a cluster (sites from etcd).
    pub cluster: Option<super::cluster::ClusterConfig>,
}

/// Linux scheduling policy of site processes (`site_scheduling`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SiteScheduling {
    /// `SCHED_BATCH`: a site process that wakes up (its request arrived)
    /// does not preempt the router mid-slice, so the router keeps moving
    /// requests and both switch less often.
    #[default]
    Batch,
    /// `SCHED_OTHER`, like polyhost itself.
    Normal,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdminConfig {
    pub socket: PathBuf,
    /// Group allowed to open the socket besides root.
    pub group: Option<String>,
    /// Optional TCP address of the admin API; never without `token`.
    pub listen: Option<SocketAddr>,
    /// Bearer token required on `listen` (`token` or `token_file`). Never
    /// serialised: the router process is not told any token.
    #[serde(skip)]
    pub token: Option<AdminToken>,
}

/// A bearer token of the admin API or the metrics listener; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// `router_user` when none is set.
pub const DEFAULT_ROUTER_USER: &str = "polyhost";
pub const DEFAULT_INCLUDE: &str = "conf.d/*.toml";

/// Loads the main file with its fragments and env overrides. Returns the
/// validated server config, or every error found.
pub(crate) fn load_server(main: &Path, errors: &mut ConfigErrors) -> Option<ServerConfig> {
    if !main.is_file() {
        errors.push(ConfigError {
            source: Source::File(main.to_path_buf()),
            key: String::new(),
            message: "cannot read the main configuration file (does it exist? pass another with --config)".into(),
        });
        return None;
    }
    let base_dir = main.parent().map(Path::to_path_buf).unwrap_or_default();
    // `POLYHOST_*` variables that name no setting are left out (`config::env`).
    let env = super::env::overrides;
    // The include pattern decides which fragments exist, so read it first.
    let include: Vec<String> = Figment::new()
        .merge(Toml::file_exact(main))
        .merge(env())
        .extract_inner::<super::raw::OneOrMany>("include")
        .map(|i| i.into_vec())
        .unwrap_or_else(|_| vec![DEFAULT_INCLUDE.to_owned()]);
    let fragments = find_fragments(&base_dir, &include, main, errors);
    let mut figment = Figment::new().merge(Toml::file_exact(main));
    for f in &fragments {
        figment = figment.merge(Toml::file_exact(f));
    }
    let figment = figment.merge(env());
    let raw: RawServer = match figment.extract() {
        Ok(raw) => raw,
        Err(e) => {
            for e in e {
                errors.push(figment_error(main, &e));
            }
            return None;
        }
    };
    // Files that hold a token must be private (checked whatever else is wrong).
    let admin_group = raw.admin.as_ref().and_then(|a| a.group.clone());
    let layers: Vec<&Path> = std::iter::once(main)
        .chain(fragments.iter().map(PathBuf::as_path))
        .collect();
    super::secret::check_layers(&layers, admin_group.as_deref(), errors);
    let before = errors.len();
    let config = validate_server(raw, main, base_dir, fragments, errors);
    // Validation names the main file; point each error at the layer that set the key.
    for e in &mut errors.0[before..] {
        let top = e.key.split(['.', '[']).next().unwrap_or_default();
        if let Some(meta) = figment.find_metadata(top) {
            e.source = metadata_source(meta, &e.key, main);
        }
    }
    config
}

fn metadata_source(meta: &figment::Metadata, key: &str, main: &Path) -> Source {
    match &meta.source {
        Some(figment::Source::File(p)) => Source::File(relative_to_cwd(p)),
        _ if meta.name.contains("environment") => {
            let top = key.split(['.', '[']).next().unwrap_or_default();
            Source::Env(format!("POLYHOST_{}", top.to_ascii_uppercase()))
        }
        _ => Source::File(main.to_path_buf()),
    }
}

fn find_fragments(
    base: &Path,
    include: &[String],
    main: &Path,
    errors: &mut ConfigErrors,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for pattern in include {
        let full = base.join(pattern);
        match glob::glob(&full.to_string_lossy()) {
            Ok(paths) => {
                let mut found: Vec<PathBuf> = paths
                    .filter_map(Result::ok)
                    .filter(|p| p.is_file())
                    .collect();
                found.sort();
                out.extend(found);
            }
            Err(e) => errors.push(ConfigError::in_file(
                main,
                "include",
                format!("{pattern:?} is not a glob pattern: {e}"),
            )),
        }
    }
    out
}

fn figment_error(main: &Path, e: &figment::Error) -> ConfigError {
    let source = match &e.metadata {
        Some(meta) if meta.name.contains("environment") => Source::Env(format!(
            "POLYHOST_{}",
            e.path.join("__").to_ascii_uppercase()
        )),
        Some(meta) => metadata_source(meta, &e.path.join("."), main),
        None => Source::File(main.to_path_buf()),
    };
    ConfigError {
        source,
        key: e.path.join("."),
        message: e.kind.to_string(),
    }
}

/// figment reports absolute paths; show them as the user would write them.
fn relative_to_cwd(p: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| p.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| p.to_path_buf())
}

fn validate_server(
    raw: RawServer,
    main: &Path,
    base_dir: PathBuf,
    fragments: Vec<PathBuf>,
    errors: &mut ConfigErrors,
) -> Option<ServerConfig> {
    let before = errors.len();
    let mut errs = FileErrors::new(main, errors);
    // Runtime paths are absolute (processes run elsewhere); the vhosts
    // directory keeps the form the user gave, so messages name
    // `vhosts/shop.toml` rather than a long absolute path.
    let display_base = base_dir.clone();
    let base_dir = if base_dir.as_os_str().is_empty() {
        std::env::current_dir().unwrap_or(base_dir)
    } else {
        std::path::absolute(&base_dir).unwrap_or(base_dir)
    };
    let abs = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base_dir.join(p)
        }
    };
    let mut listen = Vec::new();
    for (i, addr) in raw
        .listen
        .unwrap_or_else(|| vec![DEFAULT_LISTEN.into()])
        .iter()
        .enumerate()
    {
        match addr.parse::<SocketAddr>() {
            Ok(a) => listen.push(a),
            Err(_) => errs.add(
                &format!("listen[{i}]"),
                format!("{addr:?} is not an address:port (e.g. \"127.0.0.1:8080\" or \"[::]:80\")"),
            ),
        }
    }
    let state_dir = abs(raw.state_dir.as_deref().unwrap_or("/run/polyhost"));
    let log_dir = abs(raw.log_dir.as_deref().unwrap_or("/var/log/polyhost"));
    let admin = raw.admin.unwrap_or_default();
    let socket = admin
        .socket
        .map(|s| abs(&s))
        .unwrap_or_else(|| state_dir.join("admin.sock"));
    let mut tcp = |key: &str, addr: Option<&String>| {
        addr.and_then(|a| match a.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errs.add(
                    key,
                    format!("{a:?} is not an address:port (e.g. \"127.0.0.1:9090\")"),
                );
                None
            }
        })
    };
    let admin_listen = tcp("admin.listen", admin.listen.as_ref());
    let metrics_listen = tcp(
        "metrics.listen",
        raw.metrics.as_ref().and_then(|m| m.listen.as_ref()),
    );
    let mut token = |section: &str, inline: Option<String>, file: Option<String>| {
        let inline = inline.filter(|t| !t.trim().is_empty());
        match (inline, file) {
            (Some(_), Some(_)) => {
                errs.add(
                    &format!("{section}.token_file"),
                    format!("set {section}.token or {section}.token_file, not both"),
                );
                None
            }
            (Some(t), None) => Some(AdminToken(t)),
            (None, Some(f)) => errs
                .check(
                    &format!("{section}.token_file"),
                    super::secret::read_token_file(&abs(&f), admin.group.as_deref()),
                )
                .map(AdminToken),
            (None, None) => None,
        }
    };
    let admin_token = token("admin", admin.token.clone(), admin.token_file.clone());
    let (metrics_inline, metrics_file) = raw
        .metrics
        .as_ref()
        .map(|m| (m.token.clone(), m.token_file.clone()))
        .unwrap_or_default();
    let metrics_token = token("metrics", metrics_inline, metrics_file);
    if admin.listen.is_some() && admin_token.is_none() && admin.token_file.is_none() {
        errs.add(
            "admin.token",
            "required when admin.listen is set: a long random string that clients send as `Authorization: Bearer TOKEN` (or admin.token_file, a file holding it)",
        );
    }
    let shutdown_timeout = raw
        .shutdown_timeout
        .and_then(|v| errs.check("shutdown_timeout", parse_duration(&v)))
        .unwrap_or(Duration::from_secs(30));
    let front = super::front::validate_front(
        raw.tls_listen,
        raw.h2c,
        raw.router_threads,
        raw.trusted_proxies,
        raw.trusted_proxy_users,
        raw.limits,
        &mut errs,
    );
    let acme = super::acme::validate_acme(raw.acme.unwrap_or_default(), &base_dir, &mut errs);
    let cluster = raw.cluster.and_then(|c| {
        super::cluster::validate_cluster(c, &base_dir, admin.group.as_deref(), &mut errs)
    });
    let cgroups = match raw.cgroups.as_deref() {
        None | Some("auto") => true,
        Some("off") => false,
        Some(other) => {
            errs.add(
                "cgroups",
                format!("{other:?} is not a cgroups mode (expected \"auto\" or \"off\")"),
            );
            true
        }
    };
    let site_scheduling = match raw.site_scheduling.as_deref() {
        None | Some("batch") => SiteScheduling::Batch,
        Some("normal") => SiteScheduling::Normal,
        Some(other) => {
            errs.add(
                "site_scheduling",
                format!("{other:?} is not a scheduling policy (expected \"batch\" or \"normal\")"),
            );
            SiteScheduling::Batch
        }
    };
    let router_user = raw
        .router_user
        .unwrap_or_else(|| DEFAULT_ROUTER_USER.to_owned());
    if router_user.is_empty() || router_user == "root" {
        errs.add(
            "router_user",
            format!("{router_user:?}: the router process serves the internet and must not run as root; name an unprivileged user of its own (default \"{DEFAULT_ROUTER_USER}\": `useradd --system --no-create-home --shell /usr/sbin/nologin {DEFAULT_ROUTER_USER}`)"),
        );
    }
    let log_level = raw.log_level.unwrap_or_else(|| "info".into());
    if log_level
        .parse::<tracing_subscriber::filter::EnvFilter>()
        .is_err()
    {
        errs.add(
            "log_level",
            format!(
                "{log_level:?} is not a log level (e.g. \"info\", \"debug\", \"polyhost=debug\")"
            ),
        );
    }
    if errors.len() > before {
        return None;
    }
    Some(ServerConfig {
        main_file: main.to_path_buf(),
        vhosts_dir: display_base.join(raw.vhosts_dir.as_deref().unwrap_or("vhosts")),
        base_dir: base_dir.clone(),
        listen,
        fragments,
        state_dir,
        log_dir,
        default_user: raw.default_user,
        default_group: raw.default_group,
        shutdown_timeout,
        log_level,
        cgroups,
        site_scheduling,
        router_user,
        admin: super::server::AdminConfig {
            socket,
            group: admin.group,
            listen: admin_listen,
            token: admin_token,
        },
        metrics_listen,
        metrics_token,
        front,
        acme,
        cluster,
    })
}
