//! The admin listener: status, switches, validation, metrics, liveness and
//! readiness, as a JSON API on its own port. Errors become `{"error": ...}` responses in
//! one place, [`AdminError::into_response`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::config::Sticky;
use crate::events::Events;
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolName, UnknownPool};
use crate::reload::{ReloadError, Reloader};
use crate::server;
use crate::switch::{Model, ModelState, SwitchError, SwitchOp, Switchboard};
use crate::tls::ServerTls;
use crate::validate::ValidateError;
use crate::ErrorChain;

mod auth;
mod events;
mod rollout;
mod validate;

use validate::Validated;

pub use auth::{Token, TokenError, TOKEN_ENV};

/// A whole JSON body, or the event stream of `GET /events?follow=true`.
pub type AdminBody = UnsyncBoxBody<Bytes, Infallible>;
type AdminResponse = Response<AdminBody>;

/// Why an admin call was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("missing or wrong admin token; send Authorization: Bearer <token>")]
    Unauthorized,
    #[error("no admin route {0}; see the admin API in the README")]
    NotFound(String),
    #[error("method {method} is not allowed on {path}; use {allow}")]
    MethodNotAllowed {
        method: Method,
        path: String,
        allow: &'static str,
    },
    #[error(transparent)]
    BadPool(#[from] UnknownPool),
    #[error("{0}")]
    BadQuery(String),
    #[error(transparent)]
    Switch(#[from] SwitchError),
    #[error(transparent)]
    Validate(#[from] ValidateError),
    #[error("cannot encode metrics")]
    Metrics(#[source] prometheus::Error),
    #[error(transparent)]
    Reload(#[from] ReloadError),
    #[error("switchyard is shutting down")]
    ShuttingDown,
    #[error("cross-origin POST refused: a web page from {origin} may not change switchyard; call the admin API from a script, the CLI or the dashboard it serves")]
    CrossOrigin { origin: String },
}

impl AdminError {
    fn status(&self) -> StatusCode {
        match self {
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::BadPool(_) | AdminError::BadQuery(_) => StatusCode::BAD_REQUEST,
            AdminError::Switch(e) => match e {
                SwitchError::UnknownModel(_) => StatusCode::NOT_FOUND,
                SwitchError::Unexpected { .. }
                | SwitchError::NoHistory { .. }
                | SwitchError::Superseded { .. }
                | SwitchError::Replaced { .. }
                | SwitchError::Unhealthy { .. }
                | SwitchError::ValidationFailed { .. }
                | SwitchError::NoRollout { .. }
                | SwitchError::RolloutLive { .. }
                | SwitchError::NoRolloutConfig { .. }
                | SwitchError::Conflict { .. } => StatusCode::CONFLICT,
                SwitchError::Persist { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                // Traffic is served on; the caller may try again later.
                SwitchError::StoreUnavailable { .. } | SwitchError::StoreUncertain { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            },
            // Nothing to check, or no endpoint to check: the model's state
            // refuses the call, as an unhealthy target refuses a switch.
            AdminError::Validate(
                ValidateError::NoChecks { .. } | ValidateError::NoHealthyEndpoint { .. },
            ) => StatusCode::CONFLICT,
            AdminError::Metrics(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AdminError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::CrossOrigin { .. } => StatusCode::FORBIDDEN,
            AdminError::Reload(e) => match e {
                ReloadError::Invalid(_) => StatusCode::BAD_REQUEST,
                ReloadError::RestartNeeded(_)
                | ReloadError::RolloutLive { .. }
                | ReloadError::NotProbed { .. }
                | ReloadError::Unhealthy { .. } => StatusCode::CONFLICT,
                ReloadError::Read { .. } | ReloadError::State(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
        }
    }

    /// The one place an admin error becomes a response. Client mistakes go
    /// back with their message and are logged at debug; internal failures
    /// are logged once here, with their cause chain.
    fn into_response(self) -> AdminResponse {
        let status = self.status();
        let store = matches!(
            self,
            AdminError::Switch(
                SwitchError::StoreUnavailable { .. } | SwitchError::StoreUncertain { .. }
            )
        );
        if store {
            // A warning, not an error: the store's outage was logged once
            // when it began; this is a switch it kept from happening.
            warn!(error = %ErrorChain(&self), "switch refused: state store unavailable");
        } else if status.is_server_error() {
            error!(error = %ErrorChain(&self), "admin call failed");
        } else {
            debug!(error = %self, status = status.as_u16(), "admin call refused");
        }
        let mut body = json!({ "error": ErrorChain(&self).to_string() });
        if let AdminError::Reload(ReloadError::Invalid(errors)) = &self {
            // Each as `switchyard check` prints it: FILE:LINE:COL: message.
            body["errors"] = errors.iter().map(ToString::to_string).collect();
        }
        match &self {
            // The health guard's reason, machine-readable: which endpoints,
            // in what state.
            AdminError::Switch(SwitchError::Unhealthy {
                pool, endpoints, ..
            })
            | AdminError::Validate(ValidateError::NoHealthyEndpoint {
                pool, endpoints, ..
            }) => {
                body["pool"] = json!(pool);
                body["endpoints"] = endpoints
                    .iter()
                    .map(|(url, state)| json!({ "url": url, "state": state }))
                    .collect();
            }
            // Every check's result: what was expected, what came back.
            AdminError::Switch(SwitchError::ValidationFailed { report, .. }) => {
                body["validation"] = json!(report);
            }
            // The state that won, which this instance now serves.
            AdminError::Switch(SwitchError::Conflict {
                active,
                state,
                revision,
                ..
            }) => {
                body["active"] = json!(active);
                body["standby"] = json!(active.other());
                body["last_switch"] = json!(state.last_switch);
                body["revision"] = json!(revision);
            }
            _ => {}
        }
        let mut response = json(status, &body);
        match self {
            AdminError::MethodNotAllowed { allow, .. } => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            AdminError::Unauthorized => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"switchyard\""),
                );
            }
            _ => {}
        }
        response
    }
}

/// The longest `wait_drained` an admin call may ask for.
const MAX_WAIT_DRAINED: Duration = Duration::from_secs(3600);

/// Runs a writer (a switch, a reload) in its own task and waits for it.
/// Once begun it runs to its end even if the caller goes away: dropped
/// between persisting and storing, a switch would leave the state file
/// ahead of the traffic, and a restart would move the traffic.
async fn to_completion<T: Send + 'static>(
    writer: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, AdminError> {
    match tokio::spawn(writer).await {
        Ok(done) => Ok(done),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(AdminError::ShuttingDown),
    }
}

/// The admin API's shared state.
pub struct Admin {
    switchboard: Arc<Switchboard>,
    metrics: Metrics,
    /// `None`: no token configured (allowed on loopback listeners only).
    token: Option<Token>,
    metrics_require_token: bool,
    reloader: Arc<Reloader>,
}

// === impl Admin ===

impl Admin {
    pub fn new(
        switchboard: Arc<Switchboard>,
        metrics: Metrics,
        token: Option<Token>,
        metrics_require_token: bool,
        reloader: Arc<Reloader>,
    ) -> Admin {
        Admin {
            switchboard,
            metrics,
            token,
            metrics_require_token,
            reloader,
        }
    }

    /// Serves the admin listener until `token` is cancelled.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<Arc<ServerTls>>,
        token: CancellationToken,
        drain: Duration,
    ) {
        // Event streams end when the listener stops, so they do not hold
        // the drain open.
        let closing = token.clone();
        let gauges = self.metrics.client_connections("admin");
        let make = move |conn: &server::Accepted| {
            let peer = conn.peer;
            let admin = Arc::clone(&self);
            let closing = closing.clone();
            hyper::service::service_fn(move |req| {
                let admin = Arc::clone(&admin);
                let closing = closing.clone();
                Box::pin(async move { Ok::<_, Infallible>(admin.handle(peer, req, closing).await) })
            })
        };
        let listening = server::Listening {
            name: "admin",
            tls,
            token,
            drain,
            limits: server::Limits::default(),
            gauges,
        };
        server::serve_with(listener, make, listening).await;
    }

    /// Answers one admin request; an event stream it starts ends when
    /// `closing` is cancelled.
    pub async fn handle(
        &self,
        peer: SocketAddr,
        req: Request<server::RequestBody>,
        closing: CancellationToken,
    ) -> AdminResponse {
        match self.route(peer, &req, closing).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        }
    }

    /// [`Admin::handle`] for a request with any body type, no socket needed:
    /// the entry point of the admin fuzz target (`fuzz/`). Not a stable API.
    /// Event streams send what the log holds, then end.
    #[doc(hidden)]
    pub async fn handle_request<B>(&self, peer: SocketAddr, req: Request<B>) -> AdminResponse {
        let closed = CancellationToken::new();
        closed.cancel();
        match self.route(peer, &req, closed).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        }
    }

    /// The event log the admin API serves.
    pub fn events(&self) -> &Events {
        self.switchboard.events()
    }

    async fn route<B>(
        &self,
        peer: SocketAddr,
        req: &Request<B>,
        closing: CancellationToken,
    ) -> Result<AdminResponse, AdminError> {
        let path = req.uri().path();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = req.method();
        let query = Query::parse(req.uri().query());
        let actor = peer.to_string();

        // Authenticate before routing: without the token, no route, not even
        // a 404 or 405, says what exists.
        let open = match segments.as_slice() {
            // The dashboard's page holds no data: its calls carry the token.
            [""] | ["healthz"] | ["readyz"] => true,
            ["metrics"] => !self.metrics_require_token,
            _ => false,
        };
        if let (false, Some(token)) = (open, &self.token) {
            if !token.admits(req.headers().get(header::AUTHORIZATION)) {
                return Err(AdminError::Unauthorized);
            }
        }

        // A browser lets any page send a simple POST anywhere, the admin
        // listener on loopback included: a POST from another origin is
        // refused, token or not. Scripts and the CLI send no Origin.
        if method == Method::POST {
            if let Some(origin) = foreign_origin(req) {
                return Err(AdminError::CrossOrigin { origin });
            }
        }

        // `allow` is the Allow header's value: "GET, HEAD" or "POST".
        let allow = |allow: &'static str| -> Result<(), AdminError> {
            let ok = match allow {
                "POST" => method == Method::POST,
                _ => method == Method::GET || method == Method::HEAD,
            };
            if ok {
                Ok(())
            } else {
                Err(AdminError::MethodNotAllowed {
                    method: method.clone(),
                    path: path.to_string(),
                    allow,
                })
            }
        };

        match segments.as_slice() {
            [""] => {
                allow("GET, HEAD")?;
                query.only(&[])?;
                Ok(dashboard())
            }
            ["healthz"] => {
                allow("GET, HEAD")?;
                query.only(&[])?;
                Ok(json(StatusCode::OK, &json!({ "status": "ok" })))
            }
            ["readyz"] => {
                allow("GET, HEAD")?;
                query.only(&[])?;
                Ok(self.readiness())
            }
            ["metrics"] => {
                allow("GET, HEAD")?;
                query.only(&[])?;
                let text = self.metrics.encode().map_err(AdminError::Metrics)?;
                let mut response = Response::new(Full::new(Bytes::from(text)).boxed_unsync());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                Ok(response)
            }
            ["events"] => {
                allow("GET, HEAD")?;
                query.only(&["since", "limit", "follow"])?;
                let since = match query.number("since")? {
                    Some(since) => Some(since),
                    None => events::last_event_id(req.headers())?,
                };
                let limit = query
                    .number("limit")?
                    .map_or(crate::events::CAPACITY, |l| l as usize);
                if query.flag("follow")? {
                    let head = method == Method::HEAD;
                    Ok(events::follow(self.events().clone(), since, head, closing))
                } else {
                    Ok(json(
                        StatusCode::OK,
                        &events::list(self.events(), since.unwrap_or(0), limit),
                    ))
                }
            }
            ["models"] => {
                allow("GET, HEAD")?;
                query.only(&[])?;
                let mut models = Vec::new();
                for model in self.switchboard.models().values() {
                    let state = self.switchboard.state(model.name()).await;
                    models.push(model_summary(model, state.as_ref()));
                }
                let store = self.switchboard.store_status();
                Ok(json(
                    StatusCode::OK,
                    &json!({ "models": models, "state_store": store }),
                ))
            }
            ["models", name] => {
                allow("GET, HEAD")?;
                query.only(&[])?;
                let model = self.model(name)?;
                let state = self.switchboard.state(name).await;
                Ok(json(StatusCode::OK, &model_detail(&model, state.as_ref())))
            }
            ["models", name, "flip"] => {
                allow("POST")?;
                query.only(&["expect", "force", "wait_drained", "validate"])?;
                let expect = query
                    .get("expect")
                    .map(str::parse::<PoolName>)
                    .transpose()?;
                let force = query.flag("force")?;
                let wait = query.duration("wait_drained")?;
                let validate = query.opt_flag("validate")?;
                let op = SwitchOp::Flip { expect };
                let (op, report) = self.validated(name, op, validate).await?;
                self.switch(name, op, force, wait, &actor, report).await
            }
            ["models", name, "activate", pool] => {
                allow("POST")?;
                query.only(&["force", "wait_drained", "validate"])?;
                // An unknown model is 404 whatever the pool segment says.
                self.model(name)?;
                let pool: PoolName = pool.parse()?;
                let force = query.flag("force")?;
                let wait = query.duration("wait_drained")?;
                let validate = query.opt_flag("validate")?;
                let op = SwitchOp::Activate(pool);
                let (op, report) = self.validated(name, op, validate).await?;
                self.switch(name, op, force, wait, &actor, report).await
            }
            ["models", name, "weight"] => {
                allow("POST")?;
                self.weight(name, &query, &actor).await
            }
            ["models", name, "rollout"] => {
                query.only(&[])?;
                if method == Method::POST {
                    self.start_rollout(name, &actor).await
                } else if method == Method::GET || method == Method::HEAD {
                    self.rollout_status(name).await
                } else {
                    Err(AdminError::MethodNotAllowed {
                        method: method.clone(),
                        path: path.to_string(),
                        allow: "GET, HEAD, POST",
                    })
                }
            }
            ["models", name, "rollout", call] => {
                allow("POST")?;
                query.only(&[])?;
                let call = match *call {
                    "pause" => rollout::RolloutCall::Pause,
                    "resume" => rollout::RolloutCall::Resume,
                    "abort" => rollout::RolloutCall::Abort,
                    _ => return Err(AdminError::NotFound(path.to_string())),
                };
                self.rollout_call(name, call, &actor).await
            }
            ["models", name, "validate"] => {
                allow("POST")?;
                query.only(&["pool"])?;
                self.validate(name, query.get("pool")).await
            }
            ["reload"] => {
                allow("POST")?;
                query.only(&[])?;
                let reloader = Arc::clone(&self.reloader);
                let outcome = to_completion(async move {
                    reloader.reload_certificates().await;
                    reloader.reload(&actor).await
                })
                .await??;
                let mut body = json!(outcome);
                body["reloaded"] = json!(true);
                Ok(json(StatusCode::OK, &body))
            }
            ["models", name, "rollback"] => {
                allow("POST")?;
                query.only(&["force", "wait_drained"])?;
                let force = query.flag("force")?;
                let wait = query.duration("wait_drained")?;
                self.switch(name, SwitchOp::Rollback, force, wait, &actor, None)
                    .await
            }
            _ => Err(AdminError::NotFound(path.to_string())),
        }
    }

    fn model(&self, name: &str) -> Result<Arc<Model>, AdminError> {
        self.switchboard
            .model(name)
            .ok_or_else(|| SwitchError::UnknownModel(name.to_string()).into())
    }

    async fn switch(
        &self,
        name: &str,
        op: SwitchOp,
        force: bool,
        wait_drained: Option<Duration>,
        actor: &str,
        validation: Option<Validated>,
    ) -> Result<AdminResponse, AdminError> {
        let switchboard = Arc::clone(&self.switchboard);
        let (model_name, actor) = (name.to_string(), actor.to_string());
        let still = validation.as_ref().map(Validated::still);
        let outcome = to_completion(async move {
            match still {
                Some(still) => {
                    switchboard
                        .switch_if(&model_name, op, force, &actor, still)
                        .await
                }
                None => switchboard.switch(&model_name, op, force, &actor).await,
            }
        })
        .await??;
        let validation = validation.map(|v| v.report);
        let mut body = json!({
            "model": outcome.model,
            "active": outcome.active,
            "standby": outcome.active.other(),
            "previous": outcome.from,
            "switched": outcome.switched,
        });
        if let Some(report) = validation {
            body["validation"] = json!(report);
        }
        if let Some(wait) = wait_drained {
            // The pool traffic left (or, after a no-op, the standby): drained
            // once nothing is in flight on it.
            let standby = outcome.active.other();
            let model = self.model(name)?;
            let pool = Arc::clone(model.pool(standby));
            let started = tokio::time::Instant::now();
            let drained = tokio::time::timeout(wait, pool.wait_drained())
                .await
                .is_ok();
            body["drained"] = json!(drained);
            body["waited_ms"] = json!(started.elapsed().as_millis() as u64);
            if !drained {
                let in_flight = pool.in_flight();
                body["in_flight"] = json!(in_flight);
                body["error"] = json!(format!(
                    "switched, but pool {standby} of model {name:?} still has {in_flight} request(s) in flight after {wait:?}"
                ));
                return Ok(json(StatusCode::GATEWAY_TIMEOUT, &body));
            }
        }
        Ok(json(StatusCode::OK, &body))
    }

    /// Ready when every pool has had its first probe round and every
    /// model's active pool has a healthy endpoint.
    fn readiness(&self) -> AdminResponse {
        let all = self.switchboard.models();
        let probed = all
            .values()
            .all(|m| PoolName::ALL.iter().all(|p| m.pool(*p).is_probed()));
        let mut ready = probed;
        let models: Vec<Value> = all
            .values()
            .map(|m| {
                let pool = m.active();
                let healthy = pool.healthy_count();
                let model_ready = probed && healthy > 0;
                ready &= model_ready;
                json!({
                    "name": m.name(),
                    "active": pool.name(),
                    "ready": model_ready,
                    "healthy_endpoints": healthy,
                    "endpoints": pool.endpoints().len(),
                })
            })
            .collect();
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json(
            status,
            &json!({ "ready": ready, "probed": probed, "models": models }),
        )
    }
}

fn model_summary(model: &Model, state: Option<&ModelState>) -> Value {
    let active = model.active_name();
    json!({
        "name": model.name(),
        "active": active,
        "standby": active.other(),
        "path_prefix": model.path_prefix(),
        "host": model.host(),
        "in_flight": model.pool(PoolName::Blue).in_flight() + model.pool(PoolName::Green).in_flight(),
        "last_switch": state.and_then(|s| s.last_switch.as_ref()),
        "split": rollout::split_json(model.split()),
        "rollout": state.and_then(|s| s.rollout.as_ref()).map(|r| json!({
            "state": r.phase,
            "step": r.step,
            "steps": r.steps.len(),
        })),
    })
}

/// The summary, plus settings, both pools in full, and the history.
fn model_detail(model: &Model, state: Option<&ModelState>) -> Value {
    let mut detail = model_summary(model, state);
    let active = model.active_name();
    let pools: serde_json::Map<String, Value> = PoolName::ALL
        .iter()
        .map(|p| (p.to_string(), pool_detail(model.pool(*p), *p == active)))
        .collect();
    detail["request_timeout_ms"] = json!(model.request_timeout().as_millis() as u64);
    detail["failover"] = json!(model.failover());
    detail["pools"] = Value::Object(pools);
    detail["shadow"] = model.shadow().map_or(Value::Null, |s| s.status());
    detail["history"] = json!(state.map(|s| &s.history));
    detail["sticky"] = match model.sticky() {
        None => Value::Null,
        Some(Sticky::Header(name)) => json!({ "header": name.as_str() }),
        Some(Sticky::Cookie(name)) => json!({ "cookie": name }),
    };
    // The rollout running, or the last one, with its verdicts.
    detail["rollout"] = crate::rollout::status(model, state, crate::events::now_unix_ms());
    // The latest watch, while it runs and after it ended; `null` for a
    // model without `[models.watch]` or before its first watched switch.
    detail["watch"] = json!(model.watch_report().as_deref());
    detail["last_auto_rollback"] =
        json!(state
            .and_then(|s| s.last_auto_rollback.as_ref())
            .map(|r| json!({
                "at_unix_ms": r.at_unix_ms,
                "from": r.from,
                "to": r.to,
                "reason": r.note,
            })));
    detail
}

fn pool_detail(pool: &Pool, active: bool) -> Value {
    let endpoints: Vec<Value> = pool
        .endpoints()
        .iter()
        .map(|e| {
            let report = e.report();
            json!({
                "url": e.url(),
                "discovered_from": e.source(),
                "state": e.state(),
                "in_flight": e.in_flight(),
                "served": e.served(),
                "open_connections": e.open_connections(),
                "consecutive_request_failures": e.consecutive_request_failures(),
                "consecutive_probe_failures": report.as_ref().map_or(0, |r| r.consecutive_failures),
                "last_probe": report.as_deref(),
                "ejected_until_unix_ms": report.as_ref().and_then(|r| r.ejected_until_unix_ms),
            })
        })
        .collect();
    json!({
        "active": active,
        "protocol": pool.protocol(),
        "discover": if pool.discovery().is_some() { "dns" } else { "static" },
        "healthy_endpoints": pool.healthy_count(),
        "in_flight": pool.in_flight(),
        // The standby with nothing in flight: safe to retire.
        "drained": !active && pool.in_flight() == 0,
        "served": pool.served(),
        "endpoints": endpoints,
    })
}

/// The origin of a browser request from another origin than the admin
/// listener's own, if it is one: `Sec-Fetch-Site` says so, or `Origin`
/// names another host and port than `Host`.
fn foreign_origin<B>(req: &Request<B>) -> Option<String> {
    let headers = req.headers();
    let text = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let origin = text("origin");
    let site = text("sec-fetch-site");
    if site
        .as_deref()
        .is_some_and(|s| s != "same-origin" && s != "none")
    {
        return Some(origin.unwrap_or_else(|| format!("a {} site", site.unwrap_or_default())));
    }
    let origin = origin?;
    let authority = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    // HTTP/2 carries the host in the URI's authority.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    match (authority, host) {
        (Some(a), Some(h)) if a.eq_ignore_ascii_case(h) => None,
        _ => Some(origin),
    }
}

/// The dashboard: one page built into the binary, no external asset. Its
/// script polls the API above; the policy lets it reach nothing else, and
/// no other site may frame it (its buttons flip models).
fn dashboard() -> AdminResponse {
    const PAGE: &str = include_str!("admin/dashboard.html");
    // Only the page's own script may run: its hash, not 'unsafe-inline', so
    // markup injected into the page could not run a script of its own.
    static POLICY: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();
    let policy = POLICY.get_or_init(|| {
        let script = PAGE
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map_or("", |(script, _)| script);
        let digest = ring::digest::digest(&ring::digest::SHA256, script.as_bytes());
        let hash = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digest);
        let policy = format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        );
        HeaderValue::from_str(&policy).unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
    });
    let mut response = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CONTENT_SECURITY_POLICY, policy.clone());
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn json(status: StatusCode, value: &Value) -> AdminResponse {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A parsed query string. Parameters are plain ASCII words (pool names,
/// booleans), so no percent-decoding is needed; anything else is refused by
/// the value parsers.
struct Query<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Query<'a> {
    fn parse(query: Option<&'a str>) -> Query<'a> {
        let pairs = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .collect();
        Query { pairs }
    }

    /// Refuses parameters other than `known`, so a typo in a pipeline fails
    /// loudly instead of being ignored.
    fn only(&self, known: &[&str]) -> Result<(), AdminError> {
        match self.pairs.iter().find(|(k, _)| !known.contains(k)) {
            None => Ok(()),
            Some((k, _)) if known.is_empty() => Err(AdminError::BadQuery(format!(
                "unknown query parameter {k:?}; this call takes none"
            ))),
            Some((k, _)) => Err(AdminError::BadQuery(format!(
                "unknown query parameter {k:?}; expected one of: {}",
                known.join(", ")
            ))),
        }
    }

    /// A boolean parameter: absent is false; `true` or `false` otherwise.
    fn flag(&self, key: &str) -> Result<bool, AdminError> {
        match self.get(key) {
            None | Some("false") => Ok(false),
            Some("true") | Some("") => Ok(true),
            Some(other) => Err(AdminError::BadQuery(format!(
                "query parameter {key:?} is {other:?}; expected true or false"
            ))),
        }
    }

    /// A non-negative integer parameter, if present.
    fn number(&self, key: &str) -> Result<Option<u64>, AdminError> {
        self.get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    AdminError::BadQuery(format!(
                        "query parameter {key:?} is {v:?}; expected a non-negative integer"
                    ))
                })
            })
            .transpose()
    }

    /// A boolean parameter that may be absent: `None`, or as [`Query::flag`].
    fn opt_flag(&self, key: &str) -> Result<Option<bool>, AdminError> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.flag(key).map(Some),
        }
    }

    /// A duration parameter such as `30s`, if present.
    fn duration(&self, key: &str) -> Result<Option<Duration>, AdminError> {
        self.get(key)
            .map(|v| match crate::config::parse_duration(v) {
                Ok(d) if d <= MAX_WAIT_DRAINED => Ok(d),
                Ok(_) => Err(AdminError::BadQuery(format!(
                    "query parameter {key:?} is {v:?}; at most {MAX_WAIT_DRAINED:?}"
                ))),
                Err(why) => Err(AdminError::BadQuery(format!(
                    "query parameter {key:?} is {v:?}: {why}"
                ))),
            })
            .transpose()
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn query_parameters_are_checked() {
        let q = Query::parse(Some("expect=blue"));
        assert!(q.only(&["expect"]).is_ok());
        assert_eq!(q.get("expect"), Some("blue"));
        assert!(q.only(&[]).is_err());
        let q = Query::parse(Some("expcet=blue"));
        assert!(q.only(&["expect"]).is_err());
        assert!(Query::parse(None).only(&[]).is_ok());
    }

    proptest! {
        /// `?expect=` parses exactly the two pool names and nothing else.
        #[test]
        fn expect_accepts_only_pool_names(value in "[a-z]{0,8}") {
            let raw = format!("expect={value}");
            let q = Query::parse(Some(&raw));
            let parsed = q.get("expect").unwrap().parse::<PoolName>();
            prop_assert_eq!(parsed.is_ok(), value == "blue" || value == "green");
        }
    }
}
