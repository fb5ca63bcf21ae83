//! TLS termination: the rustls server configuration (TLS 1.2+, rustls's safe
//! default suites, ALPN `h2` and `http/1.1`) and certificate choice by SNI.
//!
//! Certificates live in the routing table
//! ([`RoutingTable::certificate_for`](super::table::RoutingTable::certificate_for),
//! loaded with the configuration), and
//! the resolver reads the *current* table at each handshake: swapping in a
//! new table (a reload) serves new certificates to new connections while
//! established ones keep their session. This module reads the table; the
//! table knows nothing of it.
//!
//! Choice: the site the SNI name routes to (exact, then longest wildcard,
//! then the default site, exactly as for `Host`) if it has `[tls]`, else the
//! default site's certificate; without either the handshake is refused.
//!
//! On-demand TLS ([`accept`]): the ClientHello is read first
//! (`LazyConfigAcceptor`); a name that needs an on-demand certificate
//! (`RoutingTable::on_demand_name`) and has none in [`OnDemandCerts`] is
//! asked of the [`OnDemandSource`] (the supervisor, over the privsep link,
//! or `crate::acme` in one process) while the handshake waits, at most
//! [`ON_DEMAND_BUDGET`]; then the handshake goes on, and the resolver finds
//! the certificate (or none: the handshake fails cleanly).
//!
//! What a scanner's handshakes cost here, not in the supervisor: a name the
//! source refused is refused by the router alone for as long as the source
//! said (`OnDemandError::Refused::retry`; at most [`REFUSED_NAMES`] names,
//! the least recently refused forgotten first), and at most
//! `acme.on_demand_waiting` handshakes wait for an answer at once (more are
//! refused at once). Both are counted (`metrics::on_demand::ROUTER_ON_DEMAND`).
//! A source that does not answer (the link broke) leaves the certificate
//! held. None of it is on the path of a name a site lists.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use lru::LruCache;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::table::SharedTable;
use crate::config::crypto_provider;

/// Resolves certificates against whatever table is current.
struct TableResolver(SharedTable);

impl fmt::Debug for TableResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TableResolver")
    }
}

impl ResolvesServerCert for TableResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(cert) = self.acme_tls_alpn(&hello) {
            return Some(cert);
        }
        let table = self.0.load();
        if let Some(name) = table.on_demand_name(hello.server_name()) {
            return ON_DEMAND.get(&name);
        }
        let cert = table.certificate_for(hello.server_name());
        if cert.is_none() {
            tracing::debug!(
                sni = hello.server_name().unwrap_or("-"),
                "no certificate for this name and no default site certificate; refusing the handshake"
            );
        }
        cert
    }
}

/// The ALPN protocol of ACME's TLS-ALPN-01 validation (RFC 8737).
const ACME_TLS: &[u8] = b"acme-tls/1";

impl TableResolver {
    /// The TLS-ALPN-01 challenge certificate for a validation handshake
    /// (one that offers `acme-tls/1` alone) naming a name being validated.
    fn acme_tls_alpn(&self, hello: &ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut alpn = hello.alpn()?;
        if alpn.next() != Some(ACME_TLS) || alpn.next().is_some() {
            return None;
        }
        let name = hello.server_name()?.to_ascii_lowercase();
        let table = self.0.load();
        let pair = table.acme_challenges.tls_alpn01.get(&name)?;
        Some(pair.certified().clone())
    }
}

/// The rustls configuration of every TLS listener.
pub fn server_config(table: SharedTable) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(TableResolver(table)));
    // `acme-tls/1` last: chosen only by a client that offers nothing else
    // (an ACME validation), which then gets the challenge certificate.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS.to_vec()];
    Ok(Arc::new(config))
}

/// How long a handshake waits for an on-demand certificate (the ask call
/// and the whole ACME order); past it, the handshake fails.
pub const ON_DEMAND_BUDGET: Duration = Duration::from_secs(30);
/// How long the router serves an on-demand certificate before asking its
/// source again (which answers from memory): renewals are pushed
/// ([`on_demand_renewed`]); this catches one pushed while no router ran.
const ON_DEMAND_REFRESH: Duration = Duration::from_secs(600);
/// The most names the router remembers as refused (least recently
/// refused forgotten first): a scanner's names cost a few hundred bytes
/// each, and a forgotten one is only asked again.
const REFUSED_NAMES: usize = 4096;
/// The default of `acme.on_demand_waiting` until a configuration says.
const DEFAULT_WAITING: usize = 64;

/// Why an [`OnDemandSource`] gave no certificate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OnDemandError {
    /// The source refused the name; `retry`: how long it will go on
    /// refusing it (the router refuses it alone meanwhile), `None` when
    /// that may change at any moment (a rate limit).
    #[error("{why}")]
    Refused {
        why: String,
        retry: Option<Duration>,
    },
    /// No answer (the link broke, polyhost stops): what is held stays.
    #[error("{0}")]
    Unavailable(String),
}

/// A source's answer.
pub type OnDemandAnswer = Result<crate::config::LoadedPair, OnDemandError>;

/// Where on-demand certificates come from: given a name (and the client
/// whose handshake asks, whose share of `acme.on_demand_rate` it spends),
/// its certificate (issued now if need be), or why not.
pub trait OnDemandSource: Send + Sync {
    fn certificate(
        &self,
        name: String,
        client: Option<IpAddr>,
    ) -> BoxFuture<'static, OnDemandAnswer>;
}

/// A transport that knows its client's address (the on-demand share is
/// per client).
pub trait PeerIp {
    fn peer_ip(&self) -> Option<IpAddr>;
}

impl PeerIp for tokio::net::TcpStream {
    fn peer_ip(&self) -> Option<IpAddr> {
        self.peer_addr().ok().map(|a| a.ip())
    }
}

impl<I: PeerIp> PeerIp for super::conn::TrackedIo<I> {
    fn peer_ip(&self) -> Option<IpAddr> {
        self.get_ref().peer_ip()
    }
}

/// The on-demand certificates this process serves, by name; the names its
/// source refused, until when; the handshakes waiting for an answer; and
/// the source of new ones (set by whoever runs the router: `privsep` or
/// the one-process `polyhost serve`).
///
/// Invariants: a name is asked of the source only when it is not refused
/// here (until the source's `retry`) and fewer than `max_waiting`
/// handshakes wait; only a refusal drops a held certificate.
pub struct OnDemandCerts {
    certs: RwLock<HashMap<String, (Arc<CertifiedKey>, Instant)>>,
    refused: Mutex<LruCache<String, Instant>>,
    waiting: AtomicUsize,
    max_waiting: AtomicUsize,
    source: RwLock<Option<Arc<dyn OnDemandSource>>>,
}

static ON_DEMAND: LazyLock<OnDemandCerts> = LazyLock::new(OnDemandCerts::new);

/// From now on, on-demand certificates come from `source`.
pub fn set_on_demand_source(source: Arc<dyn OnDemandSource>) {
    *ON_DEMAND.source.write().unwrap_or_else(|p| p.into_inner()) = Some(source);
}

/// From now on at most `max` handshakes wait for an on-demand answer at
/// once (`acme.on_demand_waiting`).
pub fn set_on_demand_waiting(max: usize) {
    ON_DEMAND.max_waiting.store(max.max(1), Ordering::Relaxed);
}

/// `name`'s certificate was renewed: new handshakes get `pair`.
pub fn on_demand_renewed(name: &str, pair: &crate::config::LoadedPair) {
    ON_DEMAND.keep(name.to_owned(), pair);
}

/// A place among the handshakes waiting for an answer, given back on drop.
/// By hand rather than a `tokio::sync::Semaphore`: the bound changes with
/// the configuration, which a semaphore's permits do not follow downwards.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl OnDemandCerts {
    fn new() -> OnDemandCerts {
        OnDemandCerts {
            certs: RwLock::default(),
            refused: Mutex::new(LruCache::new(
                NonZeroUsize::new(REFUSED_NAMES).unwrap_or(NonZeroUsize::MIN),
            )),
            waiting: AtomicUsize::new(0),
            max_waiting: AtomicUsize::new(DEFAULT_WAITING),
            source: RwLock::default(),
        }
    }

    fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.read().unwrap_or_else(|p| p.into_inner());
        certs.get(name).map(|(c, _)| c.clone())
    }

    fn fresh(&self, name: &str) -> bool {
        let certs = self.certs.read().unwrap_or_else(|p| p.into_inner());
        certs
            .get(name)
            .is_some_and(|(_, at)| at.elapsed() < ON_DEMAND_REFRESH)
    }

    fn keep(&self, name: String, pair: &crate::config::LoadedPair) {
        self.lock_refused().pop(&name);
        let mut certs = self.certs.write().unwrap_or_else(|p| p.into_inner());
        certs.insert(name, (pair.certified().clone(), Instant::now()));
    }

    fn lock_refused(&self) -> std::sync::MutexGuard<'_, LruCache<String, Instant>> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the source refused `name` and refuses it still.
    fn refused_now(&self, name: &str) -> bool {
        let mut refused = self.lock_refused();
        match refused.peek(name) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                refused.pop(name);
                false
            }
            None => false,
        }
    }

    /// A place among the waiting handshakes, unless `max_waiting` wait.
    fn wait_slot(&self) -> Option<Waiting<'_>> {
        let max = self.max_waiting.load(Ordering::Relaxed);
        self.waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Waiting(&self.waiting))
    }

    /// How many handshakes wait for an answer now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Asks the source for `name`'s certificate (for a handshake of
    /// `client`) and keeps the answer: a certificate is held, a refusal
    /// drops the one held (the source answers from memory for every name it
    /// holds, so it refuses only a name whose certificate it dropped) and
    /// is remembered for its `retry`; no answer changes nothing.
    async fn fetch(&self, name: String, client: Option<IpAddr>) -> Result<(), OnDemandError> {
        let source = self
            .source
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let source = source.ok_or_else(|| {
            OnDemandError::Unavailable("on-demand TLS is not available in this process".into())
        })?;
        match source.certificate(name.clone(), client).await {
            Ok(pair) => {
                self.keep(name, &pair);
                Ok(())
            }
            Err(e) => {
                if let OnDemandError::Refused { retry, .. } = &e {
                    self.refuse(name, *retry);
                }
                Err(e)
            }
        }
    }

    fn refuse(&self, name: String, retry: Option<Duration>) {
        self.certs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        let until = retry.and_then(|r| Instant::now().checked_add(r));
        if let Some(until) = until {
            self.lock_refused().put(name, until);
        }
    }

    /// Gets `name` a certificate for a handshake of `client` if it may be
    /// asked for now (see the invariants), waiting at most
    /// [`ON_DEMAND_BUDGET`]; the outcome is logged and counted.
    async fn certify(&self, name: String, client: Option<IpAddr>) {
        use crate::metrics::on_demand::{OnDemandStats, ROUTER_ON_DEMAND};
        if self.refused_now(&name) {
            OnDemandStats::count(&ROUTER_ON_DEMAND.refused_recently);
            return;
        }
        let Some(_waiting) = self.wait_slot() else {
            OnDemandStats::count(&ROUTER_ON_DEMAND.too_many_waiting);
            tracing::debug!(name, "too many handshakes wait for on-demand certificates (acme.on_demand_waiting); refusing this one");
            return;
        };
        match tokio::time::timeout(ON_DEMAND_BUDGET, self.fetch(name.clone(), client)).await {
            Ok(Ok(())) => {}
            // Debug: a scanner's names would flood the log (metrics count them).
            Ok(Err(why)) => tracing::debug!(name, "no on-demand certificate: {why}"),
            Err(_) => tracing::info!(
                name,
                "no on-demand certificate within {ON_DEMAND_BUDGET:?}; failing the handshake"
            ),
        }
    }
}

/// How many handshakes wait for an on-demand certificate now (metrics).
pub fn on_demand_waiting() -> usize {
    ON_DEMAND.waiting()
}

/// Why [`accept`] failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake not done within header_timeout")]
    Timeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A TLS handshake on `io` with `config`, each step bounded by `timeout`;
/// an on-demand name is certified first (see the module doc).
pub async fn accept<IO: AsyncRead + AsyncWrite + Unpin + PeerIp>(
    config: Arc<ServerConfig>,
    table: &SharedTable,
    io: IO,
    timeout: Duration,
) -> Result<TlsStream<IO>, HandshakeError> {
    use tokio::time::timeout as within;
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = within(timeout, acceptor)
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    if let Some(name) = on_demand_wanted(table, &start.client_hello()) {
        // Only here: a name no site lists (never on the path of one that does).
        let client = start.io.peer_ip();
        ON_DEMAND.certify(name, client).await;
    }
    within(timeout, start.into_stream(config))
        .await
        .map_err(|_| HandshakeError::Timeout)?
        .map_err(HandshakeError::Io)
}

/// The name this handshake needs an on-demand certificate for, unless one
/// is held (fresh) or it is an ACME validation (`acme-tls/1` alone).
fn on_demand_wanted(table: &SharedTable, hello: &ClientHello<'_>) -> Option<String> {
    if hello
        .alpn()
        .is_some_and(|mut a| a.next() == Some(ACME_TLS) && a.next().is_none())
    {
        return None;
    }
    let name = table.load().on_demand_name(hello.server_name())?;
    (!ON_DEMAND.fresh(&name)).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadedPair;

    fn pair(name: &str) -> LoadedPair {
        let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        LoadedPair::from_pem(&c.cert.pem(), &c.signing_key.serialize_pem()).unwrap()
    }

    /// Answers every question with the next of `answers` (the last again
    /// when they run out) and counts the questions.
    struct Scripted {
        answers: Mutex<Vec<OnDemandAnswer>>,
        asked: AtomicUsize,
    }

    impl OnDemandSource for Scripted {
        fn certificate(&self, _: String, _: Option<IpAddr>) -> BoxFuture<'static, OnDemandAnswer> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            let mut answers = self.answers.lock().unwrap();
            let answer = match answers.len() {
                1 => answers[0].clone(),
                _ => answers.remove(0),
            };
            Box::pin(async move { answer })
        }
    }

    fn with_source(answers: Vec<OnDemandAnswer>) -> (OnDemandCerts, Arc<Scripted>) {
        let source = Arc::new(Scripted {
            answers: Mutex::new(answers),
            asked: AtomicUsize::new(0),
        });
        let certs = OnDemandCerts::new();
        *certs.source.write().unwrap() = Some(source.clone());
        (certs, source)
    }

    fn refused(retry: Option<Duration>) -> OnDemandAnswer {
        Err(OnDemandError::Refused {
            why: "denied".into(),
            retry,
        })
    }

    #[tokio::test]
    async fn no_answer_keeps_the_certificate_held_and_a_refusal_drops_it() {
        let held = pair("a.customer.test");
        let (certs, _) = with_source(vec![
            Ok(held.clone()),
            Err(OnDemandError::Unavailable("the supervisor is gone".into())),
            refused(None),
        ]);
        certs.certify("a.customer.test".into(), None).await;
        assert!(certs.get("a.customer.test").is_some());
        certs.certify("a.customer.test".into(), None).await;
        let kept = certs
            .get("a.customer.test")
            .expect("kept after a link error");
        assert!(Arc::ptr_eq(&kept, held.certified()));
        certs.certify("a.customer.test".into(), None).await;
        assert!(
            certs.get("a.customer.test").is_none(),
            "dropped on a refusal"
        );
    }

    #[tokio::test]
    async fn a_refused_name_is_refused_here_for_as_long_as_the_source_said() {
        let (certs, source) = with_source(vec![refused(Some(Duration::from_secs(600)))]);
        for _ in 0..5 {
            certs.certify("no.customer.test".into(), None).await;
        }
        assert_eq!(source.asked.load(Ordering::Relaxed), 1);
        // Expired: asked again.
        certs
            .lock_refused()
            .put("no.customer.test".into(), Instant::now());
        certs.certify("no.customer.test".into(), None).await;
        assert_eq!(source.asked.load(Ordering::Relaxed), 2);
        // A refusal without a time (a rate limit) is not remembered.
        let (certs, source) = with_source(vec![refused(None)]);
        for _ in 0..3 {
            certs.certify("new.customer.test".into(), None).await;
        }
        assert_eq!(source.asked.load(Ordering::Relaxed), 3);
        // A transient error is not remembered either.
        let (certs, source) = with_source(vec![Err(OnDemandError::Unavailable("gone".into()))]);
        for _ in 0..3 {
            certs.certify("new.customer.test".into(), None).await;
        }
        assert_eq!(source.asked.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn the_refused_names_are_bounded() {
        let (certs, _) = with_source(vec![refused(None)]);
        for i in 0..REFUSED_NAMES + 100 {
            certs.refuse(format!("n{i}.test"), Some(Duration::from_secs(60)));
        }
        assert_eq!(certs.lock_refused().len(), REFUSED_NAMES);
        assert!(!certs.refused_now("n0.test"), "the oldest forgotten");
        assert!(certs.refused_now(&format!("n{}.test", REFUSED_NAMES + 99)));
    }

    #[test]
    fn at_most_max_waiting_handshakes_wait() {
        let certs = OnDemandCerts::new();
        certs.max_waiting.store(2, Ordering::Relaxed);
        let a = certs.wait_slot().unwrap();
        let _b = certs.wait_slot().unwrap();
        assert!(certs.wait_slot().is_none());
        assert_eq!(certs.waiting(), 2);
        drop(a);
        assert!(certs.wait_slot().is_some());
        assert_eq!(certs.waiting(), 1, "a slot is given back on drop");
    }
}
