//! The upstream client of a pool, on hyper's `client::conn`: per endpoint, a
//! lock-free stack of idle HTTP/1.1 connections, or one shared HTTP/2
//! connection.
//!
//! Why not hyper-util's pooled client: it serialises every checkout and
//! checkin on a mutex, hashes the request's scheme and authority into a map
//! to find the pool, and spawns a task per HTTP/1.1 request only to wait
//! until the connection is free again. Here each endpoint carries its own
//! connections ([`Slot`]): a request, sent to an endpoint, pops an idle
//! connection from it (one compare-and-swap), and its response
//! body pushes the connection back the moment it has read the last byte, in
//! the task that read it. Only a connection still sending its request's
//! body then (the upstream answered before reading all of it) waits in a
//! task of its own until it is free: a request never waits on another's
//! upload.
//!
//! Behaviour kept from hyper-util's client, on which the proxy relies:
//! - HTTP/1.1 requests go out in origin form with a `Host` header (the
//!   client's own if it sent one); HTTP/2 requests keep the absolute URI,
//!   from which hyper takes `:scheme` and `:authority`.
//! - A request that a reused connection could not take (it closed while
//!   idle, before any of the request was written) goes on the next idle
//!   connection or a new one: the race of an idle connection closing is
//!   invisible to the caller. On a new connection it is an error.
//! - Connect failures (TCP, TLS, the HTTP/2 handshake) are
//!   [`UpstreamError::is_connect`]: nothing reached the endpoint, and the
//!   request was dropped untouched, which the retry relies on.
//! - Idle HTTP/1.1 connections close after [`IDLE_TIMEOUT`], and at most
//!   `max_idle` stay per endpoint; the one used last is reused first, so
//!   those a burst left behind idle out. The HTTP/2 connection stays open,
//!   pinged every [`H2_PING_INTERVAL`] and closed if a ping goes unanswered
//!   (a half-open connection would otherwise time every request out).

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use std::{fmt, pin::Pin};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{header, HeaderValue, Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tokio_util::either::Either;
use tracing::debug;

use super::connector::{Counted, CountingConnector, UpstreamStream};
use super::endpoint::Endpoint;
use super::stack::Stack;
use super::{Protocol, UpstreamBody};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long an idle upstream connection stays open. Longer than any
/// sensible probe interval, so a probed standby stays warm.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How often an HTTP/2 connection is pinged, and how long an answer may take.
pub const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection: TCP connect, TLS or the HTTP/2 handshake failed.
    /// Nothing of the request was sent.
    #[error("connect to {authority} failed")]
    Connect {
        authority: Authority,
        #[source]
        source: BoxError,
    },
    /// The connection failed while the request was on it, or before a new
    /// connection could take it.
    #[error("request failed")]
    Request(#[source] hyper::Error),
}

impl UpstreamError {
    /// Whether nothing reached the endpoint because no connection to it
    /// could be made.
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. })
    }
}

/// The client of one pool. The connections themselves live in each
/// endpoint's [`Slot`], so an endpoint discovery adds comes with its own,
/// and one it removes takes its own away once its last request is done.
pub struct UpstreamClient {
    protocol: Protocol,
    connector: CountingConnector,
    max_idle: usize,
    /// The probes' client of a pool with `warm_connections = 0`: it uses
    /// each endpoint's cold slot, which keeps no connection.
    cold: bool,
}

/// The connections of one endpoint.
pub struct Slot {
    authority: Authority,
    /// `scheme://authority/`, what the connector connects to.
    target: Uri,
    /// `Host` for HTTP/1.1 requests that bring none.
    host: HeaderValue,
    /// The endpoint's open-connection counter, handed to the connector.
    connections: Arc<AtomicUsize>,
    /// HTTP/1.1: the idle connections, the last used on top; `None` keeps
    /// none (each request connects, and its connection closes after it).
    /// Bounded by `idle_count`.
    idle: Option<Stack<Conn>>,
    idle_count: AtomicUsize,
    max_idle: usize,
    /// HTTP/2: the connection every request shares.
    shared: ArcSwapOption<http2::SendRequest<UpstreamBody>>,
    /// HTTP/2: held while connecting, so that a burst of requests finding
    /// no connection opens one, not one each. Never taken on a request
    /// that finds the connection up.
    connecting: tokio::sync::Mutex<()>,
}

/// An idle HTTP/1.1 connection, or one a request holds.
struct Conn {
    sender: http1::SendRequest<UpstreamBody>,
    /// Shared with the connection's task, which closes it when idle too long.
    state: Arc<ConnState>,
}

impl UpstreamClient {
    /// A client keeping up to `max_idle` idle HTTP/1.1 connections per
    /// endpoint (0: none); `cold` for the probes' client that uses the
    /// endpoints' cold slots.
    pub fn new(
        protocol: Protocol,
        connector: CountingConnector,
        max_idle: usize,
        cold: bool,
    ) -> UpstreamClient {
        UpstreamClient {
            protocol,
            connector,
            max_idle,
            cold,
        }
    }

    /// The connections of one endpoint through this client: to `scheme`
    /// and `authority`, with `host` (else the authority) as the `Host` of
    /// HTTP/1.1 requests that bring none, counted on `connections`.
    pub fn slot(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        host: Option<&Authority>,
        connections: Arc<AtomicUsize>,
    ) -> Arc<Slot> {
        let target = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .unwrap_or_default();
        Arc::new(Slot {
            authority: authority.clone(),
            target,
            host: host_header(scheme, host.unwrap_or(authority)),
            connections,
            idle: (self.max_idle > 0 && self.protocol == Protocol::Http1).then(Stack::new),
            idle_count: AtomicUsize::new(0),
            max_idle: self.max_idle,
            shared: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether this is the probes' client that keeps no connection.
    pub fn is_cold(&self) -> bool {
        self.cold
    }

    /// Sends `request`, whose URI is absolute and names `endpoint`, and
    /// returns the response head; its body streams.
    ///
    /// Not an `async fn`: the request is readied here and moved once into
    /// the future of its protocol, which is all the returned future holds.
    /// Every level of `async fn` keeps its own copy of an argument, and
    /// every copy is moved on each request (see "Performance" in the README).
    pub fn request<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        mut request: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<Response<UpstreamIncoming>, UpstreamError>> + Send + 'a {
        let slot = endpoint.slot(self.cold);
        match self.protocol {
            Protocol::Http1 => {
                request
                    .headers_mut()
                    .entry(header::HOST)
                    .or_insert_with(|| slot.host.clone());
                *request.version_mut() = http::Version::HTTP_11;
                origin_form(request.uri_mut());
                Either::Left(self.http1(slot, request))
            }
            Protocol::H2c | Protocol::H2 => {
                *request.version_mut() = http::Version::HTTP_2;
                Either::Right(self.http2(slot, request))
            }
        }
    }

    /// Sends a readied HTTP/1.1 `request` on an idle connection of `slot`,
    /// or a new one. One that closed while idle is passed over: the request
    /// goes on the next.
    ///
    /// An `async` block, not an `async fn`, here and in `http2`: an `async
    /// fn` keeps a second copy of each argument, and this future is moved
    /// on every request.
    #[allow(clippy::manual_async_fn)]
    fn http1<'a>(
        &'a self,
        slot: &'a Arc<Slot>,
        mut request: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<Response<UpstreamIncoming>, UpstreamError>> + Send + 'a {
        async move {
            loop {
                let (mut conn, reused) = match slot.checkout() {
                    Some(conn) => (conn, true),
                    // Boxed: connecting is rare, and inline its state would
                    // make every request's future (and so every client
                    // connection, which keeps room for one) kilobytes larger.
                    None => (Box::pin(self.connect_http1(slot)).await?, false),
                };
                if let Err(e) = conn.sender.ready().await {
                    // It closed while idle: the next one. A new one that
                    // closes before its first request is the endpoint's doing.
                    if reused {
                        debug!(endpoint = %slot.authority, error = %e, "idle upstream connection closed; taking another");
                        continue;
                    }
                    return Err(UpstreamError::Request(e));
                }
                match conn.sender.try_send_request(request).await {
                    Ok(response) => {
                        let checkin = slot.idle.is_some().then(|| Checkin {
                            conn,
                            slot: Arc::clone(slot),
                        });
                        return Ok(response.map(|body| UpstreamIncoming::new(body, checkin)));
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if reused => {
                            debug!(endpoint = %slot.authority, error = %e.error(), "idle upstream connection closed before the request; taking another");
                            request = unsent;
                        }
                        _ => return Err(UpstreamError::Request(e.into_error())),
                    },
                }
            }
        }
    }

    /// Sends a readied HTTP/2 `request` on the shared connection of `slot`,
    /// made first if there is none; one found dead is forgotten and the
    /// request goes on a new one.
    #[allow(clippy::manual_async_fn)]
    fn http2<'a>(
        &'a self,
        slot: &'a Arc<Slot>,
        mut request: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<Response<UpstreamIncoming>, UpstreamError>> + Send + 'a {
        async move {
            loop {
                let (shared, reused) = match slot.shared.load_full() {
                    Some(shared) if !shared.is_closed() => (shared, true),
                    _ => Box::pin(self.connect_http2(slot)).await?,
                };
                let mut sender = (*shared).clone();
                if let Err(e) = sender.ready().await {
                    slot.forget(&shared);
                    if reused {
                        continue;
                    }
                    return Err(UpstreamError::Request(e));
                }
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        return Ok(response.map(|body| UpstreamIncoming::new(body, None)))
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if reused => {
                            slot.forget(&shared);
                            request = unsent;
                        }
                        _ => return Err(UpstreamError::Request(e.into_error())),
                    },
                }
            }
        }
    }

    /// Connects to the endpoint of `slot`: TCP, and TLS for https.
    async fn connect(&self, slot: &Slot) -> Result<Counted<UpstreamStream>, UpstreamError> {
        self.connector
            .connect(slot.target.clone(), Arc::clone(&slot.connections))
            .await
            .map_err(|e| slot.connect_failed(e))
    }

    async fn connect_http1(&self, slot: &Slot) -> Result<Conn, UpstreamError> {
        let io = self.connect(slot).await?;
        let (sender, connection) = http1::Builder::new()
            // One write of head and body copied together, as the
            // listener does (see server::Builders).
            .writev(false)
            .handshake(io)
            .await
            .map_err(|e| slot.connect_failed(e))?;
        let state = Arc::new(ConnState::busy());
        let closer = Arc::clone(&state);
        let authority = slot.authority.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            loop {
                tokio::select! {
                    done = &mut connection => {
                        if let Err(e) = done {
                            debug!(endpoint = %authority, error = %e, "upstream connection ended");
                        }
                        return;
                    }
                    () = tokio::time::sleep(closer.until_idle_check(now_ms())) => {
                        if closer.close_if_idle(now_ms()) {
                            debug!(endpoint = %authority, "closing idle upstream connection");
                            return;
                        }
                    }
                }
            }
        });
        Ok(Conn { sender, state })
    }

    /// The endpoint's shared HTTP/2 connection, made now unless another
    /// request made it meanwhile (then reused: true).
    async fn connect_http2(
        &self,
        slot: &Slot,
    ) -> Result<(Arc<http2::SendRequest<UpstreamBody>>, bool), UpstreamError> {
        let _connecting = slot.connecting.lock().await;
        if let Some(shared) = slot.shared.load_full() {
            if !shared.is_closed() {
                return Ok((shared, true));
            }
        }
        let io = self.connect(slot).await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(io)
            .await
            .map_err(|e| slot.connect_failed(e))?;
        let authority = slot.authority.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(endpoint = %authority, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        let shared = Arc::new(sender);
        slot.shared.store(Some(Arc::clone(&shared)));
        Ok((shared, false))
    }
}

impl fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("protocol", &self.protocol)
            .field("cold", &self.cold)
            .finish()
    }
}

// === impl Slot ===

impl Slot {
    /// No connection to this endpoint: TCP, TLS or the HTTP handshake.
    fn connect_failed(&self, e: impl Into<BoxError>) -> UpstreamError {
        UpstreamError::Connect {
            authority: self.authority.clone(),
            source: e.into(),
        }
    }

    /// An idle connection that its task has not closed, if any.
    fn checkout(&self) -> Option<Conn> {
        let idle = self.idle.as_ref()?;
        while let Some(conn) = idle.pop() {
            self.idle_count.fetch_sub(1, Ordering::Relaxed);
            if conn.state.take() && !conn.sender.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    /// Takes back a connection whose response has been read. It is idle
    /// once its request has been sent whole too: at once, as a rule; if the
    /// upstream answered before reading all of the body, a task waits until
    /// it has, so no request ever pops a connection busy with another's
    /// upload.
    fn checkin(self: &Arc<Self>, mut conn: Conn) {
        if self.idle.is_none() || conn.sender.is_closed() {
            return;
        }
        if conn.sender.is_ready() {
            self.put(conn);
            return;
        }
        let slot = Arc::clone(self);
        tokio::spawn(async move {
            if conn.sender.ready().await.is_ok() {
                slot.put(conn);
            }
        });
    }

    /// Pushes an idle connection; when `max_idle` are idle already, drops
    /// it, which closes it.
    fn put(&self, conn: Conn) {
        let Some(idle) = &self.idle else { return };
        if self.idle_count.fetch_add(1, Ordering::Relaxed) >= self.max_idle {
            // Full: this one closes as it drops.
            self.idle_count.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        conn.state.release(now_ms());
        idle.push(conn);
    }

    /// Drops the shared HTTP/2 connection if it is still `dead`.
    fn forget(&self, dead: &Arc<http2::SendRequest<UpstreamBody>>) {
        self.shared
            .compare_and_swap(dead, None::<Arc<http2::SendRequest<UpstreamBody>>>);
    }
}

/// Whether a connection is in use, idle (since when) or closed by its task.
/// Checkout and the task's idle check race for an idle connection through
/// one compare-and-swap each: exactly one wins.
struct ConnState(AtomicU64);

const BUSY: u64 = 0;
const CLOSED: u64 = u64::MAX;

impl ConnState {
    fn busy() -> ConnState {
        ConnState(AtomicU64::new(BUSY))
    }

    /// Marks it idle from `now` (see [`now_ms`]).
    fn release(&self, now: u64) {
        self.0.store(now.clamp(1, CLOSED - 1), Ordering::Release);
    }

    /// Takes an idle connection for a request; false if its task closed it.
    fn take(&self) -> bool {
        self.0.swap(BUSY, Ordering::AcqRel) != CLOSED
    }

    /// How long the task sleeps, from `now`, before looking again.
    fn until_idle_check(&self, now: u64) -> Duration {
        match self.0.load(Ordering::Acquire) {
            BUSY | CLOSED => IDLE_TIMEOUT,
            since => {
                let idle = Duration::from_millis(now.saturating_sub(since));
                IDLE_TIMEOUT
                    .saturating_sub(idle)
                    .max(Duration::from_millis(10))
            }
        }
    }

    /// Marks the connection closed if, at `now`, it has been idle for
    /// [`IDLE_TIMEOUT`]; true when it did, and the task then closes it.
    fn close_if_idle(&self, now: u64) -> bool {
        let since = self.0.load(Ordering::Acquire);
        if since == BUSY || since == CLOSED {
            return false;
        }
        let idle = Duration::from_millis(now.saturating_sub(since));
        idle >= IDLE_TIMEOUT
            && self
                .0
                .compare_exchange(since, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

/// Milliseconds since the first call.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
}

/// What a response body needs to hand its connection back.
struct Checkin {
    conn: Conn,
    slot: Arc<Slot>,
}

/// A response body from an upstream: hyper's, which returns its HTTP/1.1
/// connection to the idle stack once it has been read to the end. A body
/// dropped before its end takes the connection with it (hyper closes it:
/// the rest of the response is still on it).
pub struct UpstreamIncoming {
    body: Incoming,
    checkin: Option<Checkin>,
}

impl UpstreamIncoming {
    fn new(body: Incoming, checkin: Option<Checkin>) -> UpstreamIncoming {
        let mut body = UpstreamIncoming { body, checkin };
        body.check_in_if_ended();
        body
    }

    fn check_in_if_ended(&mut self) {
        if self.checkin.is_some() && crate::proxy::ended(self) {
            self.check_in();
        }
    }

    fn check_in(&mut self) {
        if let Some(Checkin { conn, slot }) = self.checkin.take() {
            slot.checkin(conn);
        }
    }
}

impl Body for UpstreamIncoming {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.check_in(),
            // Trailers are the last frame, and hyper's server stops there.
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => this.check_in(),
            Poll::Ready(Some(Ok(_))) => this.check_in_if_ended(),
            // The connection is broken: it goes with the body.
            Poll::Ready(Some(Err(_))) => this.checkin = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl fmt::Debug for UpstreamIncoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamIncoming")
            .field("pooled", &self.checkin.is_some())
            .finish()
    }
}

/// The `Host` header for an endpoint: its authority, without the scheme's
/// default port (as hyper-util's client writes it).
fn host_header(scheme: &Scheme, authority: &Authority) -> HeaderValue {
    let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    let host = match authority.port_u16() {
        Some(port) if port == default_port => authority.host(),
        _ => authority.as_str(),
    };
    HeaderValue::from_str(host).unwrap_or_else(|_| HeaderValue::from_static("localhost"))
}

/// `scheme://authority/path?query` to `/path?query`, for HTTP/1.1.
fn origin_form(uri: &mut Uri) {
    let origin = match uri.path_and_query() {
        Some(path) if path.as_str() != "/" => {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(path.clone());
            Uri::from_parts(parts).unwrap_or_default()
        }
        _ => Uri::default(),
    };
    *uri = origin;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_form_keeps_path_and_query_only() {
        let mut uri: Uri = "http://10.0.0.1:8000/v2/models/iris/infer?x=1"
            .parse()
            .unwrap();
        origin_form(&mut uri);
        assert_eq!(uri, "/v2/models/iris/infer?x=1");
        let mut root: Uri = "http://10.0.0.1:8000".parse().unwrap();
        origin_form(&mut root);
        assert_eq!(root, "/");
    }

    #[test]
    fn host_omits_the_default_port_only() {
        let a: Authority = "models.internal:80".parse().unwrap();
        assert_eq!(host_header(&Scheme::HTTP, &a), "models.internal");
        assert_eq!(host_header(&Scheme::HTTPS, &a), "models.internal:80");
        let b: Authority = "10.0.0.1:8000".parse().unwrap();
        assert_eq!(host_header(&Scheme::HTTP, &b), "10.0.0.1:8000");
    }

    const IDLE_MS: u64 = IDLE_TIMEOUT.as_millis() as u64;

    #[test]
    fn only_a_connection_idle_for_the_timeout_is_closed() {
        let state = ConnState::busy();
        assert!(!state.close_if_idle(10 * IDLE_MS), "busy: never closed");
        state.release(1_000);
        assert!(!state.close_if_idle(1_000 + IDLE_MS - 1));
        assert_eq!(
            state.until_idle_check(1_000 + IDLE_MS - 1),
            Duration::from_millis(10)
        );
        assert_eq!(state.until_idle_check(1_000), IDLE_TIMEOUT);
        assert!(state.close_if_idle(1_000 + IDLE_MS));
        assert!(!state.take(), "a closed connection is never taken");
    }

    #[test]
    fn a_connection_taken_first_is_not_closed_under_the_request() {
        let state = ConnState::busy();
        state.release(1_000);
        assert!(state.take());
        assert!(!state.close_if_idle(1_000 + 2 * IDLE_MS));
        state.release(5_000);
        assert!(!state.close_if_idle(5_000 + IDLE_MS / 2));
        assert!(state.take(), "idle but not yet too long: taken");
    }
}
