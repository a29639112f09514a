//! A pool: one colour of one model. It owns its endpoints, their in-flight
//! and served counters, the upstream client (connection pool) that traffic
//! uses, and the metric handles for its (model, pool) labels.
//!
//! A pool never decides whether it is active; `switch.rs` does.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::HeaderValue;
use http_body_util::{Either, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{HealthConfig, PoolConfig, UpstreamSettings};
use crate::health::EndpointState;
use crate::metrics::{Metrics, PoolMetrics};
use crate::proxy::{ClientBody, RetryBody};

mod client;
mod connector;
mod endpoint;
mod stack;

pub use client::{UpstreamClient, UpstreamError, UpstreamIncoming};
pub use connector::CountingConnector;
pub use endpoint::Endpoint;

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
    endpoints: Box<[Endpoint]>,
    client: UpstreamClient,
    /// With `warm_connections = 0` on HTTP/1.1: the probes' own client, which
    /// keeps no idle connection, so every probe connects afresh (proving the
    /// network path) and never rides, then closes, a connection that requests
    /// keep alive in `client`. Same connector, so its connections are counted.
    cold_probes: Option<UpstreamClient>,
    health: HealthConfig,
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
        let endpoints: Box<[Endpoint]> = config
            .endpoints
            .iter()
            .map(|e| {
                Endpoint::new(
                    e.url.clone(),
                    scheme.clone(),
                    e.authority.clone(),
                    config.health.eject_after,
                    metrics.endpoint(&model, name, &e.url),
                )
            })
            .collect();
        let pool_metrics = metrics.pool(&model, name);
        let counters = endpoints
            .iter()
            .map(|e| (e.authority().clone(), e.connection_counter()))
            .collect();
        let connector = CountingConnector::new(
            http_connector(upstream.connect_timeout),
            config.tls.as_ref(),
            upstream.connect_timeout,
            counters,
            pool_metrics.connections.clone(),
        );
        let targets: Vec<_> = endpoints
            .iter()
            .map(|e| (scheme.clone(), e.authority().clone()))
            .collect();
        let cold_probes = (config.protocol == Protocol::Http1
            && config.health.warm_connections == 0)
            .then(|| UpstreamClient::new(config.protocol, connector.clone(), &targets, 0));
        Pool {
            name,
            model,
            protocol: config.protocol,
            endpoints,
            client: UpstreamClient::new(
                config.protocol,
                connector,
                &targets,
                upstream.max_idle_per_endpoint,
            ),
            cold_probes,
            health: config.health.clone(),
            probed: AtomicBool::new(false),
            probed_notify: tokio::sync::Notify::new(),
            retired: CancellationToken::new(),
            drain_waiters: AtomicUsize::new(0),
            drained: tokio::sync::Notify::new(),
            header: HeaderValue::from_static(name.as_str()),
            metrics: pool_metrics,
        }
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

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
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

    /// Endpoints whose probes pass now.
    pub fn healthy_count(&self) -> usize {
        self.endpoints
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

    /// Requests in flight on this pool, across its endpoints.
    pub fn in_flight(&self) -> usize {
        self.endpoints.iter().map(Endpoint::in_flight).sum()
    }

    /// Requests sent to this pool since start.
    pub fn served(&self) -> u64 {
        self.endpoints.iter().map(Endpoint::served).sum()
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
        let index = self.choose(None)?;
        Some(InFlight::start(Arc::clone(self), index))
    }

    /// An endpoint chosen as [`Pool::pick`] chooses, for a request that is
    /// not traffic (a shadow mirror): not counted in flight, served or in
    /// the pool's metrics, so it neither holds up a drain nor skews the
    /// watch.
    pub fn choose_endpoint(&self) -> Option<&Endpoint> {
        self.choose(None).map(|i| &self.endpoints[i])
    }

    /// [`Pool::pick`]'s choice among every endpoint but `skip`.
    fn choose(&self, skip: Option<usize>) -> Option<usize> {
        // Candidates are numbered 0..n without `skip`; `at` maps one back to
        // its endpoint.
        let n = self.endpoints.len() - usize::from(skip.is_some());
        let at = |candidate: usize| match skip {
            Some(s) if candidate >= s => candidate + 1,
            _ => candidate,
        };
        let index = match n {
            0 => return None,
            1 => at(0),
            2 => self.better(at(0), at(1)),
            _ => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                self.better(at(a), at(b))
            }
        };
        if self.endpoints[index].is_serving() {
            return Some(index);
        }
        self.endpoints
            .iter()
            .enumerate()
            .filter(|(i, e)| Some(*i) != skip && e.is_serving())
            .min_by_key(|(_, e)| e.in_flight())
            .map(|(i, _)| i)
    }

    /// Of two endpoints, the one in rotation, else the less loaded, else either.
    fn better(&self, a: usize, b: usize) -> usize {
        let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
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
    endpoint: usize,
    started: Instant,
}

// === impl InFlight ===

impl InFlight {
    fn start(pool: Arc<Pool>, endpoint: usize) -> InFlight {
        // The counters feed balancing and status, which tolerate a
        // momentarily stale view; they are Relaxed atomics.
        pool.endpoints[endpoint].start_request();
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
        &self.pool.endpoints[self.endpoint]
    }

    /// For a retry: moves the request to another endpoint of the same pool,
    /// chosen as [`Pool::pick`] chooses but never the current one. Returns
    /// the endpoint it left and the one it moved to; `None`, and the request
    /// stays, when no other endpoint is in rotation.
    ///
    /// It stays one request: the pool's in-flight gauge does not move, and
    /// the duration observed when the guard drops runs from the first attempt.
    pub fn move_to_other(&mut self) -> Option<(&Endpoint, &Endpoint)> {
        let to = self.pool.choose(Some(self.endpoint))?;
        let left = std::mem::replace(&mut self.endpoint, to);
        let endpoints = &self.pool.endpoints;
        endpoints[to].start_request();
        endpoints[left].end_request();
        Some((&endpoints[left], &endpoints[to]))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint().end_request();
        let pool = &self.pool;
        // One load when nobody waits; the sum only when someone does.
        if pool.drain_waiters.load(Ordering::Acquire) > 0 && pool.in_flight() == 0 {
            pool.drained.notify_waiters();
        }
        let metrics = &self.pool.metrics;
        metrics.in_flight.dec();
        metrics
            .duration
            .observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests;
