//! ACME (RFC 8555) issuance for sites with `[tls] acme = true`, in the
//! supervisor (which holds the account key and the sites' keys): one task
//! ([`spawn`]) looks every few seconds for ACME sites without a
//! certificate, orders one per site with `instant-acme`, answers HTTP-01
//! through the routing table (`Server::change_acme_challenges`: the router
//! serves `/.well-known/acme-challenge/` from memory), stores the chain and
//! key under `state_dir/acme/certs/SITE/` and reloads, so the new
//! certificate reaches the router like any changed configuration.
//!
//! A certificate is renewed the same way once its renewal time
//! ([`renew_at`]) has come; the reload swaps it for new handshakes while
//! open connections keep the one they were made with. ARI (RFC 9773) is
//! not used yet.
//!
//! Invariants: the account key is created once per CA directory and kept
//! in `state_dir/acme/account.json` (0600); a site that failed is not
//! ordered again before its backoff has passed (never a tight loop); a
//! stored certificate is loaded at start (`config::SiteTls::locate_acme`),
//! so a restart orders nothing.

mod account;
mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use instant_acme::{
    AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};
use tokio_util::sync::CancellationToken;

use crate::app::Server;
use crate::config::{AcmeConfig, HostPattern, SiteConfig, SiteName};

/// How often the task looks for sites that need a certificate (no CA
/// traffic unless one does).
const SCAN_EVERY: Duration = Duration::from_secs(2);
/// The first wait after a failure; doubled after each further one.
const FIRST_BACKOFF: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

/// Starts the issuance task; it ends with `shutdown`.
pub fn spawn(server: Arc<Server>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut backoff = Backoff::default();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(SCAN_EVERY) => {}
            }
            scan(&server, &mut backoff).await;
        }
    });
}

/// Per site: when it may be ordered again, and the wait after that.
#[derive(Default)]
struct Backoff {
    sites: HashMap<SiteName, (Instant, Duration)>,
    /// The first scan was logged.
    scanned: bool,
}

impl Backoff {
    fn ready(&self, site: &SiteName) -> bool {
        self.sites
            .get(site)
            .is_none_or(|(at, _)| Instant::now() >= *at)
    }

    fn failed(&mut self, site: &SiteName) -> Duration {
        let wait = self
            .sites
            .get(site)
            .map_or(FIRST_BACKOFF, |(_, w)| (*w * 2).min(MAX_BACKOFF));
        self.sites
            .insert(site.clone(), (Instant::now() + wait, wait));
        wait
    }
}

/// Orders a certificate for every ACME site that has none (and may).
async fn scan(server: &Arc<Server>, backoff: &mut Backoff) {
    let config = server.config().await;
    let wanting: Vec<Arc<SiteConfig>> = config
        .sites
        .values()
        .filter(|s| needs_order(s, &config.server.acme))
        .filter(|s| backoff.ready(&s.name))
        .cloned()
        .collect();
    if !backoff.scanned {
        backoff.scanned = true;
        tracing::info!(
            ordering = wanting.len(),
            "ACME: first look at the sites' certificates"
        );
    }
    for site in wanting {
        match issue(server, &config.server.acme, &config.server.state_dir, &site).await {
            Ok(()) => {
                backoff.sites.remove(&site.name);
                server.set_acme_error(&site.name.to_string(), None);
                tracing::info!(site = %site.name, "ACME certificate issued");
                if let Err(e) = server.reload().await {
                    tracing::error!(site = %site.name, "the new certificate is stored but the reload failed: {e}");
                }
            }
            Err(e) => {
                let wait = backoff.failed(&site.name);
                server.set_acme_error(&site.name.to_string(), Some(e.clone()));
                tracing::error!(site = %site.name, retry_in_s = wait.as_secs(), "ACME order failed: {e}");
            }
        }
    }
}

/// Whether ACME site `site` has no certificate, or its renewal time has come.
fn needs_order(site: &SiteConfig, acme: &AcmeConfig) -> bool {
    let Some(tls) = site.tls.as_ref().filter(|t| t.acme) else {
        return false;
    };
    let Some((start, end)) = tls.pair.as_ref().and_then(|p| p.validity()) else {
        return true;
    };
    unix_now() >= renew_at(&site.name.to_string(), start, end, acme.renew_before)
}

/// When to renew a certificate valid from `start` to `end` (Unix
/// seconds): `renew_before` (default a third of the lifetime) before
/// `end`, earlier by a jitter of up to a tenth of that, fixed per site and
/// certificate (so sites issued together do not renew together, and every
/// scan computes the same time).
fn renew_at(site: &str, start: i64, end: i64, renew_before: Option<Duration>) -> i64 {
    use std::hash::{Hash, Hasher};
    let before = renew_before.map_or((end - start) / 3, |d| d.as_secs() as i64);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (site, end).hash(&mut h);
    let spread = (before / 10).max(1) as u64;
    end - before - (h.finish() % spread) as i64
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The names a site's certificate covers: its exact hosts.
fn names(site: &SiteConfig) -> Vec<Identifier> {
    site.hosts
        .iter()
        .filter_map(|h| match h {
            HostPattern::Exact(name) => Some(Identifier::Dns(name.clone())),
            HostPattern::Wildcard(_) => None,
        })
        .collect()
}

/// One order for `site`, answered over HTTP-01; stores the result.
async fn issue(
    server: &Server,
    acme: &AcmeConfig,
    state_dir: &std::path::Path,
    site: &SiteConfig,
) -> Result<(), String> {
    let names = names(site);
    if names.is_empty() {
        return Err("the site lists no host name to certify".into());
    }
    tracing::info!(site = %site.name, names = names.len(), directory = acme.directory, "ordering an ACME certificate");
    let account = account::load_or_create(acme, state_dir).await?;
    let mut order = account
        .new_order(&NewOrder::new(&names))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let tokens = answer(server, &acme.challenges, &mut order).await;
    let status = match &tokens {
        Ok(_) => order
            .poll_ready(&RetryPolicy::default())
            .await
            .map_err(|e| format!("waiting for validation: {e}")),
        Err(e) => Err(e.clone()),
    };
    if let Ok(published) = &tokens {
        server
            .change_acme_challenges(|c| {
                for p in published {
                    match p {
                        Published::Http01(token) => {
                            c.http01.remove(token);
                        }
                        Published::TlsAlpn01(name) => {
                            c.tls_alpn01.remove(name);
                        }
                    }
                }
            })
            .await;
    }
    if status? != OrderStatus::Ready {
        return Err(format!(
            "validation failed: {}",
            order_problem(&mut order).await
        ));
    }
    let key_pem = order
        .finalize()
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain_pem = order
        .poll_certificate(&RetryPolicy::default())
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    store::save(state_dir, &site.name.to_string(), &chain_pem, &key_pem)
        .map_err(|e| format!("storing the certificate: {e}"))
}

/// An answer the router was given, to take back when the order is done.
enum Published {
    Http01(String),
    TlsAlpn01(String),
}

/// Publishes the answer of every pending authorization, with the first of
/// `challenges` the CA offers for it, and tells the CA to validate.
async fn answer(
    server: &Server,
    challenges: &[String],
    order: &mut instant_acme::Order,
) -> Result<Vec<Published>, String> {
    let mut published = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
        if authz.status == AuthorizationStatus::Valid {
            continue;
        }
        let name = authz.identifier().to_string();
        let kind = challenges
            .iter()
            .filter_map(|c| match c.as_str() {
                "http-01" => Some(ChallengeType::Http01),
                "tls-alpn-01" => Some(ChallengeType::TlsAlpn01),
                _ => None,
            })
            .find(|k| authz.challenges.iter().any(|c| c.r#type == *k))
            .ok_or_else(|| format!("{name}: the CA offers none of acme.challenges"))?;
        let mut challenge = authz.challenge(kind.clone()).ok_or("challenge vanished")?;
        let key_auth = challenge.key_authorization();
        let p = if kind == ChallengeType::Http01 {
            let (token, answer) = (challenge.token.clone(), key_auth.as_str().to_owned());
            server
                .change_acme_challenges(|c| {
                    c.http01.insert(token.clone(), answer);
                })
                .await;
            Published::Http01(token)
        } else {
            let pair = alpn_certificate(&name, key_auth.digest().as_ref())?;
            let key = name.to_ascii_lowercase();
            server
                .change_acme_challenges(|c| {
                    c.tls_alpn01.insert(key.clone(), pair);
                })
                .await;
            Published::TlsAlpn01(key)
        };
        published.push(p);
        challenge
            .set_ready()
            .await
            .map_err(|e| format!("challenge ready: {e}"))?;
    }
    Ok(published)
}

/// The TLS-ALPN-01 certificate for `name` (RFC 8737): self-signed, with
/// the acmeIdentifier extension holding the key authorization's digest.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<crate::config::LoadedPair, String> {
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    crate::config::LoadedPair::from_pem(&cert.pem(), &key.serialize_pem())
}

/// What the CA said about a failed order: each authorization's challenge
/// error (the CA's problem document), else the order's status.
async fn order_problem(order: &mut instant_acme::Order) -> String {
    let mut problems = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        for ch in &authz.challenges {
            if let Some(e) = &ch.error {
                problems.push(format!("{}: {e}", authz.identifier()));
            }
        }
    }
    if problems.is_empty() {
        return format!("order is {:?}", order.state().status);
    }
    problems.join("; ")
}
