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
                    .map_err(|e| format!("account: {e}"));
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
        .map_err(|e| format!("creating the account: {e}"))?;
    let stored = Stored {
        directory: acme.directory.clone(),
        credentials,
    };
    let json = serde_json::to_vec(&stored).map_err(|e| e.to_string())?;
    super::store::write_private(&file, &json).map_err(|e| format!("{}: {e}", file.display()))?;
    tracing::info!(id = account.id(), "ACME account created");
    Ok(account)
}

/// An account builder trusting `acme.ca_roots` (else the webpki roots).
fn builder(acme: &AcmeConfig) -> Result<AccountBuilder, String> {
    match acme.ca_roots.first() {
        Some(root) => Account::builder_with_root(root),
        None => Account::builder(),
    }
    .map_err(|e| format!("HTTP client for the CA: {e}"))
}
