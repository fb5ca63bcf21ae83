//! A stop signal that every connection task waits on: raised once, never
//! lowered.
//!
//! Why not `CancellationToken::cancelled()` in each connection: polling that
//! future takes two locks shared by every connection on every lane (the
//! token's tree node and its `Notify`'s list of waiters), and a connection's
//! `select!` polls it at each of its wake-ups, several per request. A
//! [`Wait`] takes the waiters' lock once, to register; after that a wake-up
//! costs one atomic load.
//!
//! Invariant: `raised` is set before the waiters are notified, so the
//! wake-up that [`Signal::raise`] causes always finds it set. A [`Wait`] is
//! polled by one task only (its waker is registered once).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// See the module documentation.
#[derive(Default)]
pub(super) struct Signal {
    raised: AtomicBool,
    notify: Notify,
}

impl Signal {
    /// Raises the signal and wakes every task waiting on it.
    pub fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Resolves once the signal is raised.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            signal: self,
            // Made now: a raise from here on is seen by its first poll.
            notified: Box::pin(self.notify.notified()),
            registered: false,
        }
    }
}

/// A task's wait for a [`Signal`].
pub(super) struct Wait<'a> {
    signal: &'a Signal,
    notified: Pin<Box<Notified<'a>>>,
    registered: bool,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.is_raised() {
            return Poll::Ready(());
        }
        if !self.registered {
            self.registered = true;
            return self.notified.as_mut().poll(cx);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_task_woken_for_other_reasons_still_sees_the_raise() {
        let signal = Arc::new(Signal::default());
        let other = Arc::new(Notify::new());
        let (s, o) = (signal.clone(), other.clone());
        let waiter = tokio::spawn(async move {
            let wait = s.wait();
            tokio::pin!(wait);
            let mut other_wakeups = 0;
            loop {
                tokio::select! {
                    _ = &mut wait => return other_wakeups,
                    _ = o.notified() => other_wakeups += 1,
                }
            }
        });
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            other.notify_one();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        signal.raise();
        let woken = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the raise wakes the waiting task")
            .unwrap();
        assert_eq!(woken, 3);
    }

    #[tokio::test]
    async fn a_wait_made_after_the_raise_or_before_its_first_poll_is_ready() {
        let signal = Signal::default();
        let early = signal.wait();
        signal.raise();
        tokio::time::timeout(Duration::from_secs(1), early)
            .await
            .expect("made before the raise, polled after");
        tokio::time::timeout(Duration::from_secs(1), signal.wait())
            .await
            .expect("made after the raise");
    }
}
