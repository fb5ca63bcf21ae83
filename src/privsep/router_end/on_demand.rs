//! The router's on-demand certificate source (`router::tls::OnDemandSource`):
//! a handshake's request goes to the supervisor as
//! [`ToSupervisor::OnDemandCertificate`], its answer comes back as
//! [`ToRouter::OnDemandCertificate`](crate::privsep::wire::ToRouter) with the
//! same id.
//!
//! Invariants: a request whose handshake gave up is forgotten when its
//! answer comes (the supervisor answers every request); every answer of
//! the supervisor is a refusal or a certificate, and only a broken link is
//! `OnDemandError::Unavailable` (the router keeps what it holds).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

use crate::privsep::wire::ToSupervisor;
use crate::router::tls::{OnDemandAnswer as Answer, OnDemandError};

use super::link::Outbox;

/// The requests waiting for the supervisor.
pub(crate) struct LinkSource {
    out: Outbox,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
}

impl LinkSource {
    pub(crate) fn new(out: Outbox) -> LinkSource {
        LinkSource {
            out,
            next: AtomicU64::new(0),
            waiting: Mutex::default(),
        }
    }

    /// The supervisor answered request `id`: the certificate, or a
    /// refusal that holds `retry_ms`.
    pub(crate) fn answer(
        &self,
        id: u64,
        result: Result<crate::config::LoadedPair, String>,
        retry_ms: Option<u64>,
    ) {
        let result = result.map_err(|why| OnDemandError::Refused {
            why,
            retry: retry_ms.map(Duration::from_millis),
        });
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(tx) = waiting {
            let _ = tx.send(result);
        }
    }
}

impl crate::router::tls::OnDemandSource for std::sync::Arc<LinkSource> {
    fn certificate(&self, name: String, client: Option<IpAddr>) -> BoxFuture<'static, Answer> {
        let (tx, rx) = oneshot::channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let sent = self
            .out
            .send(ToSupervisor::OnDemandCertificate { id, name, client })
            .is_ok();
        if !sent {
            self.waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
        let gone = || OnDemandError::Unavailable("the supervisor is gone".into());
        Box::pin(async move {
            if !sent {
                return Err(gone());
            }
            rx.await.map_err(|_| gone())?
        })
    }
}
