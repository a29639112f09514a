//! Not an open proxy, not a smuggling gadget: raw requests over TCP, and a
//! check that the upstream saw nothing of what was refused.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `raw` on a fresh connection; returns everything the proxy answered
/// until it closed the connection or went quiet.
async fn raw(proxy: &Proxy, raw: &str) -> String {
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(raw.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

async fn setup() -> (Upstream, Upstream, Proxy) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&model("iris", "/", &blue.url(), &green.url())).await;
    (blue, green, proxy)
}

#[tokio::test]
async fn connect_is_refused() {
    let (blue, green, proxy) = setup().await;
    let r = raw(
        &proxy,
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert_eq!(status(&r), 405, "{r}");
    assert!(r.contains("CONNECT is not supported"), "{r}");
    assert_eq!(blue.hits() + green.hits(), 0);
}

#[tokio::test]
async fn an_absolute_form_target_for_another_host_is_refused() {
    let (blue, green, proxy) = setup().await;
    let r = raw(
        &proxy,
        "GET http://evil.example/steal HTTP/1.1\r\nHost: iris.local\r\n\r\n",
    )
    .await;
    assert_eq!(status(&r), 400, "{r}");
    assert!(r.contains("not an open proxy"), "{r}");
    // No Host at all, with an absolute target: refused too.
    let r = raw(&proxy, "GET http://evil.example/ HTTP/1.1\r\n\r\n").await;
    assert_eq!(status(&r), 400, "{r}");
    assert_eq!(blue.hits() + green.hits(), 0);

    // The same host in both places is an ordinary request (RFC 9112 3.2.2).
    let r = raw(
        &proxy,
        "GET http://iris.local:8080/v2/models/iris HTTP/1.1\r\nHost: iris.local:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(blue.hits(), 1);
}

#[tokio::test]
async fn ambiguous_framing_never_reaches_the_upstream() {
    let (blue, green, proxy) = setup().await;
    let attempts = [
        // Two different lengths.
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        // TE.TE: chunked is not the final encoding.
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
        // An obfuscated encoding.
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        // Transfer-Encoding on HTTP/1.0.
        "POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // A length that is not a number.
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\nx",
    ];
    for attempt in attempts {
        let r = raw(&proxy, attempt).await;
        assert_eq!(status(&r), 400, "{attempt:?} -> {r}");
    }
    assert_eq!(
        blue.hits() + green.hits(),
        0,
        "the upstream saw a refused request"
    );
}
