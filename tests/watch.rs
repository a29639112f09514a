//! Watch and automatic rollback, over real sockets: after a flip, the new
//! pool is judged under client traffic for `[models.watch] window`; a breach
//! rolls back with no manual call, a healthy pool is left alone, and a newer
//! switch ends the watch of an older one.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;
use support::*;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A window long enough to hold the test's traffic, short enough to wait out.
const WINDOW_MS: u64 = 3000;

async fn iris(watch: &str) -> (Upstream, Upstream, Proxy) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let models = format!(
        "{}\n[models.watch]\nwindow = \"{WINDOW_MS}ms\"\ninterval = \"100ms\"\n{watch}\n",
        model("iris", "/", &blue.url(), &green.url())
    );
    let proxy = Proxy::start(&models).await;
    (blue, green, proxy)
}

async fn status(proxy: &Proxy) -> Value {
    let r = proxy.admin_get("/models/iris").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

async fn flip(proxy: &Proxy, path: &str) -> Value {
    let r = proxy.admin_post(path).await;
    assert_eq!(r.status, StatusCode::OK, "POST {path}: {}", r.text());
    r.json()
}

async fn auto_rollbacks(proxy: &Proxy) -> Option<f64> {
    metric_value(proxy, r#"switchyard_auto_rollbacks_total{model="iris"}"#).await
}

/// Clients sending `GET /x` through the proxy, one after another each,
/// until stopped: the traffic the watch judges.
struct Load {
    stop: CancellationToken,
    clients: JoinSet<()>,
}

impl Load {
    fn start(proxy: &Proxy, clients: usize) -> Load {
        let stop = CancellationToken::new();
        let mut set = JoinSet::new();
        for _ in 0..clients {
            let (url, stop) = (proxy.url("/x"), stop.clone());
            set.spawn(async move {
                let client = client();
                while !stop.is_cancelled() {
                    // Failures are what some tests provoke; the watch counts them.
                    let _ = try_send(&client, Method::GET, &url, full_body("")).await;
                    // Paces the loop so it does not take a core of a shared machine.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
        Load { stop, clients: set }
    }

    async fn stop(mut self) {
        self.stop.cancel();
        within("the load clients to stop", async {
            while self.clients.join_next().await.is_some() {}
        })
        .await;
    }
}

/// Waits until the model's watch is in `state`; returns the model's status then.
async fn watch_state(proxy: &Proxy, state: &str) -> Value {
    eventually_some(&format!("the watch to be {state}"), || async {
        let s = status(proxy).await;
        (s["watch"]["state"] == state).then_some(s)
    })
    .await
}

/// Waits until the watch of the model's last switch runs (the watch task
/// learns of a switch just after it); returns the model's status then.
async fn watching(proxy: &Proxy, pool: &str) -> Value {
    eventually_some(&format!("a watch of {pool}"), || async {
        let s = status(proxy).await;
        let w = &s["watch"];
        let current = w["state"] == "watching"
            && w["pool"] == pool
            && w["started_unix_ms"] == s["last_switch"]["at_unix_ms"];
        current.then_some(s)
    })
    .await
}

#[tokio::test]
async fn a_pool_that_starts_failing_after_a_flip_is_rolled_back_on_its_own() {
    let (_blue, green, proxy) = iris("min_requests = 10\nmax_5xx_ratio = 0.2").await;
    assert_eq!(auto_rollbacks(&proxy).await, Some(0.0));
    flip(&proxy, "/models/iris/flip").await;
    let s = watching(&proxy, "green").await;
    assert_eq!(s["active"], "green");
    let watch = &s["watch"];
    assert_eq!(
        (&watch["pool"], &watch["from"]),
        (&"green".into(), &"blue".into())
    );
    let flipped_at = s["last_switch"]["at_unix_ms"].as_u64().unwrap();
    assert_eq!(
        watch["until_unix_ms"].as_u64(),
        Some(flipped_at + WINDOW_MS)
    );

    // The new version goes bad under live traffic; nobody calls rollback.
    green.set_failing(true);
    let load = Load::start(&proxy, 2);
    let s = eventually_some("the automatic rollback to blue", || async {
        let s = status(&proxy).await;
        (s["active"] == "blue").then_some(s)
    })
    .await;
    load.stop().await;

    let last = &s["last_switch"];
    assert_eq!(last["reason"], "auto_rollback", "{s}");
    assert_eq!(last["actor"], "watch");
    assert_eq!(
        (&last["from"], &last["to"]),
        (&"green".into(), &"blue".into())
    );
    let rolled_back_at = last["at_unix_ms"].as_u64().unwrap();
    assert!(
        rolled_back_at < flipped_at + WINDOW_MS,
        "rolled back {}ms after the flip, after the window",
        rolled_back_at - flipped_at
    );
    let note = last["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("5xx ratio") && note.contains("max_5xx_ratio 0.2"),
        "{s}"
    );
    let auto = &s["last_auto_rollback"];
    assert_eq!(
        (&auto["from"], &auto["to"]),
        (&"green".into(), &"blue".into())
    );
    assert_eq!(auto["reason"], note);
    assert_eq!(auto["at_unix_ms"], rolled_back_at);
    assert_eq!(s["watch"]["state"], "rolled_back", "{s}");
    assert_eq!(s["watch"]["reason"], note);
    assert!(s["watch"]["requests"].as_u64().unwrap() >= 10, "{s}");
    // The flip undone left the history, as a manual rollback's does.
    assert_eq!(s["history"], serde_json::json!([]), "{s}");

    assert_eq!(auto_rollbacks(&proxy).await, Some(1.0));
    let r = get(&proxy.url("/x")).await;
    assert_eq!((r.status, r.pool()), (StatusCode::OK, "blue"));
    // The rollback is persisted as any switch is.
    let saved = std::fs::read_to_string(&proxy.state_path).unwrap();
    assert!(saved.contains("auto_rollback"), "{saved}");
    // And is an event, with its reason.
    let events = proxy.admin_get("/events").await.json();
    let event = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["type"] == "switch")
        .cloned()
        .unwrap();
    assert_eq!(event["reason"], "auto_rollback", "{event}");
    assert_eq!(
        (&event["from"], &event["to"]),
        (&"green".into(), &"blue".into())
    );
    assert_eq!(event["actor"], "watch");
    assert_eq!(event["note"], note);
}

#[tokio::test]
async fn a_healthy_pool_is_not_rolled_back_and_the_watch_ends() {
    let (_blue, _green, proxy) =
        iris("min_requests = 10\nmax_5xx_ratio = 0.2\nmax_p99 = \"1s\"").await;
    flip(&proxy, "/models/iris/flip").await;
    let load = Load::start(&proxy, 2);
    let s = watch_state(&proxy, "passed").await;
    load.stop().await;
    assert_eq!(s["active"], "green", "{s}");
    assert_eq!(s["last_switch"]["reason"], "flip");
    assert_eq!(s["last_auto_rollback"], Value::Null);
    let watch = &s["watch"];
    assert!(watch["requests"].as_u64().unwrap() >= 10, "{s}");
    assert_eq!(watch["ratio_5xx"], 0.0);
    assert!(watch["p99_ms"].as_f64().unwrap() < 1000.0, "{s}");
    // Blue served the traffic before the flip only: nothing to compare.
    assert_eq!(watch["baseline"], Value::Null, "{s}");
    assert_eq!(auto_rollbacks(&proxy).await, Some(0.0));
    let r = get(&proxy.url("/x")).await;
    assert_eq!(r.pool(), "green");
}

#[tokio::test]
async fn a_pool_slower_than_max_p99_is_rolled_back() {
    let (_blue, green, proxy) = iris("min_requests = 5\nmax_p99 = \"200ms\"").await;
    flip(&proxy, "/models/iris/flip").await;
    green.set_delay(Duration::from_millis(400));
    let load = Load::start(&proxy, 4);
    let s = eventually_some("the automatic rollback to blue", || async {
        let s = status(&proxy).await;
        (s["active"] == "blue").then_some(s)
    })
    .await;
    load.stop().await;
    let note = s["last_auto_rollback"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        note.contains("p99 latency") && note.contains("max_p99 200ms"),
        "{s}"
    );
    assert_eq!(s["watch"]["state"], "rolled_back");
    assert!(s["watch"]["p99_ms"].as_f64().unwrap() > 200.0, "{s}");
    assert_eq!(auto_rollbacks(&proxy).await, Some(1.0));
}

#[tokio::test]
async fn a_relative_limit_judges_against_the_old_pools_traffic_before_the_flip() {
    let (_blue, green, proxy) = iris("min_requests = 10\nmax_5xx_ratio_increase = 0.1").await;
    // Blue's traffic before the flip is the baseline: no 5xx.
    for _ in 0..20 {
        assert_eq!(get(&proxy.url("/x")).await.pool(), "blue");
    }
    flip(&proxy, "/models/iris/flip").await;
    let s = watching(&proxy, "green").await;
    assert_eq!(s["watch"]["baseline"]["requests"], 20, "{s}");
    assert_eq!(s["watch"]["baseline"]["ratio_5xx"], 0.0);

    green.set_failing(true);
    let load = Load::start(&proxy, 2);
    let s = eventually_some("the automatic rollback to blue", || async {
        let s = status(&proxy).await;
        (s["active"] == "blue").then_some(s)
    })
    .await;
    load.stop().await;
    let note = s["last_auto_rollback"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        note.contains("above the old pool's 0.000") && note.contains("max_5xx_ratio_increase 0.1"),
        "{s}"
    );
}

#[tokio::test]
async fn a_manual_flip_during_a_window_ends_the_old_watch() {
    let (_blue, green, proxy) = iris("min_requests = 10\nmax_5xx_ratio = 0.2").await;
    flip(&proxy, "/models/iris/flip").await;
    watching(&proxy, "green").await;
    // The operator flips back before green had traffic: a new switch, a new
    // watch (of blue), and the watch of green is over.
    flip(&proxy, "/models/iris/flip?expect=green").await;
    let s = watching(&proxy, "blue").await;
    assert_eq!(s["watch"]["from"], "green");

    // Green goes bad, but it is the standby: nothing it does may move traffic.
    green.set_failing(true);
    let load = Load::start(&proxy, 2);
    let s = watch_state(&proxy, "passed").await;
    load.stop().await;
    assert_eq!(s["active"], "blue", "{s}");
    assert_eq!(s["watch"]["pool"], "blue");
    assert_eq!(s["last_switch"]["reason"], "flip");
    assert_eq!(s["last_auto_rollback"], Value::Null);
    assert_eq!(auto_rollbacks(&proxy).await, Some(0.0));
}

#[tokio::test]
async fn a_manual_rollback_ends_the_watch_and_starts_none() {
    let (_blue, _green, proxy) = iris("max_5xx_ratio = 0.2").await;
    flip(&proxy, "/models/iris/flip").await;
    watching(&proxy, "green").await;
    flip(&proxy, "/models/iris/rollback").await;
    let s = watch_state(&proxy, "cancelled").await;
    assert_eq!(s["active"], "blue");
    assert_eq!(s["watch"]["pool"], "green", "the watch of the flip ended");
    let reason = s["watch"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("superseded by a rollback to blue"), "{s}");
}
