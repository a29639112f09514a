//! Active health checks against real sockets: how fast hung, refusing and
//! failing endpoints are marked down and come back, that probes never touch
//! requests already in flight, and the health metrics.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;
use support::*;

fn millis(v: &Value) -> Duration {
    Duration::from_millis(v.as_u64().unwrap_or_else(|| panic!("not a count: {v}")))
}

#[tokio::test]
async fn hung_and_refusing_endpoints_are_down_after_the_first_round() {
    let interval = Duration::from_millis(200);
    let timeout = Duration::from_millis(100);
    let unhealthy_after = 2;
    let bound = timeout * unhealthy_after + interval;
    let hung = HungUpstream::start().await;
    let refusing_socket = Refusing::bind();
    let refusing = refusing_socket.url();
    let models = format!(
        "{}health.interval = \"{}ms\"\nhealth.timeout = \"{}ms\"\nhealth.unhealthy_after = {unhealthy_after}\n",
        model("iris", "/", &hung.url(), &refusing),
        interval.as_millis(),
        timeout.as_millis(),
    );

    let started = Instant::now();
    let proxy = Proxy::start(&models).await;
    // The first probe decides: no need to wait for `unhealthy_after` rounds.
    let h = wait_for_state(&proxy, "iris", "blue", &hung.url(), "unhealthy").await;
    let r = wait_for_state(&proxy, "iris", "green", &refusing, "unhealthy").await;
    let took = started.elapsed();
    assert!(took <= bound, "marked down after {took:?}, bound {bound:?}");

    let result = h["last_probe"]["result"].as_str().unwrap_or_default();
    assert!(result.contains("no answer within"), "{h}");
    assert_eq!(h["last_probe"]["ok"], false, "{h}");
    // A probe that timed out took the whole timeout, and says so.
    let latency = h["last_probe"]["latency_ms"].as_f64().unwrap_or_default();
    assert!(
        latency >= timeout.as_millis() as f64,
        "latency {latency}ms: {h}"
    );
    let result = r["last_probe"]["result"].as_str().unwrap_or_default();
    assert!(result.contains("connect failed"), "{r}");
    assert_eq!(r["open_connections"], 0, "{r}");

    // Each round opens fresh connections to the hung endpoint (its old ones
    // never answered); a probe that timed out must close its own, or every
    // round would leak `warm_connections` sockets.
    let warm = 2; // the default
    let e = eventually_some("five failed rounds on the hung endpoint", || async {
        let e = endpoint_detail(&proxy, "iris", "blue", &hung.url()).await;
        (e["consecutive_probe_failures"].as_u64() >= Some(5)).then_some(e)
    })
    .await;
    assert_eq!(e["state"], "unhealthy", "{e}");
    eventually(
        "the hung endpoint's timed-out probe connections to close",
        || async {
            let e = endpoint_detail(&proxy, "iris", "blue", &hung.url()).await;
            e["open_connections"].as_u64() <= Some(warm)
        },
    )
    .await;
    let slow = r#"switchyard_probe_duration_seconds_bucket{model="iris",pool="blue",le="0.05"}"#;
    let all = r#"switchyard_probe_duration_seconds_count{model="iris",pool="blue"}"#;
    assert_eq!(
        metric_value(&proxy, slow).await,
        Some(0.0),
        "timed-out probes observed as faster than their timeout ({:?} probes in all)",
        metric_value(&proxy, all).await
    );
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn an_endpoint_goes_down_after_unhealthy_after_failures_and_back_after_healthy_after() {
    // Timeout equal to the interval: the worst case from a failure to the
    // mark is `unhealthy_after` intervals, which `timeout * unhealthy_after +
    // interval` then covers.
    let interval = Duration::from_millis(200);
    let timeout = interval;
    let unhealthy_after = 3;
    let bound = timeout * unhealthy_after + interval;
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let models = format!(
        "{}health.interval = \"200ms\"\nhealth.timeout = \"200ms\"\nhealth.unhealthy_after = {unhealthy_after}\nhealth.healthy_after = 3\nhealth.warm_connections = 1\n",
        model("iris", "/", &blue.url(), &green.url())
    );
    let proxy = Proxy::start(&models).await;
    let url = blue.url();
    wait_for_state(&proxy, "iris", "blue", &url, "healthy").await;

    let started = Instant::now();
    blue.set_healthy(false);
    // One failed probe is not enough.
    let e = eventually_some("blue's first failed probe", || async {
        let e = endpoint_detail(&proxy, "iris", "blue", &url).await;
        (e["last_probe"]["ok"] == false).then_some(e)
    })
    .await;
    assert_eq!(e["consecutive_probe_failures"], 1, "polled too late? {e}");
    assert_eq!(e["state"], "healthy", "{e}");
    assert_eq!(e["last_probe"]["result"], "status 503", "{e}");
    let e = wait_for_state(&proxy, "iris", "blue", &url, "unhealthy").await;
    let took = started.elapsed();
    assert!(took <= bound, "marked down after {took:?}, bound {bound:?}");
    assert_eq!(e["consecutive_probe_failures"], unhealthy_after, "{e}");
    let r = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!(
        (r.status, r.pool()),
        (StatusCode::SERVICE_UNAVAILABLE, "blue")
    );

    let probes_before = blue.probes();
    blue.set_healthy(true);
    // One passing probe is not enough either.
    let e = eventually_some("blue's first passing probe", || async {
        let e = endpoint_detail(&proxy, "iris", "blue", &url).await;
        (e["last_probe"]["ok"] == true).then_some(e)
    })
    .await;
    assert_eq!(e["state"], "unhealthy", "{e}");
    assert_eq!(e["consecutive_probe_failures"], 0, "{e}");
    wait_for_state(&proxy, "iris", "blue", &url, "healthy").await;
    assert!(
        blue.probes() - probes_before >= 3,
        "back after {} probes",
        blue.probes() - probes_before
    );
    let r = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "blue"));
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_probe_never_touches_a_request_in_flight() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let models = format!(
        "{}health.interval = \"100ms\"\nhealth.timeout = \"100ms\"\nhealth.unhealthy_after = 1\n",
        model("iris", "/", &blue.url(), &green.url())
    );
    let proxy = Proxy::start(&models).await;

    let url = proxy.url("/hold/v2/models/iris/infer");
    let held = tokio::spawn(async move { get(&url).await });
    blue.wait_held(1).await;
    blue.set_healthy(false);
    let e = wait_for_state(&proxy, "iris", "blue", &blue.url(), "unhealthy").await;
    assert_eq!(e["in_flight"], 1, "{e}");
    // New requests see the change; the held one must not.
    let r = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());

    blue.release();
    let r = within("the held request", held)
        .await
        .expect("held request task");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!((r.pool(), r.text().as_str()), ("blue", "blue"));
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn health_metrics_are_exposed_after_a_few_rounds() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    green.set_healthy(false);
    let models = format!(
        "{}health.interval = \"100ms\"\nhealth.timeout = \"100ms\"\n",
        model("iris", "/", &blue.url(), &green.url())
    );
    let proxy = Proxy::start(&models).await;
    eventually("three probe rounds on each pool", || async {
        blue.probes() >= 6 && green.probes() >= 6
    })
    .await;

    let healthy = |pool: &str, url: &str| {
        format!(r#"switchyard_endpoint_healthy{{endpoint="{url}",model="iris",pool="{pool}"}}"#)
    };
    assert_eq!(
        metric_value(&proxy, &healthy("blue", &blue.url())).await,
        Some(1.0)
    );
    assert_eq!(
        metric_value(&proxy, &healthy("green", &green.url())).await,
        Some(0.0)
    );

    let ok = r#"switchyard_probes_total{model="iris",pool="blue",result="ok"}"#;
    assert!(metric_value(&proxy, ok).await >= Some(6.0));
    let fail = r#"switchyard_probes_total{model="iris",pool="green",result="fail"}"#;
    assert!(metric_value(&proxy, fail).await >= Some(6.0));
    let fail = r#"switchyard_probes_total{model="iris",pool="blue",result="fail"}"#;
    assert_eq!(metric_value(&proxy, fail).await, Some(0.0));
    let durations = r#"switchyard_probe_duration_seconds_count{model="iris",pool="blue"}"#;
    assert!(metric_value(&proxy, durations).await >= Some(6.0));
    for pool in ["blue", "green"] {
        let open = format!(r#"switchyard_upstream_connections{{model="iris",pool="{pool}"}}"#);
        assert!(metric_value(&proxy, &open).await > Some(0.0), "{open}");
    }
    let ejections = format!(
        r#"switchyard_ejections_total{{endpoint="{}",model="iris",pool="blue"}}"#,
        blue.url()
    );
    assert_eq!(metric_value(&proxy, &ejections).await, Some(0.0));
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn probe_results_show_latency_and_time() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&model("iris", "/", &blue.url(), &green.url())).await;
    let e = endpoint_detail(&proxy, "iris", "blue", &blue.url()).await;
    let probe = &e["last_probe"];
    assert_eq!(probe["ok"], true, "{e}");
    assert!(probe["latency_ms"].as_f64() >= Some(0.0), "{e}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let at = millis(&probe["at_unix_ms"]);
    assert!(at <= now && now - at < Duration::from_secs(10), "{e}");
    assert_eq!(probe["ejected_until_unix_ms"], Value::Null, "{e}");
    proxy.stop().await.unwrap();
}
