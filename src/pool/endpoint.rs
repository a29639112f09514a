//! One upstream server of a pool: its address, its load (in-flight and
//! served counters), and its health as the request path sees it. The
//! request path reads the health with one atomic load and reports its own
//! outcomes (passive checks); the prober (`health.rs`) writes the state.
//! It also holds its connections ([`Slot`]), so they come and go with it:
//! an endpoint that discovery removes closes them once the last request
//! that holds it is done.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::Uri;

use super::client::{Slot, UpstreamClient};
use crate::health::{EndpointState, ProbeReport};
use crate::metrics::EndpointMetrics;

pub struct Endpoint {
    url: String,
    /// For an endpoint DNS discovery found: the entry of `endpoints` it
    /// came from (`http://models.ns.svc:8000`).
    source: Option<Arc<str>>,
    /// `http` or `https`, as the pool's endpoints all are.
    scheme: Scheme,
    authority: Authority,
    in_flight: AtomicUsize,
    served: AtomicU64,
    /// An [`EndpointState`] as `u8`: written by the prober, and by the
    /// request path when it ejects the endpoint.
    state: AtomicU8,
    /// Failed requests in a row (connect error, reset, timeout, 5xx).
    passive_failures: AtomicU32,
    /// Failures in a row that eject the endpoint.
    eject_after: u32,
    /// Set once discovery removed it: out of rotation for good, whatever
    /// the prober publishes; requests on it finish (its drain).
    removed: AtomicBool,
    /// For a discovered endpoint, the name and port it came from.
    host: Option<Authority>,
    /// Set by the request path when it ejects; the prober starts the
    /// back-off and clears it once the endpoint is back.
    eject_requested: AtomicBool,
    /// Open connections, counted by the pool's connector.
    open_connections: Arc<AtomicUsize>,
    /// The prober's latest report, for status.
    report: ArcSwapOption<ProbeReport>,
    metrics: EndpointMetrics,
    /// The connections requests and (warm) probes use.
    slot: Arc<Slot>,
    /// With `warm_connections = 0`: the probes', which keeps none.
    cold_slot: Option<Arc<Slot>>,
}

/// What an endpoint is built from.
pub(super) struct EndpointSpec<'a> {
    pub url: String,
    pub scheme: Scheme,
    /// Where it connects: `host:port` as listed, or the address discovered.
    pub authority: Authority,
    /// For a discovered endpoint, the name and port it came from: the
    /// `Host` of HTTP/1.1 requests that bring none.
    pub host: Option<&'a Authority>,
    pub source: Option<Arc<str>>,
    /// `Unknown` (serving until probed) for endpoints listed in the config;
    /// `Pending` (out of rotation until a probe passes) for ones
    /// discovery adds to a running pool.
    pub state: EndpointState,
}

// === impl Endpoint ===

impl Endpoint {
    pub(super) fn new(
        spec: EndpointSpec<'_>,
        eject_after: u32,
        metrics: EndpointMetrics,
        client: &UpstreamClient,
        cold: Option<&UpstreamClient>,
    ) -> Endpoint {
        let open_connections = Arc::new(AtomicUsize::new(0));
        let slot = |c: &UpstreamClient| {
            c.slot(
                &spec.scheme,
                &spec.authority,
                spec.host,
                Arc::clone(&open_connections),
            )
        };
        let (slot, cold_slot) = (slot(client), cold.map(slot));
        // The gauge is not reset here: a new series starts at 0 anyway, and
        // an existing one belongs to the endpoint a reload is replacing,
        // which keeps serving (and publishing) until this one is probed.
        Endpoint {
            url: spec.url,
            source: spec.source,
            scheme: spec.scheme,
            authority: spec.authority,
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            state: AtomicU8::new(spec.state as u8),
            passive_failures: AtomicU32::new(0),
            eject_after,
            removed: AtomicBool::new(false),
            host: spec.host.cloned(),
            eject_requested: AtomicBool::new(false),
            open_connections,
            report: ArcSwapOption::empty(),
            metrics,
            slot,
            cold_slot,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The `endpoints` entry DNS discovery found this endpoint by, if it did.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// The connections of `client` (the cold one's, if `cold` and the pool
    /// has it).
    pub(super) fn slot(&self, cold: bool) -> &Arc<Slot> {
        match (&self.cold_slot, cold) {
            (Some(slot), true) => slot,
            _ => &self.slot,
        }
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests sent to this endpoint since start.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Upstream connections open now (idle or busy).
    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> EndpointState {
        EndpointState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Whether balancing may send a request here: two atomic loads.
    #[inline]
    pub fn is_serving(&self) -> bool {
        self.state().is_serving() && !self.is_removed()
    }

    /// Whether discovery removed it from its pool: it drains.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    pub(super) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Relaxed);
    }

    /// For a discovered endpoint, the name and port it was found by:
    /// `models.ns.svc:8000`.
    pub fn host(&self) -> Option<&Authority> {
        self.host.as_ref()
    }

    pub fn report(&self) -> Option<Arc<ProbeReport>> {
        self.report.load_full()
    }

    pub fn consecutive_request_failures(&self) -> u32 {
        self.passive_failures.load(Ordering::Relaxed)
    }

    /// Counts one request's outcome for passive checks. Enough failures in a
    /// row take the endpoint out of rotation at once; the prober then owns
    /// its back-off and return.
    #[inline]
    pub fn record_outcome(&self, failed: bool) {
        // The counter is Relaxed: it orders nothing else, and a request
        // racing an ejection by one request is harmless. The ejection itself
        // (once per ejection, off the hot path) is SeqCst: see `publish`.
        if failed {
            let n = self.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= self.eject_after && !self.eject_requested.swap(true, Ordering::SeqCst) {
                self.state
                    .store(EndpointState::Ejected as u8, Ordering::SeqCst);
                self.metrics.healthy.set(0);
            }
        } else if self.passive_failures.load(Ordering::Relaxed) != 0 {
            self.passive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// True once, for the prober: the request path asked for an ejection.
    pub(crate) fn is_eject_requested(&self) -> bool {
        self.eject_requested.load(Ordering::Relaxed)
    }

    /// The prober publishes the endpoint's state and its latest report.
    /// `ejection_seen` is what [`Endpoint::is_eject_requested`] said when
    /// the prober looked, before its state machine decided `state`.
    ///
    /// The request path may eject the endpoint after the prober looked: that
    /// ejection must not be overwritten by a round that knew nothing of it.
    /// It stays, and the next round starts its back-off.
    pub(crate) fn publish(&self, state: EndpointState, report: ProbeReport, ejection_seen: bool) {
        let mut state = state;
        if state != EndpointState::Ejected && self.eject_requested.load(Ordering::SeqCst) {
            if ejection_seen {
                // Back in rotation: the ejection is over, count afresh.
                self.passive_failures.store(0, Ordering::Relaxed);
                self.eject_requested.store(false, Ordering::SeqCst);
            } else {
                state = EndpointState::Ejected;
            }
        }
        self.state.store(state as u8, Ordering::SeqCst);
        // An ejection between the check above and the store: the request
        // path stores `Ejected` after setting the request, we load the
        // request after storing, all SeqCst, so one of us sees the other.
        if state.is_serving() && self.eject_requested.load(Ordering::SeqCst) {
            state = EndpointState::Ejected;
            self.state.store(state as u8, Ordering::SeqCst);
        }
        self.metrics
            .healthy
            .set(i64::from(state == EndpointState::Healthy));
        self.report.store(Some(Arc::new(report)));
    }

    pub(crate) fn metrics(&self) -> &EndpointMetrics {
        &self.metrics
    }

    pub(super) fn start_request(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn end_request(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// The upstream URI for a request path on this endpoint.
    pub fn uri(&self, path: Option<&PathAndQuery>) -> Uri {
        let mut parts = http::uri::Parts::default();
        // A standard scheme: cloning it copies a tag, no allocation.
        parts.scheme = Some(self.scheme.clone());
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
