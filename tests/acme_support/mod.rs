//! What the ACME tests share: Debian's `pebble` with `pebble-challtestsrv`
//! as its DNS (every name → 127.0.0.1), and polyhost's view of it.

#![allow(dead_code)] // each test binary uses a part

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use crate::common::front::{self_signed, served_cert, tls_connect};
use crate::common::{Binary, TestConfig};
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// pebble and its DNS, killed on drop.
pub struct Pebble {
    _ca: tokio::process::Child,
    _dns: tokio::process::Child,
    pub port: u16,
    pub mgmt: u16,
    /// The certificate of pebble's own HTTPS listener (polyhost's `ca_roots`).
    pub listener_cert: String,
}

impl Pebble {
    /// `validity`: the lifetime of the certificates it issues, in seconds.
    pub async fn start(dir: &Path, http_port: u16, tls_port: u16, validity: Option<u64>) -> Pebble {
        Self::start_with(dir, http_port, tls_port, validity, None).await
    }

    /// `eab`: the key id and base64url HMAC key pebble requires accounts to
    /// be bound with.
    pub async fn start_with(
        dir: &Path,
        http_port: u16,
        tls_port: u16,
        validity: Option<u64>,
        eab: Option<(&str, &str)>,
    ) -> Pebble {
        let mut last_exit = String::new();
        'attempt: for _ in 0..3 {
            let (port, mgmt, dns, dns_mgmt) = (free_port(), free_port(), free_port(), free_port());
            let cert = self_signed(&["localhost"]);
            std::fs::write(dir.join("pebble.pem"), &cert.cert_pem).unwrap();
            std::fs::write(dir.join("pebble.key"), &cert.key_pem).unwrap();
            let config = serde_json::json!({"pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt}"),
                "certificate": dir.join("pebble.pem"),
                "privateKey": dir.join("pebble.key"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": eab.is_some(),
                "externalAccountMACKeys": eab.map(|(kid, key)| serde_json::json!({kid: key})),
                "certificateValidityPeriod": validity,
            }});
            std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
            let dns_child = tokio::process::Command::new("pebble-challtestsrv")
                .args([
                    "-dns01",
                    &format!("127.0.0.1:{dns}"),
                    "-http01",
                    "",
                    "-https01",
                    "",
                ])
                .args([
                    "-tlsalpn01",
                    "",
                    "-management",
                    &format!("127.0.0.1:{dns_mgmt}"),
                ])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("pebble-challtestsrv (scripts/setup.sh installs pebble)");
            let mut ca = tokio::process::Command::new("pebble")
                .arg("-config")
                .arg(dir.join("pebble.json"))
                .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .stdout(std::fs::File::create(dir.join("pebble.log")).unwrap())
                .stderr(std::fs::File::create(dir.join("pebble.err")).unwrap())
                .kill_on_drop(true)
                .spawn()
                .expect("pebble");
            // Up to 30 s; a pebble that exited (a port taken meanwhile by a
            // test running beside this one) is started again on fresh ports.
            for _ in 0..600 {
                if let Ok(Some(status)) = ca.try_wait() {
                    last_exit = format!(
                        "pebble exited ({status}); its errors:\n{}",
                        std::fs::read_to_string(dir.join("pebble.err")).unwrap_or_default()
                    );
                    continue 'attempt;
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return Pebble {
                        _ca: ca,
                        _dns: dns_child,
                        port,
                        mgmt,
                        listener_cert: cert.cert_pem,
                    };
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            last_exit = format!(
                "pebble did not listen on {port} within 30 s; its errors:\n{}",
                std::fs::read_to_string(dir.join("pebble.err")).unwrap_or_default()
            );
            break;
        }
        panic!("{last_exit}");
    }

    /// pebble's issuing root, from its management interface.
    pub async fn root(&self) -> CertificateDer<'static> {
        let addr = format!("127.0.0.1:{}", self.mgmt).parse().unwrap();
        let mut tls = tls_connect(addr, "localhost", &[]).await.unwrap();
        tls.write_all(b"GET /roots/0 HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        let _ = tls.read_to_string(&mut reply).await;
        let pem = reply.split("\r\n\r\n").nth(1).expect("a body");
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("pebble's root PEM")
    }
}

/// Fails unless `chain` (leaf first) is valid for `name` under `root`.
pub fn verify(chain: &[CertificateDer<'static>], root: CertificateDer<'static>, name: &str) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        polyhost::config::crypto_provider(),
    )
    .build()
    .unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .expect("the served chain verifies with pebble's root");
}

/// Polls (bounded) until `log` holds `needle`.
pub async fn wait_log(polyhost: &Binary, needle: &str) {
    for _ in 0..600 {
        if polyhost.log().contains(needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {needle:?} in the log:\n{}", polyhost.log());
}

/// The chain served for `name` once it is pebble's (not a handshake failure).
pub async fn served_chain(https: u16, name: &str) -> Vec<CertificateDer<'static>> {
    let addr = format!("127.0.0.1:{https}").parse().unwrap();
    let mut last = String::new();
    for _ in 0..600 {
        match tls_connect(addr, name, &[]).await {
            Ok(tls) => {
                let _ = served_cert(&tls);
                return tls.get_ref().1.peer_certificates().unwrap().to_vec();
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no certificate served for {name}: {last}");
}

/// A CA root (PEM) named `cn` that signed nothing here: its subject differs
/// from pebble's, so a handshake trusting only it fails as `UnknownIssuer`.
pub fn unrelated_root(cn: &str) -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

/// `polyhost.toml` serving `http` and `https`, the CA at `ca_port`.
pub fn write_main(cfg: &TestConfig, pebble: &Pebble, http: u16, https: u16, ca_port: u16) {
    write_main_with_roots(cfg, pebble, http, https, ca_port, &["pebble-listener.pem"]);
}

/// [`write_main`] with `ca_roots` as given (paths relative to the config;
/// `pebble-listener.pem` is written, any other file is the caller's).
pub fn write_main_with_roots(
    cfg: &TestConfig,
    pebble: &Pebble,
    http: u16,
    https: u16,
    ca_port: u16,
    roots: &[&str],
) {
    cfg.write("pebble-listener.pem", &pebble.listener_cert);
    let roots: Vec<String> = roots.iter().map(|r| format!("{r:?}")).collect();
    let roots = roots.join(", ");
    cfg.write(
        "polyhost.toml",
        &format!(
            "listen = [\"127.0.0.1:{http}\"]\ntls_listen = [\"127.0.0.1:{https}\"]\nstate_dir = \"state\"\nlog_dir = \"log\"\nshutdown_timeout = \"5s\"\nrouter_threads = 2\n[acme]\ndirectory = \"https://localhost:{ca_port}/dir\"\nemail = \"ops@example.test\"\nca_roots = [{roots}]\n"
        ),
    );
}

/// The test CA must be there: a silent skip would be a test that cannot fail.
pub fn require_pebble() {
    let there = std::process::Command::new("pebble")
        .arg("-h")
        .output()
        .is_ok();
    assert!(
        there,
        "pebble is not installed: scripts/setup.sh installs it (Debian's `pebble`)"
    );
}

/// `polyhost status SITE` (through the admin socket), stdout and stderr.
pub async fn status(cfg: &TestConfig, site: &str) -> String {
    let socket = cfg.path().join("state/admin.sock");
    let site = site.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_polyhost"))
            .arg("--socket")
            .arg(socket)
            .args(["status", &site])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    })
    .await
    .unwrap()
}

/// `/metrics` from the admin socket.
pub async fn metrics(cfg: &TestConfig) -> String {
    let socket = cfg.path().join("state/admin.sock");
    let out = tokio::process::Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(socket)
        .arg("http://localhost/metrics")
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `polyhost status SITE` (bounded) until it holds `needle`.
pub async fn wait_status(cfg: &TestConfig, site: &str, needle: &str) -> String {
    let mut last = String::new();
    for _ in 0..300 {
        last = status(cfg, site).await;
        if last.contains(needle) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("status of {site} never showed {needle:?}; last:\n{last}");
}

/// How many orders pebble created (its log's new-order requests).
pub fn orders_seen(cfg: &TestConfig) -> usize {
    let log = std::fs::read_to_string(cfg.path().join("pebble.log")).unwrap_or_default();
    log.lines().filter(|l| l.contains("/order-plz")).count()
}
