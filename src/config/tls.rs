//! A site's `[tls]` table: its certificate chain and key (PEM files written
//! by the panel) and whether plain HTTP is redirected to HTTPS. Loading a
//! pair ([`load_certified_key`]) is shared by validation (so `polyhost
//! check`, `serve` and every reload refuse a missing, unreadable or
//! mismatched pair, naming `tls.cert` or `tls.key`); the pair validation
//! loaded is kept in [`SiteTls::pair`], so the files are read once per load
//! of the configuration and the router never reads them (a routing table is
//! built without I/O). A renewed certificate is a changed configuration.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use super::error::FileErrors;

/// `[tls]` of a site file, validated.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SiteTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Answer plain-HTTP requests with a 301 to `https://` (only while the
    /// site has a certificate: `pair` is set).
    pub redirect_http: bool,
    /// The certificate is issued by polyhost's ACME client (`crate::acme`):
    /// `cert` and `key` are its files under `state_dir` (see [`acme_files`]).
    pub acme: bool,
    /// The pair as validation read it from `cert` and `key`; `None` only
    /// for an `acme` site that has no certificate yet (its handshakes fail).
    pub pair: Option<LoadedPair>,
    /// `on_demand = true`: names this site serves through a wildcard host
    /// or as the default site get a certificate issued during their first
    /// handshake (`[acme] on_demand`, `crate::acme::on_demand`).
    #[serde(default)]
    pub on_demand: bool,
}

/// Where the certificate chain and key of ACME site `site` are kept.
pub fn acme_files(state_dir: &Path, site: &str) -> (PathBuf, PathBuf) {
    let dir = state_dir.join("acme").join("certs").join(site);
    (dir.join("cert.pem"), dir.join("key.pem"))
}

impl SiteTls {
    /// For an `acme` site: points `cert` and `key` at its files under
    /// `state_dir` and loads them if a certificate was issued before.
    pub fn locate_acme(&mut self, state_dir: &Path, site: &str) {
        if !self.acme {
            return;
        }
        let (cert, key) = acme_files(state_dir, site);
        self.pair = match load_certified_key(&cert, &key) {
            Ok(pair) => Some(pair),
            Err((_, msg)) if cert.exists() => {
                tracing::warn!(
                    site,
                    "stored ACME certificate unusable, a new one is ordered: {msg}"
                );
                None
            }
            Err(_) => None,
        };
        (self.cert, self.key) = (cert, key);
    }
}

/// A certificate chain and its key, loaded and checked to belong together.
/// Two are equal when their chains are (a key that matches a certificate
/// is that certificate's key); `Debug` shows no key material.
///
/// It keeps the DER bytes it was built from so that the configuration can
/// be handed to the router process (`privsep`), which rebuilds the signing
/// key with the same provider; serialised, it is the chain and the key's
/// PKCS#8/PKCS#1/SEC1 DER, so it travels only over the supervisor's own
/// socket pair, never to disk or a log.
#[derive(Clone)]
pub struct LoadedPair {
    pub key: Arc<CertifiedKey>,
    der: Arc<PairDer>,
}

/// What a [`LoadedPair`] was loaded from, as DER.
#[derive(serde::Serialize, serde::Deserialize)]
struct PairDer {
    chain: Vec<Vec<u8>>,
    key: Vec<u8>,
}

impl LoadedPair {
    /// The key and chain as rustls uses them.
    pub fn certified(&self) -> &Arc<CertifiedKey> {
        &self.key
    }

    /// When the site's certificate (the chain's first) expires, in Unix
    /// seconds; `None` if it cannot be parsed.
    pub fn not_after(&self) -> Option<i64> {
        self.validity().map(|(_, end)| end)
    }

    /// The certificate's validity (not before, not after), Unix seconds.
    pub fn validity(&self) -> Option<(i64, i64)> {
        let leaf = self.der.chain.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
        let v = cert.validity();
        Some((v.not_before.timestamp(), v.not_after.timestamp()))
    }

    /// A pair from PEM text (a generated certificate, never a file).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, String> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .map(|c| c.map(|c| c.as_ref().to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
        LoadedPair::from_der(PairDer {
            chain,
            key: key.secret_der().to_vec(),
        })
    }

    fn from_der(der: PairDer) -> Result<Self, String> {
        let chain: Vec<CertificateDer<'static>> = der
            .chain
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        let key = PrivateKeyDer::try_from(der.key.clone()).map_err(|e| e.to_string())?;
        let signing = crypto_provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| e.to_string())?;
        Ok(LoadedPair {
            key: Arc::new(CertifiedKey::new(chain, signing)),
            der: Arc::new(der),
        })
    }
}

impl serde::Serialize for LoadedPair {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.der.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for LoadedPair {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let der = PairDer::deserialize(d)?;
        LoadedPair::from_der(der).map_err(serde::de::Error::custom)
    }
}

impl PartialEq for LoadedPair {
    fn eq(&self, other: &Self) -> bool {
        self.key.cert == other.key.cert
    }
}

impl Eq for LoadedPair {}

impl std::fmt::Debug for LoadedPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoadedPair({} certificates)", self.key.cert.len())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub redirect_http: Option<bool>,
    pub acme: Option<bool>,
    pub on_demand: Option<bool>,
}

/// The crypto provider polyhost uses everywhere (passed explicitly, so a
/// second provider linked in by another crate can never be picked by accident).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Which file of a pair was at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TlsKey {
    Cert,
    Key,
}

impl TlsKey {
    pub fn key_name(self) -> &'static str {
        match self {
            TlsKey::Cert => "tls.cert",
            TlsKey::Key => "tls.key",
        }
    }
}

/// Reads a certificate chain and its private key and checks they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<LoadedPair, (TlsKey, String)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| (TlsKey::Cert, format!("cannot read {}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            (
                TlsKey::Cert,
                format!("{} is not a PEM certificate chain: {e}", cert.display()),
            )
        })?;
    if chain.is_empty() {
        return Err((
            TlsKey::Cert,
            format!(
                "{} holds no certificate (expected PEM \"BEGIN CERTIFICATE\")",
                cert.display()
            ),
        ));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        (
            TlsKey::Key,
            format!("cannot read a PEM private key from {}: {e}", key.display()),
        )
    })?;
    let der_bytes = PairDer {
        chain: chain.iter().map(|c| c.as_ref().to_vec()).collect(),
        key: der.secret_der().to_vec(),
    };
    let provider = crypto_provider();
    let signing = provider.key_provider.load_private_key(der).map_err(|e| {
        (
            TlsKey::Key,
            format!("{}: unusable private key: {e}", key.display()),
        )
    })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(LoadedPair {
                key: Arc::new(certified),
                der: Arc::new(der_bytes),
            })
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err((
            TlsKey::Key,
            format!(
                "{} does not match the certificate in {} (was the key or the certificate renewed alone?)",
                key.display(),
                cert.display()
            ),
        )),
        Err(e) => Err((TlsKey::Cert, format!("{}: {e}", cert.display()))),
    }
}

pub(crate) fn validate_tls(raw: RawTls, base: &Path, errs: &mut FileErrors<'_>) -> Option<SiteTls> {
    let abs = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    if raw.acme == Some(true) {
        return validate_acme_tls(raw, errs);
    }
    if raw.on_demand == Some(true) && raw.cert.is_none() && raw.key.is_none() {
        // On-demand names only: the names the site lists get no certificate.
        return Some(SiteTls {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            redirect_http: raw.redirect_http.unwrap_or(true),
            acme: false,
            pair: None,
            on_demand: true,
        });
    }
    let cert = raw.cert.as_deref().map(abs);
    let key = raw.key.as_deref().map(abs);
    if cert.is_none() {
        errs.add(
            "tls.cert",
            "missing: [tls] needs cert = \"/path/to/fullchain.pem\"",
        );
    }
    if key.is_none() {
        errs.add(
            "tls.key",
            "missing: [tls] needs key = \"/path/to/privkey.pem\"",
        );
    }
    let (cert, key) = (cert?, key?);
    let pair = match load_certified_key(&cert, &key) {
        Ok(pair) => pair,
        Err((which, msg)) => {
            errs.add(which.key_name(), msg);
            return None;
        }
    };
    Some(SiteTls {
        cert,
        key,
        redirect_http: raw.redirect_http.unwrap_or(true),
        acme: false,
        pair: Some(pair),
        on_demand: raw.on_demand == Some(true),
    })
}

/// `[tls] acme = true`: no `cert` or `key` (the files are polyhost's own,
/// placed by [`SiteTls::locate_acme`]).
fn validate_acme_tls(raw: RawTls, errs: &mut FileErrors<'_>) -> Option<SiteTls> {
    for (key, given) in [("tls.cert", &raw.cert), ("tls.key", &raw.key)] {
        if given.is_some() {
            errs.add(
                key,
                "not with acme = true: polyhost obtains and stores the certificate itself (remove cert and key, or set acme = false)",
            );
        }
    }
    if raw.cert.is_some() || raw.key.is_some() {
        return None;
    }
    Some(SiteTls {
        cert: PathBuf::new(),
        key: PathBuf::new(),
        redirect_http: raw.redirect_http.unwrap_or(true),
        acme: true,
        pair: None,
        on_demand: raw.on_demand == Some(true),
    })
}
