//! Sites: turns a validated [`SiteConfig`] into what the router serves — its
//! mounts (upstreams) and its log files — and checks what a config file
//! alone cannot (the document root exists, ...).
//!
//! Invariant: building a site has no effect on other sites; a failure names
//! the site's file and key.

use std::path::Path;
use std::sync::Arc;

use crate::config::{ConfigError, ConfigErrors, SiteConfig};
use crate::router::{MountTable, SiteLogs, SiteRoute};
use crate::upstream::Upstream;

/// Builds the routes of one site.
pub fn build_site(site: &Arc<SiteConfig>, log_dir: &Path) -> Result<SiteRoute, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let mounts = build_mounts(site, &mut errors);
    let logs = SiteLogs::open(log_dir, site.name.as_str()).map_err(|e| {
        errors.push(ConfigError::in_file(
            &site.file,
            "",
            format!("cannot open the site's logs in {}: {e}", log_dir.display()),
        ));
    });
    match (mounts, logs) {
        (Some(mounts), Ok(logs)) if errors.is_empty() => Ok(SiteRoute {
            config: site.clone(),
            mounts,
            logs: Arc::new(logs),
        }),
        _ => Err(errors),
    }
}

fn build_mounts(site: &Arc<SiteConfig>, errors: &mut ConfigErrors) -> Option<MountTable> {
    let mut mounts: Vec<(String, Arc<dyn Upstream>)> = Vec::new();
    if let Some(root) = &site.root {
        match static_upstream(root, site) {
            Ok(up) => {
                for p in &site.static_files.paths {
                    mounts.push((p.clone(), up.clone()));
                }
                if site.python.as_ref().is_none_or(|py| !py.mount.is_empty()) {
                    mounts.push((String::new(), up));
                }
            }
            Err(e) => {
                errors.push(ConfigError::in_file(
                    &site.file,
                    "root",
                    format!("{}: {e}", root.display()),
                ));
                return None;
            }
        }
    }
    Some(MountTable::new(mounts))
}

fn static_upstream(root: &Path, site: &SiteConfig) -> std::io::Result<Arc<dyn Upstream>> {
    Ok(Arc::new(crate::upstream::static_files::StaticFiles::new(
        root,
        &site.static_files,
    )?))
}
