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

#[tokio::test]
async fn connect_is_refused() {
    let (blue, green, proxy) = iris_blue_green().await;
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
    let (blue, green, proxy) = iris_blue_green().await;
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
    let (blue, green, proxy) = iris_blue_green().await;
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

#[tokio::test]
async fn classic_smuggling_payloads_are_refused_before_the_upstream() {
    let (blue, green, proxy) = iris_blue_green().await;
    let attempts = [
        // CL.TE: a front end reading Content-Length would pass "G" on as
        // the start of the next request.
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        // TE.CL: a back end reading Content-Length would take the chunk as
        // a second request.
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n",
        // The same, Transfer-Encoding first (hyper alone would drop the
        // length and forward it).
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        // TE.TE: one of two encodings obfuscated.
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-encoding: cow\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        // Chunked framing broken in the first bytes of the body.
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcGET /admin HTTP/1.1\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n",
    ];
    for attempt in attempts {
        let r = raw(&proxy, attempt).await;
        assert_eq!(status(&r), 400, "{attempt:?} -> {r}");
        assert!(r.contains("\"error\""), "a JSON error: {r}");
        assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
        assert_eq!(
            r.matches("HTTP/1.1 ").count(),
            1,
            "one response, nothing smuggled behind it: {r}"
        );
    }
    assert_eq!(
        blue.hits() + green.hits(),
        0,
        "the upstream saw a refused request"
    );
}

#[tokio::test]
async fn a_smuggling_attempt_pipelined_behind_valid_requests_is_refused() {
    let (blue, _green, proxy) = iris_blue_green().await;
    let r = raw(
        &proxy,
        "GET /v2/models/iris HTTP/1.1\r\nHost: x\r\n\r\n\
         POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
         POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    )
    .await;
    let statuses: Vec<u16> = r
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| status(&r[i..]))
        .collect();
    assert_eq!(statuses, [200, 200, 400], "{r}");
    assert!(r.contains("\"body_len\":5"), "the echo went through: {r}");
    assert_eq!(blue.hits(), 2, "only the two valid requests went upstream");
}

#[tokio::test]
async fn valid_pipelined_requests_pass_however_the_bytes_are_cut() {
    let (blue, _green, proxy) = iris_blue_green().await;
    let stream = b"GET /v2/models/iris HTTP/1.1\r\nHost: x\r\n\r\n\
POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
5;ext=1\r\nworld\r\n3\r\n!!!\r\n0\r\nX-Trailer: t\r\n\r\n\
GET /v2/models/iris HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    for piece in [stream.len(), 7, 1] {
        let before = blue.hits();
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        for chunk in stream.chunks(piece) {
            s.write_all(chunk).await.expect("write");
            s.flush().await.expect("flush");
            tokio::task::yield_now().await;
        }
        let mut out = Vec::new();
        within("all four responses", s.read_to_end(&mut out))
            .await
            .expect("read");
        let r = String::from_utf8_lossy(&out);
        let statuses: Vec<u16> = r
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| status(&r[i..]))
            .collect();
        assert_eq!(statuses, [200, 200, 200, 200], "pieces of {piece}: {r}");
        assert!(r.contains("\"body_len\":5"), "the sized body: {r}");
        assert!(r.contains("\"body_len\":8"), "the chunked body: {r}");
        assert_eq!(blue.hits() - before, 4);
    }
}
