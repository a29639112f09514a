//! A pool: one colour of one model. It owns its endpoints, their in-flight
//! and served counters, the upstream client (connection pool) that traffic
//! uses, and the metric handles for its (model, pool) labels.
//!
//! A pool never decides whether it is active; `switch.rs` does.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::PoolConfig;
use crate::metrics::PoolMetrics;

/// How long an idle upstream connection stays in the pool. Longer than any
/// sensible probe interval, so a probed standby stays warm.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

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
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 over cleartext with prior knowledge, as gRPC servers speak it.
    H2c,
}

/// Body of a request sent upstream: the client's streamed body, or a body
/// switchyard made itself.
pub type UpstreamBody = Either<Incoming, Full<Bytes>>;
pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

/// One upstream server of a pool.
#[derive(Debug)]
pub struct Endpoint {
    url: String,
    authority: Authority,
    in_flight: AtomicUsize,
    served: AtomicU64,
}

// === impl Endpoint ===

impl Endpoint {
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests sent to this endpoint since start.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// The upstream URI for a request path on this endpoint.
    pub fn uri(&self, path: Option<&PathAndQuery>) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            path.cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        // Scheme, authority and path are each valid on their own, and together
        // they always form a valid absolute URI.
        Uri::from_parts(parts).expect("scheme, authority and path form a URI")
    }
}

/// A pool of endpoints for one model.
pub struct Pool {
    name: PoolName,
    model: Arc<str>,
    protocol: Protocol,
    endpoints: Box<[Endpoint]>,
    client: UpstreamClient,
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
        connect_timeout: Duration,
        metrics: PoolMetrics,
    ) -> Pool {
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| Endpoint {
                url: e.url.clone(),
                authority: e.authority.clone(),
                in_flight: AtomicUsize::new(0),
                served: AtomicU64::new(0),
            })
            .collect();
        Pool {
            name,
            model,
            protocol: config.protocol,
            endpoints,
            client: build_client(config.protocol, connect_timeout),
            header: HeaderValue::from_static(name.as_str()),
            metrics,
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
    /// counts the request on it until the returned guard drops.
    ///
    /// Atomics only: two random candidates, the less loaded wins. This keeps
    /// load even without the herd that "least loaded of all" causes.
    pub fn pick(self: &Arc<Self>) -> InFlight {
        let n = self.endpoints.len();
        let index = match n {
            0 | 1 => 0,
            2 => self.less_loaded(0, 1),
            _ => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                self.less_loaded(a, b)
            }
        };
        InFlight::start(Arc::clone(self), index)
    }

    fn less_loaded(&self, a: usize, b: usize) -> usize {
        let (la, lb) = (self.endpoints[a].in_flight(), self.endpoints[b].in_flight());
        match la.cmp(&lb) {
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

fn build_client(protocol: Protocol, connect_timeout: Duration) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    let mut builder = Client::builder(TokioExecutor::new());
    // Without a pool timer idle connections never expire and the pool keeps
    // dead sockets; with it, connections idle longer than the timeout close.
    builder
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .http2_only(protocol == Protocol::H2c);
    builder.build(connector)
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
        let e = &pool.endpoints[endpoint];
        // Relaxed: the counters feed balancing and status, which tolerate a
        // momentarily stale view; nothing else is ordered by them.
        e.in_flight.fetch_add(1, Ordering::Relaxed);
        e.served.fetch_add(1, Ordering::Relaxed);
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

    pub fn endpoint(&self) -> &Endpoint {
        &self.pool.endpoints[self.endpoint]
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint().in_flight.fetch_sub(1, Ordering::Relaxed);
        let metrics = &self.pool.metrics;
        metrics.in_flight.dec();
        metrics
            .duration
            .observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EndpointConfig;
    use crate::metrics::Metrics;

    fn pool(n: usize) -> Arc<Pool> {
        let config = PoolConfig {
            protocol: Protocol::Http1,
            endpoints: (0..n)
                .map(|i| EndpointConfig {
                    url: format!("http://127.0.0.1:{}", 9000 + i),
                    authority: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                })
                .collect(),
        };
        let metrics = Metrics::new().pool("m", PoolName::Blue);
        Arc::new(Pool::new(
            "m".into(),
            PoolName::Blue,
            &config,
            Duration::from_secs(1),
            metrics,
        ))
    }

    #[test]
    fn pool_names_parse_and_print() {
        for p in PoolName::ALL {
            assert_eq!(p.as_str().parse::<PoolName>(), Ok(p));
            assert_eq!(p.other().other(), p);
        }
        assert!("red".parse::<PoolName>().is_err());
        assert!("Blue".parse::<PoolName>().is_err());
    }

    #[tokio::test]
    async fn in_flight_counts_until_the_guard_drops() {
        let pool = pool(1);
        let a = pool.pick();
        let b = pool.pick();
        assert_eq!(pool.in_flight(), 2);
        assert_eq!(pool.metrics().in_flight.get(), 2);
        drop(a);
        assert_eq!(pool.in_flight(), 1);
        drop(b);
        assert_eq!(pool.in_flight(), 0);
        assert_eq!(pool.served(), 2);
    }

    #[tokio::test]
    async fn two_choices_avoid_the_busier_endpoint() {
        let pool = pool(2);
        // Load endpoint 0 with three requests: every pick must take endpoint 1
        // until the loads are level.
        let held: Vec<_> = (0..3).map(|_| InFlight::start(pool.clone(), 0)).collect();
        let picks: Vec<_> = (0..3).map(|_| pool.pick()).collect();
        assert!(picks.iter().all(|g| g.endpoint().url().ends_with(":9001")));
        drop((held, picks));
    }

    #[tokio::test]
    async fn picks_spread_over_many_endpoints() {
        let pool = pool(5);
        let held: Vec<_> = (0..500).map(|_| pool.pick()).collect();
        for e in pool.endpoints() {
            // Power of two choices keeps every endpoint near 100 of 500.
            assert!(
                (80..=120).contains(&e.in_flight()),
                "{}: {}",
                e.url(),
                e.in_flight()
            );
        }
        drop(held);
    }

    #[test]
    fn endpoint_uri_keeps_path_and_query() {
        let e = Endpoint {
            url: "http://10.0.0.1:8000".into(),
            authority: "10.0.0.1:8000".parse().unwrap(),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
        };
        let pq: PathAndQuery = "/v2/models/iris/infer?x=1".parse().unwrap();
        assert_eq!(
            e.uri(Some(&pq)).to_string(),
            "http://10.0.0.1:8000/v2/models/iris/infer?x=1"
        );
        assert_eq!(e.uri(None).to_string(), "http://10.0.0.1:8000/");
    }
}
