//! Shadow traffic: a sample of live requests mirrored to the standby pool,
//! and each pair of answers compared.
//!
//! On the request path a mirror costs, for a request not sampled, one random
//! draw. A sampled one takes a permit (bounded concurrency; none left: not
//! mirrored), clones the request head, and has its request body and its
//! live answer copied as they stream past (up to `max_body`; see
//! `capture.rs`). Everything else happens in a task of its own, after the
//! live request: once the request body is complete it is sent to the
//! standby (its own deadline, its pool's client, an endpoint picked as
//! traffic picks but not counted as traffic), then the two answers are
//! compared: status, and bodies as JSON within the tolerance (byte for byte
//! when either is not JSON). The live response is never delayed or changed,
//! and a mirror's failure never touches the live request or the standby's
//! health.

mod capture;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Instant};
use tracing::debug;

pub use capture::{Capture, Copied, CopyReceiver, Cut};

use crate::config::ShadowConfig;
use crate::events::now_unix_ms;
use crate::metrics::{ShadowMetrics, ShadowResult, ShadowSkip};
use crate::pool::{Endpoint, Pool, Protocol};
use crate::ErrorChain;

/// Marks a mirrored request, so the model server can tell it from traffic.
pub static X_SWITCHYARD_SHADOW: HeaderName = HeaderName::from_static("x-switchyard-shadow");

/// How many recent mismatches (and errors) the status keeps.
const KEEP_LAST: usize = 10;
/// How much of each body a kept mismatch shows.
const SHOW_BYTES: usize = 1024;
/// Answers larger than this together are compared on the blocking pool.
const COMPARE_INLINE_BYTES: usize = 256 * 1024;

/// One model's shadow: its settings, its permits and what it has seen.
pub struct Shadow {
    config: ShadowConfig,
    permits: Arc<Semaphore>,
    metrics: ShadowMetrics,
    /// Indexed by `ShadowResult as usize`.
    results: [AtomicU64; 3],
    /// Indexed by `ShadowSkip as usize`.
    skipped: [AtomicU64; 3],
    /// The newest last. Written by mirror tasks, read by status; never by
    /// the request path.
    last: Mutex<VecDeque<Disagreement>>,
}

/// A pair of answers that did not agree, or a mirror that got no answer.
#[derive(Debug, Clone, Serialize)]
pub struct Disagreement {
    pub at_unix_ms: u64,
    /// `mismatch` or `error`.
    pub result: &'static str,
    /// Method and path of the request.
    pub request: String,
    pub x_request_id: Option<String>,
    /// The standby endpoint the mirror went to, if one was picked.
    pub endpoint: Option<String>,
    /// What differed, or why there was no answer.
    pub difference: String,
    pub live: Answer,
    pub shadow: Option<Answer>,
}

/// One side of a pair, as shown in the status: the body cut short.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// A request sampled for mirroring, holding its permit.
pub struct Mirror {
    shadow: Arc<Shadow>,
    permit: OwnedSemaphorePermit,
}

/// What the live request carries for its mirror: the answer's copy is made
/// once the live answer's head is in.
pub struct AnswerSlot {
    limit: usize,
    tx: tokio::sync::oneshot::Sender<CopyReceiver>,
}

/// The head of the request to mirror.
struct Head {
    method: Method,
    path: Option<http::uri::PathAndQuery>,
    headers: HeaderMap,
}

// === impl Shadow ===

impl Shadow {
    pub fn new(config: ShadowConfig, metrics: ShadowMetrics) -> Shadow {
        Shadow {
            permits: Arc::new(Semaphore::new(config.max_concurrent)),
            config,
            metrics,
            results: Default::default(),
            skipped: Default::default(),
            last: Mutex::new(VecDeque::with_capacity(KEEP_LAST)),
        }
    }

    pub fn config(&self) -> &ShadowConfig {
        &self.config
    }

    /// On the request path: whether to mirror this request, whose body
    /// declares `content_length`. Cheap when not: one random draw.
    #[inline]
    pub fn sample(self: &Arc<Self>, content_length: Option<u64>) -> Option<Mirror> {
        if fastrand::f64() * 100.0 >= self.config.percent {
            return None;
        }
        if content_length.is_some_and(|len| len > self.config.max_body as u64) {
            self.skip(ShadowSkip::TooLarge);
            return None;
        }
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            self.skip(ShadowSkip::Busy);
            return None;
        };
        Some(Mirror {
            shadow: Arc::clone(self),
            permit,
        })
    }

    /// The model status's `shadow` object.
    pub fn status(&self) -> Value {
        let count = |r: ShadowResult| self.results[r as usize].load(Ordering::Relaxed);
        let (matched, mismatched, errors) = (
            count(ShadowResult::Match),
            count(ShadowResult::Mismatch),
            count(ShadowResult::Error),
        );
        let compared = matched + mismatched;
        let skipped: serde_json::Map<String, Value> = ShadowSkip::ALL
            .iter()
            .map(|s| {
                let n = self.skipped[*s as usize].load(Ordering::Relaxed);
                (s.as_str().to_string(), json!(n))
            })
            .collect();
        let last: Vec<Disagreement> = self.lock_last().iter().rev().cloned().collect();
        json!({
            "percent": self.config.percent,
            "max_body": self.config.max_body,
            "max_concurrent": self.config.max_concurrent,
            "in_flight": self.config.max_concurrent - self.permits.available_permits(),
            "tolerance": self.config.tolerance.relative,
            "ignore": self.config.tolerance.ignore,
            "compared": compared,
            "match": matched,
            "mismatch": mismatched,
            "error": errors,
            // Of the pairs compared; null before the first.
            "agreement": (compared > 0).then(|| matched as f64 / compared as f64),
            "skipped": skipped,
            "last_mismatches": last,
        })
    }

    fn skip(&self, reason: ShadowSkip) {
        self.skipped[reason as usize].fetch_add(1, Ordering::Relaxed);
        self.metrics.count_skip(reason);
    }

    fn count(&self, result: ShadowResult, disagreement: Option<Disagreement>) {
        self.results[result as usize].fetch_add(1, Ordering::Relaxed);
        self.metrics.count(result);
        if let Some(d) = disagreement {
            debug!(request = %d.request, result = d.result, difference = %d.difference, "shadow answer differs");
            let mut last = self.lock_last();
            if last.len() == KEEP_LAST {
                last.pop_front();
            }
            last.push_back(d);
        }
    }

    fn lock_last(&self) -> std::sync::MutexGuard<'_, VecDeque<Disagreement>> {
        // Pushes and copies cannot leave it half-changed.
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl Mirror ===

impl Mirror {
    /// Starts the mirror of a request whose head (as prepared for the live
    /// upstream) is `parts`, to `standby`. Returns the copy the request body
    /// must carry and the slot for the live answer.
    pub fn start(self, parts: &http::request::Parts, standby: Arc<Pool>) -> (Capture, AnswerSlot) {
        let limit = self.shadow.config.max_body;
        let (request, request_rx) = Capture::new(limit, None);
        let (tx, answer_rx) = tokio::sync::oneshot::channel();
        let head = Head {
            method: parts.method.clone(),
            path: parts.uri.path_and_query().cloned(),
            headers: parts.headers.clone(),
        };
        tokio::spawn(run(self, head, standby, request_rx, answer_rx));
        (request, AnswerSlot { limit, tx })
    }
}

// === impl AnswerSlot ===

impl AnswerSlot {
    /// The copy the live answer with `status` must carry; `None` when the
    /// mirror has ended already (its request body was too large, or cut).
    pub fn capture(self, status: StatusCode) -> Option<Capture> {
        if self.tx.is_closed() {
            return None;
        }
        let (capture, rx) = Capture::new(self.limit, Some(status));
        self.tx.send(rx).ok()?;
        Some(capture)
    }
}

/// The mirror, after the live request: send, read, compare, count.
async fn run(
    mirror: Mirror,
    head: Head,
    standby: Arc<Pool>,
    request: CopyReceiver,
    answer: tokio::sync::oneshot::Receiver<CopyReceiver>,
) {
    // Held to the end: bounds the mirrors in flight.
    let Mirror {
        shadow,
        permit: _permit,
    } = mirror;
    let described = format!(
        "{} {}",
        head.method,
        head.path.as_ref().map_or("/", |p| p.as_str())
    );
    let request_id = head
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // A mirror ends within twice its timeout, waits for the live request
    // and its answer included: a client that stalls its body, or an answer
    // that streams for long, does not hold a permit for ever.
    let deadline = Instant::now() + shadow.config.timeout.saturating_mul(2);
    let body = match timeout_at(deadline, request).await {
        Ok(Ok(Ok(copied))) => copied.body,
        Ok(Ok(Err(Cut::TooLarge))) => return shadow.skip(ShadowSkip::TooLarge),
        Ok(Err(_)) | Err(_) => return shadow.skip(ShadowSkip::Incomplete),
    };
    let (endpoint, mirrored) = match standby.choose_endpoint() {
        None => (
            None,
            Err("the standby pool has no endpoint in rotation".to_string()),
        ),
        Some(e) => (
            Some(e.url().to_string()),
            send(&shadow, &standby, &e, head, body).await,
        ),
    };
    let live = timeout_at(deadline, async {
        match answer.await {
            Ok(rx) => rx.await.ok(),
            Err(_) => None,
        }
    })
    .await;
    let live = match live {
        Ok(Some(Ok(copied))) => copied,
        Ok(Some(Err(Cut::TooLarge))) => return shadow.skip(ShadowSkip::TooLarge),
        Ok(None) | Err(_) => return shadow.skip(ShadowSkip::Incomplete),
    };
    let live_status = live.status.unwrap_or(StatusCode::OK);
    let live_body = live.body;
    let disagreement =
        |result: &'static str, difference: String, shadow: Option<Answer>| Disagreement {
            at_unix_ms: now_unix_ms(),
            result,
            request: described.clone(),
            x_request_id: request_id.clone(),
            endpoint: endpoint.clone(),
            difference,
            live: shown(live_status, &live_body),
            shadow,
        };
    match mirrored {
        Err(why) => shadow.count(ShadowResult::Error, Some(disagreement("error", why, None))),
        Ok(Mirrored::TooLarge) => shadow.skip(ShadowSkip::TooLarge),
        Ok(Mirrored::Answered(status, body)) => {
            let verdict = if live_body.len() + body.len() > COMPARE_INLINE_BYTES {
                // Parsing large answers would hold a runtime thread that
                // live requests need.
                let (config, live, mirrored) =
                    (shadow.config.clone(), live_body.clone(), body.clone());
                tokio::task::spawn_blocking(move || {
                    compare(&config, live_status, &live, status, &mirrored)
                })
                .await
                .unwrap_or_else(|e| Err(format!("comparison failed: {e}")))
            } else {
                compare(&shadow.config, live_status, &live_body, status, &body)
            };
            match verdict {
                Ok(()) => shadow.count(ShadowResult::Match, None),
                Err(difference) => shadow.count(
                    ShadowResult::Mismatch,
                    Some(disagreement(
                        "mismatch",
                        difference,
                        Some(shown(status, &body)),
                    )),
                ),
            }
        }
    }
}

/// What the standby did with a mirrored request.
enum Mirrored {
    Answered(StatusCode, Bytes),
    /// Its answer was larger than `max_body`: not compared.
    TooLarge,
}

/// Sends the mirrored request to `standby` and reads its answer, within
/// the shadow's timeout.
async fn send(
    shadow: &Shadow,
    standby: &Pool,
    endpoint: &Endpoint,
    head: Head,
    body: Bytes,
) -> Result<Mirrored, String> {
    let mut headers = head.headers;
    // The body is whole now: its length is known, hyper frames it.
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(
        X_SWITCHYARD_SHADOW.clone(),
        HeaderValue::from_static("true"),
    );
    let mut request = Request::new(Either::Right(Full::new(body)));
    *request.method_mut() = head.method;
    *request.uri_mut() = endpoint.uri(head.path.as_ref());
    *request.version_mut() = match standby.protocol() {
        Protocol::Http1 => Version::HTTP_11,
        Protocol::H2c | Protocol::H2 => Version::HTTP_2,
    };
    *request.headers_mut() = headers;
    let limit = shadow.config.max_body;
    let exchange = async {
        let response = standby
            .client()
            .request(endpoint, request)
            .await
            .map_err(|e| format!("{}: {}", endpoint.url(), ErrorChain(&e)))?;
        let (parts, body) = response.into_parts();
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(Mirrored::Answered(parts.status, collected.to_bytes())),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Ok(Mirrored::TooLarge),
            Err(e) => Err(format!("{}: reading the answer: {e}", endpoint.url())),
        }
    };
    tokio::time::timeout(shadow.config.timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "{}: no answer within {:?}",
                endpoint.url(),
                shadow.config.timeout
            ))
        })
}

/// `Ok` when the standby's answer agrees with the live one: same status,
/// and bodies equal as JSON within the tolerance, or byte for byte when
/// either is not JSON.
pub fn compare(
    config: &ShadowConfig,
    live_status: StatusCode,
    live: &[u8],
    status: StatusCode,
    body: &[u8],
) -> Result<(), String> {
    if live_status != status {
        return Err(format!(
            "status: live {}, shadow {}",
            live_status.as_u16(),
            status.as_u16()
        ));
    }
    match (
        serde_json::from_slice::<Value>(live),
        serde_json::from_slice::<Value>(body),
    ) {
        (Ok(a), Ok(b)) => config.tolerance.compare(&a, &b).map_err(|d| d.to_string()),
        _ if live == body => Ok(()),
        _ => Err(format!(
            "bodies differ ({} and {} bytes, not both JSON)",
            live.len(),
            body.len()
        )),
    }
}

/// An answer as kept for the status: the body as text, cut short.
fn shown(status: StatusCode, body: &[u8]) -> Answer {
    let cut = body.len().min(SHOW_BYTES);
    let mut text = String::from_utf8_lossy(&body[..cut]).into_owned();
    if cut < body.len() {
        text.push_str("...");
    }
    Answer {
        status: status.as_u16(),
        body: text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::Tolerance;
    use std::time::Duration;

    fn config(relative: f64, ignore: &[&str]) -> ShadowConfig {
        ShadowConfig {
            percent: 100.0,
            max_body: 1024,
            max_concurrent: 2,
            timeout: Duration::from_secs(1),
            tolerance: Tolerance {
                relative,
                ignore: ignore.iter().map(|s| s.to_string()).collect(),
            },
        }
    }

    const OK: StatusCode = StatusCode::OK;

    #[test]
    fn answers_agree_on_status_and_json_within_the_tolerance() {
        let c = config(0.01, &["/id"]);
        let live = br#"{"id": "a", "outputs": [{"data": [0.5]}]}"#;
        let close = br#"{"id": "b", "outputs": [{"data": [0.502]}]}"#;
        let far = br#"{"id": "b", "outputs": [{"data": [0.6]}]}"#;
        assert_eq!(compare(&c, OK, live, OK, close), Ok(()));
        let d = compare(&c, OK, live, OK, far).unwrap_err();
        assert!(d.starts_with("at /outputs/0/data/0"), "{d}");
        let d = compare(&c, OK, live, StatusCode::INTERNAL_SERVER_ERROR, live).unwrap_err();
        assert_eq!(d, "status: live 200, shadow 500");
    }

    #[test]
    fn bodies_that_are_not_json_are_compared_byte_for_byte() {
        let c = config(0.5, &[]);
        assert_eq!(compare(&c, OK, b"plain", OK, b"plain"), Ok(()));
        assert!(compare(&c, OK, b"plain", OK, b"plain!").is_err());
        assert!(compare(&c, OK, b"{}", OK, b"plain").is_err());
    }

    #[test]
    fn shown_bodies_are_cut_short() {
        let long = vec![b'x'; SHOW_BYTES + 10];
        let a = shown(OK, &long);
        assert_eq!(a.body.len(), SHOW_BYTES + 3);
        assert!(a.body.ends_with("..."));
        assert_eq!(shown(OK, b"{}").body, "{}");
    }

    #[tokio::test]
    async fn sampling_honours_percent_and_the_concurrency_bound() {
        let metrics = crate::metrics::Metrics::new();
        let shadow = Arc::new(Shadow::new(config(0.0, &[]), metrics.shadow("iris")));
        // max_body 1024: a declared larger body is not mirrored.
        assert!(shadow.sample(Some(2048)).is_none());
        let a = shadow.sample(Some(10)).expect("100% samples");
        let _b = shadow.sample(None).expect("a second permit");
        assert!(shadow.sample(None).is_none(), "max_concurrent is 2");
        drop(a);
        assert!(shadow.sample(None).is_some());
        let status = shadow.status();
        assert_eq!(status["skipped"]["too_large"], 1);
        assert_eq!(status["skipped"]["busy"], 1);
        assert_eq!(status["agreement"], Value::Null);

        let mut never = config(0.0, &[]);
        never.percent = f64::MIN_POSITIVE;
        let never = Arc::new(Shadow::new(never, metrics.shadow("never")));
        assert!((0..1000).all(|_| never.sample(None).is_none()));
    }
}
