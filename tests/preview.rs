//! Preview: testing the standby before it is live, on a listener of its
//! own or, where the model allows it, with `x-switchyard-pool` on the main
//! one. Live traffic stays on the active pool throughout.

mod support;

use std::sync::Arc;

use http::{Method, StatusCode};
use support::*;

async fn start(model_extra: &str) -> (Upstream, Upstream, Proxy) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let models = format!(
        "{}{model_extra}\n",
        model("iris", "/", &blue.url(), &green.url())
    );
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let proxy = Proxy::try_start_in(dir, "preview_listen = \"127.0.0.1:0\"", &models)
        .await
        .expect("proxy starts");
    (blue, green, proxy)
}

async fn get_with(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = http::Request::builder().method(Method::GET).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(full_body("")).expect("request");
    let r = client().request(req).await.expect("send");
    let (parts, body) = r.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: read_body(body).await,
    }
}

#[tokio::test]
async fn the_preview_listener_reaches_the_standby_while_live_traffic_stays_on_blue() {
    let (blue, green, proxy) = start("").await;
    let preview = proxy.preview.expect("a preview listener");
    let live = get(&proxy.url("/echo")).await;
    assert_eq!(live.pool(), "blue");
    assert!(live.headers.get("x-switchyard-preview").is_none());

    let r = get(&format!("http://{preview}/echo")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.pool(), "green");
    assert_eq!(r.headers["x-switchyard-preview"], "true");
    assert_eq!(r.json()["upstream"], "green");
    assert_eq!(blue.hits(), 1);
    assert_eq!(green.hits(), 1);

    // After a flip the standby is blue, and so is the preview.
    assert_eq!(
        proxy.admin_post("/models/iris/flip").await.status,
        StatusCode::OK
    );
    assert_eq!(get(&proxy.url("/x")).await.pool(), "green");
    assert_eq!(get(&format!("http://{preview}/x")).await.pool(), "blue");
}

#[tokio::test]
async fn a_preview_never_falls_back_to_the_live_pool() {
    let (_blue, green, proxy) = start("failover = true").await;
    let preview = proxy.preview.expect("a preview listener");
    green.set_healthy(false);
    eventually("green to be out of rotation", || async {
        endpoint_detail(&proxy, "iris", "green", &green.url()).await["state"] == "unhealthy"
    })
    .await;
    let r = get(&format!("http://{preview}/x")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.pool(), "green");
    assert!(r.json()["error"]
        .as_str()
        .unwrap_or("")
        .contains("no healthy endpoint"));
    // Live traffic is untouched.
    assert_eq!(get(&proxy.url("/x")).await.pool(), "blue");
}

#[tokio::test]
async fn the_pool_header_picks_the_pool_only_where_the_model_allows_it() {
    let (_blue, _green, proxy) = start("preview_header = true").await;
    let r = get_with(&proxy.url("/echo"), &[("x-switchyard-pool", "green")]).await;
    assert_eq!(r.pool(), "green");
    assert_eq!(r.headers["x-switchyard-preview"], "true");
    // switchyard's own header does not go upstream.
    assert!(
        r.json()["headers"].get("x-switchyard-pool").is_none(),
        "{}",
        r.text()
    );
    let r = get_with(&proxy.url("/x"), &[("x-switchyard-pool", "blue")]).await;
    assert_eq!(r.pool(), "blue");
    let r = get_with(&proxy.url("/x"), &[("x-switchyard-pool", "purple")]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap_or("").contains("purple"));
    // Without the header: the active pool, unmarked.
    let r = get(&proxy.url("/x")).await;
    assert_eq!(r.pool(), "blue");
    assert!(r.headers.get("x-switchyard-preview").is_none());

    // A model that does not allow it ignores the header.
    let (_blue, _green, proxy) = start("").await;
    let r = get_with(&proxy.url("/x"), &[("x-switchyard-pool", "green")]).await;
    assert_eq!(r.pool(), "blue");
    assert!(r.headers.get("x-switchyard-preview").is_none());
}
