//! The keep-alive clock of a listener's parked connections.
//!
//! A parked connection keeps no timer of its own: a tokio timer is an
//! allocation of its own (112 bytes) besides its place in the timer wheel,
//! which every one of thousands of idle connections would keep. Instead a
//! parked connection waits on one slot of its listener's clock: deadlines
//! fall into slots a tick wide, and the clock's loop ([`IdleClock::run`],
//! beside the listener's accept loop) wakes each slot's connections once the
//! slot's time has passed. Each connection then checks
//! its own deadline, so a connection closes at most a tick after its
//! keep-alive timeout, never before.
//!
//! The slots form a ring one keep-alive timeout long (capped): a connection
//! woken by a later lap's deadline finds it has not run out, and waits again.
//! The loop sleeps while no connection is parked, and on `stopping` wakes
//! every parked connection and ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::gate::{ParkedIo, Transport};
use super::signal::Signal;

/// Slots per keep-alive timeout: a connection closes at most this fraction
/// of its timeout late (within the tick bounds below).
const SLOTS_PER_TIMEOUT: u32 = 64;

/// The tick's bounds: no finer than this, however short the timeout...
const MIN_TICK: Duration = Duration::from_millis(10);

/// ...and no coarser, however long.
const MAX_TICK: Duration = Duration::from_secs(1);

/// At most this many slots: a longer timeout takes laps, each a spurious
/// wake-up for the connections still waiting.
const MAX_SLOTS: u64 = 512;

/// See the module docs.
#[derive(Debug)]
pub struct IdleClock {
    origin: Instant,
    /// A slot's width, in nanoseconds.
    tick: u64,
    slots: Box<[Notify]>,
    /// Fired: every waiting connection returns, and the clock's loop ends.
    stopping: Arc<Signal>,
    /// Connections waiting on the clock now.
    waiting: AtomicUsize,
    /// Wakes the clock's loop when the first connection waits.
    first: Notify,
}

impl IdleClock {
    /// A clock for connections that wait at most `timeout`, until
    /// `stopping`.
    pub fn new(timeout: Duration, stopping: Arc<Signal>) -> IdleClock {
        let tick = (timeout / SLOTS_PER_TIMEOUT).clamp(MIN_TICK, MAX_TICK);
        let tick = u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX);
        let timeout = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        // A deadline is at most a timeout ahead: two more slots, and a lap
        // spans it.
        let slots = (timeout / tick).saturating_add(2).min(MAX_SLOTS);
        IdleClock {
            origin: Instant::now(),
            tick,
            slots: (0..slots).map(|_| Notify::new()).collect(),
            stopping,
            waiting: AtomicUsize::new(0),
            first: Notify::new(),
        }
    }

    /// The slot `at` falls in, counted from the clock's start.
    fn index(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(since / u128::from(self.tick)).unwrap_or(u64::MAX)
    }

    /// The slot of a deadline at `at`.
    fn slot(&self, at: Instant) -> &Notify {
        self.ring(self.index(at))
    }

    /// The slot of ring position `index`, in its lap.
    fn ring(&self, index: u64) -> &Notify {
        // The ring has at most `MAX_SLOTS` slots: the remainder fits.
        &self.slots[(index % self.slots.len() as u64) as usize]
    }

    /// Waits, while `io` is parked, for its client: true once it has sent
    /// something (or its socket failed, which the next read reports); false
    /// once its keep-alive deadline has passed (up to a tick late) or the
    /// clock stops.
    pub fn wait<'a, I: Transport>(&'a self, io: &'a ParkedIo<I>) -> Wait<'a, I> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) == 0 {
            self.first.notify_one();
        }
        Wait {
            clock: self,
            io,
            woken: self.slot(io.deadline()).notified(),
            enabled: false,
        }
    }

    /// The clock's loop: wakes each slot's connections once its time has
    /// passed, while any wait; ends, waking them all, when `stopping`
    /// fires.
    pub async fn run(&self) {
        // Every slot before this one has been woken.
        let mut next = self.index(Instant::now());
        loop {
            while self.waiting.load(Ordering::Acquire) == 0 {
                // `notify_one` keeps a permit if it comes first.
                tokio::select! {
                    () = self.first.notified() => {}
                    () = self.stopping.fired() => return self.wake_all(),
                }
            }
            let end = self.tick.saturating_mul(next.saturating_add(1));
            let at = self.origin + Duration::from_nanos(end);
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = self.stopping.fired() => return self.wake_all(),
            }
            let now = self.index(Instant::now());
            // Late by more than a lap: every slot once is enough.
            let from = next.max(now.saturating_sub(self.slots.len() as u64));
            for index in from..now {
                self.ring(index).notify_waiters();
            }
            next = next.max(now);
        }
    }

    fn wake_all(&self) {
        for slot in self.slots.iter() {
            slot.notify_waiters();
        }
    }
}

pin_project_lite::pin_project! {
    /// See [`IdleClock::wait`]. It is what a parked connection's task waits
    /// in, so it is kept small: no timer, and the deadline read from `io`.
    pub struct Wait<'a, I> {
        clock: &'a IdleClock,
        io: &'a ParkedIo<I>,
        #[pin]
        woken: Notified<'a>,
        // Whether `woken` is registered with its slot (and the checks made).
        enabled: bool,
    }

    impl<'a, I> PinnedDrop for Wait<'a, I> {
        fn drop(this: Pin<&mut Self>) {
            this.clock.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<I: Transport> Future for Wait<'_, I> {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let mut this = self.project();
        loop {
            if !*this.enabled {
                // Registered before the checks: a wake-up after them is not
                // missed, and one before them has its cause seen by them.
                this.woken.as_mut().enable();
                *this.enabled = true;
                if this.clock.stopping.is_fired() || Instant::now() >= this.io.deadline() {
                    return Poll::Ready(false);
                }
            }
            if this.io.poll_sent(cx).is_ready() {
                return Poll::Ready(true);
            }
            ready!(this.woken.as_mut().poll(cx));
            // Its slot's time has passed, or another lap's: check again.
            this.woken
                .set(this.clock.slot(this.io.deadline()).notified());
            *this.enabled = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::atomic::AtomicBool;

    use atomic_waker::AtomicWaker;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    /// A parked connection's socket, as the clock sees it: readable once
    /// its client has sent. No real socket: the clock is paused.
    struct Socket(Arc<Client>);

    #[derive(Default)]
    struct Client {
        sent: AtomicBool,
        waker: AtomicWaker,
    }

    impl Client {
        fn send(&self) {
            self.sent.store(true, Ordering::Release);
            self.waker.wake();
        }
    }

    impl Transport for Socket {
        const PARKS: bool = true;

        fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.0.waker.register(cx.waker());
            match self.0.sent.load(Ordering::Acquire) {
                true => Poll::Ready(Ok(())),
                false => Poll::Pending,
            }
        }
    }

    impl AsyncRead for Socket {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A connection parked until `deadline`, and its client.
    fn parked(deadline: Instant) -> (ParkedIo<Socket>, Arc<Client>) {
        let client = Arc::new(Client::default());
        (ParkedIo::new(Socket(Arc::clone(&client)), deadline), client)
    }

    /// A clock of `timeout`, its task running, and its `stopping`.
    fn clock(timeout: Duration) -> (Arc<IdleClock>, Arc<Signal>) {
        let stopping = Arc::new(Signal::new());
        let clock = Arc::new(IdleClock::new(timeout, Arc::clone(&stopping)));
        tokio::spawn({
            let clock = Arc::clone(&clock);
            async move { clock.run().await }
        });
        (clock, stopping)
    }

    /// `clock.wait(io)`, failing (not hanging) if it is not over 2 s after
    /// the deadline.
    async fn wait(clock: &IdleClock, io: &ParkedIo<Socket>) -> bool {
        let by = io.deadline() + Duration::from_secs(2);
        tokio::time::timeout_at(by, clock.wait(io))
            .await
            .expect("the wait is over")
    }

    /// Waits out `timeout` from now: asserts it ended neither early nor
    /// more than `tick` late (and tokio's timer, to the millisecond).
    async fn times_out(clock: &IdleClock, timeout: Duration, tick: Duration) {
        let tick = tick + Duration::from_millis(1);
        let started = Instant::now();
        let (io, _client) = parked(started + timeout);
        assert!(!wait(clock, &io).await, "the client sent nothing");
        let waited = started.elapsed();
        assert!(waited >= timeout, "woke early: {waited:?}");
        assert!(waited <= timeout + tick, "woke late: {waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_parked_connection_times_out_after_its_deadline_within_a_tick() {
        // 64 s: 1 s ticks.
        let (clock, stopping) = clock(Duration::from_secs(64));
        times_out(&clock, Duration::from_millis(1500), Duration::from_secs(1)).await;
        times_out(&clock, Duration::from_secs(63), Duration::from_secs(1)).await;
        stopping.fire();
        assert_eq!(clock.waiting.load(Ordering::Acquire), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_laps_ahead_is_not_cut_short() {
        // 600 s of 1 s ticks: the ring has 512 slots, 512 s.
        let (clock, _stopping) = clock(Duration::from_secs(600));
        assert_eq!(clock.slots.len(), 512);
        times_out(&clock, Duration::from_secs(590), Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_catches_up_after_idling_longer_than_a_lap() {
        // 1 s: ticks of 15.6 ms, a ring of 66 slots (about 1 s).
        let (clock, _stopping) = clock(Duration::from_secs(1));
        let tick = Duration::from_nanos(clock.tick);
        times_out(&clock, Duration::from_millis(500), tick).await;
        // Nothing waits for many laps: the clock's loop sleeps.
        tokio::time::sleep(Duration::from_secs(30)).await;
        times_out(&clock, Duration::from_millis(300), tick).await;
        times_out(&clock, Duration::from_millis(1000), tick).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_client_sending_resumes_and_stopping_ends_every_wait() {
        let (clock, stopping) = clock(Duration::from_secs(60));
        let far = Instant::now() + Duration::from_secs(60);
        let (io, client) = parked(far);
        tokio::spawn({
            let client = Arc::clone(&client);
            async move {
                tokio::time::sleep(Duration::from_millis(1700)).await;
                client.send();
            }
        });
        let started = Instant::now();
        assert!(wait(&clock, &io).await);
        assert_eq!(started.elapsed(), Duration::from_millis(1700), "at once");

        let mut clients = Vec::new();
        let mut waiters = Vec::new();
        for i in 0..3 {
            let (io, client) = parked(far - Duration::from_secs(i));
            clients.push(client);
            let clock = Arc::clone(&clock);
            waiters.push(tokio::spawn(async move { wait(&clock, &io).await }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stopped = Instant::now();
        stopping.fire();
        for waiter in waiters {
            assert!(!waiter.await.unwrap());
        }
        assert_eq!(stopped, Instant::now(), "woken at once");
        // Stopped: a later wait does not wait either.
        assert!(!wait(&clock, &parked(far).0).await);
        assert_eq!(clock.waiting.load(Ordering::Acquire), 0);
    }
}
