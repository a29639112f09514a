//! Why the proxy answered a request itself, and the one place such an error
//! becomes a response: status by side, a JSON body, and a log line only for
//! failures the operator must see.

use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};
use tracing::{debug, warn};

use super::body::ProxyBody;
use super::headers::X_SWITCHYARD_POOL;
use crate::metrics::UpstreamErrorKind;
use crate::pool::{InFlight, Pool};
use crate::switch::Model;
use crate::ErrorChain;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client's mistake: no model's prefix (and host) matches.
    #[error("no model serves {path}")]
    NoRoute { path: String },
    /// The model has `max_in_flight` requests in flight already.
    #[error("model {model:?} has {max} requests in flight, its max_in_flight; retry shortly")]
    Overloaded { model: String, max: usize },
    /// The request body is larger than the model's `max_body_bytes`.
    #[error("request body exceeds model {model:?}'s max_body_bytes of {max}")]
    BodyTooLarge { model: String, max: u64 },
    /// switchyard is a reverse proxy, not a tunnel.
    #[error("CONNECT is not supported; switchyard is a reverse proxy for configured models")]
    Connect,
    /// An HTTP/1.1 absolute-form target for a host other than the `Host`
    /// header's: the shape of an open-proxy request, and a way to make the
    /// two disagree about which model is meant.
    #[error("request target names host {target:?} but Host says {host:?}; switchyard is not an open proxy")]
    ForeignTarget { target: String, host: String },
    /// No endpoint of the pool is in rotation (all unhealthy or ejected).
    #[error("model {model:?}: pool {pool} has no healthy endpoint ({up} of {total} up); see GET /models/{model}")]
    NoHealthyEndpoint {
        model: String,
        pool: String,
        up: usize,
        total: usize,
    },
    /// `x-switchyard-pool` names no pool.
    #[error("x-switchyard-pool is {value:?}; expected \"blue\" or \"green\"")]
    BadPreviewPool { value: String },
    /// The client's request body failed mid-stream (aborted, malformed).
    #[error("{0}")]
    ClientBody(String),
    /// The client was still sending its body when `request_timeout` ran out.
    #[error("the request body was not received within {timeout:?} (request_timeout)")]
    BodyTimeout { timeout: Duration },
    /// The upstream side failed.
    #[error("model {model:?}: pool {pool} endpoint {endpoint} {}", describe(*.kind, *.timeout, .source.as_ref()))]
    Upstream {
        model: String,
        pool: String,
        endpoint: String,
        kind: UpstreamErrorKind,
        timeout: Duration,
        #[source]
        source: Option<crate::pool::UpstreamError>,
    },
}

fn describe(
    kind: UpstreamErrorKind,
    timeout: Duration,
    source: Option<&crate::pool::UpstreamError>,
) -> String {
    if let Some(why) = source.and_then(|e| e.malformed()) {
        return format!("sent a malformed response: {why}");
    }
    match kind {
        UpstreamErrorKind::Connect => "could not be connected to".to_string(),
        UpstreamErrorKind::Timeout => {
            format!("sent no response within {timeout:?} (request_timeout)")
        }
        UpstreamErrorKind::Reset => "closed the connection before answering".to_string(),
    }
}

impl ProxyError {
    pub fn upstream(
        in_flight: &InFlight,
        kind: UpstreamErrorKind,
        timeout: Duration,
        source: Option<crate::pool::UpstreamError>,
    ) -> ProxyError {
        let pool = in_flight.pool();
        ProxyError::Upstream {
            model: pool.model().to_string(),
            pool: pool.name().to_string(),
            endpoint: in_flight.endpoint().url().to_string(),
            kind,
            timeout,
            source,
        }
    }

    pub fn no_healthy_endpoint(pool: &Pool) -> ProxyError {
        ProxyError::NoHealthyEndpoint {
            model: pool.model().to_string(),
            pool: pool.name().to_string(),
            up: pool.endpoints().iter().filter(|e| e.is_serving()).count(),
            total: pool.endpoints().len(),
        }
    }

    pub fn body_too_large(model: &Model) -> ProxyError {
        ProxyError::BodyTooLarge {
            model: model.name().to_string(),
            max: model.max_body_bytes(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::ForeignTarget { .. }
            | ProxyError::ClientBody(_)
            | ProxyError::BadPreviewPool { .. } => StatusCode::BAD_REQUEST,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NoHealthyEndpoint { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Upstream { kind, .. } => match kind {
                UpstreamErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
                UpstreamErrorKind::Connect | UpstreamErrorKind::Reset => StatusCode::BAD_GATEWAY,
            },
        }
    }

    /// The response for this error; `pool` is the `x-switchyard-pool` value
    /// when the request had reached a pool.
    pub fn into_response(self, pool: Option<&HeaderValue>) -> Response<ProxyBody> {
        let status = self.status();
        match &self {
            ProxyError::NoRoute { .. } => debug!(error = %self, "unrouted request"),
            ProxyError::Connect
            | ProxyError::ForeignTarget { .. }
            | ProxyError::Overloaded { .. }
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::ClientBody(_)
            | ProxyError::BadPreviewPool { .. }
            | ProxyError::BodyTimeout { .. } => {
                debug!(error = %self, "refused request")
            }
            // Logged by the prober when the endpoints went down; once per
            // request here would flood the log during an outage.
            ProxyError::NoHealthyEndpoint { .. } => {
                debug!(error = %self, "no endpoint in rotation")
            }
            ProxyError::Upstream { source, .. } => match source {
                Some(cause) => {
                    warn!(error = %self, cause = %ErrorChain(cause), "upstream request failed")
                }
                None => warn!(error = %self, "upstream request failed"),
            },
        }
        let overloaded = matches!(self, ProxyError::Overloaded { .. });
        let mut response = json_response(status, &self.to_string(), pool);
        if overloaded {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A JSON error body `{"error": message}` with `status`.
pub fn json_response(
    status: StatusCode,
    message: &str,
    pool: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = Response::new(ProxyBody::local(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(pool) = pool {
        headers.insert(X_SWITCHYARD_POOL.clone(), pool.clone());
    }
    response
}
