//! A pool: one colour of one model. It owns its endpoints, their in-flight
//! and served counters, the upstream client (connection pool) that traffic
//! uses, and the metric handles for its (model, pool) labels.
//!
//! A pool never decides whether it is active; `switch.rs` does.
//!
//! The endpoints are a set that can change while the pool serves (DNS
//! discovery, `discovery.rs`): an `ArcSwap` of the current members. A
//! request reads it through a short `load()` guard when it picks and keeps
//! only the `Arc` of the endpoint it chose (so that endpoint lives until its
//! body ends, even if it was removed meanwhile: that is its drain), never
//! the set: a removed endpoint, and its connections, go as soon as the
//! requests on it end. A retry reads the current set again. A static
//! pool's set never changes after it is built.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::HeaderValue;
use http_body_util::{Either, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Discovery, HealthConfig, PoolConfig, UpstreamSettings};
use crate::health::EndpointState;
use crate::metrics::{Metrics, PoolMetrics};
use crate::proxy::{ClientBody, RetryBody};

mod client;
mod connector;
mod endpoint;
pub(crate) mod h1;
#[doc(hidden)]
pub use h1::read_response;
mod stack;

pub use client::{UpstreamClient, UpstreamError, UpstreamIncoming};
pub use connector::CountingConnector;
pub use endpoint::Endpoint;
use endpoint::EndpointSpec;

/// A pool's endpoints at one moment (status, probes: not the request path).
pub type Members = Arc<Box<[Arc<Endpoint>]>>;

/// The two pools of every model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolName {
    Blue,
    Green,
}

impl PoolName {
    pub const ALL: [PoolName; 2] = [PoolName::Blue, PoolName::Green];

    pub fn as_str(self) -> &'static str {
        match self {
            PoolName::Blue => "blue",
            PoolName::Green => "green",
        }
    }

    /// The other pool: the standby when `self` is active.
    pub fn other(self) -> PoolName {
        match self {
            PoolName::Blue => PoolName::Green,
            PoolName::Green => PoolName::Blue,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A string that names neither pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown pool {0:?}; expected \"blue\" or \"green\"")]
pub struct UnknownPool(pub String);

impl FromStr for PoolName {
    type Err = UnknownPool;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blue" => Ok(PoolName::Blue),
            "green" => Ok(PoolName::Green),
            other => Err(UnknownPool(other.to_string())),
        }
    }
}

/// The protocol spoken to a pool's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive, over TCP or TLS.
    Http1,
    /// HTTP/2 over cleartext with prior knowledge, as gRPC servers speak it.
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`), as gRPC servers with TLS speak it.
    H2,
}

impl Protocol {
    pub fn is_http2(self) -> bool {
        self != Protocol::Http1
    }

    /// The ALPN protocol offered to a TLS endpoint: only the one the pool
    /// speaks, so a server that does ALPN agrees to it or fails the
    /// handshake, never a later request.
    pub fn alpn(self) -> &'static [u8] {
        if self.is_http2() {
            b"h2"
        } else {
            b"http/1.1"
        }
    }
}

/// Body of a request sent upstream: the client's streamed body (which a
/// failed connect hands back for a retry), or a body switchyard made itself.
pub type UpstreamBody = Either<RetryBody<Limited<ClientBody>>, Full<Bytes>>;

/// A pool of endpoints for one model.
pub struct Pool {
    name: PoolName,
    model: Arc<str>,
    protocol: Protocol,
    /// `http` or `https`, as all its endpoints are.
    scheme: Scheme,
    /// The current endpoints; swapped whole by [`Pool::set_members`].
    members: ArcSwap<Box<[Arc<Endpoint>]>>,
    /// Wakes the prober when endpoints were added, so they are probed (and
    /// so can take traffic) without waiting out the probe interval.
    members_changed: tokio::sync::Notify,
    /// Endpoints discovery removed: alive while requests still hold them,
    /// counted by [`Pool::in_flight`] until then.
    draining: ArcSwap<Vec<Weak<Endpoint>>>,
    /// The writer of `members` and `draining` ([`Pool::writer`]), and
    /// whether discovery is paused (a reload is replacing this pool). A std
    /// mutex suffices: held only for one synchronous install, never across
    /// an `.await`, and never by the request path.
    writer: Mutex<bool>,
    client: UpstreamClient,
    /// With `warm_connections = 0` on HTTP/1.1: the probes' own client, which
    /// keeps no idle connection, so every probe connects afresh (proving the
    /// network path) and never rides, then closes, a connection that requests
    /// keep alive in `client`. Same connector, so its connections are counted.
    cold_probes: Option<UpstreamClient>,
    health: HealthConfig,
    /// `discover = "dns"`: the names its endpoints are found by.
    discovery: Option<Discovery>,
    /// Set by the prober once every endpoint has had its first probe.
    probed: AtomicBool,
    /// Wakes [`Pool::wait_probed`].
    probed_notify: tokio::sync::Notify,
    /// Cancelled when a reload drops the pool: its probes stop.
    retired: CancellationToken,
    /// Callers of [`Pool::wait_drained`] waiting now; the request path
    /// notifies only when there are some.
    drain_waiters: AtomicUsize,
    drained: tokio::sync::Notify,
    /// `x-switchyard-pool` value, built once.
    header: HeaderValue,
    metrics: PoolMetrics,
}

// === impl Pool ===

impl Pool {
    pub fn new(
        model: Arc<str>,
        name: PoolName,
        config: &PoolConfig,
        upstream: &UpstreamSettings,
        metrics: &Metrics,
    ) -> Pool {
        let scheme = if config.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let pool_metrics = metrics.pool(&model, name);
        let connector = CountingConnector::new(
            http_connector(upstream.connect_timeout),
            config.tls.as_ref(),
            upstream.connect_timeout,
            pool_metrics.connections.clone(),
        );
        let cold_probes = (config.protocol == Protocol::Http1
            && config.health.warm_connections == 0)
            .then(|| UpstreamClient::new(config.protocol, connector.clone(), 0, true));
        let mut pool = Pool {
            name,
            model,
            protocol: config.protocol,
            scheme,
            members: ArcSwap::from_pointee(Box::default()),
            members_changed: tokio::sync::Notify::new(),
            draining: ArcSwap::from_pointee(Vec::new()),
            writer: Mutex::new(false),
            client: UpstreamClient::new(
                config.protocol,
                connector,
                upstream.max_idle_per_endpoint,
                false,
            ),
            cold_probes,
            health: config.health.clone(),
            discovery: config.discovery.clone(),
            probed: AtomicBool::new(false),
            probed_notify: tokio::sync::Notify::new(),
            retired: CancellationToken::new(),
            drain_waiters: AtomicUsize::new(0),
            drained: tokio::sync::Notify::new(),
            header: HeaderValue::from_static(name.as_str()),
            metrics: pool_metrics,
        };
        // A dns pool starts empty: discovery fills it before serving.
        if config.discovery.is_none() {
            let endpoints: Box<[Arc<Endpoint>]> = config
                .endpoints
                .iter()
                .map(|e| {
                    Arc::new(pool.endpoint(
                        EndpointSpec {
                            url: e.url.clone(),
                            scheme: pool.scheme.clone(),
                            authority: e.authority.clone(),
                            host: None,
                            source: None,
                            state: EndpointState::Unknown,
                        },
                        metrics,
                    ))
                })
                .collect();
            pool.members = ArcSwap::from_pointee(endpoints);
        }
        pool
    }

    fn endpoint(&self, spec: EndpointSpec<'_>, metrics: &Metrics) -> Endpoint {
        let endpoint_metrics = metrics.endpoint(&self.model, self.name, &spec.url);
        Endpoint::new(
            spec,
            self.health.eject_after,
            endpoint_metrics,
            &self.client,
            self.cold_probes.as_ref(),
        )
    }

    /// A new endpoint for `authority` (a discovered address), found by the
    /// entry `source`, whose name and port `host` is; out of rotation until
    /// a probe passes (or serving until probed, with `pending` false: the
    /// set a pool starts with, which no traffic has seen yet).
    pub fn discovered_endpoint(
        &self,
        authority: Authority,
        host: &Authority,
        source: &Arc<str>,
        pending: bool,
        metrics: &Metrics,
    ) -> Endpoint {
        let url = format!("{}://{authority}", self.scheme);
        self.endpoint(
            EndpointSpec {
                url,
                scheme: self.scheme.clone(),
                authority,
                host: Some(host),
                source: Some(Arc::clone(source)),
                state: if pending {
                    EndpointState::Pending
                } else {
                    EndpointState::Unknown
                },
            },
            metrics,
        )
    }

    /// The one writer of the endpoint set, while the returned guard lives;
    /// `None` while discovery is paused ([`Pool::pause_discovery`]).
    pub(crate) fn writer(&self) -> Option<Writer<'_>> {
        let paused = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        (!*paused).then_some(Writer { _paused: paused })
    }

    /// Stops discovery writing this pool's set, and so forgetting its
    /// endpoints' metric series: a reload is building its replacement,
    /// which shares those series. Waits for a round installing now.
    pub(crate) fn pause_discovery(&self) {
        *self.writer.lock().unwrap_or_else(PoisonError::into_inner) = true;
    }

    /// Undoes [`Pool::pause_discovery`] (the reload was refused).
    pub(crate) fn resume_discovery(&self) {
        *self.writer.lock().unwrap_or_else(PoisonError::into_inner) = false;
    }

    /// Whether a reload paused discovery of this pool.
    pub(crate) fn is_discovery_paused(&self) -> bool {
        *self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the endpoints (discovery only, holding the [`Writer`]):
    /// picks from now on see `members`. Removed endpoints leave rotation
    /// for good and are counted as draining *before* the swap, so
    /// [`Pool::in_flight`] never misses a request on one (for a moment it
    /// may count one twice, which only makes a drain wait longer).
    pub(crate) fn set_members(&self, _writer: &Writer<'_>, members: Box<[Arc<Endpoint>]>) {
        // The writer is held: this is the set the swap below replaces.
        let old = self.members.load_full();
        let removed: Vec<&Arc<Endpoint>> = old
            .iter()
            .filter(|e| !members.iter().any(|n| Arc::ptr_eq(n, e)))
            .collect();
        for endpoint in &removed {
            endpoint.mark_removed();
        }
        // Removed endpoints, and those still draining from before.
        let draining: Vec<Weak<Endpoint>> = removed
            .into_iter()
            .map(Arc::downgrade)
            .chain(self.draining.load().iter().cloned())
            .filter(|w| w.strong_count() > 0)
            .collect();
        self.draining.store(Arc::new(draining));
        let replaced = self.members.swap(Arc::new(members));
        debug_assert!(Arc::ptr_eq(&replaced, &old), "one writer at a time");
        drop((old, replaced));
        // A permit if the prober is mid-round: it probes again at once.
        self.members_changed.notify_one();
    }

    /// Returns when [`Pool::set_members`] next runs.
    pub(crate) async fn members_changed(&self) {
        self.members_changed.notified().await;
    }

    /// How the endpoints are found by DNS, for a dns pool.
    pub fn discovery(&self) -> Option<&Discovery> {
        self.discovery.as_ref()
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    pub fn name(&self) -> PoolName {
        self.name
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The endpoints now: a snapshot, which discovery may replace.
    pub fn endpoints(&self) -> Members {
        self.members.load_full()
    }

    pub fn client(&self) -> &UpstreamClient {
        &self.client
    }

    /// The client health probes go through: the pool's own, whose
    /// connections they keep warm, or with `warm_connections = 0` one that
    /// opens a connection per probe and keeps none.
    pub fn probe_client(&self) -> &UpstreamClient {
        self.cold_probes.as_ref().unwrap_or(&self.client)
    }

    pub fn health_config(&self) -> &HealthConfig {
        &self.health
    }

    /// Closes the idle upstream connections that the upstream closed, or
    /// that idled for [`client::IDLE_TIMEOUT`]: of every endpoint (`all`),
    /// or of those on which something came since the last sweep. The
    /// prober sweeps all after each round, so no connection outlives its
    /// time by more than a probe interval even when no request comes to
    /// take it, and the stirred ones whenever [`Pool::idle_stirred`]
    /// returns.
    pub fn sweep_idle(&self, all: bool) {
        for endpoint in self.members.load().iter() {
            endpoint.slot(false).sweep(all);
        }
    }

    /// Returns once something came on an idle upstream connection (the
    /// upstream closed it, as a rule).
    pub async fn idle_stirred(&self) {
        self.client.idle_stirred().await;
    }

    /// Endpoints whose probes pass now.
    pub fn healthy_count(&self) -> usize {
        self.members
            .load()
            .iter()
            .filter(|e| e.state() == EndpointState::Healthy)
            .count()
    }

    /// Whether every endpoint has had its first probe.
    pub fn is_probed(&self) -> bool {
        self.probed.load(Ordering::Acquire)
    }

    pub(crate) fn mark_probed(&self) {
        self.probed.store(true, Ordering::Release);
        self.probed_notify.notify_waiters();
    }

    /// Returns once every endpoint has had its first probe.
    pub async fn wait_probed(&self) {
        loop {
            // Created before the check, so a notification in between counts.
            let notified = self.probed_notify.notified();
            if self.is_probed() {
                return;
            }
            notified.await;
        }
    }

    /// Returns once no request is in flight on this pool (for a pool a
    /// switch just left: it is drained and can be retired).
    pub async fn wait_drained(&self) {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.drain_waiters.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.drain_waiters);
        loop {
            // Created before the check, so a notification in between counts.
            let notified = self.drained.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Stops this pool's probes (a reload no longer uses it). Requests
    /// still on it finish.
    pub fn retire(&self) {
        self.retired.cancel();
    }

    pub(crate) fn retired(&self) -> &CancellationToken {
        &self.retired
    }

    /// The `x-switchyard-pool` header value naming this pool.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    pub fn metrics(&self) -> &PoolMetrics {
        &self.metrics
    }

    /// Requests in flight on this pool, across its endpoints (those removed
    /// by discovery and still draining included: their requests hold them).
    pub fn in_flight(&self) -> usize {
        let current: usize = self.members.load().iter().map(|e| e.in_flight()).sum();
        let draining: usize = self
            .draining
            .load()
            .iter()
            .filter_map(Weak::upgrade)
            .map(|e| e.in_flight())
            .sum();
        current + draining
    }

    /// Requests sent to this pool's current endpoints since they joined.
    pub fn served(&self) -> u64 {
        self.members.load().iter().map(|e| e.served()).sum()
    }

    /// Picks an endpoint by power of two choices on in-flight requests and
    /// counts the request on it until the returned guard drops; `None` when
    /// no endpoint is in rotation.
    ///
    /// Atomics only: two random candidates, the one in rotation and less
    /// loaded wins. This keeps load even without the herd that "least loaded
    /// of all" causes. Only when both candidates are out of rotation does it
    /// scan for the least loaded endpoint still serving.
    pub fn pick(self: &Arc<Self>) -> Option<InFlight> {
        // A short read of the set: only the chosen endpoint is kept.
        let members = self.members.load();
        let index = choose(&members, None)?;
        let endpoint = Arc::clone(&members[index]);
        drop(members);
        Some(InFlight::start(Arc::clone(self), endpoint))
    }

    /// An endpoint chosen as [`Pool::pick`] chooses, for a request that is
    /// not traffic (a shadow mirror): not counted in flight, served or in
    /// the pool's metrics, so it neither holds up a drain nor skews the
    /// watch.
    pub fn choose_endpoint(&self) -> Option<Arc<Endpoint>> {
        let members = self.members.load();
        choose(&members, None).map(|i| Arc::clone(&members[i]))
    }
}

/// [`Pool::pick`]'s choice among every endpoint of `endpoints` but `skip`.
fn choose(endpoints: &[Arc<Endpoint>], skip: Option<usize>) -> Option<usize> {
    // Candidates are numbered 0..n without `skip`; `at` maps one back to
    // its endpoint.
    let n = endpoints.len().checked_sub(usize::from(skip.is_some()))?;
    let at = |candidate: usize| match skip {
        Some(s) if candidate >= s => candidate + 1,
        _ => candidate,
    };
    let index = match n {
        0 => return None,
        1 => at(0),
        2 => better(endpoints, at(0), at(1)),
        _ => {
            let a = fastrand::usize(..n);
            let mut b = fastrand::usize(..n - 1);
            if b >= a {
                b += 1;
            }
            better(endpoints, at(a), at(b))
        }
    };
    if endpoints[index].is_serving() {
        return Some(index);
    }
    endpoints
        .iter()
        .enumerate()
        .filter(|(i, e)| Some(*i) != skip && e.is_serving())
        .min_by_key(|(_, e)| e.in_flight())
        .map(|(i, _)| i)
}

/// Of two endpoints, the one in rotation, else the less loaded, else either.
fn better(endpoints: &[Arc<Endpoint>], a: usize, b: usize) -> usize {
    let (ea, eb) = (&endpoints[a], &endpoints[b]);
    match (ea.is_serving(), eb.is_serving()) {
        (true, false) => return a,
        (false, true) => return b,
        _ => {}
    }
    match ea.in_flight().cmp(&eb.in_flight()) {
        std::cmp::Ordering::Less => a,
        std::cmp::Ordering::Greater => b,
        std::cmp::Ordering::Equal => {
            if fastrand::bool() {
                a
            } else {
                b
            }
        }
    }
}

fn http_connector(connect_timeout: Duration) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    // https:// endpoints connect through it too, TLS on top.
    connector.enforce_http(false);
    connector
}

/// One request counted on one endpoint of a pool. Holds the pool alive, so a
/// request finishes on the pool it started on; ride it inside the response
/// body so the count ends when the body does, not at the headers.
pub struct InFlight {
    pool: Arc<Pool>,
    /// The endpoint the request is on: kept alive until the body ends, even
    /// if discovery removed it (its drain). Only this one, not the set.
    endpoint: Arc<Endpoint>,
    started: Instant,
}

/// Held while writing a pool's endpoint set: see [`Pool::writer`].
pub(crate) struct Writer<'a> {
    _paused: MutexGuard<'a, bool>,
}

// === impl InFlight ===

impl InFlight {
    fn start(pool: Arc<Pool>, endpoint: Arc<Endpoint>) -> InFlight {
        // The counters feed balancing and status, which tolerate a
        // momentarily stale view; they are Relaxed atomics.
        endpoint.start_request();
        pool.metrics.in_flight.inc();
        InFlight {
            pool,
            endpoint,
            started: Instant::now(),
        }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// When the request was sent to its pool.
    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Whether the pool's current set has another endpoint to retry on.
    pub fn has_others(&self) -> bool {
        let members = self.pool.members.load();
        match &members[..] {
            [] => false,
            [only] => !Arc::ptr_eq(only, &self.endpoint),
            _ => true,
        }
    }

    /// For a retry: moves the request to another endpoint of the pool's
    /// current set (never one discovery removed meanwhile), chosen as
    /// [`Pool::pick`] chooses but never the current one. Returns the
    /// endpoint it left and the one it moved to; `None`, and the request
    /// stays, when no other endpoint is in rotation.
    ///
    /// It stays one request: the pool's in-flight gauge does not move, and
    /// the duration observed when the guard drops runs from the first attempt.
    pub fn move_to_other(&mut self) -> Option<(Arc<Endpoint>, &Endpoint)> {
        let members = self.pool.members.load();
        let skip = members.iter().position(|e| Arc::ptr_eq(e, &self.endpoint));
        let to = Arc::clone(&members[choose(&members, skip)?]);
        drop(members);
        to.start_request();
        let left = std::mem::replace(&mut self.endpoint, to);
        left.end_request();
        Some((left, &self.endpoint))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.end_request();
        let pool = &self.pool;
        let metrics = &self.pool.metrics;
        metrics.in_flight.dec();
        // One load when nobody waits; the count only when someone does.
        if pool.drain_waiters.load(Ordering::Acquire) > 0 && pool.in_flight() == 0 {
            pool.drained.notify_waiters();
        }
        metrics
            .duration
            .observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests;
