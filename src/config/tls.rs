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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Answer plain-HTTP requests with a 301 to `https://`.
    pub redirect_http: bool,
    /// The pair as validation read it from `cert` and `key`.
    pub pair: LoadedPair,
}

/// A certificate chain and its key, loaded and checked to belong together.
/// Two are equal when their chains are (a key that matches a certificate
/// is that certificate's key); `Debug` shows no key material.
#[derive(Clone)]
pub struct LoadedPair(pub Arc<CertifiedKey>);

impl PartialEq for LoadedPair {
    fn eq(&self, other: &Self) -> bool {
        self.0.cert == other.0.cert
    }
}

impl Eq for LoadedPair {}

impl std::fmt::Debug for LoadedPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoadedPair({} certificates)", self.0.cert.len())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub redirect_http: Option<bool>,
}

/// The crypto provider polyhost uses everywhere (passed explicitly, so a
/// second provider linked in by another crate can never be picked by accident).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Which file of a pair was at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, (TlsKey, String)> {
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
            Ok(Arc::new(certified))
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
        Ok(pair) => LoadedPair(pair),
        Err((which, msg)) => {
            errs.add(which.key_name(), msg);
            return None;
        }
    };
    Some(SiteTls {
        cert,
        key,
        redirect_http: raw.redirect_http.unwrap_or(true),
        pair,
    })
}
