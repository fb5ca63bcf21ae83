//! ACME Renewal Information (RFC 9773) against Debian's `pebble` 2.4.0,
//! which has no ARI: polyhost talks to a small HTTPS proxy in this test
//! (with pebble's own listener certificate, so `ca_roots` is unchanged)
//! that adds `renewalInfo` to pebble's directory, answers the renewal
//! information itself with the window the test chose (and `Retry-After`),
//! echoes `replaces` in new orders (as an ARI CA must), and forwards
//! everything else to the real pebble (the `Host` header kept, so pebble's
//! URLs point at the proxy).
//!
//! A window in the past renews the certificate at once (its new order
//! names the old one in `replaces`); a window in the future holds the
//! renewal even past the time `renew_before` would have chosen.

mod acme_support;
mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use acme_support::*;
use base64::Engine;
use bytes::Bytes;
use common::{Binary, TestConfig};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

/// What the proxy answers and saw.
struct ProxyState {
    port: u16,
    pebble: u16,
    /// The suggested window, Unix seconds.
    window: (i64, i64),
    renewal_info_calls: AtomicUsize,
    /// The `replaces` of every new order (`None`: without).
    orders: Mutex<Vec<Option<String>>>,
}

async fn start_proxy(cfg: &TestConfig, pebble: u16, window: (i64, i64)) -> Arc<ProxyState> {
    let dir = cfg.path();
    let cert = std::fs::read_to_string(dir.join("pebble.pem")).unwrap();
    let key = std::fs::read_to_string(dir.join("pebble.key")).unwrap();
    let tls = Arc::new(single_cert(&cert, &key));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let state = Arc::new(ProxyState {
        port: listener.local_addr().unwrap().port(),
        pebble,
        window,
        renewal_info_calls: AtomicUsize::new(0),
        orders: Mutex::new(Vec::new()),
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let shared = state.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, state) = (acceptor.clone(), shared.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    state
}

fn single_cert(cert: &str, key: &str) -> rustls::ServerConfig {
    use rustls_pki_types::pem::PemObject;
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut config =
        rustls::ServerConfig::builder_with_provider(polyhost::config::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

fn rfc3339(t: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(t as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The certificate's serial as ARI's identifier spells it (base64url of
/// its DER contents).
fn serial_b64(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cert.tbs_certificate.raw_serial())
}

async fn handle(
    state: Arc<ProxyState>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    if path.starts_with("/renewal-info/") {
        state.renewal_info_calls.fetch_add(1, Ordering::SeqCst);
        let body = serde_json::json!({"suggestedWindow": {
            "start": rfc3339(state.window.0), "end": rfc3339(state.window.1)}});
        return Ok(hyper::Response::builder()
            .header("content-type", "application/json")
            .header("retry-after", "60")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap());
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let new_order = parts.method == hyper::Method::POST && path == "/order-plz";
    let replaces = new_order.then(|| replaces_of(&body)).flatten();
    if new_order {
        state.orders.lock().unwrap().push(replaces.clone());
    }
    let (status, headers, mut reply) = forward(state.pebble, parts, body).await;
    if path == "/dir" {
        reply = with_field(
            &reply,
            "renewalInfo",
            &format!("https://localhost:{}/renewal-info", state.port),
        );
    }
    if let (Some(r), true) = (&replaces, status == hyper::StatusCode::CREATED) {
        reply = with_field(&reply, "replaces", r);
    }
    let mut res = hyper::Response::builder().status(status);
    for (k, v) in headers.iter() {
        if k != hyper::header::CONTENT_LENGTH && k != hyper::header::TRANSFER_ENCODING {
            res = res.header(k, v);
        }
    }
    Ok(res.body(Full::new(reply)).unwrap())
}

/// The `replaces` in a JWS request's payload.
fn replaces_of(body: &[u8]) -> Option<String> {
    let jws: serde_json::Value = serde_json::from_slice(body).ok()?;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jws["payload"].as_str()?)
        .ok()?;
    let payload: serde_json::Value = serde_json::from_slice(&payload).ok()?;
    payload["replaces"].as_str().map(str::to_owned)
}

/// `json` (an object) with `key` set to `value`.
fn with_field(json: &Bytes, key: &str, value: &str) -> Bytes {
    let mut v: serde_json::Value = serde_json::from_slice(json).expect("a JSON object");
    v[key] = serde_json::Value::String(value.to_owned());
    Bytes::from(v.to_string())
}

/// The request sent to pebble as it came (its `Host` kept): the answer.
async fn forward(
    pebble: u16,
    parts: http::request::Parts,
    body: Bytes,
) -> (hyper::StatusCode, http::HeaderMap, Bytes) {
    let addr = format!("127.0.0.1:{pebble}").parse().unwrap();
    let tls = common::front::tls_connect(addr, "localhost", &["http/1.1"])
        .await
        .expect("pebble");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let res = send
        .send_request(hyper::Request::from_parts(parts, Full::new(body)))
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (parts.status, parts.headers, body)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// pebble (certificates valid `validity` s), the proxy with `window`
/// (relative to now), polyhost's CA the proxy, one ACME site `shop`.
async fn setup(
    validity: Option<u64>,
    window: (i64, i64),
) -> (TestConfig, Pebble, Arc<ProxyState>, u16) {
    require_pebble();
    let (http, https) = (free_port(), free_port());
    let cfg = TestConfig::new();
    let pebble = Pebble::start(cfg.path(), http, https, validity).await;
    let now = unix_now();
    let proxy = start_proxy(&cfg, pebble.port, (now + window.0, now + window.1)).await;
    write_main(&cfg, &pebble, http, https, proxy.port);
    cfg.static_site("shop", &["shop.test"], "[tls]\nacme = true");
    (cfg, pebble, proxy, https)
}

#[tokio::test]
async fn a_window_in_the_past_renews_at_once_naming_the_old_certificate() {
    let (cfg, pebble, proxy, https) = setup(None, (-3600, -60)).await;
    let polyhost = Binary::start(&cfg.main(), &[]).await;
    let first = served_chain(https, "shop.test").await;
    let mut renewed = None;
    for _ in 0..600 {
        let chain = served_chain(https, "shop.test").await;
        if chain[0] != first[0] {
            renewed = Some(chain);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let renewed = renewed.unwrap_or_else(|| {
        panic!(
            "not renewed (renewal-info calls: {}); log:\n{}",
            proxy.renewal_info_calls.load(Ordering::SeqCst),
            polyhost.log()
        )
    });
    verify(&renewed, pebble.root().await, "shop.test");
    let orders = proxy.orders.lock().unwrap().clone();
    assert_eq!(orders[0], None, "the first order replaces nothing");
    // The CA keeps saying "now": each new certificate is renewed in turn;
    // the one first served is named by the order that replaced it.
    let serial = serial_b64(&first[0]);
    assert!(
        orders
            .iter()
            .flatten()
            .any(|r| r.ends_with(&format!(".{serial}"))),
        "no order replaces serial {serial}: {orders:?}"
    );
    polyhost.terminate().await;
}

#[tokio::test]
async fn a_window_in_the_future_holds_the_renewal_that_renew_before_would_make() {
    // 12 s certificates: renew_before (a third) would renew after ~8 s.
    let (cfg, _pebble, proxy, https) = setup(Some(12), (86400, 2 * 86400)).await;
    let polyhost = Binary::start(&cfg.main(), &[]).await;
    let first = served_chain(https, "shop.test").await;
    let issued = unix_now();
    // Until the certificate is past its renew_before time and ARI was asked.
    while unix_now() < issued + 14 || proxy.renewal_info_calls.load(Ordering::SeqCst) == 0 {
        assert!(
            unix_now() < issued + 120,
            "renewal information never fetched:\n{}",
            polyhost.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let orders = proxy.orders.lock().unwrap().clone();
    assert_eq!(orders, [None], "only the first order:\n{}", polyhost.log());
    let again = served_chain(https, "shop.test").await;
    assert!(again[0] == first[0], "the certificate was not replaced");
    polyhost.terminate().await;
}
