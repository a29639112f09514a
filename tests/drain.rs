//! Knowing when the old pool can be retired: `?wait_drained=` on a switch
//! returns once nothing is in flight on the pool traffic left, and each
//! pool's status says whether it is drained.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;

async fn iris() -> (Upstream, Upstream, Proxy) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&model("iris", "/", &blue.url(), &green.url())).await;
    (blue, green, proxy)
}

#[tokio::test]
async fn a_flip_with_wait_drained_returns_once_the_old_pool_is_drained() {
    let (blue, _green, proxy) = iris().await;
    // A slow request on blue, still in flight when the flip happens.
    let url = proxy.url("/hold");
    let slow = tokio::spawn(async move { get(&url).await });
    blue.wait_held(1).await;

    let admin = proxy.admin_url("/models/iris/flip?wait_drained=30s");
    let mut flip =
        tokio::spawn(
            async move { send(&client(), http::Method::POST, &admin, full_body("")).await },
        );
    // Traffic has moved: new requests go to green at once ...
    eventually("the flip to take effect", || async {
        get(&proxy.url("/x")).await.pool() == "green"
    })
    .await;
    // ... but the call waits while blue still serves the slow request.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut flip)
            .await
            .is_err(),
        "returned while blue still had a request in flight"
    );
    let detail = proxy.admin_get("/models/iris").await.json();
    assert_eq!(detail["pools"]["blue"]["in_flight"], 1, "{detail}");
    assert_eq!(detail["pools"]["blue"]["drained"], false, "{detail}");

    blue.release();
    let r = within("the flip call", flip).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let body = r.json();
    assert_eq!(body["active"], "green");
    assert_eq!(body["switched"], true);
    assert_eq!(body["drained"], true, "{body}");
    // The slow request finished on blue, where it started.
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, StatusCode::OK);
    assert_eq!(slow.pool(), "blue");
    let detail = proxy.admin_get("/models/iris").await.json();
    assert_eq!(detail["pools"]["blue"]["drained"], true, "{detail}");
    assert_eq!(
        detail["pools"]["green"]["drained"], false,
        "the active pool is never drained"
    );
}

#[tokio::test]
async fn wait_drained_gives_504_with_what_is_still_in_flight() {
    let (blue, _green, proxy) = iris().await;
    let url = proxy.url("/hold");
    let slow = tokio::spawn(async move { get(&url).await });
    blue.wait_held(1).await;

    let r = proxy
        .admin_post("/models/iris/flip?wait_drained=200ms")
        .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.text());
    let body = r.json();
    // The switch happened; only the drain is not done.
    assert_eq!(body["switched"], true, "{body}");
    assert_eq!(body["active"], "green");
    assert_eq!(body["drained"], false);
    assert_eq!(body["in_flight"], 1);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("still has 1 request"),
        "{body}"
    );
    blue.release();
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);

    // With nothing in flight, it returns at once; a no-op waits on the standby.
    let r = proxy
        .admin_post("/models/iris/activate/green?wait_drained=5s")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["drained"], true);
    assert_eq!(r.json()["switched"], false);

    // A malformed duration is the caller's mistake.
    let r = proxy
        .admin_post("/models/iris/rollback?wait_drained=soon")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .unwrap_or("")
        .contains("wait_drained"));
    assert_eq!(active_pool(&proxy).await, "green", "nothing switched");
}

async fn active_pool(proxy: &Proxy) -> String {
    proxy.admin_get("/models/iris").await.json()["active"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
