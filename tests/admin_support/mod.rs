//! Support for the admin API and reload tests: polyhost in process with its
//! admin API, the real CLI (optionally as another user), Python test sites,
//! and a keep-alive load generator that records every response.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use polyhost::app::status::{ServerStatus, SiteStatus};
use polyhost::app::Server;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::common::{open_up, python_worker, CgroupSweep, TestConfig, TestUser};

/// A WSGI app whose answer names its version (env `APP_VERSION`) and pid;
/// `/crash` exits, `/hog?mb=N` allocates N MiB; env `IMPORT_DELAY` slows
/// its import (a slow start) by that many seconds.
pub const VERSIONED_APP: &str = r#"
import os, time, urllib.parse
time.sleep(float(os.environ.get("IMPORT_DELAY", "0")))
def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    qs = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/crash":
        os._exit(3)
    if path == "/hog":
        hog = [bytearray(b"x" * (1 << 20)) for _ in range(int(qs.get("mb", ["512"])[0]))]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("version=%s pid=%d" % (os.environ.get("APP_VERSION", "none"), os.getpid())).encode()]
"#;

/// Writes a Python site `name` (host `name.test`) running [`VERSIONED_APP`].
pub fn python_site(cfg: &TestConfig, name: &str, user: &TestUser, version: &str, extra: &str) {
    cfg.write("apps/versioned.py", VERSIONED_APP);
    cfg.write(
        &format!("vhosts/{name}.toml"),
        &format!(
            "hosts = [\"{name}.test\"]\nuser = \"{}\"\n{extra}\n[python]\napp = \"versioned\"\npath = [\"apps\"]\nworker = \"{}\"\nenv = {{ APP_VERSION = \"{version}\" }}\n",
            user.name,
            python_worker().display()
        ),
    );
    open_up(cfg.path());
}

/// polyhost in process, with its admin API.
pub struct Served {
    pub addr: SocketAddr,
    pub socket: PathBuf,
    pub server: Arc<Server>,
    pub shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), polyhost::app::ServeError>>,
    admin: tokio::task::JoinHandle<()>,
    /// Removes this server's cgroups (and kills what is in them) if the test fails.
    _sweep: CgroupSweep,
}

impl Served {
    pub async fn start(cfg: &TestConfig) -> Self {
        let config = cfg.load();
        let sweep = CgroupSweep::new(&config.server.state_dir);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let admin = polyhost::admin::bind(&config.server)
            .await
            .unwrap_or_else(|e| panic!("admin: {e}"));
        let socket = admin.socket().to_path_buf();
        let server = Server::start(config).await.unwrap();
        let admin = polyhost::admin::serve(admin, server.clone(), shutdown.clone());
        let task = tokio::spawn(polyhost::app::serve_with(
            server.clone(),
            vec![listener],
            shutdown.clone(),
        ));
        Served {
            addr,
            socket,
            server,
            shutdown,
            task,
            admin,
            _sweep: sweep,
        }
    }

    /// Stops everything; the socket file is gone afterwards.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        self.admin.await.unwrap();
        assert!(!self.socket.exists(), "the admin socket is removed at stop");
    }

    pub async fn status(&self) -> ServerStatus {
        let out = cli(&self.socket, &["status", "--json"], None).await;
        assert_eq!(out.code, 0, "{out:?}");
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
    }

    pub async fn site(&self, name: &str) -> SiteStatus {
        let out = cli(&self.socket, &["status", name, "--json"], None).await;
        assert_eq!(out.code, 0, "{out:?}");
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
    }

    /// A raw request to the admin API.
    pub async fn api(&self, method: &str, path: &str) -> (u16, String) {
        let a = polyhost::admin::client::call(
            &self.socket,
            method.parse().unwrap(),
            path,
            Duration::from_secs(120),
        )
        .await
        .unwrap();
        (
            a.status.as_u16(),
            String::from_utf8_lossy(&a.body).into_owned(),
        )
    }
}

/// What a CLI run printed and how it exited.
#[derive(Debug)]
pub struct CliOut {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the real `polyhost` binary with `--socket socket args...`, as
/// `user` when given (through runuser).
pub async fn cli(socket: &Path, args: &[&str], user: Option<&str>) -> CliOut {
    let bin = env!("CARGO_BIN_EXE_polyhost");
    let mut argv: Vec<String> = Vec::new();
    if let Some(u) = user {
        argv.extend(["runuser", "-u", u, "--"].map(String::from));
    }
    argv.push(bin.into());
    argv.push("--socket".into());
    argv.push(socket.display().to_string());
    argv.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        // The in-process supervisor reaps stray children; not this one.
        let _pause = polyhost::isolation::pause_reaper();
        let out = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .output()
            .unwrap();
        CliOut {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// Runs a command for its effect (useradd, groupadd, ...), asserting success.
pub fn run(cmd: &[&str]) {
    let _pause = polyhost::isolation::pause_reaper();
    let out = std::process::Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

/// One response seen by the load generator: status 0 = no response.
#[derive(Clone, Debug)]
pub struct Seen {
    pub host: usize,
    pub status: u16,
    pub body: String,
}

/// Keep-alive clients looping over `hosts` until stopped.
pub struct Load {
    pub hosts: Vec<String>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<Vec<Seen>>>,
    pub count: Arc<std::sync::atomic::AtomicU64>,
}

impl Load {
    pub fn start(addr: SocketAddr, hosts: &[&str], clients: usize) -> Load {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let stop = CancellationToken::new();
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|i| {
                let (hosts, stop, count) = (hosts.clone(), stop.clone(), count.clone());
                tokio::spawn(async move { client_loop(addr, hosts, i, stop, count).await })
            })
            .collect();
        Load {
            hosts,
            stop,
            tasks,
            count,
        }
    }

    pub fn requests(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `n` more requests were answered.
    pub async fn wait_for(&self, n: u64) {
        let target = self.requests() + n;
        let ok = crate::common::eventually(Duration::from_secs(60), || async {
            self.requests() >= target
        })
        .await;
        assert!(ok, "load generator stalled at {}", self.requests());
    }

    /// Stops the clients; every client's responses in order.
    pub async fn stop(self) -> Vec<Vec<Seen>> {
        self.stop.cancel();
        let mut out = Vec::new();
        for t in self.tasks {
            out.push(t.await.unwrap());
        }
        out
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

async fn client_loop(
    addr: SocketAddr,
    hosts: Vec<String>,
    offset: usize,
    stop: CancellationToken,
    count: Arc<std::sync::atomic::AtomicU64>,
) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut sender: Option<Sender> = None;
    let mut i = offset;
    while !stop.is_cancelled() {
        let host = i % hosts.len();
        i += 1;
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            sender = connect(addr).await;
        }
        let Some(s) = sender.as_mut() else {
            seen.push(Seen {
                host,
                status: 0,
                body: "cannot connect".into(),
            });
            continue;
        };
        let req = http::Request::builder()
            .uri("/")
            .header("host", &hosts[host])
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answered = tokio::time::timeout(Duration::from_secs(20), async {
            s.ready().await.map_err(|e| e.to_string())?;
            let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
        })
        .await;
        let (status, body) = match answered {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                sender = None;
                (0, e)
            }
            Err(_) => {
                sender = None;
                (0, "timed out".into())
            }
        };
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        seen.push(Seen { host, status, body });
    }
    seen
}

/// Failed responses (not 200) to the hosts named in `counted`.
pub fn failures<'a>(
    load_hosts: &[String],
    seen: &'a [Vec<Seen>],
    counted: &[&str],
) -> Vec<(String, &'a Seen)> {
    seen.iter()
        .flatten()
        .filter(|s| counted.contains(&load_hosts[s.host].as_str()) && s.status != 200)
        .map(|s| (load_hosts[s.host].clone(), s))
        .collect()
}

/// `version=..` of a Python answer.
pub fn version(body: &str) -> &str {
    body.split_whitespace()
        .find_map(|kv| kv.strip_prefix("version="))
        .unwrap_or("")
}

/// Creates a Unix group for a test; deleted on drop.
pub struct TestGroup {
    pub name: String,
}

impl TestGroup {
    pub fn new() -> TestGroup {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "phpanel{}-{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        run(&["groupadd", "--system", &name]);
        TestGroup { name }
    }

    pub fn add(&self, user: &TestUser) {
        run(&["usermod", "-a", "-G", &self.name, &user.name]);
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _pause = polyhost::isolation::pause_reaper();
        let _ = std::process::Command::new("groupdel")
            .arg(&self.name)
            .output();
    }
}
