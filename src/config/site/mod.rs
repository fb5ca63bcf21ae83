//! A site as the rest of polyhost sees it: validated, typed, with defaults
//! applied. Built from a [`RawSite`] by [`validate_site`], which reports every
//! bad key of the file rather than stopping at the first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod app;
mod python;
mod python_version;
mod sandbox;

use app::validate_app;
pub use app::{AppConfig, AppListen, DEFAULT_PATH as DEFAULT_APP_PATH};
use python::validate_python;
pub use python::{AsgiConfig, Lifespan, PythonConfig, PythonInterface, WebSocketConfig};
pub use python_version::{virtualenv_version, PythonVersion, RequestedVersion, VersionSource};
pub use sandbox::{RawSandbox, SandboxConfig, SandboxNetwork};

use super::error::FileErrors;
use super::raw::{RawLimits, RawPhp, RawSite, RawStatic};
use super::types::{
    parse_cores, parse_count, parse_duration, parse_mount, parse_size, HostPattern, Scalar,
    SiteName,
};

/// Default request body limit when `limits.body` is not set.
pub const DEFAULT_BODY_LIMIT: u64 = 100 << 20;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SiteConfig {
    pub name: SiteName,
    /// The vhost file this site came from.
    pub file: PathBuf,
    pub hosts: Vec<HostPattern>,
    /// Receives requests whose host matches no site.
    pub default: bool,
    /// Absolute document root.
    pub root: Option<PathBuf>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub limits: Limits,
    /// Extra environment for every process of the site.
    pub env: BTreeMap<String, String>,
    pub static_files: StaticConfig,
    pub php: Option<PhpConfig>,
    pub python: Option<PythonConfig>,
    /// `[app]`: a program of the site's own that serves HTTP (issue 22).
    pub app: Option<AppConfig>,
    /// `[tls]`: the site's certificate (served by SNI) and HTTP→HTTPS redirect.
    pub tls: Option<super::tls::SiteTls>,
    /// `sandbox`: the namespaces the site's processes start in.
    pub sandbox: SandboxConfig,
    /// What the site's own files make impossible, found while the file was
    /// validated (its `[app]` program missing or not executable, its
    /// virtualenv made by another Python than `python.version`). The file is
    /// valid: the site is served as failed with these as the reason, and
    /// nothing else is refused (see `app::reload`). Empty for a site that
    /// can run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<SiteProblem>,
}

/// A problem of a site's own files (state its user controls), under the
/// key whose value it defeats. Unlike a [`ConfigError`](super::ConfigError)
/// it refuses nothing but the site: one tenant's files never stop a reload
/// or the start of polyhost for the others.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SiteProblem {
    pub key: String,
    pub message: String,
}

impl SiteConfig {
    /// [`Self::problems`] as errors of the site's file (what status, the
    /// reload report and `check` show).
    pub fn problem_errors(&self) -> super::ConfigErrors {
        super::ConfigErrors(
            self.problems
                .iter()
                .map(|p| super::ConfigError::in_file(&self.file, p.key.clone(), p.message.clone()))
                .collect(),
        )
    }

    /// Whether the site runs code of its own (any runtime kind but static
    /// files): such a site gets processes, a user no other code-running site
    /// shares, and its logs readable by its group. The one place a new
    /// runtime kind is added to that list.
    pub fn runs_code(&self) -> bool {
        self.php.is_some() || self.python.is_some() || self.app.is_some()
    }

    /// "php", "python", "app", "php+python", "php+app" or "static": for
    /// status and logs. (`[python]` and `[app]` never go together.)
    pub fn runtime_label(&self) -> &'static str {
        match (&self.php, &self.python, &self.app) {
            (Some(_), Some(_), _) => "php+python",
            (Some(_), None, Some(_)) => "php+app",
            (Some(_), None, None) => "php",
            (None, Some(_), _) => "python",
            (None, None, Some(_)) => "app",
            (None, None, None) => "static",
        }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Memory for all of the site's processes together (cgroup), bytes.
    pub memory: Option<u64>,
    /// Processes and threads of the site together (cgroup pids).
    pub processes: Option<u64>,
    /// CPU in cores (cgroup cpu quota).
    pub cpu: Option<f64>,
    /// Largest request body accepted, bytes.
    pub body: u64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StaticConfig {
    /// Files tried, in order, for a request naming a directory.
    pub index: Vec<String>,
    /// Path prefixes served as static files from `root` even when a runtime
    /// is mounted above them (e.g. `/static` under a Python app at `/`).
    pub paths: Vec<String>,
    /// `Cache-Control: max-age` for static responses; none when unset.
    pub cache_max_age: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PhpMode {
    Static,
    Dynamic,
    OnDemand,
}

impl PhpMode {
    pub fn as_fpm(self) -> &'static str {
        match self {
            PhpMode::Static => "static",
            PhpMode::Dynamic => "dynamic",
            PhpMode::OnDemand => "ondemand",
        }
    }
}

/// When a runtime's processes are started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StartPolicy {
    /// When polyhost starts (or the site is added).
    Eager,
    /// On the site's first request.
    OnDemand,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum IniValue {
    Flag(bool),
    Value(String),
}

/// `php.max_requests` when a site sets none: a php-fpm child is replaced
/// after this many requests. Chosen from measurements
/// (`integration/bench/php-memory`): WordPress and Laravel-shaped children
/// stop growing after their first hundred requests (to the KiB, up to
/// 10,000), so recycling buys them nothing, while each recycle costs about
/// a tenth of a second of a child (500: 0.75× a PHP hello's throughput).
/// 10,000 still bounds what a leaking extension can hold, for 1–3 % of a
/// hello at worst. The numbers and the trade-off: docs/php.md
/// ("Recycling children").
const DEFAULT_PHP_MAX_REQUESTS: u64 = 10_000;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PhpConfig {
    /// php-fpm binary; `None` means the newest `php-fpm*` found at start.
    pub fpm: Option<PathBuf>,
    pub mode: PhpMode,
    pub start: StartPolicy,
    pub max_children: u64,
    pub max_requests: u64,
    /// php-fpm's `pm.process_idle_timeout`: an idle child of an `ondemand`
    /// pool exits (the master stays).
    pub idle_timeout: Duration,
    /// The whole pool, master included, stops after this long without
    /// requests (scale to zero); `None`: never.
    pub pool_idle_timeout: Option<Duration>,
    pub request_timeout: Duration,
    pub startup_timeout: Duration,
    /// Script that handles paths matching no file (e.g. `index.php`).
    pub front_controller: Option<String>,
    /// File name endings PHP executes (`[".php"]` by default; always with
    /// `.php`): each a dot and lower-case letters or digits.
    pub extensions: Vec<String>,
    /// `None`: the site's root plus its tmp dir.
    pub open_basedir: Option<Vec<PathBuf>>,
    pub ini: BTreeMap<String, IniValue>,
}

/// Validates one parsed vhost file. `base` is the directory relative paths
/// are resolved against (the main config file's directory).
pub(crate) fn validate_site(
    name: SiteName,
    file: &Path,
    raw: RawSite,
    base: &Path,
    errs: &mut FileErrors<'_>,
) -> Option<SiteConfig> {
    let before = errs.errors.len();
    let hosts = validate_hosts(raw.hosts, errs);
    let default = raw.default.unwrap_or(false);
    if hosts.is_empty() && !default && errs.errors.len() == before {
        errs.add("hosts", "a site needs at least one host name (e.g. hosts = [\"example.test\"]) or default = true");
    }
    let root = raw.root.map(|r| absolute(base, &r));
    let limits = validate_limits(raw.limits.unwrap_or_default(), errs);
    let env = validate_env("env", raw.env.unwrap_or_default(), errs);
    let static_files = validate_static(raw.static_files.unwrap_or_default(), errs);
    let python_at_root = raw.python.as_ref().is_some_and(|p| {
        p.mount
            .as_deref()
            .is_none_or(|m| m.trim_end_matches('/').is_empty())
    });
    let php = raw.php.map(|p| validate_php(p, base, errs));
    let python = raw
        .python
        .map(|p| validate_python(p, &name.to_string(), base, errs));
    let has_app = raw.app.is_some();
    let app = raw
        .app
        .map(|a| validate_app(a, root.as_deref(), &env, errs));
    let tls = raw
        .tls
        .and_then(|t| super::tls::validate_tls(t, base, errs));
    check_acme_hosts(tls.as_ref(), &hosts, errs);
    let sandbox = sandbox::validate_sandbox(raw.sandbox, errs);
    let port_app = app
        .as_ref()
        .is_some_and(|a| a.as_ref().is_some_and(|a| a.listen == AppListen::Port));
    if port_app && sandbox.network == SandboxNetwork::None {
        errs.add(
            "app.listen",
            "\"port\" cannot work with sandbox.network = \"none\" (the program's loopback is its own): use listen = \"socket\"",
        );
    }
    if root.is_none() && has_app {
        errs.add(
            "root",
            "missing: an [app] site needs a root (app.cwd and a relative app.command are inside it), e.g. root = \"/srv/apps/example\"",
        );
    } else if root.is_none() && !python_at_root {
        errs.add(
            "root",
            "missing: static and PHP sites need a document root (e.g. root = \"/srv/www/example\")",
        );
    }
    check_app_beside(&php, &python, has_app, &app, errs);
    if let (Some(_), Some(py)) = (&php, &python) {
        if py.as_ref().is_some_and(|p| p.mount.is_empty()) {
            errs.add("python.mount", "a site with [php] cannot also mount Python at \"/\"; mount it at a prefix such as \"/app\"");
        }
    }
    if errs.errors.len() > before {
        return None;
    }
    Some(SiteConfig {
        name,
        file: file.to_path_buf(),
        hosts,
        default,
        root,
        user: raw.user,
        group: raw.group,
        limits,
        env,
        static_files,
        php: php.flatten(),
        python: python.flatten(),
        app: app.flatten(),
        tls,
        sandbox,
        problems: std::mem::take(&mut errs.problems),
    })
}

/// A site has one app server: `[python]` or `[app]`; `[app]` beside
/// `[php]` only at a prefix (as `[python]`).
fn check_app_beside(
    php: &Option<Option<PhpConfig>>,
    python: &Option<Option<PythonConfig>>,
    has_app: bool,
    app: &Option<Option<AppConfig>>,
    errs: &mut FileErrors<'_>,
) {
    if has_app && python.is_some() {
        errs.add(
            "app",
            "a site has one app server: [python] or [app], not both (make the other a site of its own)",
        );
    }
    if php.is_some()
        && app
            .as_ref()
            .is_some_and(|a| a.as_ref().is_some_and(|a| a.mount.is_empty()))
    {
        errs.add("app.mount", "a site with [php] cannot also mount [app] at \"/\"; mount it at a prefix such as \"/app\"");
    }
}

fn absolute(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn validate_hosts(raw: Option<Vec<String>>, errs: &mut FileErrors<'_>) -> Vec<HostPattern> {
    let mut out = Vec::new();
    for (i, h) in raw.unwrap_or_default().iter().enumerate() {
        if let Some(p) = errs.check(&format!("hosts[{i}]"), HostPattern::parse(h)) {
            if out.contains(&p) {
                errs.add(&format!("hosts[{i}]"), format!("{h:?} is listed twice"));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn opt<T>(
    errs: &mut FileErrors<'_>,
    key: &str,
    v: Option<Scalar>,
    parse: impl Fn(&Scalar) -> Result<T, String>,
) -> Option<T> {
    v.and_then(|v| errs.check(key, parse(&v)))
}

fn validate_limits(raw: RawLimits, errs: &mut FileErrors<'_>) -> Limits {
    Limits {
        memory: opt(errs, "limits.memory", raw.memory, parse_size),
        processes: opt(errs, "limits.processes", raw.processes, |v| {
            parse_count(v, 1, 1 << 22)
        }),
        cpu: opt(errs, "limits.cpu", raw.cpu, parse_cores),
        body: opt(errs, "limits.body", raw.body, parse_size).unwrap_or(DEFAULT_BODY_LIMIT),
    }
}

fn validate_env(
    key: &str,
    raw: BTreeMap<String, String>,
    errs: &mut FileErrors<'_>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in raw {
        let name_ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            errs.add(
                &format!("{key}.{k}"),
                format!("{k:?} is not an environment variable name (letters, digits, _)"),
            );
        } else if v.contains('\0') {
            errs.add(&format!("{key}.{k}"), "value contains a NUL byte");
        } else {
            out.insert(k, v);
        }
    }
    out
}

fn validate_static(raw: RawStatic, errs: &mut FileErrors<'_>) -> StaticConfig {
    let index = raw
        .index
        .unwrap_or_else(|| vec!["index.html".into(), "index.htm".into()]);
    for (i, name) in index.iter().enumerate() {
        if name.is_empty() || name.contains(['/', '\\', '\0']) || name.starts_with('.') {
            errs.add(
                &format!("static.index[{i}]"),
                format!("{name:?} is not a file name (no slashes, not a dotfile)"),
            );
        }
    }
    let paths = raw
        .paths
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, p)| errs.check(&format!("static.paths[{i}]"), parse_mount(p)))
        .collect();
    StaticConfig {
        index,
        paths,
        cache_max_age: opt(
            errs,
            "static.cache_max_age",
            raw.cache_max_age,
            parse_duration,
        ),
    }
}

fn validate_start(
    key: &str,
    raw: Option<String>,
    default: StartPolicy,
    errs: &mut FileErrors<'_>,
) -> StartPolicy {
    match raw.as_deref() {
        None => default,
        Some("eager") => StartPolicy::Eager,
        Some("on_demand") => StartPolicy::OnDemand,
        Some(other) => {
            errs.add(
                key,
                format!("{other:?} is not a start policy (expected \"eager\" or \"on_demand\")"),
            );
            default
        }
    }
}

fn validate_php(raw: RawPhp, base: &Path, errs: &mut FileErrors<'_>) -> Option<PhpConfig> {
    let before = errs.errors.len();
    let mode = match raw.mode.as_deref() {
        None | Some("ondemand") => PhpMode::OnDemand,
        Some("static") => PhpMode::Static,
        Some("dynamic") => PhpMode::Dynamic,
        Some(other) => {
            errs.add("php.mode", format!("{other:?} is not a pool mode (expected \"static\", \"dynamic\" or \"ondemand\")"));
            PhpMode::OnDemand
        }
    };
    let mut ini = BTreeMap::new();
    for (k, v) in raw.ini.unwrap_or_default() {
        let key = format!("php.ini.{k}");
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            errs.add(&key, format!("{k:?} is not a php.ini directive name"));
            continue;
        }
        if let Some(why) = reserved_php_ini(&k) {
            errs.add(&key, why);
            continue;
        }
        let value = match v {
            Scalar::Bool(b) => IniValue::Flag(b),
            Scalar::Int(i) => IniValue::Value(i.to_string()),
            Scalar::Float(x) => IniValue::Value(x.to_string()),
            Scalar::Text(s) if s.contains(['\n', '\r', '\0']) => {
                errs.add(&key, "value must be on one line");
                continue;
            }
            Scalar::Text(s) => IniValue::Value(s),
        };
        ini.insert(k, value);
    }
    let front_controller = raw.front_controller.filter(|fc| {
        let ok = fc.ends_with(".php")
            && !fc.split('/').any(|s| s == ".." || s.is_empty())
            && !fc.starts_with('/');
        if !ok {
            errs.add(
                "php.front_controller",
                format!(
                    "{fc:?} is not a PHP script path relative to the root (e.g. \"index.php\")"
                ),
            );
        }
        ok
    });
    let extensions = validate_extensions(raw.extensions, errs);
    let config = PhpConfig {
        fpm: raw.fpm.map(|f| absolute(base, &f)),
        mode,
        start: validate_start("php.start", raw.start, StartPolicy::Eager, errs),
        max_children: opt(errs, "php.max_children", raw.max_children, |v| {
            parse_count(v, 1, 10_000)
        })
        .unwrap_or(5),
        max_requests: opt(errs, "php.max_requests", raw.max_requests, |v| {
            parse_count(v, 0, u32::MAX as u64)
        })
        .unwrap_or(DEFAULT_PHP_MAX_REQUESTS),
        idle_timeout: opt(errs, "php.idle_timeout", raw.idle_timeout, parse_duration)
            .unwrap_or(Duration::from_secs(10)),
        pool_idle_timeout: opt(
            errs,
            "php.pool_idle_timeout",
            raw.pool_idle_timeout,
            parse_duration,
        )
        .filter(|d| !d.is_zero()),
        request_timeout: opt(
            errs,
            "php.request_timeout",
            raw.request_timeout,
            parse_duration,
        )
        .unwrap_or(Duration::from_secs(60)),
        startup_timeout: opt(
            errs,
            "php.startup_timeout",
            raw.startup_timeout,
            parse_duration,
        )
        .unwrap_or(Duration::from_secs(10)),
        front_controller,
        extensions,
        open_basedir: raw
            .open_basedir
            .map(|v| v.iter().map(|p| absolute(base, p)).collect()),
        ini,
    };
    (errs.errors.len() == before).then_some(config)
}

/// `php.extensions`: what php-fpm may execute (its
/// `security.limit_extensions`). Each entry is a dot and 1 to 15 lower-case
/// letters or digits; `.php` must be one (directory indexes and front
/// controllers are `.php` files).
fn validate_extensions(raw: Option<Vec<String>>, errs: &mut FileErrors<'_>) -> Vec<String> {
    let Some(list) = raw else {
        return vec![".php".to_owned()];
    };
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for ext in list {
        let name = ext.strip_prefix('.').unwrap_or_default();
        let ok = (1..=15).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok {
            errs.add(
                "php.extensions",
                format!("{ext:?} is not a file name extension (a dot and lower-case letters or digits, e.g. \".phtml\")"),
            );
        } else if !out.contains(&ext) {
            out.push(ext);
        }
    }
    if !out.iter().any(|e| e == ".php") {
        errs.add(
            "php.extensions",
            "must include \".php\" (directory indexes and front controllers are .php files)",
        );
    }
    out
}

/// `[php.ini]` directives a site may not set: polyhost sets them itself
/// (the pool's paths and PATH_INFO handling), or they would let php-fpm
/// choose the script from the request's path info (`doc_root`, `user_dir`:
/// with `cgi.fix_pathinfo = 0`, PHP opens `doc_root + PATH_INFO`, or
/// `~user/<user_dir>/...`, whatever its extension, beside the
/// `SCRIPT_FILENAME` polyhost checked).
pub const RESERVED_PHP_INI: &[&str] = &[
    "open_basedir",
    "cgi.fix_pathinfo",
    "cgi.discard_path",
    "upload_tmp_dir",
    "session.save_path",
    "sys_temp_dir",
    "error_log",
    "doc_root",
    "user_dir",
];

/// Why `[php.ini]` may not set `key`, if it may not.
fn reserved_php_ini(key: &str) -> Option<&'static str> {
    match key {
        "doc_root" | "user_dir" => Some(
            "not allowed: PHP would run the file named by a request's path info (any extension) instead of the script polyhost chose",
        ),
        "open_basedir" => Some("set by polyhost: use php.open_basedir"),
        k if RESERVED_PHP_INI.contains(&k) => Some("set by polyhost"),
        _ => None,
    }
}

/// A wildcard name cannot be validated by HTTP-01 or TLS-ALPN-01 (only by
/// DNS-01, which polyhost does not do).
fn check_acme_hosts(
    tls: Option<&super::tls::SiteTls>,
    hosts: &[HostPattern],
    errs: &mut FileErrors<'_>,
) {
    if !tls.is_some_and(|t| t.acme) {
        return;
    }
    for (i, host) in hosts.iter().enumerate() {
        if let HostPattern::Wildcard(suffix) = host {
            errs.add(
                &format!("hosts[{i}]"),
                format!("\"*.{suffix}\" cannot get a certificate with tls.acme = true: a wildcard needs the DNS-01 challenge, which polyhost does not do (give the wildcard's certificate with tls.cert and tls.key, or list the names)"),
            );
        }
    }
}
