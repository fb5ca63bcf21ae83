//! The php-fpm launcher: one master per site, started already as the site
//! user (so no root process lives in the site), with a config generated for
//! the socket the supervisor chose.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{find_fpm_binary, pool_config, PhpPoolPaths, PoolOptions};
use crate::config::{SiteConfig, StartPolicy};
use crate::isolation::SiteIdentity;
use crate::supervisor::{Command, Launcher, Lifecycle};

pub struct PhpLauncher {
    site: Arc<SiteConfig>,
    paths: PhpPoolPaths,
    fpm: PathBuf,
    identity: Option<SiteIdentity>,
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
        })
    }

    /// The pool paths of one master: config and pid file named after its socket.
    fn paths_for(&self, socket: &Path) -> PhpPoolPaths {
        let stem = socket
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "php".into());
        let mut p = self.paths.clone();
        p.socket = socket.to_path_buf();
        p.pid = self.paths.site_dir.join(format!("{stem}.pid"));
        p.config = self
            .paths
            .config
            .with_file_name(format!("{}.{stem}.php-fpm.conf", self.site.name));
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
            idle_timeout: None,
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

    fn command(&self, socket: &Path) -> std::io::Result<Command> {
        let paths = self.paths_for(socket);
        let opts = PoolOptions {
            paths: &paths,
            master_as_root: false,
            php_error_log: None,
        };
        let text = pool_config(&self.site, &opts)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let gid = self
            .identity
            .as_ref()
            .map_or_else(|| nix::unistd::getgid().as_raw(), |i| i.gid);
        paths.write_config(&text, gid)?;
        let _ = std::fs::remove_file(&paths.pid);
        Ok(Command {
            program: self.fpm.clone(),
            args: vec![
                "--nodaemonize".into(),
                "--fpm-config".into(),
                paths.config.display().to_string(),
            ],
            env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
            cwd: self.site.root.clone().unwrap_or_else(|| PathBuf::from("/")),
        })
    }

    fn diagnose(&self, _socket: &Path) -> Option<String> {
        let log = std::fs::read_to_string(&self.paths.fpm_log).ok()?;
        let tail: Vec<&str> = log.lines().rev().take(3).collect();
        (!tail.is_empty()).then(|| tail.into_iter().rev().collect::<Vec<_>>().join(" | "))
    }
}
