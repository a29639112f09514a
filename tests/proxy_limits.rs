//! Limits, each a config key: body size (413, before sending or mid-stream),
//! in-flight requests per model (503 with Retry-After), header count and
//! size (431), open connections (further accepts wait).

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use hyper::body::Frame;
use support::*;

async fn setup(proxy_extra: &str, model_extra: &str) -> (Upstream, Upstream, Proxy) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let models = format!(
        "{}{model_extra}\n",
        model("iris", "/", &blue.url(), &green.url())
    );
    let proxy = Proxy::start_with(proxy_extra, &models).await;
    (blue, green, proxy)
}

fn assert_json_error(r: &Reply, status: StatusCode, says: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.headers["content-type"], "application/json");
    let message = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(message.contains(says), "{message}");
}

#[tokio::test]
async fn a_body_declared_too_large_is_refused_before_anything_is_sent() {
    let (blue, _green, proxy) = setup("", "max_body_bytes = 1000").await;
    let r = post(&proxy.url("/upload"), vec![b'x'; 2000]).await;
    assert_json_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "max_body_bytes of 1000");
    assert_eq!(r.pool(), "blue");
    assert_eq!(blue.hits(), 0, "the upstream saw the oversized request");
    // At the limit is fine.
    let r = post(&proxy.url("/upload"), vec![b'x'; 1000]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["bytes"], 1000);
}

#[tokio::test]
async fn a_streamed_body_is_cut_at_the_limit() {
    let (_blue, _green, proxy) = setup("", "max_body_bytes = 1500").await;
    let (tx, body) = channel_body();
    let req = Request::builder()
        .method(Method::POST)
        .uri(proxy.url("/upload"))
        .body(body)
        .unwrap();
    let client = client();
    let sending = tokio::spawn(async move {
        for _ in 0..3 {
            // The proxy stops reading once over the limit; a send may fail then.
            if tx
                .send(Ok(Frame::data(Bytes::from(vec![b'y'; 1000]))))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let resp = within("the 413", client.request(req))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(resp.headers()["x-switchyard-pool"], "blue");
    let body = read_body(resp.into_body()).await;
    assert!(String::from_utf8_lossy(&body).contains("max_body_bytes of 1500"));
    sending.abort();
}

#[tokio::test]
async fn a_model_at_its_in_flight_cap_answers_503_with_retry_after() {
    let (blue, _green, proxy) = setup("", "max_in_flight = 2").await;
    let held: Vec<_> = (0..2)
        .map(|_| {
            let url = proxy.url("/hold");
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    blue.wait_held(2).await;

    let r = get(&proxy.url("/x")).await;
    assert_json_error(&r, StatusCode::SERVICE_UNAVAILABLE, "max_in_flight");
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.pool(), "blue");

    blue.release();
    for h in held {
        assert_eq!(h.await.unwrap().status, StatusCode::OK);
    }
    // Under the cap again: served.
    eventually("the model to accept requests again", || async {
        get(&proxy.url("/x")).await.status == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_431() {
    let (blue, _green, proxy) = setup("max_headers = 20\nmax_header_bytes = 8192", "").await;
    let mut req = Request::builder().uri(proxy.url("/x"));
    for i in 0..30 {
        req = req.header(format!("x-extra-{i}"), "1");
    }
    let r = client()
        .request(req.body(full_body("")).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    let req = Request::builder()
        .uri(proxy.url("/x"))
        .header("x-big", "z".repeat(10_000))
        .body(full_body(""))
        .unwrap();
    let r = client().request(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(blue.hits(), 0);

    // Within both limits: served.
    let req = Request::builder()
        .uri(proxy.url("/x"))
        .header("x-ok", "z".repeat(1000))
        .body(full_body(""))
        .unwrap();
    let r = client().request(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let (_blue, _green, proxy) = setup("max_connections = 2", "").await;
    let mut first = h1_connection(proxy.addr).await;
    let mut second = h1_connection(proxy.addr).await;
    for c in [&mut first, &mut second] {
        let r = c
            .send_request(
                Request::get("/x")
                    .header("host", "t")
                    .body(full_body(""))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        read_body(r.into_body()).await;
    }

    // The third connection is accepted by the kernel, not by the proxy: its
    // request waits.
    let mut third = h1_connection(proxy.addr).await;
    let waiting = third.send_request(
        Request::get("/x")
            .header("host", "t")
            .body(full_body(""))
            .unwrap(),
    );
    let mut waiting = Box::pin(waiting);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "a third connection was served while two were open"
    );
    drop(first);
    let r = within("the third connection to be served", waiting)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_client_trickling_its_headers_gets_408_and_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (blue, _green, proxy) = setup("header_read_timeout = \"300ms\"", "").await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    // One header byte after another, each well within the timeout: the
    // deadline counts from the head's start, so trickling does not extend it.
    let head = b"GET /x HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let (mut r, mut w) = s.split();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let mut next = 0;
    within("the proxy to answer 408 and close", async {
        loop {
            tokio::select! {
                n = r.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                },
                () = tokio::time::sleep(Duration::from_millis(20)), if got.is_empty() => {
                    if next < head.len() {
                        let _ = w.write_all(&head[next..=next]).await;
                        next += 1;
                    }
                }
            }
        }
    })
    .await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
    assert!(got.contains("connection: close"), "{got}");
    assert!(got.ends_with("\"}"), "a JSON body: {got}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered too early"
    );
    assert_eq!(blue.hits(), 0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_keepalive_timeout() {
    let (_blue, _green, proxy) = setup(
        "keepalive_timeout = \"300ms\"\nheader_read_timeout = \"30s\"",
        "",
    )
    .await;
    let mut c = h1_connection(proxy.addr).await;
    let started = tokio::time::Instant::now();
    let r = c
        .send_request(
            Request::get("/x")
                .header("host", "t")
                .body(full_body(""))
                .unwrap(),
        )
        .await
        .unwrap();
    read_body(r.into_body()).await;
    eventually("the idle keep-alive connection to be closed", || {
        let closed = c.is_closed();
        async move { closed }
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed too early"
    );

    // HTTP/2 too: no stream open and nothing received for that long.
    let mut c = h2_connection(proxy.addr).await;
    let r = c
        .send_request(Request::get("http://t/x").body(full_body("")).unwrap())
        .await
        .unwrap();
    read_body(r.into_body()).await;
    eventually("the idle HTTP/2 connection to be closed", || {
        let closed = c.is_closed();
        async move { closed }
    })
    .await;

    // A request that takes longer than the idle timeout is not idle.
    let mut c = h1_connection(proxy.addr).await;
    let slow = c.send_request(
        Request::get("/hold")
            .header("host", "t")
            .body(full_body(""))
            .unwrap(),
    );
    let (r, ()) = tokio::join!(slow, async {
        _blue.wait_held(1).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        _blue.release();
    });
    let r = r.expect("a held request outlives the idle timeout");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_burst_leaves_at_most_max_idle_per_endpoint_connections_open() {
    let (blue, _green, proxy) = setup(
        "max_idle_per_endpoint = 3",
        "health.warm_connections = 1\nhealth.interval = \"60s\"",
    )
    .await;
    // Ten requests at once: ten upstream connections.
    let held: Vec<_> = (0..10)
        .map(|_| {
            let url = proxy.url("/hold");
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    blue.wait_held(10).await;
    assert!(
        blue.connections() >= 10,
        "{} connections",
        blue.connections()
    );
    blue.release();
    for h in held {
        assert_eq!(h.await.unwrap().status, StatusCode::OK);
    }
    // Once the burst is over, only the idle cap's worth stays open.
    eventually("blue's idle connections to shrink to the cap", || async {
        let detail = proxy.admin_get("/models/iris").await.json();
        let open = detail["pools"]["blue"]["endpoints"][0]["open_connections"]
            .as_u64()
            .unwrap_or(u64::MAX);
        open <= 3
    })
    .await;
}

/// Sends `head_and_start` on a fresh connection and returns what the proxy
/// answers before closing, without ever sending the rest.
async fn stalled(proxy: &Proxy, head_and_start: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(head_and_start.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // The first response is enough; the connection may stay open.
    while !String::from_utf8_lossy(&got).contains("\"}") {
        match within("an answer", s.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn clients_that_stall_or_break_their_bodies_do_not_eject_the_endpoint() {
    let (blue, _green, proxy) = setup(
        "request_timeout = \"300ms\"",
        "health.eject_after = 2\nhealth.interval = \"1h\"",
    )
    .await;
    // Uploads that stop half-way: the client's fault, answered 408.
    for _ in 0..3 {
        let r = stalled(
            &proxy,
            "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n0123456789",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 408 "), "{r}");
        assert!(r.contains("request body was not received"), "{r}");
    }
    // A chunked body whose framing breaks after its head went upstream.
    for _ in 0..3 {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(
            b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
        blue.wait_upload_started().await;
        s.write_all(b"zz-not-a-size\r\n").await.unwrap();
        let mut got = Vec::new();
        let _ = within(
            "the proxy to answer or close",
            tokio::io::AsyncReadExt::read_to_end(&mut s, &mut got),
        )
        .await;
        let got = String::from_utf8_lossy(&got);
        assert!(got.is_empty() || got.starts_with("HTTP/1.1 400 "), "{got}");
    }
    // The endpoint served on all along: never counted as failing.
    let r = get(&proxy.url("/x")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let detail = endpoint_detail(&proxy, "iris", "blue", &blue.url()).await;
    assert_eq!(detail["state"], "healthy", "{detail}");
    let errors = metric_value(
        &proxy,
        "switchyard_upstream_errors_total{kind=\"timeout\",model=\"iris\",pool=\"blue\"}",
    )
    .await;
    assert_eq!(errors, Some(0.0));
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_without_a_408() {
    use tokio::io::AsyncReadExt;
    let (_blue, _green, proxy) = setup("header_read_timeout = \"300ms\"", "").await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut got = Vec::new();
    within("the proxy to close", s.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
}

#[tokio::test]
async fn empty_lines_between_requests_do_not_start_the_header_clock() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (blue, _green, proxy) = setup(
        "header_read_timeout = \"200ms\"\nkeepalive_timeout = \"30s\"",
        "",
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    // A request, then a stray CRLF after it (RFC 9112 2.2 allows it).
    s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = within("the first response", s.read(&mut buf))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 "));
    // Well past the header timeout: no 408, the connection is idle, not
    // half-way through a head. The next request is served on it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let n = within("the second response", s.read(&mut buf))
        .await
        .unwrap();
    let second = String::from_utf8_lossy(&buf[..n]);
    assert!(second.starts_with("HTTP/1.1 200 "), "{second}");
    assert_eq!(blue.hits(), 2);
}
