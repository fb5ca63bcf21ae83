//! `polyhost check`: everything `serve` run as root would refuse or fail,
//! found without starting anything (like `nginx -t`), whoever runs it: the
//! configuration, then per-site checks that need the file system and the
//! user database (each site's configured user and group, and that no two
//! sites running code share one).
//!
//! Two kinds of finding, as a reload treats them: errors that refuse the
//! whole configuration (a bad file, two sites sharing a user), and sites
//! that would fail alone (their root, their program, their runtime's
//! binary: `app::reload`), which refuse nothing else.

use std::path::Path;

use crate::config::{self, ConfigError, ConfigErrors, ServerConfig, SiteConfig};
use crate::supervisor::{
    check_socket_paths, configured_identity, configured_site_identities, IdentityDefaults,
    SiteSetupError,
};

/// What `check` found wrong.
#[derive(Debug, Default)]
pub struct Findings {
    /// What refuses the configuration: `serve` would not start, a reload
    /// would change nothing.
    pub errors: ConfigErrors,
    /// Sites that would fail alone (503, or their previous configuration
    /// on a reload); the others would serve.
    pub failing_sites: ConfigErrors,
}

impl std::fmt::Display for Findings {
    /// Every finding, one per line: the errors first.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<String> = self
            .errors
            .iter()
            .chain(self.failing_sites.iter())
            .map(ToString::to_string)
            .collect();
        f.write_str(&all.join("\n"))
    }
}

/// Returns a one-line summary when nothing is wrong, or every finding.
pub fn check(main: &Path) -> Result<String, Findings> {
    let config = config::load(main).map_err(|errors| Findings {
        errors,
        ..Default::default()
    })?;
    let mut errors = ConfigErrors::default();
    let mut failing = ConfigErrors::default();
    for site in config.sites.values() {
        failing.0.extend(site.problem_errors().0);
        if let Some(root) = &site.root {
            if let Err(e) = crate::docroot::open_root_dir(root) {
                failing.push(ConfigError::in_file(&site.file, "root", e.to_string()));
            }
        }
    }
    // Who each site runs as, and that no two sites running code share a uid
    // or group: as `serve` run as root would see it, whoever runs `check`
    // (only `serve` as another user runs every site as that user).
    if let Err(e) = configured_site_identities(&config.sites, &IdentityDefaults::of(&config.server))
    {
        errors.0.extend(e.0);
    }
    errors
        .0
        .extend(check_socket_paths(&config.server.state_dir, &config.sites).0);
    errors.0.extend(
        crate::runtime::php::check_pool_configs(config.sites.values(), &config.server.state_dir).0,
    );
    for site in config.sites.values() {
        check_runtimes(site, &config.server, &mut failing);
        check_view_paths(site, &mut failing);
    }
    check_router_user(&config, &mut errors);
    let sandbox_note = check_sandbox(&config.sites, &mut failing);
    if !errors.is_empty() || !failing.is_empty() {
        return Err(Findings {
            errors,
            failing_sites: failing,
        });
    }
    Ok(format!(
        "polyhost check: {} is valid ({} site(s)){sandbox_note}",
        main.display(),
        config.sites.len()
    ))
}

/// `router_user` must exist and must not be root: `serve` run as root
/// starts the router process as it (no site may run as it either: see
/// `supervisor::separation`).
fn check_router_user(config: &config::Config, errors: &mut ConfigErrors) {
    let server = &config.server;
    if let Err(e) = crate::isolation::router_process::router_identity(&server.router_user) {
        errors.push(ConfigError::in_file(&server.main_file, "router_user", e));
    }
}

/// Where the kernel (or polyhost's privilege) refuses sandboxes: a site
/// that asked for `network = "none"` or a view (`paths`) is an error (it
/// would not start); the others would run without one, which the answer
/// says.
fn check_sandbox(
    sites: &std::collections::BTreeMap<config::SiteName, std::sync::Arc<SiteConfig>>,
    errors: &mut ConfigErrors,
) -> String {
    let wanted: Vec<_> = sites
        .values()
        .filter(|s| s.runs_code() && s.sandbox.enabled)
        .collect();
    // Not root: what the kernel allows `serve` (run as root) is not known here.
    if wanted.is_empty() || !crate::isolation::running_as_root() {
        return String::new();
    }
    if let Some(why) = crate::isolation::sandbox::view_unavailable() {
        for site in wanted.iter().filter(|s| s.sandbox.view.is_some()) {
            errors.push(ConfigError::in_file(
                &site.file,
                "sandbox.paths",
                format!("the read-only view is unavailable here: {why}"),
            ));
        }
    }
    let Some(why) = crate::isolation::sandbox::unavailable() else {
        return String::new();
    };
    for site in wanted
        .iter()
        .filter(|s| s.sandbox.network == config::SandboxNetwork::None)
    {
        errors.push(ConfigError::in_file(
            &site.file,
            "sandbox.network",
            format!("\"none\" needs the site sandbox, which is unavailable here: {why}"),
        ));
    }
    format!(
        "\nnote: site sandboxes are unavailable here ({why}): {} site(s) would run without one",
        wanted.len()
    )
}

/// Each of `sandbox.paths` must exist (a missing one fails every start of
/// the site's processes).
fn check_view_paths(site: &SiteConfig, errors: &mut ConfigErrors) {
    for (i, path) in site.sandbox.view.iter().flatten().enumerate() {
        if let Err(e) = std::fs::metadata(path) {
            errors.push(ConfigError::in_file(
                &site.file,
                format!("sandbox.paths[{i}]"),
                format!("{}: {e} (the site's processes would not start: create it or remove it from the list)", path.display()),
            ));
        }
    }
}

/// A static site's user (whose permissions its files are served with), if
/// it has one, must exist; a site with a runtime needs its runtime's binary
/// (its user is checked with every other site's by `site_identities`).
fn check_runtimes(site: &SiteConfig, server: &ServerConfig, errors: &mut ConfigErrors) {
    if !site.runs_code() {
        match configured_identity(
            site,
            server.default_user.as_deref(),
            server.default_group.as_deref(),
            server.admin.group.as_deref(),
        ) {
            Ok(_) | Err(SiteSetupError::NoUser) => {}
            Err(e) => errors.push(ConfigError::in_file(&site.file, "user", e.to_string())),
        }
        return;
    }
    if let Some(php) = &site.php {
        match php.fpm.clone().or_else(crate::runtime::php::find_fpm_binary) {
            Some(fpm) if is_executable(&fpm) => {}
            Some(fpm) => errors.push(ConfigError::in_file(
                &site.file,
                "php.fpm",
                format!("site {} wants php-fpm at {}, which is not an executable file", site.name, fpm.display()),
            )),
            None => errors.push(ConfigError::in_file(
                &site.file,
                "php.fpm",
                format!("site {} wants php-fpm, but no php-fpm* binary is in /usr/sbin (install php8.2-fpm, or set php.fpm)", site.name),
            )),
        }
    }
    if let Some(app) = &site.app {
        // The program was resolved (and found executable) by validation.
        if !app.cwd.is_dir() {
            errors.push(ConfigError::in_file(
                &site.file,
                "app.cwd",
                format!("{} is not a directory", app.cwd.display()),
            ));
        }
    }
    if let Some(py) = &site.python {
        check_python_worker(site, py, errors);
    }
}

/// The worker for the site's Python version exists and is executable
/// (`runtime::python_workers`: which versions exist, how to build one).
fn check_python_worker(site: &SiteConfig, py: &config::PythonConfig, errors: &mut ConfigErrors) {
    match crate::runtime::python_workers::choose(&site.name.to_string(), py) {
        Err(e) => errors.push(ConfigError::in_file(&site.file, e.key(), e.to_string())),
        Ok(worker) if !is_executable(&worker.path) => errors.push(ConfigError::in_file(
            &site.file,
            "python.worker",
            format!("{} is not an executable file (build it with `cargo build --release -p polyhost-python`)", worker.path.display()),
        )),
        Ok(_) => {}
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
