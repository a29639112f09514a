//! Parking idle HTTP/1.1 client connections: after 50 ms with no request in
//! flight and nothing received, the proxy drops hyper's connection and its
//! buffers and keeps only the socket. What a client must see: nothing. The
//! connection serves its next request as before; one in the middle of a
//! request head, or with only empty lines received, is not parked (and its
//! response does not close it); one whose large response took a while to
//! flush is; the keep-alive timeout, the header timeout and the drain still
//! apply; HTTP/2 connections are not parked. The gauges say which
//! connections are open and which parked.
//!
//! "Not parked" is checked against a clock connection: a second connection
//! that is parked proves the park delay has passed for the first.

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

/// A connection that has made one request and then idles: once it is
/// parked, the park delay has passed for every connection idle since before
/// it was opened.
async fn clock(proxy: &Proxy, parked_before: f64) -> TcpStream {
    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
    socket.write_all(REQUEST).await.unwrap();
    read_response(&mut socket).await;
    wait_gauge(proxy, PARKED, parked_before + 1.0).await;
    socket
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
    wait_gauge(&proxy, PARKED, 0.0).await;
    let _clock = clock(&proxy, 0.0).await;
    assert_eq!(
        gauge(&proxy, PARKED).await,
        1.0,
        "the clock only: a connection with half a head in is not parked"
    );
    socket.write_all(&REQUEST[10..]).await.unwrap();
    let response = read_response(&mut socket).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    drop(socket);
    drop(_clock);
    wait_gauge(&proxy, OPEN, 0.0).await;
    wait_gauge(&proxy, PARKED, 0.0).await;
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn empty_lines_before_a_request_neither_park_nor_close_the_connection() {
    let (blue, _green, proxy) = setup("").await;
    // Fresh, and after a parked request: empty lines, a pause, a request.
    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
    for round in 1..=2 {
        socket.write_all(b"\r\n").await.unwrap();
        let clock = clock(&proxy, 0.0).await;
        assert_eq!(
            gauge(&proxy, PARKED).await,
            1.0,
            "round {round}: the clock only"
        );
        socket.write_all(REQUEST).await.unwrap();
        let response = read_response(&mut socket).await;
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "round {round}: {response}"
        );
        assert!(
            !response.to_ascii_lowercase().contains("connection: close"),
            "round {round}: keep-alive stays on: {response}"
        );
        drop(clock);
        wait_gauge(&proxy, OPEN, 1.0).await;
        wait_gauge(&proxy, PARKED, 1.0).await;
    }
    // Still open, still served.
    socket.write_all(REQUEST).await.unwrap();
    assert!(read_response(&mut socket).await.ends_with("blue"));
    assert_eq!(blue.hits(), 3 + 2, "three here, one per clock");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_connection_whose_large_response_flushed_late_is_parked_too() {
    let (blue, _green, proxy) = setup("").await;
    blue.set_reply("/big", 200, vec![b'a'; 4 << 20]);
    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
    socket
        .write_all(b"GET /big HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    // Read only once the upstream has answered: the proxy's writes have
    // filled the socket buffers by then, so its last flush waits on us.
    eventually("blue to answer", || async { blue.hits() == 1 }).await;
    let response = read_response(&mut socket).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{}", &response[..40]);
    wait_gauge(&proxy, PARKED, 1.0).await;
    socket.write_all(REQUEST).await.unwrap();
    assert!(read_response(&mut socket).await.ends_with("blue"));
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_head_begun_after_parking_still_has_the_header_timeout() {
    let (blue, _green, proxy) =
        setup("header_read_timeout = \"300ms\"\nkeepalive_timeout = \"30s\"").await;
    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
    socket.write_all(REQUEST).await.unwrap();
    read_response(&mut socket).await;
    wait_gauge(&proxy, PARKED, 1.0).await;

    let started = tokio::time::Instant::now();
    socket.write_all(&REQUEST[..10]).await.unwrap();
    let mut answer = Vec::new();
    within("the 408 and the close", socket.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(blue.hits(), 1);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn requests_pipelined_on_a_resumed_connection_are_answered_in_order() {
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

/// Waits for the proxy to close `socket` at its keep-alive timeout, without
/// a word: how long after `since` it did.
async fn closed_after(socket: &mut TcpStream, since: tokio::time::Instant) -> Duration {
    let mut rest = [0u8; 16];
    let n = within("the keep-alive timeout to close it", socket.read(&mut rest))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a word");
    since.elapsed()
}

#[tokio::test]
async fn a_parked_connection_still_closes_after_keepalive_timeout() {
    let (_blue, _green, proxy) = setup("keepalive_timeout = \"400ms\"").await;
    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    socket.write_all(REQUEST).await.unwrap();
    read_response(&mut socket).await;
    wait_gauge(&proxy, PARKED, 1.0).await;

    let elapsed = closed_after(&mut socket, started).await;
    assert!(
        elapsed >= Duration::from_millis(400),
        "closed too early: {elapsed:?}"
    );
    // The park delay is part of the keep-alive timeout, not added to it.
    assert!(elapsed < Duration::from_secs(3), "closed late: {elapsed:?}");
    wait_gauge(&proxy, OPEN, 0.0).await;
    wait_gauge(&proxy, PARKED, 0.0).await;
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_resumed_connection_gets_a_whole_keepalive_timeout_again() {
    let (blue, _green, proxy) = setup("keepalive_timeout = \"600ms\"").await;
    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
    socket.write_all(REQUEST).await.unwrap();
    read_response(&mut socket).await;
    wait_gauge(&proxy, PARKED, 1.0).await;

    // Resumed well before its deadline, then parked again: the first
    // deadline no longer applies, a new one counts from the last response.
    tokio::time::sleep(Duration::from_millis(300)).await;
    socket.write_all(REQUEST).await.unwrap();
    let response = read_response(&mut socket).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let answered = tokio::time::Instant::now();
    wait_gauge(&proxy, PARKED, 1.0).await;

    // The old deadline was about 300 ms after `answered`; the new one is
    // 600 ms after the proxy sent the response (a little before
    // `answered`, by the time the client took to read it).
    let idle = closed_after(&mut socket, answered).await;
    assert!(
        idle >= Duration::from_millis(500),
        "closed at its first deadline: {idle:?}"
    );
    assert!(idle < Duration::from_secs(3), "closed late: {idle:?}");
    assert_eq!(blue.hits(), 2);
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
    for round in 0..2 {
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
        // Once an HTTP/1.1 connection opened later is parked, the park
        // delay has passed for this one: it stays as it is.
        let clock = clock(&proxy, 0.0).await;
        assert_eq!(
            gauge(&proxy, PARKED).await,
            1.0,
            "round {round}: the clock only"
        );
        assert_eq!(gauge(&proxy, OPEN).await, 2.0);
        drop(clock);
        wait_gauge(&proxy, PARKED, 0.0).await;
    }
    proxy.stop().await.unwrap();
}
