//! The proxy listener and the forwarding of one request. Never writes switch
//! state.
//!
//! # The life of a request
//! 1. **accept**: `server::serve` accepts the connection and serves HTTP/1.1
//!    or HTTP/2 (prior knowledge) on it; the client's address is kept per
//!    connection in a [`ClientInfo`].
//! 2. **route**: [`RouteTable::resolve`] picks the model by longest
//!    `path_prefix` and optional `host`. No match: 404 JSON, counted in
//!    `switchyard_unrouted_requests_total`; nothing goes upstream.
//! 3. **load**: `model.route(headers)` is the request's one read of switch
//!    state: one `ArcSwap` load gives the active pool and the split, and
//!    with a split the request is picked for the standby or not (by its
//!    sticky header or cookie, else by a per-thread counter; see
//!    `switch/split.rs`). The `Arc<Pool>` it returns lives until the
//!    response body ends, so the request finishes on the pool it started on
//!    whatever switches meanwhile.
//! 4. **pick**: `pool.pick()` chooses an endpoint in rotation (power of two
//!    choices on in-flight) and returns the in-flight guard. None in
//!    rotation: a request the split picked for the standby goes to the
//!    active pool instead; else 503 JSON, or, with `failover = true`, the
//!    standby pool serves and the response says `x-switchyard-failover: true`.
//! 5. **rewrite**: the URI gets the endpoint's authority, the version the
//!    pool's protocol; hop-by-hop headers go, `x-forwarded-*` and
//!    `x-request-id` are set. The body stays the client's stream.
//! 6. **send**: through the pool's pooled client, bounded by the model's
//!    `request_timeout` until the response headers. Connect failure or reset:
//!    502; timeout: 504; both JSON with `x-switchyard-pool`.
//! 7. **retry**: only when the connection failed before any of the request
//!    was sent, and at most once. The failed endpoint records a passive
//!    failure and the untouched request goes to another endpoint in rotation
//!    of the pool it was sent to (picked as in 4, the failed one excluded;
//!    never the other pool), within what is left of the same
//!    `request_timeout`; counted in `switchyard_upstream_retries_total`. No
//!    other endpoint in rotation, or the retry fails too: answered as in 6,
//!    naming the last endpoint. Timeouts, resets and bodies already started
//!    are never retried (see `retry.rs`).
//! 8. **mirror** (models with `[models.shadow]`, live traffic only): a
//!    sampled request's head is cloned and its body copied as it streams
//!    upstream; the answer is copied as it streams to the client. A task of
//!    its own sends the copy to the standby afterwards and compares the
//!    answers (see `shadow.rs`); nothing here waits for it.
//! 9. **respond**: hop-by-hop headers go, `x-switchyard-pool` is added, the
//!    response is counted by class and, as a passive health check, on the
//!    endpoint (5xx and upstream errors in a row eject it), and the upstream
//!    body streams to the client with the in-flight guard inside it
//!    (see `body.rs`).

mod body;
mod error;
pub mod headers;
mod retry;
mod stream;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::server::RequestBody;
use arc_swap::ArcSwap;
use http::{header, HeaderValue, Request, Response, Version};
use http_body_util::{Either, LengthLimitError, Limited};
use prometheus::IntCounter;
use tokio::net::TcpListener;
use tokio::time::error::Elapsed;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use body::{ended, ClientBody, ClientBodyError, ProxyBody};
pub use error::{json_response, ProxyError};
use headers::{ClientInfo, X_SWITCHYARD_FAILOVER, X_SWITCHYARD_PREVIEW};
use retry::Replay;
pub use retry::RetryBody;

use crate::metrics::UpstreamErrorKind;
use crate::pool::{
    InFlight, Pool, PoolName, Protocol, UpstreamBody, UpstreamError, UpstreamIncoming,
};
use crate::route::RouteTable;
use crate::server::{self, Limits};
use crate::shadow::AnswerSlot;
use crate::switch::{Admission, Model};
use crate::tls::ServerTls;
use crate::ErrorChain;

/// What the request path reads: built once, shared by every connection.
pub struct Proxy {
    /// Replaced whole by a reload.
    routes: ArcSwap<RouteTable<Arc<Model>>>,
    unrouted: IntCounter,
    limits: Limits,
}

// === impl Proxy ===

impl Proxy {
    pub fn new(routes: RouteTable<Arc<Model>>, unrouted: IntCounter, limits: Limits) -> Proxy {
        Proxy {
            routes: ArcSwap::from_pointee(routes),
            unrouted,
            limits,
        }
    }

    /// The routing table for `models`.
    pub fn routes(models: &[Arc<Model>]) -> RouteTable<Arc<Model>> {
        RouteTable::new(models.iter().map(|m| {
            (
                m.path_prefix().to_string(),
                m.host().map(str::to_string),
                Arc::clone(m),
            )
        }))
    }

    /// Routes later requests by `routes` (a reload).
    pub fn set_routes(&self, routes: RouteTable<Arc<Model>>) {
        self.routes.store(Arc::new(routes));
    }

    /// Serves the proxy listener until `token` is cancelled, then drains.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<Arc<ServerTls>>,
        preview: bool,
        token: CancellationToken,
        drain: Duration,
        gauges: server::ConnectionGauges,
    ) {
        let limits = self.limits;
        // Connections from the same address in a row share their client's
        // info: a sidecar's clients, or a gateway's behind a load balancer,
        // all come from one address, and an idle connection then keeps no
        // copy of its own (about 130 bytes). The rest of it (scheme,
        // preview) is the listener's.
        let mut last: Option<(std::net::IpAddr, Arc<ClientInfo>)> = None;
        let make = move |conn: &server::Accepted| {
            let proxy = Arc::clone(&self);
            let client = match &last {
                Some((ip, client)) if *ip == conn.peer.ip() => Arc::clone(client),
                _ => {
                    let client = Arc::new(client_info(conn, preview));
                    last = Some((conn.peer.ip(), Arc::clone(&client)));
                    client
                }
            };
            hyper::service::service_fn(move |req| proxy.forward(&client, req))
        };
        let listening = server::Listening {
            name: if preview { "preview" } else { "proxy" },
            tls,
            token,
            drain,
            limits,
            gauges,
        };
        server::serve_with(listener, make, listening).await;
    }

    /// Forwards one request: decides where it goes, before anything is
    /// awaited, and returns the exchange with the upstream as a future that
    /// owns what it needs, or the answer when the proxy gives it itself.
    ///
    /// Runs in hyper's `call`: for HTTP/2, on the connection's task, one
    /// stream after another (microseconds each), before the stream's own
    /// task takes the returned future.
    ///
    /// Not an `async fn`: what is only decided takes no room in the future,
    /// and the request is moved into it once. The future's size is copied
    /// around on every request (see "Performance" in the README).
    pub fn forward(&self, client: &ClientInfo, mut req: Request<RequestBody>) -> Reply {
        if let Some(refused) = refusal(&req) {
            self.unrouted.inc();
            return Reply::answer(refused.into_response(None));
        }
        let host = request_host(&req);
        let host_str = host.as_ref().and_then(|h| h.to_str().ok());
        // The model is kept for the request: a reload meanwhile does not
        // change where it goes.
        let model = self
            .routes
            .load()
            .resolve(host_str, req.uri().path())
            .map(Arc::clone);
        let Some(model) = model else {
            self.unrouted.inc();
            let path = req.uri().path().to_string();
            return Reply::answer(ProxyError::NoRoute { path }.into_response(None));
        };

        let (routed, active_name) = model.route(req.headers());
        // A preview serves from the pool it names, and only from it.
        let target = match preview_pool(client, &model, active_name, req.headers_mut()) {
            Ok(target) => target,
            Err(value) => {
                return Reply::answer(answer(&routed, ProxyError::BadPreviewPool { value }))
            }
        };
        let preview = target.is_some();
        // From here on "chosen" is the pool this request is for: the active
        // pool, the split's, or a preview's.
        let chosen = target.unwrap_or(routed);
        let Some(admission) = model.admit() else {
            let error = ProxyError::Overloaded {
                model: model.name().to_string(),
                max: model.max_in_flight(),
            };
            return Reply::answer(answer(&chosen, error));
        };
        let declared = content_length(&req);
        if declared.is_some_and(|len| len > model.max_body_bytes()) {
            // Refused before anything is sent; the rest of the body is never read.
            return Reply::answer(answer(&chosen, ProxyError::body_too_large(&model)));
        }
        let (in_flight, failover) = match chosen.pick() {
            Some(in_flight) => (in_flight, false),
            // A preview tests its pool: never another.
            None if preview => {
                return Reply::answer(answer(&chosen, ProxyError::no_healthy_endpoint(&chosen)));
            }
            None => {
                let active = model.pool(active_name);
                // Picked by the split for a pool with no endpoint in
                // rotation: the active pool serves, as without the split.
                let fallback = (chosen.name() != active_name)
                    .then(|| active.pick())
                    .flatten();
                match fallback {
                    Some(in_flight) => (in_flight, false),
                    None => match model
                        .failover()
                        .then(|| model.standby_of(active).pick())
                        .flatten()
                    {
                        Some(in_flight) => (in_flight, true),
                        None => {
                            let error = ProxyError::no_healthy_endpoint(active);
                            return Reply::answer(answer(active, error));
                        }
                    },
                }
            }
        };
        let pool = in_flight.pool();
        let timeout = model.request_timeout();

        let (mut parts, body) = req.into_parts();
        let client_version = parts.version;
        parts.uri = in_flight.endpoint().uri(parts.uri.path_and_query());
        parts.version = match pool.protocol() {
            Protocol::Http1 => Version::HTTP_11,
            Protocol::H2c | Protocol::H2 => Version::HTTP_2,
        };
        headers::prepare_request(&mut parts.headers, client, host);
        // Bodies without a (truthful) length are cut at the limit mid-stream.
        let limit = usize::try_from(model.max_body_bytes()).unwrap_or(usize::MAX);
        let more_endpoints = in_flight.has_others();
        let (mut body, body_read) = ClientBody::new(body);
        // Live traffic of the active pool only: a preview, a failover or a
        // request the split sent to the standby is not mirrored.
        let mirror = match model.shadow() {
            Some(shadow) if !preview && !failover && pool.name() == active_name => {
                shadow.sample(declared)
            }
            _ => None,
        };
        let answer_slot = mirror.map(|mirror| {
            let (copy, slot) = mirror.start(&parts, Arc::clone(model.standby_of(pool)));
            body.copy_to(copy);
            slot
        });
        let (body, replay) = retry::arm(&parts, Limited::new(body, limit), more_endpoints);
        let upstream = Request::from_parts(parts, Either::Left(body));

        // One deadline for the request, retry included.
        let exchange = Exchange {
            model,
            in_flight,
            admission,
            failover,
            preview,
            client_version,
            timeout,
            deadline: Instant::now() + timeout,
            body_read,
            answer_slot,
            replay,
        };
        Reply::exchange(exchange.run(upstream))
    }
}

/// A request the proxy sends upstream: where it went, and what its answer
/// needs.
struct Exchange {
    model: Arc<Model>,
    in_flight: InFlight,
    admission: Admission,
    failover: bool,
    preview: bool,
    client_version: Version,
    timeout: Duration,
    deadline: Instant,
    /// Turns true once the client's body has been read whole.
    body_read: Option<Arc<AtomicBool>>,
    /// A shadow mirror's slot for the answer.
    answer_slot: Option<AnswerSlot>,
    replay: Option<Replay<Limited<ClientBody>>>,
}

impl Exchange {
    /// Sends `upstream` (and, once, a retry) and returns the response to
    /// send the client.
    ///
    /// An `async` block, not an `async fn`, which would keep a second copy
    /// of `self` and of `upstream`: this future is moved on every request.
    #[allow(clippy::manual_async_fn)]
    fn run(
        mut self,
        upstream: Request<UpstreamBody>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static {
        async move {
            let first = send(&self.in_flight, upstream, self.deadline).await;
            let again = match (&first, self.replay.take()) {
                (Ok(Err(e)), Some(replay)) => retry::retry(replay, e, &mut self.in_flight),
                _ => None,
            };
            let result = match again {
                Some(upstream) => {
                    drop(first);
                    // Boxed: rare, and inline it would make every
                    // request's future larger.
                    Box::pin(send(&self.in_flight, upstream, self.deadline)).await
                }
                None => first,
            };
            self.respond(result)
        }
    }

    /// The response to send the client for what the upstream answered.
    fn respond(
        self,
        result: Result<Result<Response<UpstreamIncoming>, UpstreamError>, Elapsed>,
    ) -> Response<ProxyBody> {
        let Exchange {
            model,
            in_flight,
            admission,
            failover,
            preview,
            client_version,
            timeout,
            body_read,
            answer_slot,
            ..
        } = self;
        // The pool is the same; the endpoint may not be.
        let pool = in_flight.pool();
        let error = match result {
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                parts.version = client_version;
                headers::prepare_response(&mut parts.headers, pool.header());
                pool.metrics().count_response(parts.status);
                in_flight
                    .endpoint()
                    .record_outcome(parts.status.is_server_error());
                if failover {
                    mark_failover(&mut parts.headers, pool);
                }
                if preview {
                    mark_preview(&mut parts.headers);
                }
                let status = parts.status;
                let event_stream = is_event_stream(&parts.headers);
                let body = ProxyBody::upstream(body, in_flight, admission, event_stream);
                let body = match answer_slot.and_then(|slot| slot.capture(status)) {
                    Some(copy) => body.copy_to(copy),
                    None => body,
                };
                return Response::from_parts(parts, body);
            }
            Ok(Err(e)) if caused_by::<LengthLimitError>(&e) => {
                // The client's mistake, not the endpoint's: no passive failure.
                return answer(pool, ProxyError::body_too_large(&model));
            }
            Ok(Err(e)) if caused_by::<ClientBodyError>(&e) => {
                // The client broke its body off (or framed it wrongly): not
                // the endpoint's failure.
                return answer(pool, ProxyError::ClientBody(ErrorChain(&e).to_string()));
            }
            Err(_elapsed) if body_read.is_some_and(|done| !done.load(Ordering::Acquire)) => {
                // Still waiting for the client's body: the client is slow,
                // not the endpoint.
                return answer(pool, ProxyError::BodyTimeout { timeout });
            }
            Ok(Err(e)) => {
                let kind = if e.is_connect() {
                    UpstreamErrorKind::Connect
                } else {
                    UpstreamErrorKind::Reset
                };
                ProxyError::upstream(&in_flight, kind, timeout, Some(e))
            }
            Err(_elapsed) => {
                ProxyError::upstream(&in_flight, UpstreamErrorKind::Timeout, timeout, None)
            }
        };
        if let ProxyError::Upstream { kind, .. } = &error {
            pool.metrics().count_upstream_error(*kind);
        }
        in_flight.endpoint().record_outcome(true);
        let mut response = answer(pool, error);
        if failover {
            mark_failover(response.headers_mut(), pool);
        }
        if preview {
            mark_preview(response.headers_mut());
        }
        // `in_flight` drops here: the request is over.
        response
    }
}

/// The future of one request's response: ready when the proxy answered
/// it itself, else the exchange with the upstream.
///
/// The exchange is boxed: hyper keeps room for the service's future in
/// every connection for the connection's life, and the exchange takes
/// about a kilobyte; boxed, an idle keep-alive connection holds a pointer
/// instead, and a forwarded request pays one allocation.
pub struct Reply(ReplyState);

enum ReplyState {
    /// Boxed, as answers the proxy gives itself are rare: inline, the
    /// head would make every `Reply` hundreds of bytes.
    Answer(Option<Box<Response<ProxyBody>>>),
    Exchange(Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>),
}

impl Reply {
    fn answer(response: Response<ProxyBody>) -> Reply {
        Reply(ReplyState::Answer(Some(Box::new(response))))
    }

    fn exchange(exchange: impl Future<Output = Response<ProxyBody>> + Send + 'static) -> Reply {
        Reply(ReplyState::Exchange(Box::pin(exchange)))
    }
}

impl Future for Reply {
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            // Polled again after it was ready: hyper never does.
            ReplyState::Answer(response) => match response.take() {
                Some(response) => Poll::Ready(Ok(*response)),
                None => Poll::Pending,
            },
            ReplyState::Exchange(exchange) => exchange.as_mut().poll(cx).map(Ok),
        }
    }
}

/// One attempt: the request to the endpoint `in_flight` is on, through its
/// pool's client, until `deadline`.
fn send(
    in_flight: &InFlight,
    request: Request<UpstreamBody>,
    deadline: Instant,
) -> impl Future<Output = Result<Result<Response<UpstreamIncoming>, UpstreamError>, Elapsed>> + '_ {
    let client = in_flight.pool().client();
    tokio::time::timeout_at(deadline, client.request(in_flight.endpoint(), request))
}

/// Whether a response is a stream of server-sent events.
fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// The response for a request `pool` answers itself, counted on the pool.
fn answer(pool: &Pool, error: ProxyError) -> Response<ProxyBody> {
    let response = error.into_response(Some(pool.header()));
    pool.metrics().count_response(response.status());
    response
}

/// Marks a response the standby served for an active pool with no healthy
/// endpoint, whether it succeeded or not, and counts it.
fn mark_failover(headers: &mut http::HeaderMap, pool: &Pool) {
    headers.insert(
        X_SWITCHYARD_FAILOVER.clone(),
        HeaderValue::from_static("true"),
    );
    pool.metrics().failovers.inc();
}

/// Marks a response from a pool picked for preview.
fn mark_preview(headers: &mut http::HeaderMap) {
    headers.insert(
        X_SWITCHYARD_PREVIEW.clone(),
        HeaderValue::from_static("true"),
    );
}

/// The pool a preview request is for: the standby on the preview listener;
/// on the main listener the pool `x-switchyard-pool` names, where the model
/// allows it (`preview_header = true`; else the header is ignored). The
/// header is switchyard's own and never goes upstream. A value that names
/// no pool comes back as the error.
fn preview_pool(
    client: &ClientInfo,
    model: &Model,
    active: PoolName,
    headers: &mut http::HeaderMap,
) -> Result<Option<Arc<Pool>>, String> {
    let asked = headers.remove(&headers::X_SWITCHYARD_POOL);
    if client.preview {
        return Ok(Some(Arc::clone(model.pool(active.other()))));
    }
    match asked {
        Some(value) if model.preview_header() => {
            let pool = value
                .to_str()
                .ok()
                .and_then(|v| v.parse::<PoolName>().ok())
                .ok_or_else(|| String::from_utf8_lossy(value.as_bytes()).into_owned())?;
            Ok(Some(Arc::clone(model.pool(pool))))
        }
        _ => Ok(None),
    }
}

/// The request's `Content-Length`, if it sent a valid one.
fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Whether `E` is anywhere in `e`'s chain of causes.
fn caused_by<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<E>() {
            return true;
        }
        next = err.source();
    }
    false
}

/// Refuses what would make switchyard a tunnel or an open proxy: CONNECT,
/// and an HTTP/1.x absolute-form target whose host is not the `Host`
/// header's (HTTP/2 always sends an authority; it is the host there).
fn refusal<B>(req: &Request<B>) -> Option<ProxyError> {
    if req.method() == http::Method::CONNECT {
        return Some(ProxyError::Connect);
    }
    if req.version() < Version::HTTP_2 {
        if let Some(target) = req.uri().authority() {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok());
            let same = host.is_some_and(|h| {
                let h = h.rsplit_once(':').map_or(h, |(name, port)| {
                    if port.bytes().all(|b| b.is_ascii_digit()) {
                        name
                    } else {
                        h
                    }
                });
                h.eq_ignore_ascii_case(target.host())
            });
            if !same {
                return Some(ProxyError::ForeignTarget {
                    target: target.host().to_string(),
                    host: host.unwrap_or("").to_string(),
                });
            }
        }
    }
    None
}

/// The host the client addressed: the HTTP/2 authority or absolute-form
/// URI's host, else the `Host` header.
fn request_host<B>(req: &Request<B>) -> Option<HeaderValue> {
    if let Some(authority) = req.uri().authority() {
        return HeaderValue::from_str(authority.as_str()).ok();
    }
    req.headers().get(header::HOST).cloned()
}

/// Per-connection forwarding facts, formatted once per connection.
fn client_info(conn: &server::Accepted, preview: bool) -> ClientInfo {
    ClientInfo {
        ip: HeaderValue::from_str(&conn.peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        proto: HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
        preview,
    }
}
