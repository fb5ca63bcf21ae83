//! A site's `[app]` table, validated: any program that serves HTTP/1.1 on a
//! socket polyhost hands it (socket activation, `listen = "socket"`) or on a
//! loopback port it binds itself (`listen = "port"`), and its instances'
//! settings ([`AppConfig`]). Issue 22.
//!
//! CONTRACT (session 12): the types below are shared by the launcher
//! (`runtime/app.rs`), the upstream (`upstream/app/`) and the tests. Their
//! validation (`validate_app`) is the launcher helper's.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::{opt, validate_env, validate_start, StartPolicy};
use crate::config::error::FileErrors;
use crate::config::raw::RawApp;
use crate::config::types::{parse_count, parse_duration, parse_mount, parse_size, Scalar};

/// `[app]`, validated.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AppConfig {
    /// The program, resolved: an absolute path (a bare name was looked up in
    /// the site's `PATH`; a relative path with a `/` was joined to `cwd`).
    pub program: PathBuf,
    /// The arguments after the program, as written (no shell).
    pub args: Vec<String>,
    /// The instances' working directory: absolute, inside the site's root.
    pub cwd: PathBuf,
    /// Instances, each its own process (group).
    pub processes: u64,
    pub listen: AppListen,
    /// Mount prefix without trailing slash ("" for `/`).
    pub mount: String,
    /// An HTTP path that must answer 2xx/3xx before an instance gets
    /// traffic; `None`: any HTTP answer to a probe request will do.
    pub ready: Option<String>,
    pub start: StartPolicy,
    pub startup_timeout: Duration,
    /// Requests in flight per instance (above: wait up to `queue_timeout`, then 503).
    pub max_concurrency: u64,
    pub queue_timeout: Duration,
    pub request_timeout: Duration,
    pub max_requests: Option<u64>,
    pub memory_per_process: Option<u64>,
    pub idle_timeout: Option<Duration>,
    /// `[app.env]`: on top of the site's `env`.
    pub env: BTreeMap<String, String>,
}

/// How an instance receives its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AppListen {
    /// polyhost binds and listens on a Unix socket and hands it over as
    /// fd 3 (`LISTEN_FDS=1`, systemd's convention).
    Socket,
    /// The program binds `127.0.0.1:$PORT` itself (a port polyhost picked).
    Port,
}

/// The `PATH` a bare program name is looked up in when neither
/// `[app.env]` nor the site's `[env]` sets one (also the instances' `PATH`
/// then).
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// `[app] processes` at most: each instance is a process group of its own.
const MAX_PROCESSES: u64 = 64;

/// Validates `[app]`. `root` is the site's document root (required: `cwd`
/// and relative programs are resolved against it; its absence is reported
/// by the caller) and `site_env` the site's `[env]` (its `PATH` is where a
/// bare program name is looked up unless `[app.env]` sets one).
pub(crate) fn validate_app(
    raw: RawApp,
    root: Option<&Path>,
    site_env: &BTreeMap<String, String>,
    errs: &mut FileErrors<'_>,
) -> Option<AppConfig> {
    let before = errs.errors.len();
    let env = validate_env("app.env", raw.env.unwrap_or_default(), errs);
    let cwd = root.and_then(|root| validate_cwd(root, raw.cwd.as_deref().unwrap_or("."), errs));
    let path_var = env
        .get("PATH")
        .or_else(|| site_env.get("PATH"))
        .map_or(DEFAULT_PATH, String::as_str);
    let command = validate_command(raw.command, cwd.as_deref(), path_var, errs);
    let listen = match raw.listen.as_deref() {
        None | Some("socket") => AppListen::Socket,
        Some("port") => AppListen::Port,
        Some(other) => {
            errs.add(
                "app.listen",
                format!("{other:?} is not a listen mode (expected \"socket\" or \"port\")"),
            );
            AppListen::Socket
        }
    };
    let mount = raw
        .mount
        .map(|m| errs.check("app.mount", parse_mount(&m)).unwrap_or_default())
        .unwrap_or_default();
    let ready = raw
        .ready
        .and_then(|r| errs.check("app.ready", parse_ready(&r)));
    let duration = |errs: &mut FileErrors<'_>, key: &str, v: Option<Scalar>, default: u64| {
        opt(errs, key, v, parse_duration).unwrap_or(Duration::from_secs(default))
    };
    let config = AppConfig {
        program: command.as_ref().map(|c| c.0.clone()).unwrap_or_default(),
        args: command.map(|c| c.1).unwrap_or_default(),
        cwd: cwd.unwrap_or_default(),
        processes: opt(errs, "app.processes", raw.processes, |v| {
            parse_count(v, 1, MAX_PROCESSES)
        })
        .unwrap_or(1),
        listen,
        mount,
        ready,
        start: validate_start("app.start", raw.start, StartPolicy::OnDemand, errs),
        startup_timeout: duration(errs, "app.startup_timeout", raw.startup_timeout, 30),
        max_concurrency: opt(errs, "app.max_concurrency", raw.max_concurrency, |v| {
            parse_count(v, 1, 100_000)
        })
        .unwrap_or(100),
        queue_timeout: duration(errs, "app.queue_timeout", raw.queue_timeout, 30),
        request_timeout: duration(errs, "app.request_timeout", raw.request_timeout, 60),
        max_requests: opt(errs, "app.max_requests", raw.max_requests, |v| {
            parse_count(v, 0, u64::MAX >> 1)
        })
        .filter(|n| *n > 0),
        memory_per_process: opt(
            errs,
            "app.memory_per_process",
            none_if_empty(raw.memory_per_process),
            parse_size,
        ),
        idle_timeout: opt(
            errs,
            "app.idle_timeout",
            none_if_empty(raw.idle_timeout),
            parse_duration,
        )
        .filter(|d| !d.is_zero()),
        env,
    };
    if config.startup_timeout.is_zero() {
        errs.add("app.startup_timeout", "must be more than 0");
    }
    (errs.errors.len() == before).then_some(config)
}

/// `""` means "not set" for the optional size and duration keys.
fn none_if_empty(v: Option<Scalar>) -> Option<Scalar> {
    v.filter(|v| !matches!(v, Scalar::Text(s) if s.trim().is_empty()))
}

/// `app.cwd`: relative to the root and inside it (checked by its words: no
/// `..`, not absolute); the instances enter it as the site user.
fn validate_cwd(root: &Path, cwd: &str, errs: &mut FileErrors<'_>) -> Option<PathBuf> {
    let rel = Path::new(cwd);
    let inside = !rel.is_absolute()
        && !cwd.contains('\0')
        && rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !inside {
        errs.add(
            "app.cwd",
            format!("{cwd:?} is not a directory inside the site's root (a relative path without \"..\", e.g. \".\" or \"app\")"),
        );
        return None;
    }
    let cwd: PathBuf = root.join(rel).components().collect();
    Some(cwd)
}

/// `app.command`: a non-empty argv; its program resolved to an absolute
/// path (see [`resolve_program`]). Returns the program and the arguments.
fn validate_command(
    raw: Option<Vec<String>>,
    cwd: Option<&Path>,
    path_var: &str,
    errs: &mut FileErrors<'_>,
) -> Option<(PathBuf, Vec<String>)> {
    let Some(mut argv) = raw.filter(|a| !a.is_empty()) else {
        errs.add(
            "app.command",
            "missing: the program and its arguments, e.g. command = [\"node\", \"server.js\"] (no shell)",
        );
        return None;
    };
    if argv.iter().any(|a| a.contains('\0')) {
        errs.add("app.command", "an argument contains a NUL byte");
        return None;
    }
    if argv[0].is_empty() {
        errs.add("app.command", "the program (its first element) is empty");
        return None;
    }
    let cwd = cwd?;
    let program = argv.remove(0);
    match resolve_program(&program, cwd, path_var) {
        Ok(path) => Some((path, argv)),
        // The program is a file of the site's (or of the host's PATH): its
        // absence is the site's problem, not the file's (`SiteProblem`).
        Err(why) => {
            errs.site_problem("app.command", why);
            Some((PathBuf::new(), argv))
        }
    }
}

/// Where `program` is: an absolute path as is; a path with a `/` joined to
/// `cwd`; a bare name searched in `path_var` (`PATH`, `:`-separated, only
/// absolute entries). It must be a regular file with an execute bit.
fn resolve_program(program: &str, cwd: &Path, path_var: &str) -> Result<PathBuf, String> {
    if program.contains('/') {
        let path = if Path::new(program).is_absolute() {
            PathBuf::from(program)
        } else {
            cwd.join(program).components().collect()
        };
        return executable(&path).map(|()| path);
    }
    let dirs = path_var.split(':').filter(|d| Path::new(d).is_absolute());
    for dir in dirs {
        let path = Path::new(dir).join(program);
        if executable(&path).is_ok() {
            return Ok(path);
        }
    }
    Err(format!(
        "{program:?} is not an executable file in PATH ({path_var}); name it by its absolute path, or set PATH in [app.env]"
    ))
}

/// `Ok` when `path` is a regular file someone may execute.
fn executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(m) if m.is_file() => Err(format!("{} is not executable", path.display())),
        Ok(_) => Err(format!("{} is not a file", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// `app.ready`: an origin-form path (and query) the probe requests.
fn parse_ready(r: &str) -> Result<String, String> {
    let ok = r.starts_with('/') && r.len() <= 1024 && r.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(r.to_owned())
    } else {
        Err(format!(
            "{r:?} is not a request path (expected one starting with \"/\", without spaces, e.g. \"/healthz\")"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::config::error::ConfigErrors;
    use crate::config::raw::RawSite;
    use crate::config::types::SiteName;

    /// A root with `bin/server` (executable), `bin/notes.txt` (not) and an
    /// `app/` directory.
    fn root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::create_dir_all(dir.path().join("app")).unwrap();
        let server = dir.path().join("bin/server");
        std::fs::write(&server, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.path().join("bin/notes.txt"), "").unwrap();
        dir
    }

    /// Validates a site file's text with `root` as its root; the config or
    /// every error as "key: message" lines.
    fn site(root: &Path, toml_text: &str) -> Result<super::super::SiteConfig, String> {
        let text = format!(
            "hosts = [\"a.test\"]\nroot = {:?}\n{toml_text}",
            root.display().to_string()
        );
        let raw: RawSite = toml::from_str(&text).unwrap();
        let mut errors = ConfigErrors::default();
        let file = Path::new("/etc/polyhost/vhosts/a.toml");
        let mut errs = FileErrors::new(file, &mut errors);
        let name = SiteName::parse("a").unwrap();
        let site =
            super::super::validate_site(name, file, raw, Path::new("/etc/polyhost"), &mut errs);
        match site {
            Some(site) if errors.is_empty() && site.problems.is_empty() => Ok(site),
            Some(site) if errors.is_empty() => Err(site
                .problems
                .iter()
                .map(|p| format!("{}: {}", p.key, p.message))
                .collect::<Vec<_>>()
                .join("\n")),
            _ => Err(errors
                .iter()
                .map(|e| format!("{}: {}", e.key, e.message))
                .collect::<Vec<_>>()
                .join("\n")),
        }
    }

    fn app(root: &Path, toml_text: &str) -> Result<AppConfig, String> {
        site(root, toml_text).map(|s| s.app.expect("an [app] site"))
    }

    #[test]
    fn defaults() {
        let root = root();
        let app = app(
            root.path(),
            "[app]\ncommand = [\"bin/server\", \"--flag\"]\n",
        )
        .unwrap();
        assert_eq!(app.program, root.path().join("bin/server"));
        assert_eq!(app.args, ["--flag"]);
        assert_eq!(app.cwd, root.path());
        assert_eq!(app.processes, 1);
        assert_eq!(app.listen, AppListen::Socket);
        assert_eq!(app.mount, "");
        assert_eq!(app.ready, None);
        assert_eq!(app.start, StartPolicy::OnDemand);
        assert_eq!(app.startup_timeout, Duration::from_secs(30));
        assert_eq!(app.max_concurrency, 100);
        assert_eq!(app.queue_timeout, Duration::from_secs(30));
        assert_eq!(app.request_timeout, Duration::from_secs(60));
        assert_eq!(
            (app.max_requests, app.memory_per_process, app.idle_timeout),
            (None, None, None)
        );
        assert!(app.env.is_empty());
    }

    #[test]
    fn every_key_typed() {
        let root = root();
        let typed = app(
            root.path(),
            r#"[app]
command = ["../bin/server"]
cwd = "app"
processes = 3
listen = "port"
mount = "/api/"
ready = "/healthz?deep=1"
start = "eager"
startup_timeout = "5s"
max_concurrency = 8
queue_timeout = "2s"
request_timeout = "9s"
max_requests = 0
memory_per_process = "256M"
idle_timeout = "10m"
[app.env]
NODE_ENV = "production"
"#,
        );
        let app = typed.unwrap();
        assert_eq!(app.program, root.path().join("app/../bin/server"));
        assert_eq!(app.cwd, root.path().join("app"));
        assert_eq!((app.processes, app.listen), (3, AppListen::Port));
        assert_eq!(app.mount, "/api");
        assert_eq!(app.ready.as_deref(), Some("/healthz?deep=1"));
        assert_eq!(app.start, StartPolicy::Eager);
        assert_eq!(app.startup_timeout, Duration::from_secs(5));
        assert_eq!(app.max_concurrency, 8);
        assert_eq!(app.queue_timeout, Duration::from_secs(2));
        assert_eq!(app.request_timeout, Duration::from_secs(9));
        assert_eq!(app.max_requests, None, "0 is never");
        assert_eq!(app.memory_per_process, Some(256 << 20));
        assert_eq!(app.idle_timeout, Some(Duration::from_secs(600)));
        assert_eq!(app.env["NODE_ENV"], "production");
        let empty =
            "[app]\ncommand = [\"/bin/sh\"]\nmemory_per_process = \"\"\nidle_timeout = \"\"\n";
        let unset = self::app(root.path(), empty).unwrap();
        assert_eq!((unset.memory_per_process, unset.idle_timeout), (None, None));
    }

    #[test]
    fn programs_resolve_by_absolute_path_relative_to_cwd_or_in_path() {
        let root = root();
        let r = root.path();
        let bin = r.join("bin");
        let check = |program: &str, path: &str| resolve_program(program, &r.join("app"), path);
        assert_eq!(check("/bin/sh", DEFAULT_PATH), Ok(PathBuf::from("/bin/sh")));
        assert_eq!(
            check("../bin/server", DEFAULT_PATH),
            Ok(r.join("app/../bin/server"))
        );
        let path = format!("relative/dir:{}:/usr/bin", bin.display());
        assert_eq!(
            check("server", &path),
            Ok(bin.join("server")),
            "first executable in PATH"
        );
        assert_eq!(check("sh", DEFAULT_PATH), Ok(PathBuf::from("/usr/bin/sh")));
        let err = check("notes.txt", &bin.display().to_string()).unwrap_err();
        assert!(
            err.contains("\"notes.txt\" is not an executable file in PATH"),
            "{err}"
        );
        let err = check("../bin/notes.txt", DEFAULT_PATH).unwrap_err();
        assert_eq!(
            err,
            format!(
                "{} is not executable",
                r.join("app/../bin/notes.txt").display()
            )
        );
        let err = check("./missing", DEFAULT_PATH).unwrap_err();
        assert!(
            err.starts_with(&format!("{}: ", r.join("app/missing").display())),
            "{err}"
        );
    }

    #[test]
    fn a_bare_name_is_looked_up_in_app_env_path_then_the_sites_path() {
        let root = root();
        let bin = root.path().join("bin").display().to_string();
        let site_path = format!("[env]\nPATH = {bin:?}\n[app]\ncommand = [\"server\"]\n");
        assert_eq!(
            app(root.path(), &site_path).unwrap().program,
            root.path().join("bin/server")
        );
        let app_path = "[app]\ncommand = [\"server\"]\n[app.env]\nPATH = \"/usr/bin\"\n";
        let err = app(root.path(), app_path).unwrap_err();
        assert!(
            err.starts_with("app.command: \"server\" is not an executable file in PATH (/usr/bin)"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_named_by_key() {
        let root = root();
        let err = app(
            root.path(),
            r#"[app]
command = []
cwd = "../elsewhere"
processes = 65
listen = "tcp"
mount = "app"
ready = "healthz"
start = "later"
max_concurrency = 0
memory_per_process = "lots"
idle_timeout = "soon"
[app.env]
"1X" = "y"
"#,
        )
        .unwrap_err();
        expect_test::expect![[r#"
            app.env.1X: "1X" is not an environment variable name (letters, digits, _)
            app.cwd: "../elsewhere" is not a directory inside the site's root (a relative path without "..", e.g. "." or "app")
            app.command: missing: the program and its arguments, e.g. command = ["node", "server.js"] (no shell)
            app.listen: "tcp" is not a listen mode (expected "socket" or "port")
            app.mount: "app" is not a URL path prefix (expected e.g. "/" or "/app")
            app.ready: "healthz" is not a request path (expected one starting with "/", without spaces, e.g. "/healthz")
            app.processes: 65 is not a whole number between 1 and 64
            app.start: "later" is not a start policy (expected "eager" or "on_demand")
            app.max_concurrency: 0 is not a whole number between 1 and 100000
            app.memory_per_process: "lots" is not a size (e.g. "512M")
            app.idle_timeout: "soon" is not a duration (e.g. "30s", "5m", "250ms"; at most a year)"#]]
        .assert_eq(&err);
        let err = app(
            root.path(),
            "[app]\ncwd = \"/srv\"\ncommand = [\"/bin/sh\"]\n",
        )
        .unwrap_err();
        assert!(
            err.starts_with("app.cwd: \"/srv\" is not a directory inside"),
            "{err}"
        );
    }

    #[test]
    fn one_app_server_per_site_and_beside_php_only_at_a_prefix() {
        let root = root();
        let err = site(
            root.path(),
            "[python]\napp = \"m:app\"\n[app]\ncommand = [\"/bin/sh\"]\n",
        )
        .unwrap_err();
        assert_eq!(err, "app: a site has one app server: [python] or [app], not both (make the other a site of its own)");
        let err = site(root.path(), "[php]\n[app]\ncommand = [\"/bin/sh\"]\n").unwrap_err();
        assert!(
            err.starts_with("app.mount: a site with [php] cannot also mount [app] at \"/\""),
            "{err}"
        );
        let both = site(
            root.path(),
            "[php]\n[app]\ncommand = [\"/bin/sh\"]\nmount = \"/api\"\n",
        )
        .unwrap();
        assert_eq!((both.runtime_label(), both.runs_code()), ("php+app", true));
        let alone = site(root.path(), "[app]\ncommand = [\"/bin/sh\"]\n").unwrap();
        assert_eq!((alone.runtime_label(), alone.runs_code()), ("app", true));
        let err = site(
            root.path(),
            "[sandbox]\nnetwork = \"none\"\n[app]\ncommand = [\"/bin/sh\"]\nlisten = \"port\"\n",
        )
        .unwrap_err();
        assert!(
            err.starts_with("app.listen: \"port\" cannot work with sandbox.network = \"none\""),
            "{err}"
        );
    }

    #[test]
    fn an_app_site_needs_a_root() {
        let raw: RawSite =
            toml::from_str("hosts = [\"a.test\"]\n[app]\ncommand = [\"/bin/sh\"]\n").unwrap();
        let mut errors = ConfigErrors::default();
        let file = Path::new("/v/a.toml");
        let mut errs = FileErrors::new(file, &mut errors);
        let site = super::super::validate_site(
            SiteName::parse("a").unwrap(),
            file,
            raw,
            Path::new("/"),
            &mut errs,
        );
        assert!(site.is_none());
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["root"], "{errors}");
    }
}
