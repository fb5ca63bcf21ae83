//! The php-fpm launcher: one master per site, started already as the site
//! user (so no root process lives in the site), with a config generated for
//! the socket the supervisor bound, handed over as a sealed file (see
//! "Files and permissions" in [`super::pool_config`]).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{
    find_fpm_binary, pool_config, system_include_dirs, PhpPoolPaths, PoolConfigError, PoolOptions,
};
use crate::config::{SiteConfig, StartPolicy};
use crate::isolation::SiteIdentity;
use crate::supervisor::{Command, Launcher, Lifecycle, Listen, Probe, ProcessSocket};

/// The listen backlog polyhost gives a pool's socket: php-fpm's own default
/// on Linux (`listen.backlog`), which no longer applies to a socket it
/// inherits.
const FPM_BACKLOG: u32 = 511;

pub struct PhpLauncher {
    site: Arc<SiteConfig>,
    paths: PhpPoolPaths,
    fpm: PathBuf,
    identity: Option<SiteIdentity>,
    /// The host's temporary directories the site's sandbox replaces by its
    /// own (`/tmp`, `/var/tmp`): PHP may use them too (`open_basedir`).
    private_tmp: Vec<PathBuf>,
}

impl PhpLauncher {
    /// `None` when no php-fpm binary can be found (and the site names none).
    pub fn new(
        site: &Arc<SiteConfig>,
        state_dir: &Path,
        identity: Option<SiteIdentity>,
    ) -> Option<Self> {
        let php = site.php.as_ref()?;
        let fpm = php.fpm.clone().or_else(find_fpm_binary)?;
        Some(PhpLauncher {
            site: site.clone(),
            paths: PhpPoolPaths::new(state_dir, &site.name),
            fpm,
            identity,
            private_tmp: Vec::new(),
        })
    }

    /// The launcher of a site whose processes another process starts (the
    /// router's view of a group the supervisor runs, `privsep`): only its
    /// runtime and lifecycle are read, so no php-fpm binary is looked for.
    pub fn attached(site: &Arc<SiteConfig>, state_dir: &Path) -> Self {
        let fpm = site.php.as_ref().and_then(|php| php.fpm.clone());
        PhpLauncher {
            site: site.clone(),
            paths: PhpPoolPaths::new(state_dir, &site.name),
            fpm: fpm.unwrap_or_default(),
            identity: None,
            private_tmp: Vec::new(),
        }
    }

    /// The site's processes start in a sandbox where these paths are the
    /// site's own temporary directory: `open_basedir` admits them.
    pub fn with_private_tmp(mut self, paths: Vec<PathBuf>) -> Self {
        self.private_tmp = paths;
        self
    }

    /// The pool paths of one master: its socket, and a pid file named after it.
    fn paths_for(&self, socket: &Path) -> PhpPoolPaths {
        let stem = socket
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "php".into());
        let mut p = self.paths.clone();
        p.socket = socket.to_path_buf();
        p.pid = self.paths.site_dir.join(format!("{stem}.pid"));
        p
    }
}

impl Launcher for PhpLauncher {
    fn runtime(&self) -> &'static str {
        "php"
    }

    fn lifecycle(&self) -> Lifecycle {
        let php = self
            .site
            .php
            .as_ref()
            .expect("a PHP launcher is built for a [php] site");
        Lifecycle {
            processes: 1,
            startup_timeout: php.startup_timeout,
            // Scale to zero: the whole pool, master included. php-fpm's own
            // pm.process_idle_timeout (php.idle_timeout) only ends children.
            idle_timeout: php.pool_idle_timeout,
            max_requests: None, // php-fpm's own pm.max_requests recycles its children
            memory_per_process: None,
            drain_timeout: php.request_timeout + Duration::from_secs(1),
            eager: php.start == StartPolicy::Eager,
        }
    }

    fn prepare(&self) -> std::io::Result<()> {
        match &self.identity {
            Some(id) if crate::isolation::running_as_root() => {
                self.paths.create_dirs(id.uid, id.gid)
            }
            _ => {
                for d in [&self.paths.site_dir, &self.paths.tmp, &self.paths.sessions] {
                    std::fs::create_dir_all(d)?;
                }
                Ok(())
            }
        }
    }

    fn listen(&self) -> Listen {
        Listen::Supervisor {
            backlog: FPM_BACKLOG,
            probe: Probe::FastCgiGetValues,
        }
    }

    fn command(&self, socket: ProcessSocket<'_>) -> std::io::Result<Command> {
        let paths = self.paths_for(socket.path);
        let include = system_include_dirs();
        let opts = pool_options(&paths, &include, &self.private_tmp);
        let text = pool_config(&self.site, &opts)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let config = crate::isolation::sealed_file("php-fpm.conf", text.as_bytes())?;
        // php-fpm splits FPM_SOCKETS at `,` and `=`.
        let listen = paths
            .socket
            .to_str()
            .filter(|s| !s.contains([',', '=']))
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "php-fpm cannot inherit a socket at {}: use a state_dir without `,`, `=` or non-UTF-8 bytes",
                        paths.socket.display()
                    ),
                )
            })?;
        let _ = std::fs::remove_file(&paths.pid);
        Ok(Command {
            program: self.fpm.clone(),
            args: vec![
                "--nodaemonize".into(),
                "--fpm-config".into(),
                format!("/proc/self/fd/{}", config.as_raw_fd()),
            ],
            env: vec![
                ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
                // `<listen address>=<fd>`: the pool whose `listen` is that
                // address uses the descriptor as its listening socket.
                ("FPM_SOCKETS".into(), format!("{listen}={}", socket.fd)),
            ],
            cwd: self.site.root.clone().unwrap_or_else(|| PathBuf::from("/")),
            fds: vec![config],
            socket_at: None,
            pid_env: None,
        })
    }

    fn diagnose(&self, _socket: &Path) -> Option<String> {
        let owner = self.identity.as_ref().map(|i| i.uid);
        let log = read_site_log_tail(&self.paths.fpm_log, owner, 4096)?;
        let tail: Vec<&str> = log.lines().rev().take(3).collect();
        (!tail.is_empty()).then(|| tail.into_iter().rev().collect::<Vec<_>>().join(" | "))
    }
}

/// How polyhost's php-fpm masters are configured: started as the site user,
/// on a socket they inherit, PHP's errors sent to the router.
fn pool_options<'a>(
    paths: &'a PhpPoolPaths,
    include: &'a [PathBuf],
    private_tmp: &'a [PathBuf],
) -> PoolOptions<'a> {
    PoolOptions {
        paths,
        master_as_root: false,
        inherited_socket: true,
        system_include: include,
        php_error_log: None,
        private_tmp,
    }
}

/// Whether the site's php-fpm config can be written: every value it
/// carries (`[env]`, `[php.ini]`, paths) can be quoted for php-fpm. Checked
/// with the rest of the configuration (`polyhost check`, every reload, the
/// start), not first when a pool starts: then `check` passed, and a reload
/// that restarts the site failed for every site.
pub fn check_pool_config(site: &SiteConfig, state_dir: &Path) -> Result<(), PoolConfigError> {
    let paths = PhpPoolPaths::new(state_dir, &site.name);
    let include = system_include_dirs();
    pool_config(site, &pool_options(&paths, &include, &[])).map(drop)
}

/// [`check_pool_config`] of every PHP site of `sites`, as errors of their
/// files: a value php-fpm cannot hold is the file's error, which refuses
/// the whole configuration (not a site's own problem).
pub fn check_pool_configs<'a>(
    sites: impl IntoIterator<Item = &'a std::sync::Arc<SiteConfig>>,
    state_dir: &Path,
) -> crate::config::ConfigErrors {
    crate::config::ConfigErrors(
        sites
            .into_iter()
            .filter(|site| site.php.is_some())
            .filter_map(|site| {
                let e = check_pool_config(site, state_dir).err()?;
                Some(crate::config::ConfigError::in_file(
                    &site.file, e.key, e.message,
                ))
            })
            .collect(),
    )
}

/// The last `max` bytes of a log file the site user writes, read by root
/// without trusting it: the last component is not followed if it is a
/// symlink (`/etc/shadow`), must be a regular file (not a FIFO that would
/// block, not `/dev/zero`) and, when `owner` is given, belong to the site
/// user. The directories above it are root's or the site's own.
pub fn read_site_log_tail(path: &Path, owner: Option<u32>, max: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || owner.is_some_and(|uid| meta.uid() != uid) {
        return None;
    }
    file.seek(SeekFrom::Start(meta.len().saturating_sub(max)))
        .ok()?;
    let mut buf = Vec::with_capacity(max as usize);
    file.take(max).read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::read_site_log_tail;

    #[test]
    fn site_log_tails_are_read_without_trusting_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("php-fpm.log");
        std::fs::write(&log, format!("{}last line\n", "x".repeat(10_000))).unwrap();
        let tail = read_site_log_tail(&log, None, 64).unwrap();
        assert!(
            tail.len() <= 64 && tail.ends_with("last line\n"),
            "{tail:?}"
        );
        // A symlink planted by the site owner is not followed.
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "root's secret").unwrap();
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert_eq!(read_site_log_tail(&link, None, 64), None);
        // A FIFO does not block, a device is not read.
        let fifo = dir.path().join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(read_site_log_tail(&fifo, None, 64), None);
        assert_eq!(
            read_site_log_tail(std::path::Path::new("/dev/zero"), None, 64),
            None
        );
        // A file of another owner is not read.
        assert_eq!(read_site_log_tail(&log, Some(4242), 64), None);
    }
}
