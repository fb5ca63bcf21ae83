//! A site's runtimes, one generation: the process groups (php-fpm pool,
//! Python workers, `[app]` instances) started for one version of its runtime settings, and the
//! upstreams that lease from them. Building one starts nothing yet (groups
//! start on the first request or on [`Runtimes::warm_up`]); dropping the
//! last handle does not stop it: [`Runtimes::stop`] drains and stops it.
//!
//! Invariant: a generation is never changed once built; a site whose
//! runtime settings change ([`same_runtime`] false) gets a new one.

use std::sync::Arc;

use crate::config::{ConfigErrors, SiteConfig};
use crate::docroot::Reader;
use crate::isolation::SiteIdentity;
use crate::metrics::SiteStats;
use crate::runtime::app::AppLauncher;
use crate::runtime::php::PhpLauncher;
use crate::runtime::python::PythonLauncher;
use crate::supervisor::{GroupHandle, SiteContext, Supervisor};
use crate::upstream::app::AppUpstream;
use crate::upstream::python::PythonUpstream;
use crate::upstream::UpstreamError;

use super::one_error;

/// The processes of one generation of a site, and the upstreams that use them.
pub struct Runtimes {
    pub generation: u64,
    pub groups: Vec<GroupHandle>,
    pub python: Option<Arc<PythonUpstream>>,
    /// The `[app]` program's upstream.
    pub app: Option<Arc<AppUpstream>>,
    /// The php-fpm pool's group (the PHP upstream is built with the route,
    /// because it also needs the site's static upstream).
    pub php: Option<GroupHandle>,
    pub context: Option<SiteContext>,
    /// Whose read permission the site's static files need: the site's user
    /// (its processes' uid and group), or anyone for a static site without
    /// a user (world-readable files only). See `docroot::access`.
    pub reader: Reader,
    /// The Python the site's worker links (a Python site, when known).
    pub python_version: Option<crate::config::PythonVersion>,
}

impl Runtimes {
    /// A generation with no process: what a static site has, and what a
    /// stopped site keeps (its context and reader, for logs and files).
    pub fn without_processes(
        generation: u64,
        context: Option<SiteContext>,
        reader: Reader,
    ) -> Runtimes {
        Runtimes {
            generation,
            groups: Vec::new(),
            python: None,
            app: None,
            php: None,
            context,
            reader,
            python_version: None,
        }
    }

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
        if let Some(app) = &self.app {
            app.settle().await;
        }
        futures_util::future::join_all(self.groups.iter().map(|g| g.stop())).await;
    }

    /// Starts every group and waits (each up to its startup timeout) until
    /// it serves; used so a reload moves traffic only to a ready generation.
    /// The error says, group by group, why one did not become ready.
    pub async fn warm_up(&self) -> Result<(), NotReady> {
        let results = futures_util::future::join_all(self.groups.iter().map(|g| async move {
            g.wait_ready().await.map_err(|error| GroupNotReady {
                error: UpstreamError::from(error),
                last_error: g.snapshot().last_error.clone(),
            })
        }))
        .await;
        let groups: Vec<GroupNotReady> = results.into_iter().filter_map(Result::err).collect();
        if groups.is_empty() {
            Ok(())
        } else {
            Err(NotReady { groups })
        }
    }
}

/// Why a new generation did not become ready: one entry per group that did not.
#[derive(Debug)]
pub struct NotReady {
    pub groups: Vec<GroupNotReady>,
}

/// One group that did not become ready.
#[derive(Debug)]
pub struct GroupNotReady {
    /// Why it did not become ready (the supervisor's `LeaseError`, in the
    /// words a request for the site would have been answered with).
    pub error: UpstreamError,
    /// The group's last recorded error (a crash, a failed start), if any.
    pub last_error: Option<String>,
}

impl std::fmt::Display for GroupNotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let error = self.error.to_string();
        match &self.last_error {
            Some(last) if !error.contains(last.as_str()) => {
                write!(f, "{error} (last error: {last})")
            }
            _ => f.write_str(&error),
        }
    }
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, group) in self.groups.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{group}")?;
        }
        Ok(())
    }
}

impl std::error::Error for NotReady {}
/// True when `a` and `b` can share processes: every setting a runtime
/// process sees is the same.
pub fn same_runtime(a: &SiteConfig, b: &SiteConfig) -> bool {
    a.php == b.php
        && a.python == b.python
        && a.app == b.app
        && a.user == b.user
        && a.group == b.group
        && a.env == b.env
        && a.root == b.root
        && a.limits.memory == b.limits.memory
        && a.limits.processes == b.limits.processes
        && a.limits.cpu == b.limits.cpu
        && a.sandbox == b.sandbox
}

/// Starts the process groups of a site's runtimes (none for a static site).
pub fn build_runtimes(
    site: &Arc<SiteConfig>,
    supervisor: &Supervisor,
    generation: u64,
    stats: &Arc<SiteStats>,
) -> Result<Runtimes, ConfigErrors> {
    let mut rt = Runtimes::without_processes(generation, None, Reader::Anyone);
    if !site.runs_code() {
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
        crate::runtime::php::check_pool_config(site, supervisor.state_dir())
            .map_err(|e| one_error(site, &e.key, e.message))?;
        let private_tmp = ctx
            .sandbox
            .as_ref()
            .map(|s| s.shared_tmp.clone())
            .unwrap_or_default();
        let launcher = if supervisor.is_attached() {
            PhpLauncher::attached(site, supervisor.state_dir())
        } else {
            PhpLauncher::new(site, supervisor.state_dir(), ctx.identity.clone())
                .map(|l| l.with_private_tmp(private_tmp))
                .ok_or_else(|| {
                    one_error(
                        site,
                        "php.fpm",
                        "no php-fpm binary found in /usr/sbin (install php8.2-fpm, or name one with php.fpm)".into(),
                    )
                })?
        };
        let group = supervisor.spawn_group(site, &ctx, Arc::new(launcher), generation);
        rt.php = Some(group.clone());
        rt.groups.push(group);
    }
    if let Some(py) = &site.python {
        warn_thread_overallocation(site, py);
        let home = ctx.identity.as_ref().map(|i| i.home.clone());
        // The router process (attached) starts no worker: the supervisor
        // chose it (and the router's user may not read the binaries).
        let worker = if supervisor.is_attached() {
            None
        } else {
            let chosen = crate::runtime::python_workers::choose(&site.name.to_string(), py)
                .map_err(|e| one_error(site, e.key(), e.to_string()))?;
            Some(chosen)
        };
        rt.python_version = worker.as_ref().and_then(|w| w.version);
        let launcher = Arc::new(PythonLauncher::new(
            site,
            py,
            worker.map(|w| w.path).unwrap_or_default(),
            home.as_deref(),
            &ctx.tmp,
        ));
        let group = supervisor.spawn_group(site, &ctx, launcher, generation);
        rt.python = Some(Arc::new(PythonUpstream::new(
            Arc::new(group.clone()),
            py,
            stats.clone(),
        )));
        rt.groups.push(group);
    }
    if let Some(app) = &site.app {
        let launcher = if supervisor.is_attached() {
            AppLauncher::attached(site, app)
        } else {
            let home = ctx.identity.as_ref().map(|i| i.home.clone());
            AppLauncher::new(site, app, home.as_deref(), &ctx.tmp, &ctx.error_log)
        };
        let group = supervisor.spawn_group(site, &ctx, Arc::new(launcher), generation);
        rt.app = Some(Arc::new(AppUpstream::new(
            Arc::new(group.clone()),
            app,
            stats.clone(),
        )));
        rt.groups.push(group);
    }
    rt.context = Some(ctx);
    Ok(rt)
}

/// The credentials of a site's processes: its uid and its one group
/// (`isolation::spawn` sets no supplementary groups).
fn reader_of(identity: Option<&SiteIdentity>) -> Reader {
    identity.map_or(Reader::Anyone, |id| Reader::user(id.uid, &[id.gid]))
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
