//! On-demand TLS (`[acme] on_demand = true`), in the supervisor: a
//! handshake held by the router for a name that a site with
//! `[tls] on_demand = true` serves through a wildcard or as the default
//! site (`RoutingTable::on_demand_name`) asks [`certificate`] for it; the
//! answer is the stored certificate, or one issued now if the `ask`
//! endpoint allows the name (`GET ask?domain=NAME` → 200).
//!
//! Invariants (what keeps a scanner from making polyhost hammer the ask
//! endpoint or the CA):
//! - a name's issued certificate is kept in memory and under
//!   `state_dir/acme/on-demand/NAME/` (loaded at start): asked once;
//! - one attempt per name at a time (a per-name lock: the handshakes that
//!   wait behind one order share its result);
//! - a denied or failed name is not tried again for `on_demand_retry`;
//! - new names (ask calls) are limited server-wide by `on_demand_rate`
//!   (a token bucket holding at most `count` tokens); orders follow only
//!   allowed asks, so they are limited too;
//! - each client (an IPv4 address, an IPv6 /64: [`client_key`]) spends at
//!   most half of that rate (its own bucket of ⌈count/2⌉ tokens, refilled
//!   at ⌈count/2⌉ per period, taken with the server's), so one scanner
//!   cannot starve the others' new names; a client's bucket is forgotten
//!   once full again, so they number at most the clients that asked
//!   within one period;
//! - at most `on_demand_concurrency` new names are asked about or ordered
//!   at once; more are refused at once (not remembered).
//!
//! A refusal says how long it holds ([`Refusal::retry`]): the router
//! refuses the name alone meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use instant_acme::Identifier;

use crate::app::Server;
use crate::config::{AcmeConfig, LoadedPair, OnDemand};
use crate::metrics::on_demand::{OnDemandStats, ON_DEMAND};

/// The manager, once `crate::acme::spawn` made it (with `on_demand` on).
static MANAGER: OnceLock<Arc<Manager>> = OnceLock::new();

/// Told of every renewed certificate: the router of this process
/// (`router::tls::on_demand_renewed`), and a router process through the
/// privsep link ([`on_renewal`]).
type Listener = Box<dyn Fn(&str, &LoadedPair) + Send + Sync>;
static LISTENERS: Mutex<Vec<Listener>> = Mutex::new(Vec::new());

/// From now on `listener` is told of every renewed certificate.
pub fn on_renewal(listener: impl Fn(&str, &LoadedPair) + Send + Sync + 'static) {
    let mut listeners = LISTENERS.lock().unwrap_or_else(|p| p.into_inner());
    listeners.push(Box::new(listener));
}

fn renewed(name: &str, pair: &LoadedPair) {
    crate::router::tls::on_demand_renewed(name, pair);
    for listener in LISTENERS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        listener(name, pair);
    }
}

pub struct Manager {
    acme: AcmeConfig,
    config: OnDemand,
    state_dir: PathBuf,
    state: Mutex<State>,
    /// One lock per name being tried now.
    trying: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// `on_demand_concurrency` permits: one per ask call and order of a new name.
    busy: tokio::sync::Semaphore,
}

struct State {
    certs: BTreeMap<String, LoadedPair>,
    /// Names denied or failed: when, and why.
    refused: HashMap<String, (Instant, String)>,
    bucket: Bucket,
    /// Each client's share of the rate ([`client_key`]), while not full.
    clients: HashMap<IpAddr, Bucket>,
}

/// Why a name gets no certificate now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub why: String,
    /// How long the name goes on being refused (`on_demand_retry`, what is
    /// left of it); `None`: it may be tried again at any moment.
    pub retry: Option<Duration>,
}

impl Refusal {
    /// A refusal that may change at any moment.
    fn now(why: impl Into<String>) -> Refusal {
        Refusal {
            why: why.into(),
            retry: None,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// Whose share of the rate a handshake from `ip` spends: the address, or
/// for IPv6 its /64 (one host's usual allocation); an IPv4-mapped address
/// as IPv4.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// A client's share of a rate of `count`: half, rounded up.
fn share(count: u32) -> u32 {
    count.div_ceil(2)
}

/// A token bucket: `capacity` tokens, refilled at `capacity` per `per`.
/// By hand: one bucket taken under a lock already held, a dozen lines;
/// `governor` would bring its own clock and state types for it.
struct Bucket {
    capacity: f64,
    per: Duration,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(capacity: u32, per: Duration) -> Bucket {
        Bucket {
            capacity: f64::from(capacity),
            per,
            tokens: f64::from(capacity),
            at: Instant::now(),
        }
    }

    /// Takes a token if there is one (at `now`).
    fn take(&mut self, now: Instant) -> bool {
        if self.has(now) {
            self.tokens -= 1.0;
            return true;
        }
        false
    }

    /// Refills up to `now`; whether a token is there.
    fn has(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() / self.per.as_secs_f64();
        self.tokens = (self.tokens + refill * self.capacity).min(self.capacity);
        self.at = now;
        self.tokens >= 1.0
    }

    /// Refilled to its capacity (as good as a new one).
    fn full(&mut self, now: Instant) -> bool {
        self.has(now);
        self.tokens >= self.capacity
    }
}

/// Why [`State::take_token`] gave none.
#[derive(Debug, PartialEq, Eq)]
enum Spent {
    /// The server's bucket is empty.
    Server,
    /// The client's share is.
    Client,
}

impl State {
    /// Takes a token from the server's bucket and from `client`'s share
    /// (both or neither).
    fn take_token(
        &mut self,
        client: Option<IpAddr>,
        config: &OnDemand,
        now: Instant,
    ) -> Result<(), Spent> {
        let Some(client) = client.map(client_key) else {
            return self.bucket.take(now).then_some(()).ok_or(Spent::Server);
        };
        if !self.clients.get_mut(&client).is_none_or(|b| b.has(now)) {
            return Err(Spent::Client);
        }
        if !self.bucket.take(now) {
            return Err(Spent::Server);
        }
        // Made only with a server token taken: as many as those.
        self.clients.retain(|_, b| !b.full(now));
        let mut fresh = Bucket::new(share(config.rate_count), config.rate_per);
        fresh.at = now;
        self.clients.entry(client).or_insert(fresh).take(now);
        Ok(())
    }
}

/// Where on-demand certificate `name` is kept.
pub fn files(state_dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let dir = state_dir.join("acme").join("on-demand").join(name);
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Makes the manager (once) when `acme.on_demand` is on, with the
/// certificates stored before.
pub fn start(acme: &AcmeConfig, state_dir: &Path) -> Option<Arc<Manager>> {
    let config = acme.on_demand.clone()?;
    let manager = MANAGER.get_or_init(|| {
        let certs = load_stored(state_dir);
        for (name, pair) in &certs {
            ON_DEMAND.set_certificate(name, pair.not_after());
        }
        ON_DEMAND
            .enabled
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            certificates = certs.len(),
            "on-demand TLS: stored certificates loaded"
        );
        Arc::new(Manager {
            acme: acme.clone(),
            state: Mutex::new(State {
                certs,
                refused: HashMap::new(),
                bucket: Bucket::new(config.rate_count, config.rate_per),
                clients: HashMap::new(),
            }),
            busy: tokio::sync::Semaphore::new(config.concurrency),
            config,
            state_dir: state_dir.to_owned(),
            trying: Mutex::default(),
        })
    });
    Some(manager.clone())
}

/// The manager, if on-demand TLS is on and started.
pub fn manager() -> Option<Arc<Manager>> {
    MANAGER.get().cloned()
}

/// Every certificate under `state_dir/acme/on-demand/` that loads.
fn load_stored(state_dir: &Path) -> BTreeMap<String, LoadedPair> {
    let dir = state_dir.join("acme").join("on-demand");
    let mut certs = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let (cert, key) = files(state_dir, &name);
        match crate::config::load_certified_key(&cert, &key) {
            Ok(pair) => {
                certs.insert(name, pair);
            }
            Err((_, e)) => tracing::warn!(name, "on-demand certificate not loaded: {e}"),
        }
    }
    certs
}

/// The certificate for `name`, held or issued now, for a handshake of
/// `client` (see the module doc).
pub async fn certificate(
    server: &Server,
    name: String,
    client: Option<IpAddr>,
) -> Result<LoadedPair, Refusal> {
    let Some(manager) = manager() else {
        return Err(Refusal::now("on-demand TLS is off ([acme] on_demand)"));
    };
    manager.certificate(server, name, client).await
}

impl Manager {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn held(&self, name: &str) -> Option<LoadedPair> {
        self.lock().certs.get(name).cloned()
    }

    /// Every certificate held, by name.
    pub fn certificates(&self) -> BTreeMap<String, LoadedPair> {
        self.lock().certs.clone()
    }

    /// Why `name` is not tried now, if it was refused within `retry`
    /// (and for how long still).
    fn refused(&self, name: &str) -> Option<Refusal> {
        let state = self.lock();
        let (at, why) = state.refused.get(name)?;
        let left = self.config.retry.checked_sub(at.elapsed())?;
        Some(Refusal {
            why: why.clone(),
            retry: Some(left),
        })
    }

    fn refuse(&self, name: &str, why: String) -> Refusal {
        let retry = self.config.retry;
        let mut state = self.lock();
        state.refused.retain(|_, (at, _)| at.elapsed() < retry);
        state
            .refused
            .insert(name.to_owned(), (Instant::now(), why.clone()));
        Refusal {
            why,
            retry: Some(retry),
        }
    }

    async fn certificate(
        &self,
        server: &Server,
        name: String,
        client: Option<IpAddr>,
    ) -> Result<LoadedPair, Refusal> {
        if let Some(pair) = self.held(&name) {
            return Ok(pair);
        }
        // The router's word is not trusted: a DNS name (it becomes a
        // directory name and a query parameter), served on demand here.
        if rustls_pki_types::DnsName::try_from(name.as_str()).is_err() || name.contains('/') {
            return Err(Refusal::now(format!("{name:?} is not a DNS name")));
        }
        if server.table().load().on_demand_name(Some(&name)).as_ref() != Some(&name) {
            return Err(Refusal::now(format!(
                "no site with tls.on_demand serves {name}"
            )));
        }
        if let Some(why) = self.refused(&name) {
            return Err(why);
        }
        let lock = self
            .trying
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.clone())
            .or_default()
            .clone();
        let result = {
            let _one = lock.lock().await;
            self.try_name(server, &name, client).await
        };
        let mut trying = self.trying.lock().unwrap_or_else(|p| p.into_inner());
        // The map's and ours: nobody else waits on it.
        if Arc::strong_count(&lock) == 2 {
            trying.remove(&name);
        }
        result
    }

    /// Under `name`'s lock: held (by the attempt before), refused, or asked
    /// and ordered now (within `on_demand_concurrency`, spending a token
    /// of the server's rate and of `client`'s share).
    async fn try_name(
        &self,
        server: &Server,
        name: &str,
        client: Option<IpAddr>,
    ) -> Result<LoadedPair, Refusal> {
        if let Some(pair) = self.held(name) {
            return Ok(pair);
        }
        if let Some(refusal) = self.refused(name) {
            return Err(refusal);
        }
        let Ok(_busy) = self.busy.try_acquire() else {
            OnDemandStats::count(&ON_DEMAND.busy);
            return Err(Refusal::now(
                "too many new names asked about at once (acme.on_demand_concurrency)",
            ));
        };
        let spent = self.lock().take_token(client, &self.config, Instant::now());
        match spent {
            Ok(()) => {}
            Err(Spent::Server) => {
                OnDemandStats::count(&ON_DEMAND.rate_limited);
                return Err(Refusal::now("too many new names (acme.on_demand_rate)"));
            }
            Err(Spent::Client) => {
                OnDemandStats::count(&ON_DEMAND.client_limited);
                return Err(Refusal::now(
                    "this client asked for too many new names (its share of acme.on_demand_rate)",
                ));
            }
        }
        match ask(&self.config.ask, name, self.config.ask_timeout).await {
            Ok(true) => {
                OnDemandStats::count(&ON_DEMAND.allowed);
            }
            Ok(false) => {
                OnDemandStats::count(&ON_DEMAND.denied);
                // At most on_demand_rate lines: refusals are remembered.
                tracing::info!(name, "on-demand: acme.ask denies the name");
                return Err(self.refuse(name, format!("{name}: denied by acme.ask")));
            }
            Err(e) => {
                OnDemandStats::count(&ON_DEMAND.ask_errors);
                return Err(self.refuse(name, format!("{name}: acme.ask failed: {e}")));
            }
        }
        self.issue(server, name, None).await.map_err(|e| {
            tracing::error!(name, "on-demand ACME order failed: {e}");
            self.refuse(name, e)
        })
    }

    /// Renews `pair`, the certificate of `name`, if a site still serves
    /// the name on demand and `ask` still allows it; a denied name's
    /// certificate is dropped (memory and files), one no site serves on
    /// demand any more is left to expire.
    pub(super) async fn renew(
        &self,
        server: &Server,
        name: &str,
        pair: &LoadedPair,
    ) -> Result<(), String> {
        if server.table().load().on_demand_name(Some(name)).as_deref() != Some(name) {
            tracing::debug!(name, "not renewed: no site serves it on demand now");
            return Ok(());
        }
        match ask(&self.config.ask, name, self.config.ask_timeout).await {
            Ok(true) => {
                OnDemandStats::count(&ON_DEMAND.allowed);
                let new = self.issue(server, name, Some(pair)).await?;
                renewed(name, &new);
                Ok(())
            }
            Ok(false) => {
                OnDemandStats::count(&ON_DEMAND.denied);
                tracing::info!(
                    name,
                    "acme.ask denies it now: its on-demand certificate is dropped"
                );
                self.drop_certificate(name);
                self.refuse(name, format!("{name}: denied by acme.ask"));
                Ok(())
            }
            Err(e) => {
                OnDemandStats::count(&ON_DEMAND.ask_errors);
                Err(format!("acme.ask failed: {e}"))
            }
        }
    }

    fn drop_certificate(&self, name: &str) {
        self.lock().certs.remove(name);
        ON_DEMAND.set_certificate(name, None);
        let (cert, _) = files(&self.state_dir, name);
        if let Some(dir) = cert.parent() {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                tracing::warn!(name, "cannot remove {}: {e}", dir.display());
            }
        }
    }

    /// Orders a certificate for `name` (replacing `replaces`, ARI), keeps
    /// and stores it.
    pub(super) async fn issue(
        &self,
        server: &Server,
        name: &str,
        replaces: Option<&LoadedPair>,
    ) -> Result<LoadedPair, String> {
        OnDemandStats::count(&ON_DEMAND.orders);
        tracing::info!(name, "ordering an on-demand ACME certificate");
        let ids = [Identifier::Dns(name.to_owned())];
        let issued = super::order(server, &self.acme, &self.state_dir, &ids, replaces).await;
        let (chain_pem, key_pem) = issued.inspect_err(|_| {
            OnDemandStats::count(&ON_DEMAND.orders_failed);
        })?;
        let pair = LoadedPair::from_pem(&chain_pem, &key_pem)?;
        let (cert, key) = files(&self.state_dir, name);
        super::store::write_private(&key, key_pem.as_bytes())
            .and_then(|()| super::store::write_private(&cert, chain_pem.as_bytes()))
            .map_err(|e| format!("storing the certificate: {e}"))?;
        ON_DEMAND.set_certificate(name, pair.not_after());
        self.lock().certs.insert(name.to_owned(), pair.clone());
        tracing::info!(name, "on-demand ACME certificate issued");
        Ok(pair)
    }
}

/// The router's source in one process: the manager, called directly.
pub struct Local(pub std::sync::Weak<Server>);

impl crate::router::tls::OnDemandSource for Local {
    fn certificate(
        &self,
        name: String,
        client: Option<IpAddr>,
    ) -> futures_util::future::BoxFuture<'static, crate::router::tls::OnDemandAnswer> {
        use crate::router::tls::OnDemandError;
        let server = self.0.clone();
        // A task of its own: a handshake that stops waiting does not cancel
        // the order (a later handshake gets the certificate).
        let task = tokio::spawn(async move {
            let server = server
                .upgrade()
                .ok_or_else(|| OnDemandError::Unavailable("polyhost is stopping".into()))?;
            certificate(&server, name, client)
                .await
                .map_err(|r| OnDemandError::Refused {
                    why: r.why,
                    retry: r.retry,
                })
        });
        Box::pin(async move {
            task.await
                .map_err(|e| OnDemandError::Unavailable(e.to_string()))?
        })
    }
}

/// `GET ASK?domain=NAME`: whether the answer is 200 (bounded by
/// `timeout`, `acme.ask_timeout`). hyper's client connection by hand rather than a whole
/// HTTP client crate: one plain-HTTP GET to a local endpoint.
async fn ask(ask: &str, name: &str, timeout: Duration) -> Result<bool, String> {
    let sep = if ask.contains('?') { '&' } else { '?' };
    let uri: http::Uri = format!("{ask}{sep}domain={name}")
        .parse()
        .map_err(|e| format!("{ask}: {e}"))?;
    let status = tokio::time::timeout(timeout, get(&uri))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))??;
    Ok(status == http::StatusCode::OK)
}

async fn get(uri: &http::Uri) -> Result<http::StatusCode, String> {
    let host = uri.host().ok_or("no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let req = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "polyhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let res = send.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(res.status())
}

#[cfg(test)]
mod tests;
