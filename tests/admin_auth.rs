//! Admin access: with a token configured, every admin call but the probes
//! needs `Authorization: Bearer <token>`; an admin listener others can reach
//! is refused without one.

mod support;

use std::sync::Arc;

use http::{Method, Request, StatusCode};
use support::*;

const TOKEN: &str = "0f3c9a5e-test-token";

struct Setup {
    proxy: Proxy,
    _blue: Upstream,
    _green: Upstream,
}

async fn start(admin_extra: &str) -> Setup {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let token_file = dir.path().join("admin.token");
    // A trailing newline, as `echo` writes it: trimmed when read.
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let admin = format!(
        "token_file = {:?}\n{admin_extra}",
        token_file.display().to_string()
    );
    let proxy = Proxy::try_start_with_admin(
        dir,
        "",
        &admin,
        &model("iris", "/", &blue.url(), &green.url()),
    )
    .await
    .expect("proxy starts");
    Setup {
        proxy,
        _blue: blue,
        _green: green,
    }
}

async fn call(proxy: &Proxy, method: Method, path: &str, authorization: Option<&str>) -> Reply {
    let mut req = Request::builder().method(method).uri(proxy.admin_url(path));
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let req = req.body(full_body("")).unwrap();
    let resp = within("admin call", client().request(req))
        .await
        .expect("admin call");
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: read_body(body).await,
    }
}

fn assert_unauthorized(r: &Reply) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(r.headers["content-type"], "application/json");
    assert!(
        r.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"),
        "{:?}",
        r.headers
    );
    assert!(
        r.json()["error"].as_str().unwrap().contains("Bearer"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn admin_calls_need_the_token() {
    let s = start("").await;
    let bearer = format!("Bearer {TOKEN}");
    let calls = [
        (Method::GET, "/models"),
        (Method::GET, "/models/iris"),
        (Method::POST, "/models/iris/flip"),
        (Method::POST, "/models/iris/activate/blue"),
        (Method::POST, "/models/iris/rollback"),
        (Method::GET, "/metrics"),
    ];
    for (method, path) in &calls {
        assert_unauthorized(&call(&s.proxy, method.clone(), path, None).await);
        for wrong in [
            "Bearer wrong",
            &format!("Bearer {TOKEN}x"),
            &format!("Basic {TOKEN}"),
            &format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
        ] {
            assert_unauthorized(&call(&s.proxy, method.clone(), path, Some(wrong)).await);
        }
    }
    // Nothing switched while the calls were refused.
    let r = get(&s.proxy.url("/x")).await;
    assert_eq!(r.pool(), "blue");

    let r = call(&s.proxy, Method::POST, "/models/iris/flip", Some(&bearer)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(get(&s.proxy.url("/x")).await.pool(), "green");
    let r = call(&s.proxy, Method::GET, "/models/iris", Some(&bearer)).await;
    assert_eq!(
        (r.status, r.json()["active"].as_str()),
        (StatusCode::OK, Some("green"))
    );
    let r = call(&s.proxy, Method::GET, "/metrics", Some(&bearer)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("switchyard_switches_total"));
}

#[tokio::test]
async fn probes_stay_open_and_nothing_else_is_revealed() {
    let s = start("").await;
    for path in ["/healthz", "/readyz"] {
        let r = call(&s.proxy, Method::GET, path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
    }
    // Without the token an unknown route or a wrong method is 401 too: no
    // answer tells a stranger what exists.
    assert_unauthorized(&call(&s.proxy, Method::GET, "/no/such/route", None).await);
    assert_unauthorized(&call(&s.proxy, Method::GET, "/models/iris/flip", None).await);
    assert_unauthorized(&call(&s.proxy, Method::GET, "/models/nope", None).await);
}

#[tokio::test]
async fn metrics_can_be_left_open() {
    let s = start("metrics_require_token = false").await;
    let r = call(&s.proxy, Method::GET, "/metrics", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_unauthorized(&call(&s.proxy, Method::GET, "/models", None).await);
}

#[tokio::test]
async fn an_empty_or_missing_token_file_stops_the_start() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let empty = dir.path().join("empty.token");
    std::fs::write(&empty, "\n").unwrap();
    for (file, says) in [
        (empty, "is empty"),
        (dir.path().join("missing.token"), "cannot read"),
    ] {
        let admin = format!("token_file = {:?}", file.display().to_string());
        let err = Proxy::try_start_with_admin(
            dir.clone(),
            "",
            &admin,
            &model("iris", "/", "http://127.0.0.1:1", "http://127.0.0.1:2"),
        )
        .await
        .err()
        .expect("start refused");
        let text = err.to_string();
        assert!(
            text.contains(says) && text.contains(&file.display().to_string()),
            "{text}"
        );
    }
}

#[test]
fn an_admin_listener_others_can_reach_needs_a_token() {
    // Decided on the address alone, before any socket is opened.
    let config = switchyard::Config::from_toml(
        "[proxy]\nlisten = \"127.0.0.1:8080\"\n[admin]\nlisten = \"0.0.0.0:9901\"\n[state]\npath = \"s.json\"\n\
         [[models]]\nname = \"iris\"\nblue.endpoints = [\"http://127.0.0.1:1\"]\ngreen.endpoints = [\"http://127.0.0.1:2\"]\n",
        std::path::Path::new("exposed.toml"),
    )
    .unwrap();
    if std::env::var_os(switchyard::admin::TOKEN_ENV).is_some() {
        // The environment provides a token; the refusal cannot be observed.
        return;
    }
    let err = switchyard::admin_token(&config, config.admin.listen).unwrap_err();
    let text = err.to_string();
    for part in [
        "0.0.0.0:9901",
        "token_file",
        "SWITCHYARD_ADMIN_TOKEN",
        "127.0.0.1",
    ] {
        assert!(text.contains(part), "{part} missing from: {text}");
    }
    // Loopback without a token is fine.
    assert!(switchyard::admin_token(&config, "127.0.0.1:9901".parse().unwrap()).is_ok());
    assert!(switchyard::admin_token(&config, "[::1]:9901".parse().unwrap()).is_ok());
}
