//! What the proxy does to a request on its way: which model it routes to,
//! which headers it drops, adds and keeps, and how it answers when the
//! upstream cannot be reached or does not answer in time.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{header, Method, Request, Response, StatusCode};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use support::*;

/// Sends `req` on a fresh HTTP/1.1 connection and reads the whole response.
async fn send_h1(addr: SocketAddr, req: Request<TestBody>) -> Reply {
    send_on(&mut h1_connection(addr).await, req).await
}

/// Sends `req` on `conn` and reads the whole response.
async fn send_on(
    conn: &mut hyper::client::conn::http1::SendRequest<TestBody>,
    req: Request<TestBody>,
) -> Reply {
    let what = format!("{} {}", req.method(), req.uri());
    let response = within(&what, async {
        conn.ready().await?;
        conn.send_request(req).await
    })
    .await
    .unwrap_or_else(|e| panic!("{what} failed: {e}"));
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: read_body(body).await,
    }
}

/// A GET of `path` with `Host: host` over HTTP/1.1.
async fn get_as(addr: SocketAddr, host: &str, path: &str) -> Reply {
    let req = Request::get(path)
        .header(header::HOST, host)
        .body(full_body(""))
        .unwrap();
    send_h1(addr, req).await
}

/// The value of `name` in the `/metrics` exposition on the admin listener.
async fn metric(proxy: &Proxy, series: &str) -> Option<f64> {
    let text = proxy.admin_get("/metrics").await.text();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

// === forwarding rules ===

#[tokio::test]
async fn method_path_and_query_are_kept_and_hop_by_hop_headers_dropped() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&model("iris", "/", &blue.url(), &green.url())).await;

    let req = Request::builder()
        .method(Method::PATCH)
        .uri("/echo/v2/models/iris/infer?batch=4&mode=fast%20path")
        .header(header::HOST, "iris.example:8080")
        .header(header::CONNECTION, "x-foo")
        .header("x-foo", "per-hop secret")
        .header("keep-alive", "timeout=5")
        .header(header::PROXY_AUTHORIZATION, "Basic c2VjcmV0")
        .header(header::TE, "gzip")
        .header(header::UPGRADE, "websocket")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-request-id", "req-123")
        .header("x-model-input", "kept")
        .body(full_body("{\"inputs\":[1,2,3]}"))
        .unwrap();
    let r = send_h1(proxy.addr, req).await;
    assert_eq!(
        (r.status, r.pool()),
        (StatusCode::OK, "blue"),
        "{}",
        r.text()
    );
    let seen = r.json();
    assert_eq!(seen["method"], "PATCH");
    assert_eq!(seen["path"], "/echo/v2/models/iris/infer");
    assert_eq!(seen["query"], "batch=4&mode=fast%20path");
    assert_eq!(seen["body_len"], 18);

    let headers = &seen["headers"];
    for dropped in [
        "connection",
        "x-foo",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
    ] {
        assert!(
            headers.get(dropped).is_none(),
            "the upstream saw hop-by-hop header {dropped}: {headers}"
        );
    }
    assert_eq!(headers["x-model-input"], "kept");
    assert_eq!(headers["host"], "iris.example:8080");
    assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "iris.example:8080");
    assert_eq!(headers["x-request-id"], "req-123");
}

#[tokio::test]
async fn forwarded_headers_are_added_when_the_client_sent_none() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&model("iris", "/", &blue.url(), &green.url())).await;

    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = get(&proxy.url("/echo")).await;
        assert_eq!(r.status, StatusCode::OK);
        let headers = r.json()["headers"].clone();
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], proxy.addr.to_string());
        let id = headers["x-request-id"]
            .as_str()
            .expect("x-request-id")
            .to_string();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "generated x-request-id is not 32 hex digits: {id:?}"
        );
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "each request gets its own id");
}

// Binds 127.0.0.2 and .3, which only Linux routes to loopback by default.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn each_connection_forwards_its_own_clients_address() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&model("iris", "/", &blue.url(), &green.url())).await;

    // Connections from the same address in a row share what the proxy
    // knows of their client: a change of address must not reuse it.
    for from in [
        "127.0.0.2",
        "127.0.0.2",
        "127.0.0.1",
        "127.0.0.3",
        "127.0.0.2",
    ] {
        let mut conn = h1_connection_from(from.parse().unwrap(), proxy.addr).await;
        for _ in 0..2 {
            let req = Request::get("/echo").body(full_body("")).unwrap();
            let seen = send_on(&mut conn, req).await.json();
            assert_eq!(seen["headers"]["x-forwarded-for"], from, "{seen}");
        }
    }
}

#[tokio::test]
async fn an_http2_client_is_forwarded_with_its_authority_as_host() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&model("iris", "/", &blue.url(), &green.url())).await;
    let r = send(
        &h2_client(),
        Method::GET,
        &proxy.url("/echo?x=1"),
        full_body(""),
    )
    .await;
    assert_eq!((r.status, r.pool()), (StatusCode::OK, "blue"));
    let seen = r.json();
    // The pool speaks HTTP/1.1, so the :authority must become a Host header.
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["query"], "x=1");
    assert_eq!(seen["headers"]["host"], proxy.addr.to_string());
    assert_eq!(seen["headers"]["x-forwarded-host"], proxy.addr.to_string());
}

/// An upstream whose every response carries hop-by-hop headers.
async fn hop_by_hop_upstream() -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let token = CancellationToken::new();
    let make = |_: &switchyard::server::Accepted| {
        hyper::service::service_fn(|_req: Request<switchyard::server::RequestBody>| async {
            let response = Response::builder()
                .header(header::CONNECTION, "x-bar")
                .header("x-bar", "per-hop")
                .header("keep-alive", "timeout=5")
                .header(header::PROXY_AUTHENTICATE, "Basic realm=\"upstream\"")
                .header("x-model-version", "7")
                .body(full_body("hop"))
                .expect("valid response");
            Ok::<_, Infallible>(response)
        })
    };
    tokio::spawn(switchyard::server::serve(
        "hop-by-hop-upstream",
        listener,
        make,
        token.clone(),
        Duration::from_secs(1),
    ));
    (addr, token)
}

#[tokio::test]
async fn hop_by_hop_response_headers_do_not_reach_the_client() {
    let (upstream, token) = hop_by_hop_upstream().await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&model(
        "iris",
        "/",
        &format!("http://{upstream}"),
        &green.url(),
    ))
    .await;

    let r = get(&proxy.url("/v1/infer")).await;
    assert_eq!(
        (r.status, r.pool(), r.text().as_str()),
        (StatusCode::OK, "blue", "hop")
    );
    assert_eq!(r.headers["x-model-version"], "7");
    for dropped in ["x-bar", "keep-alive", "proxy-authenticate"] {
        assert!(
            !r.headers.contains_key(dropped),
            "the client saw hop-by-hop header {dropped}: {:?}",
            r.headers
        );
    }
    // hyper may write its own `connection` header; the upstream's must not survive.
    assert!(r
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .all(|v| !v.as_bytes().eq_ignore_ascii_case(b"x-bar")));
    token.cancel();
}

// === routing ===

#[tokio::test]
async fn the_longest_path_prefix_wins_and_host_models_match_only_their_host() {
    let root = Upstream::start("root").await;
    let v2 = Upstream::start("v2").await;
    let iris = Upstream::start("iris").await;
    let hosted = Upstream::start("hosted").await;
    let standby = Upstream::start("standby").await;
    let s = standby.url();
    let models = [
        model("root", "/", &root.url(), &s),
        model("v2", "/v2", &v2.url(), &s),
        model("iris", "/v2/models/iris", &iris.url(), &s),
        format!(
            "{}host = \"iris.example\"\n",
            model("iris-tenant", "/v2/models/iris", &hosted.url(), &s)
        ),
    ]
    .join("\n");
    let proxy = Proxy::start(&models).await;
    let any = proxy.addr.to_string();

    for (host, path, want) in [
        (any.as_str(), "/v2/models/iris/infer", "iris"),
        (any.as_str(), "/v2/models/iris", "iris"),
        (any.as_str(), "/v2/models/iris2/infer", "v2"),
        (any.as_str(), "/v2/models", "v2"),
        (any.as_str(), "/v2", "v2"),
        (any.as_str(), "/v1/models/iris", "root"),
        (any.as_str(), "/", "root"),
        ("iris.example", "/v2/models/iris/infer", "hosted"),
        ("IRIS.example:8080", "/v2/models/iris/infer", "hosted"),
        ("iris.example", "/v2/models/other", "v2"),
        ("other.example", "/v2/models/iris/infer", "iris"),
    ] {
        let r = get_as(proxy.addr, host, path).await;
        assert_eq!(
            (r.status, r.text().as_str(), r.pool()),
            (StatusCode::OK, want, "blue"),
            "Host: {host}, path {path}"
        );
    }
    assert_eq!(standby.hits(), 0);
}

#[tokio::test]
async fn an_unrouted_request_is_a_counted_404() {
    let v2 = Upstream::start("v2").await;
    let hosted = Upstream::start("hosted").await;
    let standby = Upstream::start("standby").await;
    let models = [
        model("v2", "/v2", &v2.url(), &standby.url()),
        format!(
            "{}host = \"iris.example\"\n",
            model("iris", "/iris", &hosted.url(), &standby.url())
        ),
    ]
    .join("\n");
    let proxy = Proxy::start(&models).await;
    assert_eq!(
        metric(&proxy, "switchyard_unrouted_requests_total").await,
        Some(0.0)
    );

    let r = get(&proxy.url("/x")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(
        r.json(),
        serde_json::json!({ "error": "no model serves /x" })
    );
    assert!(
        !r.headers.contains_key("x-switchyard-pool"),
        "no pool served it"
    );

    // A host model does not serve other hosts, even on its own prefix.
    let r = get_as(proxy.addr, "other.example", "/iris/infer").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"], "no model serves /iris/infer");
    let r = get_as(proxy.addr, "iris.example", "/iris/infer").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "hosted"));

    assert_eq!(
        metric(&proxy, "switchyard_unrouted_requests_total").await,
        Some(2.0)
    );
    assert_eq!(v2.hits() + hosted.hits() + standby.hits(), 1);
}

// === upstream failures ===

fn error_text(r: &Reply) -> String {
    let body: Value = r.json();
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no \"error\" string in {body}"))
        .to_string()
}

#[tokio::test]
async fn a_dead_upstream_is_a_prompt_502_naming_the_endpoint() {
    // Blue passes its first probe, then dies; the next probe is a minute
    // away, so requests meet the dead endpoint before the prober does.
    let blue = Upstream::start("blue").await;
    let dead = blue.url();
    let green = Upstream::start("green").await;
    let models = format!(
        "{}health.interval = \"60s\"\n",
        model("iris", "/", &dead, &green.url())
    );
    let proxy = Proxy::start_with("request_timeout = \"30s\"", &models).await;
    blue.stop().await;

    // The first request may meet the pooled connection the upstream just
    // closed (a reset); the second must connect, and is refused. Both 502.
    for _ in 0..2 {
        let started = Instant::now();
        let r = get(&proxy.url("/v2/models/iris/infer")).await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "502 took {took:?}");
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
        assert_eq!(r.pool(), "blue");
        assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
        let error = error_text(&r);
        for part in ["iris", "blue", dead.as_str()] {
            assert!(error.contains(part), "error does not name {part}: {error}");
        }
    }

    let series = r#"switchyard_upstream_errors_total{kind="connect",model="iris",pool="blue"}"#;
    assert!(metric(&proxy, series).await >= Some(1.0));

    // The standby is fine: flipping to it restores service.
    let flip = proxy.admin_post("/models/iris/flip").await;
    assert_eq!(flip.status, StatusCode::OK, "{}", flip.text());
    let r = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!((r.status, r.pool()), (StatusCode::OK, "green"));
}

#[tokio::test]
async fn a_hung_upstream_is_a_504_after_the_request_timeout() {
    // Healthy by its probes, but `/hold` never answers until released.
    let hung = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let models = format!(
        "{}request_timeout = \"300ms\"\n",
        model("iris", "/", &hung.url(), &green.url())
    );
    let proxy = Proxy::start_with("request_timeout = \"30s\"", &models).await;

    let started = Instant::now();
    let r = get(&proxy.url("/hold/v2/models/iris/infer")).await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.text());
    assert!(
        took >= Duration::from_millis(300),
        "504 after only {took:?}"
    );
    assert!(took < Duration::from_secs(5), "504 took {took:?}");
    assert_eq!(r.pool(), "blue");
    let error = error_text(&r);
    for part in ["iris", "blue", hung.url().as_str(), "300ms"] {
        assert!(error.contains(part), "error does not name {part}: {error}");
    }

    let series = r#"switchyard_upstream_errors_total{kind="timeout",model="iris",pool="blue"}"#;
    assert_eq!(metric(&proxy, series).await, Some(1.0));
    let series = r#"switchyard_requests_total{code="5xx",model="iris",pool="blue"}"#;
    assert_eq!(metric(&proxy, series).await, Some(1.0));
}
