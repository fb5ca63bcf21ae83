//! ACME Renewal Information (RFC 9773): when the CA's directory offers
//! `renewalInfo`, each certificate's renewal time is a random point in the
//! window the CA suggests (now, if the window has begun), fetched again
//! when the CA's `Retry-After` says so; otherwise `renew_before` decides
//! (`super::renew_at`). A new order for a certificate that is renewed names
//! it in `replaces` (`super::order`).
//!
//! Invariant: a CA without ARI is asked once per account (then never
//! again until restart); a failed fetch falls back to `renew_before` for
//! that scan and is retried after [`MIN_POLL`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use instant_acme::{Account, CertificateIdentifier};

use crate::config::LoadedPair;

/// Bounds of the wait before a window is fetched again (RFC 9773 §4.3.2
/// lets clients clamp `Retry-After`).
const MIN_POLL: Duration = Duration::from_secs(60);
const MAX_POLL: Duration = Duration::from_secs(24 * 3600);

/// The renewal times learnt from the CA, by certificate.
#[derive(Default)]
pub struct Ari {
    /// The CA said it has no ARI.
    unsupported: bool,
    /// By certificate identifier: when to renew, when to ask again.
    times: HashMap<String, (i64, Instant)>,
}

/// The certificate's ARI identifier (its issuer's key id and serial).
pub fn identifier(pair: &LoadedPair) -> Option<CertificateIdentifier<'static>> {
    let leaf = pair.certified().cert.first()?;
    CertificateIdentifier::try_from(leaf)
        .ok()
        .map(CertificateIdentifier::into_owned)
}

impl Ari {
    /// Whether the CA is known to have no ARI (no account needed then).
    pub fn unsupported(&self) -> bool {
        self.unsupported
    }

    /// When to renew `pair` (Unix seconds) as the CA suggests, or `None`
    /// (no ARI, or no answer now: the caller's `renew_before` decides).
    pub async fn renew_at(&mut self, account: &Account, pair: &LoadedPair) -> Option<i64> {
        if self.unsupported {
            return None;
        }
        let id = identifier(pair)?;
        let key = id.to_string();
        if let Some((at, poll)) = self.times.get(&key) {
            if Instant::now() < *poll {
                return Some(*at);
            }
        }
        match account.renewal_info(&id).await {
            Ok((info, retry_after)) => {
                let w = info.suggested_window;
                let at = pick(w.start.unix_timestamp(), w.end.unix_timestamp(), &key);
                let poll = Instant::now() + retry_after.clamp(MIN_POLL, MAX_POLL);
                tracing::debug!(certificate = key, renew_at = at, "ARI window fetched");
                self.times.insert(key, (at, poll));
                Some(at)
            }
            Err(instant_acme::Error::Unsupported(_)) => {
                tracing::info!("the CA has no ARI (renewalInfo): renewing by renew_before");
                self.unsupported = true;
                None
            }
            Err(e) => {
                tracing::warn!(
                    certificate = key,
                    "ARI window not fetched ({e}): renewing by renew_before for now"
                );
                let keep = self.times.get(&key).map(|(at, _)| *at);
                if let Some(at) = keep {
                    self.times.insert(key, (at, Instant::now() + MIN_POLL));
                }
                keep
            }
        }
    }

    /// Forgets `pair`'s window (it was replaced).
    pub fn forget(&mut self, pair: &LoadedPair) {
        if let Some(id) = identifier(pair) {
            self.times.remove(&id.to_string());
        }
    }
}

/// A random time in `[start, end]` (RFC 9773 §4.2: uniformly random in
/// the window); `start` when the window is empty.
fn pick(start: i64, end: i64, key: &str) -> i64 {
    use std::hash::BuildHasher;
    let span = (end - start).max(0) as u64;
    // A randomly seeded hash: random without a random-number crate.
    let r = std::collections::hash_map::RandomState::new().hash_one(key);
    start + (r % (span + 1)) as i64
}

#[cfg(test)]
mod tests {
    use super::pick;

    #[test]
    fn a_picked_time_lies_in_the_window() {
        for _ in 0..100 {
            let t = pick(1000, 2000, "x");
            assert!((1000..=2000).contains(&t), "{t}");
        }
        assert_eq!(pick(1000, 900, "x"), 1000);
    }
}
