//! A site's route: what the router serves for it ([`SiteRoute`]: mounts
//! over its runtimes' upstreams, logs, counters), built over a generation of
//! runtimes, or the route of a site stopped by the operator (503 for
//! everything). Building a route starts no process; it opens the document
//! root (a failure names the site's `root` key).

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::config::{ConfigErrors, SiteConfig};
use crate::router::{MountTable, SiteLogs, SiteRoute, SiteStats};
use crate::upstream::php::{ErrorSink, PhpUpstream};
use crate::upstream::{RequestBody, RequestContext, ResponseBody, Upstream, UpstreamError};

use super::{one_error, Runtimes};

/// Builds the routes of a site over its runtimes.
pub fn build_route(
    site: &Arc<SiteConfig>,
    runtimes: &Runtimes,
    logs: Arc<SiteLogs>,
    stats: Arc<SiteStats>,
) -> Result<SiteRoute, ConfigErrors> {
    let mut mounts: Vec<(String, Arc<dyn Upstream>)> = Vec::new();
    if let (Some(py), Some(up)) = (&site.python, &runtimes.python) {
        mounts.push((py.mount.clone(), up.clone()));
    }
    if let (Some(app), Some(up)) = (&site.app, &runtimes.app) {
        mounts.push((app.mount.clone(), up.clone()));
    }
    if let Some(root) = &site.root {
        let extensions = site.php.as_ref().map_or(&[][..], |php| &php.extensions[..]);
        let up: Arc<dyn Upstream> = Arc::new(
            crate::upstream::static_files::StaticFiles::new(
                root,
                &site.static_files,
                runtimes.reader.clone(),
            )
            .map_err(|e| one_error(site, "root", format!("{}: {e}", root.display())))?
            .with_php_extensions(extensions),
        );
        let root_upstream = match &runtimes.php {
            Some(group) => {
                let sink_logs = logs.clone();
                let sink: ErrorSink =
                    Arc::new(move |line: &str| sink_logs.runtime_line("php", line));
                let counters = stats.php_pool().clone();
                let php = PhpUpstream::new(site, Arc::new(group.clone()), up, sink, counters)
                    .map_err(|e| one_error(site, "php", e))?;
                Arc::new(php) as Arc<dyn Upstream>
            }
            None => up,
        };
        // On a PHP site every path of the root goes through the PHP
        // upstream, which serves static files itself and alone decides what
        // a `.php` file is: a static mount must never hand out PHP source.
        for p in &site.static_files.paths {
            mounts.push((p.clone(), root_upstream.clone()));
        }
        let app_at_root = site.python.as_ref().is_some_and(|py| py.mount.is_empty())
            || site.app.as_ref().is_some_and(|app| app.mount.is_empty());
        if !app_at_root {
            mounts.push((String::new(), root_upstream));
        }
    }
    Ok(SiteRoute {
        config: site.clone(),
        mounts: MountTable::new(mounts),
        logs,
        stats,
        uid: runtimes.uid(),
    })
}

/// A route that answers 503 for everything: a site stopped by the operator.
/// `uid`: the user the site's code ran as (it may still run something).
pub fn disabled_route(
    site: &Arc<SiteConfig>,
    logs: Arc<SiteLogs>,
    stats: Arc<SiteStats>,
    uid: Option<u32>,
) -> SiteRoute {
    let why = format!("site {} is stopped by the operator", site.name);
    unavailable_route(site, logs, stats, uid, why)
}

/// A route that answers 503 for everything, saying `why` in the site's log.
pub fn unavailable_route(
    site: &Arc<SiteConfig>,
    logs: Arc<SiteLogs>,
    stats: Arc<SiteStats>,
    uid: Option<u32>,
    why: String,
) -> SiteRoute {
    SiteRoute {
        config: site.clone(),
        mounts: MountTable::new(vec![(String::new(), Arc::new(Disabled(why)))]),
        logs,
        stats,
        uid,
    }
}

struct Disabled(String);

impl Upstream for Disabled {
    fn kind(&self) -> &'static str {
        "disabled"
    }
    fn handle<'a>(
        &'a self,
        _req: http::Request<RequestBody>,
        _ctx: &'a RequestContext,
    ) -> BoxFuture<'a, Result<http::Response<ResponseBody>, UpstreamError>> {
        Box::pin(async move { Err(UpstreamError::Unavailable(self.0.clone())) })
    }
}
