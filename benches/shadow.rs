//! Does shadow traffic cost the live request anything? Latency a client sees
//! through the proxy with `[models.shadow]` off, at `percent = 10` and at
//! `percent = 100`, and the agreement the shadow reports (issue #7: 100 % for
//! identical models, the live latency unchanged).
//!
//! Everything runs in this process on loopback: one blue and one green
//! upstream answering the same small inference JSON, three proxies
//! (`switchyard::run`), one per mode, in front of them, and keep-alive
//! clients POSTing a ~200-byte JSON body. Only one mode is driven at a time.
//!
//! The modes are interleaved in rounds (off, 10, 100, off, 10, 100, ...) so
//! that noise on this shared machine hits them alike, and the samples of
//! every round are pooled per mode. After each round of a shadowed mode the
//! bench waits until the shadow's `in_flight` is 0, so no mirror of one
//! round runs during the next. Two loads: 8 clients per proxy, which keep
//! both cores busy, then 1 client, which leaves a core to spare. Beside the
//! latencies it reports the process's CPU time per live request: the
//! mirrors, and the standby answering them, run on the same cores as the
//! live requests.
//!
//! At the end it reads each shadow's status from `GET /models/iris` and
//! panics unless agreement is 1.0 with no mismatch and no error (identical
//! models must agree), and unless green answered exactly the mirrors compared.
//!
//! `cargo bench --bench shadow` (one run, about 15 s; prints markdown tables).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Keep-alive clients per proxy, at most.
const CLIENTS: usize = 8;
/// Rounds per load; each drives every mode once, in order.
const ROUNDS: usize = 16;
/// The loads measured: clients at once, and requests per client per mode
/// per round. 8 clients keep both cores busy; 1 client leaves one to spare.
const LOADS: [(usize, usize); 2] = [(CLIENTS, 500), (1, 1000)];
/// Requests per client per mode before the first round, not measured.
const WARM_UP: usize = 100;
/// The shadow setting of each mode: `None` is no `[models.shadow]`.
const MODES: [(&str, Option<u32>); 3] = [("off", None), ("10 %", Some(10)), ("100 %", Some(100))];
const INFER_PATH: &str = "/v2/models/iris/infer";
/// An Open Inference Protocol request: 16 FP32 features, ~200 bytes.
const INFER_REQUEST: &str = r#"{"id":"bench","inputs":[{"name":"input-0","datatype":"FP32","shape":[1,16],"data":[5.1,3.5,1.4,0.2,4.9,3.0,1.4,0.2,4.7,3.2,1.3,0.2,4.6,3.1,1.5,0.2]}],"parameters":{"content_type":"np"}}"#;
const INFER_RESPONSE: &str = r#"{"model_name":"iris","model_version":"1","outputs":[{"name":"predict","datatype":"INT64","shape":[1],"data":[1]}]}"#;

type BenchClient = Client<HttpConnector, Full<Bytes>>;
type AdminClient = Client<HttpConnector, Empty<Bytes>>;

/// An upstream that reads the request body and answers `INFER_RESPONSE`;
/// counts the POSTs it answered (probes are GETs).
async fn upstream(token: CancellationToken, posts: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let make = move |_: &switchyard::server::Accepted| {
        let posts = Arc::clone(&posts);
        hyper::service::service_fn(move |req: Request<switchyard::server::RequestBody>| {
            let posts = Arc::clone(&posts);
            async move {
                let is_post = req.method() == Method::POST;
                // A model server reads its input; a broken body is the
                // bench's own bug and shows as a mismatch or an error.
                let _ = req.into_body().collect().await;
                if is_post {
                    posts.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                    INFER_RESPONSE.as_bytes(),
                ))))
            }
        })
    };
    tokio::spawn(switchyard::server::serve(
        "bench-upstream",
        listener,
        make,
        token,
        Duration::from_secs(1),
    ));
    addr
}

/// One mode: its proxy, its clients, and what they measured.
struct Mode {
    label: &'static str,
    shadowed: bool,
    url: http::Uri,
    status_url: http::Uri,
    clients: Vec<BenchClient>,
    /// Requests sent through this proxy, warm-up included.
    sent: u64,
    stop: oneshot::Sender<()>,
    running: JoinHandle<Result<(), switchyard::RunError>>,
    dir: PathBuf,
}

impl Mode {
    async fn start(
        label: &'static str,
        percent: Option<u32>,
        blue: SocketAddr,
        green: SocketAddr,
    ) -> Mode {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-bench-shadow-{}-{}",
            std::process::id(),
            percent.unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let shadow = percent.map_or(String::new(), |p| {
            format!("[models.shadow]\npercent = {p}\n")
        });
        let text = format!(
            r#"[proxy]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[state]
path = "{state}"
[[models]]
name = "iris"
health.interval = "250ms"
health.timeout = "250ms"
blue.endpoints = ["http://{blue}"]
green.endpoints = ["http://{green}"]
{shadow}"#,
            state = dir.join("state.json").display()
        );
        let config =
            switchyard::Config::from_toml(&text, Path::new("bench.toml")).expect("bench config");
        let listeners = switchyard::Listeners {
            proxy: TcpListener::bind("127.0.0.1:0").await.expect("bind proxy"),
            admin: TcpListener::bind("127.0.0.1:0").await.expect("bind admin"),
            preview: None,
        };
        let proxy = listeners.proxy.local_addr().expect("addr");
        let admin = listeners.admin.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(switchyard::run(config, listeners, async {
            let _ = stopped.await;
        }));
        let mode = Mode {
            label,
            shadowed: percent.is_some(),
            url: format!("http://{proxy}{INFER_PATH}").parse().expect("uri"),
            status_url: format!("http://{admin}/models/iris").parse().expect("uri"),
            clients: (0..CLIENTS)
                .map(|_| Client::builder(TokioExecutor::new()).build_http())
                .collect(),
            sent: 0,
            stop,
            running,
            dir,
        };
        // Both pools healthy: the live side serves, and mirrors find the
        // standby in rotation from the first request.
        let admin = admin_client();
        poll(&format!("proxy {label}: both pools healthy"), || async {
            let detail = status(&admin, &mode.status_url).await;
            let pools = &detail["pools"];
            (pools["blue"]["healthy_endpoints"] == 1 && pools["green"]["healthy_endpoints"] == 1)
                .then_some(())
        })
        .await;
        mode
    }

    /// `per_client` requests from each of the first `clients` clients at
    /// once; the latency of each, request sent to answer body read.
    async fn burst(&mut self, clients: usize, per_client: usize) -> Vec<Duration> {
        let mut tasks = tokio::task::JoinSet::new();
        for client in &self.clients[..clients] {
            let client = client.clone();
            let uri = self.url.clone();
            tasks.spawn(async move {
                let body = Bytes::from_static(INFER_REQUEST.as_bytes());
                let mut out = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let started = Instant::now();
                    let req = Request::post(uri.clone())
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Full::new(body.clone()))
                        .expect("request");
                    let resp = client
                        .request(req)
                        .await
                        .expect("request through the proxy");
                    assert!(resp.status().is_success(), "status {}", resp.status());
                    let answer = resp.into_body().collect().await.expect("body").to_bytes();
                    out.push(started.elapsed());
                    assert_eq!(answer, INFER_RESPONSE.as_bytes(), "the live answer");
                }
                out
            });
        }
        let mut all = Vec::with_capacity(per_client * clients);
        while let Some(done) = tasks.join_next().await {
            all.extend(done.expect("client task"));
        }
        self.sent += all.len() as u64;
        all
    }

    /// The shadow's status; `Null` for the mode without one.
    async fn shadow(&self, admin: &AdminClient) -> Value {
        status(admin, &self.status_url).await["shadow"].clone()
    }

    /// Waits until no mirror of this mode is in flight.
    async fn settle(&self, admin: &AdminClient) {
        if !self.shadowed {
            return;
        }
        poll(
            &format!("shadow {}: mirrors settled (in_flight 0)", self.label),
            || async { (self.shadow(admin).await["in_flight"] == 0).then_some(()) },
        )
        .await;
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        // The proxy's own result does not matter to the measurement.
        let _ = self.running.await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn admin_client() -> AdminClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// `GET` of a model's status on the admin listener, as JSON.
async fn status(admin: &AdminClient, url: &http::Uri) -> Value {
    let resp = admin.get(url.clone()).await.expect("admin request");
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    let body = resp.into_body().collect().await.expect("admin body");
    serde_json::from_slice(&body.to_bytes()).expect("admin JSON")
}

/// Polls `check` until it gives `Some`, for at most 10 s; the panic names
/// what it waited for.
async fn poll<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(t) = check().await {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sorted latencies.
struct Latencies(Vec<Duration>);

impl Latencies {
    fn new(mut v: Vec<Duration>) -> Latencies {
        v.sort_unstable();
        Latencies(v)
    }
    fn mean(&self) -> Duration {
        self.0.iter().sum::<Duration>() / self.0.len().max(1) as u32
    }
    fn quantile(&self, q: f64) -> Duration {
        self.0[((self.0.len() - 1) as f64 * q).round() as usize]
    }
    /// Mean, p50, p90, p99.
    fn summary(&self) -> [Duration; 4] {
        [
            self.mean(),
            self.quantile(0.5),
            self.quantile(0.9),
            self.quantile(0.99),
        ]
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// CPU time of this whole process (proxies, upstreams and clients alike)
/// so far, from `/proc/self/stat`, in ticks of 10 ms; `None` off Linux.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name, which may hold spaces: state is field 3,
    // utime and stime fields 14 and 15.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux target.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// What one mode measured at one load.
#[derive(Default)]
struct Measured {
    latencies: Vec<Duration>,
    /// Each round's p99, for the spread between rounds.
    round_p99: Vec<Duration>,
    /// Process CPU time and wall time over the rounds, mirrors settled.
    cpu: Option<Duration>,
    wall: Duration,
}

/// `ROUNDS` rounds, each driving every mode in turn with `clients` clients
/// of `per_client` requests, and waiting for its mirrors to settle.
async fn measure(
    modes: &mut [Mode],
    admin: &AdminClient,
    clients: usize,
    per_client: usize,
) -> Vec<Measured> {
    let mut measured: Vec<Measured> = modes
        .iter()
        .map(|_| Measured {
            cpu: Some(Duration::ZERO),
            ..Measured::default()
        })
        .collect();
    for _ in 0..ROUNDS {
        for (mode, m) in modes.iter_mut().zip(&mut measured) {
            let (cpu, wall) = (process_cpu(), Instant::now());
            let round = mode.burst(clients, per_client).await;
            mode.settle(admin).await;
            m.wall += wall.elapsed();
            m.cpu = match (m.cpu, cpu, process_cpu()) {
                (Some(sum), Some(before), Some(after)) => Some(sum + (after - before)),
                _ => None,
            };
            m.round_p99
                .push(Latencies::new(round.clone()).quantile(0.99));
            m.latencies.extend(round);
        }
    }
    measured
}

fn print_load(modes: &[Mode], measured: &[Measured], clients: usize, per_client: usize) {
    println!(
        "{clients} keep-alive client(s) per proxy, {ROUNDS} interleaved rounds of {} requests per mode, pooled",
        clients * per_client
    );
    println!();
    println!("| shadow | requests | mean | p50 | p90 | p99 | mean / off | p50 / off | p90 / off | p99 / off | CPU per request | cores busy |");
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let summaries: Vec<[Duration; 4]> = measured
        .iter()
        .map(|m| Latencies::new(m.latencies.clone()).summary())
        .collect();
    let off = summaries[0];
    for ((mode, m), s) in modes.iter().zip(measured).zip(&summaries) {
        let ratio = |i: usize| s[i].as_secs_f64() / off[i].as_secs_f64();
        let (cpu, busy) = m.cpu.map_or(("n/a".to_string(), "n/a".to_string()), |cpu| {
            (
                format!("{:.0} µs", micros(cpu) / m.latencies.len() as f64),
                format!("{:.2}", cpu.as_secs_f64() / m.wall.as_secs_f64()),
            )
        });
        println!(
            "| {} | {} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.2} | {:.2} | {:.2} | {:.2} | {cpu} | {busy} |",
            mode.label,
            m.latencies.len(),
            micros(s[0]),
            micros(s[1]),
            micros(s[2]),
            micros(s[3]),
            ratio(0),
            ratio(1),
            ratio(2),
            ratio(3),
        );
    }
    println!();
    for (mode, m) in modes.iter().zip(measured).skip(1) {
        let per_round: Vec<String> = m
            .round_p99
            .iter()
            .zip(&measured[0].round_p99)
            .map(|(p, o)| format!("{:.2}", p.as_secs_f64() / o.as_secs_f64()))
            .collect();
        println!(
            "p99 / off, round by round, {}: {}",
            mode.label,
            per_round.join(" ")
        );
    }
    println!();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let began = Instant::now();
    let token = CancellationToken::new();
    let blue_posts = Arc::new(AtomicU64::new(0));
    let green_posts = Arc::new(AtomicU64::new(0));
    let blue = upstream(token.child_token(), Arc::clone(&blue_posts)).await;
    let green = upstream(token.child_token(), Arc::clone(&green_posts)).await;
    let mut modes = Vec::new();
    for (label, percent) in MODES {
        modes.push(Mode::start(label, percent, blue, green).await);
    }
    let admin = admin_client();

    // Warm every proxy's clients and upstream connections alike.
    for mode in &mut modes {
        mode.burst(CLIENTS, WARM_UP).await;
        mode.settle(&admin).await;
    }
    let mut loads = Vec::new();
    for (clients, per_client) in LOADS {
        let measured = measure(&mut modes, &admin, clients, per_client).await;
        loads.push((clients, per_client, measured));
    }

    // Identical models must agree, on every mirrored request.
    let mut statuses = Vec::new();
    for mode in modes.iter().filter(|m| m.shadowed) {
        let s = mode.shadow(&admin).await;
        let n = |key: &str| s[key].as_u64().expect("a count");
        let skipped: u64 = s["skipped"]
            .as_object()
            .expect("skipped")
            .values()
            .map(|v| v.as_u64().expect("a count"))
            .sum();
        assert!(
            n("compared") > 0 && n("mismatch") == 0 && n("error") == 0 && s["agreement"] == 1.0,
            "shadow {}: identical models must agree on every mirror, got {s:#}",
            mode.label
        );
        statuses.push((
            mode.label,
            mode.sent,
            n("compared"),
            skipped,
            s["agreement"].clone(),
        ));
    }
    // The mirrors reached green: each comparison is one POST it answered.
    let compared: u64 = statuses.iter().map(|s| s.2).sum();
    assert_eq!(
        green_posts.load(Ordering::Relaxed),
        compared,
        "green's POSTs are the mirrors compared"
    );
    let sent: u64 = modes.iter().map(|m| m.sent).sum();
    assert_eq!(
        blue_posts.load(Ordering::Relaxed),
        sent,
        "blue's POSTs are the live requests"
    );

    println!(
        "live latency through the proxy, POST of {} bytes; CPU is the whole process's \
         (clients, proxy, both upstreams, mirrors) per live request",
        INFER_REQUEST.len()
    );
    println!();
    for (clients, per_client, measured) in &loads {
        print_load(&modes, measured, *clients, *per_client);
    }
    println!(
        "| shadow | requests (warm-up included) | mirrored and compared | skipped | agreement |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (label, sent, compared, skipped, agreement) in &statuses {
        println!("| {label} | {sent} | {compared} | {skipped} | {agreement} |");
    }
    println!();
    println!("whole run: {:.1} s", began.elapsed().as_secs_f64());

    for mode in modes {
        mode.stop().await;
    }
    token.cancel();
}
