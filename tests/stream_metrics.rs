//! Streaming-aware figures over real sockets: an LLM-like upstream streams
//! server-sent events through the proxy with known pauses, and the metrics
//! show the time to the first token (not to the headers), each event, and
//! the gaps between them; comments are not events; a plain JSON answer has
//! a first byte and no events.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use support::*;

/// The upstream waits this long before its first event, and between events.
const PAUSE: Duration = Duration::from_millis(120);

/// An upstream whose `/v1/completions` streams, with [`PAUSE`] before each:
/// `data: tok1`, a `: keep-alive` comment, `data: tok2`, then `data: tok3`
/// and `data: [DONE]` in one write. Its headers go out at once. Anything
/// else is a small JSON answer; it is always healthy.
async fn llm_upstream(token: CancellationToken) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let make = |_: &switchyard::server::Accepted| {
            hyper::service::service_fn(|req: Request<switchyard::server::RequestBody>| async move {
                if req.uri().path() != "/v1/completions" {
                    return Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(full_body("{\"ok\":true}"))
                            .unwrap(),
                    );
                }
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
                tokio::spawn(async move {
                    for chunk in [
                        "data: tok1\n\n",
                        ": keep-alive\n\n",
                        "data: tok2\n\n",
                        "data: tok3\n\ndata: [DONE]\n\n",
                    ] {
                        tokio::time::sleep(PAUSE).await;
                        if tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() {
                            return;
                        }
                    }
                });
                let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
                Ok(Response::builder()
                    .header("content-type", "text/event-stream; charset=utf-8")
                    .body(BodyExt::boxed(body))
                    .unwrap())
            })
        };
        switchyard::server::serve("llm", listener, make, token, Duration::from_secs(1)).await;
    });
    format!("http://{addr}")
}

async fn series(proxy: &Proxy, name: &str) -> f64 {
    let series = format!("{name}{{model=\"llm\",pool=\"blue\"}}");
    metric_value(proxy, &series)
        .await
        .unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

#[tokio::test]
async fn an_event_stream_is_timed_to_its_first_token_and_event_by_event() {
    let token = CancellationToken::new();
    let blue = llm_upstream(token.clone()).await;
    let green = llm_upstream(token.clone()).await;
    let proxy = Proxy::start(&model("llm", "/", &blue, &green)).await;

    let reply = post(&proxy.url("/v1/completions"), "{\"stream\":true}").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.text(),
        "data: tok1\n\n: keep-alive\n\ndata: tok2\n\ndata: tok3\n\ndata: [DONE]\n\n"
    );

    // The first token came one pause after the request, though the
    // headers came at once.
    assert_eq!(
        series(&proxy, "switchyard_response_first_byte_seconds_count").await,
        1.0
    );
    let first = series(&proxy, "switchyard_response_first_byte_seconds_sum").await;
    assert!(
        first >= PAUSE.as_secs_f64(),
        "time to first byte {first} s, the upstream paused {PAUSE:?}"
    );
    // Four events (the comment is none); gaps: tok1 to tok2 is two pauses
    // (the comment between), tok2 to tok3 one, tok3 to [DONE] none.
    assert_eq!(series(&proxy, "switchyard_stream_events_total").await, 4.0);
    assert_eq!(
        series(&proxy, "switchyard_stream_event_gap_seconds_count").await,
        3.0
    );
    let gaps = series(&proxy, "switchyard_stream_event_gap_seconds_sum").await;
    assert!(
        gaps >= 3.0 * PAUSE.as_secs_f64(),
        "gaps add up to {gaps} s, expected at least 3 pauses of {PAUSE:?}"
    );
    let together = metric_value(
        &proxy,
        "switchyard_stream_event_gap_seconds_bucket{model=\"llm\",pool=\"blue\",le=\"0.0005\"}",
    )
    .await;
    assert_eq!(together, Some(1.0), "tok3 and [DONE] arrived together");

    proxy.stop().await.unwrap();
    token.cancel();
}

#[tokio::test]
async fn a_plain_answer_has_a_first_byte_and_no_events() {
    let token = CancellationToken::new();
    let blue = llm_upstream(token.clone()).await;
    let green = llm_upstream(token.clone()).await;
    let proxy = Proxy::start(&model("llm", "/", &blue, &green)).await;

    for _ in 0..3 {
        let reply = post(&proxy.url("/v1/models"), "{}").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "{\"ok\":true}");
    }
    assert_eq!(
        series(&proxy, "switchyard_response_first_byte_seconds_count").await,
        3.0
    );
    assert_eq!(series(&proxy, "switchyard_stream_events_total").await, 0.0);
    assert_eq!(
        series(&proxy, "switchyard_stream_event_gap_seconds_count").await,
        0.0
    );
    proxy.stop().await.unwrap();
    token.cancel();
}
