//! What a group's actor receives: [`Cmd`]s from its handle and its leases,
//! [`Event`]s from the tasks that watch its processes
//! ([`super::watch`]). Shared by both sides so that each points one way
//! (handle → mailbox ← group, watch → mailbox), not at each other.
//!
//! Both arrive through a [`channel`]: an unbounded queue that costs no
//! message storage while it is empty (most groups' mailboxes, at 10,000
//! idle sites).
//!
//! Invariant: every process the actor started reports exactly one end
//! (`Exited` or `Stopped`) with its id.

use std::collections::VecDeque;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

/// How long a stopped process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Asked of the actor by its handle and by leases.
pub(super) enum Cmd {
    Start,
    Recycle {
        endpoint: u64,
        reason: String,
    },
    RestartAll,
    /// Sends a signal to each process it started that is not stopping
    /// (its leader only: php-fpm's master, never its children).
    Signal(nix::sys::signal::Signal),
    Stop(oneshot::Sender<()>),
}

/// Told to the actor about one of its processes, by id.
pub(super) enum Event {
    Ready {
        id: u64,
    },
    NotReady {
        id: u64,
        why: String,
    },
    /// `oom_kills`: counted in the process's cgroup, read before it was removed.
    Exited {
        id: u64,
        status: std::io::Result<ExitStatus>,
        oom_kills: u64,
    },
    Stopped {
        id: u64,
    },
    Drained {
        id: u64,
    },
}

/// A mailbox's sending side ([`channel`]).
pub(crate) struct Sender<T>(Arc<Shared<T>>);

/// A mailbox's only receiving side ([`channel`]).
pub(crate) struct Receiver<T>(Arc<Shared<T>>);

struct Shared<T> {
    /// Messages not received yet; `closed`: the receiver is gone (set and
    /// read under the same lock, so a message is either received or
    /// dropped with the receiver, never left behind).
    queue: Mutex<(VecDeque<T>, bool)>,
    /// Wakes the receiver: a message, or the last sender gone.
    ready: Notify,
    senders: AtomicUsize,
}

/// An unbounded queue with one receiver, as `tokio::sync::mpsc`'s
/// unbounded channel behaves for what the actors use of it (`send` fails
/// once the receiver is gone, `recv` ends once every sender is gone and
/// the queue is empty, both cancel-safe), but that allocates nothing for
/// its messages until the first one: tokio's allocates a block of 32
/// messages with the channel, about 1.3 KiB for a [`Cmd`] channel, and
/// every group has two (its commands and its processes' events), the
/// router one per attached group: 42 MiB between the two processes at
/// 10,000 idle sites (measured: 29 in the supervisor, 13 in the router),
/// whose mailboxes never see a message.
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new((VecDeque::new(), false)),
        ready: Notify::new(),
        senders: AtomicUsize::new(1),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, (VecDeque<T>, bool)> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T> Sender<T> {
    /// Queues `msg`; gives it back when the receiver is gone.
    pub(crate) fn send(&self, msg: T) -> Result<(), T> {
        let mut queue = self.0.lock();
        if queue.1 {
            return Err(msg);
        }
        queue.0.push_back(msg);
        drop(queue);
        self.0.ready.notify_one();
        Ok(())
    }

    /// Whether the receiver is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.0.lock().1
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.ready.notify_one();
        }
    }
}

impl<T> Receiver<T> {
    /// The next message; `None` once every sender is gone and nothing is
    /// left. Cancel-safe: a message is taken only when it is returned.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        loop {
            // Read the count before the queue: a sender that queued and
            // then went away left its message there.
            let senders = self.0.senders.load(Ordering::Acquire);
            let msg = self.0.lock().0.pop_front();
            if msg.is_some() || senders == 0 {
                return msg;
            }
            // A message or the last drop after the check above left a
            // permit: this returns at once.
            self.0.ready.notified().await;
        }
    }
}

impl<T> Drop for Receiver<T> {
    /// Later sends fail; what is queued is dropped now (a `Cmd::Stop`'s
    /// waiter learns the actor is gone).
    fn drop(&mut self) {
        let queued = {
            let mut queue = self.0.lock();
            queue.1 = true;
            std::mem::take(&mut queue.0)
        };
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::channel;

    #[tokio::test]
    async fn messages_arrive_in_order_and_the_end_is_seen() {
        let (tx, mut rx) = channel();
        let tx2 = tx.clone();
        tx.send(1).unwrap();
        tx2.send(2).unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        drop(tx2);
        assert_eq!(waiter.await.unwrap(), None, "every sender gone");
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_and_a_gone_one_fails_sends() {
        let (tx, mut rx) = channel::<tokio::sync::oneshot::Sender<()>>();
        let waiter = tokio::spawn(async move {
            let got = rx.recv().await;
            (got.is_some(), rx)
        });
        tokio::task::yield_now().await;
        let (done, _keep) = tokio::sync::oneshot::channel();
        tx.send(done).unwrap();
        let (got, rx) = waiter.await.unwrap();
        assert!(got);
        // Queued, then the receiver goes: the message is dropped with it.
        let (done, stopped) = tokio::sync::oneshot::channel();
        tx.send(done).unwrap();
        drop(rx);
        assert!(stopped.await.is_err(), "dropped with the receiver");
        assert!(tx.is_closed());
        let (done, _) = tokio::sync::oneshot::channel();
        assert!(tx.send(done).is_err());
    }

    #[tokio::test]
    async fn a_cancelled_recv_loses_nothing() {
        let (tx, mut rx) = channel();
        for _ in 0..3 {
            let quick = tokio::time::timeout(std::time::Duration::from_millis(1), rx.recv());
            assert!(quick.await.is_err());
        }
        tx.send(7).unwrap();
        assert_eq!(rx.recv().await, Some(7));
    }
}
