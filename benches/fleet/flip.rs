//! The fleet measure behind `benches/fleet/run.sh`: how long after a flip
//! returns the last instance of a fleet serves the new pool.
//!
//! Starts one etcd (Debian's `/usr/bin/etcd`, or `--etcd PATH`) on free
//! loopback ports in a temp dir, two model servers (blue and green), and N
//! switchyard instances sharing one prefix: as processes of the release
//! binary (`--mode processes`, the default; one worker thread each) or as
//! tasks in this process (`--mode tasks`). Then, `--flips` times: flip the
//! model on instance 0 (alternately to green and blue), and from the moment
//! the admin call has returned, ask every instance's proxy listener for a
//! request every millisecond (one keep-alive connection each) until it
//! answers from the new pool. The time to the last instance is one sample.
//! Prints p50, p99 and the maximum of those, and of the flip call itself.
//!
//!   fleet-bench [--instances N] [--flips N] [--mode processes|tasks]
//!               [--switchyard PATH] [--etcd PATH]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type HttpClient = Client<HttpConnector, Empty<Bytes>>;

const PREFIX: &str = "/switchyard/bench/";
/// How long any start-up wait may take.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How long one flip may take to reach every instance before the run fails.
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);

struct Args {
    instances: usize,
    flips: usize,
    tasks: bool,
    switchyard: PathBuf,
    etcd: PathBuf,
}

fn args() -> Result<Args, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/release/examples/fleet-bench -> target/release/switchyard
    let default_bin = exe
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("switchyard"), |d| d.join("switchyard"));
    let mut args = Args {
        instances: 5,
        flips: 100,
        tasks: false,
        switchyard: default_bin,
        etcd: PathBuf::from("/usr/bin/etcd"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--instances" => {
                args.instances = value()?.parse().map_err(|e| format!("--instances: {e}"))?
            }
            "--flips" => args.flips = value()?.parse().map_err(|e| format!("--flips: {e}"))?,
            "--mode" => {
                args.tasks = match value()?.as_str() {
                    "tasks" => true,
                    "processes" => false,
                    other => return Err(format!("--mode {other}: expected processes or tasks")),
                }
            }
            "--switchyard" => args.switchyard = PathBuf::from(value()?),
            "--etcd" => args.etcd = PathBuf::from(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.instances == 0 || args.flips == 0 {
        return Err("--instances and --flips must be at least 1".to_string());
    }
    Ok(args)
}

fn main() -> std::process::ExitCode {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// A free loopback port, found by binding port 0 and letting it go.
fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_etcd(bin: &Path, dir: &Path) -> Result<(Killed, String), BoxError> {
    if !bin.exists() {
        return Err(format!(
            "no etcd at {}: install Debian's etcd-server or pass --etcd PATH",
            bin.display()
        )
        .into());
    }
    let client = format!("http://127.0.0.1:{}", free_port()?);
    let peer = format!("http://127.0.0.1:{}", free_port()?);
    let log = std::fs::File::create(dir.join("etcd.log"))?;
    let child = Command::new(bin)
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.join("etcd"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("bench={peer}")])
        .args(["--logger", "zap", "--log-outputs", "stderr"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let child = Killed(child);
    let http = plain_client();
    wait_for("etcd to be healthy", || async {
        let answer = get(&http, &format!("{client}/health")).await.ok()?;
        (answer.0 == StatusCode::OK && answer.2.contains("true")).then_some(())
    })
    .await?;
    Ok((child, client))
}

fn plain_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET `url`: status, `x-switchyard-pool`, body.
async fn get(client: &HttpClient, url: &str) -> Result<(StatusCode, String, String), BoxError> {
    let response = client.get(url.parse()?).await?;
    let status = response.status();
    let pool = response
        .headers()
        .get("x-switchyard-pool")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, pool, String::from_utf8_lossy(&body).into_owned()))
}

async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> Result<T, BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let give_up = Instant::now() + READY_WITHIN;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > give_up {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A model server answering every request with its name.
async fn upstream(name: &'static str, token: CancellationToken) -> Result<SocketAddr, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let make = move |_: &switchyard::server::Accepted| {
            hyper::service::service_fn(
                move |_req: Request<switchyard::server::RequestBody>| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        name.as_bytes(),
                    ))))
                },
            )
        };
        switchyard::server::serve(
            "bench-upstream",
            listener,
            make,
            token,
            Duration::from_secs(1),
        )
        .await;
    });
    Ok(addr)
}

/// One instance's addresses.
struct Instance {
    proxy: SocketAddr,
    admin: SocketAddr,
}

fn config_text(
    etcd: &str,
    proxy: SocketAddr,
    admin: SocketAddr,
    blue: SocketAddr,
    green: SocketAddr,
) -> String {
    format!(
        "[proxy]\nlisten = \"{proxy}\"\nworker_threads = 1\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [state]\nbackend = \"etcd\"\nendpoints = [\"{etcd}\"]\nprefix = \"{PREFIX}\"\n\n\
         [[models]]\nname = \"iris\"\nblue.endpoints = [\"http://{blue}\"]\ngreen.endpoints = [\"http://{green}\"]\n"
    )
}

async fn run(args: Args) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let (_etcd, etcd_url) = start_etcd(&args.etcd, dir.path()).await?;
    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    let blue = upstream("blue", token.clone()).await?;
    let green = upstream("green", token.clone()).await?;

    let mut children = Vec::new();
    let mut instances = Vec::new();
    if !args.tasks && !args.switchyard.exists() {
        return Err(format!(
            "no switchyard binary at {}: cargo build --release, or pass --switchyard PATH",
            args.switchyard.display()
        )
        .into());
    }
    for i in 0..args.instances {
        if args.tasks {
            let proxy = TcpListener::bind("127.0.0.1:0").await?;
            let admin = TcpListener::bind("127.0.0.1:0").await?;
            let addrs = Instance {
                proxy: proxy.local_addr()?,
                admin: admin.local_addr()?,
            };
            let text = config_text(&etcd_url, addrs.proxy, addrs.admin, blue, green);
            let file = dir.path().join(format!("instance-{i}.toml"));
            let config = switchyard::Config::from_toml(&text, &file)
                .map_err(|e| format!("instance {i}: {e:?}"))?;
            let listeners = switchyard::Listeners {
                proxy,
                admin,
                preview: None,
            };
            let stop = token.clone();
            tokio::spawn(async move {
                if let Err(e) = switchyard::run(config, listeners, stop.cancelled_owned()).await {
                    eprintln!("instance {i} stopped: {}", switchyard::ErrorChain(&e));
                }
            });
            instances.push(addrs);
        } else {
            let addrs = Instance {
                proxy: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                admin: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            };
            let file = dir.path().join(format!("instance-{i}.toml"));
            std::fs::write(
                &file,
                config_text(&etcd_url, addrs.proxy, addrs.admin, blue, green),
            )?;
            let log = std::fs::File::create(dir.path().join(format!("instance-{i}.log")))?;
            let child = Command::new(&args.switchyard)
                .arg("serve")
                .arg("--config")
                .arg(&file)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?;
            children.push(Killed(child));
            instances.push(addrs);
        }
    }
    let http = plain_client();
    for (i, instance) in instances.iter().enumerate() {
        let url = format!("http://{}/readyz", instance.admin);
        wait_for(&format!("instance {i} to be ready"), || async {
            let (status, _, _) = get(&http, &url).await.ok()?;
            (status == StatusCode::OK).then_some(())
        })
        .await?;
    }
    eprintln!(
        "{} instances ({}) ready; {} flips",
        args.instances,
        if args.tasks {
            "tasks in this process"
        } else {
            "processes"
        },
        args.flips
    );

    // One keep-alive client per instance, so a poll is one request.
    let pollers: Vec<(HttpClient, String)> = instances
        .iter()
        .map(|i| (plain_client(), format!("http://{}/", i.proxy)))
        .collect();
    for (client, url) in &pollers {
        get(client, url).await?;
    }
    let admin = plain_client_full();
    let flip_url = format!("http://{}/models/iris/flip", instances[0].admin);
    let mut to_last = Vec::with_capacity(args.flips);
    let mut flip_calls = Vec::with_capacity(args.flips);
    let mut active = "blue";
    for n in 0..args.flips {
        let target = if active == "blue" { "green" } else { "blue" };
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{flip_url}?expect={active}"))
            .body(Full::new(Bytes::new()))?;
        let sent = Instant::now();
        let response = admin.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let returned = Instant::now();
        if status != StatusCode::OK {
            return Err(format!(
                "flip {n} answered {status}: {}",
                String::from_utf8_lossy(&body)
            )
            .into());
        }
        flip_calls.push(returned - sent);
        let mut polls = tokio::task::JoinSet::new();
        for (client, url) in &pollers {
            let (client, url) = (client.clone(), url.clone());
            polls.spawn(async move {
                let give_up = returned + CONVERGE_WITHIN;
                loop {
                    if let Ok((_, pool, _)) = get(&client, &url).await {
                        if pool == target {
                            return Ok(Instant::now() - returned);
                        }
                    }
                    if Instant::now() > give_up {
                        return Err(format!(
                            "{url} did not serve {target} within {CONVERGE_WITHIN:?}"
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
        }
        let mut slowest = Duration::ZERO;
        while let Some(done) = polls.join_next().await {
            slowest = slowest.max(done??);
        }
        to_last.push(slowest);
        active = target;
        // A pause, so flips are measured one by one, not as a queue.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let report = |name: &str, samples: &mut Vec<Duration>| {
        samples.sort();
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i].as_secs_f64() * 1000.0
        };
        println!(
            "{name}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            at(0.50),
            at(0.99),
            at(1.0)
        );
    };
    println!(
        "fleet of {} instances ({}), {} flips:",
        args.instances,
        if args.tasks { "tasks" } else { "processes" },
        args.flips
    );
    report("  flip call (POST /flip on instance 0)", &mut flip_calls);
    report(
        "  flip returned -> last instance serving the new pool",
        &mut to_last,
    );
    token.cancel();
    Ok(())
}

fn plain_client_full() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}
