//! Does a switch cost anything? Latency of the first 100 requests after a
//! flip against the 100 before it, with the standby kept warm by the prober
//! (`warm_connections = 8`) and cold (`warm_connections = 0`: probes close
//! their connections, so the standby has none open when traffic arrives).
//!
//! Everything runs in this process on loopback: two upstream servers, the
//! real proxy (`switchyard::run`), and 8 clients, each on its own keep-alive
//! connection. A few warm-up requests go to blue first so the active side is
//! warm either way; only the standby differs.
//!
//! Each mode flips `FLIPS` times, each time on a fresh proxy, and pools the
//! samples: one flip's 100 requests give a p99 that is one outlier.
//!
//! `cargo bench --bench warm_standby` (one run; prints a table).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const CLIENTS: usize = 8;
const REQUESTS: usize = 100;
/// Flips measured per mode, each on a fresh proxy.
const FLIPS: usize = 5;
const INFER_RESPONSE: &str = r#"{"model_name":"iris","model_version":"1","outputs":[{"name":"predict","datatype":"INT64","shape":[1],"data":[1]}]}"#;

async fn upstream(token: CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let make = |_: &switchyard::server::Accepted| {
        hyper::service::service_fn(|_req| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                INFER_RESPONSE.as_bytes(),
            ))))
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

struct Latencies(Vec<Duration>);

impl Latencies {
    fn mean(&self) -> Duration {
        self.0.iter().sum::<Duration>() / self.0.len().max(1) as u32
    }
    fn quantile(&self, q: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        v[((v.len() - 1) as f64 * q).round() as usize]
    }
    fn max(&self) -> Duration {
        self.0.iter().copied().max().unwrap_or_default()
    }
}

type BenchClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// `REQUESTS` requests spread over the clients; the latency of each.
async fn burst(clients: &[BenchClient], url: &str) -> Latencies {
    let per_client = REQUESTS / clients.len();
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        let client = client.clone();
        let uri: http::Uri = url.parse().expect("uri");
        tasks.spawn(async move {
            let mut out = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let started = Instant::now();
                let req = Request::get(uri.clone())
                    .body(Empty::new())
                    .expect("request");
                let resp = client
                    .request(req)
                    .await
                    .expect("request through the proxy");
                assert!(resp.status().is_success(), "status {}", resp.status());
                resp.into_body().collect().await.expect("body");
                out.push(started.elapsed());
            }
            out
        });
    }
    let mut all = Vec::with_capacity(REQUESTS);
    while let Some(done) = tasks.join_next().await {
        all.extend(done.expect("client task"));
    }
    Latencies(all)
}

async fn measure(warm_connections: u32) -> (Latencies, Latencies) {
    let token = CancellationToken::new();
    let blue = upstream(token.child_token()).await;
    let green = upstream(token.child_token()).await;
    let dir = std::env::temp_dir().join(format!(
        "switchyard-bench-{}-{warm_connections}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let text = format!(
        r#"[proxy]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[state]
path = "{state}"
[[models]]
name = "iris"
health.interval = "200ms"
health.timeout = "200ms"
health.warm_connections = {warm_connections}
blue.endpoints = ["http://{blue}"]
green.endpoints = ["http://{green}"]
"#,
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

    let admin_client: BenchClient = Client::builder(TokioExecutor::new()).build_http();
    // Ready, and at least two probe rounds in, so the standby is as warm
    // as the prober will make it.
    let ready: http::Uri = format!("http://{admin}/readyz").parse().expect("uri");
    loop {
        if let Ok(r) = admin_client.get(ready.clone()).await {
            if r.status().is_success() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let clients: Vec<BenchClient> = (0..CLIENTS)
        .map(|_| Client::builder(TokioExecutor::new()).build_http())
        .collect();
    let url = format!("http://{proxy}/v2/models/iris/infer");
    // Warm the client side and the active pool alike for both runs.
    burst(&clients, &url).await;
    let before = burst(&clients, &url).await;
    let flip = Request::post(format!("http://{admin}/models/iris/flip"))
        .body(Empty::new())
        .expect("request");
    let flipped = admin_client.request(flip).await.expect("flip");
    assert!(flipped.status().is_success(), "flip: {}", flipped.status());
    let after = burst(&clients, &url).await;

    let _ = stop.send(());
    let _ = running.await;
    token.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    (before, after)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    println!(
        "first {REQUESTS} requests after a flip vs the {REQUESTS} before, {CLIENTS} keep-alive clients, {FLIPS} flips pooled"
    );
    println!(
        "warm: warm_connections = 8; cold: warm_connections = 0 (probes close their connections)"
    );
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>9}",
        "standby", "mean µs", "p50 µs", "p99 µs", "max µs"
    );
    let mut ratios = Vec::new();
    for (label, warm) in [("warm", 8), ("cold", 0)] {
        // A fresh proxy and upstreams per flip, so every flip meets a
        // standby exactly as the prober left it; samples pooled over flips.
        let (mut before, mut after) = (Latencies(Vec::new()), Latencies(Vec::new()));
        for _ in 0..FLIPS {
            let (b, a) = measure(warm).await;
            before.0.extend(b.0);
            after.0.extend(a.0);
        }
        for (when, l) in [("before", &before), ("after", &after)] {
            println!(
                "{:<14} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
                format!("{label} {when}"),
                micros(l.mean()),
                micros(l.quantile(0.5)),
                micros(l.quantile(0.99)),
                micros(l.max()),
            );
        }
        ratios.push((
            label,
            after.mean().as_secs_f64() / before.mean().as_secs_f64(),
            after.quantile(0.99).as_secs_f64() / before.quantile(0.99).as_secs_f64(),
            after.max().as_secs_f64() / before.max().as_secs_f64(),
        ));
    }
    println!();
    println!(
        "{:<14} {:>9} {:>9} {:>9}",
        "after/before", "mean", "p99", "max"
    );
    for (label, mean, p99, max) in ratios {
        println!("{label:<14} {mean:>9.2} {p99:>9.2} {max:>9.2}");
    }
}
