//! Test support: real upstream servers and the real proxy on ephemeral
//! loopback ports, HTTP/1.1 and HTTP/2 clients, and a deadline helper.
//! No sleeps: tests wait on signals the servers send, or poll with
//! [`eventually`], whose panic names what it waited for.
#![allow(dead_code)]

pub mod dns;
pub mod etcd;
pub mod inbound_tls;
pub mod tls;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type of test requests: a full body or a stream the test feeds.
pub type TestBody = BoxBody<Bytes, BoxError>;

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

// === deadline helper ===

/// Polls `check` every 10 ms until it returns true; panics naming `what`
/// after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > give_up {
            panic!("timed out after {DEADLINE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `fut`, panicking with `what` if it takes longer than [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {DEADLINE:?} waiting for {what}"),
    }
}

// === upstream ===

/// A test model server on `127.0.0.1:0`, speaking HTTP/1.1 and HTTP/2.
///
/// Paths:
/// - anything else: 200, body is the upstream's name.
/// - `/echo...`: 200, JSON of the request as received (method, path, query,
///   version, headers, body length).
/// - `/hold...`: counts as arrived (see [`Upstream::wait_held`]), waits for
///   [`Upstream::release`], then answers 200 with the name.
/// - `/stream...`: sends `first\n` at once, waits for release, sends `last\n`.
/// - `/upload...`: reads the body as it streams, signals the first bytes
///   (see [`Upstream::wait_upload_started`]), answers `{"bytes": n}`.
/// - `/status/NNN`: answers with status NNN.
/// - `/grpc.health.v1.Health/Check`: the gRPC health service, `SERVING`, or
///   `NOT_SERVING` after [`Upstream::set_healthy`]`(false)`; a probe too.
/// - `/v2/health/ready` (the default probe path): 200, or 503 after
///   [`Upstream::set_healthy`]`(false)`; counted in [`Upstream::probes`],
///   not in [`Upstream::hits`].
/// - after [`Upstream::set_failing`]`(true)`, every other request is a 500.
/// - after [`Upstream::set_delay`], every other request waits that long first.
/// - a path given to [`Upstream::set_reply`]: the status and body set there.
/// - `/grpc...` (HTTP/2): a gRPC unary answer echoing the request message,
///   with trailers `grpc-status: 0`, `grpc-message: ok-<name>`.
pub struct Upstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
    token: CancellationToken,
    task: JoinHandle<()>,
}

struct UpstreamState {
    name: &'static str,
    hits: AtomicUsize,
    probes: AtomicUsize,
    connections: AtomicUsize,
    healthy: AtomicBool,
    failing: AtomicBool,
    /// Milliseconds every request but probes waits before it is answered.
    delay_ms: AtomicUsize,
    held: watch::Sender<usize>,
    released: watch::Sender<bool>,
    /// False while health probes are held unanswered ([`Upstream::hold_health`]).
    health_open: watch::Sender<bool>,
    upload_started: watch::Sender<bool>,
    /// Canned answers by exact path, from [`Upstream::set_reply`]. A test
    /// server: a std mutex, never held across an await.
    replies: Mutex<HashMap<String, (StatusCode, Bytes)>>,
}

impl UpstreamState {
    fn new(name: &'static str) -> UpstreamState {
        UpstreamState {
            name,
            hits: AtomicUsize::new(0),
            probes: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            failing: AtomicBool::new(false),
            delay_ms: AtomicUsize::new(0),
            held: watch::Sender::new(0),
            released: watch::Sender::new(false),
            health_open: watch::Sender::new(true),
            upload_started: watch::Sender::new(false),
            replies: Mutex::new(HashMap::new()),
        }
    }
}

impl Upstream {
    pub async fn start(name: &'static str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream address");
        let state = Arc::new(UpstreamState::new(name));
        let token = CancellationToken::new();
        let serve_state = Arc::clone(&state);
        let serve_token = token.clone();
        let task = tokio::spawn(async move {
            let make = move |_: &switchyard::server::Accepted| {
                serve_state.connections.fetch_add(1, Ordering::SeqCst);
                let state = Arc::clone(&serve_state);
                hyper::service::service_fn(move |req| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(upstream_handle(&state, req).await) }
                })
            };
            switchyard::server::serve(
                "test-upstream",
                listener,
                make,
                serve_token,
                Duration::from_secs(5),
            )
            .await;
        });
        Upstream {
            name,
            addr,
            state,
            token,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests this upstream has received, health probes not included.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Health probes this upstream has answered.
    pub fn probes(&self) -> usize {
        self.state.probes.load(Ordering::SeqCst)
    }

    /// TCP connections this upstream has accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Makes the health path answer 200 (true) or 503 (false).
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Makes every request but probes answer 500 (true) or normally (false).
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// Makes every request but probes wait `delay` before it is answered: a
    /// slow model server.
    pub fn set_delay(&self, delay: Duration) {
        let ms = usize::try_from(delay.as_millis()).unwrap_or(usize::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Makes requests for exactly `path` answer `status` with `body` (read
    /// and discard the request body), until set again.
    pub fn set_reply(&self, path: &str, status: u16, body: impl Into<Bytes>) {
        let status = StatusCode::from_u16(status).expect("a status code");
        self.state
            .replies
            .lock()
            .expect("replies lock")
            .insert(path.to_string(), (status, body.into()));
    }

    /// Requests held on `/hold` or `/stream` so far.
    pub fn held(&self) -> usize {
        *self.state.held.borrow()
    }

    /// Waits until `n` requests are held on `/hold` or `/stream`.
    pub async fn wait_held(&self, n: usize) {
        let mut rx = self.state.held.subscribe();
        within(
            &format!("{n} held request(s) on upstream {}", self.name),
            rx.wait_for(|h| *h >= n),
        )
        .await
        .expect("upstream alive");
    }

    /// Holds health probes unanswered (counted in `probes` on arrival)
    /// until [`Upstream::release_health`].
    pub fn hold_health(&self) {
        self.state.health_open.send_replace(false);
    }

    /// Answers the held health probes, and later ones at once.
    pub fn release_health(&self) {
        self.state.health_open.send_replace(true);
    }

    /// Lets every held request (and every later one) finish.
    pub fn release(&self) {
        self.state.released.send_replace(true);
    }

    /// Waits until an `/upload` request's first bytes have arrived here.
    pub async fn wait_upload_started(&self) {
        let mut rx = self.state.upload_started.subscribe();
        within(
            &format!("upload bytes at upstream {}", self.name),
            rx.wait_for(|s| *s),
        )
        .await
        .expect("upstream alive");
    }

    /// Stops the server and waits until its port is closed.
    pub async fn stop(self) {
        self.token.cancel();
        let _ = self.task.await;
    }
}

async fn wait_released(state: &UpstreamState) {
    let mut rx = state.released.subscribe();
    let _ = rx.wait_for(|r| *r).await;
}

async fn upstream_handle(
    state: &UpstreamState,
    req: Request<switchyard::server::RequestBody>,
) -> Response<TestBody> {
    let path = req.uri().path().to_string();
    let name = state.name;
    if path == "/v2/health/ready" {
        state.probes.fetch_add(1, Ordering::SeqCst);
        let mut open = state.health_open.subscribe();
        let _ = open.wait_for(|o| *o).await;
        return if state.healthy.load(Ordering::SeqCst) {
            full(StatusCode::OK, "{}")
        } else {
            full(StatusCode::SERVICE_UNAVAILABLE, "{}")
        };
    }
    if path == "/grpc.health.v1.Health/Check" {
        // The standard gRPC health service: SERVING (1) or NOT_SERVING (2).
        state.probes.fetch_add(1, Ordering::SeqCst);
        let _ = req.into_body().collect().await;
        let status = if state.healthy.load(Ordering::SeqCst) {
            1
        } else {
            2
        };
        let message = Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            vec![Ok(Frame::data(message)), Ok(Frame::trailers(trailers))];
        let mut resp = Response::new(BodyExt::boxed(StreamBody::new(tokio_stream::iter(frames))));
        resp.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        return resp;
    }
    state.hits.fetch_add(1, Ordering::SeqCst);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    if state.failing.load(Ordering::SeqCst) {
        return full(StatusCode::INTERNAL_SERVER_ERROR, name);
    }
    let reply = state
        .replies
        .lock()
        .expect("replies lock")
        .get(&path)
        .cloned();
    if let Some((status, body)) = reply {
        let _ = req.into_body().collect().await;
        let mut resp = full(status, body);
        resp.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        return resp;
    }
    if path.starts_with("/echo") {
        let head = serde_json::json!({
            "upstream": name,
            "method": req.method().as_str(),
            "path": path,
            "query": req.uri().query(),
            "version": format!("{:?}", req.version()),
            "headers": headers_json(req.headers()),
        });
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut v = head;
        v["body_len"] = body.len().into();
        return full(StatusCode::OK, v.to_string());
    }
    if path.starts_with("/hold") {
        state.held.send_modify(|h| *h += 1);
        wait_released(state).await;
        return full(StatusCode::OK, name);
    }
    if path.starts_with("/stream") {
        state.held.send_modify(|h| *h += 1);
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
        let released = state.released.subscribe();
        tokio::spawn(async move {
            let mut released = released;
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"first\n"))))
                .await;
            let _ = released.wait_for(|r| *r).await;
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"last\n"))))
                .await;
        });
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut resp = Response::new(BodyExt::boxed(body));
        resp.headers_mut()
            .insert("content-type", "text/plain".parse().unwrap());
        return resp;
    }
    if path.starts_with("/upload") {
        let mut body = req.into_body();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(data) = f.data_ref() {
                        total += data.remaining();
                        if total > 0 {
                            state.upload_started.send_replace(true);
                        }
                    }
                }
                Err(e) => return full(StatusCode::BAD_REQUEST, format!("body error: {e}")),
            }
        }
        return full(
            StatusCode::OK,
            serde_json::json!({ "bytes": total }).to_string(),
        );
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        return full(status, name);
    }
    if path.starts_with("/grpc") {
        let message = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", format!("ok-{name}").parse().unwrap());
        trailers.insert("x-undeclared", "1".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            vec![Ok(Frame::data(message)), Ok(Frame::trailers(trailers))];
        let body = StreamBody::new(tokio_stream::iter(frames));
        let mut resp = Response::new(BodyExt::boxed(body));
        resp.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        // HTTP/1.1 sends only the trailers a response declares.
        resp.headers_mut()
            .insert("trailer", "grpc-status, grpc-message".parse().unwrap());
        return resp;
    }
    full(StatusCode::OK, name)
}

fn headers_json(headers: &HeaderMap) -> Value {
    let mut map = serde_json::Map::new();
    for (k, v) in headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        match map.get_mut(k.as_str()) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                map.insert(k.as_str().to_string(), Value::String(v));
            }
        }
    }
    Value::Object(map)
}

pub fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<TestBody> {
    let mut resp = Response::new(full_body(body));
    *resp.status_mut() = status;
    resp
}

pub fn full_body(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An address where nothing listens: connecting is refused at once.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

/// A server that accepts connections and never answers.
pub struct HungUpstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HungUpstream {
    pub async fn start() -> HungUpstream {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                open.push(s); // held open, never read or answered
            }
        });
        HungUpstream { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for HungUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === proxy ===

/// The real proxy, run in-process with `switchyard::run` on ephemeral ports.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The preview listener, when the config has `preview_listen`.
    pub preview: Option<SocketAddr>,
    pub dir: Arc<tempfile::TempDir>,
    pub state_path: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), switchyard::RunError>>>,
}

/// Builds a full config: `[proxy]` (plus `proxy_extra` lines), `[admin]`,
/// `[state]` at `state_path`, then `models` verbatim.
pub fn config_text(state_path: &Path, proxy_extra: &str, models: &str) -> String {
    config_text_with_admin(state_path, proxy_extra, "", models)
}

/// [`config_text`] with extra `[admin]` lines (e.g. `token_file = "..."`).
pub fn config_text_with_admin(
    state_path: &Path,
    proxy_extra: &str,
    admin_extra: &str,
    models: &str,
) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n{proxy_extra}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}\n\n[state]\npath = {:?}\n\n{models}\n",
        state_path.display().to_string()
    )
}

/// `[[models]]` text for one model with one endpoint per pool.
pub fn model(name: &str, prefix: &str, blue: &str, green: &str) -> String {
    format!(
        "[[models]]\nname = {name:?}\npath_prefix = {prefix:?}\nblue.endpoints = [{blue:?}]\ngreen.endpoints = [{green:?}]\n"
    )
}

/// Two upstreams, blue and green, and a proxy with one model, `iris`, at
/// `/` in front of them.
pub async fn iris_blue_green() -> (Upstream, Upstream, Proxy) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&model("iris", "/", &blue.url(), &green.url())).await;
    (blue, green, proxy)
}

impl Proxy {
    /// Starts a proxy for `models` in a fresh temp dir.
    pub async fn start(models: &str) -> Proxy {
        Proxy::start_with("", models).await
    }

    /// Starts a proxy with extra `[proxy]` lines (e.g. `request_timeout = "1s"`).
    pub async fn start_with(proxy_extra: &str, models: &str) -> Proxy {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Proxy::try_start_in(dir, proxy_extra, models)
            .await
            .expect("proxy starts")
    }

    /// Starts a proxy whose state file lives in `dir` (reuse `dir` to restart).
    /// Returns the error if `run` fails before becoming ready.
    pub async fn try_start_in(
        dir: Arc<tempfile::TempDir>,
        proxy_extra: &str,
        models: &str,
    ) -> Result<Proxy, switchyard::RunError> {
        Proxy::try_start_with_admin(dir, proxy_extra, "", models).await
    }

    /// [`Proxy::try_start_in`] with extra `[admin]` lines.
    pub async fn try_start_with_admin(
        dir: Arc<tempfile::TempDir>,
        proxy_extra: &str,
        admin_extra: &str,
        models: &str,
    ) -> Result<Proxy, switchyard::RunError> {
        Proxy::try_launch(dir, proxy_extra, admin_extra, models, |admin| async move {
            let url = format!("http://{admin}/readyz");
            try_send(&client(), Method::GET, &url, full_body(""))
                .await
                .ok()
                .map(|r| r.body)
        })
        .await
    }

    /// Writes the config into `dir`, runs the proxy in-process on ephemeral
    /// ports, and returns once the first probe round is in: `readyz` fetches
    /// the admin listener's `/readyz` body (`None`: no answer yet). Returns
    /// the error if `run` fails before that.
    pub async fn try_launch<F, Fut>(
        dir: Arc<tempfile::TempDir>,
        proxy_extra: &str,
        admin_extra: &str,
        models: &str,
        readyz: F,
    ) -> Result<Proxy, switchyard::RunError>
    where
        F: FnMut(SocketAddr) -> Fut,
        Fut: Future<Output = Option<Bytes>>,
    {
        let state_path = dir.path().join("state.json");
        let text = config_text_with_admin(&state_path, proxy_extra, admin_extra, models);
        Proxy::try_launch_text(dir, &text, readyz).await
    }

    /// Starts a proxy whose whole config is `text` (its listeners are
    /// replaced by ephemeral ones), written into `dir`; returns once the
    /// first probe round is in, or the error if `run` fails before that.
    pub async fn try_start_text(
        dir: Arc<tempfile::TempDir>,
        text: &str,
    ) -> Result<Proxy, switchyard::RunError> {
        Proxy::try_launch_text(dir, text, |admin| async move {
            let url = format!("http://{admin}/readyz");
            try_send(&client(), Method::GET, &url, full_body(""))
                .await
                .ok()
                .map(|r| r.body)
        })
        .await
    }

    /// [`Proxy::try_launch`] with the whole config text.
    pub async fn try_launch_text<F, Fut>(
        dir: Arc<tempfile::TempDir>,
        text: &str,
        mut readyz: F,
    ) -> Result<Proxy, switchyard::RunError>
    where
        F: FnMut(SocketAddr) -> Fut,
        Fut: Future<Output = Option<Bytes>>,
    {
        let state_path = dir.path().join("state.json");
        let config_path = dir.path().join("switchyard.toml");
        std::fs::write(&config_path, text).expect("write config");
        let config = switchyard::Config::from_toml(text, &config_path).unwrap_or_else(|errors| {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!("test config is invalid:\n{}\n---\n{text}", lines.join("\n"))
        });
        let preview = match config.proxy.preview_listen {
            Some(_) => Some(
                TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind preview"),
            ),
            None => None,
        };
        let listeners = switchyard::Listeners {
            proxy: TcpListener::bind("127.0.0.1:0").await.expect("bind proxy"),
            admin: TcpListener::bind("127.0.0.1:0").await.expect("bind admin"),
            preview,
        };
        let preview = listeners
            .preview
            .as_ref()
            .map(|l| l.local_addr().expect("preview addr"));
        let addr = listeners.proxy.local_addr().expect("proxy addr");
        let admin = listeners.admin.local_addr().expect("admin addr");
        let (tx, rx) = oneshot::channel::<()>();
        let mut task = tokio::spawn(switchyard::run(config, listeners, async {
            let _ = rx.await;
        }));
        // Started once the first probe round is in (/readyz says
        // `"probed": true`, whether ready or not), or fail fast if run returned.
        let give_up = tokio::time::Instant::now() + DEADLINE;
        loop {
            if task.is_finished() {
                return match (&mut task).await.expect("run task") {
                    Err(e) => Err(e),
                    Ok(()) => panic!("proxy stopped before it was ready"),
                };
            }
            if let Some(body) = readyz(admin).await {
                let probed = serde_json::from_slice::<Value>(&body)
                    .is_ok_and(|v| v["probed"] == Value::Bool(true));
                if probed {
                    break;
                }
            }
            if tokio::time::Instant::now() > give_up {
                panic!("timed out waiting for the proxy's first probe round");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Proxy {
            addr,
            admin,
            preview,
            dir,
            state_path,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// URL of `path` on the proxy listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// URL of `path` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Admin POST (flip, activate, rollback).
    pub async fn admin_post(&self, path: &str) -> Reply {
        send(
            &client(),
            Method::POST,
            &self.admin_url(path),
            full_body(""),
        )
        .await
    }

    pub async fn admin_get(&self, path: &str) -> Reply {
        send(&client(), Method::GET, &self.admin_url(path), full_body("")).await
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), switchyard::RunError> {
        self.shutdown.take().map(|tx| tx.send(()));
        let task = self.task.take().expect("running");
        within("proxy shutdown", task)
            .await
            .expect("run task did not panic")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

// === clients ===

pub type TestClient = Client<HttpConnector, TestBody>;

/// A pooled HTTP/1.1 keep-alive client.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A pooled HTTP/2 (prior knowledge) client.
pub fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The `x-switchyard-pool` header, or "" when absent.
    pub fn pool(&self) -> &str {
        self.headers
            .get("x-switchyard-pool")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

pub async fn try_send(
    client: &TestClient,
    method: Method,
    url: &str,
    body: TestBody,
) -> Result<Reply, BoxError> {
    let req = Request::builder().method(method).uri(url).body(body)?;
    let resp = client.request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Sends a request and reads the whole response; panics on transport errors.
pub async fn send(client: &TestClient, method: Method, url: &str, body: TestBody) -> Reply {
    within(
        &format!("{method} {url}"),
        try_send(client, method.clone(), url, body),
    )
    .await
    .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"))
}

pub async fn get(url: &str) -> Reply {
    send(&client(), Method::GET, url, full_body("")).await
}

pub async fn post(url: &str, body: impl Into<Bytes>) -> Reply {
    send(&client(), Method::POST, url, full_body(body)).await
}

/// A request body the test feeds chunk by chunk.
pub fn channel_body() -> (mpsc::Sender<Result<Frame<Bytes>, BoxError>>, TestBody) {
    let (tx, rx) = mpsc::channel(4);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    (tx, BodyExt::boxed(body))
}

/// One HTTP/1.1 connection, for tests that must stay on a single connection.
pub async fn h1_connection(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    h1_handshake(stream).await
}

/// One HTTP/1.1 connection from the local address `from` (e.g. 127.0.0.2,
/// which Linux routes to loopback), for tests of what the proxy sees of
/// its client.
pub async fn h1_connection_from(
    from: std::net::IpAddr,
    addr: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let socket = match from {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .expect("a socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .expect("bind the local address");
    let stream = within("connect", socket.connect(addr))
        .await
        .expect("connect");
    h1_handshake(stream).await
}

async fn h1_handshake(
    stream: tokio::net::TcpStream,
) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    sender
}

/// One HTTP/2 connection, for tests that must stay on a single connection.
pub async fn h2_connection(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

/// Reads a response body to the end.
pub async fn read_body(body: Incoming) -> Bytes {
    within("response body", body.collect())
        .await
        .expect("body")
        .to_bytes()
}

/// Concatenates chunks (for tests that inspect streamed data).
pub fn concat(chunks: &[Bytes]) -> Bytes {
    let mut b = BytesMut::new();
    for c in chunks {
        b.extend_from_slice(c);
    }
    b.freeze()
}

// === health ===

/// Polls `check` every 10 ms until it returns `Some`; panics naming `what`
/// after [`DEADLINE`]. [`eventually`] for a wait that also returns what it saw.
pub async fn eventually_some<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > give_up {
            panic!("timed out after {DEADLINE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The endpoint `url` of `pool` as GET /models/{model} shows it (state,
/// last probe, failure counts, open connections).
pub async fn endpoint_detail(proxy: &Proxy, model: &str, pool: &str, url: &str) -> Value {
    let r = proxy.admin_get(&format!("/models/{model}")).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "GET /models/{model}: {}",
        r.text()
    );
    let body = r.json();
    body["pools"][pool]["endpoints"]
        .as_array()
        .and_then(|endpoints| endpoints.iter().find(|e| e["url"] == url).cloned())
        .unwrap_or_else(|| panic!("no endpoint {url} in pools.{pool}: {body}"))
}

/// Waits until the endpoint's `state` is `state`; returns its detail then.
pub async fn wait_for_state(
    proxy: &Proxy,
    model: &str,
    pool: &str,
    url: &str,
    state: &str,
) -> Value {
    eventually_some(
        &format!("{model} {pool} endpoint {url} to be {state}"),
        || async {
            let e = endpoint_detail(proxy, model, pool, url).await;
            (e["state"] == state).then_some(e)
        },
    )
    .await
}

/// The value of one series in the proxy's /metrics, `None` if absent.
/// `series` is written as exposed: labels sorted by name, e.g.
/// `switchyard_probes_total{model="iris",pool="blue",result="ok"}`.
pub async fn metric_value(proxy: &Proxy, series: &str) -> Option<f64> {
    let r = proxy.admin_get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK, "GET /metrics: {}", r.text());
    r.text()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// An address where nothing listens, held so no other socket can take it:
/// [`dead_addr`] frees its port, which a busy machine may hand to another
/// test's listener, and then the "dead" endpoint answers. The socket is bound
/// without `SO_REUSEADDR` and never listens, so connecting is refused at
/// once for as long as this lives.
pub struct Refusing {
    pub addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

impl Refusing {
    pub fn bind() -> Refusing {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
        let addr = socket.local_addr().expect("addr");
        Refusing {
            addr,
            _socket: socket,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

// === an endpoint that dies ===

impl Refusing {
    /// Stops `upstream` and keeps its port bound, so connecting there is
    /// refused from now on: an endpoint that passed its probes, then died.
    /// (A [`Refusing`] from the start fails the first probe round, which
    /// takes it out of rotation before any request.)
    pub async fn replacing(upstream: Upstream) -> Refusing {
        let addr = upstream.addr;
        upstream.stop().await;
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        // The upstream's closed connections may linger in TIME_WAIT on this
        // port, which a plain bind refuses. Bound but never listening, the
        // socket still refuses every connect, and a bind to port 0 never
        // picks a port bound like this.
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket
            .bind(addr)
            .unwrap_or_else(|e| panic!("keeping the port of stopped upstream {addr}: {e}"));
        Refusing {
            addr,
            _socket: socket,
        }
    }
}
