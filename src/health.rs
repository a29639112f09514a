//! The health checker: probes every endpoint of both pools of every model,
//! keeps the standby's connections warm, and turns probe results and the
//! request path's ejections into each endpoint's state. Never swaps pools.
//!
//! One loop per pool. Each round, every endpoint gets `warm_connections`
//! concurrent probes (one on HTTP/2 pools, whose single connection multiplexes)
//! through the pool's own upstream client: the connections probes open are
//! the ones requests reuse, so a standby that is probed is a standby that is
//! connected. An endpoint passes a round when all its probes pass.
//!
//! The trade-off Pingora's `reuse_connection` names, decided per pool:
//! reused connections keep the standby warm (the default); with
//! `warm_connections = 0` each HTTP/1.1 probe goes through a client of its
//! own that pools nothing, and asks for `Connection: close`, so it opens a
//! fresh connection and so also catches a broken network path, at the price
//! of a cold standby. (Through the pool's client it would ride, and then
//! close, an idle connection that requests keep alive.)
//!
//! Probes: HTTP/1.1 pools get `GET {health.path}`, passing on 2xx. HTTP/2
//! pools (h2c, or h2 over TLS) get the standard gRPC health check
//! (`grpc.health.v1.Health/Check` for `health.grpc_service`), passing on
//! `grpc-status: 0` and `SERVING`. On `https://` pools probes speak TLS like
//! requests do: the client is the same.
//!
//! The state machine itself is sans-io, in `health/tracker.rs`. A health
//! change is logged once, when it happens, with its cause; never per probe.

mod tracker;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, Version};
use http_body_util::{BodyExt, Either, Full};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use tracker::{EndpointState, Thresholds, Tracker};

use crate::config::EJECT_MAX;
use crate::events::{EventKind, Events};
use crate::pool::{Endpoint, Members, Pool, Protocol, UpstreamBody};
use crate::switch::Model;
use crate::ErrorChain;

/// A probe reads at most this much of a health response before it stops:
/// enough for any readiness body, bounded against a misbehaving upstream.
const MAX_PROBE_BODY: usize = 64 * 1024;
const GRPC_HEALTH_PATH: &str = "/grpc.health.v1.Health/Check";
static PROBE_USER_AGENT: HeaderValue = HeaderValue::from_static("switchyard-probe");

/// The latest probe round of one endpoint, as status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub ok: bool,
    /// `status 200`, `status 503`, `no answer within 1s`, `connect failed: ...`.
    pub result: String,
    pub latency_ms: f64,
    pub at_unix_ms: u64,
    /// Failed probe rounds in a row.
    pub consecutive_failures: u32,
    /// While ejected: when the back-off ends (the endpoint returns once
    /// probes pass after it).
    pub ejected_until_unix_ms: Option<u64>,
}

/// Probes every pool of every model until cancelled; pools a reload adds
/// arrive through its [`Watch`] handle, and a pool stops being probed once
/// retired ([`Pool::retire`]).
pub struct Checker {
    pools: Vec<Arc<Pool>>,
    added: mpsc::UnboundedReceiver<Arc<Pool>>,
    /// Ejections and health changes are recorded here.
    events: Events,
}

/// Hands new pools to the running [`Checker`].
#[derive(Clone)]
pub struct Watch(mpsc::UnboundedSender<Arc<Pool>>);

impl Watch {
    /// Starts probing `pool`; [`Pool::wait_probed`] tells when its first
    /// round is in.
    pub fn pool(&self, pool: Arc<Pool>) {
        // The checker only stops at shutdown, when nothing needs probing.
        let _ = self.0.send(pool);
    }
}

// === impl Checker ===

impl Checker {
    pub fn new(models: &[Arc<Model>], events: Events) -> (Checker, Watch) {
        let pools = models
            .iter()
            .flat_map(|m| crate::pool::PoolName::ALL.map(|p| Arc::clone(m.pool(p))))
            .collect();
        let (tx, added) = mpsc::unbounded_channel();
        (
            Checker {
                pools,
                added,
                events,
            },
            Watch(tx),
        )
    }

    /// Runs one probe loop per pool until `token` is cancelled.
    pub async fn run(mut self, token: CancellationToken) {
        let mut loops = JoinSet::new();
        for pool in self.pools {
            loops.spawn(watch_pool(pool, self.events.clone(), token.child_token()));
        }
        // Each loop returns once cancelled or retired; a panic ends `run`
        // (and so the whole proxy) instead of leaving a pool silently
        // unprobed.
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                Some(pool) = self.added.recv() => {
                    loops.spawn(watch_pool(pool, self.events.clone(), token.child_token()));
                }
                Some(ended) = loops.join_next() => {
                    if let Err(e) = ended {
                        if e.is_panic() {
                            std::panic::resume_unwind(e.into_panic());
                        }
                    }
                }
            }
        }
        while let Some(ended) = loops.join_next().await {
            if let Err(e) = ended {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    }
}

async fn watch_pool(pool: Arc<Pool>, events: Events, token: CancellationToken) {
    let config = pool.health_config().clone();
    let thresholds = Thresholds {
        healthy_after: config.healthy_after,
        unhealthy_after: config.unhealthy_after,
        eject_base: config.eject_backoff,
        eject_max: EJECT_MAX.max(config.eject_backoff),
    };
    // Each endpoint's tracker, kept while the endpoint is in the pool: an
    // endpoint discovery keeps keeps its health, a new one starts afresh.
    let mut trackers: Vec<(Arc<Endpoint>, Tracker)> = Vec::new();
    let mut ticker = tokio::time::interval(config.interval);
    // A slow round pushes the next one back instead of firing a burst.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let retired = pool.retired().clone();
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = retired.cancelled() => return,
            _ = ticker.tick() => {}
            // New endpoints wait for their first probe to take traffic:
            // probe them now, not an interval later.
            () = pool.members_changed() => ticker.reset(),
            // An upstream closed an idle connection: close it too.
            () = pool.idle_stirred() => {
                pool.sweep_idle(false);
                continue;
            }
        }
        let members = pool.endpoints();
        let outcomes = tokio::select! {
            () = token.cancelled() => return,
            () = retired.cancelled() => return,
            outcomes = probe_round(&pool, &members) => outcomes,
        };
        let now = Instant::now();
        let mut kept = Vec::with_capacity(members.len());
        for (endpoint, outcome) in members.iter().zip(outcomes) {
            let mut tracker = trackers
                .iter()
                .position(|(e, _)| Arc::ptr_eq(e, endpoint))
                .map_or_else(|| Tracker::new(thresholds), |i| trackers.swap_remove(i).1);
            apply(&pool, endpoint, &mut tracker, outcome, now, &events);
            kept.push((Arc::clone(endpoint), tracker));
        }
        // Trackers of removed endpoints drop here, and with them the last
        // references the prober held.
        trackers = kept;
        pool.mark_probed();
        pool.sweep_idle(true);
    }
}

/// Feeds one endpoint's round into its tracker and publishes the result.
fn apply(
    pool: &Pool,
    endpoint: &Endpoint,
    tracker: &mut Tracker,
    outcome: Outcome,
    now: Instant,
    events: &Events,
) {
    let labels = (pool.model(), pool.name(), endpoint.url());
    // Read once: `publish` must know whether this round's state accounts
    // for an ejection the request path asked for, or raced it.
    let ejection_seen = endpoint.is_eject_requested();
    if ejection_seen {
        if let Some(backoff) = tracker.eject(now) {
            endpoint.metrics().ejections.inc();
            warn!(
                model = labels.0,
                pool = %labels.1,
                endpoint = labels.2,
                failures = endpoint.consecutive_request_failures(),
                backoff = ?backoff,
                "endpoint ejected after failed requests in a row"
            );
            events.record(EventKind::Ejection {
                model: labels.0.to_string(),
                pool: labels.1,
                endpoint: labels.2.to_string(),
                failures: endpoint.consecutive_request_failures(),
                backoff_ms: backoff.as_millis() as u64,
            });
        }
    }
    if let Some(state) = tracker.on_probe(outcome.ok, now) {
        if state == EndpointState::Healthy {
            info!(model = labels.0, pool = %labels.1, endpoint = labels.2, state = %state, cause = %outcome.result, "endpoint health changed");
        } else {
            warn!(model = labels.0, pool = %labels.1, endpoint = labels.2, state = %state, cause = %outcome.result, "endpoint health changed");
        }
        events.record(EventKind::Health {
            model: labels.0.to_string(),
            pool: labels.1,
            endpoint: labels.2.to_string(),
            state: state.to_string(),
            cause: outcome.result.to_string(),
        });
    }
    let ejected_until_unix_ms = tracker
        .ejected_until()
        .map(|until| unix_ms_in(until.saturating_duration_since(now)));
    endpoint.publish(
        tracker.state(),
        ProbeReport {
            ok: outcome.ok,
            result: outcome.result,
            latency_ms: outcome.latency.as_secs_f64() * 1000.0,
            at_unix_ms: unix_ms_in(Duration::ZERO),
            consecutive_failures: tracker.consecutive_failures(),
            ejected_until_unix_ms,
        },
        ejection_seen,
    );
}

fn unix_ms_in(after: Duration) -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| (d + after).as_millis() as u64)
}

/// What one endpoint's round found.
#[derive(Debug)]
struct Outcome {
    ok: bool,
    result: String,
    latency: Duration,
}

/// Probes every endpoint of `pool` at once; one [`Outcome`] per endpoint,
/// in endpoint order.
async fn probe_round(pool: &Arc<Pool>, members: &Members) -> Vec<Outcome> {
    let per_endpoint = match pool.protocol() {
        Protocol::Http1 => pool.health_config().warm_connections.max(1),
        Protocol::H2c | Protocol::H2 => 1,
    };
    let mut probes = JoinSet::new();
    for (index, endpoint) in members.iter().enumerate() {
        for _ in 0..per_endpoint {
            let pool = Arc::clone(pool);
            let endpoint = Arc::clone(endpoint);
            probes.spawn(async move { (index, probe_once(&pool, &endpoint).await) });
        }
    }
    let mut outcomes: Vec<Option<Outcome>> = (0..members.len()).map(|_| None).collect();
    while let Some(joined) = probes.join_next().await {
        let Ok((index, (result, latency))) = joined else {
            continue;
        };
        pool.metrics()
            .count_probe(result.is_ok(), latency.as_secs_f64());
        let next = match result {
            Ok(pass) => Outcome {
                ok: true,
                result: pass,
                latency,
            },
            Err(fail) => Outcome {
                ok: false,
                result: fail,
                latency,
            },
        };
        // The endpoint passes when every probe passed: keep the first failure.
        outcomes[index] = Some(match outcomes[index].take() {
            Some(prev) if !prev.ok => prev,
            Some(prev) if next.ok => Outcome {
                latency: prev.latency.max(next.latency),
                ..prev
            },
            _ => next,
        });
    }
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or(Outcome {
                ok: false,
                result: "probe task failed".to_string(),
                latency: Duration::ZERO,
            })
        })
        .collect()
}

/// One probe request through the pool's client: what it found, and how long
/// it took, failed or not (a probe that timed out took the whole timeout).
async fn probe_once(pool: &Pool, endpoint: &Endpoint) -> (Result<String, String>, Duration) {
    let started = Instant::now();
    let result = probe_checked(pool, endpoint, started).await;
    (result, started.elapsed())
}

async fn probe_checked(
    pool: &Pool,
    endpoint: &Endpoint,
    started: Instant,
) -> Result<String, String> {
    let config = pool.health_config();
    let request = match pool.protocol() {
        Protocol::Http1 => http_probe(
            endpoint.uri(Some(&config.path.parse().map_err(|_| "bad health path")?)),
            config.warm_connections > 0,
        ),
        Protocol::H2c | Protocol::H2 => grpc_probe(
            endpoint.uri(Some(&http::uri::PathAndQuery::from_static(
                GRPC_HEALTH_PATH,
            ))),
            &config.grpc_service,
        ),
    }
    .map_err(|e| format!("cannot build probe: {e}"))?;
    let protocol = pool.protocol();
    let checked = tokio::time::timeout_at(started + config.timeout, async {
        let response = pool
            .probe_client()
            .request(endpoint, request)
            .await
            .map_err(|e| {
                if e.is_connect() {
                    format!("connect failed: {}", ErrorChain(&e))
                } else {
                    format!("request failed: {}", ErrorChain(&e))
                }
            })?;
        match protocol {
            Protocol::Http1 => check_http(response).await,
            Protocol::H2c | Protocol::H2 => check_grpc(response).await,
        }
    })
    .await;
    match checked {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", config.timeout)),
    }
}

/// A probe request. With `keep` false (`warm_connections = 0`) it goes
/// through the pool's unpooled probe client ([`Pool::probe_client`]) and asks
/// for `Connection: close`, so probing leaves no idle connection behind: each
/// probe pays a fresh connect, which also proves the network path works.
fn http_probe(uri: http::Uri, keep: bool) -> Result<Request<UpstreamBody>, http::Error> {
    let mut builder = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .version(Version::HTTP_11)
        .header(header::USER_AGENT, PROBE_USER_AGENT.clone());
    if !keep {
        builder = builder.header(header::CONNECTION, "close");
    }
    builder.body(Either::Right(Full::new(Bytes::new())))
}

async fn check_http(
    response: http::Response<crate::pool::UpstreamIncoming>,
) -> Result<String, String> {
    let status = response.status();
    // Read the body so the connection goes back to the pool, warm.
    let _ = read_bounded(response.into_body()).await;
    if status.is_success() {
        Ok(format!("status {}", status.as_u16()))
    } else {
        Err(format!("status {}", status.as_u16()))
    }
}

/// `grpc.health.v1.HealthCheckRequest { service }`, length-prefixed.
fn grpc_probe(uri: http::Uri, service: &str) -> Result<Request<UpstreamBody>, http::Error> {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.extend_from_slice(&[0x0a]); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.extend_from_slice(&[0]); // not compressed
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    Request::builder()
        .method(Method::POST)
        .uri(uri)
        .version(Version::HTTP_2)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(header::USER_AGENT, PROBE_USER_AGENT.clone())
        .body(Either::Right(Full::new(frame.freeze())))
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.extend_from_slice(&[(v as u8) | 0x80]);
        v >>= 7;
    }
    buf.extend_from_slice(&[v as u8]);
}

/// Passes on `grpc-status: 0` with `HealthCheckResponse.status == SERVING`.
async fn check_grpc(
    response: http::Response<crate::pool::UpstreamIncoming>,
) -> Result<String, String> {
    if !response.status().is_success() {
        return Err(format!("status {}", response.status().as_u16()));
    }
    // A trailers-only response carries grpc-status in the headers.
    let header_status = response.headers().get("grpc-status").cloned();
    let collected = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body failed: {e}"))?;
    let trailer_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .cloned();
    let grpc_status = trailer_status.or(header_status);
    match grpc_status.as_ref().map(HeaderValue::as_bytes) {
        Some(b"0") => {}
        Some(other) => return Err(format!("grpc-status {}", String::from_utf8_lossy(other))),
        None => return Err("no grpc-status".to_string()),
    }
    let mut body = collected.to_bytes();
    if body.len() < 5 {
        return Err("empty gRPC health response".to_string());
    }
    body.advance(5);
    match serving_status(&body) {
        Some(1) => Ok("SERVING".to_string()),
        Some(2) => Err("NOT_SERVING".to_string()),
        Some(other) => Err(format!("health status {other}")),
        None => Err("health status UNKNOWN".to_string()),
    }
}

/// Field 1 (varint) of a `HealthCheckResponse`, skipping other fields.
fn serving_status(mut message: &[u8]) -> Option<u64> {
    let mut status = None;
    while !message.is_empty() {
        let key = read_varint(&mut message)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = Some(read_varint(&mut message)?),
            (_, 0) => {
                read_varint(&mut message)?;
            }
            (_, 2) => {
                let len = usize::try_from(read_varint(&mut message)?).ok()?;
                message = message.get(len..)?;
            }
            (_, 1) => message = message.get(8..)?,
            (_, 5) => message = message.get(4..)?,
            _ => return None,
        }
    }
    status
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

async fn read_bounded(mut body: crate::pool::UpstreamIncoming) -> usize {
    let mut read = 0;
    while read <= MAX_PROBE_BODY {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            _ => break,
        }
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_status_reads_field_one() {
        assert_eq!(serving_status(&[0x08, 0x01]), Some(1));
        assert_eq!(serving_status(&[0x08, 0x02]), Some(2));
        assert_eq!(serving_status(&[]), None);
        // An unknown length-delimited field before the status is skipped.
        assert_eq!(
            serving_status(&[0x12, 0x02, b'h', b'i', 0x08, 0x01]),
            Some(1)
        );
        assert_eq!(serving_status(&[0x12, 0x09, b'h']), None);
    }

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, 16_383, 16_384, u64::from(u32::MAX)] {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, v);
            let mut slice = &buf[..];
            assert_eq!(read_varint(&mut slice), Some(v));
            assert!(slice.is_empty());
        }
    }
}
