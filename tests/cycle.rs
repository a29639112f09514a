//! The full blue-green cycle of the README, end to end on one proxy:
//! preview green, compare it on shadow traffic, validate and flip in one
//! call, watch it pass under load, retire blue once drained, and read the
//! story back from the event log.

mod support;

use std::sync::Arc;

use http::StatusCode;
use serde_json::{json, Value};
use support::*;

const INFER: &str = "/v2/models/iris/infer";
const REQUEST: &str =
    r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[5.1,3.5,1.4,0.2]}]}"#;

fn answer(version: &str, p: f64) -> String {
    json!({"model_version": version, "outputs": [{"name": "predict", "data": [p]}]}).to_string()
}

#[tokio::test]
async fn deploy_preview_shadow_validate_flip_watch_and_retire() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    blue.set_reply(INFER, 200, answer("1", 0.9));
    // The new version: another model_version, predictions within 1%.
    green.set_reply(INFER, 200, answer("2", 0.905));
    let models = format!(
        "{}\
[[models.validate]]
name = \"same as live\"
method = \"POST\"
path = \"{INFER}\"
body = '{REQUEST}'
same_as_active = true
tolerance = 0.01
ignore = [\"/model_version\"]

[models.watch]
window = \"1500ms\"
interval = \"100ms\"
min_requests = 5
max_5xx_ratio = 0.1

[models.shadow]
percent = 100
tolerance = 0.01
ignore = [\"/model_version\"]
",
        model("iris", "/", &blue.url(), &green.url())
    );
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let proxy = Proxy::try_start_in(dir, "preview_listen = \"127.0.0.1:0\"", &models)
        .await
        .expect("proxy starts");
    let start = proxy.admin_get("/events").await.json()["newest_id"]
        .as_u64()
        .unwrap();

    // 1. Green is probed healthy.
    let status = proxy.admin_get("/models/iris").await.json();
    assert!(
        status["pools"]["green"]["healthy_endpoints"].as_u64() > Some(0),
        "{status}"
    );

    // 2. Preview reaches green while live traffic stays on blue.
    let preview = format!("http://{}{INFER}", proxy.preview.expect("preview listener"));
    let r = post(&preview, REQUEST).await;
    assert_eq!((r.status, r.pool()), (StatusCode::OK, "green"));
    assert_eq!(r.headers["x-switchyard-preview"], "true");
    assert_eq!(r.json()["model_version"], "2");

    // 3. Shadow: live traffic on blue, every request compared on green.
    for _ in 0..10 {
        let r = post(&proxy.url(INFER), REQUEST).await;
        assert_eq!((r.status, r.pool()), (StatusCode::OK, "blue"));
    }
    let shadow = eventually_some("ten mirrors compared", || async {
        let s = proxy.admin_get("/models/iris").await.json()["shadow"].clone();
        (s["compared"] == 10).then_some(s)
    })
    .await;
    assert_eq!(shadow["agreement"], 1.0, "{shadow}");

    // 4. Validate and flip in one call.
    let r = proxy
        .admin_post("/models/iris/flip?expect=blue&validate=true")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["validation"]["passed"], true);

    // 5. Watched under traffic, and passed.
    let passed = eventually_some("the watch to pass", || async {
        let r = post(&proxy.url(INFER), REQUEST).await;
        assert_eq!((r.status, r.pool()), (StatusCode::OK, "green"));
        let watch = proxy.admin_get("/models/iris").await.json()["watch"].clone();
        (watch["state"] == "passed").then_some(watch)
    })
    .await;
    assert_eq!(passed["pool"], "green", "{passed}");
    assert!(passed["requests"].as_u64() >= Some(5), "{passed}");

    // 6. Retire blue: nothing in flight on it, so the wait is short.
    let r = proxy
        .admin_post("/models/iris/activate/green?wait_drained=10s")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        (&r.json()["switched"], &r.json()["drained"]),
        (&json!(false), &json!(true))
    );

    // 7. The event log tells the story in order.
    let events = proxy
        .admin_get(&format!("/events?since={start}"))
        .await
        .json();
    let story: Vec<Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "validation" || e["type"] == "switch")
        .map(|e| json!([e["type"], e["pool"].as_str().or(e["to"].as_str())]))
        .collect();
    assert_eq!(
        story,
        [json!(["validation", "green"]), json!(["switch", "green"])]
    );
    // No automatic rollback, no failed live request.
    assert_eq!(
        metric_value(
            &proxy,
            r#"switchyard_requests_total{code="5xx",model="iris",pool="green"}"#
        )
        .await,
        Some(0.0)
    );
    assert_eq!(
        metric_value(&proxy, r#"switchyard_auto_rollbacks_total{model="iris"}"#).await,
        Some(0.0)
    );
}
