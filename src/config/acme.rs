//! The server-level `[acme]` table: which ACME CA issues the certificates
//! of sites with `[tls] acme = true`, and how. Validated into
//! [`AcmeConfig`]; the table is optional (every key has a default), so a
//! site can ask for `acme = true` without it. Issuance itself is
//! `crate::acme`'s.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;

use super::error::FileErrors;

/// Let's Encrypt's production directory: the default CA.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `[acme]`, validated.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AcmeConfig {
    /// The CA's directory URL.
    pub directory: String,
    /// Contact address given to the CA when the account is created.
    pub email: Option<String>,
    /// PEM files of extra trust roots for the CA's HTTPS endpoint (a
    /// private or test CA), each holding one or more certificates, every
    /// one checked at load ([`read_roots`]). Trusted besides the public
    /// roots, or instead of them with `ca_roots_only`.
    pub ca_roots: Vec<PathBuf>,
    /// `ca_roots_only = true`: trust only `ca_roots` for the CA, not the
    /// public roots (needs `ca_roots`).
    #[serde(default)]
    pub ca_roots_only: bool,
    /// Renew this long before expiry; `None`: a third of the lifetime.
    pub renew_before: Option<std::time::Duration>,
    /// The challenge types polyhost may answer, preferred first:
    /// `"http-01"`, `"tls-alpn-01"`.
    pub challenges: Vec<String>,
    /// External account binding (`eab_kid`, `eab_hmac_key`): a secret, so
    /// never serialised (the router does not get it).
    #[serde(skip)]
    pub eab: Option<Eab>,
    /// On-demand TLS (`on_demand`, `ask`, `on_demand_rate`,
    /// `on_demand_retry`): `None` when `on_demand` is off.
    #[serde(default)]
    pub on_demand: Option<OnDemand>,
}

/// `[acme] on_demand = true`: certificates issued during the first
/// handshake for names that sites with `[tls] on_demand = true` serve
/// through a wildcard or as the default site (`crate::acme::on_demand`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OnDemand {
    /// `ask`: `GET ASK?domain=NAME` must answer 200 for NAME to be certified.
    pub ask: String,
    /// `on_demand_rate`: at most `count` new names (ask calls) per `per`,
    /// for the whole server.
    pub rate_count: u32,
    pub rate_per: std::time::Duration,
    /// `on_demand_retry`: how long a denied or failed name is not tried again.
    pub retry: std::time::Duration,
    /// `on_demand_waiting`: the most handshakes the router holds waiting
    /// for an on-demand answer at once (more are refused at once).
    #[serde(default = "default_waiting")]
    pub waiting: usize,
    /// `on_demand_concurrency`: the most new names the supervisor asks
    /// about or orders at once (more are refused at once).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// `ask_timeout`: how long an `ask` call may take (no answer within it
    /// refuses the name).
    #[serde(default = "default_ask_timeout")]
    pub ask_timeout: std::time::Duration,
}

/// The default of `on_demand_waiting`.
pub const ON_DEMAND_WAITING: usize = 64;
/// The default of `on_demand_concurrency`.
pub const ON_DEMAND_CONCURRENCY: usize = 8;

fn default_waiting() -> usize {
    ON_DEMAND_WAITING
}

fn default_concurrency() -> usize {
    ON_DEMAND_CONCURRENCY
}

/// The default of `ask_timeout`.
pub const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The longest `ask_timeout`: the router holds a handshake 30 s at most,
/// and the order still has to follow the answer.
const ASK_TIMEOUT_MAX: std::time::Duration = std::time::Duration::from_secs(25);

fn default_ask_timeout() -> std::time::Duration {
    ASK_TIMEOUT
}

/// The default of `on_demand_rate`.
pub const ON_DEMAND_RATE: &str = "10/min";
/// The default of `on_demand_retry`.
pub const ON_DEMAND_RETRY: std::time::Duration = std::time::Duration::from_secs(600);

/// An external account binding: the CA's key id and HMAC key (decoded).
#[derive(Clone, PartialEq, Eq)]
pub struct Eab {
    pub kid: String,
    pub hmac_key: Vec<u8>,
}

impl std::fmt::Debug for Eab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Eab({}, ***)", self.kid)
    }
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            directory: LETS_ENCRYPT.into(),
            email: None,
            ca_roots: Vec::new(),
            ca_roots_only: false,
            renew_before: None,
            challenges: vec!["http-01".into(), "tls-alpn-01".into()],
            eab: None,
            on_demand: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub directory: Option<String>,
    pub email: Option<String>,
    pub ca_roots: Option<Vec<String>>,
    pub ca_roots_only: Option<bool>,
    pub renew_before: Option<super::types::Scalar>,
    pub challenges: Option<Vec<String>>,
    pub eab_kid: Option<String>,
    pub eab_hmac_key: Option<String>,
    pub on_demand: Option<bool>,
    pub ask: Option<String>,
    pub on_demand_rate: Option<String>,
    pub on_demand_retry: Option<super::types::Scalar>,
    pub on_demand_waiting: Option<i64>,
    pub on_demand_concurrency: Option<i64>,
    pub ask_timeout: Option<super::types::Scalar>,
}

pub(crate) fn validate_acme(raw: RawAcme, base: &Path, errs: &mut FileErrors<'_>) -> AcmeConfig {
    let mut acme = AcmeConfig {
        on_demand: validate_on_demand(&raw, errs),
        ..AcmeConfig::default()
    };
    if let Some(dir) = raw.directory {
        if dir.starts_with("https://") || dir.starts_with("http://") {
            acme.directory = dir;
        } else {
            errs.add(
                "acme.directory",
                format!(
                    "{dir:?} is not a URL: expected the CA's directory, e.g. \"{LETS_ENCRYPT}\""
                ),
            );
        }
    }
    if let Some(email) = raw.email {
        if email.contains('@') {
            acme.email = Some(email);
        } else {
            errs.add("acme.email", format!("{email:?} is not an e-mail address"));
        }
    }
    acme.renew_before = raw
        .renew_before
        .and_then(|v| errs.check("acme.renew_before", super::types::parse_duration(&v)));
    acme.eab = validate_eab(raw.eab_kid, raw.eab_hmac_key, errs);
    if let Some(challenges) = raw.challenges {
        let bad = challenges
            .iter()
            .find(|c| !matches!(c.as_str(), "http-01" | "tls-alpn-01"));
        match bad {
            Some(c) => errs.add("acme.challenges", format!("{c:?} is not a challenge polyhost answers: \"http-01\" or \"tls-alpn-01\" (DNS-01 is not supported)")),
            None if challenges.is_empty() => errs.add("acme.challenges", "empty: give \"http-01\", \"tls-alpn-01\" or both"),
            None => acme.challenges = challenges,
        }
    }
    validate_roots(raw.ca_roots, raw.ca_roots_only, base, &mut acme, errs);
    acme
}

/// `ca_roots` (any number of PEM files, each read and checked now so a bad
/// file is a load error naming its key) and `ca_roots_only`.
fn validate_roots(
    roots: Option<Vec<String>>,
    only: Option<bool>,
    base: &Path,
    acme: &mut AcmeConfig,
    errs: &mut FileErrors<'_>,
) {
    for (i, root) in roots.unwrap_or_default().iter().enumerate() {
        let path = base.join(root);
        match read_roots(&path) {
            Ok(_) => acme.ca_roots.push(path),
            Err(e) => errs.add(&format!("acme.ca_roots[{i}]"), e),
        }
    }
    acme.ca_roots_only = only.unwrap_or(false);
    if acme.ca_roots_only && acme.ca_roots.is_empty() {
        errs.add(
            "acme.ca_roots_only",
            "true without ca_roots: nothing would be trusted; give the CA's root in ca_roots",
        );
    }
}

/// The certificates of one `ca_roots` file, each usable as a trust anchor.
/// Read at load (to check) and again when the account's client is built.
pub fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "no certificate in {} (expected PEM \"BEGIN CERTIFICATE\")",
            path.display()
        ));
    }
    for (n, cert) in certs.iter().enumerate() {
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| {
                format!(
                    "{}: certificate {} is not a usable root: {e}",
                    path.display(),
                    n + 1
                )
            })?;
    }
    Ok(certs)
}

/// `on_demand = true` needs `ask`; the rate and retry have defaults.
fn validate_on_demand(raw: &RawAcme, errs: &mut FileErrors<'_>) -> Option<OnDemand> {
    if raw.on_demand != Some(true) {
        for (key, given) in [
            ("acme.ask", raw.ask.is_some()),
            ("acme.on_demand_rate", raw.on_demand_rate.is_some()),
            ("acme.on_demand_retry", raw.on_demand_retry.is_some()),
            ("acme.on_demand_waiting", raw.on_demand_waiting.is_some()),
            ("acme.ask_timeout", raw.ask_timeout.is_some()),
            (
                "acme.on_demand_concurrency",
                raw.on_demand_concurrency.is_some(),
            ),
        ] {
            if given {
                errs.add(key, "only with on_demand = true");
            }
        }
        return None;
    }
    let ask = match raw.ask.as_deref() {
        Some(url) if url.starts_with("http://") => Some(url.to_owned()),
        Some(url) => {
            errs.add("acme.ask", format!("{url:?} is not an http:// URL: give the panel's local endpoint, e.g. \"http://127.0.0.1:8500/allowed\" (https is not supported)"));
            None
        }
        None => {
            errs.add("acme.ask", "missing: on_demand = true needs the URL that says which names may get a certificate, e.g. \"http://127.0.0.1:8500/allowed\"");
            None
        }
    };
    let rate = raw.on_demand_rate.as_deref().unwrap_or(ON_DEMAND_RATE);
    let rate = errs.check("acme.on_demand_rate", parse_rate(rate));
    let retry = match &raw.on_demand_retry {
        Some(v) => errs.check("acme.on_demand_retry", super::types::parse_duration(v)),
        None => Some(ON_DEMAND_RETRY),
    };
    let waiting = count(
        errs,
        "acme.on_demand_waiting",
        raw.on_demand_waiting,
        ON_DEMAND_WAITING,
    );
    let concurrency = count(
        errs,
        "acme.on_demand_concurrency",
        raw.on_demand_concurrency,
        ON_DEMAND_CONCURRENCY,
    );
    let ask_timeout = match &raw.ask_timeout {
        Some(v) => errs.check("acme.ask_timeout", parse_ask_timeout(v)),
        None => Some(ASK_TIMEOUT),
    };
    let ((rate_count, rate_per), retry) = (rate?, retry?);
    Some(OnDemand {
        ask: ask?,
        rate_count,
        rate_per,
        retry,
        waiting: waiting?,
        concurrency: concurrency?,
        ask_timeout: ask_timeout?,
    })
}

/// A duration from 1 s to [`ASK_TIMEOUT_MAX`].
fn parse_ask_timeout(v: &super::types::Scalar) -> Result<std::time::Duration, String> {
    let d = super::types::parse_duration(v)?;
    if d < std::time::Duration::from_secs(1) || d > ASK_TIMEOUT_MAX {
        return Err(format!(
            "{d:?} is out of range: expected 1s to {}s (the router holds a handshake 30 s at most; default 5s)",
            ASK_TIMEOUT_MAX.as_secs()
        ));
    }
    Ok(d)
}

/// A count key: an integer from 1 to 100,000 (`default` when absent).
fn count(
    errs: &mut FileErrors<'_>,
    key: &str,
    given: Option<i64>,
    default: usize,
) -> Option<usize> {
    match given {
        None => Some(default),
        Some(n @ 1..=100_000) => usize::try_from(n).ok(),
        Some(n) => {
            errs.add(
                key,
                format!("{n} is out of range: expected 1 to 100000 (default {default})"),
            );
            None
        }
    }
}

/// `"N/s"`, `"N/min"`, `"N/h"`, `"N/day"`, N ≥ 1.
fn parse_rate(rate: &str) -> Result<(u32, std::time::Duration), String> {
    let bad = || format!("{rate:?} is not a rate: expected e.g. \"10/min\" (per s, min, h or day)");
    let (n, per) = rate.split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    let secs = match per.trim() {
        "s" => 1,
        "min" => 60,
        "h" => 3600,
        "day" => 86400,
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err(bad());
    }
    Ok((n, std::time::Duration::from_secs(secs)))
}

/// Both keys or neither; the HMAC key as the CA gives it (base64url).
fn validate_eab(
    kid: Option<String>,
    key: Option<String>,
    errs: &mut FileErrors<'_>,
) -> Option<Eab> {
    use base64::Engine;
    match (kid, key) {
        (None, None) => None,
        (Some(kid), Some(key)) => {
            let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            match engine.decode(key.trim().trim_end_matches('=')) {
                Ok(hmac_key) if !hmac_key.is_empty() => Some(Eab { kid, hmac_key }),
                _ => {
                    errs.add(
                        "acme.eab_hmac_key",
                        "not base64url: give the HMAC key exactly as the CA shows it",
                    );
                    None
                }
            }
        }
        (kid, _) => {
            let missing = if kid.is_none() {
                "acme.eab_kid"
            } else {
                "acme.eab_hmac_key"
            };
            errs.add(
                missing,
                "external account binding needs both eab_kid and eab_hmac_key",
            );
            None
        }
    }
}
