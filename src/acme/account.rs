//! The ACME account: created once per CA directory, its credentials (the
//! account key and URL) kept in `state_dir/acme/account.json`, mode 0600.

use std::path::{Path, PathBuf};

use instant_acme::{Account, AccountBuilder, AccountCredentials, NewAccount};

use crate::config::AcmeConfig;

/// What `account.json` holds: the directory the account belongs to (a
/// changed `acme.directory` makes a new account) and its credentials.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    directory: String,
    credentials: AccountCredentials,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("acme").join("account.json")
}

/// The account for `acme.directory`: the stored one, else a new one (stored).
pub async fn load_or_create(acme: &AcmeConfig, state_dir: &Path) -> Result<Account, String> {
    let file = path(state_dir);
    if let Ok(text) = std::fs::read(&file) {
        match serde_json::from_slice::<Stored>(&text) {
            Ok(stored) if stored.directory == acme.directory => {
                return builder(acme)?
                    .from_credentials(stored.credentials)
                    .await
                    .map_err(|e| format!("account: {}", with_causes(&e)));
            }
            Ok(_) => tracing::info!("acme.directory changed: creating an account with the new CA"),
            Err(e) => tracing::warn!(
                "{} unreadable ({e}): creating a new account",
                file.display()
            ),
        }
    }
    let contact = acme.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = acme
        .eab
        .as_ref()
        .map(|e| instant_acme::ExternalAccountKey::new(e.kid.clone(), &e.hmac_key));
    let (account, credentials) = builder(acme)?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            acme.directory.clone(),
            eab.as_ref(),
        )
        .await
        .map_err(|e| format!("creating the account: {}", with_causes(&e)))?;
    let stored = Stored {
        directory: acme.directory.clone(),
        credentials,
    };
    let json = serde_json::to_vec(&stored).map_err(|e| e.to_string())?;
    super::store::write_private(&file, &json).map_err(|e| format!("{}: {e}", file.display()))?;
    tracing::info!(id = account.id(), "ACME account created");
    Ok(account)
}

/// `e` and its sources: instant-acme's transport error reads only "client
/// error (Connect)"; the cause (e.g. rustls' `UnknownIssuer` for a CA not
/// in the trusted roots) is in the chain.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// An account builder whose HTTP client trusts the public roots (the
/// platform's, as instant-acme's own client does) plus `acme.ca_roots`, or
/// only `ca_roots` with `ca_roots_only`. instant-acme's `builder_with_root`
/// takes a single root and drops the public ones, hence our own client.
fn builder(acme: &AcmeConfig) -> Result<AccountBuilder, String> {
    if acme.ca_roots.is_empty() {
        return Account::builder().map_err(|e| format!("HTTP client for the CA: {e}"));
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::config::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("HTTP client for the CA: {e}"))?
        .with_root_certificates(root_store(acme)?)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, instant_acme::BodyWrapper<bytes::Bytes>>(https);
    Ok(Account::builder_with_http(Box::new(client)))
}

/// The roots the CA's endpoint is verified against: the system's (unless
/// `ca_roots_only`) and every certificate of every `ca_roots` file.
fn root_store(acme: &AcmeConfig) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    if !acme.ca_roots_only {
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::warn!("system trust roots: {e}");
        }
        let (_, unusable) = roots.add_parsable_certificates(native.certs);
        if roots.is_empty() {
            tracing::warn!(
                "no system trust roots found: the CA is trusted through acme.ca_roots only"
            );
        } else if unusable > 0 {
            tracing::debug!(unusable, "system trust roots skipped");
        }
    }
    for (i, path) in acme.ca_roots.iter().enumerate() {
        let certs =
            crate::config::read_roots(path).map_err(|e| format!("acme.ca_roots[{i}]: {e}"))?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("acme.ca_roots[{i}]: {}: {e}", path.display()))?;
        }
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_file(dir: &Path, name: &str, certs: &[&rcgen::Certificate]) -> PathBuf {
        let pem: String = certs.iter().map(|c| c.pem()).collect();
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    }

    fn self_signed(name: &str) -> rcgen::Certificate {
        rcgen::generate_simple_self_signed(vec![name.to_owned()])
            .unwrap()
            .cert
    }

    /// Each root by its subject and key (rcgen gives every certificate
    /// the same subject).
    fn subjects(store: &rustls::RootCertStore) -> Vec<Vec<u8>> {
        let key = |r: &rustls_pki_types::TrustAnchor<'_>| {
            [r.subject.as_ref(), r.subject_public_key_info.as_ref()].concat()
        };
        store.roots.iter().map(key).collect()
    }

    #[test]
    fn the_client_trusts_the_system_roots_and_every_extra_root() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            self_signed("a.test"),
            self_signed("b.test"),
            self_signed("c.test"),
        );
        let mut acme = AcmeConfig {
            ca_roots: vec![
                pem_file(dir.path(), "one.pem", &[&a]),
                pem_file(dir.path(), "two.pem", &[&b, &c]),
            ],
            ..AcmeConfig::default()
        };
        let mut system = rustls::RootCertStore::empty();
        system.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        assert!(
            !system.is_empty(),
            "no system roots (ca-certificates): nothing public to check"
        );
        let store = subjects(&root_store(&acme).unwrap());
        for public in subjects(&system) {
            assert!(store.contains(&public), "a system root is missing");
        }
        let extra = subjects(
            &root_store(&AcmeConfig {
                ca_roots_only: true,
                ..acme.clone()
            })
            .unwrap(),
        );
        assert_eq!(extra.len(), 3, "ca_roots_only: the three extra roots alone");
        for root in &extra {
            assert!(store.contains(root), "an extra root is missing");
        }
        assert_eq!(store.len(), system.len() + 3);
        acme.ca_roots.push(dir.path().join("missing.pem"));
        let err = root_store(&acme).unwrap_err();
        assert!(err.starts_with("acme.ca_roots[2]: "), "{err}");
    }
}
