//! Issue 25 against a real ACME CA: Debian's `pebble`, with
//! `pebble-challtestsrv` as its DNS (every name → 127.0.0.1) and its
//! HTTP-01 port pointed at polyhost's plain listener. A site with
//! `[tls] acme = true` gets a certificate over HTTP-01 (answered by the
//! router from memory, also though the site redirects to https), is served
//! over HTTPS with the chain pebble issued (verified with pebble's root),
//! and a restarted polyhost orders nothing. pebble must be installed
//! (`scripts/setup.sh`): without it the tests fail saying so.

mod acme_support;
mod common;

use std::time::Duration;

use acme_support::*;
use common::front::{h1_over, send_h1, served_cert, tls_connect};
use common::{Binary, TestConfig};

#[tokio::test]
async fn http01_certificate_is_issued_served_and_kept_across_a_restart() {
    require_pebble();
    let (http, https) = (free_port(), free_port());
    let cfg = TestConfig::new();
    let pebble = Pebble::start(cfg.path(), http, https, None).await;
    // Two roots, pebble's second: every one of the list is trusted (an
    // unrelated root first, in a file of two; the public roots besides).
    let unrelated = unrelated_root("Unrelated Root A") + &unrelated_root("Unrelated Root B");
    cfg.write("unrelated-roots.pem", &unrelated);
    write_main_with_roots(
        &cfg,
        &pebble,
        http,
        https,
        pebble.port,
        &["unrelated-roots.pem", "pebble-listener.pem"],
    );
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

/// `ca_roots_only` with a root that did not sign pebble's endpoint: the
/// account cannot be made, and the status says why (the TLS cause).
#[tokio::test]
async fn a_ca_outside_ca_roots_is_refused_and_the_cause_shown() {
    require_pebble();
    let (http, https) = (free_port(), free_port());
    let cfg = TestConfig::new();
    let pebble = Pebble::start(cfg.path(), http, https, None).await;
    cfg.write("unrelated-root.pem", &unrelated_root("Unrelated Root"));
    write_main_with_roots(
        &cfg,
        &pebble,
        http,
        https,
        pebble.port,
        &["unrelated-root.pem"],
    );
    cfg.main_extra("ca_roots_only = true");
    cfg.static_site("shop", &["shop.test"], "[tls]\nacme = true");
    let polyhost = Binary::start(&cfg.main(), &[]).await;
    let shown = wait_status(&cfg, "shop", "acme error").await;
    assert!(shown.contains("UnknownIssuer"), "{shown}");
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
