//! Health inside a pool: passive ejection of an endpoint whose requests fail
//! (and its return after the back-off), and the warm standby, whose probes
//! keep connections open that the first requests after a flip reuse.

mod support;

use std::time::{Duration, Instant};

use http::{Method, Request, StatusCode};
use support::*;

/// Model "iris" on "/" with two blue endpoints and one green, then `extra`
/// lines in the model's table.
fn two_blue(a: &str, b: &str, green: &str, extra: &str) -> String {
    format!(
        "[[models]]\nname = \"iris\"\npath_prefix = \"/\"\nblue.endpoints = [{a:?}, {b:?}]\ngreen.endpoints = [{green:?}]\n{extra}"
    )
}

#[tokio::test]
async fn an_endpoint_failing_requests_is_ejected_and_returns_after_the_backoff() {
    let a = Upstream::start("blue-a").await;
    let b = Upstream::start("blue-b").await;
    let green = Upstream::start("green").await;
    let eject_after = 5;
    // Long enough for the checks made while `a` is out (they must finish
    // inside the back-off) and for the second failure to count as "in a
    // row" (within one back-off of the return), even on a loaded machine.
    let backoff = Duration::from_secs(1);
    let models = two_blue(
        &a.url(),
        &b.url(),
        &green.url(),
        &format!(
            "health.interval = \"100ms\"\nhealth.timeout = \"100ms\"\nhealth.healthy_after = 2\nhealth.eject_after = {eject_after}\nhealth.eject_backoff = \"1s\"\n"
        ),
    );
    let proxy = Proxy::start(&models).await;
    let ejections = format!(
        r#"switchyard_ejections_total{{endpoint="{}",model="iris",pool="blue"}}"#,
        a.url()
    );
    assert_eq!(metric_value(&proxy, &ejections).await, Some(0.0));

    // `a` answers 500 to everything but its probes, which still pass: only
    // the request path can see it is broken.
    a.set_failing(true);
    let (ejected_at, ejected_at_unix_ms) = fail_until_ejected(&proxy, &a, eject_after).await;
    assert_eq!(a.hits(), eject_after as usize);

    // Out of rotation at once: from now on its sibling serves everything.
    let e = endpoint_detail(&proxy, "iris", "blue", &a.url()).await;
    assert_eq!(e["state"], "ejected", "{e}");
    assert_eq!(e["consecutive_request_failures"], eject_after, "{e}");
    for _ in 0..30 {
        let r = get(&proxy.url("/v2/models/iris/infer")).await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "blue-b"));
    }
    assert_eq!(
        a.hits(),
        eject_after as usize,
        "an ejected endpoint got requests"
    );
    eventually("the ejection to be counted", || async {
        metric_value(&proxy, &ejections).await == Some(1.0)
    })
    .await;
    let e = endpoint_detail(&proxy, "iris", "blue", &a.url()).await;
    assert_eq!(
        e["state"], "ejected",
        "probes passing during the back-off: {e}"
    );
    let until = e["ejected_until_unix_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("{e}"));
    let first = Duration::from_millis(until.saturating_sub(ejected_at_unix_ms));
    assert!(first >= backoff, "ejected for {first:?}: {e}");
    let healthy = format!(
        r#"switchyard_endpoint_healthy{{endpoint="{}",model="iris",pool="blue"}}"#,
        a.url()
    );
    assert_eq!(metric_value(&proxy, &healthy).await, Some(0.0));

    a.set_failing(false);
    let e = wait_for_state(&proxy, "iris", "blue", &a.url(), "healthy").await;
    let out = ejected_at.elapsed();
    assert!(
        out >= backoff,
        "back after {out:?}, before the {backoff:?} back-off"
    );
    assert_eq!(e["consecutive_request_failures"], 0, "{e}");
    assert_eq!(e["ejected_until_unix_ms"], serde_json::Value::Null, "{e}");
    assert_eq!(metric_value(&proxy, &healthy).await, Some(1.0));

    // Back in rotation: it gets traffic again, and serves it.
    for _ in 0..100 {
        let r = get(&proxy.url("/v2/models/iris/infer")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        if r.text() == "blue-a" {
            break;
        }
    }
    assert_eq!(a.hits(), eject_after as usize + 1, "a got no traffic back");
    assert_eq!(metric_value(&proxy, &ejections).await, Some(1.0));

    // Failing again right after its return: ejected again, for twice as long.
    a.set_failing(true);
    let (_, ejected_at_unix_ms) = fail_until_ejected(&proxy, &a, eject_after).await;
    let e = eventually_some("the second ejection's back-off", || async {
        let e = endpoint_detail(&proxy, "iris", "blue", &a.url()).await;
        e["ejected_until_unix_ms"].as_u64().map(|until| (until, e))
    })
    .await;
    let (until, e) = e;
    let second = Duration::from_millis(until.saturating_sub(ejected_at_unix_ms));
    assert!(
        second >= backoff * 2 && second < backoff * 4,
        "ejected for {second:?} the second time in a row: {e}"
    );
    eventually("the second ejection to be counted", || async {
        metric_value(&proxy, &ejections).await == Some(2.0)
    })
    .await;
    proxy.stop().await.unwrap();
}

fn unix_ms_now() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.expect("clock after 1970").as_millis() as u64
}

/// Sends requests until `failing` (one of two blue endpoints, answering
/// 500) has failed `eject_after` of them; every other one must succeed.
/// Returns when the last request was sent: the ejection came after that
/// (the proxy ejects before its response can reach us), so a back-off
/// measured from here is never overstated.
async fn fail_until_ejected(proxy: &Proxy, failing: &Upstream, eject_after: u32) -> (Instant, u64) {
    let mut failures = 0;
    for _ in 0..500 {
        let sent = (Instant::now(), unix_ms_now());
        let r = get(&proxy.url("/v2/models/iris/infer")).await;
        assert_eq!(r.pool(), "blue");
        if r.text() == failing.name {
            assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
            failures += 1;
            if failures == eject_after {
                return sent;
            }
        } else {
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        }
    }
    panic!("{} failed only {failures} of 500 requests", failing.name);
}

#[tokio::test]
async fn a_lone_endpoint_ejected_leaves_its_pool_unavailable() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let models = format!(
        "{}health.interval = \"100ms\"\nhealth.timeout = \"100ms\"\nhealth.eject_after = 3\nhealth.eject_backoff = \"10s\"\n",
        model("iris", "/", &blue.url(), &green.url())
    );
    let proxy = Proxy::start(&models).await;
    blue.set_failing(true);
    for _ in 0..3 {
        let r = get(&proxy.url("/v2/models/iris/infer")).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let r = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!(
        (r.status, r.pool()),
        (StatusCode::SERVICE_UNAVAILABLE, "blue")
    );
    assert_eq!(blue.hits(), 3);
    // An ejected pool fails the switch guard like an unhealthy one.
    blue.set_failing(false);
    assert_eq!(
        proxy.admin_post("/models/iris/flip").await.status,
        StatusCode::OK
    );
    let r = proxy.admin_post("/models/iris/flip").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert_eq!(r.json()["endpoints"][0]["state"], "ejected");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn probes_keep_the_warm_connections_open_and_reuse_them() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let warm = 3;
    let models = format!(
        "{}health.interval = \"100ms\"\nhealth.timeout = \"100ms\"\nhealth.warm_connections = {warm}\n",
        model("iris", "/", &blue.url(), &green.url())
    );
    let proxy = Proxy::start(&models).await;

    eventually("green to accept the warm connections", || async {
        green.connections() >= warm
    })
    .await;
    // Five more rounds: every probe rides one of the open connections.
    let probes = green.probes();
    eventually("five more probe rounds at green", || async {
        green.probes() >= probes + 5 * warm
    })
    .await;
    assert_eq!(
        green.connections(),
        warm,
        "probe rounds opened new connections"
    );
    assert_eq!(green.hits(), 0);
    let e = endpoint_detail(&proxy, "iris", "green", &green.url()).await;
    assert_eq!(e["open_connections"], warm, "{e}");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn the_first_requests_after_a_flip_ride_the_warm_connections() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let warm = 3;
    // Green is probed once, at start. A probe round overlapping a request
    // needs one connection more than the idle ones (by design, the pool
    // grows to what is asked of it at once), so later rounds would make the
    // count below depend on timing.
    let models = format!(
        "{}health.interval = \"100ms\"\nhealth.timeout = \"100ms\"\nhealth.warm_connections = {warm}\ngreen.health.interval = \"60s\"\n",
        model("iris", "/", &blue.url(), &green.url())
    );
    let proxy = Proxy::start(&models).await;

    eventually("green to accept the warm connections", || async {
        green.connections() >= warm
    })
    .await;
    assert_eq!(green.hits(), 0, "no request went to green yet");
    let e = endpoint_detail(&proxy, "iris", "green", &green.url()).await;
    assert!(e["open_connections"].as_u64() >= Some(warm as u64), "{e}");

    let mut conn = h1_connection(proxy.addr).await;
    let opened = green.connections();
    let r = proxy.admin_post("/models/iris/flip").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for i in 0..50 {
        within("conn ready", conn.ready())
            .await
            .expect("connection open");
        let req = Request::builder()
            .method(Method::GET)
            .uri("/v2/models/iris/infer")
            .header("host", proxy.addr.to_string())
            .body(full_body(""))
            .unwrap();
        let resp = within("request", conn.send_request(req))
            .await
            .expect("response");
        let status = resp.status();
        let body = read_body(resp.into_body()).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"green"[..]),
            "request {i}"
        );
    }
    assert_eq!(green.hits(), 50);
    assert_eq!(
        green.connections(),
        opened,
        "the first requests after the flip opened connections"
    );
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn with_no_warm_connections_every_probe_connects_afresh() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    // A cold green: each probe on a connection of its own, none left idle.
    let models = format!(
        "{}health.interval = \"100ms\"\nhealth.timeout = \"100ms\"\ngreen.health.warm_connections = 0\n",
        model("iris", "/", &blue.url(), &green.url())
    );
    let proxy = Proxy::start(&models).await;
    eventually("three probes at green", || async { green.probes() >= 3 }).await;
    // Probes read first: a probe's connection is accepted before it counts.
    let probes = green.probes();
    let connections = green.connections();
    assert!(
        connections >= probes,
        "{probes} probes on {connections} connections"
    );
    eventually("green's probe connections to close", || async {
        let e = endpoint_detail(&proxy, "iris", "green", &green.url()).await;
        e["open_connections"] == 0
    })
    .await;

    // Once green serves, requests leave idle connections in its pool. The
    // probes must still connect afresh (that is what proves the network
    // path), not ride (and close) the connections requests keep alive.
    assert_eq!(
        proxy.admin_post("/models/iris/flip").await.status,
        StatusCode::OK
    );
    let client = client();
    let infer = proxy.url("/v2/models/iris/infer");
    // One request, on a connection of its own: probing left none idle.
    let r = send(&client, Method::GET, &infer, full_body("")).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "green"));
    let probes = green.probes();
    eventually("three more probes at green", || async {
        green.probes() >= probes + 3
    })
    .await;
    let probes = green.probes();
    let connections = green.connections();
    assert!(
        connections > probes,
        "{probes} probes and a request on {connections} connections: a probe rode the request's"
    );
    proxy.stop().await.unwrap();
}
