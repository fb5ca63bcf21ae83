//! Issue 25 against a real ACME CA: Debian's `pebble`, with
//! `pebble-challtestsrv` as its DNS (every name → 127.0.0.1) and its
//! HTTP-01 port pointed at polyhost's plain listener. A site with
//! `[tls] acme = true` gets a certificate over HTTP-01 (answered by the
//! router from memory, also though the site redirects to https), is served
//! over HTTPS with the chain pebble issued (verified with pebble's root),
//! and a restarted polyhost orders nothing. Skipped (with a message) where
//! pebble is not installed.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::front::{h1_over, self_signed, send_h1, served_cert, tls_connect};
use common::{Binary, TestConfig};
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// pebble and its DNS, killed on drop.
struct Pebble {
    _ca: tokio::process::Child,
    _dns: tokio::process::Child,
    port: u16,
    mgmt: u16,
    /// The certificate of pebble's own HTTPS listener (polyhost's `ca_roots`).
    listener_cert: String,
}

impl Pebble {
    /// `validity`: the lifetime of the certificates it issues, in seconds.
    async fn start(dir: &Path, http_port: u16, tls_port: u16, validity: Option<u64>) -> Pebble {
        Self::start_with(dir, http_port, tls_port, validity, None).await
    }

    /// `eab`: the key id and base64url HMAC key pebble requires accounts to
    /// be bound with.
    async fn start_with(
        dir: &Path,
        http_port: u16,
        tls_port: u16,
        validity: Option<u64>,
        eab: Option<(&str, &str)>,
    ) -> Pebble {
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
        let ca = tokio::process::Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(std::fs::File::create(dir.join("pebble.log")).unwrap())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("pebble");
        for _ in 0..200 {
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
        panic!("pebble did not listen on {port}");
    }

    /// pebble's issuing root, from its management interface.
    async fn root(&self) -> CertificateDer<'static> {
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

use rustls_pki_types::pem::PemObject;

/// Fails unless `chain` (leaf first) is valid for `name` under `root`.
fn verify(chain: &[CertificateDer<'static>], root: CertificateDer<'static>, name: &str) {
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
async fn wait_log(polyhost: &Binary, needle: &str) {
    for _ in 0..600 {
        if polyhost.log().contains(needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {needle:?} in the log:\n{}", polyhost.log());
}

/// The chain served for `name` once it is pebble's (not a handshake failure).
async fn served_chain(https: u16, name: &str) -> Vec<CertificateDer<'static>> {
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

/// `polyhost.toml` serving `http` and `https`, the CA at `ca_port`.
fn write_main(cfg: &TestConfig, pebble: &Pebble, http: u16, https: u16, ca_port: u16) {
    cfg.write("pebble-listener.pem", &pebble.listener_cert);
    cfg.write(
        "polyhost.toml",
        &format!(
            "listen = [\"127.0.0.1:{http}\"]\ntls_listen = [\"127.0.0.1:{https}\"]\nstate_dir = \"state\"\nlog_dir = \"log\"\nshutdown_timeout = \"5s\"\nrouter_threads = 2\n[acme]\ndirectory = \"https://localhost:{ca_port}/dir\"\nemail = \"ops@example.test\"\nca_roots = [\"pebble-listener.pem\"]\n"
        ),
    );
}

/// The test CA must be there: a silent skip would be a test that cannot fail.
fn require_pebble() {
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
async fn status(cfg: &TestConfig, site: &str) -> String {
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
async fn metrics(cfg: &TestConfig) -> String {
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
async fn wait_status(cfg: &TestConfig, site: &str, needle: &str) -> String {
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
fn orders_seen(cfg: &TestConfig) -> usize {
    let log = std::fs::read_to_string(cfg.path().join("pebble.log")).unwrap_or_default();
    log.lines().filter(|l| l.contains("/order-plz")).count()
}

#[tokio::test]
async fn http01_certificate_is_issued_served_and_kept_across_a_restart() {
    require_pebble();
    let (http, https) = (free_port(), free_port());
    let cfg = TestConfig::new();
    let pebble = Pebble::start(cfg.path(), http, https, None).await;
    write_main(&cfg, &pebble, http, https, pebble.port);
    // redirect_http defaults to true: the challenge is answered anyway.
    cfg.static_site(
        "shop",
        &["shop.test", "www.shop.test"],
        "[tls]\nacme = true",
    );
    let polyhost = Binary::start(&cfg.main(), &[]).await;
    let chain = served_chain(https, "shop.test").await;
    verify(&chain, pebble.root().await, "www.shop.test");
    wait_log(&polyhost, "ACME certificate issued").await;
    let account = cfg.path().join("state/acme/account.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&account).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "account.json mode");
    let r = common::get(polyhost.addr, "shop.test", "/").await;
    assert_eq!(
        r.status, 301,
        "with its certificate the site redirects to https"
    );
    let m = metrics(&cfg).await;
    let expiry = m
        .lines()
        .find(|l| l.starts_with("polyhost_certificate_expiry_seconds{site=\"shop\"}"))
        .unwrap_or_else(|| panic!("no expiry metric for shop:\n{m}"));
    let secs: i64 = expiry.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        secs > 3600,
        "pebble's certificate should have time left: {expiry}"
    );
    assert!(status(&cfg, "shop").await.contains("certificate"));
    assert_eq!(orders_seen(&cfg), 1, "one order");
    polyhost.terminate().await;

    let polyhost = Binary::start(&cfg.main(), &[]).await;
    wait_log(
        &polyhost,
        "ACME: first look at the sites' certificates ordering=0",
    )
    .await;
    let again = served_chain(https, "shop.test").await;
    assert!(
        again[0] == chain[0],
        "the stored certificate is served after a restart"
    );
    assert_eq!(orders_seen(&cfg), 1, "a restart orders nothing");
    assert!(
        !polyhost.log().contains("ordering an ACME"),
        "{}",
        polyhost.log()
    );
    polyhost.terminate().await;
}

/// The CA cannot reach polyhost for HTTP-01 (pebble's HTTP port points
/// nowhere): the order fails with pebble's problem document, shown in
/// status; the site keeps serving plain HTTP (not redirected); the next
/// order waits for the backoff (pebble saw one order across several scans).
#[tokio::test]
async fn a_failed_challenge_is_shown_and_backed_off_and_plain_http_keeps_working() {
    require_pebble();
    let (http, https, nowhere) = (free_port(), free_port(), free_port());
    let cfg = TestConfig::new();
    let pebble = Pebble::start(cfg.path(), nowhere, https, None).await;
    write_main(&cfg, &pebble, http, https, pebble.port);
    cfg.static_site("shop", &["shop.test"], "[tls]\nacme = true");
    let polyhost = Binary::start(&cfg.main(), &[]).await;
    let shown = wait_status(&cfg, "shop", "acme error").await;
    assert!(
        shown.contains("urn:ietf:params:acme:error:"),
        "the CA's problem type: {shown}"
    );
    let r = common::get(polyhost.addr, "shop.test", "/").await;
    assert_eq!(
        r.status, 200,
        "plain HTTP is served while there is no certificate"
    );
    // Several scans (every 2 s) later, still the one order.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(orders_seen(&cfg), 1, "orders pebble saw");
    assert_eq!(
        polyhost
            .log()
            .matches("ordering an ACME certificate")
            .count(),
        1
    );
    polyhost.terminate().await;
}

/// No CA listening: the error is shown and retried only after the backoff.
#[tokio::test]
async fn an_unreachable_ca_is_shown_and_backed_off() {
    require_pebble();
    let (http, https, no_ca) = (free_port(), free_port(), free_port());
    let cfg = TestConfig::new();
    let pebble = Pebble::start(cfg.path(), http, https, None).await;
    write_main(&cfg, &pebble, http, https, no_ca);
    cfg.static_site("shop", &["shop.test"], "[tls]\nacme = true");
    let polyhost = Binary::start(&cfg.main(), &[]).await;
    let shown = wait_status(&cfg, "shop", "acme error").await;
    assert!(shown.contains("account"), "{shown}");
    assert_eq!(
        common::get(polyhost.addr, "shop.test", "/").await.status,
        200
    );
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        polyhost
            .log()
            .matches("ordering an ACME certificate")
            .count(),
        1,
        "{}",
        polyhost.log()
    );
    assert_eq!(orders_seen(&cfg), 0);
    polyhost.terminate().await;
}

/// pebble issues 40 s certificates: the default `renew_before` (a third of
/// the lifetime) renews in the background; new handshakes get the new
/// certificate while a connection made with the old one keeps working.
#[tokio::test]
async fn a_short_lived_certificate_is_renewed_without_dropping_connections() {
    require_pebble();
    let (http, https) = (free_port(), free_port());
    let cfg = TestConfig::new();
    let pebble = Pebble::start(cfg.path(), http, https, Some(40)).await;
    write_main(&cfg, &pebble, http, https, pebble.port);
    cfg.static_site("shop", &["shop.test"], "[tls]\nacme = true");
    let polyhost = Binary::start(&cfg.main(), &[]).await;
    let first = served_chain(https, "shop.test").await;
    let addr = format!("127.0.0.1:{https}").parse().unwrap();
    let old = tls_connect(addr, "shop.test", &["http/1.1"]).await.unwrap();
    assert!(served_cert(&old) == first[0].to_vec());
    let mut old = h1_over(old).await;
    let req = || common::request("GET", "shop.test", "/");
    assert_eq!(send_h1(&mut old, req()).await.status, 200);
    let mut renewed = None;
    for _ in 0..900 {
        let chain = served_chain(https, "shop.test").await;
        if chain[0] != first[0] {
            renewed = Some(chain);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let renewed = renewed.unwrap_or_else(|| panic!("not renewed; log:\n{}", polyhost.log()));
    verify(&renewed, pebble.root().await, "shop.test");
    assert_eq!(
        send_h1(&mut old, req()).await.status,
        200,
        "the old connection"
    );
    let orders = orders_seen(&cfg);
    assert!((2..=3).contains(&orders), "orders pebble saw: {orders}");
    polyhost.terminate().await;
}

/// `challenges = ["tls-alpn-01"]`, pebble's HTTP-01 port pointing nowhere
/// and its TLS-ALPN-01 port at polyhost's TLS listener: the certificate is
/// issued through the `acme-tls/1` handshake and served.
#[tokio::test]
async fn tls_alpn01_certificate_is_issued_and_served() {
    require_pebble();
    let (http, https, nowhere) = (free_port(), free_port(), free_port());
    let cfg = TestConfig::new();
    let pebble = Pebble::start(cfg.path(), nowhere, https, None).await;
    write_main(&cfg, &pebble, http, https, pebble.port);
    cfg.main_extra("challenges = [\"tls-alpn-01\"]");
    cfg.static_site("alpn", &["alpn.test"], "[tls]\nacme = true");
    let polyhost = Binary::start(&cfg.main(), &[]).await;
    let chain = served_chain(https, "alpn.test").await;
    verify(&chain, pebble.root().await, "alpn.test");
    assert_eq!(orders_seen(&cfg), 1);
    // Ordinary clients never negotiate acme-tls/1.
    let addr = format!("127.0.0.1:{https}").parse().unwrap();
    let tls = tls_connect(addr, "alpn.test", &["h2", "http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    polyhost.terminate().await;
}

/// pebble requires external account binding: without `eab_*` the account
/// is rejected (status shows the CA's problem, no order); with them (the
/// file holding the key made private) the certificate is issued.
#[tokio::test]
async fn external_account_binding_is_required_and_used() {
    require_pebble();
    const KID: &str = "kid-1";
    const KEY: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let (http, https) = (free_port(), free_port());
    let cfg = TestConfig::new();
    let pebble = Pebble::start_with(cfg.path(), http, https, None, Some((KID, KEY))).await;
    write_main(&cfg, &pebble, http, https, pebble.port);
    cfg.static_site("shop", &["shop.test"], "[tls]\nacme = true");
    let polyhost = Binary::start(&cfg.main(), &[]).await;
    let shown = wait_status(&cfg, "shop", "acme error").await;
    assert!(shown.contains("externalAccountRequired"), "{shown}");
    assert_eq!(orders_seen(&cfg), 0);
    polyhost.terminate().await;

    cfg.main_extra(&format!("eab_kid = \"{KID}\"\neab_hmac_key = \"{KEY}\""));
    let main = cfg.main();
    std::fs::set_permissions(&main, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let polyhost = Binary::start(&main, &[]).await;
    let chain = served_chain(https, "shop.test").await;
    verify(&chain, pebble.root().await, "shop.test");
    polyhost.terminate().await;
}
