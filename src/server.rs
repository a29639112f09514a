//! The accept loop every listener shares (proxy, admin, demo model servers):
//! accept, optionally a TLS handshake (ALPN `h2` or `http/1.1`), serve
//! HTTP/1.1 and HTTP/2 on the same port, and on
//! cancel stop accepting and drain the open connections for at most the
//! drain time.
//!
//! Plain HTTP/1.1 requests (no `Transfer-Encoding`, `Expect` or `Upgrade`,
//! the body in with the head) are served by the listener's own HTTP/1.1
//! path, [`h1`]; the first request that is not hands the connection to
//! hyper's HTTP/1.1 server until the connection parks or ends. HTTP/2 is
//! hyper's.
//!
//! An HTTP/1.1 keep-alive connection that idles for [`PARK_AFTER`] is
//! parked: its buffers (hyper's connection, with its read and write buffers
//! of 16 KiB, or the plain path's) are dropped, and so are the gate's state
//! and timer; only the socket waits for the client's next request, on its
//! listener's [`clock::IdleClock`] for the keep-alive timeout, and the plain
//! path picks up where the last request ended. A gateway with thousands
//! of mostly idle clients pays for the requests in flight, not for every
//! open connection. (TLS connections are not parked: see
//! [`gate::Transport`].)

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntGauge;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::tls::ServerTls;
use clock::IdleClock;
use gate::{Activity, Busy, Gate, GateLimits, ParkedIo, Transport};
use signal::Signal;

mod clock;
mod gate;
mod h1;
mod signal;

#[doc(hidden)]
pub use h1::read_requests;

/// How long to pause after a failed accept (typically out of file
/// descriptors) before trying again, so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How long an HTTP/1.1 connection idles between requests before it is
/// parked (see the module docs). Long enough that a client sending request
/// after request never is; short enough that a burst of connections that
/// then go quiet hands its buffers on before the next burst needs them.
pub const PARK_AFTER: Duration = Duration::from_millis(50);

/// The HTTP/2 connection preface's length: the first bytes tell HTTP/2
/// with prior knowledge from HTTP/1.1.
const PREFACE_LEN: usize = 24;

/// How long the end of a connection may wait on the client (TLS's
/// close_notify going out).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// What one listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most; further accepts wait until one closes.
    pub max_connections: usize,
    /// Request header fields at most (HTTP/1.1: more is a 431).
    pub max_headers: usize,
    /// Bytes of request head at most (HTTP/1.1: more is a 431; HTTP/2: the
    /// header list size).
    pub max_header_bytes: usize,
    /// How long a client may take to send a request head, counted from its
    /// first byte (from the accept, for a connection's first request, TLS
    /// handshake included): then 408 and the connection is closed.
    pub header_read_timeout: Duration,
    /// How long a connection may stay open with no request in flight and
    /// nothing received (HTTP/1.1 keep-alive and HTTP/2 alike).
    pub keepalive_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(75),
        }
    }
}

/// The connection builders: HTTP/1.1 with keep-alive, and HTTP/2 with
/// prior knowledge; the connection preface tells which.
struct Builders {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(limits: &Limits) -> Builders {
        let mut h1 = http1::Builder::new();
        h1.keep_alive(true)
            // Head and body copied into one buffer and written with one
            // `write`, instead of hyper's queue of both for `writev`: with
            // inference-sized messages the copy is cheaper than the queue.
            // Measured with the upstream connections set alike, in an
            // interleaved A/B (benches/load/ab.sh, 6 rounds, twice): proxy
            // CPU per request -7 %, req/s +5 %.
            .writev(false)
            .timer(TokioTimer::new())
            .max_headers(limits.max_headers)
            // The gate times request heads, and answers 408 where hyper would
            // close without a word.
            .header_read_timeout(None)
            // hyper's floor for its read buffer is 8 KiB.
            .max_buf_size(limits.max_header_bytes.max(8192));
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        Builders { h1, h2 }
    }
}

/// Gauges of a listener's client connections: open, and of those parked.
#[derive(Clone, Debug)]
pub struct ConnectionGauges {
    pub open: IntGauge,
    pub parked: IntGauge,
}

impl ConnectionGauges {
    /// Gauges registered nowhere, for listeners without metrics.
    pub fn unregistered() -> ConnectionGauges {
        let gauge = |name| IntGauge::new(name, "unregistered").expect("a valid metric name");
        ConnectionGauges {
            open: gauge("open"),
            parked: gauge("parked"),
        }
    }
}

/// A connection as accepted, before its first request.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    pub peer: SocketAddr,
    /// Whether it came over TLS.
    pub tls: bool,
}

/// Serves `listener` until `token` is cancelled, then drains: connections
/// finish their requests for at most `drain`, and whatever is still open then
/// is cut, so nothing this listener accepted outlives the call.
///
/// `make` builds the service for one connection, called by the accept loop
/// in the order connections arrive. `name` labels the log lines
/// (`proxy`, `admin`, ...).
///
/// The service's futures are boxed here; [`serve_with`] wants futures that
/// are `Unpin` already (the proxy boxes its own).
pub async fn serve<M, S, B>(
    name: &'static str,
    listener: TcpListener,
    make: M,
    token: CancellationToken,
    drain: Duration,
) where
    M: Fn(&Accepted) -> S,
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>
        + Send
        + Unpin
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let make = move |accepted: &Accepted| Boxed(make(accepted));
    let listening = Listening {
        name,
        tls: None,
        token,
        drain,
        limits: Limits::default(),
        gauges: ConnectionGauges::unregistered(),
    };
    serve_with(listener, make, listening).await;
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A listener's service: it answers every request (its error is
/// `Infallible`), and its futures are `Unpin` (boxed), so that an idle
/// HTTP/1.1 connection can be taken apart and parked.
pub trait ConnService<B>:
    Service<Request<RequestBody>, Response = Response<B>, Error = Infallible, Future = Self::Fut>
    + Send
    + Unpin
    + 'static
{
    type Fut: Future<Output = Result<Response<B>, Infallible>> + Send + Unpin + 'static;
}

impl<S, B> ConnService<B> for S
where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>
        + Send
        + Unpin
        + 'static,
    S::Future: Send + Unpin + 'static,
{
    type Fut = S::Future;
}

/// A listener's response body.
pub trait ConnBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

impl<B> ConnBody for B
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
}

/// A service whose futures are boxed, so they are `Unpin`.
struct Boxed<S>(S);

impl<S: Service<Request<RequestBody>>> Service<Request<RequestBody>> for Boxed<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<S::Future>>;

    fn call(&self, req: Request<RequestBody>) -> Self::Future {
        Box::pin(self.0.call(req))
    }
}

/// What a listener serves besides its socket and service.
pub struct Listening {
    /// Labels the log lines (`proxy`, `admin`, ...).
    pub name: &'static str,
    /// TLS, if the listener has it.
    pub tls: Option<Arc<ServerTls>>,
    /// Cancelled: stop accepting and drain.
    pub token: CancellationToken,
    /// How long the drain waits for open connections.
    pub drain: Duration,
    pub limits: Limits,
    pub gauges: ConnectionGauges,
}

/// [`serve`] with TLS, [`Limits`] and connection gauges.
pub async fn serve_with<M, S, B>(listener: TcpListener, mut make: M, listening: Listening)
where
    M: FnMut(&Accepted) -> S,
    S: ConnService<B>,
    B: ConnBody,
{
    let Listening {
        name,
        tls,
        token,
        drain,
        limits,
        gauges,
    } = listening;
    // One permit per open connection: at the cap, the loop stops accepting
    // (the kernel's backlog holds newcomers) until a connection closes.
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Every connection's task, from its accept on, before its TLS
    // handshake, so the drain counts it.
    let connections = TaskTracker::new();
    // `shared.stopping` fires once `token` is cancelled (the accept loop
    // sees it), and `shared.cut` when the drain time is up; both also if
    // this future is dropped. Every connection task listens (a parked one
    // to `stopping`, through the idle clock, fired first) and drops its
    // connection (closing the socket). Connections run in their own tasks,
    // so without this they would outlive `serve` and a "cut" drain would
    // cut nothing.
    let stopping = Arc::new(Signal::new());
    let handshake_timeout = limits.header_read_timeout;
    let gate = GateLimits {
        header_timeout: limits.header_read_timeout,
        idle_timeout: limits.keepalive_timeout,
        max_head: limits.max_header_bytes.max(8192),
        park_after: Some(PARK_AFTER),
    };
    let shared = Arc::new(Shared {
        name,
        builders: Builders::new(&limits),
        max_headers: limits.max_headers,
        gate: Arc::new(gate),
        gate_unparked: Arc::new(GateLimits {
            park_after: None,
            ..gate
        }),
        idle: IdleClock::new(gate.idle_timeout, Arc::clone(&stopping)),
        stopping,
        cut: Signal::new(),
        gauges,
    });
    let _fire_on_return = FireOnDrop(&shared);
    // Only plaintext connections are parked. The clock runs beside the
    // accept loop, in this task, and ends with `stopping`, before the drain.
    let clock = async {
        if tls.is_none() {
            shared.idle.run().await;
        }
    };
    let serving = async {
        loop {
            // Biased, the token first: once it is cancelled, nothing more
            // is accepted.
            let permit = tokio::select! {
                biased;
                () = token.cancelled() => break,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    // Never closed while this loop runs.
                    Err(_) => break,
                },
            };
            tokio::select! {
                biased;
                () = token.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        // Latency over throughput: inference responses are small
                        // and each extra 40 ms of Nagle would show in p99.
                        if let Err(e) = stream.set_nodelay(true) {
                            debug!(listener = name, %peer, error = %e, "cannot set TCP_NODELAY");
                        }
                        let accepted = Accepted { peer, tls: tls.is_some() };
                        let first_head_by =
                            tokio::time::Instant::now() + shared.gate.header_timeout;
                        let service = make(&accepted);
                        let conn = Conn::new(Arc::clone(&shared), peer, permit);
                        // Two tasks, each as large as it needs: a TLS stream
                        // and its handshake are kilobytes, which a plaintext
                        // connection's task would otherwise hold room for.
                        match tls.clone() {
                            None => {
                                connections.spawn(conn.serve_tcp(stream, service, first_head_by));
                            }
                            Some(tls) => {
                                connections.spawn(async move {
                                    let timeout = handshake_timeout;
                                    conn.serve_tls(&tls, timeout, stream, service, first_head_by)
                                        .await;
                                });
                            }
                        }
                    }
                    Err(e) => {
                        warn!(listener = name, error = %e, "accept failed; retrying");
                        // Cut short by a drain: out of descriptors, the
                        // connections the drain closes are what frees them.
                        tokio::select! {
                            () = token.cancelled() => break,
                            () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                        }
                    }
                }
            }
        }
        drop(listener);
        shared.stopping.fire();
        connections.close();
        let open = connections.len();
        if open > 0 {
            info!(listener = name, connections = open, "draining connections");
        }
        tokio::select! {
            () = connections.wait() => {}
            () = tokio::time::sleep(drain) => {
                warn!(listener = name, drain_timeout = ?drain, "drain timed out; closing the remaining connections");
                // Each connection drops its socket at once.
                shared.cut.fire();
                connections.wait().await;
            }
        }
    };
    tokio::join!(clock, serving);
}

/// Fires a listener's signals when its `serve_with` future ends or is
/// dropped: its connections' tasks outlive it otherwise.
struct FireOnDrop<'a>(&'a Shared);

impl Drop for FireOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stopping.fire();
        self.0.cut.fire();
    }
}

/// A gauge raised while the value lives.
struct Counted(IntGauge);

impl Counted {
    fn new(gauge: &IntGauge) -> Counted {
        gauge.inc();
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What every connection of a listener shares.
struct Shared {
    name: &'static str,
    builders: Builders,
    /// Request header fields at most (HTTP/1.1).
    max_headers: usize,
    gate: Arc<GateLimits>,
    /// The same, for connections that are not parked (TLS).
    gate_unparked: Arc<GateLimits>,
    /// Fired when the listener starts draining (or its future is
    /// dropped). Shared with the idle clock.
    stopping: Arc<Signal>,
    /// Fired when the drain time is up (or the listener's future is
    /// dropped).
    cut: Signal,
    gauges: ConnectionGauges,
    /// Closes parked connections at their keep-alive timeout.
    idle: IdleClock,
}

/// One accepted connection, ready to serve HTTP once its bytes flow. It
/// holds the connection's slot under max_connections and counts it open
/// until it drops.
struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    fn new(shared: Arc<Shared>, peer: SocketAddr, permit: OwnedSemaphorePermit) -> Conn {
        shared.gauges.open.inc();
        Conn {
            shared,
            peer,
            _permit: permit,
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.gauges.open.dec();
    }
}

/// An HTTP/1.1 connection between requests, with no hyper connection: the
/// connection's slot, the socket, and the service that the next hyper
/// connection serves.
struct Parked<I, S> {
    io: ParkedIo<I>,
    service: S,
    /// Last: its slot is given back once the socket has closed.
    conn: Conn,
}

/// How one hyper connection of an HTTP/1.1 client connection ended.
enum Ended {
    /// Taken apart while idle, to wait parked for the next request.
    Parked,
    /// Done: the client closed, keep-alive ended, or an error.
    Done(hyper::Result<()>),
    /// The drain time ran out.
    Cut,
}

impl Conn {
    /// A plaintext connection's task. It stays small: requests are served
    /// in a boxed future, dropped while the connection is parked, so that a
    /// parked connection's task holds its socket, deadline and service, and
    /// its wait on the listener's clock, and no room for serving a request.
    ///
    /// An `async` block, not an `async fn`: an `async fn` keeps its
    /// arguments for its whole life, and so would the block if it took
    /// them. The first serving future, which owns them, is made before it;
    /// the serving futures own the connection and hand it back, with the
    /// rest, in `Parked`, kept whole rather than taken apart, which would
    /// store its parts beside it. This future is what every idle connection
    /// costs (see "Performance" in the README).
    fn serve_tcp<S, B>(
        self,
        stream: tokio::net::TcpStream,
        service: S,
        first_head_by: tokio::time::Instant,
    ) -> impl Future<Output = ()> + Send
    where
        S: ConnService<B>,
        B: ConnBody,
    {
        let first = Box::pin(self.serve(stream, service, first_head_by));
        async move {
            let Some(mut parked) = first.await else {
                return;
            };
            loop {
                let resume = {
                    let shared = &parked.conn.shared;
                    let _parked = Counted::new(&shared.gauges.parked);
                    // Idle: a drain (`stopping`, which also stops the clock,
                    // fires before the cut) has nothing to wait for.
                    shared.idle.wait(&parked.io).await
                };
                if !resume {
                    return;
                }
                let Parked { io, service, conn } = parked;
                let service = Tracked::new(service);
                let gate = io.resume(Arc::clone(&service.activity), Arc::clone(&conn.shared.gate));
                match Box::pin(conn.serve_h1(gate, service)).await {
                    Some(next) => parked = next,
                    None => return,
                }
            }
        }
    }

    /// The TLS handshake, then [`Conn::serve`] (never parked).
    async fn serve_tls<S, B>(
        self,
        tls: &ServerTls,
        handshake_timeout: Duration,
        stream: tokio::net::TcpStream,
        service: S,
        first_head_by: tokio::time::Instant,
    ) where
        S: ConnService<B>,
        B: ConnBody,
    {
        let (name, peer) = (self.shared.name, self.peer);
        let handshake = tokio::time::timeout(handshake_timeout, tls.acceptor().accept(stream));
        let stream = tokio::select! {
            done = handshake => match done {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    debug!(listener = name, %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(listener = name, %peer, "TLS handshake timed out");
                    return;
                }
            },
            // Shutdown began: a connection still in its handshake has sent
            // no request, so there is nothing to drain. Close it, as a
            // plaintext connection waiting for its first request is closed,
            // instead of letting the drain wait for the handshake timeout.
            () = self.shared.stopping.fired() => return,
            () = self.shared.cut.fired() => return,
        };
        // TLS connections are not parked (`Transport::PARKS`): this ends
        // with the connection.
        let parked = self.serve(stream, service, first_head_by).await;
        debug_assert!(parked.is_none(), "a TLS connection was parked");
    }

    /// Serves the connection until it ends, or until it is parked: then
    /// returns what the next requests are served with.
    async fn serve<I, S, B>(
        self,
        io: I,
        service: S,
        first_head_by: tokio::time::Instant,
    ) -> Option<Parked<I, S>>
    where
        I: Transport,
        S: ConnService<B>,
        B: ConnBody,
    {
        let limits = if I::PARKS {
            &self.shared.gate
        } else {
            &self.shared.gate_unparked
        };
        let service = Tracked::new(service);
        let activity = Arc::clone(&service.activity);
        let mut gate = Gate::new(io, activity, Arc::clone(limits), first_head_by);
        // The first bytes tell HTTP/2's preface from an HTTP/1.1 request.
        let mut first = [0u8; PREFACE_LEN];
        let read = tokio::select! {
            read = read_start(&mut gate, &mut first) => read,
            // A connection that has sent no request has nothing to drain.
            () = self.shared.stopping.fired() => return None,
            () = self.shared.cut.fired() => return None,
        };
        let read = match read {
            Ok(0) => return None,
            Ok(n) => n,
            Err(e) => {
                debug!(listener = self.shared.name, peer = %self.peer, error = %e, "connection ended before its first request");
                return None;
            }
        };
        gate.unread(bytes::Bytes::copy_from_slice(&first[..read]));
        if first[..read] == gate::H2_PREFACE[..read] {
            // Boxed: an HTTP/2 connection's state is kilobytes, which every
            // HTTP/1.1 connection would otherwise keep room for.
            Box::pin(self.serve_h2(gate, service)).await;
            None
        } else {
            self.serve_h1(gate, service).await
        }
    }

    async fn serve_h2<I, S, B>(&self, gate: Gate<I>, service: Tracked<S>)
    where
        I: Transport,
        S: ConnService<B>,
        B: ConnBody,
    {
        let conn = self
            .shared
            .builders
            .h2
            .serve_connection(TokioIo::new(gate), service);
        let mut conn = std::pin::pin!(conn);
        let mut draining = false;
        let done = loop {
            tokio::select! {
                done = conn.as_mut() => break done,
                () = self.shared.stopping.fired(), if !draining => {
                    // GOAWAY; the streams open finish.
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                () = self.shared.cut.fired() => {
                    debug!(listener = self.shared.name, peer = %self.peer, "connection cut at the end of the drain");
                    return;
                }
            }
        };
        if let Err(e) = done {
            debug!(listener = self.shared.name, peer = %self.peer, error = %e, "connection ended with an error");
        }
    }

    /// Serves HTTP/1.1 until the connection ends (`None`) or is parked.
    async fn serve_h1<I, S, B>(
        self,
        mut gate: Gate<I>,
        mut service: Tracked<S>,
    ) -> Option<Parked<I, S>>
    where
        I: Transport,
        S: ConnService<B>,
        B: ConnBody,
    {
        let activity = Arc::clone(&service.activity);
        loop {
            // Plain requests first, without hyper (`h1`); hyper's connection
            // for the first that is not, until it is parked or ends.
            match h1::serve(&mut gate, &mut service, &activity, &self.shared).await {
                h1::Outcome::Hyper => {}
                h1::Outcome::Park => {
                    return Some(Parked {
                        io: gate.park(),
                        service: service.inner,
                        conn: self,
                    })
                }
                h1::Outcome::Close => {
                    self.shutdown(&mut gate).await;
                    return None;
                }
                h1::Outcome::Cut => {
                    debug!(listener = self.shared.name, peer = %self.peer, "connection cut at the end of the drain");
                    return None;
                }
            }
            // In a block: the box, emptied by `into_parts`, is freed at the
            // end of its scope, which must not outlast the connection's
            // serving (a parked connection kept it).
            let (ended, read_buf) = {
                // Boxed: the task serving a connection keeps no room for it
                // between hyper connections.
                let mut conn = Box::new(
                    self.shared
                        .builders
                        .h1
                        .serve_connection(TokioIo::new(gate), service),
                );
                let ended = self.run_h1(&mut conn, &activity).await;
                // The read buffer, even empty, may hold hyper's whole
                // buffer: dropped unless it has bytes to give back.
                let parts = conn.into_parts();
                gate = parts.io.into_inner();
                service = parts.service;
                (ended, parts.read_buf)
            };
            match ended {
                Ended::Parked => {}
                Ended::Done(Err(e)) => {
                    debug!(listener = self.shared.name, peer = %self.peer, error = %e, "connection ended with an error");
                    return None;
                }
                Ended::Done(Ok(())) => {
                    self.shutdown(&mut gate).await;
                    return None;
                }
                Ended::Cut => {
                    debug!(listener = self.shared.name, peer = %self.peer, "connection cut at the end of the drain");
                    return None;
                }
            }
            if !read_buf.is_empty() {
                // hyper had read on without parsing it yet: go on at once.
                gate.unread(read_buf);
                continue;
            }
            return Some(Parked {
                io: gate.park(),
                service: service.inner,
                conn: self,
            });
        }
    }

    /// What hyper does at the end of a connection it owns (a TLS
    /// close_notify waits on the client: bounded).
    async fn shutdown<I: Transport>(&self, gate: &mut Gate<I>) {
        // Boxed: rare, so the task keeps no room for its timer.
        let shutdown = Box::pin(tokio::time::timeout(SHUTDOWN_TIMEOUT, gate.shutdown()));
        tokio::select! {
            _ = shutdown => {}
            () = self.shared.cut.fired() => {}
        }
    }

    /// Drives one hyper connection until it is parked, ends, or is cut.
    async fn run_h1<I, S, B>(
        &self,
        conn: &mut http1::Connection<TokioIo<Gate<I>>, Tracked<S>>,
        activity: &Activity,
    ) -> Ended
    where
        I: Transport,
        S: ConnService<B>,
        B: ConnBody,
    {
        // Keep-alive is off: the connection ends after its response.
        // (Shared by the poll below and the drain branch, in one task.)
        let closing = std::sync::atomic::AtomicBool::new(false);
        loop {
            let polled = std::future::poll_fn(|cx| {
                if let Poll::Ready(done) = conn.poll_without_shutdown(cx) {
                    return Poll::Ready(Ended::Done(done));
                }
                if !closing.load(Relaxed) && activity.take_park() {
                    // The gate saw it idle: no request in flight, the last
                    // response flushed, nothing received. hyper, idle too,
                    // ends the connection at once, leaving the socket open.
                    Pin::new(&mut *conn).graceful_shutdown();
                    match conn.poll_without_shutdown(cx) {
                        Poll::Ready(Ok(())) => return Poll::Ready(Ended::Parked),
                        Poll::Ready(done) => return Poll::Ready(Ended::Done(done)),
                        // Not idle after all: keep-alive is now off, and the
                        // connection ends with its response, not parked.
                        Poll::Pending => closing.store(true, Relaxed),
                    }
                }
                Poll::Pending
            });
            tokio::select! {
                ended = polled => return ended,
                () = self.shared.stopping.fired(), if !closing.load(Relaxed) => {
                    // The response in progress says `connection: close`; an
                    // idle connection ends now.
                    Pin::new(&mut *conn).graceful_shutdown();
                    closing.store(true, Relaxed);
                }
                () = self.shared.cut.fired() => return Ended::Cut,
            }
        }
    }
}

/// Reads the connection's first bytes, up to the length of HTTP/2's
/// preface or until they differ from it: 0 if it closed first.
async fn read_start<I: Transport>(gate: &mut Gate<I>, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = gate.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
        if buf[..filled] != gate::H2_PREFACE[..filled] {
            break;
        }
    }
    Ok(filled)
}

/// The connection's service, counting its requests in flight for the gate
/// until each response body ends.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    /// A fresh count, for a connection's start or its resumption.
    fn new(inner: S) -> Tracked<S> {
        Tracked {
            inner,
            activity: Arc::new(Activity::default()),
        }
    }
}

impl<S, B> Service<Request<RequestBody>> for Tracked<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<RequestBody>) -> Self::Future {
        TrackedFuture {
            busy: Some(self.activity.start()),
            inner: self.inner.call(req),
        }
    }
}

/// hyper's requests, as the service takes them.
impl<S, B> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        Service::<Request<RequestBody>>::call(self, req.map(RequestBody::from))
    }
}

/// A request's body as a listener's service gets it: hyper's, or the bytes
/// that came with a plain HTTP/1.1 request's head (`h1`).
#[derive(Debug)]
pub struct RequestBody(BodyKind);

#[derive(Debug)]
enum BodyKind {
    Hyper(Incoming),
    /// `None` once sent.
    Full(Option<Bytes>),
}

impl From<Incoming> for RequestBody {
    fn from(body: Incoming) -> RequestBody {
        RequestBody(BodyKind::Hyper(body))
    }
}

impl RequestBody {
    fn full(bytes: Bytes) -> RequestBody {
        RequestBody(BodyKind::Full((!bytes.is_empty()).then_some(bytes)))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().0 {
            BodyKind::Hyper(body) => Pin::new(body).poll_frame(cx),
            BodyKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            BodyKind::Hyper(body) => body.is_end_stream(),
            BodyKind::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            BodyKind::Hyper(body) => body.size_hint(),
            BodyKind::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

pin_project_lite::pin_project! {
    struct TrackedFuture<F> {
        #[pin]
        inner: F,
        busy: Option<Busy>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let busy = this.busy.take();
        Poll::Ready(result.map(|r| r.map(|inner| TrackedBody { inner, busy })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted until it ends.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        busy: Option<Busy>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if frame.is_none() {
            *this.busy = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
