//! Sites: turns a validated [`SiteConfig`] into what the router serves — its
//! mounts (upstreams) and logs ([`SiteRoute`]) — and the process groups of
//! its runtimes ([`Runtimes`]).
//!
//! Routes and runtimes are built separately so that a reload can rebuild a
//! site's routes (hosts, static settings) while keeping its processes, and
//! give a site whose runtime settings changed a new generation of processes.
//!
//! Invariant: building a site has no effect on other sites; a failure names
//! the site's file and key.

use std::path::Path;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::config::{ConfigError, ConfigErrors, SiteConfig};
use crate::docroot::Reader;
use crate::isolation::SiteIdentity;
use crate::router::{MountTable, SiteLogs, SiteRoute, SiteStats};
use crate::runtime::php::PhpLauncher;
use crate::runtime::python::PythonLauncher;
use crate::supervisor::{GroupHandle, SiteContext, Supervisor};
use crate::upstream::php::{ErrorSink, PhpUpstream};
use crate::upstream::python::PythonUpstream;
use crate::upstream::{RequestBody, RequestContext, ResponseBody, Upstream, UpstreamError};

/// The processes of one generation of a site, and the upstreams that use them.
pub struct Runtimes {
    pub generation: u64,
    pub groups: Vec<GroupHandle>,
    pub python: Option<Arc<PythonUpstream>>,
    /// The php-fpm pool's group (the PHP upstream is built with the route,
    /// because it also needs the site's static upstream).
    pub php: Option<GroupHandle>,
    pub context: Option<SiteContext>,
    /// Whose read permission the site's static files need: the site's user
    /// (its processes' uid and group), or anyone for a static site without
    /// a user (world-readable files only). See `docroot::access`.
    pub reader: Reader,
}

impl Runtimes {
    /// The user the site's processes run as (none for a static site).
    pub fn uid(&self) -> Option<u32> {
        let identity = self.context.as_ref()?.identity.as_ref()?;
        Some(identity.uid)
    }

    /// Drains and stops every process of this generation. Requests already
    /// routed here but not yet on a worker (queued) are served first.
    pub async fn stop(&self) {
        if let Some(py) = &self.python {
            py.settle().await;
        }
        futures_util::future::join_all(self.groups.iter().map(|g| g.stop())).await;
    }

    /// Starts every group and waits (each up to its startup timeout) until
    /// it serves; used so a reload moves traffic only to a ready generation.
    /// The error says why a group did not become ready.
    pub async fn warm_up(&self) -> Result<(), String> {
        let results = futures_util::future::join_all(self.groups.iter().map(|g| async move {
            g.wait_ready().await.map_err(|e| {
                let e = UpstreamError::from(e).to_string();
                match g.snapshot().last_error.clone() {
                    Some(last) if !e.contains(&last) => format!("{e} (last error: {last})"),
                    _ => e,
                }
            })
        }))
        .await;
        let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// True when `a` and `b` can share processes: every setting a runtime
/// process sees is the same.
pub fn same_runtime(a: &SiteConfig, b: &SiteConfig) -> bool {
    a.php == b.php
        && a.python == b.python
        && a.user == b.user
        && a.group == b.group
        && a.env == b.env
        && a.root == b.root
        && a.limits.memory == b.limits.memory
        && a.limits.processes == b.limits.processes
        && a.limits.cpu == b.limits.cpu
}

/// Starts the process groups of a site's runtimes (none for a static site).
pub fn build_runtimes(
    site: &Arc<SiteConfig>,
    supervisor: &Supervisor,
    generation: u64,
    stats: &Arc<SiteStats>,
) -> Result<Runtimes, ConfigErrors> {
    let mut rt = Runtimes {
        generation,
        groups: Vec::new(),
        python: None,
        php: None,
        context: None,
        reader: Reader::Anyone,
    };
    if site.php.is_none() && site.python.is_none() {
        let identity = supervisor
            .static_identity(site)
            .map_err(|e| one_error(site, "user", e.to_string()))?;
        rt.reader = reader_of(identity.as_ref());
        return Ok(rt);
    }
    let ctx = supervisor
        .site_context(site)
        .map_err(|e| one_error(site, "user", e.to_string()))?;
    rt.reader = reader_of(ctx.identity.as_ref());
    if site.php.is_some() {
        let launcher = PhpLauncher::new(site, supervisor.state_dir(), ctx.identity.clone())
            .ok_or_else(|| {
                one_error(
                    site,
                    "php.fpm",
                    "no php-fpm binary found in /usr/sbin (install php8.2-fpm, or name one with php.fpm)".into(),
                )
            })?;
        let group = supervisor.spawn_group(site, &ctx, Arc::new(launcher), generation);
        rt.php = Some(group.clone());
        rt.groups.push(group);
    }
    if let Some(py) = &site.python {
        warn_thread_overallocation(site, py);
        let home = ctx.identity.as_ref().map(|i| i.home.clone());
        let launcher = Arc::new(PythonLauncher::new(site, py, home.as_deref(), &ctx.tmp));
        let group = supervisor.spawn_group(site, &ctx, launcher, generation);
        rt.python = Some(Arc::new(PythonUpstream::new(
            Arc::new(group.clone()),
            py,
            stats.clone(),
        )));
        rt.groups.push(group);
    }
    rt.context = Some(ctx);
    Ok(rt)
}

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
                let php = PhpUpstream::new(site, Arc::new(group.clone()), up, sink)
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
        if site.python.as_ref().is_none_or(|py| !py.mount.is_empty()) {
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

/// The credentials of a site's processes: its uid and its one group
/// (`isolation::spawn` sets no supplementary groups).
fn reader_of(identity: Option<&SiteIdentity>) -> Reader {
    identity.map_or(Reader::Anyone, |id| Reader::user(id.uid, &[id.gid]))
}

/// A route that answers 503 for everything: a site stopped by the operator.
/// `uid`: the user the site's code ran as (it may still run something).
pub fn disabled_route(
    site: &Arc<SiteConfig>,
    logs: Arc<SiteLogs>,
    stats: Arc<SiteStats>,
    uid: Option<u32>,
) -> SiteRoute {
    SiteRoute {
        config: site.clone(),
        mounts: MountTable::new(vec![(String::new(), Arc::new(Disabled))]),
        logs,
        stats,
        uid,
    }
}

/// Opens a site's log files (see [`SiteLogs::open`]: never an error).
pub fn open_logs(site: &SiteConfig, log_dir: &Path) -> Arc<SiteLogs> {
    Arc::new(SiteLogs::open(log_dir, site.name.as_str()))
}

/// Gives read access to a site's logs to the group its processes run with
/// (a site that runs code: no other such site has that group), or to root
/// only (a static site). Called once a site's processes are committed (at
/// start, after a reload's swap, on `start`): its group may have changed.
/// A failure leaves the logs root's (the site cannot read its own) and is
/// logged.
pub fn give_logs_to_site(site: &SiteConfig, supervisor: &Supervisor, logs: &SiteLogs) {
    let group = if crate::supervisor::separation::runs_code(site) {
        supervisor.identity(site).ok().flatten().map(|id| id.gid)
    } else {
        None
    };
    if let Err(e) = logs.give_to_group(group) {
        tracing::warn!(site = %site.name, file = %logs.access.path().display(), error = %e, "cannot give the site's logs to its group");
    }
}

fn one_error(site: &SiteConfig, key: &str, msg: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError::in_file(&site.file, key, msg)])
}

struct Disabled;

impl Upstream for Disabled {
    fn kind(&self) -> &'static str {
        "disabled"
    }
    fn handle<'a>(
        &'a self,
        _req: http::Request<RequestBody>,
        ctx: &'a RequestContext,
    ) -> BoxFuture<'a, Result<http::Response<ResponseBody>, UpstreamError>> {
        Box::pin(async move {
            Err(UpstreamError::Unavailable(format!(
                "site {} is stopped by the operator",
                ctx.site.name
            )))
        })
    }
}

/// More threads than the site's CPU limit can keep busy is the classic
/// mod_wsgi over-allocation: memory and queueing without throughput. Python
/// threads overlap only while they wait on I/O, so allow a generous ratio.
fn warn_thread_overallocation(site: &SiteConfig, py: &crate::config::PythonConfig) {
    const THREADS_PER_CORE: f64 = 16.0;
    if let Some(cores) = site.limits.cpu {
        let threads = (py.processes * py.threads) as f64;
        if threads > cores.max(1.0) * THREADS_PER_CORE {
            tracing::warn!(
                site = %site.name,
                threads = py.threads,
                processes = py.processes,
                cpu = cores,
                "python.threads × processes is far above what limits.cpu can use; fewer threads cost less memory and queue more honestly"
            );
        }
    }
}
