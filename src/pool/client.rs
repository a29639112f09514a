//! The upstream client of a pool: per endpoint, a lock-free stack of idle
//! HTTP/1.1 connections spoken in the request's own task (`h1.rs`), or one
//! shared HTTP/2 connection on hyper's `client::conn`.
//!
//! Why not hyper-util's pooled client: it serialises every checkout and
//! checkin on a mutex, hashes the request's scheme and authority into a map
//! to find the pool, and spawns a task per HTTP/1.1 request only to wait
//! until the connection is free again. Here each endpoint carries its own
//! connections ([`Slot`]): a request, sent to an endpoint, pops an idle
//! connection from it (one compare-and-swap), and its response body pushes
//! the connection back the moment it has read the last byte, in the task
//! that read it. A connection whose upstream answered before the whole
//! request body was sent is not reused: a request never waits on another's
//! upload.
//!
//! Behaviour kept from hyper-util's client, on which the proxy relies:
//! - HTTP/1.1 requests go out in origin form with a `Host` header (the
//!   client's own if it sent one); HTTP/2 requests keep the absolute URI,
//!   from which hyper takes `:scheme` and `:authority`.
//! - An idle connection the upstream closed is never used: each is watched
//!   while idle (a waker on its socket that wakes the pool's prober, which
//!   closes it, [`Slot::sweep`]), and looked at again when it is taken; the
//!   request goes on the next idle connection or a new one. A close that
//!   crosses the request on the wire is an error, as with hyper's client.
//! - Connect failures (TCP, TLS, the HTTP/2 handshake) are
//!   [`UpstreamError::is_connect`]: nothing reached the endpoint, and the
//!   request was dropped untouched, which the retry relies on.
//! - Idle HTTP/1.1 connections close after [`IDLE_TIMEOUT`] (found when
//!   taken, or by the prober's sweep after each round), and at most
//!   `max_idle` stay per endpoint; the one used last is reused first, so
//!   those a burst left behind idle out. The HTTP/2 connection stays open,
//!   pinged every [`H2_PING_INTERVAL`] and closed if a ping goes unanswered
//!   (a half-open connection would otherwise time every request out).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use std::{fmt, pin::Pin};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{header, HeaderValue, Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tokio_util::either::Either;
use tracing::debug;

use super::connector::{Counted, CountingConnector, UpstreamStream};
use super::endpoint::Endpoint;
use super::h1::{H1Body, H1Conn, H1Error};
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
    /// connection could take it; or the request's body failed (its error is
    /// the source).
    #[error("request failed")]
    Request(#[source] BoxError),
}

impl UpstreamError {
    /// Whether nothing reached the endpoint because no connection to it
    /// could be made.
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. })
    }

    /// What was wrong with the response, when the endpoint answered one
    /// that is not HTTP/1.1 as RFC 9112 frames it.
    pub fn malformed(&self) -> Option<&'static str> {
        match self {
            UpstreamError::Request(e) => match e.downcast_ref::<H1Error>() {
                Some(H1Error::Malformed(why)) => Some(why),
                _ => None,
            },
            UpstreamError::Connect { .. } => None,
        }
    }
}

/// The client of one pool. The connections themselves live in each
/// endpoint's [`Slot`], so an endpoint discovery adds comes with its own,
/// and one it removes takes its own away once its last request is done.
pub struct UpstreamClient {
    protocol: Protocol,
    /// Notified when something comes on an idle HTTP/1.1 connection: the
    /// upstream closed it, most likely. The prober waits on it and sweeps.
    stirred: Arc<tokio::sync::Notify>,
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
    idle: Option<Stack<H1Conn>>,
    idle_count: AtomicUsize,
    /// Set by `watch`, which is registered for reads on each idle
    /// connection.
    stirred: Arc<Stirred>,
    watch: Waker,
    max_idle: usize,
    /// HTTP/2: the connection every request shares.
    shared: ArcSwapOption<http2::SendRequest<UpstreamBody>>,
    /// HTTP/2: held while connecting, so that a burst of requests finding
    /// no connection opens one, not one each. Never taken on a request
    /// that finds the connection up.
    connecting: tokio::sync::Mutex<()>,
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
            stirred: Arc::new(tokio::sync::Notify::new()),
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
        let stirred = Arc::new(Stirred {
            flag: AtomicBool::new(false),
            client: Arc::clone(&self.stirred),
        });
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
            stirred: Arc::clone(&stirred),
            watch: Waker::from(stirred),
            max_idle: self.max_idle,
            shared: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    /// Returns once something came on an idle connection of this client
    /// (the upstream closed it, as a rule): time to [`Slot::sweep`].
    pub async fn idle_stirred(&self) {
        self.stirred.notified().await;
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
    /// or a new one, in this task (see `h1.rs`).
    ///
    /// An `async` block, not an `async fn`, here and in `http2`: an `async
    /// fn` keeps a second copy of each argument, and this future is moved
    /// on every request.
    #[allow(clippy::manual_async_fn)]
    fn http1<'a>(
        &'a self,
        slot: &'a Arc<Slot>,
        request: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<Response<UpstreamIncoming>, UpstreamError>> + Send + 'a {
        async move {
            let conn = match slot.checkout() {
                Some(conn) => conn,
                // Boxed: connecting is rare, and inline its state would
                // make every request's future larger.
                None => H1Conn::new(Box::pin(self.connect(slot)).await?),
            };
            let response = conn.send(request).await.map_err(UpstreamError::Request)?;
            let slot = slot.idle.is_some().then(|| Arc::clone(slot));
            Ok(response.map(|body| UpstreamIncoming::new(Inner::H1(body), slot)))
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
                    return Err(UpstreamError::Request(e.into()));
                }
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        return Ok(response.map(|body| UpstreamIncoming::new(Inner::H2(body), None)))
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if reused => {
                            slot.forget(&shared);
                            request = unsent;
                        }
                        _ => return Err(UpstreamError::Request(e.into_error().into())),
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

    /// An idle connection that is still good, if any: one the upstream
    /// closed, sent stray bytes on, or that idled for [`IDLE_TIMEOUT`] is
    /// closed and passed over.
    fn checkout(&self) -> Option<H1Conn> {
        let idle = self.idle.as_ref()?;
        let now = now_ms();
        while let Some(mut conn) = idle.pop() {
            self.idle_count.fetch_sub(1, Ordering::Relaxed);
            if self.is_usable(&mut conn, now) {
                return Some(conn);
            }
            debug!(endpoint = %self.authority, "idle upstream connection closed or timed out; taking another");
        }
        None
    }

    /// Takes back a connection whose exchange ended cleanly, and watches
    /// it while it idles; when `max_idle` are idle already, drops it, which
    /// closes it.
    fn put(&self, mut conn: H1Conn) {
        if self.idle.is_none() || !conn.is_quiet(&self.watch) {
            return;
        }
        conn.trim();
        conn.idle_since = now_ms();
        self.push(conn);
    }

    /// Pushes an idle connection, unless `max_idle` are idle already: then
    /// it drops, which closes it.
    fn push(&self, conn: H1Conn) {
        let Some(idle) = &self.idle else { return };
        if self.idle_count.fetch_add(1, Ordering::Relaxed) >= self.max_idle {
            self.idle_count.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        idle.push(conn);
    }

    /// Closes the idle connections the upstream closed or that idled for
    /// [`IDLE_TIMEOUT`], keeping the others in their order: all of them
    /// (`all`, after each probe round), or only if something came on one
    /// since the last sweep. A request meanwhile that finds no idle
    /// connection opens one.
    pub fn sweep(&self, all: bool) {
        let Some(idle) = &self.idle else { return };
        if !self.stirred.flag.swap(false, Ordering::AcqRel) && !all {
            return;
        }
        let now = now_ms();
        let mut kept = Vec::new();
        while let Some(mut conn) = idle.pop() {
            self.idle_count.fetch_sub(1, Ordering::Relaxed);
            if self.is_usable(&mut conn, now) {
                kept.push(conn);
            }
        }
        // Popped newest first: pushed back oldest first.
        for conn in kept.into_iter().rev() {
            self.push(conn);
        }
    }

    /// Whether an idle connection may take a request at `now`: it has idled
    /// for less than [`IDLE_TIMEOUT`] and nothing came on it. It stays
    /// watched.
    fn is_usable(&self, conn: &mut H1Conn, now: u64) -> bool {
        !timed_out(conn.idle_since, now) && conn.is_quiet(&self.watch)
    }

    /// Drops the shared HTTP/2 connection if it is still `dead`.
    fn forget(&self, dead: &Arc<http2::SendRequest<UpstreamBody>>) {
        self.shared
            .compare_and_swap(dead, None::<Arc<http2::SendRequest<UpstreamBody>>>);
    }
}

/// The waker an endpoint's idle connections are watched with: it marks the
/// endpoint and wakes its pool's prober.
struct Stirred {
    flag: AtomicBool,
    client: Arc<tokio::sync::Notify>,
}

impl Wake for Stirred {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.flag.store(true, Ordering::Release);
        self.client.notify_one();
    }
}

const IDLE_TIMEOUT_MS: u64 = IDLE_TIMEOUT.as_millis() as u64;

/// Whether a connection idle since `since` has idled for [`IDLE_TIMEOUT`]
/// at `now` (both [`now_ms`]).
fn timed_out(since: u64, now: u64) -> bool {
    now.saturating_sub(since) >= IDLE_TIMEOUT_MS
}

/// Milliseconds since the first call.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
}

/// A response body from an upstream. Over HTTP/1.1 its connection goes
/// back to the idle stack the moment its last byte has been read, in the
/// task that read it; a body dropped before its end takes the connection
/// with it (the rest of the response is still on it).
pub struct UpstreamIncoming {
    body: Inner,
    /// Where an HTTP/1.1 connection goes back to, until it has.
    slot: Option<Arc<Slot>>,
}

enum Inner {
    H1(H1Body),
    H2(Incoming),
}

impl UpstreamIncoming {
    fn new(body: Inner, slot: Option<Arc<Slot>>) -> UpstreamIncoming {
        let mut body = UpstreamIncoming { body, slot };
        body.check_in_if_ended();
        body
    }

    fn check_in_if_ended(&mut self) {
        if let Inner::H1(body) = &mut self.body {
            if body.is_done() {
                if let (Some(slot), Some(conn)) = (self.slot.take(), body.take_idle()) {
                    slot.put(conn);
                }
            }
        }
    }
}

impl Body for UpstreamIncoming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match &mut this.body {
            Inner::H1(body) => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Ok(_)) | None) = polled {
                    this.check_in_if_ended();
                }
                polled.map_err(Into::into)
            }
            Inner::H2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Inner::H1(body) => body.is_end_stream(),
            Inner::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Inner::H1(body) => body.size_hint(),
            Inner::H2(body) => body.size_hint(),
        }
    }
}

impl fmt::Debug for UpstreamIncoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamIncoming")
            .field("pooled", &self.slot.is_some())
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
    fn an_idle_connection_times_out_after_exactly_the_idle_timeout() {
        assert!(!timed_out(1_000, 1_000));
        assert!(!timed_out(1_000, 1_000 + IDLE_TIMEOUT_MS - 1));
        assert!(timed_out(1_000, 1_000 + IDLE_TIMEOUT_MS));
        assert!(
            !timed_out(5_000, 1_000),
            "a clock read earlier is not an expiry"
        );
    }

    #[test]
    fn host_omits_the_default_port_only() {
        let a: Authority = "models.internal:80".parse().unwrap();
        assert_eq!(host_header(&Scheme::HTTP, &a), "models.internal");
        assert_eq!(host_header(&Scheme::HTTPS, &a), "models.internal:80");
        let b: Authority = "10.0.0.1:8000".parse().unwrap();
        assert_eq!(host_header(&Scheme::HTTP, &b), "10.0.0.1:8000");
    }
}
