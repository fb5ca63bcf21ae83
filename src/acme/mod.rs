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
//! open connections keep the one they were made with. When the CA offers
//! ACME Renewal Information (RFC 9773, [`ari`]), the window it suggests
//! decides instead, and the renewal's order names the old certificate.
//!
//! [`on_demand`]: certificates for names no site lists, issued while the
//! router holds the handshake; the same task renews them.
//!
//! Invariants: the account key is created once per CA directory and kept
//! in `state_dir/acme/account.json` (0600); a site that failed is not
//! ordered again before its backoff has passed (never a tight loop); a
//! stored certificate is loaded at start (`config::SiteTls::locate_acme`),
//! so a restart orders nothing.

mod account;
mod ari;
pub mod on_demand;
mod store;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use instant_acme::{
    AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};
use tokio_util::sync::CancellationToken;

use crate::app::Server;
use crate::config::{AcmeConfig, HostPattern, LoadedPair, SiteConfig};

/// How often the task looks for sites that need a certificate (no CA
/// traffic unless one does).
const SCAN_EVERY: Duration = Duration::from_secs(2);
/// The first wait after a failure; doubled after each further one.
const FIRST_BACKOFF: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

/// Starts the issuance task; it ends with `shutdown`. With `[acme]
/// on_demand`, also on-demand TLS ([`on_demand`]): its stored certificates
/// are loaded and, in one process, the router asks it directly.
pub fn spawn(server: Arc<Server>, shutdown: CancellationToken) {
    let settings = server.server_settings();
    if on_demand::start(&settings.acme, &settings.state_dir).is_some() {
        if let Some(on_demand) = &settings.acme.on_demand {
            crate::router::tls::set_on_demand_waiting(on_demand.waiting);
        }
        let local = on_demand::Local(Arc::downgrade(&server));
        crate::router::tls::set_on_demand_source(Arc::new(local));
    }
    tokio::spawn(async move {
        let mut task = Task::default();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(SCAN_EVERY) => {}
            }
            scan(&server, &mut task).await;
        }
    });
}

/// What the task keeps between scans.
#[derive(Default)]
struct Task {
    backoff: Backoff,
    ari: ari::Ari,
    /// The account, once loaded (ARI fetches need it), and when loading
    /// may be tried again after a failure.
    account: Option<instant_acme::Account>,
    account_retry: Option<Instant>,
}

/// Per certificate (a site's name, or `on-demand:NAME`): when it may be
/// ordered again, and the wait after that.
#[derive(Default)]
struct Backoff {
    sites: HashMap<String, (Instant, Duration)>,
    /// The first scan was logged.
    scanned: bool,
}

impl Backoff {
    fn ready(&self, key: &str) -> bool {
        self.sites
            .get(key)
            .is_none_or(|(at, _)| Instant::now() >= *at)
    }

    fn failed(&mut self, key: &str) -> Duration {
        let wait = self
            .sites
            .get(key)
            .map_or(FIRST_BACKOFF, |(_, w)| (*w * 2).min(MAX_BACKOFF));
        self.sites
            .insert(key.to_owned(), (Instant::now() + wait, wait));
        wait
    }
}

impl Task {
    /// Whether `pair` (of `label`) is due for renewal: at the time ARI
    /// suggests when the CA offers it, else `renew_before`.
    async fn due(
        &mut self,
        acme: &AcmeConfig,
        state_dir: &Path,
        label: &str,
        pair: &LoadedPair,
    ) -> bool {
        let Some((start, end)) = pair.validity() else {
            return true;
        };
        let fallback = renew_at(label, start, end, acme.renew_before);
        if !self.ari.unsupported() {
            if let Some(account) = self.account(acme, state_dir).await {
                if let Some(at) = self.ari.renew_at(&account, pair).await {
                    return unix_now() >= at;
                }
            }
        }
        unix_now() >= fallback
    }

    /// The account (loaded once; after a failure, not again before the backoff).
    async fn account(
        &mut self,
        acme: &AcmeConfig,
        state_dir: &Path,
    ) -> Option<instant_acme::Account> {
        if let Some(a) = &self.account {
            return Some(a.clone());
        }
        if self.account_retry.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        match account::load_or_create(acme, state_dir).await {
            Ok(a) => {
                self.account = Some(a.clone());
                Some(a)
            }
            Err(e) => {
                tracing::warn!("ACME account not loaded for renewal information: {e}");
                self.account_retry = Some(Instant::now() + FIRST_BACKOFF);
                None
            }
        }
    }
}

/// Orders a certificate for every ACME site that has none or is due for
/// renewal (and may), then renews the on-demand certificates that are due.
async fn scan(server: &Arc<Server>, task: &mut Task) {
    let config = server.config().await;
    let (acme, state_dir) = (&config.server.acme, &config.server.state_dir);
    let mut wanting: Vec<(Arc<SiteConfig>, Option<LoadedPair>)> = Vec::new();
    for site in config.sites.values() {
        let Some(tls) = site.tls.as_ref().filter(|t| t.acme) else {
            continue;
        };
        let label = site.name.to_string();
        if !task.backoff.ready(&label) {
            continue;
        }
        match &tls.pair {
            None => wanting.push((site.clone(), None)),
            Some(pair) if task.due(acme, state_dir, &label, pair).await => {
                wanting.push((site.clone(), Some(pair.clone())))
            }
            Some(_) => {}
        }
    }
    if !task.backoff.scanned {
        task.backoff.scanned = true;
        tracing::info!(
            ordering = wanting.len(),
            "ACME: first look at the sites' certificates"
        );
    }
    for (site, replaces) in wanting {
        order_for_site(server, task, acme, state_dir, &site, replaces).await;
    }
    renew_on_demand(server, task, acme, state_dir).await;
}

/// One site's order (new or renewal), its outcome recorded.
async fn order_for_site(
    server: &Arc<Server>,
    task: &mut Task,
    acme: &AcmeConfig,
    state_dir: &Path,
    site: &SiteConfig,
    replaces: Option<LoadedPair>,
) {
    let label = site.name.to_string();
    match issue(server, acme, state_dir, site, replaces.as_ref()).await {
        Ok(()) => {
            task.backoff.sites.remove(&label);
            if let Some(old) = &replaces {
                task.ari.forget(old);
            }
            server.set_acme_error(&label, None);
            tracing::info!(site = %site.name, "ACME certificate issued");
            if let Err(e) = server.reload().await {
                tracing::error!(site = %site.name, "the new certificate is stored but the reload failed: {e}");
            }
        }
        Err(e) => {
            let wait = task.backoff.failed(&label);
            server.set_acme_error(&label, Some(e.clone()));
            tracing::error!(site = %site.name, retry_in_s = wait.as_secs(), "ACME order failed: {e}");
        }
    }
}

/// Renews every on-demand certificate that is due (as for sites).
async fn renew_on_demand(
    server: &Arc<Server>,
    task: &mut Task,
    acme: &AcmeConfig,
    state_dir: &Path,
) {
    let Some(manager) = on_demand::manager() else {
        return;
    };
    for (name, pair) in manager.certificates() {
        let label = format!("on-demand:{name}");
        if !task.backoff.ready(&label) || !task.due(acme, state_dir, &label, &pair).await {
            continue;
        }
        match manager.renew(server, &name, &pair).await {
            Ok(()) => {
                task.backoff.sites.remove(&label);
                task.ari.forget(&pair);
            }
            Err(e) => {
                let wait = task.backoff.failed(&label);
                tracing::error!(
                    name,
                    retry_in_s = wait.as_secs(),
                    "on-demand certificate renewal failed: {e}"
                );
            }
        }
    }
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

/// One order for `site`; stores the result.
async fn issue(
    server: &Server,
    acme: &AcmeConfig,
    state_dir: &std::path::Path,
    site: &SiteConfig,
    replaces: Option<&LoadedPair>,
) -> Result<(), String> {
    let names = names(site);
    if names.is_empty() {
        return Err("the site lists no host name to certify".into());
    }
    tracing::info!(site = %site.name, names = names.len(), directory = acme.directory, "ordering an ACME certificate");
    let (chain_pem, key_pem) = order(server, acme, state_dir, &names, replaces).await?;
    store::save(state_dir, &site.name.to_string(), &chain_pem, &key_pem)
        .map_err(|e| format!("storing the certificate: {e}"))
}

/// The longest one order may take. instant-acme's retry policy bounds its
/// polls, not a request to the CA that stalls (a black-holed CA): a stuck
/// order would hold a site's turn, or an on-demand name's lock and every
/// handshake waiting on it, for ever.
const ORDER_MAX: Duration = Duration::from_secs(180);

/// One order for `names`, answered with the first of `acme.challenges`
/// the CA offers: the certificate chain and its key (PEM); given up after
/// [`ORDER_MAX`].
async fn order(
    server: &Server,
    acme: &AcmeConfig,
    state_dir: &std::path::Path,
    names: &[Identifier],
    replaces: Option<&LoadedPair>,
) -> Result<(String, String), String> {
    let unbounded = order_unbounded(server, acme, state_dir, names, replaces);
    tokio::time::timeout(ORDER_MAX, unbounded)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the order took over {} s (the CA does not answer); given up",
                ORDER_MAX.as_secs()
            ))
        })
}

async fn order_unbounded(
    server: &Server,
    acme: &AcmeConfig,
    state_dir: &std::path::Path,
    names: &[Identifier],
    replaces: Option<&LoadedPair>,
) -> Result<(String, String), String> {
    let account = account::load_or_create(acme, state_dir).await?;
    let id = replaces.and_then(ari::identifier);
    let new = match &id {
        Some(id) => NewOrder::new(names).replaces(id.clone()),
        None => NewOrder::new(names),
    };
    let mut order = match account.new_order(&new).await {
        // The CA has no ARI: an order without `replaces`.
        Err(instant_acme::Error::Unsupported(_)) if id.is_some() => {
            account.new_order(&NewOrder::new(names)).await
        }
        r => r,
    }
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
        withdraw(server, published).await;
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
    Ok((chain_pem, key_pem))
}

/// Takes back the answers an order published.
async fn withdraw(server: &Server, published: &[Published]) {
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
