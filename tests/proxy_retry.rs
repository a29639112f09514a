//! Retries over real sockets: a request whose connection to an endpoint is
//! refused goes once more, to another endpoint of the same pool, streamed
//! body included; two refusing endpoints are a 502 after exactly one retry;
//! a single-endpoint pool, the standby, a timeout and a reset after the
//! request was read are never retried.
//!
//! An endpoint refusing from the start fails the first probe round and is
//! out of rotation before any request, so the dead endpoints here are live
//! upstreams that pass that round and are then stopped, their port kept
//! ([`Refusing::replacing`]). The health settings keep them in rotation:
//! no second round, no passive ejection, and no warm connections, so a
//! request to one connects afresh and is refused.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, StatusCode};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use support::*;

/// Model `iris` with these endpoints per pool, and health that leaves an
/// endpoint in rotation once it passed the first probe (see the file doc).
fn iris(blue: &[String], green: &[String], extra: &str) -> String {
    format!(
        "[[models]]\nname = \"iris\"\npath_prefix = \"/\"\n{extra}\nblue.endpoints = {blue:?}\ngreen.endpoints = {green:?}\nhealth.interval = \"1h\"\nhealth.warm_connections = 0\nhealth.eject_after = 100000\n"
    )
}

async fn counter(proxy: &Proxy, name: &str, labels: &str) -> f64 {
    let series = format!("{name}{{{labels}}}");
    metric_value(proxy, &series)
        .await
        .unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

async fn retries(proxy: &Proxy) -> f64 {
    counter(
        proxy,
        "switchyard_upstream_retries_total",
        r#"model="iris",pool="blue""#,
    )
    .await
}

async fn upstream_errors(proxy: &Proxy, kind: &str) -> f64 {
    counter(
        proxy,
        "switchyard_upstream_errors_total",
        &format!(r#"kind="{kind}",model="iris",pool="blue""#),
    )
    .await
}

/// A blue pool of a dead endpoint and `live`, with one request held on
/// `live`: balancing (fewer requests in flight wins) then sends every new
/// request to the dead endpoint first. Returns the dead endpoint, the
/// proxy and the held request.
async fn dead_then_live(live: &Upstream) -> (Refusing, Proxy, JoinHandle<Reply>) {
    let dying = Upstream::start("dying").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&iris(&[dying.url(), live.url()], &[green.url()], "")).await;
    let dead = Refusing::replacing(dying).await;
    let url = proxy.url("/hold/infer");
    // Wherever it is sent first, the retry (if any) lands it on `live`.
    let held = tokio::spawn(async move { get(&url).await });
    live.wait_held(1).await;
    (dead, proxy, held)
}

// === retried ===

#[tokio::test]
async fn a_refused_connection_is_retried_on_another_endpoint_of_the_pool() {
    let live = Upstream::start("blue").await;
    let (dead, proxy, held) = dead_then_live(&live).await;
    let (retries_before, connects_before) = (
        retries(&proxy).await,
        upstream_errors(&proxy, "connect").await,
    );

    const N: usize = 6;
    for i in 0..N {
        // Both protocols on the client side: the retry is upstream's business.
        let client = if i % 2 == 0 { client() } else { h2_client() };
        let r = send(
            &client,
            Method::GET,
            &proxy.url("/v2/models/iris/infer"),
            full_body(""),
        )
        .await;
        assert_eq!(
            (r.status, r.pool(), r.text().as_str()),
            (StatusCode::OK, "blue", "blue"),
            "request {i}"
        );
    }
    // Each request went to the dead endpoint first, then once to the live one.
    assert_eq!(live.hits(), 1 + N);
    assert_eq!(retries(&proxy).await - retries_before, N as f64);
    assert_eq!(
        upstream_errors(&proxy, "connect").await - connects_before,
        N as f64
    );
    let d = endpoint_detail(&proxy, "iris", "blue", &dead.url()).await;
    assert!(
        d["consecutive_request_failures"].as_u64() >= Some(N as u64),
        "the failed attempts are passive failures of the dead endpoint: {d}"
    );
    let ok = r#"switchyard_requests_total{code="2xx",model="iris",pool="blue"}"#;
    let failed = r#"switchyard_requests_total{code="5xx",model="iris",pool="blue"}"#;
    assert_eq!(metric_value(&proxy, ok).await, Some(N as f64));
    assert_eq!(metric_value(&proxy, failed).await.unwrap_or(0.0), 0.0);

    live.release();
    let r = within("the held request", held).await.expect("held task");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_streamed_body_is_retried_whole_and_arrives_once() {
    let live = Upstream::start("blue").await;
    let (_dead, proxy, held) = dead_then_live(&live).await;
    let retries_before = retries(&proxy).await;

    let (tx, body) = channel_body();
    let url = proxy.url("/upload/infer");
    let upload = tokio::spawn(async move { send(&client(), Method::POST, &url, body).await });
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    tx.send(Ok(Frame::data(chunk.clone())))
        .await
        .expect("first chunk");
    // The first chunk reached the live endpoint through the retried request;
    // the rest follows it on the same stream.
    live.wait_upload_started().await;
    for _ in 0..3 {
        tx.send(Ok(Frame::data(chunk.clone())))
            .await
            .expect("chunk");
    }
    drop(tx);
    let r = within("the upload", upload).await.expect("upload task");
    assert_eq!(
        (r.status, r.pool()),
        (StatusCode::OK, "blue"),
        "{}",
        r.text()
    );
    assert_eq!(r.json()["bytes"], 4 * chunk.len());
    // The held request and the upload, nothing twice.
    assert_eq!(live.hits(), 2);
    assert_eq!(retries(&proxy).await - retries_before, 1.0);

    live.release();
    within("the held request", held).await.expect("held task");
    proxy.stop().await.unwrap();
}

// === not retried, or once only ===

#[tokio::test]
async fn two_refusing_endpoints_are_a_502_after_exactly_one_retry() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let green = Upstream::start("green").await;
    // Failover serves only a pool with no endpoint in rotation: both blue
    // endpoints are in rotation, so it must not serve the retry either.
    let proxy = Proxy::start(&iris(
        &[a.url(), b.url()],
        &[green.url()],
        "failover = true",
    ))
    .await;
    let a = Refusing::replacing(a).await;
    let b = Refusing::replacing(b).await;

    let r = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(r.pool(), "blue");
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
    assert!(r.headers.get("x-switchyard-failover").is_none());
    let error = r.json()["error"].as_str().unwrap_or_default().to_string();
    let named: Vec<_> = [a.url(), b.url()]
        .into_iter()
        .filter(|url| error.contains(url.as_str()))
        .collect();
    assert_eq!(named.len(), 1, "names the last endpoint tried: {error}");
    assert!(error.contains("could not be connected to"), "{error}");

    // One attempt on each: the retry went to the other endpoint, and there
    // was no third attempt.
    for dead in [&a, &b] {
        let d = endpoint_detail(&proxy, "iris", "blue", &dead.url()).await;
        assert_eq!(d["consecutive_request_failures"], 1, "{d}");
    }
    assert_eq!(retries(&proxy).await, 1.0);
    assert_eq!(upstream_errors(&proxy, "connect").await, 2.0);
    assert_eq!(green.hits(), 0);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_single_endpoint_pool_is_not_retried_not_even_on_the_standby() {
    let dying = Upstream::start("dying").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&iris(&[dying.url()], &[green.url()], "failover = true")).await;
    let dead = Refusing::replacing(dying).await;

    let r = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(r.pool(), "blue");
    assert!(r.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains(&dead.url())));
    assert_eq!(retries(&proxy).await, 0.0);
    assert_eq!(upstream_errors(&proxy, "connect").await, 1.0);
    assert_eq!(green.hits(), 0, "the standby is never a retry target");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_timeout_is_not_retried() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&iris(
        &[a.url(), b.url()],
        &[green.url()],
        "request_timeout = \"300ms\"",
    ))
    .await;

    // Held by whichever endpoint gets it, past the timeout.
    let r = get(&proxy.url("/hold/infer")).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.text());
    assert_eq!(
        (a.hits() + b.hits(), green.hits()),
        (1, 0),
        "only the endpoint that timed out saw the request"
    );
    assert_eq!(upstream_errors(&proxy, "timeout").await, 1.0);
    assert_eq!(retries(&proxy).await, 0.0);
    a.release();
    b.release();
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_reset_after_the_request_was_read_is_not_retried() {
    let resetting = Resetting::start().await;
    let live = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&iris(&[resetting.url(), live.url()], &[green.url()], "")).await;

    // Balancing spreads the requests; go on until the resetting endpoint
    // has had some. Every reset must be a 502, never a retry on `live`.
    let (mut ok, mut failed) = (0, 0);
    while resetting.requests() < 3 {
        assert!(ok + failed < 200, "3 resets in 200 requests");
        let r = get(&proxy.url("/v2/models/iris/infer")).await;
        match r.status {
            StatusCode::OK => ok += 1,
            StatusCode::BAD_GATEWAY => {
                let error = r.json()["error"].as_str().unwrap_or_default().to_string();
                assert!(error.contains(&resetting.url()), "{error}");
                failed += 1;
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    assert_eq!(failed, resetting.requests());
    assert_eq!(live.hits(), ok, "a reset request reached the live endpoint");
    assert_eq!(upstream_errors(&proxy, "reset").await, failed as f64);
    assert_eq!(retries(&proxy).await, 0.0);
    proxy.stop().await.unwrap();
}

// === a resetting endpoint ===

/// An endpoint that answers its probes (`GET /v2/health/ready`, 200) and
/// closes the connection on any other request once it has read its head,
/// without answering: the request was sent, then the connection broke.
struct Resetting {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Resetting {
    async fn start() -> Resetting {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if head.starts_with(b"GET /v2/health/ready ") {
                        let ok =
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
                        let _ = stream.write_all(ok).await;
                    } else {
                        counted.fetch_add(1, SeqCst);
                    }
                    // Dropped: closed without (another) answer.
                });
            }
        });
        Resetting {
            addr,
            requests,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(SeqCst)
    }
}

impl Drop for Resetting {
    fn drop(&mut self) {
        self.task.abort();
    }
}
