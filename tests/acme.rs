//! `[tls] acme = true` (issue 25), the part that needs no CA: `check`
//! refuses a wildcard host or a `cert`/`key` with it; a site whose
//! certificate was not issued yet is served over plain HTTP (not
//! redirected) and its handshakes fail; a certificate stored under
//! `state_dir/acme/certs/SITE/` is loaded at start and served.

mod common;

use common::front::{self_signed, served_cert, tls_connect, Front};
use common::TestConfig;

fn acme_site(cfg: &TestConfig, name: &str, hosts: &[&str], tls_extra: &str) {
    cfg.static_site(name, hosts, &format!("[tls]\nacme = true\n{tls_extra}"));
}

fn error_text(cfg: &TestConfig) -> String {
    polyhost::config::load(&cfg.main())
        .expect_err("config should be invalid")
        .to_string()
}

#[test]
fn check_refuses_a_wildcard_host_and_cert_or_key_with_acme() {
    let cfg = TestConfig::new();
    acme_site(&cfg, "wild", &["a.test", "*.wild.test"], "");
    let text = error_text(&cfg);
    assert!(
        text.contains("hosts[1]") && text.contains("DNS-01"),
        "{text}"
    );

    let cfg = TestConfig::new();
    acme_site(
        &cfg,
        "both",
        &["both.test"],
        "cert = \"x.pem\"\nkey = \"x.key\"",
    );
    let text = error_text(&cfg);
    assert!(
        text.contains("tls.cert") && text.contains("tls.key") && text.contains("acme = true"),
        "{text}"
    );

    let cfg = TestConfig::new();
    cfg.main_extra("[acme]\ndirectory = \"not a url\"\nemail = \"nobody\"");
    let text = error_text(&cfg);
    assert!(
        text.contains("acme.directory") && text.contains("acme.email"),
        "{text}"
    );

    let cfg = TestConfig::new();
    cfg.main_extra("[acme]\neab_kid = \"kid-1\"");
    let text = error_text(&cfg);
    assert!(text.contains("acme.eab_hmac_key"), "{text}");

    // The HMAC key is a secret: a file others can read is refused.
    let cfg = TestConfig::new();
    std::fs::set_permissions(
        cfg.main(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    cfg.main_extra("[acme]\neab_kid = \"kid-1\"\neab_hmac_key = \"c2VjcmV0\"");
    let text = error_text(&cfg);
    assert!(
        text.contains("acme.eab_hmac_key") && text.contains("private"),
        "{text}"
    );
}

#[test]
fn acme_defaults_to_lets_encrypt_and_takes_a_test_ca() {
    let cfg = TestConfig::new();
    acme_site(&cfg, "site", &["site.test"], "");
    let loaded = cfg.load();
    assert_eq!(
        loaded.server.acme.directory,
        "https://acme-v02.api.letsencrypt.org/directory"
    );
    let cfg = TestConfig::new();
    cfg.write("roots/pebble.pem", &self_signed(&["ca.test"]).cert_pem);
    cfg.main_extra("[acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\nemail = \"ops@example.test\"\nca_roots = [\"roots/pebble.pem\"]\nrenew_before = \"10d\"");
    let acme = cfg.load().server.acme;
    assert_eq!(acme.directory, "https://127.0.0.1:14000/dir");
    assert_eq!(acme.email.as_deref(), Some("ops@example.test"));
    assert!(acme.ca_roots[0].ends_with("roots/pebble.pem"));
    assert!(
        !acme.ca_roots_only,
        "extra roots by default, not only these"
    );
    assert_eq!(
        acme.renew_before,
        Some(std::time::Duration::from_secs(10 * 86400))
    );
}

#[test]
fn ca_roots_takes_several_files_of_several_roots_and_names_a_bad_one() {
    let cfg = TestConfig::new();
    cfg.write("roots/one.pem", &self_signed(&["one.test"]).cert_pem);
    let two = self_signed(&["two.test"]).cert_pem + &self_signed(&["three.test"]).cert_pem;
    cfg.write("roots/two.pem", &two);
    cfg.main_extra(
        "[acme]\nca_roots = [\"roots/one.pem\", \"roots/two.pem\"]\nca_roots_only = true",
    );
    let acme = cfg.load().server.acme;
    assert_eq!(acme.ca_roots.len(), 2, "{:?}", acme.ca_roots);
    assert!(
        acme.ca_roots[0].ends_with("roots/one.pem") && acme.ca_roots[1].ends_with("roots/two.pem")
    );
    assert!(acme.ca_roots_only);
    assert_eq!(
        polyhost::config::read_roots(&acme.ca_roots[1])
            .unwrap()
            .len(),
        2
    );

    // Every bad file is named with its key: no certificate, not PEM, missing.
    let cfg = TestConfig::new();
    cfg.write("roots/one.pem", &self_signed(&["one.test"]).cert_pem);
    cfg.write("roots/key-only.pem", &self_signed(&["k.test"]).key_pem);
    cfg.write(
        "roots/broken.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    cfg.main_extra("[acme]\nca_roots = [\"roots/one.pem\", \"roots/key-only.pem\", \"roots/broken.pem\", \"roots/missing.pem\"]");
    let text = error_text(&cfg);
    assert!(!text.contains("acme.ca_roots[0]"), "{text}");
    assert!(
        text.contains("acme.ca_roots[1]")
            && text.contains("no certificate in")
            && text.contains("key-only.pem"),
        "{text}"
    );
    assert!(
        text.contains("acme.ca_roots[2]") && text.contains("broken.pem"),
        "{text}"
    );
    assert!(
        text.contains("acme.ca_roots[3]") && text.contains("missing.pem"),
        "{text}"
    );

    let cfg = TestConfig::new();
    cfg.main_extra("[acme]\nca_roots_only = true");
    let text = error_text(&cfg);
    assert!(text.contains("acme.ca_roots_only"), "{text}");
}

#[tokio::test]
async fn without_its_certificate_a_site_is_served_over_http_and_refuses_handshakes() {
    let cfg = TestConfig::new();
    acme_site(&cfg, "new", &["new.test"], "");
    // Not the default site's certificate either: the name is the new site's.
    cfg.tls_site(
        "fallback",
        &["fallback.test"],
        "default = true",
        "",
        &self_signed(&["fallback.test"]),
    );
    let front = Front::start(&cfg, vec![]).await;
    assert!(tls_connect(front.https, "fallback.test", &[]).await.is_ok());
    let r = common::get(front.http, "new.test", "/").await;
    assert_eq!(r.status, 200, "plain HTTP must be served, not redirected");
    assert!(tls_connect(front.https, "new.test", &[]).await.is_err());
    front.stop().await;
}

#[tokio::test]
async fn a_stored_certificate_is_loaded_at_start_and_served() {
    let cfg = TestConfig::new();
    acme_site(&cfg, "kept", &["kept.test"], "");
    let cert = self_signed(&["kept.test"]);
    let state_dir = cfg.load().server.state_dir;
    let dir = state_dir.join("acme/certs/kept");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), &cert.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &cert.key_pem).unwrap();
    let front = Front::start(&cfg, vec![]).await;
    let tls = tls_connect(front.https, "kept.test", &[]).await.unwrap();
    assert!(served_cert(&tls) == cert.der, "not the stored certificate");
    let r = common::get(front.http, "kept.test", "/").await;
    assert_eq!(
        r.status, 301,
        "with a certificate, plain HTTP is redirected"
    );
    front.stop().await;
}

/// `[acme] on_demand`: `ask` is required (an http:// URL), the rate is
/// parsed with its default, and the on-demand keys need `on_demand = true`.
#[test]
fn on_demand_settings_are_checked_and_have_defaults() {
    let check = |acme: &str| {
        let cfg = TestConfig::new();
        cfg.main_extra(&format!("[acme]\n{acme}"));
        cfg.static_site(
            "panel",
            &["panel.test"],
            "default = true\n[tls]\non_demand = true",
        );
        polyhost::config::load(&cfg.main()).map_err(|e| e.to_string())
    };
    let config = check("on_demand = true\nask = \"http://127.0.0.1:8500/allowed\"").unwrap();
    let on_demand = config.server.acme.on_demand.expect("on");
    assert_eq!(on_demand.ask, "http://127.0.0.1:8500/allowed");
    assert_eq!(
        (on_demand.rate_count, on_demand.rate_per.as_secs()),
        (10, 60)
    );
    assert_eq!(on_demand.retry.as_secs(), 600);
    assert_eq!((on_demand.waiting, on_demand.concurrency), (64, 8));
    assert_eq!(on_demand.ask_timeout.as_secs(), 5);
    let set = check(
        "on_demand = true\nask = \"http://a/\"\non_demand_waiting = 3\non_demand_concurrency = 2\nask_timeout = \"20s\"",
    )
    .unwrap()
    .server
    .acme
    .on_demand
    .expect("on");
    assert_eq!((set.waiting, set.concurrency), (3, 2));
    assert_eq!(set.ask_timeout.as_secs(), 20);
    let panel = config.sites.values().next().unwrap();
    assert!(panel
        .tls
        .as_ref()
        .is_some_and(|t| t.on_demand && t.pair.is_none()));

    for (acme, key, says) in [
        ("on_demand = true", "acme.ask", "missing"),
        (
            "on_demand = true\nask = \"https://panel/allowed\"",
            "acme.ask",
            "http://",
        ),
        (
            "on_demand = true\nask = \"http://a/\"\non_demand_rate = \"10 per min\"",
            "acme.on_demand_rate",
            "not a rate",
        ),
        (
            "on_demand = true\nask = \"http://a/\"\non_demand_rate = \"0/min\"",
            "acme.on_demand_rate",
            "not a rate",
        ),
        (
            "ask = \"http://a/\"",
            "acme.ask",
            "only with on_demand = true",
        ),
        (
            "on_demand = true\nask = \"http://a/\"\non_demand_waiting = 0",
            "acme.on_demand_waiting",
            "out of range",
        ),
        (
            "on_demand = true\nask = \"http://a/\"\non_demand_concurrency = -1",
            "acme.on_demand_concurrency",
            "out of range",
        ),
        (
            "on_demand = true\nask = \"http://a/\"\nask_timeout = \"1m\"",
            "acme.ask_timeout",
            "out of range",
        ),
        (
            "on_demand_waiting = 5",
            "acme.on_demand_waiting",
            "only with on_demand = true",
        ),
    ] {
        let text = check(acme).expect_err(acme);
        assert!(text.contains(key) && text.contains(says), "{acme}: {text}");
    }
}
