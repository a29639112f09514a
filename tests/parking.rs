//! Parking idle HTTP/1.1 client connections: after 50 ms with no request in
//! flight and nothing received, the proxy drops hyper's connection and its
//! buffers and keeps only the socket. What a client must see: nothing. The
//! connection serves its next request as before; one parked in the middle of
//! a request head never is; the keep-alive timeout and the drain still close
//! it; HTTP/2 and TLS connections are not parked. The gauges say which
//! connections are open and which parked.

mod support;

use std::time::Duration;

use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

const OPEN: &str = r#"switchyard_client_connections{listener="proxy"}"#;
const PARKED: &str = r#"switchyard_client_connections_parked{listener="proxy"}"#;

async fn setup(proxy_extra: &str) -> (Upstream, Upstream, Proxy) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy =
        Proxy::start_with(proxy_extra, &model("iris", "/", &blue.url(), &green.url())).await;
    (blue, green, proxy)
}

async fn gauge(proxy: &Proxy, series: &str) -> f64 {
    metric_value(proxy, series).await.unwrap_or(0.0)
}

async fn wait_gauge(proxy: &Proxy, series: &str, value: f64) {
    eventually(&format!("{series} to be {value}"), || async move {
        gauge(proxy, series).await == value
    })
    .await;
}

const REQUEST: &[u8] = b"GET /v2/models/iris/infer HTTP/1.1\r\nhost: t\r\n\r\n";

/// Reads one response with a `content-length` body; returns it whole.
async fn read_response(socket: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .expect("a content-length");
            if buf.len() >= end + 4 + length {
                return text;
            }
        }
        let n = within("a response", socket.read(&mut chunk))
            .await
            .expect("read");
        assert!(
            n > 0,
            "connection closed mid-response: {text:?}",
            text = String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn an_idle_connection_is_parked_and_serves_its_next_request() {
    let (blue, _green, proxy) = setup("").await;
    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();

    for round in 1..=3 {
        socket.write_all(REQUEST).await.unwrap();
        let response = read_response(&mut socket).await;
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "round {round}: {response}"
        );
        assert!(response.ends_with("blue"), "round {round}: {response}");
        // Idle: parked, and still open.
        wait_gauge(&proxy, PARKED, 1.0).await;
        assert_eq!(gauge(&proxy, OPEN).await, 1.0);
    }
    assert_eq!(blue.hits(), 3);

    // A request that arrives in two parts, the second after a pause, does
    // not wake a parked connection into a broken one.
    socket.write_all(&REQUEST[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        gauge(&proxy, PARKED).await,
        0.0,
        "a connection with half a head in is not parked"
    );
    socket.write_all(&REQUEST[10..]).await.unwrap();
    let response = read_response(&mut socket).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    drop(socket);
    wait_gauge(&proxy, OPEN, 0.0).await;
    wait_gauge(&proxy, PARKED, 0.0).await;
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn pipelined_requests_on_a_parked_connection_are_all_answered_in_order() {
    let (blue, _green, proxy) = setup("").await;
    blue.set_reply("/a", 200, "first");
    blue.set_reply("/b", 200, "second");
    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
    socket.write_all(REQUEST).await.unwrap();
    read_response(&mut socket).await;
    wait_gauge(&proxy, PARKED, 1.0).await;

    socket
        .write_all(b"GET /a HTTP/1.1\r\nhost: t\r\n\r\nGET /b HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let first = read_response(&mut socket).await;
    assert!(first.ends_with("first"), "{first}");
    let second = read_response(&mut socket).await;
    assert!(second.ends_with("second"), "{second}");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_parked_connection_still_closes_after_keepalive_timeout() {
    let (_blue, _green, proxy) = setup("keepalive_timeout = \"400ms\"").await;
    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    socket.write_all(REQUEST).await.unwrap();
    read_response(&mut socket).await;
    wait_gauge(&proxy, PARKED, 1.0).await;

    let mut rest = [0u8; 16];
    let n = within("the keep-alive timeout to close it", socket.read(&mut rest))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a word");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "closed too early: {:?}",
        started.elapsed()
    );
    wait_gauge(&proxy, OPEN, 0.0).await;
    wait_gauge(&proxy, PARKED, 0.0).await;
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn the_drain_closes_a_parked_connection_at_once() {
    let (_blue, _green, proxy) = setup("drain_timeout = \"30s\"").await;
    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
    socket.write_all(REQUEST).await.unwrap();
    read_response(&mut socket).await;
    wait_gauge(&proxy, PARKED, 1.0).await;

    let started = tokio::time::Instant::now();
    proxy.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "an idle connection does not hold the drain: {:?}",
        started.elapsed()
    );
    let mut rest = [0u8; 16];
    let n = within("the closed connection's end", socket.read(&mut rest))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn http2_connections_are_not_parked_and_keep_serving() {
    let (_blue, _green, proxy) = setup("").await;
    let mut c = h2_connection(proxy.addr).await;
    for _ in 0..2 {
        let r = c
            .send_request(
                Request::get("http://t/v2/models/iris/infer")
                    .body(full_body(""))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(read_body(r.into_body()).await, "blue");
        // Longer than the park delay: an HTTP/2 connection stays as it is.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(gauge(&proxy, PARKED).await, 0.0);
        assert_eq!(gauge(&proxy, OPEN).await, 1.0);
    }
    proxy.stop().await.unwrap();
}
