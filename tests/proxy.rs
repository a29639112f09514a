//! Switching as a client sees it: flips under concurrent load over
//! HTTP/1.1 keep-alive and HTTP/2, one open connection following the
//! switch on its very next request, a slow request finishing on the pool
//! it started on, and graceful shutdown letting a held request finish (and
//! cutting one still held when the drain time is up).

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use http::{header, Method, Request, StatusCode};
use hyper::client::conn::{http1, http2};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use support::*;

/// Client tasks sending requests in a loop while the test flips.
const WORKERS: usize = 16;
/// Flips made while the workers run.
const FLIPS: usize = 20;
/// Responses the workers must receive between two flips, so every flip
/// lands in the middle of traffic.
const RESPONSES_BETWEEN_FLIPS: usize = 2 * WORKERS;

/// One client connection to the proxy, HTTP/1.1 or HTTP/2. Every request
/// goes over that one connection: if the proxy closed it, sending fails.
enum Conn {
    H1(http1::SendRequest<TestBody>, SocketAddr),
    H2(http2::SendRequest<TestBody>, SocketAddr),
}

// === impl Conn ===

impl Conn {
    async fn h1(addr: SocketAddr) -> Conn {
        Conn::H1(h1_connection(addr).await, addr)
    }

    async fn h2(addr: SocketAddr) -> Conn {
        Conn::H2(h2_connection(addr).await, addr)
    }

    /// Another stream on the same HTTP/2 connection.
    fn h2_clone(&self) -> Conn {
        match self {
            Conn::H2(sender, addr) => Conn::H2(sender.clone(), *addr),
            Conn::H1(..) => panic!("an HTTP/1.1 connection cannot be shared"),
        }
    }

    /// GETs `path` and reads the whole response; `Err` on transport errors.
    async fn get(&mut self, path: &str) -> Result<Reply, BoxError> {
        let response = match self {
            Conn::H1(sender, addr) => {
                let req = Request::builder()
                    .method(Method::GET)
                    .uri(path)
                    .header(header::HOST, addr.to_string())
                    .body(full_body(""))?;
                sender.ready().await?;
                sender.send_request(req).await?
            }
            Conn::H2(sender, addr) => {
                let req = Request::builder()
                    .method(Method::GET)
                    .uri(format!("http://{addr}{path}"))
                    .body(full_body(""))?;
                sender.ready().await?;
                sender.send_request(req).await?
            }
        };
        let (parts, body) = response.into_parts();
        let body = http_body_util::BodyExt::collect(body).await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Like [`Conn::get`], but panics on a transport error or after the deadline.
    async fn must_get(&mut self, path: &str) -> Reply {
        within(&format!("GET {path}"), self.get(path))
            .await
            .unwrap_or_else(|e| panic!("GET {path} failed: {e}"))
    }
}

async fn blue_green() -> (Upstream, Upstream, Proxy) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&model("iris", "/", &blue.url(), &green.url())).await;
    (blue, green, proxy)
}

/// Flips iris from `from` to the other pool and checks the admin API agreed.
async fn flip(proxy: &Proxy, from: &str) {
    let r = proxy
        .admin_post(&format!("/models/iris/flip?expect={from}"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "flip from {from}: {}", r.text());
}

fn pool_after(flips: usize) -> &'static str {
    if flips % 2 == 0 {
        "blue"
    } else {
        "green"
    }
}

// === flips under load ===

/// Counts flips on both sides of the admin call. A request that starts once
/// `done == k` and ends while `started == k` ran wholly between flip k and
/// flip k + 1, so it must have been answered by the pool active after flip k.
#[derive(Default)]
struct FlipClock {
    started: AtomicUsize,
    done: AtomicUsize,
}

#[derive(Default)]
struct Tally {
    responses: usize,
    pools: BTreeSet<String>,
    failures: Vec<String>,
}

async fn worker(
    mut conn: Conn,
    clock: Arc<FlipClock>,
    served: Arc<watch::Sender<usize>>,
    stop: CancellationToken,
) -> Tally {
    let mut tally = Tally::default();
    while !stop.is_cancelled() {
        let before = clock.done.load(SeqCst);
        let result = conn.get("/v2/models/iris/infer").await;
        let after = clock.started.load(SeqCst);
        match result {
            Err(e) => {
                tally.failures.push(format!("transport error: {e}"));
                // The connection is gone: stop the test now and report,
                // rather than let the flipper wait for traffic that never comes.
                stop.cancel();
                break;
            }
            Ok(r) => {
                tally.responses += 1;
                if r.status != StatusCode::OK {
                    tally
                        .failures
                        .push(format!("status {}: {}", r.status, r.text()));
                }
                if r.pool() != r.text() {
                    tally.failures.push(format!(
                        "x-switchyard-pool {:?} but the body came from {:?}",
                        r.pool(),
                        r.text()
                    ));
                }
                if before == after && r.pool() != pool_after(before) {
                    tally.failures.push(format!(
                        "request made wholly after flip {before} was answered by {:?}, not {}",
                        r.pool(),
                        pool_after(before)
                    ));
                }
                tally.pools.insert(r.pool().to_string());
            }
        }
        served.send_modify(|n| *n += 1);
    }
    tally
}

async fn flip_under_load(conns: Vec<Conn>, blue: Upstream, green: Upstream, proxy: Proxy) {
    let clock = Arc::new(FlipClock::default());
    let served = Arc::new(watch::Sender::new(0usize));
    let stop = CancellationToken::new();
    let mut workers = JoinSet::new();
    for conn in conns {
        workers.spawn(worker(
            conn,
            Arc::clone(&clock),
            Arc::clone(&served),
            stop.clone(),
        ));
    }

    let mut responses = served.subscribe();
    // False when a worker lost its connection: stop flipping and report.
    let mut wait_for_traffic = async |what: String| {
        let target = *responses.borrow_and_update() + RESPONSES_BETWEEN_FLIPS;
        tokio::select! {
            seen = within(&what, responses.wait_for(|n| *n >= target)) => {
                seen.expect("workers alive");
                true
            }
            () = stop.cancelled() => false,
        }
    };
    for i in 0..FLIPS {
        if !wait_for_traffic(format!(
            "{RESPONSES_BETWEEN_FLIPS} responses before flip {i}"
        ))
        .await
        {
            break;
        }
        clock.started.fetch_add(1, SeqCst);
        flip(&proxy, pool_after(i)).await;
        clock.done.fetch_add(1, SeqCst);
    }
    wait_for_traffic(format!(
        "{RESPONSES_BETWEEN_FLIPS} responses after the last flip"
    ))
    .await;
    stop.cancel();

    let mut total = Tally::default();
    while let Some(joined) = within("workers to stop", workers.join_next()).await {
        let tally = joined.expect("worker did not panic");
        total.responses += tally.responses;
        total.pools.extend(tally.pools);
        total.failures.extend(tally.failures);
    }
    assert!(
        total.failures.is_empty(),
        "{} failure(s) in {} responses, first ones:\n{}",
        total.failures.len(),
        total.responses,
        total.failures[..total.failures.len().min(10)].join("\n")
    );
    assert_eq!(
        total.pools,
        BTreeSet::from(["blue".to_string(), "green".to_string()])
    );
    assert!(total.responses >= (FLIPS + 1) * RESPONSES_BETWEEN_FLIPS);
    // Every response came from exactly one upstream request: no retries, no losses.
    assert_eq!(blue.hits() + green.hits(), total.responses);
    proxy.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flips_under_load_over_http1_keep_alive_lose_nothing() {
    let (blue, green, proxy) = blue_green().await;
    let mut conns = Vec::with_capacity(WORKERS);
    for _ in 0..WORKERS {
        conns.push(Conn::h1(proxy.addr).await);
    }
    flip_under_load(conns, blue, green, proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flips_under_load_over_http2_lose_nothing() {
    let (blue, green, proxy) = blue_green().await;
    // All workers multiplex their streams over one HTTP/2 connection.
    let conn = Conn::h2(proxy.addr).await;
    let conns = (0..WORKERS).map(|_| conn.h2_clone()).collect();
    flip_under_load(conns, blue, green, proxy).await;
}

// === one connection follows the switch ===

async fn open_connection_follows_each_switch(mut conn: Conn, proxy: &Proxy) {
    let r = conn.must_get("/v2/models/iris/infer").await;
    assert_eq!(
        (r.status, r.pool(), r.text().as_str()),
        (StatusCode::OK, "blue", "blue")
    );
    for i in 0..4 {
        flip(proxy, pool_after(i)).await;
        let want = pool_after(i + 1);
        let r = conn.must_get("/v2/models/iris/infer").await;
        assert_eq!(
            (r.status, r.pool(), r.text().as_str()),
            (StatusCode::OK, want, want),
            "first request on the open connection after flip {}",
            i + 1
        );
    }
}

#[tokio::test]
async fn an_open_http1_connection_sees_the_switch_on_its_next_request() {
    let (_blue, _green, proxy) = blue_green().await;
    let conn = Conn::h1(proxy.addr).await;
    open_connection_follows_each_switch(conn, &proxy).await;
}

#[tokio::test]
async fn an_open_http2_connection_sees_the_switch_on_its_next_request() {
    let (_blue, _green, proxy) = blue_green().await;
    let conn = Conn::h2(proxy.addr).await;
    open_connection_follows_each_switch(conn, &proxy).await;
}

// === requests in flight ===

#[tokio::test]
async fn a_slow_request_finishes_on_the_pool_it_started_on() {
    let (blue, green, proxy) = blue_green().await;
    let url = proxy.url("/hold/infer");
    let held = tokio::spawn(async move { get(&url).await });
    blue.wait_held(1).await;

    flip(&proxy, "blue").await;
    for _ in 0..3 {
        let r = get(&proxy.url("/v2/models/iris/infer")).await;
        assert_eq!(
            (r.status, r.pool(), r.text().as_str()),
            (StatusCode::OK, "green", "green")
        );
    }
    assert!(!held.is_finished(), "the held request ended before release");
    assert_eq!(green.hits(), 3);

    blue.release();
    let r = within("the held request", held)
        .await
        .expect("request task");
    assert_eq!(
        (r.status, r.pool(), r.text().as_str()),
        (StatusCode::OK, "blue", "blue")
    );
    assert_eq!(blue.hits(), 1);
}

// === graceful shutdown ===

async fn shutdown_lets_a_held_request_finish(h2: bool) {
    let (blue, _green, proxy) = blue_green().await;
    let addr = proxy.addr;
    let mut conn = if h2 {
        Conn::h2(addr).await
    } else {
        Conn::h1(addr).await
    };
    let held = tokio::spawn(async move { conn.get("/hold/infer").await });
    blue.wait_held(1).await;

    let stopping = tokio::spawn(proxy.stop());
    eventually("the proxy to refuse new connections", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(
        !stopping.is_finished(),
        "shutdown finished while a request was still held"
    );

    blue.release();
    let r = within("the held request", held)
        .await
        .expect("request task")
        .expect("the held request completes over its connection");
    assert_eq!(
        (r.status, r.pool(), r.text().as_str()),
        (StatusCode::OK, "blue", "blue")
    );
    within("shutdown", stopping)
        .await
        .expect("stop task")
        .expect("run returns Ok after draining");
}

#[tokio::test]
async fn shutdown_drains_a_held_http1_request() {
    shutdown_lets_a_held_request_finish(false).await;
}

#[tokio::test]
async fn shutdown_drains_a_held_http2_request() {
    shutdown_lets_a_held_request_finish(true).await;
}

#[tokio::test]
async fn shutdown_cuts_a_request_still_held_after_the_drain_timeout() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start_with(
        "drain_timeout = \"200ms\"",
        &model("iris", "/", &blue.url(), &green.url()),
    )
    .await;
    let mut conn = Conn::h1(proxy.addr).await;
    let held = tokio::spawn(async move { conn.get("/hold/infer").await });
    blue.wait_held(1).await;

    let started = tokio::time::Instant::now();
    proxy
        .stop()
        .await
        .expect("run returns Ok after the drain timeout");
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(200),
        "shutdown did not wait for the drain timeout: {took:?}"
    );

    // The drain is over: the request still held must be cut, not left
    // running on a proxy that has returned from `run`.
    let result = within("the held request to be cut", held)
        .await
        .expect("request task");
    assert!(
        result.is_err(),
        "a request held past the drain timeout completed: {:?}",
        result.map(|r| r.status)
    );
}
