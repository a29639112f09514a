//! The admin API contract (DESIGN.md, "Admin API"): every call, its answers
//! and its errors, against a real proxy in front of real upstreams; and the
//! persistence of switches across restarts.

mod support;

use std::sync::Arc;

use http::Method;
use serde_json::{json, Value};
use support::*;

/// Blue and green upstreams and a proxy serving model "iris" on "/".
async fn iris() -> (Upstream, Upstream, Proxy) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&model("iris", "/", &blue.url(), &green.url())).await;
    (blue, green, proxy)
}

/// Which pool served an inference request, checked against the body the
/// upstream sent, so header and traffic agree.
async fn served_by(proxy: &Proxy) -> String {
    let r = post(&proxy.url("/v2/models/iris/infer"), "{}").await;
    assert_eq!(r.status, 200, "infer: {}", r.text());
    assert_eq!(r.pool(), r.text(), "x-switchyard-pool names the upstream");
    r.text()
}

/// The active pool as GET /models/iris reports it.
async fn active(proxy: &Proxy) -> String {
    let r = proxy.admin_get("/models/iris").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["active"].as_str().expect("active").to_string()
}

fn content_type(r: &Reply) -> &str {
    r.headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Asserts `r` is a JSON error `{"error": "..."}` with `status`; returns the message.
fn assert_error(r: &Reply, status: u16) -> String {
    assert_eq!(r.status, status, "body: {}", r.text());
    assert_eq!(content_type(r), "application/json", "{}", r.text());
    let body = r.json();
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("error body should be {{\"error\": ...}}: {body}"));
    assert!(!message.is_empty());
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
    message.to_string()
}

fn assert_ok_json(r: &Reply) -> Value {
    assert_eq!(r.status, 200, "body: {}", r.text());
    assert_eq!(content_type(r), "application/json");
    r.json()
}

async fn admin(proxy: &Proxy, method: Method, path: &str) -> Reply {
    send(&client(), method, &proxy.admin_url(path), full_body("")).await
}

// === status ===

#[tokio::test]
async fn models_lists_every_model_with_its_active_and_standby_pool() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let models = format!(
        "{}\n{}",
        model("iris", "/v2/models/iris", &blue.url(), &green.url()),
        model("chat", "/v1", &blue.url(), &green.url()),
    );
    let proxy = Proxy::start(&models).await;

    let body = assert_ok_json(&proxy.admin_get("/models").await);
    let list = body["models"].as_array().expect("models array");
    let mut names: Vec<&str> = list.iter().filter_map(|m| m["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["chat", "iris"]);
    for m in list {
        assert_eq!(
            (&m["active"], &m["standby"]),
            (&json!("blue"), &json!("green"))
        );
    }

    assert_eq!(proxy.admin_post("/models/chat/flip").await.status, 200);
    let body = assert_ok_json(&proxy.admin_get("/models").await);
    let find = |name: &str| {
        body["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(find("chat")["active"], "green");
    assert_eq!(find("chat")["standby"], "blue");
    assert_eq!(find("iris")["active"], "blue", "only chat was flipped");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_model_shows_its_pools_endpoints_and_served_counts() {
    let (blue, green, proxy) = iris().await;

    let body = assert_ok_json(&proxy.admin_get("/models/iris").await);
    assert_eq!(body["name"], "iris");
    assert_eq!(body["active"], "blue");
    assert_eq!(body["standby"], "green");
    assert_eq!(body["last_switch"], Value::Null);
    assert_eq!(body["history"], json!([]));
    for (pool, upstream) in [("blue", &blue), ("green", &green)] {
        let endpoints = body["pools"][pool]["endpoints"]
            .as_array()
            .unwrap_or_else(|| panic!("pools.{pool}.endpoints: {body}"));
        assert_eq!(endpoints.len(), 1, "pools.{pool}: {body}");
        let e = &endpoints[0];
        assert_eq!(
            (&e["url"], &e["in_flight"], &e["served"]),
            (&json!(upstream.url()), &json!(0), &json!(0)),
            "pools.{pool}: {e}"
        );
        // Health, as probed before the proxy reported itself started.
        assert_eq!(e["state"], "healthy", "pools.{pool}: {e}");
        assert_eq!(e["last_probe"]["ok"], true, "pools.{pool}: {e}");
        assert_eq!(e["last_probe"]["result"], "status 200", "pools.{pool}: {e}");
        assert_eq!(e["consecutive_probe_failures"], 0, "pools.{pool}: {e}");
        assert_eq!(e["ejected_until_unix_ms"], Value::Null, "pools.{pool}: {e}");
        assert!(
            e["open_connections"].as_u64() >= Some(1),
            "pools.{pool}: {e}"
        );
    }

    for _ in 0..3 {
        assert_eq!(served_by(&proxy).await, "blue");
    }
    let body = assert_ok_json(&proxy.admin_get("/models/iris").await);
    assert_eq!(body["pools"]["blue"]["endpoints"][0]["served"], 3);
    assert_eq!(body["pools"]["blue"]["endpoints"][0]["in_flight"], 0);
    assert_eq!(body["pools"]["green"]["endpoints"][0]["served"], 0);
    assert_eq!(blue.hits(), 3);

    proxy.admin_post("/models/iris/flip").await;
    assert_eq!(served_by(&proxy).await, "green");
    let body = assert_ok_json(&proxy.admin_get("/models/iris").await);
    assert_eq!(body["pools"]["green"]["endpoints"][0]["served"], 1);
    assert_eq!(body["pools"]["blue"]["endpoints"][0]["served"], 3);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_request_in_flight_shows_on_its_endpoint() {
    let (blue, _green, proxy) = iris().await;
    let url = proxy.url("/hold/infer");
    let held = tokio::spawn(async move { get(&url).await });
    blue.wait_held(1).await;

    let body = assert_ok_json(&proxy.admin_get("/models/iris").await);
    assert_eq!(body["pools"]["blue"]["endpoints"][0]["in_flight"], 1);

    blue.release();
    assert_eq!(within("held request", held).await.unwrap().status, 200);
    eventually("in_flight back to 0", || async {
        let body = proxy.admin_get("/models/iris").await.json();
        body["pools"]["blue"]["endpoints"][0]["in_flight"] == 0
    })
    .await;
    proxy.stop().await.unwrap();
}

// === flip ===

#[tokio::test]
async fn flip_makes_the_standby_active_and_records_the_switch() {
    let (_blue, _green, proxy) = iris().await;
    assert_eq!(served_by(&proxy).await, "blue");

    let body = assert_ok_json(&proxy.admin_post("/models/iris/flip").await);
    assert_eq!(
        body,
        json!({
            "model": "iris",
            "active": "green",
            "standby": "blue",
            "previous": "blue",
            "switched": true,
        })
    );
    assert_eq!(served_by(&proxy).await, "green");

    let detail = assert_ok_json(&proxy.admin_get("/models/iris").await);
    assert_eq!(detail["active"], "green");
    assert_eq!(detail["standby"], "blue");
    let last = &detail["last_switch"];
    assert_eq!(last["from"], "blue");
    assert_eq!(last["to"], "green");
    assert_eq!(last["reason"], "flip");
    let actor = last["actor"].as_str().expect("actor");
    assert!(
        actor.starts_with("127.0.0.1:"),
        "actor is the admin client: {actor}"
    );
    assert!(last["at_unix_ms"].as_u64().unwrap_or(0) > 0, "{last}");
    assert_eq!(detail["history"], json!([last.clone()]));

    // The summary list agrees.
    let list = assert_ok_json(&proxy.admin_get("/models").await);
    assert_eq!(list["models"][0]["active"], "green");

    // Flipping again goes back, and the history grows.
    let body = assert_ok_json(&proxy.admin_post("/models/iris/flip").await);
    assert_eq!(body["active"], "blue");
    assert_eq!(served_by(&proxy).await, "blue");
    let detail = proxy.admin_get("/models/iris").await.json();
    assert_eq!(detail["history"].as_array().map(Vec::len), Some(2));
    assert_eq!(detail["last_switch"]["to"], "blue");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn flip_with_expect_switches_only_from_the_expected_pool() {
    let (_blue, _green, proxy) = iris().await;

    let body = assert_ok_json(&proxy.admin_post("/models/iris/flip?expect=blue").await);
    assert_eq!(body["active"], "green");
    assert_eq!(served_by(&proxy).await, "green");

    // A second pipeline run with the same expectation must not flip back.
    let message = assert_error(
        &proxy.admin_post("/models/iris/flip?expect=blue").await,
        409,
    );
    assert!(message.contains("green"), "{message}");
    assert_eq!(active(&proxy).await, "green");
    assert_eq!(served_by(&proxy).await, "green");
    let detail = proxy.admin_get("/models/iris").await.json();
    assert_eq!(detail["history"].as_array().map(Vec::len), Some(1));

    let body = assert_ok_json(&proxy.admin_post("/models/iris/flip?expect=green").await);
    assert_eq!(body["active"], "blue");
    assert_eq!(served_by(&proxy).await, "blue");

    for bad in ["red", "", "BLUE"] {
        let path = format!("/models/iris/flip?expect={bad}");
        assert_error(&proxy.admin_post(&path).await, 400);
    }
    assert_eq!(active(&proxy).await, "blue");
    proxy.stop().await.unwrap();
}

// === activate ===

#[tokio::test]
async fn activate_makes_a_pool_active_and_is_a_no_op_when_it_already_is() {
    let (_blue, _green, proxy) = iris().await;

    let body = assert_ok_json(&proxy.admin_post("/models/iris/activate/blue").await);
    assert_eq!(body["active"], "blue");
    assert_eq!(body["switched"], false);
    assert_eq!(
        proxy.admin_get("/models/iris").await.json()["last_switch"],
        Value::Null
    );

    let body = assert_ok_json(&proxy.admin_post("/models/iris/activate/green").await);
    assert_eq!(body["active"], "green");
    assert_eq!(body["standby"], "blue");
    assert_eq!(body["switched"], true);
    assert_eq!(served_by(&proxy).await, "green");
    let detail = proxy.admin_get("/models/iris").await.json();
    assert_eq!(detail["last_switch"]["reason"], "activate");

    let body = assert_ok_json(&proxy.admin_post("/models/iris/activate/green").await);
    assert_eq!(body["active"], "green");
    assert_eq!(
        body["previous"], "green",
        "a no-op has no other previous pool"
    );
    assert_eq!(body["switched"], false);
    assert_eq!(served_by(&proxy).await, "green");
    let detail = proxy.admin_get("/models/iris").await.json();
    assert_eq!(
        detail["history"].as_array().map(Vec::len),
        Some(1),
        "a no-op is not a switch: {detail}"
    );
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn activate_of_an_unknown_pool_is_refused() {
    let (_blue, _green, proxy) = iris().await;
    for bad in ["red", "Blue", "standby"] {
        let message = assert_error(
            &proxy
                .admin_post(&format!("/models/iris/activate/{bad}"))
                .await,
            400,
        );
        assert!(message.contains(bad), "{message}");
    }
    assert_eq!(active(&proxy).await, "blue");
    assert_eq!(served_by(&proxy).await, "blue");
    proxy.stop().await.unwrap();
}

// === rollback ===

#[tokio::test]
async fn rollback_returns_to_the_previous_pool() {
    let (_blue, _green, proxy) = iris().await;

    proxy.admin_post("/models/iris/flip").await;
    assert_eq!(served_by(&proxy).await, "green");

    let body = assert_ok_json(&proxy.admin_post("/models/iris/rollback").await);
    assert_eq!(body["active"], "blue");
    assert_eq!(body["previous"], "green");
    assert_eq!(body["switched"], true);
    assert_eq!(served_by(&proxy).await, "blue");
    let detail = proxy.admin_get("/models/iris").await.json();
    assert_eq!(detail["active"], "blue");
    assert_eq!(detail["last_switch"]["reason"], "rollback");
    assert_eq!(detail["last_switch"]["from"], "green");
    assert_eq!(detail["last_switch"]["to"], "blue");

    // The one switch is undone; there is nothing left to roll back.
    assert_error(&proxy.admin_post("/models/iris/rollback").await, 409);
    assert_eq!(served_by(&proxy).await, "blue");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn rollback_walks_back_through_several_switches() {
    let (_blue, _green, proxy) = iris().await;
    proxy.admin_post("/models/iris/flip").await; // green
    proxy.admin_post("/models/iris/activate/blue").await; // blue
    proxy.admin_post("/models/iris/flip").await; // green

    let mut seen = Vec::new();
    for _ in 0..3 {
        let body = assert_ok_json(&proxy.admin_post("/models/iris/rollback").await);
        seen.push(body["active"].as_str().unwrap().to_string());
        assert_eq!(served_by(&proxy).await, seen[seen.len() - 1]);
    }
    assert_eq!(seen, ["blue", "green", "blue"]);
    assert_error(&proxy.admin_post("/models/iris/rollback").await, 409);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn rollback_without_history_is_a_conflict() {
    let (_blue, _green, proxy) = iris().await;
    let message = assert_error(&proxy.admin_post("/models/iris/rollback").await, 409);
    assert!(message.contains("iris"), "{message}");
    assert_eq!(active(&proxy).await, "blue");
    assert_eq!(served_by(&proxy).await, "blue");
    proxy.stop().await.unwrap();
}

// === errors ===

#[tokio::test]
async fn an_unknown_model_is_404_on_every_model_route() {
    let (_blue, _green, proxy) = iris().await;
    let calls = [
        (Method::GET, "/models/nope"),
        (Method::POST, "/models/nope/flip"),
        (Method::POST, "/models/nope/flip?expect=blue"),
        (Method::POST, "/models/nope/activate/green"),
        (Method::POST, "/models/nope/rollback"),
    ];
    for (method, path) in calls {
        let r = admin(&proxy, method.clone(), path).await;
        let message = assert_error(&r, 404);
        assert!(message.contains("nope"), "{method} {path}: {message}");
    }
    assert_eq!(active(&proxy).await, "blue");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_wrong_method_is_405_with_allow() {
    let (_blue, _green, proxy) = iris().await;
    let calls = [
        (Method::GET, "/models/iris/flip", "POST"),
        (Method::GET, "/models/iris/rollback", "POST"),
        (Method::GET, "/models/iris/activate/green", "POST"),
        (Method::PUT, "/models/iris/flip", "POST"),
        (Method::POST, "/models", "GET"),
        (Method::POST, "/models/iris", "GET"),
        (Method::DELETE, "/models/iris", "GET"),
        (Method::POST, "/metrics", "GET"),
        (Method::POST, "/healthz", "GET"),
        (Method::POST, "/readyz", "GET"),
    ];
    for (method, path, allow) in calls {
        let r = admin(&proxy, method.clone(), path).await;
        assert_error(&r, 405);
        let got = r.headers.get("allow").and_then(|v| v.to_str().ok());
        assert!(
            got.is_some_and(|a| a.split(',').any(|m| m.trim() == allow)),
            "{method} {path}: Allow should include {allow}, got {got:?}"
        );
    }
    // A refused GET on flip must not have flipped.
    assert_eq!(active(&proxy).await, "blue");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn an_unknown_route_is_404_json() {
    let (_blue, _green, proxy) = iris().await;
    // `/` is the dashboard's page (tests/dashboard.rs).
    for path in [
        "/nope",
        "/index.html",
        "/model",
        "/models/iris/flop",
        "/models/iris/activate",
        "/models/iris/activate/green/now",
    ] {
        assert_error(&proxy.admin_get(path).await, 404);
    }
    assert_error(&proxy.admin_post("/models/iris/switch").await, 404);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn an_unknown_query_parameter_is_400() {
    let (_blue, _green, proxy) = iris().await;
    let calls = [
        (Method::POST, "/models/iris/flip?expcet=blue"),
        (Method::POST, "/models/iris/flip?expect=blue&force=1"),
        (Method::POST, "/models/iris/activate/green?dry_run=1"),
        (Method::POST, "/models/iris/rollback?dry_run"),
        (Method::GET, "/models?verbose=1"),
        (Method::GET, "/models/iris?pool=blue"),
        (Method::GET, "/metrics?name=x"),
    ];
    for (method, path) in calls {
        let r = admin(&proxy, method.clone(), path).await;
        let message = assert_error(&r, 400);
        assert!(
            ["expcet", "force", "dry_run", "verbose", "pool", "name"]
                .iter()
                .any(|k| message.contains(k)),
            "{method} {path}: message should name the parameter: {message}"
        );
    }
    // None of the refused switches happened.
    assert_eq!(active(&proxy).await, "blue");
    assert_eq!(served_by(&proxy).await, "blue");
    proxy.stop().await.unwrap();
}

// === metrics, liveness, readiness ===

#[tokio::test]
async fn metrics_show_the_active_pool_and_count_switches() {
    let (_blue, _green, proxy) = iris().await;
    let metrics = |proxy: &Proxy| {
        let url = proxy.admin_url("/metrics");
        async move {
            let r = get(&url).await;
            assert_eq!(r.status, 200);
            assert!(
                content_type(&r).starts_with("text/plain"),
                "{:?}",
                r.headers
            );
            r.text()
        }
    };
    let has = |text: &str, line: &str| text.lines().any(|l| l == line);

    let text = metrics(&proxy).await;
    assert!(
        has(
            &text,
            r#"switchyard_active_pool{model="iris",pool="blue"} 1"#
        ),
        "{text}"
    );
    assert!(
        has(
            &text,
            r#"switchyard_active_pool{model="iris",pool="green"} 0"#
        ),
        "{text}"
    );

    assert_eq!(proxy.admin_post("/models/iris/flip").await.status, 200);
    let text = metrics(&proxy).await;
    assert!(
        has(
            &text,
            r#"switchyard_active_pool{model="iris",pool="green"} 1"#
        ),
        "{text}"
    );
    assert!(
        has(
            &text,
            r#"switchyard_active_pool{model="iris",pool="blue"} 0"#
        ),
        "{text}"
    );
    assert!(
        has(
            &text,
            r#"switchyard_switches_total{model="iris",to="green"} 1"#
        ),
        "{text}"
    );

    // A refused switch and a no-op are not counted.
    proxy.admin_post("/models/iris/flip?expect=blue").await;
    proxy.admin_post("/models/iris/activate/green").await;
    let text = metrics(&proxy).await;
    assert!(
        has(
            &text,
            r#"switchyard_switches_total{model="iris",to="green"} 1"#
        ),
        "{text}"
    );
    assert!(
        !text.lines().any(|l| l
            .starts_with(r#"switchyard_switches_total{model="iris",to="blue"}"#)
            && !l.ends_with(" 0")),
        "{text}"
    );
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn healthz_and_readyz_answer_with_json() {
    let (_blue, _green, proxy) = iris().await;
    let r = proxy.admin_get("/healthz").await;
    assert_ok_json(&r);

    let body = assert_ok_json(&proxy.admin_get("/readyz").await);
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(
        body["models"],
        json!([{ "name": "iris", "active": "blue", "ready": true, "healthy_endpoints": 1, "endpoints": 1 }])
    );

    proxy.admin_post("/models/iris/flip").await;
    let body = assert_ok_json(&proxy.admin_get("/readyz").await);
    assert_eq!(body["models"][0]["active"], "green", "{body}");
    proxy.stop().await.unwrap();
}

// === persistence ===

#[tokio::test]
async fn a_flip_survives_a_restart_and_can_still_be_rolled_back() {
    let (blue, green, proxy) = iris().await;
    let models = model("iris", "/", &blue.url(), &green.url());
    proxy.admin_post("/models/iris/flip").await;
    assert_eq!(served_by(&proxy).await, "green");
    let dir = Arc::clone(&proxy.dir);
    proxy.stop().await.unwrap();

    // The config still says blue (the default); the saved state wins.
    let proxy = Proxy::try_start_in(dir, "", &models)
        .await
        .expect("restart");
    assert_eq!(active(&proxy).await, "green");
    assert_eq!(served_by(&proxy).await, "green");
    let detail = proxy.admin_get("/models/iris").await.json();
    assert_eq!(detail["last_switch"]["reason"], "flip");
    assert_eq!(detail["history"].as_array().map(Vec::len), Some(1));
    let text = get(&proxy.admin_url("/metrics")).await.text();
    assert!(
        text.contains(r#"switchyard_active_pool{model="iris",pool="green"} 1"#),
        "{text}"
    );

    let body = assert_ok_json(&proxy.admin_post("/models/iris/rollback").await);
    assert_eq!(body["active"], "blue");
    assert_eq!(served_by(&proxy).await, "blue");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_switch_is_persisted_before_the_call_returns() {
    let (blue, green, proxy) = iris().await;
    let models = model("iris", "/", &blue.url(), &green.url());
    proxy.admin_post("/models/iris/activate/green").await;

    // A second proxy on the same state file while the first still runs, as
    // after a crash with no orderly shutdown: it must already see green.
    let second = Proxy::try_start_in(Arc::clone(&proxy.dir), "", &models)
        .await
        .expect("second proxy starts");
    assert_eq!(active(&second).await, "green");
    assert_eq!(served_by(&second).await, "green");
    second.stop().await.unwrap();
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_corrupt_state_file_stops_the_start_and_names_the_file() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let state = dir.path().join("state.json");
    std::fs::write(&state, "{\"version\": 1, \"models\": {\"iris\": {\"act").unwrap();

    let models = model("iris", "/", &blue.url(), &green.url());
    let err = match Proxy::try_start_in(Arc::clone(&dir), "", &models).await {
        Ok(_) => panic!("a proxy started on a corrupt state file"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&state.display().to_string()), "{err}");
    assert!(err.contains("corrupt"), "{err}");
    // The file is left for the operator to inspect.
    assert!(std::fs::read_to_string(&state).unwrap().contains("\"act"));
}

#[tokio::test]
async fn a_state_file_naming_a_removed_model_is_ignored() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    // A real state file from an earlier config with model "ghost", flipped.
    let ghost = Proxy::start(&model("ghost", "/", &blue.url(), &green.url())).await;
    ghost.admin_post("/models/ghost/flip").await;
    let dir = Arc::clone(&ghost.dir);
    ghost.stop().await.unwrap();

    let proxy = Proxy::try_start_in(dir, "", &model("iris", "/", &blue.url(), &green.url()))
        .await
        .expect("a stale model in the state file does not stop the start");
    assert_eq!(active(&proxy).await, "blue");
    assert_eq!(served_by(&proxy).await, "blue");
    assert_error(&proxy.admin_get("/models/ghost").await, 404);
    assert_eq!(proxy.admin_post("/models/iris/flip").await.status, 200);
    assert_eq!(served_by(&proxy).await, "green");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_switch_that_cannot_be_persisted_is_refused_and_changes_nothing() {
    let (_blue, _green, proxy) = iris().await;
    // Make the state path unwritable: a directory where the file was. (Tests
    // run as root, so permission bits would not stop the write.)
    std::fs::remove_file(&proxy.state_path).unwrap();
    std::fs::create_dir(&proxy.state_path).unwrap();

    for call in ["/models/iris/flip", "/models/iris/activate/green"] {
        let r = proxy.admin_post(call).await;
        let message = assert_error(&r, 500);
        assert!(message.contains("nothing switched"), "{call}: {message}");
        assert_eq!(active(&proxy).await, "blue");
        assert_eq!(served_by(&proxy).await, "blue");
    }
    let detail = proxy.admin_get("/models/iris").await.json();
    assert_eq!(detail["last_switch"], Value::Null, "{detail}");
    let text = get(&proxy.admin_url("/metrics")).await.text();
    assert!(
        text.contains(r#"switchyard_active_pool{model="iris",pool="blue"} 1"#),
        "{text}"
    );
    assert!(
        !text.contains(r#"switchyard_switches_total{model="iris",to="green"} 1"#),
        "{text}"
    );
    // Rollback has nothing to undo: the refused switch left no history.
    assert_error(&proxy.admin_post("/models/iris/rollback").await, 409);

    // Once the path is writable again, switching works.
    std::fs::remove_dir(&proxy.state_path).unwrap();
    assert_eq!(proxy.admin_post("/models/iris/flip").await.status, 200);
    assert_eq!(served_by(&proxy).await, "green");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn concurrent_flips_with_the_same_expectation_switch_once() {
    let (_blue, _green, proxy) = iris().await;
    // Eight pipelines race to flip blue to green; exactly one may win.
    let url = proxy.admin_url("/models/iris/flip?expect=blue");
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { post(&url, "").await })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        let r = within("concurrent flip", call).await.expect("flip task");
        if r.status != 200 {
            assert_error(&r, 409);
        }
        statuses.push(r.status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409, 409, 409, 409, 409, 409, 409]);
    assert_eq!(active(&proxy).await, "green");
    assert_eq!(served_by(&proxy).await, "green");
    let detail = proxy.admin_get("/models/iris").await.json();
    assert_eq!(detail["history"].as_array().map(Vec::len), Some(1));
    proxy.stop().await.unwrap();
}

/// Sends `POST path` to the admin listener with the given extra headers.
async fn post_with(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = http::Request::builder()
        .method(Method::POST)
        .uri(proxy.admin_url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = within(
        "admin POST",
        client().request(req.body(full_body("")).unwrap()),
    )
    .await
    .unwrap();
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: read_body(body).await,
    }
}

#[tokio::test]
async fn a_post_from_another_origin_is_refused_and_switches_nothing() {
    let (_blue, _green, proxy) = iris().await;
    // What a page on another site (or on the proxy's own port) can make a
    // browser send to a loopback admin listener without a token.
    for headers in [
        &[("origin", "http://evil.example")][..],
        &[("origin", "http://127.0.0.1:8080")][..],
        &[("origin", "null")][..],
        &[("sec-fetch-site", "cross-site")][..],
        &[("sec-fetch-site", "same-site")][..],
    ] {
        let r = post_with(&proxy, "/models/iris/flip", headers).await;
        let message = assert_error(&r, 403);
        assert!(message.contains("cross-origin POST refused"), "{message}");
    }
    assert_eq!(
        proxy.admin_get("/models/iris").await.json()["active"],
        "blue"
    );
    // The dashboard's own calls come from the admin listener's origin.
    let own = format!(
        "http://{}",
        proxy
            .admin_url("")
            .trim_start_matches("http://")
            .trim_end_matches('/')
    );
    let r = post_with(
        &proxy,
        "/models/iris/flip",
        &[("origin", own.as_str()), ("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Reading is not refused: a cross-origin page cannot read the answer anyway.
    let r = proxy.admin_get("/models").await;
    assert_eq!(r.status, 200);
    proxy.stop().await.unwrap();
}
