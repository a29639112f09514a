//! Bodies stream through the proxy both ways: a response's first chunk
//! reaches the client before the upstream has sent its last, a 100 MB
//! upload reaches the upstream while the client is still sending it, and a
//! gRPC call to an h2c upstream keeps its trailers.

mod support;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Frame;

use support::*;

/// `name` on `/` with both pools speaking h2c, as gRPC model servers do.
fn h2c_model(name: &str, blue: &str, green: &str) -> String {
    format!(
        "[[models]]\nname = {name:?}\npath_prefix = \"/\"\n\
         blue.endpoints = [{blue:?}]\nblue.protocol = \"h2c\"\n\
         green.endpoints = [{green:?}]\ngreen.protocol = \"h2c\"\n"
    )
}

// === response streaming ===

async fn first_chunk_arrives_before_the_last_is_sent(h2: bool) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&model("llm", "/", &blue.url(), &green.url())).await;
    let client = if h2 { h2_client() } else { client() };
    let req = Request::get(proxy.url("/stream/generate"))
        .body(full_body(""))
        .unwrap();
    let response = within("response headers", client.request(req))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-switchyard-pool"], "blue");

    let mut body = response.into_body();
    // The upstream sends `last` only after `release`, so reading `first`
    // now proves the proxy passed it on without waiting for the end.
    let first = within("the first chunk", body.frame())
        .await
        .expect("a frame")
        .expect("no body error");
    assert_eq!(first.into_data().ok(), Some(Bytes::from_static(b"first\n")));

    blue.release();
    let rest = within("the rest of the body", body.collect())
        .await
        .expect("body ends cleanly")
        .to_bytes();
    assert_eq!(rest, Bytes::from_static(b"last\n"));
}

#[tokio::test]
async fn a_streamed_response_reaches_an_http1_client_chunk_by_chunk() {
    first_chunk_arrives_before_the_last_is_sent(false).await;
}

#[tokio::test]
async fn a_streamed_response_reaches_an_http2_client_chunk_by_chunk() {
    first_chunk_arrives_before_the_last_is_sent(true).await;
}

// === request streaming ===

const MIB: usize = 1 << 20;
const UPLOAD_CHUNKS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_100_mb_upload_streams_through_without_buffering() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&model("iris", "/", &blue.url(), &green.url())).await;

    // No Content-Length: the client sends the body chunked as it goes.
    let (tx, body) = channel_body();
    let req = Request::post(proxy.url("/upload/batch"))
        .body(body)
        .unwrap();
    let upload = tokio::spawn(async move {
        let response = client().request(req).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, BoxError>((status, body))
    });

    let chunk = Bytes::from(vec![0x5a; MIB]);
    tx.send(Ok(Frame::data(chunk.clone())))
        .await
        .expect("request body open");
    // A proxy that buffers the whole body before forwarding never lets the
    // first chunk through while the client holds the rest: this wait fails.
    blue.wait_upload_started().await;
    for _ in 1..UPLOAD_CHUNKS {
        within(
            "the upload to accept a chunk",
            tx.send(Ok(Frame::data(chunk.clone()))),
        )
        .await
        .expect("request body open");
    }
    drop(tx);

    let (status, body) = within("the upload response", upload)
        .await
        .expect("upload task")
        .expect("upload succeeds");
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let reply: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
    assert_eq!(reply, serde_json::json!({ "bytes": UPLOAD_CHUNKS * MIB }));
}

// === gRPC over h2c ===

/// A gRPC length-prefixed message: uncompressed flag, big-endian length, bytes.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.put_u8(0);
    b.put_u32(u32::try_from(message.len()).expect("small message"));
    b.put_slice(message);
    b.freeze()
}

/// Makes one unary call over `conn` and returns (pool, data, trailers).
async fn grpc_call(
    conn: &mut hyper::client::conn::http2::SendRequest<TestBody>,
    proxy: &Proxy,
    message: Bytes,
) -> (String, Bytes, http::HeaderMap) {
    let req = Request::builder()
        .method(Method::POST)
        .uri(proxy.url("/grpc.test.Echo/Call"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(full_body(message))
        .unwrap();
    let response = within("gRPC response headers", conn.send_request(req))
        .await
        .expect("gRPC call");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/grpc");
    let pool = response.headers()["x-switchyard-pool"]
        .to_str()
        .unwrap()
        .to_string();
    let collected = within("gRPC response body", response.into_body().collect())
        .await
        .expect("body ends cleanly");
    let trailers = collected
        .trailers()
        .cloned()
        .expect("the response ends with trailers");
    (pool, collected.to_bytes(), trailers)
}

#[tokio::test]
async fn a_grpc_unary_call_reaches_an_h2c_upstream_with_its_trailers() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&h2c_model("echo", &blue.url(), &green.url())).await;
    let mut conn = h2_connection(proxy.addr).await;

    let message = grpc_frame(b"\x0a\x05hello");
    let (pool, data, trailers) = grpc_call(&mut conn, &proxy, message.clone()).await;
    assert_eq!(pool, "blue");
    assert_eq!(data, message);
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok-blue");

    let r = proxy.admin_post("/models/echo/flip?expect=blue").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let message = grpc_frame(b"\x0a\x05world");
    let (pool, data, trailers) = grpc_call(&mut conn, &proxy, message.clone()).await;
    assert_eq!(pool, "green");
    assert_eq!(data, message);
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok-green");
}

#[tokio::test]
async fn an_h2c_pool_is_spoken_to_in_http2_whatever_the_client_speaks() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&h2c_model("echo", &blue.url(), &green.url())).await;
    let r = get(&proxy.url("/echo/v1")).await;
    assert_eq!((r.status, r.pool()), (StatusCode::OK, "blue"));
    let seen = r.json();
    assert_eq!(seen["version"], "HTTP/2.0", "{seen}");
    assert_eq!(seen["path"], "/echo/v1");
}
