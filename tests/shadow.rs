//! Shadow traffic: live requests mirrored to the standby and the answers
//! compared. Agreement is 100% for identical models, mismatches are
//! reported with both answers, and the live response never waits for, or
//! changes because of, the mirror.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use hyper::body::Frame;
use serde_json::{json, Value};
use support::*;

const INFER: &str = "/v2/models/iris/infer";
const REQUEST: &str =
    r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[5.1,3.5,1.4,0.2]}]}"#;

fn answer(id: &str, p: f64) -> String {
    json!({"id": id, "model_name": "iris", "outputs": [{"name": "predict", "data": [p]}]})
        .to_string()
}

async fn iris(shadow: &str) -> (Upstream, Upstream, Proxy) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let models = format!(
        "{}[models.shadow]\n{shadow}\n",
        model("iris", "/", &blue.url(), &green.url())
    );
    let proxy = Proxy::start(&models).await;
    (blue, green, proxy)
}

async fn shadow_status(proxy: &Proxy) -> Value {
    proxy.admin_get("/models/iris").await.json()["shadow"].clone()
}

/// Waits until `n` mirrors have ended one way or another.
async fn settled(proxy: &Proxy, n: u64) -> Value {
    eventually_some(&format!("{n} mirrors to be settled"), || async {
        let s = shadow_status(proxy).await;
        let skipped: u64 = s["skipped"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        let done = s["compared"].as_u64().unwrap() + s["error"].as_u64().unwrap() + skipped;
        (done >= n && s["in_flight"] == 0).then_some(s)
    })
    .await
}

#[tokio::test]
async fn identical_models_agree_on_every_mirrored_request() {
    let (blue, green, proxy) = iris("percent = 100\nignore = [\"/id\"]").await;
    blue.set_reply(INFER, 200, answer("b", 0.9));
    green.set_reply(INFER, 200, answer("g", 0.9));
    for _ in 0..20 {
        let r = post(&proxy.url(INFER), REQUEST).await;
        // The live answer is blue's, untouched.
        assert_eq!((r.status, r.pool()), (StatusCode::OK, "blue"));
        assert_eq!(
            r.json(),
            serde_json::from_str::<Value>(&answer("b", 0.9)).unwrap()
        );
    }
    let s = settled(&proxy, 20).await;
    assert_eq!(s["compared"], 20, "{s}");
    assert_eq!(
        (&s["match"], &s["mismatch"], &s["error"]),
        (&json!(20), &json!(0), &json!(0))
    );
    assert_eq!(s["agreement"], 1.0);
    assert_eq!(s["last_mismatches"], json!([]));
    assert_eq!(green.hits(), 20, "every request mirrored once");
    assert_eq!(blue.hits(), 20);
    assert_eq!(
        metric_value(
            &proxy,
            r#"switchyard_shadow_total{model="iris",result="match"}"#
        )
        .await,
        Some(20.0)
    );
    // Mirrors are not traffic: not served, not counted in the pool's requests.
    let detail = proxy.admin_get("/models/iris").await.json();
    assert_eq!(detail["pools"]["green"]["served"], 0, "{detail}");
    assert_eq!(
        metric_value(
            &proxy,
            r#"switchyard_requests_total{code="2xx",model="iris",pool="green"}"#
        )
        .await,
        Some(0.0)
    );
}

#[tokio::test]
async fn different_answers_are_reported_with_both_bodies() {
    let (blue, green, proxy) = iris("percent = 100\ntolerance = 0.01\nignore = [\"/id\"]").await;
    blue.set_reply(INFER, 200, answer("b", 0.5));
    // Within the tolerance: a match.
    green.set_reply(INFER, 200, answer("g", 0.502));
    post(&proxy.url(INFER), REQUEST).await;
    settled(&proxy, 1).await;
    // Beyond it: a mismatch, named by its pointer.
    green.set_reply(INFER, 200, answer("g", 0.7));
    post(&proxy.url(INFER), REQUEST).await;
    settled(&proxy, 2).await;
    // Another status: a mismatch too.
    green.set_reply(INFER, 503, r#"{"error":"not loaded"}"#);
    let live = post(&proxy.url(INFER), REQUEST).await;
    assert_eq!((live.status, live.pool()), (StatusCode::OK, "blue"));

    let s = settled(&proxy, 3).await;
    assert_eq!((&s["match"], &s["mismatch"]), (&json!(1), &json!(2)), "{s}");
    assert_eq!(s["agreement"], 1.0 / 3.0);
    let last = s["last_mismatches"].as_array().unwrap();
    // Newest first.
    assert_eq!(last[0]["difference"], "status: live 200, shadow 503");
    assert_eq!(last[0]["shadow"]["status"], 503);
    let m = &last[1];
    assert_eq!(m["result"], "mismatch");
    assert_eq!(m["request"], format!("POST {INFER}"));
    assert_eq!(m["endpoint"], green.url());
    assert!(
        m["x_request_id"].as_str().is_some_and(|id| id.len() == 32),
        "{m}"
    );
    assert_eq!(m["difference"], "at /outputs/0/data/0: 0.5 against 0.7");
    assert_eq!(m["live"]["status"], 200);
    assert_eq!(m["live"]["body"], answer("b", 0.5));
    assert_eq!(m["shadow"]["body"], answer("g", 0.7));
    assert_eq!(
        metric_value(
            &proxy,
            r#"switchyard_shadow_total{model="iris",result="mismatch"}"#
        )
        .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn the_mirror_is_the_same_request_marked_as_shadow() {
    // `/echo` answers with what it received: method, path, query, headers
    // and body length. Only the upstream's name is ignored, so the first
    // difference is the header that marks the mirror.
    let (_blue, _green, proxy) = iris("percent = 100\nignore = [\"/upstream\"]").await;
    let r = post(&proxy.url("/echo/x?top=3"), REQUEST).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["headers"].get("x-switchyard-shadow"), None);
    let s = settled(&proxy, 1).await;
    let m = &s["last_mismatches"][0];
    assert_eq!(
        m["difference"], "at /headers/x-switchyard-shadow: only on the right",
        "{s}"
    );
    let mirrored: Value = serde_json::from_str(m["shadow"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(mirrored["upstream"], "green");
    assert_eq!(mirrored["method"], "POST");
    assert_eq!(mirrored["path"], "/echo/x");
    assert_eq!(mirrored["query"], "top=3");
    assert_eq!(mirrored["body_len"], REQUEST.len());
    assert_eq!(mirrored["headers"]["x-switchyard-shadow"], "true");
    let live: Value = serde_json::from_str(m["live"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        mirrored["headers"]["x-request-id"],
        live["headers"]["x-request-id"]
    );
}

#[tokio::test]
async fn bodies_larger_than_max_body_are_not_mirrored() {
    let (blue, green, proxy) = iris("percent = 100\nmax_body = 64").await;
    blue.set_reply(INFER, 200, answer("b", 0.9));
    green.set_reply(INFER, 200, answer("b", 0.9));
    // Declared too large: not even sampled.
    let big = "x".repeat(100);
    let r = post(&proxy.url("/echo/big"), big.clone()).await;
    assert_eq!((r.status, r.pool()), (StatusCode::OK, "blue"));
    assert_eq!(r.json()["body_len"], 100);
    // Streamed without a length, and too large only once it has passed.
    let (tx, body) = channel_body();
    let url = proxy.url("/echo/streamed");
    let live = tokio::spawn(async move { send(&client(), Method::POST, &url, body).await });
    for _ in 0..4 {
        tx.send(Ok(Frame::data(bytes::Bytes::from("y".repeat(30)))))
            .await
            .unwrap();
    }
    drop(tx);
    let live = live.await.unwrap();
    assert_eq!(
        (live.status, live.json()["body_len"].clone()),
        (StatusCode::OK, json!(120))
    );
    // An answer too large to compare is not compared either.
    blue.set_reply(INFER, 200, answer("b", 0.9) + &" ".repeat(100));
    post(&proxy.url(INFER), "{}").await;

    let s = settled(&proxy, 3).await;
    assert_eq!(s["skipped"]["too_large"], 3, "{s}");
    assert_eq!(s["compared"], 0);
    assert_eq!(green.hits(), 1, "only the small request reached green");
    assert_eq!(
        metric_value(
            &proxy,
            r#"switchyard_shadow_skipped_total{model="iris",reason="too_large"}"#
        )
        .await,
        Some(3.0)
    );
}

#[tokio::test]
async fn a_standby_that_fails_is_an_error_and_the_live_answer_is_untouched() {
    let (blue, green, proxy) = iris("percent = 100\ntimeout = \"300ms\"").await;
    blue.set_reply(INFER, 200, answer("b", 0.9));
    // Too slow for the mirror's timeout.
    green.set_delay(Duration::from_secs(2));
    let r = post(&proxy.url(INFER), REQUEST).await;
    assert_eq!((r.status, r.pool()), (StatusCode::OK, "blue"));
    let s = settled(&proxy, 1).await;
    assert_eq!(s["error"], 1, "{s}");
    let e = &s["last_mismatches"][0];
    assert_eq!(e["result"], "error");
    assert!(
        e["difference"]
            .as_str()
            .unwrap()
            .contains("no answer within 300ms"),
        "{e}"
    );
    assert_eq!(e["shadow"], Value::Null);
    // Gone entirely: still an error, never a failed live request.
    green.stop().await;
    let r = post(&proxy.url(INFER), REQUEST).await;
    assert_eq!((r.status, r.pool()), (StatusCode::OK, "blue"));
    let s = settled(&proxy, 2).await;
    assert_eq!(s["error"], 2, "{s}");
    // The standby's health is the prober's business, not the mirror's.
    let detail = proxy.admin_get("/models/iris").await.json();
    let endpoint = &detail["pools"]["green"]["endpoints"][0];
    assert_eq!(endpoint["consecutive_request_failures"], 0, "{endpoint}");
}

#[tokio::test]
async fn the_live_answer_does_not_wait_for_the_mirror() {
    let (blue, green, proxy) = iris("percent = 100\ntimeout = \"20s\"").await;
    blue.set_reply(INFER, 200, answer("b", 0.9));
    green.set_reply(INFER, 200, answer("b", 0.9));
    green.set_delay(Duration::from_secs(1));
    let r = post(&proxy.url(INFER), REQUEST).await;
    assert_eq!(r.status, StatusCode::OK);
    // The live answer is here while the mirror is still waiting on green.
    let s = shadow_status(&proxy).await;
    assert_eq!(
        (&s["in_flight"], &s["compared"]),
        (&json!(1), &json!(0)),
        "{s}"
    );
    let s = settled(&proxy, 1).await;
    assert_eq!(s["match"], 1, "{s}");
}

#[tokio::test]
async fn previews_are_not_mirrored() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let models = format!(
        "{}preview_header = true\n[models.shadow]\npercent = 100\n",
        model("iris", "/", &blue.url(), &green.url())
    );
    let proxy = Proxy::start(&models).await;
    // A live request is mirrored (to green) ...
    get(&proxy.url("/x")).await;
    let s = settled(&proxy, 1).await;
    assert_eq!(s["compared"], 1, "{s}");
    let (blue_hits, green_hits) = (blue.hits(), green.hits());
    assert_eq!((blue_hits, green_hits), (1, 1));
    // ... a preview of green is not (it would be mirrored to blue).
    let req = http::Request::builder()
        .uri(proxy.url("/x"))
        .header("x-switchyard-pool", "green")
        .body(full_body(""))
        .unwrap();
    let r = within("preview", client().request(req)).await.unwrap();
    assert_eq!(r.headers()["x-switchyard-pool"], "green");
    let _ = read_body(r.into_body()).await;
    // One more live request, to know the preview's mirror (if any) would
    // have been counted before this one settled.
    get(&proxy.url("/x")).await;
    let s = settled(&proxy, 2).await;
    assert_eq!(s["compared"], 2, "{s}");
    assert_eq!((blue.hits(), green.hits()), (blue_hits + 1, green_hits + 2));
}

#[tokio::test]
async fn requests_not_sampled_are_not_mirrored() {
    let (_blue, green, proxy) = iris("percent = 0.0001").await;
    for _ in 0..50 {
        get(&proxy.url("/x")).await;
    }
    // One in a million would be a mirror.
    assert_eq!(green.hits(), 0);
    let s = shadow_status(&proxy).await;
    assert_eq!(
        (&s["compared"], &s["in_flight"]),
        (&json!(0), &json!(0)),
        "{s}"
    );
}

#[tokio::test]
async fn http2_clients_are_mirrored_too() {
    // An HTTP/2 body with a length may only say it has ended on a later,
    // empty frame; the copy must still be complete once all of it is in.
    let (blue, green, proxy) = iris("percent = 100\nignore = [\"/id\"]").await;
    blue.set_reply(INFER, 200, answer("b", 0.9));
    green.set_reply(INFER, 200, answer("g", 0.9));
    let h2 = h2_client();
    for _ in 0..5 {
        let r = send(&h2, Method::POST, &proxy.url(INFER), full_body(REQUEST)).await;
        assert_eq!((r.status, r.pool()), (StatusCode::OK, "blue"));
    }
    let s = settled(&proxy, 5).await;
    assert_eq!(
        (&s["match"], &s["skipped"]["incomplete"]),
        (&json!(5), &json!(0)),
        "{s}"
    );
}
