//! The supervisor: starts, watches and stops every process that runs a
//! site's code, one [`group`] per site and runtime, confined by
//! [`crate::isolation`] (site user, site cgroup with the site's limits).
//!
//! Invariants: polyhost never runs site code as root; every process the
//! supervisor starts lives in its site's cgroup (where cgroups exist) and is
//! stopped when its group stops; a failure of one site never touches another;
//! every runtime socket is bound by the supervisor in a directory only root
//! can reach ([`sockets`]) and handed to its process, so no site's code can
//! connect to one, not even its own; nothing in a site's state directory
//! ([`site_dirs`]) is reachable through its group.
//!
//! In the router process of a privilege-separated polyhost
//! ([`Supervisor::for_router`]) nothing is started: every group is
//! [`attached`] to the one the supervisor process runs.

pub mod attached;
pub mod endpoint;
pub mod group;
pub mod handle;
pub mod instance;
pub mod launcher;
pub mod lease;
mod mailbox;
pub mod policy;
pub mod port;
pub mod separation;
pub mod site_dirs;
pub mod snapshot;
pub mod sockets;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::Once;

pub use attached::Attachments;
pub use endpoint::Endpoint;
pub use group::{spawn_group, GroupSpec};
pub use handle::GroupHandle;
pub use launcher::{Command, Launcher, Lifecycle, Listen, Probe, ProcessSocket};
pub use lease::{LeaseError, RuntimeHandle, RuntimeLease};
pub use mailbox::STOP_GRACE;
pub use policy::{RestartPolicy, RestartTracker};
pub use separation::{configured_site_identities, site_identities, IdentityDefaults};
pub use snapshot::{GroupKey, GroupState, Snapshot};
pub use sockets::check_paths as check_socket_paths;

use crate::config::{ServerConfig, SiteConfig, SiteScheduling};
use crate::isolation::{self, CgroupRoot, Rlimits, SiteCgroup, SiteIdentity};

/// Why a site's processes cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SiteSetupError {
    #[error("{0}")]
    Identity(#[from] isolation::IdentityError),
    #[error("a site needs a `user` (or a server-wide default_user) when polyhost runs as root")]
    NoUser,
    #[error("group `{0}` grants more than a site may have (or is polyhost's admin group): give the site a group of its own")]
    PrivilegedGroup(String),
    #[error("user `{0}` (uid {1}) belongs to the host's own daemons (a user of the base system, uid below 100, or nobody): site code running as it could signal them and reach what they own; give the site a user of its own")]
    SystemUser(String, u32),
    #[error("cannot prepare {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("limits: {0}")]
    Cgroup(#[from] isolation::CgroupError),
    #[error("sandbox.network = \"none\" needs the sandbox, which is unavailable here: {0}")]
    SandboxUnavailable(&'static str),
    #[error("sandbox.paths: the read-only view is unavailable here: {0}")]
    ViewUnavailable(&'static str),
}

/// Server-wide supervision state: the cgroup root and the state directory.
pub struct Supervisor {
    cgroups: CgroupRoot,
    /// How many times each site's context was set up: a removal of a site's
    /// cgroup only happens if the site was not set up again meanwhile.
    epochs: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    state_dir: PathBuf,
    log_dir: PathBuf,
    /// `default_user`, `default_group`, `[admin] group`, as at start.
    defaults: IdentityDefaults,
    /// `site_scheduling = "batch"`: site processes run under `SCHED_BATCH`.
    batch_scheduling: bool,
    /// Router mode ([`Supervisor::for_router`]): every group is attached
    /// to the supervisor process's, which runs it.
    attached: Option<std::sync::Arc<Attachments>>,
    /// Router mode: each site's uid and group as the supervisor resolved
    /// them ([`Supervisor::know_identities`]), by site name.
    known: std::sync::Mutex<std::collections::HashMap<String, Option<(u32, u32)>>>,
}

/// What every process of one site shares.
#[derive(Clone)]
pub struct SiteContext {
    pub identity: Option<SiteIdentity>,
    pub cgroup: Option<SiteCgroup>,
    /// `<state_dir>/sites/<site>`: the site's own state, owned by the site user, 0700.
    pub dir: PathBuf,
    /// `<dir>/tmp`: the site's private temporary directory (0700, the site
    /// user's): `TMPDIR` of its processes.
    pub tmp: PathBuf,
    /// `<state_dir>/sockets/<site>`: its processes' sockets, root's alone.
    pub socket_dir: PathBuf,
    pub error_log: PathBuf,
    /// Which set-up of the site this is (see [`Supervisor::cgroup_remover`]).
    pub epoch: u64,
    /// The sandbox its processes start in (`None`: off, or unavailable).
    pub sandbox: Option<isolation::Sandbox>,
}

impl Supervisor {
    /// Detects cgroups, becomes the subreaper of site processes and removes
    /// what a previous polyhost (killed with SIGKILL) left behind.
    pub fn new(server: &ServerConfig) -> Supervisor {
        if let Err(e) = isolation::set_child_subreaper() {
            tracing::warn!(error = %e, "cannot become a child subreaper; orphaned site processes go to init");
        }
        let state_dir =
            std::fs::canonicalize(&server.state_dir).unwrap_or_else(|_| server.state_dir.clone());
        let cgroups = if server.cgroups {
            CgroupRoot::detect(&cgroup_parent_name(&state_dir))
        } else {
            CgroupRoot::disabled("turned off by cgroups = \"off\"")
        };
        tracing::info!(cgroups = %cgroups.describe(), "resource limits");
        // A successor leaves its predecessor's cgroups and sockets alone:
        // that one still serves from them (`instance`).
        let me = instance::current();
        let stale = if instance::took_over() {
            cgroups.cleanup_stale_where(|name| me.owns_cgroup(name))
        } else {
            cgroups.cleanup_stale(&[])
        };
        match stale {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(?removed, "removed cgroups left by a previous run")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot clean up stale cgroups"),
        }
        site_dirs::prepare_state_dir(&server.state_dir);
        if !instance::took_over() {
            sockets::remove_stale(&server.state_dir);
        }
        if let Some(why) = isolation::sandbox::unavailable() {
            tracing::warn!(reason = why, "site sandboxes are unavailable: sites run with the host's view of /tmp, /proc and the network");
        }
        spawn_orphan_reaper();
        Supervisor {
            cgroups,
            epochs: Default::default(),
            state_dir: server.state_dir.clone(),
            log_dir: server.log_dir.clone(),
            defaults: IdentityDefaults::of(server),
            batch_scheduling: server.site_scheduling == SiteScheduling::Batch,
            attached: None,
            known: Default::default(),
        }
    }

    /// The supervisor of the router process (`privsep`): it starts nothing
    /// and touches no file. Sites are built over it as in the supervisor
    /// process, with the same identities (resolved as the root supervisor
    /// resolves them, whoever runs this) and paths, but no cgroup, no
    /// sandbox, no directory made, no subreaper nor reaper; each group is
    /// the one of `groups` named by its site, runtime and generation.
    pub fn for_router(server: &ServerConfig, groups: std::sync::Arc<Attachments>) -> Supervisor {
        Supervisor {
            cgroups: CgroupRoot::disabled("the router process runs no site process"),
            epochs: Default::default(),
            state_dir: server.state_dir.clone(),
            log_dir: server.log_dir.clone(),
            defaults: IdentityDefaults::of(server),
            batch_scheduling: server.site_scheduling == SiteScheduling::Batch,
            attached: Some(groups),
            known: Default::default(),
        }
    }

    /// Router mode: who each site runs as (uid and group; `None`: a static
    /// site without a user), as the supervisor resolved it. A site named
    /// here is not looked up in the user database; one that is not is.
    pub fn know_identities(&self, sites: impl IntoIterator<Item = (String, Option<(u32, u32)>)>) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.clear();
        known.extend(sites);
    }

    /// True in the router process ([`for_router`](Self::for_router)):
    /// groups are attached, no process is started here.
    pub fn is_attached(&self) -> bool {
        self.attached.is_some()
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn cgroups(&self) -> &CgroupRoot {
        &self.cgroups
    }

    /// Resolves who a site runs as (never root).
    pub fn identity(&self, site: &SiteConfig) -> Result<Option<SiteIdentity>, SiteSetupError> {
        if self.is_attached() {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            match known.get(site.name.as_str()) {
                Some(Some((uid, gid))) => {
                    let user = site.user.as_deref().or(self.defaults.user.as_deref());
                    return Ok(Some(SiteIdentity {
                        user: user.unwrap_or_default().to_owned(),
                        uid: *uid,
                        gid: *gid,
                        // Only a process started here would use it: none is.
                        home: PathBuf::new(),
                    }));
                }
                Some(None) => return Err(SiteSetupError::NoUser),
                None => {}
            }
            drop(known);
            // As the supervisor resolved it (it is root); it refused the
            // privileged groups already (and that check costs a dozen group
            // lookups per site).
            return resolve_configured(
                site,
                self.defaults.user.as_deref(),
                self.defaults.group.as_deref(),
            )
            .map(Some);
        }
        site_identity(
            site,
            self.defaults.user.as_deref(),
            self.defaults.group.as_deref(),
            self.defaults.admin_group.as_deref(),
        )
    }

    /// Whose permissions a static site's files are served with: like
    /// [`identity`](Self::identity), but a static site may have no user
    /// (`None`: only world-readable files are served).
    pub fn static_identity(
        &self,
        site: &SiteConfig,
    ) -> Result<Option<SiteIdentity>, SiteSetupError> {
        match self.identity(site) {
            Err(SiteSetupError::NoUser) => Ok(None),
            other => other,
        }
    }

    /// Who every site that runs code would run as, with the server-wide
    /// defaults polyhost started with; refuses two sites sharing a uid or a
    /// group (see [`separation`]).
    pub fn site_identities(
        &self,
        sites: &std::collections::BTreeMap<crate::config::SiteName, std::sync::Arc<SiteConfig>>,
    ) -> Result<
        std::collections::BTreeMap<crate::config::SiteName, SiteIdentity>,
        crate::config::ConfigErrors,
    > {
        let mut errors = sockets::check_paths(&self.state_dir, sites);
        match site_identities(sites, &self.defaults) {
            Ok(identities) if errors.is_empty() => Ok(identities),
            Ok(_) => Err(errors),
            Err(e) => {
                errors.0.extend(e.0);
                Err(errors)
            }
        }
    }

    /// Prepares what the site's processes share: identity, cgroup with the
    /// site's limits, the site's state directory and its socket directory.
    /// In the router process, only identity and paths: nothing is made.
    pub fn site_context(&self, site: &SiteConfig) -> Result<SiteContext, SiteSetupError> {
        let identity = self.identity(site)?;
        let dir = self.state_dir.join("sites").join(site.name.as_str());
        if self.is_attached() {
            return Ok(SiteContext {
                identity,
                cgroup: None,
                sandbox: None,
                tmp: dir.join("tmp"),
                socket_dir: sockets::sockets_root(&self.state_dir).join(site.name.as_str()),
                error_log: self.log_dir.join(format!("{}.error.log", site.name)),
                dir,
                epoch: 0,
            });
        }
        site_dirs::prepare_site_dir(&dir, identity.as_ref())?;
        let socket_dir = sockets::sockets_root(&self.state_dir).join(site.name.as_str());
        sockets::prepare_root_only_dir(&socket_dir).map_err(|source| SiteSetupError::Dir {
            path: socket_dir.clone(),
            source,
        })?;
        // Counted under one lock, so that a pending removal of this site's
        // cgroup (site removed a moment ago) either runs first or sees the
        // new epoch and leaves the cgroup alone (which this set-up makes,
        // or reuses, with its first process).
        let mut epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = epochs.entry(site.name.to_string()).or_insert(0);
        *epoch += 1;
        let epoch = *epoch;
        let cgroup = if self.cgroups.is_available() {
            let limits = isolation::Limits {
                memory: site.limits.memory,
                processes: site.limits.processes,
                cpu: site.limits.cpu,
            };
            // Made with its first process: an idle site has no cgroup.
            let name = instance::current().cgroup_name(site.name.as_str());
            Some(self.cgroups.site_on_demand(&name, &limits)?)
        } else {
            None
        };
        drop(epochs);
        let error_log = self.log_dir.join(format!("{}.error.log", site.name));
        let sandbox = sandbox_of(site, &self.state_dir, &dir.join("tmp"))?;
        Ok(SiteContext {
            identity,
            cgroup,
            sandbox,
            tmp: dir.join("tmp"),
            dir,
            socket_dir,
            error_log,
            epoch,
        })
    }

    /// Starts a process group for one runtime of a site; in the router
    /// process, attaches to the supervisor's group of that site, runtime
    /// and generation.
    pub fn spawn_group(
        &self,
        site: &SiteConfig,
        ctx: &SiteContext,
        launcher: std::sync::Arc<dyn Launcher>,
        generation: u64,
    ) -> GroupHandle {
        if let Some(groups) = &self.attached {
            let key = GroupKey {
                site: site.name.to_string(),
                runtime: launcher.runtime().to_owned(),
                generation,
            };
            return groups.attach(key, launcher.runtime(), &launcher.lifecycle());
        }
        let rlimits = Rlimits {
            nofile: 8192,
            nproc: if ctx.cgroup.is_none() {
                site.limits.processes
            } else {
                None
            },
        };
        spawn_group(GroupSpec {
            site: site.name.to_string(),
            generation,
            launcher,
            identity: ctx.identity.clone(),
            cgroup: ctx.cgroup.clone(),
            error_log: ctx.error_log.clone(),
            socket_dir: ctx.socket_dir.clone(),
            // Without a cgroup, the site's memory limit is enforced by polling RSS.
            memory_limit: if ctx.cgroup.is_none() {
                site.limits.memory
            } else {
                None
            },
            rlimits,
            batch_scheduling: self.batch_scheduling,
            sandbox: ctx.sandbox.clone(),
            policy: RestartPolicy::default(),
        })
    }

    /// Removes the site cgroups of `other` (a successor that failed and was
    /// stopped, binary upgrade), killing what still runs in them.
    pub fn remove_cgroups_of(&self, other: instance::Instance) {
        if let Err(e) = self.cgroups.cleanup_stale_where(|n| other.owns_cgroup(n)) {
            tracing::warn!(error = %e, "cannot remove the failed successor's cgroups");
        }
    }

    /// Removes polyhost's cgroups once every site has stopped.
    pub fn shutdown(&self) {
        if self.cgroups.is_available() && !instance::sole_owner() {
            // The other instance's site cgroups stay, and so does the parent.
            let me = instance::current();
            if let Err(e) = self.cgroups.cleanup_stale_where(|n| me.owns_cgroup(n)) {
                tracing::warn!(error = %e, "cannot remove this instance's cgroups");
            }
            self.cgroups.remove_parents_if_empty();
        } else if self.cgroups.is_available() {
            if let Err(e) = self.cgroups.remove_all() {
                tracing::warn!(error = %e, "cannot remove polyhost's cgroups");
            }
        }
    }

    /// What removes a removed site's cgroup once its processes stopped —
    /// unless the site was set up again in the meantime (removed and re-added
    /// within a drain period): then the cgroup belongs to the new set-up.
    /// Blocking (killing and removing cgroups waits for the kernel).
    pub fn cgroup_remover(&self, ctx: &SiteContext, site: &str) -> impl FnOnce() + Send + 'static {
        let epochs = self.epochs.clone();
        let (cgroup, epoch, site) = (ctx.cgroup.clone(), ctx.epoch, site.to_owned());
        move || {
            let Some(cg) = cgroup else { return };
            let epochs = epochs.lock().unwrap_or_else(|p| p.into_inner());
            if epochs.get(&site) != Some(&epoch) {
                return;
            }
            if let Err(e) = cg.remove() {
                tracing::warn!(cgroup = cg.name(), error = %e, "cannot remove a site cgroup");
            }
        }
    }
}

/// The sandbox of a site's processes: on unless the site opts out, where
/// the kernel allows it (else off, warned once at start), but an explicit
/// `network = "none"` or `paths` (the view) is a promise polyhost cannot
/// keep without it: an error.
fn sandbox_of(
    site: &SiteConfig,
    state_dir: &Path,
    tmp: &Path,
) -> Result<Option<isolation::Sandbox>, SiteSetupError> {
    if !site.sandbox.enabled || !site.runs_code() {
        return Ok(None);
    }
    let network_none = site.sandbox.network == crate::config::SandboxNetwork::None;
    if site.sandbox.view.is_some() {
        if let Some(why) = isolation::sandbox::view_unavailable() {
            return Err(SiteSetupError::ViewUnavailable(why));
        }
    }
    match isolation::sandbox::unavailable() {
        None => Ok(Some(isolation::Sandbox {
            tmp: tmp.to_path_buf(),
            shared_tmp: shared_tmp_to_replace(site, state_dir),
            network_none,
            view: view_of(site, state_dir, tmp),
        })),
        Some(why) if network_none => Err(SiteSetupError::SandboxUnavailable(why)),
        Some(_) => Ok(None),
    }
}

/// The read-only view of a site with `sandbox.paths`: besides what every
/// view holds (`isolation::sandbox::View`), the site's root, Python home
/// and path and its state directory (the parent of `tmp`: php-fpm's pid
/// file and log, sessions, uploads), and the paths it lists, read-only.
fn view_of(site: &SiteConfig, state_dir: &Path, tmp: &Path) -> Option<isolation::sandbox::View> {
    let read_only = site.sandbox.view.clone()?;
    let mut own: Vec<PathBuf> = site.root.iter().cloned().collect();
    if let Some(py) = &site.python {
        own.extend(py.home.iter().cloned());
        own.extend(py.path.iter().cloned());
    }
    Some(isolation::sandbox::View {
        mount_point: state_dir.join("view"),
        site: own,
        state: tmp.parent().unwrap_or(tmp).to_path_buf(),
        read_only,
    })
}

impl Drop for Supervisor {
    /// A supervisor dropped without [`Supervisor::shutdown`] (tests, an
    /// error at start) leaves no empty parent cgroup behind.
    fn drop(&mut self) {
        self.cgroups.remove_parents_if_empty();
    }
}

/// Which of the host's shared temporary directories the site's own `tmp`
/// replaces: each one that holds nothing the site's processes need (its
/// root, its Python home and paths, polyhost's state directory). One that
/// does is kept, with a warning: a site under `/tmp` is a test or a
/// mistake, and hiding its own files would only stop it. An `[app]`'s
/// program counts as needed.
fn shared_tmp_to_replace(site: &SiteConfig, state_dir: &Path) -> Vec<PathBuf> {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mut needed: Vec<PathBuf> = vec![canonical(state_dir)];
    needed.extend(site.root.as_deref().map(canonical));
    needed.extend(site.sandbox.view.iter().flatten().map(|p| canonical(p)));
    if let Some(py) = &site.python {
        needed.extend(py.home.as_deref().map(canonical));
        needed.extend(py.path.iter().map(|p| canonical(p)));
    }
    // (An [app]'s cwd is inside its root.)
    needed.extend(site.app.as_ref().map(|app| canonical(&app.program)));
    isolation::sandbox::SHARED_TMP
        .iter()
        .map(PathBuf::from)
        .filter(|shared| {
            let shared = canonical(shared);
            let inside: Vec<_> = needed.iter().filter(|p| p.starts_with(&shared)).collect();
            if !inside.is_empty() {
                tracing::warn!(site = %site.name, shared = %shared.display(), paths = ?inside,
                    "the sandbox keeps the host's {}: the site needs what is in it (move it out)", shared.display());
            }
            inside.is_empty()
        })
        .collect()
}

/// The parent cgroup of this polyhost's sites: `polyhost-<hash of state_dir>`,
/// so that two polyhost instances (each has its own state_dir) never clean up
/// each other's sites, while a restart of the same instance finds what its
/// predecessor left. FNV-1a by hand: stable across Rust versions, 6 lines.
pub fn cgroup_parent_name(state_dir: &Path) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in state_dir.as_os_str().as_encoded_bytes() {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    format!("polyhost-{h:08x}")
}

/// Who a site runs as: its `user`, else `default_user`; when polyhost is not
/// root, the invoking user (with a warning, once).
pub fn site_identity(
    site: &SiteConfig,
    default_user: Option<&str>,
    default_group: Option<&str>,
    admin_group: Option<&str>,
) -> Result<Option<SiteIdentity>, SiteSetupError> {
    if !isolation::running_as_root() {
        static WARN: Once = Once::new();
        WARN.call_once(|| tracing::warn!("polyhost is not running as root: every site runs as the invoking user, without separation"));
        return Ok(Some(SiteIdentity::current()?));
    }
    configured_identity(site, default_user, default_group, admin_group).map(Some)
}

/// Who a site is configured to run as, whoever asks: its `user` (else
/// `default_user`) and group, resolved, never a privileged group, and for
/// a site that runs code never a user the host's own daemons run as. What
/// `serve` run as root uses, and what `polyhost check` checks as any user.
pub fn configured_identity(
    site: &SiteConfig,
    default_user: Option<&str>,
    default_group: Option<&str>,
    admin_group: Option<&str>,
) -> Result<SiteIdentity, SiteSetupError> {
    let identity = resolve_configured(site, default_user, default_group)?;
    refuse_privileged_group(&identity, admin_group)?;
    if site.runs_code() && is_daemons_user(identity.uid) {
        return Err(SiteSetupError::SystemUser(identity.user, identity.uid));
    }
    Ok(identity)
}

/// The users the host's own daemons run as, which no site's code may share:
/// the base system's (uid 1–99, allocated statically by Debian's
/// base-passwd and alike: `daemon`, `www-data` the web server's, `mail`,
/// `backup`, ...) and `nobody` (65534, what daemons drop privileges to).
/// Dynamically allocated system users (100–999) are left to the operator:
/// panels and `useradd --system` make site users there.
fn is_daemons_user(uid: u32) -> bool {
    const NOBODY: u32 = 65534;
    (1..100).contains(&uid) || uid == NOBODY
}

/// [`configured_identity`] without its check of privileged groups.
fn resolve_configured(
    site: &SiteConfig,
    default_user: Option<&str>,
    default_group: Option<&str>,
) -> Result<SiteIdentity, SiteSetupError> {
    let user = site
        .user
        .as_deref()
        .or(default_user)
        .ok_or(SiteSetupError::NoUser)?;
    let group = site.group.as_deref().or(if site.user.is_some() {
        None
    } else {
        default_group
    });
    Ok(SiteIdentity::resolve(user, group)?)
}

/// Groups that grant power beyond a site: membership would let site code
/// read disks or shadow passwords, drive Docker, or use polyhost's admin
/// socket (its `[admin] group`, checked by peer credentials).
const PRIVILEGED_GROUPS: &[&str] = &[
    "root",
    "sudo",
    "wheel",
    "adm",
    "admin",
    "disk",
    "kmem",
    "shadow",
    "docker",
    "lxd",
    "libvirt",
    "systemd-journal",
    "staff",
    "tty",
];

fn refuse_privileged_group(
    identity: &SiteIdentity,
    admin_group: Option<&str>,
) -> Result<(), SiteSetupError> {
    for name in PRIVILEGED_GROUPS.iter().copied().chain(admin_group) {
        if let Ok(Some(gid)) = isolation::identity::group_id(name) {
            if gid == identity.gid {
                return Err(SiteSetupError::PrivilegedGroup(name.to_owned()));
            }
        }
    }
    Ok(())
}

/// Site processes whose parent died are reparented to polyhost (the
/// subreaper); collect their exit statuses so no zombie stays.
fn spawn_orphan_reaper() {
    static STARTED: Once = Once::new();
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    STARTED.call_once(|| {
        rt.spawn(reap_forever());
    });
}

async fn reap_forever() {
    {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            let _ = tokio::task::spawn_blocking(isolation::reap_orphans).await;
        }
    }
}
