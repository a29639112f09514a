//! The admin API on arbitrary requests: a short sequence of requests with
//! arbitrary method, path, query, headers and body, driven through
//! `Admin::handle_request` (no sockets) against a fresh admin per input, with
//! two models whose endpoints are never probed (so no pool is healthy), a
//! token or none, and the state file on tmpfs. One model has a
//! `[[models.validate]]` check, the other none, so validation (`validate`,
//! `?validate=`) answers 409 for want of a healthy endpoint or of a check,
//! and never sends a request, so never hangs. The same model has a
//! `[models.rollout]`: a weight or a rollout for a pool with no healthy
//! endpoint is 409, a weight of 0 and the rollout's status are 200.
//!
//! Every response must be one of the documented answers: 200 (JSON, the
//! Prometheus text for `GET /metrics`, the event stream, or the dashboard's
//! page for `GET /`), 400, 403 (a POST from another origin), 401, 404, 405, 409 with a JSON
//! `{"error": "..."}` body, or 503 from `/readyz` with its JSON report; never
//! a panic and never a 500 (nothing here can fail to write the state file).

#![no_main]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchyard::admin::{Admin, AdminBody, Token};
use switchyard::events::Events;
use switchyard::health::Checker;
use switchyard::metrics::Metrics;
use switchyard::proxy::Proxy;
use switchyard::reload::Reloader;
use switchyard::store;
use switchyard::switch::{Control, Model, Switchboard};
use switchyard::Config;

const TOKEN: &str = "fuzz-token-0123456789";

/// Everything one input does.
#[derive(Debug, Arbitrary)]
struct Input {
    with_token: bool,
    metrics_require_token: bool,
    /// At most 8 are sent, in order, to the same admin.
    requests: Vec<AdminRequest>,
}

#[derive(Debug, Arbitrary)]
struct AdminRequest {
    method: MethodChoice,
    target: Target,
    auth: Auth,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    peer: ([u8; 4], u16),
}

#[derive(Debug, Arbitrary)]
enum MethodChoice {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Other(String),
}

/// The request target: one of the API's routes (so the fuzzer reaches every
/// handler at once), built from segments the API knows, or anything at all.
#[derive(Debug, Arbitrary)]
enum Target {
    Route {
        route: Route,
        query: RouteQuery,
    },
    Segments {
        segments: Vec<Segment>,
        trailing_slash: bool,
        query: Option<Vec<(Word, Word)>>,
    },
    Raw(String),
}

#[derive(Debug, Arbitrary)]
enum Route {
    Models,
    Model(ModelChoice),
    Flip(ModelChoice),
    Activate(ModelChoice, PoolChoice),
    Rollback(ModelChoice),
    Validate(ModelChoice),
    Weight(ModelChoice),
    Rollout(ModelChoice, Option<Word>),
    Healthz,
    Readyz,
    Metrics,
    Events,
}

#[derive(Debug, Arbitrary)]
enum ModelChoice {
    Iris,
    Chat,
    Other(Word),
}

#[derive(Debug, Arbitrary)]
enum PoolChoice {
    Blue,
    Green,
    Other(Word),
}

/// The query of a known route: its parameters, usually right, sometimes not.
#[derive(Debug, Arbitrary)]
struct RouteQuery {
    expect: Option<PoolChoice>,
    force: Option<Word>,
    validate: Option<Word>,
    pool: Option<PoolChoice>,
    /// A weight: `{pool}={tenths / 10}.{tenths % 10}`, in range or not.
    share: Option<(PoolChoice, u16)>,
    other: Option<(Word, Word)>,
}

#[derive(Debug, Arbitrary)]
enum Segment {
    Known(Word),
    Any(String),
}

#[derive(Debug, Arbitrary)]
enum Word {
    Models,
    Iris,
    Chat,
    Flip,
    Activate,
    Rollback,
    Validate,
    Weight,
    Rollout,
    Pause,
    Resume,
    Abort,
    Pool,
    Blue,
    Green,
    Healthz,
    Readyz,
    Metrics,
    Events,
    Expect,
    Force,
    Follow,
    Since,
    True,
    False,
    Empty,
    Any(String),
}

#[derive(Debug, Arbitrary)]
enum Auth {
    None,
    Right,
    RightLowercaseScheme,
    Wrong,
    Raw(Vec<u8>),
}

fuzz_target!(|input: Input| {
    runtime().block_on(run(input));
});

async fn run(input: Input) {
    let admin = admin(input.with_token, input.metrics_require_token).await;
    for req in input.requests.into_iter().take(8) {
        let Some((request, admitted)) = build(&req) else {
            continue;
        };
        let uri = request.uri().to_string();
        let path = request.uri().path().to_string();
        let method = request.method().clone();
        let peer = SocketAddr::from(req.peer);
        let response = admin.handle_request(peer, request).await;
        check(
            &uri,
            &path,
            &method,
            input.with_token,
            input.metrics_require_token,
            admitted,
            response,
        )
        .await;
    }
}

/// The request, and whether it carries the right token.
fn build(req: &AdminRequest) -> Option<(Request<Full<Bytes>>, bool)> {
    let method = match &req.method {
        MethodChoice::Get => Method::GET,
        MethodChoice::Head => Method::HEAD,
        MethodChoice::Post => Method::POST,
        MethodChoice::Put => Method::PUT,
        MethodChoice::Delete => Method::DELETE,
        MethodChoice::Other(m) => Method::from_bytes(m.as_bytes()).ok()?,
    };
    let target = match &req.target {
        Target::Raw(raw) => raw.clone(),
        Target::Route { route, query } => {
            let mut t = match route {
                Route::Models => "/models".to_string(),
                Route::Model(m) => format!("/models/{}", model(m)),
                Route::Flip(m) => format!("/models/{}/flip", model(m)),
                Route::Activate(m, p) => format!("/models/{}/activate/{}", model(m), pool(p)),
                Route::Rollback(m) => format!("/models/{}/rollback", model(m)),
                Route::Validate(m) => format!("/models/{}/validate", model(m)),
                Route::Weight(m) => format!("/models/{}/weight", model(m)),
                Route::Rollout(m, None) => format!("/models/{}/rollout", model(m)),
                Route::Rollout(m, Some(call)) => {
                    format!("/models/{}/rollout/{}", model(m), word(call))
                }
                Route::Healthz => "/healthz".to_string(),
                Route::Readyz => "/readyz".to_string(),
                Route::Metrics => "/metrics".to_string(),
                Route::Events => "/events".to_string(),
            };
            let mut pairs = Vec::new();
            if let Some(p) = &query.expect {
                pairs.push(format!("expect={}", pool(p)));
            }
            if let Some(f) = &query.force {
                pairs.push(format!("force={}", word(f)));
            }
            if let Some(v) = &query.validate {
                pairs.push(format!("validate={}", word(v)));
            }
            if let Some(p) = &query.pool {
                pairs.push(format!("pool={}", pool(p)));
            }
            if let Some((p, tenths)) = &query.share {
                pairs.push(format!("{}={}.{}", pool(p), tenths / 10, tenths % 10));
            }
            if let Some((k, v)) = &query.other {
                pairs.push(format!("{}={}", word(k), word(v)));
            }
            if !pairs.is_empty() {
                t.push('?');
                t.push_str(&pairs.join("&"));
            }
            t
        }
        Target::Segments {
            segments,
            trailing_slash,
            query,
        } => {
            let mut t = String::new();
            for s in segments.iter().take(6) {
                t.push('/');
                t.push_str(match s {
                    Segment::Known(w) => word(w),
                    Segment::Any(s) => s,
                });
            }
            if *trailing_slash || t.is_empty() {
                t.push('/');
            }
            push_query(&mut t, query.as_deref());
            t
        }
    };
    let mut builder = Request::builder().method(method).uri(target);
    for (name, value) in req.headers.iter().take(8) {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        // The Auth choice alone decides the Authorization header.
        if name != header::AUTHORIZATION {
            builder = builder.header(name, value);
        }
    }
    let authorization = match &req.auth {
        Auth::None => None,
        Auth::Right => Some(format!("Bearer {TOKEN}").into_bytes()),
        Auth::RightLowercaseScheme => Some(format!("bearer {TOKEN}").into_bytes()),
        Auth::Wrong => Some(format!("Bearer {TOKEN}x").into_bytes()),
        Auth::Raw(raw) => Some(raw.clone()),
    };
    let mut admitted = false;
    if let Some(value) = authorization {
        let value = HeaderValue::from_bytes(&value).ok()?;
        let bytes = value.as_bytes();
        admitted = bytes.len() == 7 + TOKEN.len()
            && bytes[..7].eq_ignore_ascii_case(b"bearer ")
            && &bytes[7..] == TOKEN.as_bytes();
        builder = builder.header(header::AUTHORIZATION, value);
    }
    let request = builder
        .body(Full::new(Bytes::from(req.body.clone())))
        .ok()?;
    Some((request, admitted))
}

fn push_query(target: &mut String, query: Option<&[(Word, Word)]>) {
    if let Some(query) = query {
        target.push('?');
        let pairs: Vec<String> = query
            .iter()
            .take(4)
            .map(|(k, v)| format!("{}={}", word(k), word(v)))
            .collect();
        target.push_str(&pairs.join("&"));
    }
}

fn model(m: &ModelChoice) -> &str {
    match m {
        ModelChoice::Iris => "iris",
        ModelChoice::Chat => "chat",
        ModelChoice::Other(w) => word(w),
    }
}

fn pool(p: &PoolChoice) -> &str {
    match p {
        PoolChoice::Blue => "blue",
        PoolChoice::Green => "green",
        PoolChoice::Other(w) => word(w),
    }
}

fn word(w: &Word) -> &str {
    match w {
        Word::Models => "models",
        Word::Iris => "iris",
        Word::Chat => "chat",
        Word::Flip => "flip",
        Word::Activate => "activate",
        Word::Rollback => "rollback",
        Word::Validate => "validate",
        Word::Weight => "weight",
        Word::Rollout => "rollout",
        Word::Pause => "pause",
        Word::Resume => "resume",
        Word::Abort => "abort",
        Word::Pool => "pool",
        Word::Blue => "blue",
        Word::Green => "green",
        Word::Healthz => "healthz",
        Word::Readyz => "readyz",
        Word::Metrics => "metrics",
        Word::Events => "events",
        Word::Expect => "expect",
        Word::Force => "force",
        Word::Follow => "follow",
        Word::Since => "since",
        Word::True => "true",
        Word::False => "false",
        Word::Empty => "",
        Word::Any(s) => s,
    }
}

/// Asserts the response is one the README documents.
async fn check(
    uri: &str,
    path: &str,
    method: &Method,
    with_token: bool,
    metrics_require_token: bool,
    admitted: bool,
    response: Response<AdminBody>,
) {
    let (parts, body) = response.into_parts();
    // Infallible; an event stream from `handle_request` ends after the log.
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let status = parts.status.as_u16();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let context = || {
        format!(
            "{method} {uri} -> {status} {content_type} {}",
            String::from_utf8_lossy(&body)
        )
    };

    if trace() {
        eprintln!("{}", context());
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let open = match segments.as_slice() {
        [""] | ["healthz"] | ["readyz"] => true,
        ["metrics"] => !metrics_require_token,
        _ => false,
    };
    if with_token && !open && !admitted {
        assert_eq!(status, 401, "no token, yet not 401: {}", context());
    }
    if status == 401 {
        assert!(with_token, "401 without a token configured: {}", context());
        assert!(!open, "401 on an open route: {}", context());
        assert!(
            parts.headers.contains_key(header::WWW_AUTHENTICATE),
            "{}",
            context()
        );
    }
    if status == 405 {
        assert!(parts.headers.contains_key(header::ALLOW), "{}", context());
    }

    if status == 200 && content_type.starts_with("text/plain") {
        assert_eq!(segments.as_slice(), ["metrics"], "{}", context());
        std::str::from_utf8(&body).expect("metrics are UTF-8");
        return;
    }
    if status == 200 && content_type.starts_with("text/html") {
        // The dashboard's page, and only at the root.
        assert_eq!(segments.as_slice(), [""], "{}", context());
        return;
    }
    if status == 200 && content_type == "text/event-stream" {
        assert_eq!(segments.as_slice(), ["events"], "{}", context());
        let text = std::str::from_utf8(&body).expect("events are UTF-8");
        // Every message is `id`, `event` and one line of JSON `data`.
        for message in text.split("\n\n").filter(|m| m.starts_with("id: ")) {
            let data = message.lines().find_map(|l| l.strip_prefix("data: "));
            let data = data.unwrap_or_else(|| panic!("no data in {message:?}: {}", context()));
            serde_json::from_str::<Value>(data).expect("event data is JSON");
        }
        return;
    }
    assert_eq!(content_type, "application/json", "{}", context());
    let json: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", context()));
    let object = json
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {}", context()));
    match status {
        200 => {
            // A switch answer: it switched exactly when the pool changed.
            if let Some(switched) = object.get("switched") {
                let changed = object.get("active") != object.get("previous");
                assert_eq!(switched, &Value::Bool(changed), "{}", context());
            }
        }
        503 => {
            assert_eq!(segments.as_slice(), ["readyz"], "{}", context());
            assert_eq!(
                object.get("ready"),
                Some(&Value::Bool(false)),
                "{}",
                context()
            );
        }
        403 => {
            // Only a POST from another origin (Origin, Sec-Fetch-Site).
            assert_eq!(method, Method::POST, "{}", context());
            let message = object.get("error").and_then(Value::as_str);
            assert!(
                message.is_some_and(|m| m.contains("cross-origin POST refused")),
                "{}",
                context()
            );
        }
        400 | 401 | 404 | 405 | 409 => {
            let message = object.get("error").and_then(Value::as_str);
            assert!(
                message.is_some_and(|m| !m.is_empty()),
                "an error without a message: {}",
                context()
            );
        }
        _ => panic!("undocumented status: {}", context()),
    }
}

/// `SWITCHYARD_FUZZ_TRACE=1` prints every request and its response, to see
/// what an input (a crash, or the corpus with `-runs=0`) does.
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("SWITCHYARD_FUZZ_TRACE").is_some())
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// A directory for the state and token files, on tmpfs where there is one
/// (the state file is fsynced on every switch), per process. libFuzzer ends
/// the process with `exit`, so nothing removes it then; instead each process
/// removes those of processes that are gone.
fn scratch() -> &'static PathBuf {
    const PREFIX: &str = "switchyard-fuzz-admin-";
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        // Where there is a /proc to tell which processes are gone.
        let proc_fs = std::path::Path::new("/proc/self").exists();
        let entries = std::fs::read_dir(&base).into_iter().filter(|_| proc_fs);
        for entry in entries.flatten().flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix(PREFIX));
            if pid.is_some_and(|pid| !std::path::Path::new("/proc").join(pid).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = base.join(format!("{PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        std::fs::write(dir.join("admin.token"), TOKEN).expect("token file");
        dir
    })
}

/// A fresh admin for two models, wired as `switchyard::run` wires it.
async fn admin(with_token: bool, metrics_require_token: bool) -> Admin {
    let dir = scratch();
    let token_line = if with_token {
        format!("token_file = {:?}\n", dir.join("admin.token"))
    } else {
        String::new()
    };
    let src = format!(
        r#"[proxy]
listen = "127.0.0.1:8080"

[admin]
listen = "127.0.0.1:9901"
metrics_require_token = {metrics_require_token}
{token_line}
[state]
path = {state:?}

[[models]]
name = "iris"
path_prefix = "/v2/models/iris"
blue.endpoints = ["http://127.0.0.1:1"]
green.endpoints = ["http://127.0.0.1:2", "http://127.0.0.1:3"]

[[models.validate]]
method = "POST"
path = "/v2/models/iris/infer"
body = '{{"inputs": []}}'
same_as_active = true

[models.rollout]
steps = ["5%:1m", "50%:1m", "100%"]
max_5xx_ratio = 0.01

[[models]]
name = "chat"
host = "chat.example"
active = "green"
blue.endpoints = ["http://127.0.0.1:4"]
green.endpoints = ["http://127.0.0.1:5"]
green.protocol = "h2c"
"#,
        state = dir.join("state.json"),
    );
    let config = Config::from_toml(&src, &dir.join("switchyard.toml")).expect("the fuzz config");
    let token: Option<Token> = Token::load(&config.admin).expect("the token file");
    assert_eq!(token.is_some(), with_token);
    let metrics = Metrics::new();
    let mut models = Vec::new();
    let mut configured = Vec::new();
    for m in &config.models {
        models.push(Arc::new(Model::new(
            m,
            m.active,
            &config.proxy.upstream(),
            &metrics,
        )));
        configured.push((m.name.clone(), m.active));
    }
    let proxy = Arc::new(Proxy::new(
        Proxy::routes(&models),
        metrics.unrouted().clone(),
        config.proxy.limits,
    ));
    // Never run: a reload of this unchanged file builds no pool to probe.
    let events = Events::new();
    let (_checker, watch) = Checker::new(&models, events.clone());
    let (_discoverer, discovery) =
        switchyard::discovery::Discoverer::new(&models, metrics.clone(), events.clone());
    let switchboard = Arc::new(
        Switchboard::start(
            models,
            Control::starting(Default::default(), &configured, false),
            store::open(&config.state, &metrics).expect("the state file backend"),
            events,
        )
        .await
        .expect("the state file on the scratch directory"),
    );
    let metrics_require_token = config.admin.metrics_require_token;
    let reloader = Arc::new(Reloader::new(
        config,
        metrics.clone(),
        Arc::clone(&switchboard),
        proxy,
        watch,
        discovery,
        Vec::new(),
    ));
    Admin::new(switchboard, metrics, token, metrics_require_token, reloader)
}
