//! Health as the control side and clients see it: the switch guard (flip,
//! activate and rollback refuse a pool with no healthy endpoint unless
//! forced), readiness following the active pool, and what requests get when
//! the active pool has no endpoint in rotation, with and without failover.

mod support;

use http::{header, StatusCode};
use serde_json::{json, Value};
use support::*;

/// Model "iris" on "/" probed every 100ms; one probe decides either way, so
/// a change shows within a round or two.
fn iris(blue: &str, green: &str) -> String {
    format!(
        "{}health.interval = \"100ms\"\nhealth.timeout = \"100ms\"\nhealth.healthy_after = 1\nhealth.unhealthy_after = 1\n",
        model("iris", "/", blue, green)
    )
}

/// Which pool served a request, checked against the upstream's body.
async fn served_by(proxy: &Proxy) -> String {
    let r = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!(r.status, StatusCode::OK, "infer: {}", r.text());
    assert_eq!(r.pool(), r.text(), "x-switchyard-pool names the upstream");
    r.text()
}

async fn detail(proxy: &Proxy) -> Value {
    let r = proxy.admin_get("/models/iris").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

/// Asserts `r` is the guard's 409: JSON naming the pool and each endpoint's
/// state, with a message that says how to override.
fn assert_refused(r: &Reply, pool: &str, endpoints: &[(&str, &str)]) {
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
    let body = r.json();
    let error = body["error"].as_str().unwrap_or_else(|| panic!("{body}"));
    for part in ["iris", pool, "force"] {
        assert!(error.contains(part), "error does not name {part}: {error}");
    }
    assert_eq!(body["pool"], pool, "{body}");
    let expected: Vec<Value> = endpoints
        .iter()
        .map(|(url, state)| json!({ "url": url, "state": state }))
        .collect();
    assert_eq!(body["endpoints"], json!(expected), "{body}");
}

fn assert_switched(r: &Reply, active: &str) {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let body = r.json();
    assert_eq!(
        (&body["active"], &body["switched"]),
        (&json!(active), &json!(true)),
        "{body}"
    );
}

// === switch guard ===

#[tokio::test]
async fn flip_to_a_pool_failing_its_probes_is_refused_unless_forced() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    green.set_healthy(false);
    let proxy = Proxy::start(&iris(&blue.url(), &green.url())).await;

    let r = proxy.admin_post("/models/iris/flip").await;
    assert_refused(&r, "green", &[(&green.url(), "unhealthy")]);
    let body = detail(&proxy).await;
    assert_eq!(body["active"], "blue", "{body}");
    assert_eq!(body["last_switch"], Value::Null, "{body}");
    assert_eq!(body["history"], json!([]), "{body}");
    assert_eq!(served_by(&proxy).await, "blue");
    assert_eq!(green.hits(), 0);
    // A mistyped override is refused, not read as "no".
    let r = proxy.admin_post("/models/iris/flip?force=yes").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(detail(&proxy).await["active"], "blue");

    let r = proxy.admin_post("/models/iris/flip?force=true").await;
    assert_switched(&r, "green");
    let body = detail(&proxy).await;
    assert_eq!(body["active"], "green", "{body}");
    let last = &body["last_switch"];
    assert_eq!(
        (&last["from"], &last["to"], &last["reason"], &last["forced"]),
        (
            &json!("blue"),
            &json!("green"),
            &json!("flip"),
            &json!(true)
        ),
        "{body}"
    );
    assert_eq!(body["history"][0]["forced"], true, "{body}");
    // Forced onto a pool with nothing in rotation: requests now meet green,
    // which has no endpoint to serve them.
    let r = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!(
        (r.status, r.pool()),
        (StatusCode::SERVICE_UNAVAILABLE, "green"),
        "{}",
        r.text()
    );

    // The state file keeps the override: after a restart the record still
    // says the switch was forced.
    let dir = std::sync::Arc::clone(&proxy.dir);
    proxy.stop().await.unwrap();
    let proxy = Proxy::try_start_in(dir, "", &iris(&blue.url(), &green.url()))
        .await
        .expect("restart");
    let body = detail(&proxy).await;
    assert_eq!(body["active"], "green", "{body}");
    assert_eq!(body["last_switch"]["forced"], true, "{body}");
    assert_eq!(body["history"][0]["forced"], true, "{body}");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn activate_of_a_dead_pool_is_refused_unless_forced() {
    let blue = Upstream::start("blue").await;
    let refusing = Refusing::bind();
    let dead = refusing.url();
    let proxy = Proxy::start(&iris(&blue.url(), &dead)).await;

    let r = proxy.admin_post("/models/iris/activate/green").await;
    assert_refused(&r, "green", &[(&dead, "unhealthy")]);
    assert_eq!(detail(&proxy).await["active"], "blue");
    assert_eq!(served_by(&proxy).await, "blue");

    // Activating the pool already active is no switch, so nothing to guard.
    let r = proxy.admin_post("/models/iris/activate/blue").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["switched"], false);

    let r = proxy
        .admin_post("/models/iris/activate/green?force=true")
        .await;
    assert_switched(&r, "green");
    let body = detail(&proxy).await;
    assert_eq!(body["active"], "green", "{body}");
    assert_eq!(body["last_switch"]["reason"], "activate", "{body}");
    assert_eq!(body["last_switch"]["forced"], true, "{body}");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn rollback_to_a_pool_gone_unhealthy_is_refused_unless_forced() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&iris(&blue.url(), &green.url())).await;

    // `force` on a healthy target overrides nothing, and is not recorded.
    let r = proxy.admin_post("/models/iris/flip?force=true").await;
    assert_switched(&r, "green");
    assert_eq!(detail(&proxy).await["last_switch"]["forced"], false);

    blue.set_healthy(false);
    wait_for_state(&proxy, "iris", "blue", &blue.url(), "unhealthy").await;
    let r = proxy.admin_post("/models/iris/rollback").await;
    assert_refused(&r, "blue", &[(&blue.url(), "unhealthy")]);
    let body = detail(&proxy).await;
    assert_eq!(body["active"], "green", "{body}");
    assert_eq!(body["history"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(served_by(&proxy).await, "green");

    let r = proxy.admin_post("/models/iris/rollback?force=true").await;
    assert_switched(&r, "blue");
    let body = detail(&proxy).await;
    let last = &body["last_switch"];
    assert_eq!(
        (&last["to"], &last["reason"], &last["forced"]),
        (&json!("blue"), &json!("rollback"), &json!(true)),
        "{body}"
    );
    proxy.stop().await.unwrap();
}

// === readiness ===

async fn readyz(proxy: &Proxy) -> (StatusCode, Value) {
    let r = proxy.admin_get("/readyz").await;
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
    (r.status, r.json())
}

#[tokio::test]
async fn readyz_follows_the_health_of_the_active_pool() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&iris(&blue.url(), &green.url())).await;

    let (status, body) = readyz(&proxy).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({
            "ready": true,
            "probed": true,
            "models": [{ "name": "iris", "active": "blue", "ready": true, "healthy_endpoints": 1, "endpoints": 1 }],
        })
    );

    blue.set_healthy(false);
    let body = eventually_some("readyz to answer 503", || async {
        let (status, body) = readyz(&proxy).await;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
    })
    .await;
    assert_eq!(
        body,
        json!({
            "ready": false,
            "probed": true,
            "models": [{ "name": "iris", "active": "blue", "ready": false, "healthy_endpoints": 0, "endpoints": 1 }],
        })
    );

    // Green is healthy, so this force overrides nothing; readiness follows
    // the switch at once.
    assert_switched(
        &proxy.admin_post("/models/iris/flip?force=true").await,
        "green",
    );
    let (status, body) = readyz(&proxy).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["models"][0]["active"], "green", "{body}");
    assert_eq!(body["models"][0]["healthy_endpoints"], 1, "{body}");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn readyz_is_503_when_the_active_pool_is_dead_from_the_start() {
    let refusing = Refusing::bind();
    let dead = refusing.url();
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&iris(&dead, &green.url())).await;

    let (status, body) = readyz(&proxy).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["probed"], true, "{body}");
    assert_eq!(
        body["models"],
        json!([{ "name": "iris", "active": "blue", "ready": false, "healthy_endpoints": 0, "endpoints": 1 }])
    );
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn readyz_ignores_a_dead_standby() {
    let blue = Upstream::start("blue").await;
    let refusing = Refusing::bind();
    let dead = refusing.url();
    let proxy = Proxy::start(&iris(&blue.url(), &dead)).await;

    let (status, body) = readyz(&proxy).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(
        wait_for_state(&proxy, "iris", "green", &dead, "unhealthy").await["state"],
        "unhealthy"
    );
    proxy.stop().await.unwrap();
}

// === no endpoint in rotation ===

#[tokio::test]
async fn without_failover_an_unhealthy_active_pool_is_a_503_naming_it() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    blue.set_healthy(false);
    let proxy = Proxy::start(&iris(&blue.url(), &green.url())).await;
    wait_for_state(&proxy, "iris", "blue", &blue.url(), "unhealthy").await;

    for _ in 0..3 {
        let r = get(&proxy.url("/v2/models/iris/infer")).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
        assert_eq!(r.pool(), "blue");
        assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
        assert!(r.headers.get("x-switchyard-failover").is_none());
        let body = r.json();
        let error = body["error"].as_str().unwrap_or_else(|| panic!("{body}"));
        for part in ["iris", "blue"] {
            assert!(error.contains(part), "error does not name {part}: {error}");
        }
    }
    assert_eq!((blue.hits(), green.hits()), (0, 0));
    assert_eq!(
        metric_value(
            &proxy,
            r#"switchyard_failovers_total{model="iris",pool="green"}"#
        )
        .await,
        Some(0.0)
    );
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn with_failover_the_standby_serves_while_the_active_pool_is_down() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let models = format!("{}failover = true\n", iris(&blue.url(), &green.url()));
    let proxy = Proxy::start(&models).await;
    let failovers = r#"switchyard_failovers_total{model="iris",pool="green"}"#;

    // Blue healthy: it serves, and nothing is marked as failover.
    let r = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!((r.status, r.pool()), (StatusCode::OK, "blue"));
    assert!(r.headers.get("x-switchyard-failover").is_none());

    blue.set_healthy(false);
    wait_for_state(&proxy, "iris", "blue", &blue.url(), "unhealthy").await;
    for _ in 0..5 {
        let r = get(&proxy.url("/v2/models/iris/infer")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!((r.pool(), r.text().as_str()), ("green", "green"));
        assert_eq!(r.headers["x-switchyard-failover"], "true");
    }
    assert_eq!(green.hits(), 5);
    assert_eq!(metric_value(&proxy, failovers).await, Some(5.0));
    // Failover serves; it does not switch.
    assert_eq!(detail(&proxy).await["active"], "blue");

    blue.set_healthy(true);
    wait_for_state(&proxy, "iris", "blue", &blue.url(), "healthy").await;
    let r = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!((r.status, r.pool()), (StatusCode::OK, "blue"));
    assert!(r.headers.get("x-switchyard-failover").is_none());
    assert_eq!(metric_value(&proxy, failovers).await, Some(5.0));
    proxy.stop().await.unwrap();
}
