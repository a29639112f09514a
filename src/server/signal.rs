//! A listener's one-way signals to its connections (the drain begins, the
//! drain time is up), which each connection's task checks on every wake-up
//! without taking a lock.
//!
//! Why not `CancellationToken::cancelled`: each poll of its future locks the
//! token's tree node (`is_cancelled`) and then the waiter list of its
//! `Notify`, and every connection of a listener polls the same two tokens
//! each time its task wakes, several times per request. Here a connection
//! registers its task's waker once, and afterwards a poll is an atomic load
//! (and a waker comparison); the lock is taken again only if the future is
//! polled with a waker that would not wake the one registered.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// See the module docs. Fired once; stays fired.
#[derive(Debug, Default)]
pub struct Signal {
    fired: AtomicBool,
    notify: Notify,
}

impl Signal {
    pub fn new() -> Signal {
        Signal::default()
    }

    /// Fires the signal: every [`Signal::fired`] future completes.
    pub fn fire(&self) {
        // Set before the wake-up: a woken waiter's next poll sees it.
        if !self.fired.swap(true, Ordering::AcqRel) {
            self.notify.notify_waiters();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Completes once the signal has fired (at once if it has).
    pub fn fired(&self) -> Fired<'_> {
        Fired {
            signal: self,
            // Made now: a `fire` between now and the first poll is seen
            // by it (`notify_waiters` counts for the futures made before).
            notified: self.notify.notified(),
            waker: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// See [`Signal::fired`].
    pub struct Fired<'a> {
        signal: &'a Signal,
        #[pin]
        notified: Notified<'a>,
        // The waker `notified` was last polled with.
        waker: Option<Waker>,
    }
}

impl Future for Fired<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.signal.is_fired() {
            return Poll::Ready(());
        }
        if this
            .waker
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            // Registered with a waker that wakes this poller; `fire` sets
            // the flag before it wakes.
            return Poll::Pending;
        }
        *this.waker = Some(cx.waker().clone());
        this.notified.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_fire_completes_every_waiter_before_and_after() {
        let signal = Arc::new(Signal::new());
        let mut waiters = Vec::new();
        for _ in 0..3 {
            let signal = Arc::clone(&signal);
            waiters.push(tokio::spawn(async move { signal.fired().await }));
        }
        // Each waiter has registered, and waits: polled with its waker.
        tokio::task::yield_now().await;
        for waiter in &waiters {
            assert!(!waiter.is_finished());
        }
        signal.fire();
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("a waiter was not woken")
                .unwrap();
        }
        // Fired stays fired.
        signal.fired().await;
        assert!(signal.is_fired());
    }

    #[tokio::test]
    async fn a_fire_between_making_and_polling_is_not_missed() {
        let signal = Signal::new();
        let fired = signal.fired();
        signal.fire();
        tokio::time::timeout(Duration::from_secs(5), fired)
            .await
            .expect("the fire was missed");
    }

    #[test]
    fn a_waiter_polled_with_a_new_waker_is_woken_through_it() {
        struct Flag(AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let signal = Signal::new();
        let mut fired = std::pin::pin!(signal.fired());
        // First polled with a waker that wakes nobody...
        let mut noop = Context::from_waker(Waker::noop());
        assert!(fired.as_mut().poll(&mut noop).is_pending());
        // ...then with one that does: it replaces the first.
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(Arc::clone(&flag));
        let mut cx = Context::from_waker(&waker);
        assert!(fired.as_mut().poll(&mut cx).is_pending());
        signal.fire();
        assert!(
            flag.0.load(Ordering::SeqCst),
            "the second waker was not woken"
        );
        assert!(fired.poll(&mut cx).is_ready());
    }
}
