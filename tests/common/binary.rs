//! The real `polyhost` binary as tests run it: started on an ephemeral
//! port, its log captured, stopped with SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::{wait_for, CgroupSweep};

/// The real `polyhost` binary, stopped with SIGTERM when dropped.
pub struct Binary {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
    /// After `child` (killed on drop): if the test fails, what is left in
    /// this polyhost's cgroups is killed and the cgroups removed.
    _sweep: CgroupSweep,
}

impl Binary {
    /// A polyhost a test started its own way (e.g. under `prlimit`), serving
    /// on `addr`, with the config `main`: swept like [`Binary::start`]'s.
    pub fn adopt(
        child: tokio::process::Child,
        addr: SocketAddr,
        log: std::sync::Arc<std::sync::Mutex<String>>,
        main: &Path,
    ) -> Self {
        Binary {
            child,
            addr,
            log,
            _sweep: CgroupSweep::new(&state_dir_of(main, &[])),
        }
    }

    /// Starts `polyhost serve --config main` and waits for its listening line.
    pub async fn start(main: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_program(Path::new(env!("CARGO_BIN_EXE_polyhost")), main, env).await
    }

    /// [`Binary::start`] with a copy of the binary at `program` (whose
    /// directory holds the Python workers it chooses from).
    pub async fn start_program(program: &Path, main: &Path, env: &[(&str, &str)]) -> Self {
        let sweep = CgroupSweep::new(&state_dir_of(main, env));
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg("serve")
            .arg("--config")
            .arg(main)
            .envs(env.iter().copied());
        cmd.stderr(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn polyhost");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("listening addr=").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("polyhost did not start; log:\n{}", log.lock().unwrap()));
        Binary {
            child,
            addr: addr.parse().unwrap(),
            log,
            _sweep: sweep,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The address of the listener whose log line contains `what`
    /// (`... addr=127.0.0.1:PORT`), waited for up to 10 s.
    pub async fn logged_addr(&self, what: &str) -> SocketAddr {
        let found = wait_for(
            &format!("a log line with {what:?} and its address"),
            Duration::from_secs(10),
            async || {
                let log = self.log();
                let line = log.lines().find(|l| l.contains(what))?;
                line.split("addr=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            },
            Option::is_some,
        )
        .await;
        found.unwrap()
    }

    /// SIGTERM, then the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap() as i32;
        // SAFETY-free: kill(2) through nix.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("exit after SIGTERM")
            .unwrap()
    }
}

/// The state dir `polyhost serve --config main` uses with `env` set.
fn state_dir_of(main: &Path, env: &[(&str, &str)]) -> PathBuf {
    let base = main.parent().unwrap_or(Path::new("/"));
    match env.iter().find(|(k, _)| *k == "POLYHOST_STATE_DIR") {
        Some((_, dir)) => base.join(dir),
        None => polyhost::config::load_server(main)
            .map(|s| s.state_dir)
            .unwrap_or_else(|_| base.join("state")),
    }
}
