//! Hot reload (issue #6) against real upstreams and the real proxy: the
//! config file is rewritten, then `POST /reload` (or SIGHUP) applies it.
//!
//! - A model added is probed before the reload returns and serves at once.
//! - A model removed answers 404; its request in flight finishes, and its
//!   upstreams get no more probes.
//! - New endpoints for the active pool take the traffic while the old ones
//!   finish theirs; the active pool and the history survive the reload.
//! - A changed setting keeps the pools, their connections and their health;
//!   an https:// pool is built anew, so a renewed CA bundle is picked up.
//! - An invalid file (the very errors `switchyard check` prints), a key only a
//!   restart applies, or an active pool left without a healthy endpoint is
//!   refused, and nothing changes.
//! - None of it fails a request under load.
//!
//! SIGHUP reaches every proxy in this process and makes it read its config
//! file, which another test may be rewriting: every test holds
//! `reload_lock()` for its whole run.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use support::inbound_tls::{reload_lock, sighup};
use support::tls::{Pki, TlsUpstream};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Probe settings for tests that watch probes come and go; model-table lines.
const FAST_PROBES: &str = "health.interval = \"100ms\"\nhealth.timeout = \"100ms\"\n";
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

const IRIS: &str = "/v2/models/iris";
const CHAT: &str = "/v1/chat";

fn config_path(proxy: &Proxy) -> PathBuf {
    proxy.dir.path().join("switchyard.toml")
}

/// Rewrites the proxy's config file with `proxy_extra` lines under
/// `[proxy]` and `models`; returns the text written.
fn rewrite(proxy: &Proxy, proxy_extra: &str, models: &str) -> String {
    let text = config_text(&proxy.state_path, proxy_extra, models);
    std::fs::write(config_path(proxy), &text).expect("rewrite the config file");
    text
}

async fn reload(proxy: &Proxy) -> Reply {
    proxy.admin_post("/reload").await
}

/// Asserts a reload succeeded and what it says it did, list by list.
fn assert_reloaded(
    r: &Reply,
    added: &[&str],
    removed: &[&str],
    changed: &[&str],
    unchanged: &[&str],
) {
    assert_eq!(r.status, StatusCode::OK, "reload: {}", r.text());
    assert_eq!(
        r.json(),
        json!({
            "reloaded": true,
            "added": added,
            "removed": removed,
            "changed": changed,
            "unchanged": unchanged,
        })
    );
}

/// Asserts a refused reload: `status`, a JSON error; returns the body.
fn assert_refused(r: &Reply, status: StatusCode) -> Value {
    assert_eq!(r.status, status, "reload: {}", r.text());
    let content_type = r.headers.get("content-type").and_then(|v| v.to_str().ok());
    assert_eq!(content_type, Some("application/json"));
    let body = r.json();
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("nothing was reloaded"), "{body}");
    body
}

/// The names GET /models lists.
async fn model_names(proxy: &Proxy) -> Vec<String> {
    let r = proxy.admin_get("/models").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| m["name"].as_str().expect("name").to_string())
        .collect()
}

async fn model_detail(proxy: &Proxy, name: &str) -> Value {
    let r = proxy.admin_get(&format!("/models/{name}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

/// Asserts `path` is served 200 from `pool` by the upstream named `upstream`.
async fn assert_served(proxy: &Proxy, path: &str, pool: &str, upstream: &str) {
    let r = get(&proxy.url(path)).await;
    assert_eq!(
        (r.status, r.pool(), r.text().as_str()),
        (StatusCode::OK, pool, upstream),
        "GET {path}"
    );
}

/// Sends GET `path` in the background, e.g. to `/hold` across a reload.
fn in_background(proxy: &Proxy, path: &str) -> tokio::task::JoinHandle<Reply> {
    let url = proxy.url(path);
    tokio::spawn(async move { get(&url).await })
}

/// Waits until `gone` gets no probe for three probe intervals in a row
/// while `live` gets some in the same window (so the window was long enough
/// to have seen one). Both must probe every [`PROBE_INTERVAL`].
async fn assert_no_longer_probed(gone: &[&Upstream], live: &Upstream) {
    let names: Vec<&str> = gone.iter().map(|u| u.name).collect();
    eventually(
        &format!("probes at {names:?} to stop while {} is probed", live.name),
        || async {
            let before: Vec<usize> = gone.iter().map(|u| u.probes()).collect();
            let live_before = live.probes();
            tokio::time::sleep(3 * PROBE_INTERVAL).await;
            let after: Vec<usize> = gone.iter().map(|u| u.probes()).collect();
            after == before && live.probes() > live_before
        },
    )
    .await;
}

/// Asserts no series in GET /metrics mentions `needle` (a label value).
async fn assert_no_series(proxy: &Proxy, needle: &str) {
    let r = proxy.admin_get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let text = r.text();
    let left: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
    assert!(
        left.is_empty(),
        "{} series with {needle} left, such as {:?}",
        left.len(),
        &left[..left.len().min(3)]
    );
}

/// The errors `switchyard check` prints for the config file of `proxy`,
/// without their `error: ` prefix; asserts it exits 2.
fn check_errors(proxy: &Proxy) -> Vec<String> {
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(config_path(proxy))
        .output()
        .expect("run switchyard check");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| l.strip_prefix("error: "))
        .map(str::to_string)
        .collect()
}

/// Asserts `r` refuses the invalid config `text` with 400 and, in
/// `"errors"`, exactly the errors it has, each as `check` prints it.
fn assert_invalid(proxy: &Proxy, r: &Reply, text: &str) -> Vec<String> {
    let expected: Vec<String> = switchyard::Config::from_toml(text, &config_path(proxy))
        .expect_err("the test config is invalid")
        .iter()
        .map(ToString::to_string)
        .collect();
    let body = assert_refused(r, StatusCode::BAD_REQUEST);
    assert_eq!(body["errors"], json!(expected), "{body}");
    assert_eq!(
        check_errors(proxy),
        expected,
        "check prints the same errors"
    );
    let file = format!("{}:", config_path(proxy).display());
    assert!(
        expected.iter().all(|e| e.starts_with(&file)),
        "{expected:?}"
    );
    expected
}

// === add, remove ===

#[tokio::test]
async fn an_added_model_is_probed_before_the_reload_returns_and_serves_at_once() {
    let _reloading = reload_lock().await;
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let iris = model("iris", IRIS, &blue.url(), &green.url());
    let proxy = Proxy::start(&iris).await;
    let r = get(&proxy.url("/v1/chat/completions")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());

    // Probed once a minute: the round the reload waits for is the only one
    // before the first request.
    let chat_blue = Upstream::start("chat-blue").await;
    let chat_green = Upstream::start("chat-green").await;
    let chat = format!(
        "{}health.interval = \"60s\"\n",
        model("chat", CHAT, &chat_blue.url(), &chat_green.url())
    );
    rewrite(&proxy, "", &format!("{iris}\n{chat}"));
    assert_reloaded(&reload(&proxy).await, &["chat"], &[], &[], &["iris"]);
    assert!(chat_blue.probes() > 0, "chat's blue pool was not probed");
    assert!(chat_green.probes() > 0, "chat's green pool was not probed");

    assert_served(&proxy, "/v1/chat/completions", "blue", "chat-blue").await;
    assert_served(&proxy, "/v2/models/iris/infer", "blue", "blue").await;
    assert_eq!(model_names(&proxy).await, ["chat", "iris"]);
    let detail = model_detail(&proxy, "chat").await;
    assert_eq!(detail["active"], "blue");
    for pool in ["blue", "green"] {
        assert_eq!(
            detail["pools"][pool]["endpoints"][0]["state"], "healthy",
            "{detail}"
        );
    }
    let r = proxy.admin_get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_removed_model_answers_404_and_its_request_in_flight_finishes() {
    let _reloading = reload_lock().await;
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let chat_blue = Upstream::start("chat-blue").await;
    let chat_green = Upstream::start("chat-green").await;
    let iris = format!(
        "{}{FAST_PROBES}",
        model("iris", IRIS, &blue.url(), &green.url())
    );
    // The upstreams hold requests on /hold: chat serves that prefix.
    let chat = format!(
        "{}{FAST_PROBES}",
        model("chat", "/hold", &chat_blue.url(), &chat_green.url())
    );
    let proxy = Proxy::start(&format!("{iris}\n{chat}")).await;

    let held = in_background(&proxy, "/hold/chat");
    chat_blue.wait_held(1).await;
    rewrite(&proxy, "", &iris);
    assert_reloaded(&reload(&proxy).await, &[], &["chat"], &[], &["iris"]);

    let r = get(&proxy.url("/hold/chat")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("no model serves")),
        "{}",
        r.text()
    );
    assert_eq!(model_names(&proxy).await, ["iris"]);
    let r = proxy.admin_get("/models/chat").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    // Nor does /metrics show it, active or healthy, any more.
    assert_no_series(&proxy, "model=\"chat\"").await;
    assert_served(&proxy, "/v2/models/iris/infer", "blue", "blue").await;

    // The request that was in flight finishes where it started.
    chat_blue.release();
    let r = within("the request held across the reload", held)
        .await
        .expect("held request task");
    assert_eq!(
        (r.status, r.pool(), r.text().as_str()),
        (StatusCode::OK, "blue", "chat-blue")
    );
    assert_eq!(chat_blue.hits(), 1);

    // The removed model's pools are no longer probed; iris's still are.
    assert_no_longer_probed(&[&chat_blue, &chat_green], &blue).await;
    proxy.stop().await.unwrap();
}

// === endpoints ===

#[tokio::test]
async fn new_endpoints_for_the_active_pool_take_the_traffic_and_the_old_ones_finish_theirs() {
    let _reloading = reload_lock().await;
    let a = Upstream::start("blue-a").await;
    let b = Upstream::start("blue-b").await;
    let green = Upstream::start("green").await;
    // On "/": the upstreams hold requests on /hold.
    let iris = |blue: &str| format!("{}{FAST_PROBES}", model("iris", "/", blue, &green.url()));
    let proxy = Proxy::start(&iris(&a.url())).await;
    assert_served(&proxy, "/v2/models/iris/infer", "blue", "blue-a").await;

    let held = in_background(&proxy, "/hold/iris");
    a.wait_held(1).await;
    rewrite(&proxy, "", &iris(&b.url()));
    assert_reloaded(&reload(&proxy).await, &[], &[], &["iris"], &[]);

    for _ in 0..5 {
        assert_served(&proxy, "/v2/models/iris/infer", "blue", "blue-b").await;
    }
    let detail = model_detail(&proxy, "iris").await;
    assert_eq!(detail["active"], "blue", "{detail}");
    let endpoints = &detail["pools"]["blue"]["endpoints"];
    assert_eq!(endpoints.as_array().map(Vec::len), Some(1), "{detail}");
    assert_eq!(endpoints[0]["url"], b.url(), "{detail}");
    assert_eq!(endpoints[0]["state"], "healthy", "{detail}");
    // The old endpoint's series are gone; the new one's say it is healthy.
    let healthy = format!(
        "switchyard_endpoint_healthy{{endpoint=\"{}\",model=\"iris\",pool=\"blue\"}}",
        b.url()
    );
    assert_eq!(metric_value(&proxy, &healthy).await, Some(1.0));
    assert_no_series(&proxy, &a.url()).await;

    a.release();
    let r = within("the request held across the reload", held)
        .await
        .expect("held request task");
    assert_eq!(
        (r.status, r.pool(), r.text().as_str()),
        (StatusCode::OK, "blue", "blue-a")
    );
    assert_eq!(
        a.hits(),
        2,
        "one request before the reload, one held across it"
    );

    // The old endpoint is no longer probed; green, whose pool was kept, is.
    assert_no_longer_probed(&[&a], &green).await;
    // With its last request done, the old pool is dropped and closes its
    // connections: blue's open connections are the new endpoint's alone.
    eventually("the old pool's connections to close", || async {
        let open = metric_value(
            &proxy,
            "switchyard_upstream_connections{model=\"iris\",pool=\"blue\"}",
        )
        .await;
        let e = endpoint_detail(&proxy, "iris", "blue", &b.url()).await;
        open == e["open_connections"].as_f64()
    })
    .await;
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_reload_keeps_the_pool_a_flip_made_active_and_the_history_to_roll_back() {
    let _reloading = reload_lock().await;
    let a = Upstream::start("blue-a").await;
    let b = Upstream::start("blue-b").await;
    let c = Upstream::start("green-c").await;
    let d = Upstream::start("green-d").await;
    let proxy = Proxy::start(&model("iris", IRIS, &a.url(), &c.url())).await;
    let r = proxy.admin_post("/models/iris/flip").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_served(&proxy, "/v2/models/iris/infer", "green", "green-c").await;

    // Both pools change, green the active one; the config still says
    // `active = "blue"` (the default).
    rewrite(&proxy, "", &model("iris", IRIS, &b.url(), &d.url()));
    assert_reloaded(&reload(&proxy).await, &[], &[], &["iris"], &[]);
    assert_served(&proxy, "/v2/models/iris/infer", "green", "green-d").await;
    let detail = model_detail(&proxy, "iris").await;
    assert_eq!(detail["active"], "green", "{detail}");
    let history = detail["history"].as_array().expect("history");
    assert_eq!(history.len(), 1, "{detail}");
    assert_eq!(
        (
            &history[0]["from"],
            &history[0]["to"],
            &history[0]["reason"]
        ),
        (&json!("blue"), &json!("green"), &json!("flip"))
    );
    let state: Value =
        serde_json::from_slice(&std::fs::read(&proxy.state_path).expect("state file"))
            .expect("state file is JSON");
    assert_eq!(state["models"]["iris"]["active"], "green", "{state}");

    // Rollback returns to blue, which is now blue-b.
    let r = proxy.admin_post("/models/iris/rollback").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["active"], "blue");
    assert_served(&proxy, "/v2/models/iris/infer", "blue", "blue-b").await;
    assert_eq!((a.hits(), c.hits()), (0, 1));
    proxy.stop().await.unwrap();
}

// === settings ===

#[tokio::test]
async fn a_changed_setting_keeps_the_pools_their_connections_and_their_health() {
    let _reloading = reload_lock().await;
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let warm = 2; // the default warm_connections
    let iris = |extra: &str| {
        format!(
            "{}{FAST_PROBES}{extra}",
            model("iris", "/", &blue.url(), &green.url())
        )
    };
    let proxy = Proxy::start(&iris("")).await;
    for _ in 0..3 {
        assert_served(&proxy, "/v2/models/iris/infer", "blue", "blue").await;
    }
    eventually("green to accept the warm connections", || async {
        green.connections() >= warm
    })
    .await;
    let green_connections = green.connections();

    // A client keeps sending while the reload happens.
    let load = Load::start(&proxy, 1);
    load.wait_for_more(20).await;
    rewrite(&proxy, "", &iris("request_timeout = \"300ms\"\n"));
    assert_reloaded(&reload(&proxy).await, &[], &[], &["iris"], &[]);
    load.wait_for_more(20).await;
    let sent = load.stop().await;

    // Kept, not rebuilt: blue's served count carries on (a new pool starts
    // at zero), and several probe rounds later green still has only the
    // connections it had before (a new pool would have opened its own).
    let e = endpoint_detail(&proxy, "iris", "blue", &blue.url()).await;
    assert_eq!(e["state"], "healthy", "{e}");
    assert_eq!(e["served"], 3 + sent as u64, "{e}");
    let probes = green.probes();
    eventually("five more probe rounds at green", || async {
        green.probes() >= probes + 5 * warm
    })
    .await;
    assert_eq!(
        green.connections(),
        green_connections,
        "green's pool opened new connections: it was rebuilt"
    );
    let e = endpoint_detail(&proxy, "iris", "green", &green.url()).await;
    assert_eq!(e["state"], "healthy", "{e}");

    // The new setting applies.
    let detail = model_detail(&proxy, "iris").await;
    assert_eq!(detail["request_timeout_ms"], 300, "{detail}");
    let r = get(&proxy.url("/hold/iris")).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.text());
    assert_eq!(r.pool(), "blue");
    blue.release();
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn reloading_an_unchanged_file_changes_nothing() {
    let _reloading = reload_lock().await;
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let chat_blue = Upstream::start("chat-blue").await;
    let chat_green = Upstream::start("chat-green").await;
    let models = format!(
        "{}\n{}",
        model("iris", IRIS, &blue.url(), &green.url()),
        model("chat", CHAT, &chat_blue.url(), &chat_green.url())
    );
    let proxy = Proxy::start(&models).await;
    // The state (green) differs from the config's `active` (blue): the
    // state wins, as it does at a restart.
    let r = proxy.admin_post("/models/iris/flip").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    assert_reloaded(&reload(&proxy).await, &[], &[], &[], &["iris", "chat"]);
    assert_served(&proxy, "/v2/models/iris/infer", "green", "green").await;
    assert_served(&proxy, "/v1/chat/completions", "blue", "chat-blue").await;
    assert_eq!(
        model_detail(&proxy, "iris").await["history"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_reload_picks_up_a_renewed_ca_bundle_for_https_endpoints() {
    let _reloading = reload_lock().await;
    let old_ca = Pki::new();
    let new_ca = Pki::new();
    let loopback = ["127.0.0.1", "localhost"];
    let blue = TlsUpstream::start("blue", old_ca.server(&loopback)).await;
    let green = TlsUpstream::start("green", old_ca.server(&loopback)).await;
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let bundle = dir.path().join("ca.pem");
    std::fs::copy(old_ca.ca(), &bundle).expect("copy ca.pem");
    let iris = format!(
        "{}tls.ca = \"ca.pem\"\n",
        model("iris", "/", &blue.url(), &green.url())
    );
    let proxy = Proxy::try_start_in(dir, "", &iris)
        .await
        .expect("proxy starts");
    assert_served(&proxy, "/v2/models/iris/infer", "blue", "blue").await;

    // The bundle now trusts both CAs. The config file is the same, but an
    // https:// pool is built anew by every reload, reading the bundle again.
    let both = [old_ca.ca(), new_ca.ca()]
        .map(|ca| std::fs::read_to_string(ca).expect("read a CA"))
        .concat();
    std::fs::write(&bundle, both).expect("write the bundle");
    assert_reloaded(&reload(&proxy).await, &[], &[], &["iris"], &[]);
    assert_served(&proxy, "/v2/models/iris/infer", "blue", "blue").await;

    // Blue moves to a certificate of the new CA and drops its connections:
    // the next request connects, and the reloaded bundle trusts it.
    blue.rotate(new_ca.server(&loopback));
    eventually("the proxy to see blue's connections closed", || async {
        endpoint_detail(&proxy, "iris", "blue", &blue.url()).await["open_connections"] == 0
    })
    .await;
    assert_served(&proxy, "/v2/models/iris/infer", "blue", "blue").await;
    proxy.stop().await.unwrap();
}

// === refused ===

#[tokio::test]
async fn an_invalid_file_is_refused_with_the_errors_check_prints_and_the_running_config_stays() {
    let _reloading = reload_lock().await;
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let iris = model("iris", IRIS, &blue.url(), &green.url());
    let chat = model("chat", CHAT, &blue.url(), &green.url());
    let proxy = Proxy::start(&iris).await;

    // A syntax error: serde stops at it, so it comes alone.
    let text = rewrite(
        &proxy,
        "",
        &format!("{chat}\n{iris}\n[[models]\nname = \"x\"\n"),
    );
    let errors = assert_invalid(&proxy, &reload(&proxy).await, &text);
    assert_eq!(errors.len(), 1, "{errors:?}");

    // Errors in values: every one of them, with its line and column.
    let bad = format!(
        "[[models]]\nname = \"chat\"\npath_prefix = \"{CHAT}\"\nactive = \"red\"\nblue.endpoints = [\"{}\"]\ngreen.endpoints = []\n",
        blue.url()
    );
    let text = rewrite(&proxy, "", &format!("{iris}\n{bad}"));
    let errors = assert_invalid(&proxy, &reload(&proxy).await, &text);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("unknown pool \"red\""), "{errors:?}");

    // Nothing changed, and the running config still serves.
    assert_eq!(model_names(&proxy).await, ["iris"]);
    let r = get(&proxy.url("/v1/chat/completions")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert_served(&proxy, "/v2/models/iris/infer", "blue", "blue").await;

    // A file that cannot be read is the proxy's problem, not the caller's.
    std::fs::remove_file(config_path(&proxy)).expect("remove the config file");
    let r = reload(&proxy).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.text());
    let error = r.json()["error"].as_str().map(str::to_string);
    assert!(
        error.is_some_and(|e| e.starts_with("cannot read config file")),
        "{}",
        r.text()
    );
    assert_served(&proxy, "/v2/models/iris/infer", "blue", "blue").await;

    // Fixed, it applies.
    rewrite(&proxy, "", &format!("{iris}\n{chat}"));
    assert_reloaded(&reload(&proxy).await, &["chat"], &[], &[], &["iris"]);
    assert_served(&proxy, "/v1/chat/completions", "blue", "blue").await;
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_key_only_a_restart_applies_is_refused_by_name_and_nothing_changes() {
    let _reloading = reload_lock().await;
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let iris = model("iris", IRIS, &blue.url(), &green.url());
    let both = format!("{iris}\n{}", model("chat", CHAT, &blue.url(), &green.url()));
    let proxy = Proxy::start(&iris).await;

    rewrite(&proxy, "max_headers = 50", &both);
    let body = assert_refused(&reload(&proxy).await, StatusCode::CONFLICT);
    let error = body["error"].as_str().expect("error");
    assert!(
        error.contains("restart") && error.contains("proxy.max_headers"),
        "{body}"
    );
    assert!(
        !error.contains("max_connections"),
        "names only what changed: {body}"
    );

    let elsewhere = proxy.dir.path().join("elsewhere.json");
    let text = config_text(&elsewhere, "", &both);
    std::fs::write(config_path(&proxy), text).expect("rewrite the config file");
    let body = assert_refused(&reload(&proxy).await, StatusCode::CONFLICT);
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("state.path"),
        "{body}"
    );

    // The model added alongside was not.
    assert_eq!(model_names(&proxy).await, ["iris"]);
    let r = get(&proxy.url("/v1/chat/completions")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());

    rewrite(&proxy, "", &both);
    assert_reloaded(&reload(&proxy).await, &["chat"], &[], &[], &["iris"]);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_reload_that_leaves_the_active_pool_without_a_healthy_endpoint_is_refused() {
    let _reloading = reload_lock().await;
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let chat_blue = Upstream::start("chat-blue").await;
    let chat_green = Upstream::start("chat-green").await;
    let dead = Refusing::bind();
    let iris =
        |blue: &str, green: &str| format!("{}{FAST_PROBES}", model("iris", IRIS, blue, green));
    let chat = format!(
        "{}{FAST_PROBES}",
        model("chat", CHAT, &chat_blue.url(), &chat_green.url())
    );
    let proxy = Proxy::start(&iris(&blue.url(), &green.url())).await;

    // Blue, the active pool, moved to a dead address (and a model added).
    rewrite(
        &proxy,
        "",
        &format!("{}\n{chat}", iris(&dead.url(), &green.url())),
    );
    let body = assert_refused(&reload(&proxy).await, StatusCode::CONFLICT);
    let error = body["error"].as_str().expect("error");
    assert!(
        error.contains("\"iris\"") && error.contains("no healthy endpoint"),
        "{body}"
    );

    // Traffic stays on the old endpoint; nothing else changed either.
    for _ in 0..3 {
        assert_served(&proxy, "/v2/models/iris/infer", "blue", "blue").await;
    }
    let detail = model_detail(&proxy, "iris").await;
    assert_eq!(detail["pools"]["blue"]["endpoints"][0]["url"], blue.url());
    assert_eq!(model_names(&proxy).await, ["iris"]);
    let r = proxy.admin_get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // What the refused reload built left no series behind.
    assert_no_series(&proxy, "model=\"chat\"").await;
    assert_no_series(&proxy, &dead.url()).await;
    // The pools the refused reload built and probed are probed no more.
    assert!(chat_blue.probes() > 0, "the new model was not probed");
    assert_no_longer_probed(&[&chat_blue, &chat_green], &blue).await;

    // The standby may go dead: the switch guard protects it later.
    rewrite(&proxy, "", &iris(&blue.url(), &dead.url()));
    assert_reloaded(&reload(&proxy).await, &[], &[], &["iris"], &[]);
    assert_served(&proxy, "/v2/models/iris/infer", "blue", "blue").await;
    let r = proxy.admin_post("/models/iris/flip").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    proxy.stop().await.unwrap();
}

// === under load ===

/// Clients sending GET /v2/models/iris/infer on keep-alive connections,
/// each as fast as it is answered, until stopped.
struct Load {
    sent: Arc<AtomicUsize>,
    stop: CancellationToken,
    clients: JoinSet<Vec<String>>,
    mark: AtomicUsize,
}

impl Load {
    fn start(proxy: &Proxy, clients: usize) -> Load {
        let sent = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let mut set = JoinSet::new();
        for _ in 0..clients {
            let (sent, stop) = (Arc::clone(&sent), stop.clone());
            let url = proxy.url("/v2/models/iris/infer");
            set.spawn(async move {
                let client = client();
                let mut failures = Vec::new();
                while !stop.is_cancelled() {
                    match try_send(&client, Method::GET, &url, full_body("")).await {
                        Ok(r) if r.status == StatusCode::OK && r.pool() == "blue" => {}
                        Ok(r) => failures.push(format!("{} {}: {}", r.status, r.pool(), r.text())),
                        Err(e) => failures.push(format!("transport error: {e}")),
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                failures
            });
        }
        Load {
            sent,
            stop,
            clients: set,
            mark: AtomicUsize::new(0),
        }
    }

    /// Waits until `n` more requests were answered since the last call.
    async fn wait_for_more(&self, n: usize) {
        let from = self.mark.load(Ordering::SeqCst);
        eventually(&format!("{n} more requests under load"), || async {
            self.sent.load(Ordering::SeqCst) >= from + n
        })
        .await;
        self.mark
            .store(self.sent.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Stops the clients; asserts none of their requests failed and
    /// returns how many they sent.
    async fn stop(mut self) -> usize {
        self.stop.cancel();
        let mut failures = Vec::new();
        while let Some(done) = within("the load clients to stop", self.clients.join_next()).await {
            failures.extend(done.expect("load client"));
        }
        let sent = self.sent.load(Ordering::SeqCst);
        assert!(
            failures.is_empty(),
            "{} of {sent} requests failed, first: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        sent
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_valid_and_invalid_under_load_fail_no_request() {
    let _reloading = reload_lock().await;
    let blue = Upstream::start("blue").await;
    let blue2 = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let chat_blue = Upstream::start("chat-blue").await;
    let chat_other = Upstream::start("chat-other").await;
    let chat_green = Upstream::start("chat-green").await;
    let iris = model("iris", IRIS, &blue.url(), &green.url());
    let chat = model("chat", CHAT, &chat_blue.url(), &chat_green.url());
    let chat_moved = model("chat", CHAT, &chat_other.url(), &chat_green.url());
    let proxy = Proxy::start(&iris).await;

    let load = Load::start(&proxy, 4);
    load.wait_for_more(100).await;
    let steps: Vec<(&str, String, &str, Value)> = vec![
        (
            "add chat",
            format!("{iris}\n{chat}"),
            "",
            json!({"added": ["chat"]}),
        ),
        (
            "move chat's active pool",
            format!("{iris}\n{chat_moved}"),
            "",
            json!({"changed": ["chat"]}),
        ),
        (
            "change iris's request_timeout",
            format!("{iris}request_timeout = \"30s\"\n\n{chat_moved}"),
            "",
            json!({"changed": ["iris"]}),
        ),
        (
            "an invalid file",
            format!("{iris}\n{chat_moved}\n[[models]\n"),
            "",
            json!(400),
        ),
        (
            "a restart-only key",
            format!("{iris}request_timeout = \"30s\"\n\n{chat_moved}"),
            "max_connections = 500",
            json!(409),
        ),
        (
            "change iris's standby probes",
            format!(
                "{iris}request_timeout = \"30s\"\ngreen.health.interval = \"1s\"\n\n{chat_moved}"
            ),
            "",
            json!({"changed": ["iris"]}),
        ),
        (
            "a second endpoint in iris's active pool",
            format!(
                "{}request_timeout = \"30s\"\ngreen.health.interval = \"1s\"\n\n{chat_moved}",
                model("iris", IRIS, &blue.url(), &green.url()).replace(
                    &format!("blue.endpoints = [{:?}]", blue.url()),
                    &format!("blue.endpoints = [{:?}, {:?}]", blue.url(), blue2.url()),
                )
            ),
            "",
            json!({"changed": ["iris"]}),
        ),
        (
            "remove chat",
            format!(
                "{}request_timeout = \"30s\"\ngreen.health.interval = \"1s\"\n",
                model("iris", IRIS, &blue.url(), &green.url()).replace(
                    &format!("blue.endpoints = [{:?}]", blue.url()),
                    &format!("blue.endpoints = [{:?}, {:?}]", blue.url(), blue2.url()),
                )
            ),
            "",
            json!({"removed": ["chat"]}),
        ),
    ];
    for (what, models, proxy_extra, expect) in &steps {
        rewrite(&proxy, proxy_extra, models);
        let r = reload(&proxy).await;
        match expect.as_u64() {
            Some(status) => {
                assert_refused(&r, StatusCode::from_u16(status as u16).expect("status"));
            }
            None => {
                assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text());
                let body = r.json();
                for (list, names) in expect.as_object().expect("lists") {
                    assert_eq!(&body[list], names, "{what}: {body}");
                }
            }
        }
        // Requests flow between reloads, not just before and after them.
        load.wait_for_more(50).await;
    }
    let sent = load.stop().await;
    assert!(sent >= 100 + 50 * steps.len(), "only {sent} requests");
    assert!(
        blue2.hits() > 0,
        "the endpoint added under load got no request"
    );
    assert_eq!(green.hits(), 0);
    proxy.stop().await.unwrap();
}

// === SIGHUP ===

#[tokio::test]
async fn sighup_reloads_the_config_file() {
    let _reloading = reload_lock().await;
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let iris = model("iris", IRIS, &blue.url(), &green.url());
    let proxy = Proxy::start(&iris).await;

    rewrite(
        &proxy,
        "",
        &format!("{iris}\n{}", model("chat", CHAT, &blue.url(), &green.url())),
    );
    sighup();
    eventually("SIGHUP to add model chat", || async {
        model_names(&proxy).await == ["chat", "iris"]
    })
    .await;
    assert_served(&proxy, "/v1/chat/completions", "blue", "blue").await;
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn status_calls_answer_while_a_reload_waits_for_its_probes() {
    let _reloading = reload_lock().await;
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let iris = model("iris", IRIS, &blue.url(), &green.url());
    let proxy = Proxy::start(&iris).await;
    // A new model whose endpoints never answer: its first probe round takes
    // the whole probe timeout, and the reload waits for it.
    let hung_blue = HungUpstream::start().await;
    let hung_green = HungUpstream::start().await;
    let chat = format!(
        "{}health.timeout = \"1500ms\"\nhealth.interval = \"2s\"\n",
        model("chat", CHAT, &hung_blue.url(), &hung_green.url())
    );
    rewrite(&proxy, "", &format!("{iris}\n{chat}"));
    let url = proxy.admin_url("/reload");
    let mut reloading =
        tokio::spawn(async move { send(&client(), Method::POST, &url, full_body("")).await });
    // Give the reload time to reach its wait (it is refused after 1.5 s at
    // the earliest) ...
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut reloading)
            .await
            .is_err(),
        "the reload did not wait for its probes"
    );
    // ... and meanwhile the status calls answer at once.
    let answered = within(
        "GET /models during a reload",
        proxy.admin_get("/models/iris"),
    )
    .await;
    assert_eq!(answered.status, StatusCode::OK);
    assert_eq!(answered.json()["active"], "blue");
    assert!(
        !reloading.is_finished(),
        "the reload ended before the status call was checked"
    );
    let r = within("the reload", reloading).await.unwrap();
    // Its new pools probed unhealthy: a new model may start so; it is added.
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    proxy.stop().await.unwrap();
}
