//! `https://` endpoints: the real proxy in front of TLS upstreams whose
//! certificates a test-time CA signed. Trust (a configured CA, the webpki
//! roots by default), mTLS, the verified name, ALPN, health probes and warm
//! connections over TLS.

mod support;

use std::path::Path;
use std::sync::Arc;

use http::{header, StatusCode};
use serde_json::Value;
use support::tls::{Pki, TlsUpstream};
use support::*;

/// The names the test upstreams' certificates are for.
const LOOPBACK: [&str; 2] = ["127.0.0.1", "localhost"];

/// One model `iris` on `/`, with `lines` added to its table.
fn https_model(blue: &TlsUpstream, green: &TlsUpstream, lines: &str) -> String {
    format!("{}{lines}\n", model("iris", "/", &blue.url(), &green.url()))
}

/// `path` as a TOML string.
fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

async fn metric(proxy: &Proxy, series: &str) -> Option<f64> {
    metric_value(proxy, series).await
}

fn last_probe(endpoint: &Value) -> String {
    endpoint["last_probe"]["result"]
        .as_str()
        .unwrap_or_else(|| panic!("no last_probe.result in {endpoint}"))
        .to_string()
}

#[tokio::test]
async fn an_https_upstream_signed_by_the_configured_ca_serves_and_is_healthy() {
    let pki = Pki::new();
    let blue = TlsUpstream::start("blue", pki.server(&LOOPBACK)).await;
    let green = TlsUpstream::start("green", pki.server(&LOOPBACK)).await;
    // The bundle sits beside the config and is named relative to it. Green
    // is probed once, at start, so the count of its connections below does
    // not depend on when later rounds run.
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    std::fs::copy(pki.ca(), dir.path().join("ca.pem")).expect("copy ca.pem");
    let models = https_model(
        &blue,
        &green,
        "tls.ca = \"ca.pem\"\ngreen.health.interval = \"60s\"",
    );
    let proxy = Proxy::try_start_in(dir, "", &models)
        .await
        .expect("proxy starts");

    wait_for_state(&proxy, "iris", "blue", &blue.url(), "healthy").await;
    let green_detail = wait_for_state(&proxy, "iris", "green", &green.url(), "healthy").await;
    assert!(green.probes() >= 1);

    let r = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!((r.pool(), r.text().as_str()), ("blue", "blue"));
    let h = blue.handshakes();
    assert_eq!(h.failed, 0, "{h:?}");
    assert!(
        !h.alpn.is_empty() && h.alpn.iter().all(|p| p == "http/1.1"),
        "an http1 pool offers http/1.1 alone: {h:?}"
    );

    // Counted and kept warm over TLS as over TCP: the standby's probes left
    // their connections open, and the first request after a flip rides one.
    assert!(
        green_detail["open_connections"].as_u64() >= Some(1),
        "{green_detail}"
    );
    let series = r#"switchyard_upstream_connections{model="iris",pool="green"}"#;
    assert!(metric(&proxy, series).await >= Some(1.0));
    let opened = green.handshakes().ok;
    let flip = proxy.admin_post("/models/iris/flip").await;
    assert_eq!(flip.status, StatusCode::OK, "{}", flip.text());
    let r = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!((r.status, r.pool()), (StatusCode::OK, "green"));
    assert_eq!(
        green.handshakes().ok,
        opened,
        "the first request after the flip opened a new TLS connection"
    );
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_502_and_an_unhealthy_endpoint() {
    let pki = Pki::new();
    let rogue = Pki::new();
    let blue = TlsUpstream::start("blue", pki.server(&LOOPBACK)).await;
    let green = TlsUpstream::start("green", pki.server(&LOOPBACK)).await;
    // Blue trusts the test CA; green sets no tls.ca and so trusts the webpki
    // roots, which do not hold it. Probed once at start; the next round is a
    // minute away, so a request meets blue's new certificate below before
    // the prober does.
    let models = https_model(
        &blue,
        &green,
        &format!(
            "blue.tls.ca = {}\nhealth.interval = \"60s\"\nhealth.eject_after = 100",
            toml_path(&pki.ca())
        ),
    );
    let proxy = Proxy::start(&models).await;

    let e = wait_for_state(&proxy, "iris", "green", &green.url(), "unhealthy").await;
    let why = last_probe(&e);
    assert!(why.contains("UnknownIssuer"), "{why}");
    green
        .wait_handshakes("a refused handshake", |h| h.failed >= 1)
        .await;
    assert_eq!((green.probes(), green.hits()), (0, 0));

    wait_for_state(&proxy, "iris", "blue", &blue.url(), "healthy").await;
    let r = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!((r.status, r.pool()), (StatusCode::OK, "blue"));

    // Blue's certificate is replaced by one the proxy does not trust, and
    // its connections close: the next request must connect, and is refused.
    blue.rotate(rogue.server(&LOOPBACK));
    eventually("the proxy to see blue's connections closed", || async {
        endpoint_detail(&proxy, "iris", "blue", &blue.url()).await["open_connections"] == 0
    })
    .await;
    let r = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(r.pool(), "blue");
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
    let error = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains(&blue.url()), "{error}");
    blue.wait_handshakes("a refused handshake", |h| h.failed >= 1)
        .await;
    assert_eq!(
        blue.hits(),
        1,
        "only the request before the rotation arrived"
    );
    let series = r#"switchyard_upstream_errors_total{kind="connect",model="iris",pool="blue"}"#;
    assert_eq!(metric(&proxy, series).await, Some(1.0));
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn an_mtls_upstream_accepts_the_configured_client_certificate_only() {
    let pki = Pki::new();
    let blue = TlsUpstream::start("blue", pki.mtls_server(&LOOPBACK)).await;
    let green = TlsUpstream::start("green", pki.mtls_server(&LOOPBACK)).await;
    // Both pools trust the CA; only blue presents a client certificate.
    let models = https_model(
        &blue,
        &green,
        &format!(
            "tls.ca = {}\nblue.tls.cert = {}\nblue.tls.key = {}",
            toml_path(&pki.ca()),
            toml_path(&pki.client_cert()),
            toml_path(&pki.client_key()),
        ),
    );
    let proxy = Proxy::start(&models).await;

    wait_for_state(&proxy, "iris", "blue", &blue.url(), "healthy").await;
    let r = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "blue"));
    let h = blue.handshakes();
    assert!(h.ok >= 1 && h.with_client_cert == h.ok, "{h:?}");

    wait_for_state(&proxy, "iris", "green", &green.url(), "unhealthy").await;
    green
        .wait_handshakes(
            "a handshake refused for want of a client certificate",
            |h| h.failed >= 1,
        )
        .await;
    assert_eq!((green.probes(), green.hits()), (0, 0));
    assert_eq!(green.handshakes().ok, 0);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn server_name_sets_the_name_verified_instead_of_the_endpoint_host() {
    let pki = Pki::new();
    // Certificates for a name, reached by address.
    let blue = TlsUpstream::start("blue", pki.server(&["model.internal"])).await;
    let green = TlsUpstream::start("green", pki.server(&["model.internal"])).await;
    let models = https_model(
        &blue,
        &green,
        &format!(
            "tls.ca = {}\nblue.tls.server_name = \"model.internal\"",
            toml_path(&pki.ca())
        ),
    );
    let proxy = Proxy::start(&models).await;

    wait_for_state(&proxy, "iris", "blue", &blue.url(), "healthy").await;
    let r = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "blue"));

    // Green verifies against its endpoint's host, 127.0.0.1: not in the certificate.
    let e = wait_for_state(&proxy, "iris", "green", &green.url(), "unhealthy").await;
    let why = last_probe(&e);
    assert!(why.contains("certificate"), "{why}");
    assert_eq!(green.probes(), 0);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn an_h2_pool_negotiates_h2_and_is_probed_with_grpc_health_over_tls() {
    let pki = Pki::new();
    let blue = TlsUpstream::start("blue", pki.server(&LOOPBACK)).await;
    let green = TlsUpstream::start("green", pki.server(&LOOPBACK)).await;
    let models = https_model(
        &blue,
        &green,
        &format!("tls.ca = {}\nblue.protocol = \"h2\"", toml_path(&pki.ca())),
    );
    let proxy = Proxy::start(&models).await;

    wait_for_state(&proxy, "iris", "blue", &blue.url(), "healthy").await;
    assert!(blue.probes() >= 1, "the gRPC health check reached blue");
    let r = get(&proxy.url("/echo")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["version"], "HTTP/2.0");
    let h = blue.handshakes();
    assert!(
        !h.alpn.is_empty() && h.alpn.iter().all(|p| p == "h2"),
        "{h:?}"
    );

    let detail = proxy.admin_get("/models/iris").await.json();
    assert_eq!(detail["pools"]["blue"]["protocol"], "h2", "{detail}");
    proxy.stop().await.unwrap();
}
