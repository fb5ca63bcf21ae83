//! Test support shared by the integration tests: temporary server configs,
//! an in-process server on an ephemeral port, the real binary, and HTTP
//! clients (hyper for well-formed requests, raw TCP for malformed ones).
//! In modules of their own: bounded waits and app markers (`wait`), the
//! cgroup hygiene check and the sweep after a failed test (`cgroups`), the
//! Python worker and test sites (`worker`), the front door (`front`, `edge`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A server configuration in a temp dir: `polyhost.toml`, `vhosts/`, dirs.
pub struct TestConfig {
    pub dir: tempfile::TempDir,
}

impl TestConfig {
    pub fn new() -> Self {
        Self::with_dir(tempfile::tempdir().expect("tempdir"))
    }

    /// A config outside the host's `/tmp` and `/var/tmp` (which a site's
    /// sandbox replaces by its own tmp): under `/var/lib/polyhost-tests`
    /// (root only: that directory is made 0711).
    pub fn outside_tmp() -> Self {
        let base = Path::new("/var/lib/polyhost-tests");
        std::fs::create_dir_all(base).unwrap();
        std::fs::set_permissions(base, std::os::unix::fs::PermissionsExt::from_mode(0o711))
            .unwrap();
        Self::with_dir(tempfile::tempdir_in(base).expect("tempdir"))
    }

    fn with_dir(dir: tempfile::TempDir) -> Self {
        std::fs::create_dir_all(dir.path().join("vhosts")).unwrap();
        let t = TestConfig { dir };
        // Two router lanes whatever the machine: tests run many servers at once.
        t.write("polyhost.toml", "listen = [\"127.0.0.1:0\"]\nstate_dir = \"state\"\nlog_dir = \"log\"\nshutdown_timeout = \"5s\"\nrouter_threads = 2\n");
        t
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn main(&self) -> PathBuf {
        self.dir.path().join("polyhost.toml")
    }

    /// Writes a file relative to the config dir, creating parents.
    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }

    /// A static site `name` with `hosts` whose index.html says `name`.
    pub fn static_site(&self, name: &str, hosts: &[&str], extra: &str) {
        let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
        self.write(&format!("www/{name}/index.html"), &format!("site {name}\n"));
        self.write(
            &format!("vhosts/{name}.toml"),
            &format!(
                "hosts = [{}]\nroot = \"www/{name}\"\n{extra}\n",
                hosts.join(", ")
            ),
        );
    }

    pub fn load(&self) -> polyhost::config::Config {
        polyhost::config::load(&self.main()).unwrap_or_else(|e| panic!("config errors:\n{e}"))
    }
}

/// polyhost served in-process on an ephemeral port.
pub struct InProcess {
    pub addr: SocketAddr,
    pub server: std::sync::Arc<polyhost::app::Server>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), polyhost::app::ServeError>>,
    /// Removes this server's cgroups (and kills what is in them) if the test fails.
    _sweep: CgroupSweep,
}

impl InProcess {
    pub async fn start(cfg: &TestConfig) -> Self {
        init_logging();
        let config = cfg.load();
        let sweep = CgroupSweep::new(&config.server.state_dir);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = polyhost::app::Server::start(config)
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        let task = tokio::spawn(polyhost::app::serve_with(
            server.clone(),
            vec![listener],
            shutdown.clone(),
        ));
        InProcess {
            addr,
            server,
            shutdown,
            task,
            _sweep: sweep,
        }
    }

    /// The status of one site.
    pub async fn site(&self, name: &str) -> polyhost::app::status::SiteStatus {
        let status = self.server.status().await;
        status
            .sites
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no site {name}"))
    }

    /// Stops the server, then checks its hygiene: no socket and no cgroup
    /// of this server is left behind.
    pub async fn stop(self) {
        let state_dir = self.server.config().await.server.state_dir;
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        check_hygiene(&state_dir);
    }
}

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A keep-alive HTTP/1.1 client connection (hyper).
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        Client { sender }
    }

    pub async fn send(&mut self, req: http::Request<Full<Bytes>>) -> Resp {
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Resp {
        self.send(request("GET", host, path)).await
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

pub fn request(method: &str, host: &str, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// One request on a fresh connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Resp {
    Client::connect(addr).await.get(host, path).await
}

/// Sends raw bytes and reads until the server closes (or 10 s pass).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Status code of the first response in a raw reply.
pub fn raw_status(reply: &str) -> u16 {
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A Unix user created for a test, deleted on drop.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
}

impl TestUser {
    /// The user's primary group id (what its site's processes run with,
    /// unless the site names a group).
    pub fn gid(&self) -> u32 {
        nix::unistd::User::from_name(&self.name)
            .unwrap()
            .unwrap()
            .gid
            .as_raw()
    }

    pub fn new() -> TestUser {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "polyhost-e{}-{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let _pause = polyhost::isolation::pause_reaper();
        let add = || {
            std::process::Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    &name,
                ])
                .output()
                .unwrap()
        };
        let mut out = add();
        // Exit 9: the name exists. It was made by an earlier test process
        // with our (since reused) pid that died before its drop ran; no
        // live process can own it, so it is replaced.
        if out.status.code() == Some(9) {
            let _ = std::process::Command::new("userdel").arg(&name).output();
            let _ = std::process::Command::new("groupdel").arg(&name).output();
            out = add();
        }
        assert!(out.status.success(), "useradd: {out:?}");
        let uid = nix::unistd::User::from_name(&name)
            .unwrap()
            .unwrap()
            .uid
            .as_raw();
        TestUser { name, uid }
    }
}

impl Drop for TestUser {
    /// Also when the test panicked: kills whatever still runs as the user
    /// (e.g. php-fpm children whose master died with a killed polyhost, left
    /// before the restart that would have removed them), then deletes it.
    fn drop(&mut self) {
        kill_processes_of(self.uid);
        let _pause = polyhost::isolation::pause_reaper();
        let _ = std::process::Command::new("userdel")
            .arg(&self.name)
            .output();
    }
}

/// SIGKILLs every (non-zombie) process of `uid`, by pid, until none is left
/// or 5 s have passed. Only for test users: everything they run, the test started.
pub fn kill_processes_of(uid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = pids_of_uid(uid);
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Makes the temp config dir readable by site users (temp dirs are 0700).
pub fn open_up(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Processes owned by `uid`, from /proc.
pub fn pids_of_uid(uid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let real_uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok());
        let zombie = status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'));
        if real_uid == Some(uid) && !zombie {
            out.push(pid);
        }
    }
    out
}

/// polyhost's log into the test's captured output (shown when a test fails).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "polyhost=info".into()),
        )
        .with_test_writer()
        .try_init();
}

// Front-door helpers (TLS, HTTP/2, test upstreams, swappable routing table).
pub mod edge;
pub mod etcd;
pub mod front;
pub mod haproxy;
pub mod privsep;
pub mod ws;

mod binary;
pub mod cgroups;
mod wait;
mod worker;

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use binary::Binary;
#[allow(unused_imports)]
pub use cgroups::{check_hygiene, CgroupSweep};
#[allow(unused_imports)]
pub use privsep::{router_process_of, router_uid};
#[allow(unused_imports)]
pub use wait::{eventually, file_text, marker_dir, wait_for, wait_for_marker, Shown};
#[allow(unused_imports)]
pub use worker::{python_test_site, python_worker, python_worker_outside_tmp};

/// A TCP connection from a chosen loopback address (e.g. "127.0.0.2"), so a
/// test can be a different client IP than its attackers.
pub async fn connect_from(src: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(src.parse().unwrap(), 0))
        .unwrap();
    socket.connect(addr).await.unwrap()
}

/// Sends raw bytes on `s` and reads until the server closes (or `limit` passes).
pub async fn raw_on(mut s: TcpStream, bytes: &[u8], limit: Duration) -> String {
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// One GET on a fresh connection from `src`.
pub async fn get_from(src: &str, addr: SocketAddr, host: &str, path: &str) -> Resp {
    get_over(connect_from(src, addr).await, host, path).await
}

/// One GET on `stream`.
pub async fn get_over(stream: TcpStream, host: &str, path: &str) -> Resp {
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender.ready().await.unwrap();
    let resp = sender
        .send_request(request("GET", host, path))
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// The uid of `nobody`: a local user that is neither the test (root) nor a site.
pub const NOBODY: u32 = 65534;

/// A TCP connection from `src` whose socket belongs to `uid`: polyhost
/// counts local clients by the user owning their socket, so this is another
/// client than the test process (root), whatever the address. The socket is
/// made under that file-system uid (`setfsuid`, which changes only the
/// calling thread) on a blocking-pool thread, which gets root back at once.
pub async fn connect_as(uid: u32, src: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::task::spawn_blocking(move || {
        let before = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
        let socket = tokio::net::TcpSocket::new_v4();
        nix::unistd::setfsuid(before);
        socket
    })
    .await
    .unwrap()
    .unwrap();
    socket
        .bind(SocketAddr::new(src.parse().unwrap(), 0))
        .unwrap();
    socket.connect(addr).await.unwrap()
}

/// One GET on a fresh connection from `src` owned by `uid` ([`connect_as`]).
pub async fn get_as(uid: u32, src: &str, addr: SocketAddr, host: &str, path: &str) -> Resp {
    get_over(connect_as(uid, src, addr).await, host, path).await
}

/// The value of `key=value` in a whitespace-separated probe answer.
pub fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or("")
}

/// Writes `n` pipelined GETs for `host` (about 260 bytes each, the last one
/// with `Connection: close`) in one write, reads until the server closes,
/// and returns the status lines in the order they came.
pub async fn pipelined_statuses<S>(mut stream: S, host: &str, n: usize) -> Vec<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let pad = "p".repeat(200);
    let mut burst = String::new();
    for i in 0..n {
        let close = if i + 1 == n {
            "Connection: close\r\n"
        } else {
            ""
        };
        burst.push_str(&format!(
            "GET /?n={i} HTTP/1.1\r\nHost: {host}\r\nX-Pad: {pad}\r\n{close}\r\n"
        ));
    }
    stream.write_all(burst.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // A TLS peer may close without close_notify: what was read counts.
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .map(str::to_owned)
        .collect()
}

/// Reads from `stream` into `seen` until `needle` occurs `count` times;
/// panics if the peer closes first or nothing comes for `patience` (a hang
/// bound, not a speed goal).
pub async fn read_until_count<S>(
    stream: &mut S,
    seen: &mut String,
    needle: &str,
    count: usize,
    patience: Duration,
) where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut buf = [0u8; 4096];
    while seen.matches(needle).count() < count {
        let n = tokio::time::timeout(patience, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{count} × {needle:?} never came: {seen}"))
            .unwrap();
        assert!(n > 0, "closed early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// `runuser -u user -- cmd...` (as a site's user would run it from a shell):
/// did it succeed, and what did it print (stdout, then stderr).
pub fn runuser(user: &str, cmd: &[&str]) -> (bool, String) {
    let _pause = polyhost::isolation::pause_reaper();
    let out = std::process::Command::new("runuser")
        .args(["-u", user, "--"])
        .args(cmd)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Runs `polyhost --config MAIN ARGS` (the CLI against a running polyhost):
/// its exit code, stdout and stderr.
pub async fn polyhost_cli(main: &Path, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_polyhost"))
        .arg("--config")
        .arg(main)
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
