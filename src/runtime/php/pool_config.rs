//! The php-fpm configuration of one site: a `[global]` section and one pool
//! `[<site>]`, generated from the validated [`SiteConfig`] and the pool's
//! paths ([`PhpPoolPaths`], `super::paths`).
//!
//! # Files and permissions (why they are what they are)
//!
//! ```text
//! <state>/sites/                      root:root      0711  (traversable, not listable)
//! <state>/sites/<site>/               <user>:<group> 0700  (the site's own state)
//! <state>/sites/<site>/php-[b]<gen>-<id>.pid   the master's pid file, written by the master
//! <state>/sites/<site>/php-fpm.log    the masters' error_log, written by the masters
//! <state>/sites/<site>/tmp/           <user>:<group> 0700  (upload_tmp_dir, sys_temp_dir)
//! <state>/sites/<site>/sessions/      <user>:<group> 0700  (session.save_path)
//! <state>/sockets/<site>/php-[b]<gen>-<id>.sock   root 0600 in root's 0700 directories
//! (no file)                           the generated config: a sealed memfd
//! ```
//!
//! The master runs as the site user. polyhost binds and listens on the
//! pool's socket itself, in a directory no site user can reach
//! (`supervisor::sockets`), and the master inherits it through
//! `FPM_SOCKETS=<path>=<fd>`: php-fpm uses an inherited socket whose
//! address is the pool's `listen` as it is (no `bind`, `chmod` or `listen`
//! of its own, so `listen.owner`/`listen.mode`/`listen.backlog` do not
//! apply), and keeps it across a SIGUSR2 reload. Its unlink at exit fails
//! harmlessly; polyhost removes the file. So no site's code can connect to
//! a pool, not even its own (php-fpm takes `PHP_ADMIN_VALUE` from whoever
//! connects: a script connecting to its own pool could lift its
//! `open_basedir`), whatever groups the sites share.
//!
//! The config is never a file on disk: it is a sealed memfd
//! (`isolation::sealed_file`) the master inherits and reads as
//! `--fpm-config /proc/self/fd/N`, again after a SIGUSR2. The site cannot
//! change it (it could otherwise lift its `php_admin_value` limits with a
//! SIGUSR2 to its own master), and no other user can read it (it holds the
//! site's `[env]`, possibly secrets).
//!
//! Nothing here needs the site's group: another site sharing it reaches
//! none of these files.
//!
//! Invariants:
//! - Every value written into the file is either a number we computed or a
//!   single-quoted INI raw string; anything that could end the string or the
//!   line (`'`, CR, LF, NUL) is refused with an error naming the key, so a vhost
//!   file cannot add config lines. Keys are checked against `[A-Za-z0-9._-]`.
//! - `[php.ini]` entries cannot override the directives this module owns
//!   (`open_basedir`, `cgi.fix_pathinfo`, `cgi.discard_path`, the
//!   tmp/session/error-log paths); `open_basedir` always holds the site's
//!   tmp and session directories.
//! - `post_max_size` and `upload_max_filesize` are the site's `limits.body`
//!   unless `[php.ini]` sets them.
//! - `user`/`group` lines are written only when the master is started as root.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::PhpPoolPaths;
use crate::config::{IniValue, PhpMode, SiteConfig};

/// What the config of one pool depends on besides the site.
#[derive(Clone, Debug)]
pub struct PoolOptions<'a> {
    pub paths: &'a PhpPoolPaths,
    /// The master is started as root: write `user`/`group` so php-fpm drops
    /// to the site user itself. `false` (polyhost's way): the master already
    /// runs as the site user and the lines are omitted.
    pub master_as_root: bool,
    /// The master inherits its socket (`FPM_SOCKETS`, polyhost's way): no
    /// `listen.*` lines, which only apply to a socket php-fpm binds itself.
    /// `false`: php-fpm binds `paths.socket`, `0660` for the site's user and
    /// group.
    pub inherited_socket: bool,
    /// The system's PHP library directories
    /// ([`super::system_include_dirs`]), added to a default `open_basedir`.
    pub system_include: &'a [PathBuf],
    /// `php_admin_value[error_log]`: PHP's error log file. `None` leaves it
    /// unset, so PHP sends its messages as FastCGI stderr, which the router
    /// writes to the site's error log.
    pub php_error_log: Option<PathBuf>,
    /// Paths that are the site's own temporary directory in its sandbox
    /// (`/tmp`, `/var/tmp`): added to `open_basedir` like the site's `tmp`.
    pub private_tmp: &'a [PathBuf],
}

/// A value that cannot go into the config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("site {site}: {key}: {message}")]
pub struct PoolConfigError {
    pub site: String,
    pub key: String,
    pub message: String,
}

/// Directives this module sets (and two that would let PHP pick its
/// script from the path info); `[php.ini]` may not set them.
const RESERVED_INI: &[&str] = crate::config::RESERVED_PHP_INI;

/// Directives derived from the site's `limits.body` unless `[php.ini]`
/// sets them: how large a request body and an uploaded file PHP accepts.
const BODY_INI: [&str; 2] = ["post_max_size", "upload_max_filesize"];

/// Generates the php-fpm config text for one site.
pub fn pool_config(site: &SiteConfig, opts: &PoolOptions<'_>) -> Result<String, PoolConfigError> {
    let err = |key: &str, message: String| PoolConfigError {
        site: site.name.to_string(),
        key: key.to_owned(),
        message,
    };
    let php = site
        .php
        .as_ref()
        .ok_or_else(|| err("php", "the site has no [php] section".into()))?;
    let root = site
        .root
        .as_ref()
        .ok_or_else(|| err("root", "PHP needs a document root".into()))?;
    let q = |key: &str, v: &str| quote(v).map_err(|m| err(key, m));
    let qp = |key: &str, p: &Path| match p.to_str() {
        Some(s) => quote(s).map_err(|m| err(key, m)),
        None => Err(err(key, format!("{} is not UTF-8", p.display()))),
    };
    let paths = opts.paths;
    let mut c = String::new();
    let mut line = |s: String| {
        c.push_str(&s);
        c.push('\n');
    };
    line(format!(
        "; Generated by polyhost for site {} from {}. Do not edit.",
        site.name,
        site.file.display()
    ));
    line("[global]".into());
    line(format!("pid = {}", qp("pid", &paths.pid)?));
    line(format!("error_log = {}", qp("error_log", &paths.fpm_log)?));
    line("daemonize = no".into());
    line(String::new());
    line(format!("[{}]", site.name));
    line(format!("listen = {}", qp("listen", &paths.socket)?));
    if !opts.inherited_socket {
        if let Some(user) = &site.user {
            line(format!("listen.owner = {}", q("user", user)?));
        }
        if let Some(group) = &site.group {
            line(format!("listen.group = {}", q("group", group)?));
        }
        line("listen.mode = 0660".into());
    }
    if opts.master_as_root {
        let user = site.user.as_ref().ok_or_else(|| {
            err(
                "user",
                "php-fpm started as root needs the site's user".into(),
            )
        })?;
        line(format!("user = {}", q("user", user)?));
        if let Some(group) = &site.group {
            line(format!("group = {}", q("group", group)?));
        }
    }
    line(format!("chdir = {}", qp("root", root)?));
    let max = php.max_children.max(1);
    line(format!("pm = {}", php.mode.as_fpm()));
    line(format!("pm.max_children = {}", max + spare_children(site)));
    if php.mode == PhpMode::Dynamic {
        let (start, min_spare, max_spare) = spare_servers(max);
        line(format!("pm.start_servers = {start}"));
        line(format!("pm.min_spare_servers = {min_spare}"));
        line(format!("pm.max_spare_servers = {max_spare}"));
    }
    line(format!("pm.max_requests = {}", php.max_requests));
    line(format!(
        "pm.process_idle_timeout = {}s",
        secs(php.idle_timeout)
    ));
    // A second after the router's own deadline: the client always gets the
    // router's 504 (php-fpm's kill would race it and make it a 502), and
    // php-fpm only ends the stuck worker.
    line(format!(
        "request_terminate_timeout = {}s",
        secs(php.request_timeout) + 1
    ));
    line("clear_env = yes".into());
    if !site.env.contains_key("PATH") {
        line("env[PATH] = '/usr/local/bin:/usr/bin:/bin'".into());
    }
    for (k, v) in &site.env {
        let key = format!("env.{k}");
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(err(&key, "not an environment variable name".into()));
        }
        line(format!("env[{k}] = {}", q(&key, v)?));
    }
    // Not caught: with `yes`, every child writes an end-of-request marker
    // into its stderr pipe after each request, waking the master once per
    // request (measured: +0.9 context switches and ~10 µs of php-fpm CPU per
    // PHP hello). PHP's own errors reach the site's error log as FastCGI
    // stderr records, or `php_error_log`; what a script writes to its raw
    // stderr is dropped, as in php-fpm's default pool.
    line("catch_workers_output = no".into());
    // Validated by config (a dot and lower-case letters or digits): nothing to quote.
    line(format!(
        "security.limit_extensions = {}",
        php.extensions.join(" ")
    ));
    let basedir = open_basedir(root, php.open_basedir.as_deref(), opts);
    let mut joined = String::new();
    for (i, d) in basedir.iter().enumerate() {
        let s = d
            .to_str()
            .ok_or_else(|| err("php.open_basedir", format!("{} is not UTF-8", d.display())))?;
        if s.contains(':') {
            return Err(err(
                "php.open_basedir",
                format!("{s:?} contains ':', the open_basedir separator"),
            ));
        }
        if i > 0 {
            joined.push(':');
        }
        joined.push_str(s);
    }
    line(format!(
        "php_admin_value[open_basedir] = {}",
        q("php.open_basedir", &joined)?
    ));
    line(format!(
        "php_admin_value[upload_tmp_dir] = {}",
        qp("tmp", &paths.tmp)?
    ));
    line(format!(
        "php_admin_value[sys_temp_dir] = {}",
        qp("tmp", &paths.tmp)?
    ));
    line(format!(
        "php_admin_value[session.save_path] = {}",
        qp("sessions", &paths.sessions)?
    ));
    // php-fpm guesses no script from the path (the router found it), and
    // takes no PATH_TRANSLATED as the script either: with fix_pathinfo = 0
    // it would otherwise run root + path info (`/x.php/other.php` running
    // other.php), bypassing the router's lookup beneath the root.
    line("php_admin_value[cgi.fix_pathinfo] = 0".into());
    line("php_admin_value[cgi.discard_path] = 1".into());
    if let Some(log) = &opts.php_error_log {
        line(format!(
            "php_admin_value[error_log] = {}",
            qp("php_error_log", log)?
        ));
    }
    // One upload limit per site: PHP's own defaults (8M, 2M) would empty
    // `$_FILES` for anything the router let through. `php_value`, so the
    // site's `.user.ini` may still lower them.
    let body = site.limits.body.clamp(1, i64::MAX as u64);
    for key in BODY_INI {
        if !php.ini.contains_key(key) {
            line(format!("php_value[{key}] = {body}"));
        }
    }
    for (k, v) in &php.ini {
        let key = format!("php.ini.{k}");
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(err(&key, "not a php.ini directive name".into()));
        }
        if RESERVED_INI.contains(&k.as_str()) {
            return Err(err(
                &key,
                "set by polyhost (use php.open_basedir for open_basedir)".into(),
            ));
        }
        match v {
            IniValue::Flag(b) => line(format!(
                "php_admin_flag[{k}] = {}",
                if *b { "on" } else { "off" }
            )),
            IniValue::Value(s) => line(format!("php_admin_value[{k}] = {}", q(&key, s)?)),
        }
    }
    Ok(c)
}

/// PHP's `open_basedir` for a site: the site's `php.open_basedir`, or by
/// default its root and the system's PHP library directories (read-only
/// system code, nothing of another site); and, always, the site's own tmp
/// and session directories, whose paths its code cannot know (PHP's
/// uploads, `tempnam(sys_get_temp_dir())` and sessions need them).
fn open_basedir<'a>(
    root: &'a Path,
    listed: Option<&'a [PathBuf]>,
    opts: &'a PoolOptions<'_>,
) -> Vec<&'a Path> {
    let mut dirs: Vec<&Path> = match listed {
        Some(dirs) => dirs.iter().map(PathBuf::as_path).collect(),
        None => std::iter::once(root)
            .chain(opts.system_include.iter().map(PathBuf::as_path))
            .collect(),
    };
    for own in [&opts.paths.tmp, &opts.paths.sessions]
        .into_iter()
        .chain(opts.private_tmp)
    {
        if !dirs.contains(&own.as_path()) {
            dirs.push(own);
        }
    }
    dirs
}

/// Children php-fpm runs beyond `max_children`: for a pool with kept-alive
/// connections (`static`, `ondemand`) whose children are recycled
/// (`max_requests` > 0), one per four children (at least one). The router
/// keeps up to `max_children` connections alive, each pinning a child;
/// when a child's last request goes out the router opens its successor
/// connection, which a spare accepts at once instead of waiting for the
/// master to fork a replacement (which becomes a spare in turn). Children
/// of one generation retire close together (docs/performance.md, session
/// 14), so one spare is often taken when the next one retires.
/// An `ondemand` master forks a spare only when a successor arrives: an
/// idle site still holds no child. The router still admits at most
/// `max_children` requests at a time.
fn spare_children(site: &SiteConfig) -> u64 {
    match &site.php {
        Some(php) if php.mode != PhpMode::Dynamic && php.max_requests > 0 => {
            php.max_children.max(1).div_ceil(4)
        }
        _ => 0,
    }
}

/// php-fpm's dynamic mode: (start, min spare, max spare) for `max` children,
/// satisfying 1 <= min <= start <= max spare <= max.
fn spare_servers(max: u64) -> (u64, u64, u64) {
    let min_spare = (max / 4).max(1);
    let max_spare = (max / 2).max(min_spare);
    (
        min_spare + (max_spare - min_spare) / 2,
        min_spare,
        max_spare,
    )
}

fn secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// An INI raw string: single quotes, no escapes, no `${}` expansion. What
/// cannot be written that way is refused.
fn quote(v: &str) -> Result<String, String> {
    if let Some(c) = v.chars().find(|c| matches!(c, '\'' | '\n' | '\r' | '\0')) {
        return Err(format!(
            "{v:?}: php-fpm's config cannot hold the character {c:?} in a value (it is written in single quotes, which have no escapes)"
        ));
    }
    let mut s = String::with_capacity(v.len() + 2);
    let _ = write!(s, "'{v}'");
    Ok(s)
}

#[cfg(test)]
mod tests;
