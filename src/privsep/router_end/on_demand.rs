//! The router's on-demand certificate source (`router::tls::OnDemandSource`):
//! a handshake's request goes to the supervisor as
//! [`ToSupervisor::OnDemandCertificate`], its answer comes back as
//! [`ToRouter::OnDemandCertificate`](crate::privsep::wire::ToRouter) with the
//! same id.
//!
//! Invariant: a request whose handshake gave up is forgotten when its
//! answer comes (the supervisor answers every request).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

use crate::config::LoadedPair;
use crate::privsep::wire::ToSupervisor;

use super::link::Outbox;

type Answer = Result<LoadedPair, String>;

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

    /// The supervisor answered request `id`.
    pub(crate) fn answer(&self, id: u64, result: Answer) {
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
    fn certificate(&self, name: String) -> BoxFuture<'static, Answer> {
        let (tx, rx) = oneshot::channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let sent = self
            .out
            .send(ToSupervisor::OnDemandCertificate { id, name })
            .is_ok();
        Box::pin(async move {
            if !sent {
                return Err("the supervisor is gone".into());
            }
            rx.await.map_err(|_| "the supervisor is gone".to_string())?
        })
    }
}
