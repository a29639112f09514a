//! Validation before a switch (`[[models.validate]]`), against real
//! upstreams behind the real proxy: the report of `POST /models/{name}/validate`,
//! a flip refused while the standby fails its checks and done once it is
//! fixed, `validate_before_switch`, and the errors of the calls.

mod support;

use http::StatusCode;
use serde_json::{json, Value};
use support::*;

const INFER: &str = "/v2/models/iris/infer";

/// An OIP-like answer: `id` differs per server, `p` is the prediction.
fn answer(id: &str, name: &str, p: f64) -> String {
    json!({ "id": id, "outputs": [{ "name": name, "data": [p, 0.1] }] }).to_string()
}

/// Two checks on the inference path: the output's name, and the whole
/// answer the same as the active pool's within 1%, `id` ignored.
const CHECKS: &str = r#"
[[models.validate]]
name = "predict"
method = "POST"
path = "/v2/models/iris/infer"
body = '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}'
expect = { "/outputs/0/name" = "predict" }

[[models.validate]]
name = "same as blue"
method = "POST"
path = "/v2/models/iris/infer"
body = '{"inputs": []}'
same_as_active = true
tolerance = 0.01
ignore = ["/id"]
"#;

/// Blue and green answering the same prediction, and a proxy whose model
/// "iris" has [`CHECKS`] plus `model_extra` lines.
async fn iris(model_extra: &str) -> (Upstream, Upstream, Proxy) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    blue.set_reply(INFER, 200, answer("b-1", "predict", 0.9));
    green.set_reply(INFER, 200, answer("g-1", "predict", 0.9));
    let models = format!(
        "{}{model_extra}\n{CHECKS}",
        model("iris", "/", &blue.url(), &green.url())
    );
    let proxy = Proxy::start(&models).await;
    (blue, green, proxy)
}

/// The report of `POST path`, which must be 200.
async fn report(proxy: &Proxy, path: &str) -> Value {
    let r = proxy.admin_post(path).await;
    assert_eq!(r.status, StatusCode::OK, "POST {path}: {}", r.text());
    r.json()
}

/// The failures of the check named `name` in `report`, asserting it ran once.
fn failures<'a>(report: &'a Value, name: &str) -> Vec<&'a str> {
    let runs: Vec<&Value> = report["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("no checks in {report}"))
        .iter()
        .filter(|c| c["name"] == name)
        .collect();
    assert_eq!(runs.len(), 1, "check {name:?} once in {report}");
    runs[0]["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .map(|f| f.as_str().expect("a failure is a string"))
        .collect()
}

/// Which pool serves traffic: the upstream's name, as `x-switchyard-pool`
/// says (a path no canned answer covers, so a failing one still answers).
async fn served_by(proxy: &Proxy) -> String {
    let r = get(&proxy.url("/v2/models/iris")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.pool(), r.text(), "header and upstream agree");
    r.text()
}

/// Asserts a JSON error with `status`; returns the body.
fn assert_error(r: &Reply, status: StatusCode) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    let body = r.json();
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    body
}

// === the report ===

#[tokio::test]
async fn validate_reports_a_good_standby_as_passed_check_by_check() {
    let (blue, green, proxy) = iris("").await;
    let hits = (blue.hits(), green.hits());

    let r = report(&proxy, "/models/iris/validate").await;
    assert_eq!(r["model"], "iris");
    assert_eq!(r["pool"], "green", "the standby by default");
    assert_eq!(r["active"], "blue");
    assert_eq!(r["passed"], true, "{r}");
    let checks = r["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 2, "{r}");
    for c in checks {
        assert_eq!(c["passed"], true, "{c}");
        assert_eq!(c["endpoint"], green.url());
        assert_eq!(c["status"], 200);
        assert!(c["duration_ms"].is_u64(), "{c}");
        assert_eq!(c["failures"], json!([]));
    }
    assert_eq!(
        checks[1]["notes"],
        json!([format!(
            "compared with {} of the active pool blue",
            blue.url()
        )])
    );
    // Green got both checks, blue the one same_as_active asked.
    assert_eq!((blue.hits(), green.hits()), (hits.0 + 1, hits.1 + 2));

    // Nothing switched.
    assert_eq!(served_by(&proxy).await, "blue");
    let r = report(&proxy, "/models/iris/validate?pool=green").await;
    assert_eq!((&r["pool"], &r["passed"]), (&json!("green"), &json!(true)));
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn validate_names_what_was_expected_and_what_came_back() {
    let (_blue, green, proxy) = iris("").await;

    // A wrong status, with the body that came with it.
    green.set_reply(INFER, 500, r#"{"error":"model not loaded"}"#);
    let r = report(&proxy, "/models/iris/validate").await;
    assert_eq!(r["passed"], false, "{r}");
    assert_eq!(r["checks"][0]["status"], 500);
    let f = failures(&r, "predict");
    assert!(
        f.contains(&r#"status 500, expected 200; body: {"error":"model not loaded"}"#),
        "{f:?}"
    );
    assert_eq!(
        failures(&r, "same as blue"),
        [
            "status 500, expected 200; body: {\"error\":\"model not loaded\"}",
            "status 500 differs from the active pool blue's 200"
        ]
    );

    // A wrong value at a pointer.
    green.set_reply(INFER, 200, answer("g-1", "predict_proba", 0.9));
    let r = report(&proxy, "/models/iris/validate").await;
    assert_eq!(
        failures(&r, "predict"),
        [r#"at /outputs/0/name: expected "predict", got "predict_proba""#]
    );

    // A prediction beyond the tolerance of the active pool's.
    green.set_reply(INFER, 200, answer("g-1", "predict", 0.3));
    let r = report(&proxy, "/models/iris/validate").await;
    assert_eq!(r["passed"], false);
    assert!(failures(&r, "predict").is_empty());
    assert_eq!(
        failures(&r, "same as blue"),
        ["at /outputs/0/data/0: green answered 0.3, the active pool blue 0.9 (relative tolerance 0.01)"]
    );

    // Within the tolerance, and with the ignored id different: a pass.
    green.set_reply(INFER, 200, answer("another-id", "predict", 0.905));
    let r = report(&proxy, "/models/iris/validate").await;
    assert_eq!(r["passed"], true, "{r}");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn every_healthy_endpoint_of_the_pool_is_checked() {
    let blue = Upstream::start("blue").await;
    let good = Upstream::start("green-a").await;
    let bad = Upstream::start("green-b").await;
    for u in [&blue, &good] {
        u.set_reply(INFER, 200, answer("x", "predict", 0.9));
    }
    bad.set_reply(INFER, 200, answer("x", "predict", 0.1));
    let models = format!(
        "[[models]]\nname = \"iris\"\nblue.endpoints = [{:?}]\ngreen.endpoints = [{:?}, {:?}]\n{CHECKS}",
        blue.url(),
        good.url(),
        bad.url()
    );
    let proxy = Proxy::start(&models).await;

    let r = report(&proxy, "/models/iris/validate").await;
    assert_eq!(r["passed"], false, "one bad replica fails the pool: {r}");
    let checks = r["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 4, "two checks on two endpoints: {r}");
    for c in checks {
        let on_bad = c["endpoint"] == bad.url();
        let passed = !(on_bad && c["name"] == "same as blue");
        assert_eq!(c["passed"], passed, "{c}");
    }
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_check_sends_its_method_headers_and_body_and_reads_at_most_a_mebibyte() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    green.set_reply("/big", 200, vec![b' '; (1 << 20) + 1]);
    let version = env!("CARGO_PKG_VERSION");
    let models = format!(
        r#"{}
[[models.validate]]
name = "echo"
method = "PUT"
path = "/echo/check?q=1"
body = "[1, 2, 3]"
headers = {{ "x-tenant" = "ci" }}
expect = {{ "/method" = "PUT", "/path" = "/echo/check", "/query" = "q=1", "/body_len" = 9, "/headers/x-tenant" = "ci", "/headers/content-type" = "application/json", "/headers/user-agent" = "switchyard-validate/{version}" }}

[[models.validate]]
name = "big"
path = "/big"
"#,
        model("iris", "/", &blue.url(), &green.url())
    );
    let proxy = Proxy::start(&models).await;

    let r = report(&proxy, "/models/iris/validate").await;
    assert!(failures(&r, "echo").is_empty(), "{r}");
    let f = failures(&r, "big");
    assert_eq!(
        f,
        ["status 200, but the answer is larger than 1024 KiB, the most a check reads"]
    );
    assert_eq!(r["checks"][1]["status"], 200);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_check_without_an_answer_in_time_fails_with_its_timeout() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let models = format!(
        "{}\n[[models.validate]]\npath = \"/hold/check\"\ntimeout = \"300ms\"\n",
        model("iris", "/", &blue.url(), &green.url())
    );
    let proxy = Proxy::start(&models).await;

    let r = report(&proxy, "/models/iris/validate").await;
    assert_eq!(
        failures(&r, "GET /hold/check"),
        ["no answer within 300ms (the check's timeout)"]
    );
    assert_eq!(r["checks"][0]["status"], Value::Null);
    green.release();
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn validating_the_active_pool_skips_the_comparison_with_itself() {
    let (_blue, _green, proxy) = iris("").await;
    let r = report(&proxy, "/models/iris/validate?pool=blue").await;
    assert_eq!((&r["pool"], &r["active"]), (&json!("blue"), &json!("blue")));
    assert_eq!(r["passed"], true, "{r}");
    assert_eq!(
        r["checks"][1]["notes"],
        json!(["same_as_active not applied: pool blue is the active pool"])
    );
    proxy.stop().await.unwrap();
}

// === validation before a switch ===

#[tokio::test]
async fn a_failing_validation_blocks_the_flip_and_passes_once_fixed() {
    let (_blue, green, proxy) = iris("").await;
    green.set_reply(INFER, 200, answer("g-1", "predict", 0.3));

    let r = proxy.admin_post("/models/iris/flip?validate=true").await;
    let body = assert_error(&r, StatusCode::CONFLICT);
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("pool green failed validation") && error.contains("nothing switched"),
        "{error}"
    );
    assert_eq!(body["validation"]["passed"], false, "{body}");
    assert_eq!(body["validation"]["pool"], "green");
    assert_eq!(
        failures(&body["validation"], "same as blue"),
        ["at /outputs/0/data/0: green answered 0.3, the active pool blue 0.9 (relative tolerance 0.01)"]
    );
    // Nothing switched: traffic and status stay on blue.
    assert_eq!(served_by(&proxy).await, "blue");
    let status = proxy.admin_get("/models/iris").await.json();
    assert_eq!(status["active"], "blue");
    assert_eq!(status["history"], json!([]));

    // Fixed: the same call switches, and says what it checked.
    green.set_reply(INFER, 200, answer("g-1", "predict", 0.9));
    let r = proxy.admin_post("/models/iris/flip?validate=true").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let body = r.json();
    assert_eq!(
        (&body["active"], &body["switched"]),
        (&json!("green"), &json!(true))
    );
    assert_eq!(body["validation"]["passed"], true, "{body}");
    assert_eq!(served_by(&proxy).await, "green");

    // The event log tells the story: refused, passed, switched.
    let events = proxy.admin_get("/events").await.json();
    let story: Vec<(String, Value)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "validation" || e["type"] == "switch")
        .map(|e| {
            let what = if e["type"] == "switch" {
                &e["to"]
            } else {
                &e["passed"]
            };
            (e["type"].as_str().unwrap().to_string(), what.clone())
        })
        .collect();
    assert_eq!(
        story,
        [
            ("validation".to_string(), json!(false)),
            ("validation".to_string(), json!(true)),
            ("switch".to_string(), json!("green")),
        ]
    );
    let refused = &events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "validation")
        .unwrap();
    assert_eq!(refused["pool"], "green");
    assert_eq!(refused["report"]["passed"], false, "{refused}");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn activate_with_validate_checks_the_pool_it_activates() {
    let (_blue, green, proxy) = iris("").await;
    green.set_reply(INFER, 503, "{}");
    let r = proxy
        .admin_post("/models/iris/activate/green?validate=true")
        .await;
    assert_eq!(
        assert_error(&r, StatusCode::CONFLICT)["validation"]["pool"],
        "green"
    );
    assert_eq!(served_by(&proxy).await, "blue");

    // Activating the pool already active changes nothing: nothing to check.
    let r = proxy
        .admin_post("/models/iris/activate/blue?validate=true")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["switched"], false);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn validate_before_switch_validates_every_flip_unless_the_call_says_not_to() {
    let (blue, green, proxy) = iris("validate_before_switch = true\n").await;
    green.set_reply(INFER, 500, "{}");

    for path in ["/models/iris/flip", "/models/iris/activate/green"] {
        let r = proxy.admin_post(path).await;
        let body = assert_error(&r, StatusCode::CONFLICT);
        assert_eq!(body["validation"]["passed"], false, "{path}: {body}");
    }
    assert_eq!(served_by(&proxy).await, "blue");

    // `?validate=false` skips it for one call.
    let r = proxy.admin_post("/models/iris/flip?validate=false").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.json().get("validation").is_none(), "{}", r.text());
    assert_eq!(served_by(&proxy).await, "green");

    // Rollback is never validated: it stays one instant call, even to a
    // pool that would fail.
    blue.set_reply(INFER, 500, "{}");
    let r = proxy.admin_post("/models/iris/rollback").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["active"], "blue");
    let r = proxy
        .admin_post("/models/iris/rollback?validate=true")
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST);
    proxy.stop().await.unwrap();
}

/// A proxy whose only check holds at green until released, and a
/// `flip?validate=true` under way, its check held at green.
async fn flip_held_in_validation() -> (
    Upstream,
    Upstream,
    std::sync::Arc<Proxy>,
    tokio::task::JoinHandle<Reply>,
) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let models = format!(
        "{}\n[[models.validate]]\npath = \"/hold/check\"\n",
        model("iris", "/", &blue.url(), &green.url())
    );
    let proxy = std::sync::Arc::new(Proxy::start(&models).await);
    let flipping = {
        let proxy = std::sync::Arc::clone(&proxy);
        tokio::spawn(async move { proxy.admin_post("/models/iris/flip?validate=true").await })
    };
    green.wait_held(1).await;
    (blue, green, proxy, flipping)
}

#[tokio::test]
async fn a_switch_during_validation_makes_the_validating_flip_a_conflict() {
    let (_blue, green, proxy, flipping) = flip_held_in_validation().await;
    // While green is being validated, another call makes it active: the
    // flip would now go to blue, which nobody validated.
    let r = proxy.admin_post("/models/iris/activate/green").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    green.release();
    let r = within("the validating flip", flipping).await.expect("task");
    let body = assert_error(&r, StatusCode::CONFLICT);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("expected blue to be active, but green is"),
        "{body}"
    );
    assert_eq!(served_by(&proxy).await, "green");
    let proxy = std::sync::Arc::try_unwrap(proxy).ok().expect("one owner");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_switch_away_and_back_during_validation_lets_the_flip_go_ahead() {
    let (_blue, green, proxy, flipping) = flip_held_in_validation().await;
    for pool in ["green", "blue"] {
        let r = proxy
            .admin_post(&format!("/models/iris/activate/{pool}"))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    green.release();
    let r = within("the validating flip", flipping).await.expect("task");
    // Blue is active again, as when the flip chose green: it goes ahead.
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["active"], "green");
    let proxy = std::sync::Arc::try_unwrap(proxy).ok().expect("one owner");
    proxy.stop().await.unwrap();
}

// === errors ===

#[tokio::test]
async fn validate_refuses_unknown_models_bad_pools_and_unknown_parameters() {
    let (_blue, _green, proxy) = iris("").await;
    let r = proxy.admin_post("/models/nope/validate").await;
    assert!(assert_error(&r, StatusCode::NOT_FOUND)["error"]
        .as_str()
        .unwrap()
        .contains("nope"));
    let r = proxy.admin_post("/models/nope/flip?validate=true").await;
    assert_error(&r, StatusCode::NOT_FOUND);
    let r = proxy.admin_post("/models/iris/validate?pool=purple").await;
    assert!(assert_error(&r, StatusCode::BAD_REQUEST)["error"]
        .as_str()
        .unwrap()
        .contains("purple"));
    let r = proxy.admin_post("/models/iris/validate?pol=green").await;
    assert_error(&r, StatusCode::BAD_REQUEST);
    let r = proxy.admin_post("/models/iris/flip?validate=yes").await;
    assert_error(&r, StatusCode::BAD_REQUEST);
    let r = proxy.admin_get("/models/iris/validate").await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(served_by(&proxy).await, "blue");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_model_without_checks_never_passes_validation_silently() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&model("iris", "/", &blue.url(), &green.url())).await;
    for path in [
        "/models/iris/validate",
        "/models/iris/flip?validate=true",
        "/models/iris/activate/green?validate=true",
    ] {
        let r = proxy.admin_post(path).await;
        let body = assert_error(&r, StatusCode::CONFLICT);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("no [[models.validate]] checks"),
            "{path}: {body}"
        );
    }
    assert_eq!(served_by(&proxy).await, "blue");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_pool_without_a_healthy_endpoint_cannot_be_validated() {
    let fast =
        "health.interval = \"100ms\"\nhealth.timeout = \"100ms\"\nhealth.unhealthy_after = 1\n";
    let (_blue, green, proxy) = iris(fast).await;
    green.set_healthy(false);
    wait_for_state(&proxy, "iris", "green", &green.url(), "unhealthy").await;
    let hits = green.hits();
    for path in [
        "/models/iris/validate",
        "/models/iris/flip?validate=true&force=true",
    ] {
        let r = proxy.admin_post(path).await;
        let body = assert_error(&r, StatusCode::CONFLICT);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("no healthy endpoint to validate"),
            "{path}: {body}"
        );
        assert_eq!(body["pool"], "green");
        assert_eq!(body["endpoints"][0]["state"], "unhealthy", "{body}");
    }
    assert_eq!(green.hits(), hits, "nothing was sent");
    assert_eq!(served_by(&proxy).await, "blue");
    proxy.stop().await.unwrap();
}

// === reload ===

#[tokio::test]
async fn a_reload_applies_changed_checks_and_keeps_the_pools() {
    let (blue, green, proxy) = iris("").await;
    green.set_reply(INFER, 200, answer("g-1", "predict", 0.95));
    let r = report(&proxy, "/models/iris/validate").await;
    assert_eq!(r["passed"], false, "0.95 is not within 1% of 0.9: {r}");
    let served = proxy.admin_get("/models/iris").await.json()["pools"]["blue"]["served"].clone();
    assert_eq!(served_by(&proxy).await, "blue");

    // The same model with a looser tolerance.
    let models = format!(
        "{}\n{}",
        model("iris", "/", &blue.url(), &green.url()),
        CHECKS.replace("tolerance = 0.01", "tolerance = 0.1")
    );
    let text = config_text(&proxy.state_path, "", &models);
    std::fs::write(proxy.dir.path().join("switchyard.toml"), text).expect("rewrite config");
    let r = proxy.admin_post("/reload").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["changed"], json!(["iris"]));

    let r = report(&proxy, "/models/iris/validate").await;
    assert_eq!(r["passed"], true, "{r}");
    // Kept, not rebuilt: blue's served count carries on.
    let detail = proxy.admin_get("/models/iris").await.json();
    assert_eq!(
        detail["pools"]["blue"]["served"],
        served.as_u64().unwrap() + 1,
        "{detail}"
    );
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_reload_that_replaces_the_validated_pool_makes_the_validating_flip_a_conflict() {
    let (blue, green, proxy, flipping) = flip_held_in_validation().await;
    // While the old green is being validated, a reload points green at a
    // new server: the validated pool is gone, the flip must not go to the
    // one nobody validated.
    let new_green = Upstream::start("green-2").await;
    let models = format!(
        "{}\n[[models.validate]]\npath = \"/hold/check\"\n",
        model("iris", "/", &blue.url(), &new_green.url())
    );
    let text = config_text(&proxy.state_path, "", &models);
    std::fs::write(proxy.dir.path().join("switchyard.toml"), text).expect("rewrite config");
    let r = proxy.admin_post("/reload").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    green.release();
    let r = within("the validating flip", flipping).await.expect("task");
    let body = assert_error(&r, StatusCode::CONFLICT);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("a reload replaced pool green since it was validated"),
        "{body}"
    );
    assert_eq!(served_by(&proxy).await, "blue");
    assert_eq!(
        new_green.hits(),
        0,
        "nothing validated or served on the new green"
    );
    let proxy = std::sync::Arc::try_unwrap(proxy).ok().expect("one owner");
    proxy.stop().await.unwrap();
}
