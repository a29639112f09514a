//! Prometheus metrics: every name in one place, the registry, and handle
//! structs whose label values are resolved once, when a pool or model is
//! built. The request path only increments handles; it never looks a metric
//! up by label.

use prometheus::core::Metric as _;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::pool::PoolName;

// --- request family ---
pub const REQUESTS_TOTAL: &str = "switchyard_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "switchyard_request_duration_seconds";
pub const IN_FLIGHT: &str = "switchyard_in_flight";
pub const UPSTREAM_ERRORS_TOTAL: &str = "switchyard_upstream_errors_total";
pub const UPSTREAM_RETRIES_TOTAL: &str = "switchyard_upstream_retries_total";
pub const UNROUTED_REQUESTS_TOTAL: &str = "switchyard_unrouted_requests_total";
pub const FIRST_BYTE_SECONDS: &str = "switchyard_response_first_byte_seconds";
pub const STREAM_EVENTS_TOTAL: &str = "switchyard_stream_events_total";
pub const STREAM_EVENT_GAP_SECONDS: &str = "switchyard_stream_event_gap_seconds";
// --- health family ---
pub const ENDPOINT_HEALTHY: &str = "switchyard_endpoint_healthy";
pub const PROBES_TOTAL: &str = "switchyard_probes_total";
pub const PROBE_DURATION_SECONDS: &str = "switchyard_probe_duration_seconds";
pub const EJECTIONS_TOTAL: &str = "switchyard_ejections_total";
pub const UPSTREAM_CONNECTIONS: &str = "switchyard_upstream_connections";
pub const CLIENT_CONNECTIONS: &str = "switchyard_client_connections";
pub const CLIENT_CONNECTIONS_PARKED: &str = "switchyard_client_connections_parked";
pub const FAILOVERS_TOTAL: &str = "switchyard_failovers_total";
// --- discovery family ---
/// The `result` label of `switchyard_dns_resolutions_total`.
pub const DNS_RESULTS: [&str; 3] = ["ok", "empty", "error"];
pub const DNS_RESOLUTIONS_TOTAL: &str = "switchyard_dns_resolutions_total";
// --- switch family ---
pub const ACTIVE_POOL: &str = "switchyard_active_pool";
pub const SWITCHES_TOTAL: &str = "switchyard_switches_total";
pub const AUTO_ROLLBACKS_TOTAL: &str = "switchyard_auto_rollbacks_total";
// --- shadow family ---
pub const SHADOW_TOTAL: &str = "switchyard_shadow_total";
pub const SHADOW_SKIPPED_TOTAL: &str = "switchyard_shadow_skipped_total";
// --- state store family ---
pub const STATE_STORE_UP: &str = "switchyard_state_store_up";
pub const STATE_STORE_REVISION: &str = "switchyard_state_store_revision";
pub const STATE_STORE_WATCH_LAG_SECONDS: &str = "switchyard_state_store_watch_lag_seconds";
pub const STATE_STORE_ERRORS_TOTAL: &str = "switchyard_state_store_errors_total";
// --- process family ---
pub const BUILD_INFO: &str = "switchyard_build_info";

/// Response classes, the `code` label of `switchyard_requests_total`.
const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Latency buckets for inference: from sub-millisecond cache hits to
/// minute-long generations. The watch reads its p99 from them.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// Buckets of the watch lag: from a switch on one instance to another
/// instance serving it; milliseconds on a healthy network, seconds to
/// minutes when an instance catches up after losing the store.
pub const LAG_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// What a failed state store operation was doing; the `op` label of
/// `switchyard_state_store_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    /// Reading the state (the state file at start; etcd's range).
    Read,
    /// Writing a switch (the state file; etcd's transaction).
    Write,
    /// Following the store's changes (etcd's watch).
    Watch,
    /// Authenticating to the store (etcd's user and password).
    Auth,
    /// A value in the store that is not a model's switch state.
    Decode,
    /// Writing the local cache of the etcd backend.
    Cache,
}

impl StoreOp {
    pub const ALL: [StoreOp; 6] = [
        StoreOp::Read,
        StoreOp::Write,
        StoreOp::Watch,
        StoreOp::Auth,
        StoreOp::Decode,
        StoreOp::Cache,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::Read => "read",
            StoreOp::Write => "write",
            StoreOp::Watch => "watch",
            StoreOp::Auth => "auth",
            StoreOp::Decode => "decode",
            StoreOp::Cache => "cache",
        }
    }
}

/// Why a request to an upstream failed; the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// No connection could be made.
    Connect,
    /// No response headers within `request_timeout`.
    Timeout,
    /// The connection broke after the request was sent.
    Reset,
}

impl UpstreamErrorKind {
    const ALL: [UpstreamErrorKind; 3] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Reset,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
        }
    }
}

/// The registry and the metric families.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    first_byte: HistogramVec,
    stream_events: IntCounterVec,
    stream_event_gap: HistogramVec,
    in_flight: IntGaugeVec,
    upstream_errors: IntCounterVec,
    retries: IntCounterVec,
    active_pool: IntGaugeVec,
    switches: IntCounterVec,
    auto_rollbacks: IntCounterVec,
    shadow: IntCounterVec,
    shadow_skipped: IntCounterVec,
    unrouted: IntCounter,
    endpoint_healthy: IntGaugeVec,
    probes: IntCounterVec,
    dns_resolutions: IntCounterVec,
    probe_duration: HistogramVec,
    ejections: IntCounterVec,
    connections: IntGaugeVec,
    failovers: IntCounterVec,
    client_connections: IntGaugeVec,
    client_parked: IntGaugeVec,
    store: StoreMetrics,
}

// === impl Metrics ===

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        // Registration fails only on a duplicate or malformed name, and the
        // names are constants registered once on a fresh registry.
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry
                .register(c)
                .expect("metric names are unique and valid");
        };
        let requests = IntCounterVec::new(
            Opts::new(REQUESTS_TOTAL, "Proxied requests by response class."),
            &["model", "pool", "code"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                REQUEST_DURATION_SECONDS,
                "Time from request to the end of the response body.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["model", "pool"],
        )
        .expect("valid metric");
        let first_byte = HistogramVec::new(
            HistogramOpts::new(
                FIRST_BYTE_SECONDS,
                "Time from request to the first byte of the response body (for an \
                 OpenAI-style stream, the first token); a response without a body \
                 counts at its end.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["model", "pool"],
        )
        .expect("valid metric");
        let stream_events = IntCounterVec::new(
            Opts::new(
                STREAM_EVENTS_TOTAL,
                "Server-sent events relayed in text/event-stream responses.",
            ),
            &["model", "pool"],
        )
        .expect("valid metric");
        let stream_event_gap = HistogramVec::new(
            HistogramOpts::new(
                STREAM_EVENT_GAP_SECONDS,
                "Time between consecutive server-sent events of one text/event-stream \
                 response, as relayed (events that arrive together are 0 apart).",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["model", "pool"],
        )
        .expect("valid metric");
        let in_flight = IntGaugeVec::new(
            Opts::new(IN_FLIGHT, "Requests whose response body has not finished."),
            &["model", "pool"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                UPSTREAM_ERRORS_TOTAL,
                "Requests that failed on the upstream side, by kind.",
            ),
            &["model", "pool", "kind"],
        )
        .expect("valid metric");
        let retries = IntCounterVec::new(
            Opts::new(
                UPSTREAM_RETRIES_TOTAL,
                "Requests sent again to another endpoint of the pool after the connection to the first failed.",
            ),
            &["model", "pool"],
        )
        .expect("valid metric");
        let active_pool = IntGaugeVec::new(
            Opts::new(
                ACTIVE_POOL,
                "1 for the pool that serves a model, 0 for its standby.",
            ),
            &["model", "pool"],
        )
        .expect("valid metric");
        let shadow = IntCounterVec::new(
            Opts::new(
                SHADOW_TOTAL,
                "Mirrored requests by how the standby's answer compared with the live one.",
            ),
            &["model", "result"],
        )
        .expect("valid metric");
        let shadow_skipped = IntCounterVec::new(
            Opts::new(
                SHADOW_SKIPPED_TOTAL,
                "Requests sampled for mirroring but not mirrored or not compared, by reason.",
            ),
            &["model", "reason"],
        )
        .expect("valid metric");
        let switches = IntCounterVec::new(
            Opts::new(
                SWITCHES_TOTAL,
                "Switches of a model's active pool, by the pool switched to.",
            ),
            &["model", "to"],
        )
        .expect("valid metric");
        let auto_rollbacks = IntCounterVec::new(
            Opts::new(
                AUTO_ROLLBACKS_TOTAL,
                "Switches undone by the watch because the new pool breached a limit.",
            ),
            &["model"],
        )
        .expect("valid metric");
        let unrouted = IntCounter::new(UNROUTED_REQUESTS_TOTAL, "Requests that matched no model.")
            .expect("valid metric");
        let endpoint_healthy = IntGaugeVec::new(
            Opts::new(
                ENDPOINT_HEALTHY,
                "1 when the endpoint's probes pass, else 0 (unknown, unhealthy or ejected).",
            ),
            &["model", "pool", "endpoint"],
        )
        .expect("valid metric");
        let probes = IntCounterVec::new(
            Opts::new(PROBES_TOTAL, "Health probes by result."),
            &["model", "pool", "result"],
        )
        .expect("valid metric");
        let dns_resolutions = IntCounterVec::new(
            Opts::new(
                DNS_RESOLUTIONS_TOTAL,
                "DNS resolutions of a dns pool's names, by result (ok, empty: no such name or no records, error: no answer, kept the last set).",
            ),
            &["model", "pool", "result"],
        )
        .expect("valid metric");
        let probe_duration = HistogramVec::new(
            HistogramOpts::new(PROBE_DURATION_SECONDS, "Time a health probe took.")
                .buckets(DURATION_BUCKETS.to_vec()),
            &["model", "pool"],
        )
        .expect("valid metric");
        let ejections = IntCounterVec::new(
            Opts::new(
                EJECTIONS_TOTAL,
                "Endpoints taken out of rotation after failed requests in a row.",
            ),
            &["model", "pool", "endpoint"],
        )
        .expect("valid metric");
        let connections = IntGaugeVec::new(
            Opts::new(
                UPSTREAM_CONNECTIONS,
                "Open connections to the pool's endpoints.",
            ),
            &["model", "pool"],
        )
        .expect("valid metric");
        let client_connections = IntGaugeVec::new(
            Opts::new(
                CLIENT_CONNECTIONS,
                "Open client connections, by listener (TLS handshakes included).",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let client_parked = IntGaugeVec::new(
            Opts::new(
                CLIENT_CONNECTIONS_PARKED,
                "Open HTTP/1.1 client connections parked while idle: holding no buffers \
                 until the client sends again.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let failovers = IntCounterVec::new(
            Opts::new(
                FAILOVERS_TOTAL,
                "Requests the standby pool served because the active one had no healthy endpoint.",
            ),
            &["model", "pool"],
        )
        .expect("valid metric");
        let store_errors = IntCounterVec::new(
            Opts::new(
                STATE_STORE_ERRORS_TOTAL,
                "Failed operations on the state store, by what they were doing.",
            ),
            &["op"],
        )
        .expect("valid metric");
        let store = StoreMetrics {
            up: IntGauge::new(
                STATE_STORE_UP,
                "1 while the state store can take a switch (etcd: connected and following), else 0.",
            )
            .expect("valid metric"),
            revision: IntGauge::new(
                STATE_STORE_REVISION,
                "The newest etcd revision this instance has seen (0 for the file backend).",
            )
            .expect("valid metric"),
            lag: Histogram::with_opts(
                HistogramOpts::new(
                    STATE_STORE_WATCH_LAG_SECONDS,
                    "Time from a switch on another instance (its clock) to this instance serving it.",
                )
                .buckets(LAG_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            errors: StoreOp::ALL.map(|op| store_errors.with_label_values(&[op.as_str()])),
        };
        let build_info = IntGaugeVec::new(
            Opts::new(BUILD_INFO, "Always 1; the version label tells the build."),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        reg(Box::new(requests.clone()));
        reg(Box::new(duration.clone()));
        reg(Box::new(first_byte.clone()));
        reg(Box::new(stream_events.clone()));
        reg(Box::new(stream_event_gap.clone()));
        reg(Box::new(in_flight.clone()));
        reg(Box::new(upstream_errors.clone()));
        reg(Box::new(retries.clone()));
        reg(Box::new(active_pool.clone()));
        reg(Box::new(switches.clone()));
        reg(Box::new(auto_rollbacks.clone()));
        reg(Box::new(shadow.clone()));
        reg(Box::new(shadow_skipped.clone()));
        reg(Box::new(unrouted.clone()));
        reg(Box::new(build_info));
        reg(Box::new(endpoint_healthy.clone()));
        reg(Box::new(probes.clone()));
        reg(Box::new(dns_resolutions.clone()));
        reg(Box::new(probe_duration.clone()));
        reg(Box::new(ejections.clone()));
        reg(Box::new(connections.clone()));
        reg(Box::new(failovers.clone()));
        reg(Box::new(client_connections.clone()));
        reg(Box::new(client_parked.clone()));
        reg(Box::new(store.up.clone()));
        reg(Box::new(store.revision.clone()));
        reg(Box::new(store.lag.clone()));
        reg(Box::new(store_errors));
        Metrics {
            store,
            endpoint_healthy,
            probes,
            dns_resolutions,
            probe_duration,
            ejections,
            connections,
            failovers,
            client_connections,
            client_parked,
            registry,
            requests,
            duration,
            first_byte,
            stream_events,
            stream_event_gap,
            in_flight,
            upstream_errors,
            retries,
            active_pool,
            switches,
            auto_rollbacks,
            shadow,
            shadow_skipped,
            unrouted,
        }
    }

    /// Handles for one model's shadow traffic.
    pub fn shadow(&self, model: &str) -> ShadowMetrics {
        ShadowMetrics {
            results: ShadowResult::ALL.map(|r| self.shadow.with_label_values(&[model, r.as_str()])),
            skipped: ShadowSkip::ALL
                .map(|r| self.shadow_skipped.with_label_values(&[model, r.as_str()])),
        }
    }

    /// Handles for one pool of one model.
    pub fn pool(&self, model: &str, pool: PoolName) -> PoolMetrics {
        let p = pool.as_str();
        PoolMetrics {
            requests: CODE_CLASSES.map(|c| self.requests.with_label_values(&[model, p, c])),
            duration: self.duration.with_label_values(&[model, p]),
            first_byte: self.first_byte.with_label_values(&[model, p]),
            stream_events: self.stream_events.with_label_values(&[model, p]),
            stream_event_gap: self.stream_event_gap.with_label_values(&[model, p]),
            in_flight: self.in_flight.with_label_values(&[model, p]),
            upstream_errors: UpstreamErrorKind::ALL.map(|k| {
                self.upstream_errors
                    .with_label_values(&[model, p, k.as_str()])
            }),
            retries: self.retries.with_label_values(&[model, p]),
            active: self.active_pool.with_label_values(&[model, p]),
            connections: self.connections.with_label_values(&[model, p]),
            probes: ["ok", "fail"].map(|r| self.probes.with_label_values(&[model, p, r])),
            probe_duration: self.probe_duration.with_label_values(&[model, p]),
            failovers: self.failovers.with_label_values(&[model, p]),
        }
    }

    /// `switchyard_dns_resolutions_total` of one pool, by [`DNS_RESULTS`].
    pub fn dns_resolutions(&self, model: &str, pool: PoolName) -> [IntCounter; 3] {
        DNS_RESULTS.map(|r| {
            self.dns_resolutions
                .with_label_values(&[model, pool.as_str(), r])
        })
    }

    /// Handles for one endpoint of one pool.
    pub fn endpoint(&self, model: &str, pool: PoolName, endpoint: &str) -> EndpointMetrics {
        let labels = [model, pool.as_str(), endpoint];
        EndpointMetrics {
            healthy: self.endpoint_healthy.with_label_values(&labels),
            ejections: self.ejections.with_label_values(&labels),
        }
    }

    /// Handles for one model's switches.
    pub fn model(&self, model: &str) -> ModelMetrics {
        ModelMetrics {
            switches: PoolName::ALL.map(|p| self.switches.with_label_values(&[model, p.as_str()])),
            auto_rollbacks: self.auto_rollbacks.with_label_values(&[model]),
        }
    }

    /// Removes every series of one pool of one model: a reload removed the
    /// model, or built it and was refused. Handles still held (by requests
    /// finishing on the pool) keep counting, unexported; a model added again
    /// starts its series afresh.
    pub fn forget_pool(&self, model: &str, pool: PoolName) {
        let p = pool.as_str();
        // Each `remove_label_values` fails only when the series does not
        // exist, which is what is wanted; the results are ignored.
        for c in CODE_CLASSES {
            let _ = self.requests.remove_label_values(&[model, p, c]);
        }
        for k in UpstreamErrorKind::ALL {
            let _ = self
                .upstream_errors
                .remove_label_values(&[model, p, k.as_str()]);
        }
        for r in ["ok", "fail"] {
            let _ = self.probes.remove_label_values(&[model, p, r]);
        }
        for r in DNS_RESULTS {
            let _ = self.dns_resolutions.remove_label_values(&[model, p, r]);
        }
        for histogram in [&self.duration, &self.first_byte, &self.stream_event_gap] {
            let _ = histogram.remove_label_values(&[model, p]);
        }
        let _ = self.stream_events.remove_label_values(&[model, p]);
        let _ = self.probe_duration.remove_label_values(&[model, p]);
        for gauge in [&self.in_flight, &self.active_pool, &self.connections] {
            let _ = gauge.remove_label_values(&[model, p]);
        }
        for counter in [&self.retries, &self.failovers] {
            let _ = counter.remove_label_values(&[model, p]);
        }
    }

    /// Removes the series of one endpoint no pool has any more.
    pub fn forget_endpoint(&self, model: &str, pool: PoolName, endpoint: &str) {
        let labels = [model, pool.as_str(), endpoint];
        // Absent series are fine: see `forget_pool`.
        let _ = self.endpoint_healthy.remove_label_values(&labels);
        let _ = self.ejections.remove_label_values(&labels);
    }

    /// Removes the series of a model that no longer exists.
    pub fn forget_model(&self, model: &str) {
        // Absent series are fine: see `forget_pool`.
        let _ = self.auto_rollbacks.remove_label_values(&[model]);
        for r in ShadowResult::ALL {
            let _ = self.shadow.remove_label_values(&[model, r.as_str()]);
        }
        for r in ShadowSkip::ALL {
            let _ = self
                .shadow_skipped
                .remove_label_values(&[model, r.as_str()]);
        }
        for p in PoolName::ALL {
            // Absent series are fine: see `forget_pool`.
            let _ = self.switches.remove_label_values(&[model, p.as_str()]);
            self.forget_pool(model, p);
        }
    }

    /// Handles for the state store.
    pub fn store(&self) -> StoreMetrics {
        self.store.clone()
    }

    /// The client connection gauges of `listener` (`proxy`, `preview`,
    /// `admin`).
    pub fn client_connections(&self, listener: &str) -> crate::server::ConnectionGauges {
        crate::server::ConnectionGauges {
            open: self.client_connections.with_label_values(&[listener]),
            parked: self.client_parked.with_label_values(&[listener]),
        }
    }

    pub fn unrouted(&self) -> &IntCounter {
        &self.unrouted
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(buf)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Metric handles of one (model, pool).
#[derive(Clone)]
pub struct PoolMetrics {
    requests: [IntCounter; 5],
    pub duration: Histogram,
    /// Request to first body byte: `switchyard_response_first_byte_seconds`.
    pub first_byte: Histogram,
    pub stream_events: IntCounter,
    pub stream_event_gap: Histogram,
    pub in_flight: IntGauge,
    upstream_errors: [IntCounter; 3],
    /// Requests retried on another endpoint after a connect failure.
    pub retries: IntCounter,
    pub active: IntGauge,
    pub connections: IntGauge,
    /// `[ok, fail]`.
    probes: [IntCounter; 2],
    pub probe_duration: Histogram,
    pub failovers: IntCounter,
}

/// Metric handles of one endpoint.
#[derive(Clone)]
pub struct EndpointMetrics {
    pub healthy: IntGauge,
    pub ejections: IntCounter,
}

// === impl PoolMetrics ===

impl PoolMetrics {
    /// Counts a response by its status class.
    pub fn count_response(&self, status: http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[class].inc();
    }

    pub fn count_probe(&self, ok: bool, seconds: f64) {
        self.probes[usize::from(!ok)].inc();
        self.probe_duration.observe(seconds);
    }

    /// Responses counted so far, all classes and 5xx: what the watch
    /// samples, off the request path.
    pub fn responses(&self) -> (u64, u64) {
        let total = self.requests.iter().map(IntCounter::get).sum();
        (total, self.requests[4].get())
    }

    /// The duration histogram's cumulative bucket counts (one per
    /// [`DURATION_BUCKETS`] bound) and its count. Takes the histogram's
    /// collect lock, as a scrape does; requests observing meanwhile never wait.
    pub fn latency(&self) -> (Vec<u64>, u64) {
        buckets(&self.duration)
    }

    /// The time-to-first-byte histogram's buckets and count, as
    /// [`PoolMetrics::latency`]: what a rollout's step is judged on.
    pub fn first_byte_buckets(&self) -> (Vec<u64>, u64) {
        buckets(&self.first_byte)
    }

    /// The event-gap histogram's buckets and count, as [`PoolMetrics::latency`].
    pub fn event_gap_buckets(&self) -> (Vec<u64>, u64) {
        buckets(&self.stream_event_gap)
    }

    pub fn count_upstream_error(&self, kind: UpstreamErrorKind) {
        let i = UpstreamErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(0);
        self.upstream_errors[i].inc();
    }
}

/// A histogram's cumulative bucket counts (one per bound) and its count.
/// Takes its collect lock, as a scrape does; requests observing meanwhile
/// never wait.
fn buckets(h: &Histogram) -> (Vec<u64>, u64) {
    let metric = h.metric();
    let histogram = metric.get_histogram();
    let buckets = histogram
        .get_bucket()
        .iter()
        .map(|b| b.cumulative_count())
        .collect();
    (buckets, histogram.get_sample_count())
}

/// Metric handles of one model.
#[derive(Clone)]
pub struct ModelMetrics {
    switches: [IntCounter; 2],
    auto_rollbacks: IntCounter,
}

impl ModelMetrics {
    pub fn count_switch(&self, to: PoolName) {
        self.switches[to.index()].inc();
    }

    pub fn count_auto_rollback(&self) {
        self.auto_rollbacks.inc();
    }
}

/// Metric handles of the state store.
#[derive(Clone)]
pub struct StoreMetrics {
    /// `switchyard_state_store_up`.
    pub up: IntGauge,
    /// `switchyard_state_store_revision`.
    pub revision: IntGauge,
    /// `switchyard_state_store_watch_lag_seconds`.
    pub lag: Histogram,
    /// By `StoreOp as usize`.
    errors: [IntCounter; 6],
}

impl StoreMetrics {
    pub fn count_error(&self, op: StoreOp) {
        self.errors[op as usize].inc();
    }
}

/// How a mirrored request ended: the `result` of `switchyard_shadow_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowResult {
    /// Same status, and bodies equal within the tolerance.
    Match,
    Mismatch,
    /// The standby gave no answer to compare: no endpoint in rotation,
    /// connect failure, reset, timeout.
    Error,
}

impl ShadowResult {
    pub const ALL: [ShadowResult; 3] = [
        ShadowResult::Match,
        ShadowResult::Mismatch,
        ShadowResult::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ShadowResult::Match => "match",
            ShadowResult::Mismatch => "mismatch",
            ShadowResult::Error => "error",
        }
    }
}

/// Why a sampled request was not mirrored or not compared: the `reason` of
/// `switchyard_shadow_skipped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowSkip {
    /// `max_concurrent` mirrors were already in flight.
    Busy,
    /// The request or an answer was larger than `max_body`.
    TooLarge,
    /// The live request did not complete (client went away, body broken,
    /// upstream failed), so there was nothing to compare with.
    Incomplete,
}

impl ShadowSkip {
    pub const ALL: [ShadowSkip; 3] = [
        ShadowSkip::Busy,
        ShadowSkip::TooLarge,
        ShadowSkip::Incomplete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ShadowSkip::Busy => "busy",
            ShadowSkip::TooLarge => "too_large",
            ShadowSkip::Incomplete => "incomplete",
        }
    }
}

/// Metric handles of one model's shadow traffic.
#[derive(Clone)]
pub struct ShadowMetrics {
    results: [IntCounter; 3],
    skipped: [IntCounter; 3],
}

impl ShadowMetrics {
    pub fn count(&self, result: ShadowResult) {
        self.results[result as usize].inc();
    }

    pub fn count_skip(&self, reason: ShadowSkip) {
        self.skipped[reason as usize].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_write_the_labelled_series() {
        let m = Metrics::new();
        let p = m.pool("iris", PoolName::Green);
        p.count_response(http::StatusCode::OK);
        p.count_response(http::StatusCode::BAD_GATEWAY);
        p.count_upstream_error(UpstreamErrorKind::Timeout);
        p.retries.inc();
        m.model("iris").count_switch(PoolName::Green);
        m.model("iris").count_auto_rollback();
        let text = String::from_utf8(m.encode().unwrap()).unwrap();
        assert!(
            text.contains(r#"switchyard_requests_total{code="2xx",model="iris",pool="green"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"switchyard_requests_total{code="5xx",model="iris",pool="green"} 1"#)
        );
        assert!(text.contains(
            r#"switchyard_upstream_errors_total{kind="timeout",model="iris",pool="green"} 1"#
        ));
        assert!(text.contains(r#"switchyard_upstream_retries_total{model="iris",pool="green"} 1"#));
        assert!(text.contains(r#"switchyard_switches_total{model="iris",to="green"} 1"#));
        assert!(text.contains(r#"switchyard_auto_rollbacks_total{model="iris"} 1"#));
        let (total, errors) = p.responses();
        assert_eq!((total, errors), (2, 1));
        p.duration.observe(0.003);
        let (buckets, count) = p.latency();
        assert_eq!(buckets.len(), DURATION_BUCKETS.len());
        assert_eq!(count, 1);
        assert_eq!(buckets[2], 0, "0.0025s bucket");
        assert_eq!(buckets[3], 1, "0.005s bucket");
        assert!(text.contains("switchyard_build_info{version="));
    }

    #[test]
    fn forgotten_series_leave_the_exposition_and_others_stay() {
        let m = Metrics::new();
        let kept = m.pool("iris", PoolName::Blue);
        let gone = m.pool("chat", PoolName::Blue);
        let _ = m.pool("chat", PoolName::Green);
        let _ = m.model("chat");
        let old = m.endpoint("iris", PoolName::Blue, "http://a:1");
        let _ = m.endpoint("iris", PoolName::Blue, "http://b:1");
        m.forget_model("chat");
        m.forget_endpoint("iris", PoolName::Blue, "http://a:1");
        // Handles still held write nowhere that shows.
        gone.count_response(http::StatusCode::OK);
        old.healthy.set(1);
        kept.count_response(http::StatusCode::OK);
        let text = String::from_utf8(m.encode().unwrap()).unwrap();
        assert!(!text.contains("chat"), "{text}");
        assert!(!text.contains("http://a:1"), "{text}");
        assert!(text.contains("http://b:1"), "{text}");
        assert!(
            text.contains(r#"switchyard_requests_total{code="2xx",model="iris",pool="blue"} 1"#),
            "{text}"
        );
    }
}
