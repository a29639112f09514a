//! DNS endpoint discovery against a real DNS server (tests/support/dns.rs)
//! on loopback: SRV records point at upstreams on 127.0.0.1 with their own
//! ports, and the test changes the records while the proxy serves.

mod support;

use std::collections::HashSet;
use std::net::Ipv4Addr;

use http::StatusCode;
use support::dns::{Dns, DnsMode};
use support::*;

const SRV: &str = "_http._tcp.models.test";
const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Model "iris": blue discovered through `SRV` on `dns`, green static.
fn dns_model(dns: &Dns, green: &Upstream) -> String {
    format!(
        "[[models]]\nname = \"iris\"\npath_prefix = \"/\"\nhealth.interval = \"100ms\"\nhealth.timeout = \"100ms\"\nhealth.healthy_after = 1\nhealth.unhealthy_after = 1\n\
         blue.endpoints = [\"http://{SRV}\"]\nblue.discover = \"dns\"\nblue.dns_servers = [\"{}\"]\nblue.resolve_interval = \"100ms\"\n\
         green.endpoints = [{:?}]\n",
        dns.addr,
        green.url()
    )
}

/// Points `SRV` at `upstreams`, each under a name of its own.
fn publish(dns: &Dns, upstreams: &[&Upstream]) {
    let records: Vec<(u16, String)> = upstreams
        .iter()
        .map(|u| (u.addr.port(), format!("{}.models.test", u.name)))
        .collect();
    for (_, target) in &records {
        dns.set_a(target, &[LOCAL]);
    }
    let records: Vec<(u16, &str)> = records.iter().map(|(p, t)| (*p, t.as_str())).collect();
    dns.set_srv(SRV, &records);
}

/// The blue endpoints status lists: (url, state, discovered_from).
async fn blue_endpoints(proxy: &Proxy) -> Vec<(String, String, String)> {
    let r = proxy.admin_get("/models/iris").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    v["pools"]["blue"]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e["url"].as_str().unwrap_or_default().to_string(),
                e["state"].as_str().unwrap_or_default().to_string(),
                e["discovered_from"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// Which upstreams answer `n` requests; every one must succeed.
async fn served_by(proxy: &Proxy, n: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    for _ in 0..n {
        let r = get(&proxy.url("/v2/models/iris/infer")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.pool(), "blue");
        seen.insert(r.text());
    }
    seen
}

async fn dns_metric(proxy: &Proxy, result: &str) -> f64 {
    metric_value(
        proxy,
        &format!(
            r#"switchyard_dns_resolutions_total{{model="iris",pool="blue",result="{result}"}}"#
        ),
    )
    .await
    .unwrap_or(0.0)
}

#[tokio::test]
async fn the_pool_follows_its_records_warms_new_endpoints_and_drains_removed_ones() {
    let dns = Dns::start().await;
    let a = Upstream::start("blue-a").await;
    let b = Upstream::start("blue-b").await;
    let c = Upstream::start("blue-c").await;
    let green = Upstream::start("green").await;
    publish(&dns, &[&a, &b]);
    let proxy = Proxy::start(&dns_model(&dns, &green)).await;

    // Resolved before serving: both endpoints take traffic at once.
    let seen = served_by(&proxy, 40).await;
    assert_eq!(seen, HashSet::from(["blue-a".into(), "blue-b".into()]));
    let listed = blue_endpoints(&proxy).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|(_, _, from)| from == &format!("http://{SRV}")),
        "{listed:?}"
    );
    assert!(dns_metric(&proxy, "ok").await >= 1.0);

    // A record appears for an endpoint whose probes fail: listed, never served.
    c.set_healthy(false);
    publish(&dns, &[&a, &b, &c]);
    eventually("c listed and probed unhealthy", || async {
        blue_endpoints(&proxy)
            .await
            .iter()
            .any(|(url, state, _)| url == &c.url() && state == "unhealthy")
    })
    .await;
    served_by(&proxy, 40).await;
    assert_eq!(
        c.hits(),
        0,
        "an endpoint that failed its probes took traffic"
    );
    assert!(c.probes() > 0);

    // Once its probes pass it joins, warm.
    c.set_healthy(true);
    eventually("c serves", || async {
        served_by(&proxy, 10).await.contains("blue-c")
    })
    .await;

    // A slow request on b, then b's record goes: the request finishes, no
    // new one reaches b, and b's series go.
    let mut holds = Vec::new();
    eventually("a /hold request on b", || {
        // One at a time: a new one once the last has arrived somewhere.
        let arrived = a.held() + b.held() + c.held();
        if b.held() == 0 && arrived == holds.len() {
            let url = proxy.url("/hold");
            holds.push(tokio::spawn(async move { get(&url).await }));
        }
        let on_b = b.held() > 0;
        async move { on_b }
    })
    .await;
    let b_hits = b.hits();
    publish(&dns, &[&a, &c]);
    eventually("b gone from the pool", || async {
        !blue_endpoints(&proxy)
            .await
            .iter()
            .any(|(url, _, _)| url == &b.url())
    })
    .await;
    let seen = served_by(&proxy, 40).await;
    assert!(!seen.contains("blue-b"), "{seen:?}");
    assert_eq!(b.hits(), b_hits, "a removed endpoint took a new request");
    let series = format!(
        r#"switchyard_endpoint_healthy{{endpoint="{}",model="iris",pool="blue"}}"#,
        b.url()
    );
    assert_eq!(metric_value(&proxy, &series).await, None);
    a.release();
    b.release();
    c.release();
    let mut from_b = 0;
    for hold in holds {
        let r = within("held requests finish", hold)
            .await
            .expect("hold task");
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        from_b += usize::from(r.text() == "blue-b");
    }
    assert_eq!(from_b, 1, "the request held on b finished on b");

    // SERVFAIL: the last set keeps serving. Two more failed rounds, so at
    // least one whole round ran after the first failure was counted.
    dns.set_mode(DnsMode::ServFail);
    let errors = dns_metric(&proxy, "error").await;
    eventually("two failed resolutions", || async {
        dns_metric(&proxy, "error").await >= errors + 2.0
    })
    .await;
    let seen = served_by(&proxy, 20).await;
    assert_eq!(seen, HashSet::from(["blue-a".into(), "blue-c".into()]));

    // The server gone altogether: still the last set.
    let queries = dns.queries();
    assert!(queries > 0);
    dns.stop().await;
    let errors = dns_metric(&proxy, "error").await;
    eventually("two resolutions with no server", || async {
        dns_metric(&proxy, "error").await >= errors + 2.0
    })
    .await;
    let seen = served_by(&proxy, 20).await;
    assert_eq!(seen, HashSet::from(["blue-a".into(), "blue-c".into()]));
    assert_eq!(blue_endpoints(&proxy).await.len(), 2);
    proxy.stop().await.expect("clean stop");
}

/// An IPv4-only cluster: AAAA is NODATA at once while A is lost or fails.
/// That is not "no records": the endpoints stay (hickory's dual-stack
/// lookup returned whichever error came first, NODATA, and emptied the pool).
#[tokio::test]
async fn a_lost_or_failed_a_query_keeps_the_endpoints() {
    let dns = Dns::start().await;
    let a = Upstream::start("blue-a").await;
    let b = Upstream::start("blue-b").await;
    let green = Upstream::start("green").await;
    publish(&dns, &[&a, &b]);
    let proxy = Proxy::start(&dns_model(&dns, &green)).await;
    let both = HashSet::from(["blue-a".to_string(), "blue-b".to_string()]);
    assert_eq!(served_by(&proxy, 20).await, both);

    for mode in [DnsMode::DropA, DnsMode::ServFailA] {
        dns.set_mode(mode);
        let errors = dns_metric(&proxy, "error").await;
        eventually(&format!("two failed rounds ({mode:?})"), || async {
            dns_metric(&proxy, "error").await >= errors + 2.0
        })
        .await;
        assert_eq!(blue_endpoints(&proxy).await.len(), 2, "{mode:?}");
        assert_eq!(served_by(&proxy, 20).await, both, "{mode:?}");
        assert_eq!(dns_metric(&proxy, "empty").await, 0.0, "{mode:?}");
    }

    // Answered again: still both, and "ok" rounds resume.
    dns.set_mode(DnsMode::Answer);
    let ok = dns_metric(&proxy, "ok").await;
    eventually("a resolution answered again", || async {
        dns_metric(&proxy, "ok").await > ok
    })
    .await;
    assert_eq!(served_by(&proxy, 20).await, both);
    proxy.stop().await.expect("clean stop");
}

/// A new endpoint takes no request while its first probe is out (held by
/// the upstream), and is warm (a connection open) before its first request.
#[tokio::test]
async fn a_new_endpoint_serves_only_once_its_probe_passed() {
    let dns = Dns::start().await;
    let a = Upstream::start("blue-a").await;
    let c = Upstream::start("blue-c").await;
    let green = Upstream::start("green").await;
    publish(&dns, &[&a]);
    // Probes may take a second: the held one must not time out meanwhile.
    let config = dns_model(&dns, &green)
        .replace("health.interval = \"100ms\"", "health.interval = \"2s\"")
        .replace("health.timeout = \"100ms\"", "health.timeout = \"2s\"");
    let proxy = Proxy::start(&config).await;
    assert_eq!(
        served_by(&proxy, 10).await,
        HashSet::from(["blue-a".into()])
    );

    c.hold_health();
    publish(&dns, &[&a, &c]);
    eventually("c's first probe arrived", || async { c.probes() > 0 }).await;
    let listed = blue_endpoints(&proxy).await;
    assert!(
        listed
            .iter()
            .any(|(url, state, _)| url == &c.url() && state == "pending"),
        "{listed:?}"
    );
    assert_eq!(
        served_by(&proxy, 30).await,
        HashSet::from(["blue-a".into()])
    );
    assert_eq!(c.hits(), 0, "c took traffic before its probe passed");
    assert!(c.connections() > 0, "the probe opened a connection to c");

    c.release_health();
    eventually("c serves once probed", || async {
        served_by(&proxy, 10).await.contains("blue-c")
    })
    .await;
    proxy.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_name_without_records_starts_empty_fills_later_and_empties_again() {
    let dns = Dns::start().await;
    let a = Upstream::start("blue-a").await;
    let green = Upstream::start("green").await;
    // No records at all: NXDOMAIN. The proxy starts anyway.
    let proxy = Proxy::start(&dns_model(&dns, &green)).await;
    assert!(blue_endpoints(&proxy).await.is_empty());
    let r = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    eventually("an empty answer counted", || async {
        dns_metric(&proxy, "empty").await >= 2.0
    })
    .await;

    // The records appear (a standby scaled up): it serves.
    publish(&dns, &[&a]);
    eventually("a serves", || async {
        get(&proxy.url("/v2/models/iris/infer")).await.text() == "blue-a"
    })
    .await;

    // An authoritative "no such name" empties the pool.
    dns.remove_srv(SRV);
    eventually("the pool empty again", || async {
        blue_endpoints(&proxy).await.is_empty()
    })
    .await;
    let r = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    proxy.stop().await.expect("clean stop");
}

#[tokio::test]
async fn check_names_the_line_of_each_bad_discovery_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("switchyard.toml");
    let models = "[[models]]\nname = \"iris\"\npath_prefix = \"/\"\n\
        blue.endpoints = [\"http://models.test:8000\"]\nblue.discover = \"mdns\"\n\
        green.endpoints = [\"http://10.0.0.9:8000\", \"http://_http._tcp.models.test:80\"]\ngreen.discover = \"dns\"\n\
        green.resolve_interval = \"10ms\"\ngreen.dns_servers = [\"resolver.local\"]\n";
    let text = config_text(&dir.path().join("state.json"), "", models);
    std::fs::write(&path, &text).expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config", path.to_str().expect("utf-8 path")])
        .output()
        .expect("run switchyard check");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line_of = |needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
            .expect("needle in config")
    };
    for (needle, key) in [
        ("blue.discover", "models[0].blue.discover"),
        ("10.0.0.9", "models[0].green.endpoints"),
        ("_http._tcp", "models[0].green.endpoints"),
        ("green.resolve_interval", "models[0].green.resolve_interval"),
        ("resolver.local", "models[0].green.dns_servers"),
    ] {
        let at = format!("{}:{}:", path.display(), line_of(needle));
        assert!(
            stderr.lines().any(|l| l.contains(&at) && l.contains(key)),
            "no error at {at} naming {key}:\n{stderr}"
        );
    }
}

#[tokio::test]
async fn a_reload_that_keeps_the_pool_keeps_its_discovered_endpoints() {
    let dns = Dns::start().await;
    let a = Upstream::start("blue-a").await;
    let green = Upstream::start("green").await;
    let green2 = Upstream::start("green-2").await;
    publish(&dns, &[&a]);
    let proxy = Proxy::start(&dns_model(&dns, &green)).await;
    served_by(&proxy, 5).await;
    let before =
        proxy.admin_get("/models/iris").await.json()["pools"]["blue"]["endpoints"][0].clone();
    assert_eq!(before["url"], a.url());

    // Only green changes: the model is rebuilt around the same blue pool.
    let path = proxy.dir.path().join("switchyard.toml");
    let text = std::fs::read_to_string(&path).expect("read config");
    std::fs::write(&path, text.replace(&green.url(), &green2.url())).expect("write config");
    let r = proxy.admin_post("/reload").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json()["changed"],
        serde_json::json!(["iris"]),
        "{}",
        r.text()
    );

    let after =
        proxy.admin_get("/models/iris").await.json()["pools"]["blue"]["endpoints"][0].clone();
    assert_eq!(after["url"], a.url());
    assert_eq!(after["state"], "healthy", "{after}");
    assert!(
        after["served"].as_u64() >= before["served"].as_u64(),
        "counters kept: {before} then {after}"
    );
    assert_eq!(served_by(&proxy, 5).await, HashSet::from(["blue-a".into()]));
    proxy.stop().await.expect("clean stop");
}
