//! Validation before a switch: the model's `[[models.validate]]` checks sent
//! to a pool, each answer judged (`judge.rs`), and the per-check report.
//! Control-side only: it runs for an admin call, never on the request path,
//! and never switches anything itself (`admin.rs` decides what a failure
//! refuses).
//!
//! How a check reaches a pool: through the pool's own upstream client, so
//! with its connections, protocol and upstream TLS, to the same URL traffic
//! would get (the endpoint's scheme and authority, the check's path). It goes
//! to *every* healthy endpoint of the pool, one after another: a single bad
//! replica must block the switch, and balancing would hide it behind the
//! good ones. Checks run in file order, one request at a time, so a model
//! server is never hit by a burst and the report's order is stable; a whole
//! validation takes at most the sum of the checks' timeouts per endpoint.
//! Validation requests are not traffic: they do not count as in flight or
//! served, and their failures eject nothing.

mod judge;

use std::time::Duration;

use http::{header, HeaderValue, Request, Version};
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use serde::Serialize;
use tokio::time::Instant;
use tracing::info;

pub use judge::{judge, Answer, Fetched, NoAnswer};

use crate::config::CheckConfig;
use crate::health::EndpointState;
use std::sync::Arc;

use crate::pool::{Endpoint, Pool, PoolName, Protocol, UpstreamBody};
use crate::proxy::headers::{new_request_id, X_REQUEST_ID};
use crate::switch::{describe_endpoints, Model};
use crate::ErrorChain;

/// The most of an answer's body a check reads: enough for any sane
/// validation answer; a larger one fails the check rather than being
/// buffered.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// `user-agent` of validation requests (unless a check sets its own), so a
/// model server's logs tell them from traffic.
static USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("switchyard-validate/", env!("CARGO_PKG_VERSION")));

/// The outcome of validating one pool. `Serialize`: it is the admin
/// answer's body, and what a record of the validation keeps.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    /// The pool validated.
    pub pool: PoolName,
    /// The active pool when the validation ran: what `same_as_active`
    /// compared with.
    pub active: PoolName,
    /// Whether every check passed on every endpoint.
    pub passed: bool,
    pub duration_ms: u64,
    /// One per check and endpoint, in file order.
    pub checks: Vec<CheckReport>,
}

/// One check on one endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub name: String,
    pub endpoint: String,
    pub passed: bool,
    /// The answer's status; `null` when none came.
    pub status: Option<u16>,
    pub duration_ms: u64,
    /// What was expected and what came back; empty when passed.
    pub failures: Vec<String>,
    /// What was compared with, or why a comparison did not apply.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Report {
    /// How many check results failed.
    pub fn failed(&self) -> usize {
        self.checks.iter().filter(|c| !c.passed).count()
    }
}

/// Why a validation could not run at all (as opposed to running and failing).
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// Refused rather than passed: a validation with nothing to check must
    /// never read as a pass.
    #[error("model {model:?} has no [[models.validate]] checks; add some to its config and reload, or switch without ?validate=true")]
    NoChecks { model: String },
    #[error("model {model:?}: pool {pool} has no healthy endpoint to validate ({}); nothing was checked", describe_endpoints(.endpoints))]
    NoHealthyEndpoint {
        model: String,
        pool: PoolName,
        /// Each endpoint's URL and state.
        endpoints: Vec<(String, EndpointState)>,
    },
}

/// Runs `model`'s checks against its pool `pool`; see the module docs.
pub async fn run(model: &Model, pool: PoolName) -> Result<Report, ValidateError> {
    let checks = model.checks();
    if checks.is_empty() {
        return Err(ValidateError::NoChecks {
            model: model.name().to_string(),
        });
    }
    let target = model.pool(pool);
    let endpoints = healthy(target);
    if endpoints.is_empty() {
        return Err(ValidateError::NoHealthyEndpoint {
            model: model.name().to_string(),
            pool,
            endpoints: target
                .endpoints()
                .iter()
                .map(|e| (e.url().to_string(), e.state()))
                .collect(),
        });
    }
    let active = model.active_name();
    let started = Instant::now();
    let mut results = Vec::with_capacity(checks.len() * endpoints.len());
    for check in checks {
        let reference = if !check.same_as_active {
            None
        } else if active == pool {
            Some(Err(format!(
                "same_as_active not applied: pool {pool} is the active pool"
            )))
        } else {
            Some(Ok(reference(model.pool(active), check, model.host()).await))
        };
        for endpoint in &endpoints {
            let began = Instant::now();
            let fetched = fetch(target, endpoint, check, model.host()).await;
            let duration = began.elapsed();
            let mut notes = Vec::new();
            let compared = match &reference {
                Some(Ok((url, answer))) => {
                    if let Some(url) = url {
                        notes.push(format!("compared with {url} of the active pool {active}"));
                    }
                    Some((active, answer))
                }
                Some(Err(note)) => {
                    notes.push(note.clone());
                    None
                }
                None => None,
            };
            let (status, failures) = match &fetched {
                Ok(answer) => (
                    Some(answer.status.as_u16()),
                    judge(check, pool, answer, compared),
                ),
                Err(e) => (e.status.map(|s| s.as_u16()), vec![e.reason.clone()]),
            };
            results.push(CheckReport {
                name: check.name.clone(),
                endpoint: endpoint.url().to_string(),
                passed: failures.is_empty(),
                status,
                duration_ms: millis(duration),
                failures,
                notes,
            });
        }
    }
    let report = Report {
        model: model.name().to_string(),
        pool,
        active,
        passed: results.iter().all(|r| r.passed),
        duration_ms: millis(started.elapsed()),
        checks: results,
    };
    info!(
        model = model.name(),
        pool = %pool,
        passed = report.passed,
        failed = report.failed(),
        checks = report.checks.len(),
        "validated pool"
    );
    Ok(report)
}

/// The active pool's answer to `check`, from its first healthy endpoint,
/// with that endpoint's URL.
async fn reference(
    active: &Pool,
    check: &CheckConfig,
    host: Option<&str>,
) -> (Option<String>, Fetched) {
    match healthy(active).first() {
        Some(endpoint) => (
            Some(endpoint.url().to_string()),
            fetch(active, endpoint, check, host).await,
        ),
        None => (
            None,
            Err(NoAnswer {
                status: None,
                reason: format!("pool {} has no healthy endpoint", active.name()),
            }),
        ),
    }
}

fn healthy(pool: &Pool) -> Vec<Arc<Endpoint>> {
    pool.endpoints()
        .iter()
        .filter(|e| e.state() == EndpointState::Healthy)
        .cloned()
        .collect()
}

/// Sends `check` to `endpoint` of `pool` and reads the answer, all within
/// the check's timeout.
async fn fetch(
    pool: &Pool,
    endpoint: &Endpoint,
    check: &CheckConfig,
    host: Option<&str>,
) -> Fetched {
    let request = build(pool, endpoint, check, host);
    let timeout = check.timeout;
    match tokio::time::timeout(timeout, exchange(pool, endpoint, request)).await {
        Ok(fetched) => fetched,
        Err(_) => Err(NoAnswer {
            status: None,
            reason: format!("no answer within {timeout:?} (the check's timeout)"),
        }),
    }
}

/// The request as traffic to this endpoint would be: the endpoint's URL with
/// the check's path, the pool's HTTP version, and a `host` naming the
/// model's host when it has one (else the endpoint's, as the client sets it).
fn build(
    pool: &Pool,
    endpoint: &Endpoint,
    check: &CheckConfig,
    host: Option<&str>,
) -> Request<UpstreamBody> {
    let mut request = Request::new(Either::Right(Full::new(check.body.clone())));
    *request.method_mut() = check.method.clone();
    *request.uri_mut() = endpoint.uri(Some(&check.path));
    *request.version_mut() = match pool.protocol() {
        Protocol::Http1 => Version::HTTP_11,
        Protocol::H2c | Protocol::H2 => Version::HTTP_2,
    };
    let headers = request.headers_mut();
    *headers = check.headers.clone();
    if !headers.contains_key(header::USER_AGENT) {
        headers.insert(header::USER_AGENT, USER_AGENT.clone());
    }
    if !headers.contains_key(&X_REQUEST_ID) {
        headers.insert(X_REQUEST_ID.clone(), new_request_id());
    }
    let host = host.and_then(|h| HeaderValue::from_str(h).ok());
    if let (false, Some(host)) = (headers.contains_key(header::HOST), host) {
        headers.insert(header::HOST, host);
    }
    request
}

async fn exchange(pool: &Pool, endpoint: &Endpoint, request: Request<UpstreamBody>) -> Fetched {
    let response = pool
        .client()
        .request(endpoint, request)
        .await
        .map_err(|e| NoAnswer {
            status: None,
            reason: if e.is_connect() {
                format!("connect failed: {}", ErrorChain(&e))
            } else {
                format!("request failed: {}", ErrorChain(&e))
            },
        })?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| NoAnswer {
            status: Some(status),
            reason: if e.is::<LengthLimitError>() {
                format!(
                    "status {}, but the answer is larger than {} KiB, the most a check reads",
                    status.as_u16(),
                    MAX_ANSWER_BYTES >> 10
                )
            } else {
                format!(
                    "status {}, but the answer broke off: {}",
                    status.as_u16(),
                    ErrorChain(&*e)
                )
            },
        })?;
    Ok(Answer {
        status,
        body: body.to_bytes(),
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
