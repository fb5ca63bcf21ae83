//! The cluster front's test fixtures: a real HAProxy and `openssl s_server`
//! started as children (killed on drop), fake nodes (tiny HTTP servers
//! answering with their node's name, `OPTIONS *` too) and a raw GET through
//! the front. etcd: `common::etcd`.

use std::path::{Path, PathBuf};

use super::etcd::free_port;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A child process killed (and reaped) on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {cmd:?}: {e} (bash scripts/setup.sh installs it)")
            });
        Proc {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fake node: answers every request (and `OPTIONS *`) 200 with `node NAME`.
pub struct FakeNode {
    pub addr: String,
    task: tokio::task::JoinHandle<()>,
}

impl FakeNode {
    pub async fn start(name: &str) -> FakeNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let body = format!("node {name}");
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    // One request per connection, answered with close.
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        FakeNode { addr, task }
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// HAProxy in the foreground (`-db`) with `cfg`.
pub fn start_haproxy(dir: &Path, cfg: &str) -> Proc {
    let file = dir.join("haproxy.cfg");
    std::fs::write(&file, cfg).unwrap();
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&file);
    Proc::spawn(&mut cmd, dir.join("haproxy.log"))
}

/// One GET through `front` (`host:port`) with `Host: host`; the status and body.
pub async fn get_via_front(front: &str, host: &str) -> Result<(u16, String), String> {
    let mut s = tokio::net::TcpStream::connect(front)
        .await
        .map_err(|e| e.to_string())?;
    let req = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = out
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {out:?}"))?;
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}

/// `openssl s_server` on a free port with a certificate for `CN=node-NAME`.
pub fn tls_server(dir: &Path, name: &str) -> (Proc, String) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args([
            "-days",
            "1",
            "-subj",
            &format!("/CN=node-{name}"),
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let port = free_port();
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_server",
        "-www",
        "-accept",
        &format!("127.0.0.1:{port}"),
        "-cert",
    ])
    .arg(&cert)
    .arg("-key")
    .arg(&key);
    (
        Proc::spawn(&mut cmd, dir.join(format!("{name}-tls.log"))),
        format!("127.0.0.1:{port}"),
    )
}

/// The certificate subject a TLS client with SNI `host` gets through `front`.
pub fn tls_subject(front: &str, host: &str) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", front, "-servername", host])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("subject="))
        .unwrap_or("none")
        .trim()
        .to_owned()
}

/// The real binary's `polyhost cluster --etcd URL --prefix PREFIX`, for the
/// caller to add the command and its arguments.
pub fn cluster_command(etcd_url: &str, prefix: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_polyhost"));
    cmd.args(["cluster", "--etcd", etcd_url, "--prefix", prefix]);
    cmd
}
