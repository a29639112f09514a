//! The accept loop every listener shares (proxy, admin, demo model servers):
//! accept, optionally a TLS handshake (ALPN `h2` or `http/1.1`), serve
//! HTTP/1.1 and HTTP/2 on the same port, and on
//! cancel stop accepting and drain the open connections for at most the
//! drain time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http_body::{Frame, SizeHint};
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::tls::ServerTls;
use gate::{Activity, Busy, Gate, GateLimits};

mod gate;

/// How long to pause after a failed accept (typically out of file
/// descriptors) before trying again, so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

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

/// The connection builder: HTTP/1.1 with keep-alive and HTTP/2 with prior
/// knowledge, told apart by the connection preface.
pub fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .max_headers(limits.max_headers)
        // The gate times request heads, and answers 408 where hyper would
        // close without a word.
        .header_read_timeout(None)
        // hyper's floor for its read buffer is 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
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
/// `make` builds the service for one connection. `name` labels the log lines
/// (`proxy`, `admin`, ...).
pub async fn serve<M, S, B>(
    name: &'static str,
    listener: TcpListener,
    make: M,
    token: CancellationToken,
    drain: Duration,
) where
    M: Fn(&Accepted) -> S,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_with(name, listener, None, make, token, drain, &Limits::default()).await;
}

/// [`serve`] with explicit [`Limits`], and TLS when `tls` is set.
pub async fn serve_with<M, S, B>(
    name: &'static str,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    make: M,
    token: CancellationToken,
    drain: Duration,
    limits: &Limits,
) where
    M: Fn(&Accepted) -> S,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = Arc::new(builder(limits));
    // One permit per open connection: at the cap, the loop stops accepting
    // (the kernel's backlog holds newcomers) until a connection closes.
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Every connection is watched from its accept on, before its TLS
    // handshake, so the drain counts it; `shutdown` consumes this value.
    let graceful = GracefulShutdown::new();
    // Cancelled when the drain time is up, or if this future is dropped:
    // every connection task listens and drops its connection (closing the
    // socket). Connections run in their own tasks, so without this they
    // would outlive `serve` and a "cut" drain would cut nothing.
    let cut = CancellationToken::new();
    let _cut_on_return = cut.clone().drop_guard();
    let handshake_timeout = limits.header_read_timeout;
    let gate_limits = GateLimits {
        header_timeout: limits.header_read_timeout,
        idle_timeout: limits.keepalive_timeout,
        max_head: limits.max_header_bytes.max(8192),
    };
    loop {
        let permit = tokio::select! {
            () = token.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                // Never closed while this loop runs.
                Err(_) => break,
            },
        };
        tokio::select! {
            () = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Latency over throughput: inference responses are small
                    // and each extra 40 ms of Nagle would show in p99.
                    if let Err(e) = stream.set_nodelay(true) {
                        debug!(listener = name, %peer, error = %e, "cannot set TCP_NODELAY");
                    }
                    let accepted = Accepted { peer, tls: tls.is_some() };
                    let first_head_by = tokio::time::Instant::now() + gate_limits.header_timeout;
                    let service = make(&accepted);
                    let conn = Conn {
                        name,
                        peer,
                        gate: gate_limits,
                        first_head_by,
                        builder: Arc::clone(&builder),
                        watcher: graceful.watcher(),
                        cut: cut.clone(),
                    };
                    let tls = tls.clone();
                    let stopping = token.clone();
                    tokio::spawn(async move {
                        // Held for the connection's life: its slot under max_connections.
                        let _permit = permit;
                        match tls {
                            None => conn.serve(stream, service).await,
                            Some(tls) => {
                                let handshake = tokio::time::timeout(
                                    handshake_timeout,
                                    tls.acceptor().accept(stream),
                                );
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
                                    // Shutdown began: a connection still in its
                                    // handshake has sent no request, so there is
                                    // nothing to drain. Close it, as hyper closes a
                                    // plaintext connection waiting for its first
                                    // request, instead of letting the drain wait
                                    // for the handshake timeout.
                                    () = stopping.cancelled() => return,
                                    () = conn.cut.cancelled() => return,
                                };
                                conn.serve(stream, service).await;
                            }
                        }
                    });
                }
                Err(e) => {
                    warn!(listener = name, error = %e, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        info!(listener = name, connections = open, "draining connections");
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => {
            warn!(listener = name, drain_timeout = ?drain, "drain timed out; closing the remaining connections");
        }
    }
}

/// One accepted connection, ready to serve HTTP once its bytes flow.
struct Conn {
    name: &'static str,
    peer: SocketAddr,
    gate: GateLimits,
    first_head_by: tokio::time::Instant,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    cut: CancellationToken,
}

impl Conn {
    async fn serve<I, S, B>(self, io: I, service: S)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Conn {
            name,
            peer,
            gate,
            first_head_by,
            builder,
            watcher,
            cut,
        } = self;
        let activity = Arc::new(Activity::default());
        let io = Gate::new(io, Arc::clone(&activity), gate, first_head_by);
        let service = Tracked {
            inner: service,
            activity,
        };
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        tokio::select! {
            result = watcher.watch(conn) => if let Err(e) = result {
                debug!(listener = name, %peer, error = %e, "connection ended with an error");
            },
            () = cut.cancelled() => {
                debug!(listener = name, %peer, "connection cut at the end of the drain");
            }
        }
    }
}

/// The connection's service, counting its requests in flight for the gate
/// until each response body ends.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        TrackedFuture {
            busy: Some(self.activity.start()),
            inner: self.inner.call(req),
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
