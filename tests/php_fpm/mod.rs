//! Test fixture: a real php-fpm master for one test site, running as a
//! throw-away system user, with the config polyhost generates. Stands in for
//! the supervisor (which will start masters with its isolation code); here a
//! plain `std::process::Command` with `uid`/`gid` does.
//!
//! Hygiene: dropping [`FpmSite`] kills the master's whole process group,
//! waits for it, checks that no process of the test user is left, and
//! deletes the user. Readiness is a retried connect, never a fixed sleep.
#![allow(dead_code)]

pub mod harness;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use polyhost::config::{
    HostPattern, IniValue, Limits, PhpConfig, PhpMode, SiteConfig, SiteName, StartPolicy,
    StaticConfig, DEFAULT_BODY_LIMIT,
};
use polyhost::runtime::php::{pool_config, PhpPoolPaths, PoolOptions};

/// The php-fpm polyhost would pick on this machine (CI installs php8.2-fpm).
pub fn fpm_binary() -> PathBuf {
    polyhost::runtime::php::find_fpm_binary().expect("no /usr/sbin/php-fpm* (install php8.2-fpm)")
}

/// useradd/userdel take a lock on /etc/passwd; tests in this binary run in
/// parallel threads, so they take turns.
static USERADD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A system user and group created for one test; deleted on drop.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
    pub fn create() -> TestUser {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("polyhost-t-{}-{:x}", std::process::id(), nanos & 0xfffff);
        let _lock = USERADD.lock().unwrap_or_else(|p| p.into_inner());
        let st = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--user-group",
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ])
            .status()
            .expect("run useradd (tests run as root)");
        assert!(st.success(), "useradd {name} failed");
        let user = nix::unistd::User::from_name(&name)
            .unwrap()
            .expect("user just created");
        TestUser {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }
    }
}

impl Drop for TestUser {
    /// Also when the test panicked: kills whatever still runs as the user
    /// (by pid, until none is left, at most 5 s), then deletes it.
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = processes_of(self.uid);
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _lock = USERADD.lock().unwrap_or_else(|p| p.into_inner());
        let _ = Command::new("userdel")
            .arg(&self.name)
            .stderr(Stdio::null())
            .status();
    }
}

/// Knobs a test may change before the master starts.
pub struct SiteOptions {
    pub front_controller: Option<String>,
    pub max_children: u64,
    pub request_timeout: Duration,
    pub env: Vec<(String, String)>,
    pub max_requests: u64,
    /// Start the master as root with `user`/`group` in the pool (php-fpm
    /// drops privileges itself) instead of as the site user.
    pub master_as_root: bool,
    /// The pool's process manager; keep-alive to php-fpm is used with `Static` only.
    pub mode: PhpMode,
    /// `php.extensions`.
    pub extensions: Vec<String>,
}

impl Default for SiteOptions {
    fn default() -> Self {
        SiteOptions {
            front_controller: None,
            max_children: 4,
            request_timeout: Duration::from_secs(30),
            env: vec![],
            max_requests: 500,
            master_as_root: false,
            mode: PhpMode::Static,
            extensions: vec![".php".into()],
        }
    }
}

/// A document root, a test user and a running php-fpm master for them.
pub struct FpmSite {
    pub site: Arc<SiteConfig>,
    pub root: PathBuf,
    pub outside: PathBuf,
    pub paths: PhpPoolPaths,
    pub master: Option<Child>,
    // Dropped after `master` is killed (field order matters for Drop; see `drop`).
    pub user: TestUser,
    pub dir: tempfile::TempDir,
}

impl FpmSite {
    /// Creates the user, the root (with `files`: path → content) and starts php-fpm.
    pub fn start(files: &[(&str, &str)], opts: SiteOptions) -> FpmSite {
        use std::os::unix::fs::PermissionsExt;
        let user = TestUser::create();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        for (rel, content) in files {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
        }
        let name = SiteName::parse("site").unwrap();
        let paths = PhpPoolPaths::new(&dir.path().join("state"), &name);
        let site = SiteConfig {
            name,
            file: dir.path().join("vhosts/site.toml"),
            hosts: vec![HostPattern::parse("site.test").unwrap()],
            default: false,
            root: Some(root.clone()),
            user: Some(user.name.clone()),
            group: Some(user.name.clone()),
            limits: Limits {
                memory: None,
                processes: None,
                cpu: None,
                body: DEFAULT_BODY_LIMIT,
            },
            env: opts.env.into_iter().collect(),
            static_files: StaticConfig {
                index: vec!["index.html".into()],
                paths: vec![],
                cache_max_age: None,
            },
            php: Some(PhpConfig {
                fpm: Some(fpm_binary()),
                mode: opts.mode,
                start: StartPolicy::Eager,
                max_children: opts.max_children,
                max_requests: opts.max_requests,
                idle_timeout: Duration::from_secs(10),
                pool_idle_timeout: None,
                request_timeout: opts.request_timeout,
                startup_timeout: Duration::from_secs(10),
                front_controller: opts.front_controller,
                extensions: opts.extensions,
                open_basedir: None,
                ini: [
                    (
                        "upload_max_filesize".to_owned(),
                        IniValue::Value("64M".into()),
                    ),
                    ("post_max_size".to_owned(), IniValue::Value("64M".into())),
                    ("output_buffering".to_owned(), IniValue::Value("0".into())),
                    ("log_errors".to_owned(), IniValue::Flag(true)),
                ]
                .into_iter()
                .collect(),
            }),
            python: None,
            app: None,
            tls: None,
            sandbox: Default::default(),
            problems: Vec::new(),
        };
        paths.create_dirs(user.uid, user.gid).unwrap();
        let text = pool_config(
            &site,
            &PoolOptions {
                paths: &paths,
                master_as_root: opts.master_as_root,
                // This master binds its own socket; polyhost's inherit theirs
                // (tests/socket_isolation.rs).
                inherited_socket: false,
                system_include: &polyhost::runtime::php::system_include_dirs(),
                php_error_log: None,
                private_tmp: &[],
            },
        )
        .unwrap();
        let config = dir.path().join("php-fpm.conf");
        std::fs::write(&config, text).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        let ini = dir.path().join("php.ini");
        std::fs::write(&ini, "; empty: defaults plus the pool's php_admin values\n").unwrap();
        std::fs::set_permissions(&ini, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut command = Command::new(fpm_binary());
        if !opts.master_as_root {
            command.uid(user.uid).gid(user.gid);
        }
        let master = command
            .arg("--nodaemonize")
            .arg("--fpm-config")
            .arg(&config)
            .arg("-c")
            .arg(&ini)
            .process_group(0)
            .current_dir("/")
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start php-fpm");
        let mut fpm = FpmSite {
            site: Arc::new(site),
            root,
            outside,
            paths,
            master: Some(master),
            user,
            dir,
        };
        fpm.wait_ready();
        fpm
    }

    /// Retries connecting to the socket until php-fpm accepts (or exited).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.paths.socket).is_ok() {
                return;
            }
            if let Some(st) = self.master.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "php-fpm exited ({st}) before listening; log:\n{}",
                    self.fpm_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "php-fpm not listening after 15s; log:\n{}",
                self.fpm_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn fpm_log(&self) -> String {
        std::fs::read_to_string(&self.paths.fpm_log).unwrap_or_default()
    }

    pub fn master_pid(&self) -> i32 {
        self.master.as_ref().unwrap().id() as i32
    }

    pub fn socket(&self) -> &Path {
        &self.paths.socket
    }

    /// The pids of the pool's children (the test user's processes but the
    /// master).
    pub fn children(&self) -> Vec<i32> {
        let master = self.master_pid();
        processes_of(self.user.uid)
            .into_iter()
            .filter(|&pid| pid != master)
            .collect()
    }

    /// Processes still running as the test user.
    pub fn user_processes(&self) -> Vec<String> {
        processes_of(self.user.uid)
            .into_iter()
            .map(|pid| pid.to_string())
            .collect()
    }
}

/// The pids of `uid`'s processes that are not zombies.
fn processes_of(uid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        use std::os::unix::fs::MetadataExt;
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'));
        if e.metadata().is_ok_and(|m| m.uid() == uid) && !zombie {
            out.push(pid);
        }
    }
    out
}

impl Drop for FpmSite {
    fn drop(&mut self) {
        if let Some(mut master) = self.master.take() {
            let pgid = nix::unistd::Pid::from_raw(master.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = master.wait();
        }
        // The children are in the master's process group; wait until the
        // kernel has reaped them before checking and deleting the user.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.user_processes().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = self.user_processes();
        if !left.is_empty() && !std::thread::panicking() {
            panic!(
                "processes of {} left after the test: {left:?}",
                self.user.name
            );
        }
    }
}
