//! Sites: turns a validated [`SiteConfig`] into what the router serves — its
//! mounts (upstreams) and its log files — and starts the process groups of
//! its runtimes through the supervisor.
//!
//! Invariant: building a site has no effect on other sites; a failure names
//! the site's file and key.

use std::path::Path;
use std::sync::Arc;

use crate::config::{ConfigError, ConfigErrors, SiteConfig};
use crate::router::{MountTable, SiteLogs, SiteRoute};
use crate::runtime::python::PythonLauncher;
use crate::supervisor::{GroupHandle, SiteContext, Supervisor};
use crate::upstream::python::PythonUpstream;
use crate::upstream::Upstream;

/// A site being served: its routes, and the process groups to stop with it.
pub struct Site {
    pub route: Arc<SiteRoute>,
    pub groups: Vec<GroupHandle>,
    pub context: Option<SiteContext>,
}

impl Site {
    /// Drains and stops every process of the site.
    pub async fn stop(&self, supervisor: &Supervisor) {
        for g in &self.groups {
            g.stop().await;
        }
        if let Some(ctx) = &self.context {
            supervisor.remove_site(ctx);
        }
    }
}

/// Builds one site: its logs, its runtimes' process groups, its mounts.
pub fn build_site(
    site: &Arc<SiteConfig>,
    log_dir: &Path,
    supervisor: &Supervisor,
    generation: u64,
) -> Result<Site, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let err =
        |key: &str, msg: String| ConfigErrors(vec![ConfigError::in_file(&site.file, key, msg)]);
    let logs = SiteLogs::open(log_dir, site.name.as_str()).map_err(|e| {
        err(
            "",
            format!("cannot open the site's logs in {}: {e}", log_dir.display()),
        )
    })?;
    let mut mounts: Vec<(String, Arc<dyn Upstream>)> = Vec::new();
    let mut groups = Vec::new();
    let mut context = None;
    if site.php.is_some() || site.python.is_some() {
        let ctx = supervisor
            .site_context(site)
            .map_err(|e| err("user", e.to_string()))?;
        if let Some(py) = &site.python {
            let home = ctx.identity.as_ref().map(|i| i.home.clone());
            let launcher = Arc::new(PythonLauncher::new(site, py, home.as_deref()));
            let group = supervisor.spawn_group(site, &ctx, launcher, generation);
            mounts.push((
                py.mount.clone(),
                Arc::new(PythonUpstream::new(group.clone(), py)),
            ));
            groups.push(group);
        }
        context = Some(ctx);
    }
    if let Some(root) = &site.root {
        match crate::upstream::static_files::StaticFiles::new(root, &site.static_files) {
            Ok(up) => {
                let up: Arc<dyn Upstream> = Arc::new(up);
                for p in &site.static_files.paths {
                    mounts.push((p.clone(), up.clone()));
                }
                if site.python.as_ref().is_none_or(|py| !py.mount.is_empty()) {
                    mounts.push((String::new(), up));
                }
            }
            Err(e) => errors.push(ConfigError::in_file(
                &site.file,
                "root",
                format!("{}: {e}", root.display()),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let route = Arc::new(SiteRoute {
        config: site.clone(),
        mounts: MountTable::new(mounts),
        logs: Arc::new(logs),
    });
    Ok(Site {
        route,
        groups,
        context,
    })
}
