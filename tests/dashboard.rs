//! The dashboard's page on the admin listener: built into the binary, no
//! external asset, framed by nobody, open without the token (it holds no
//! data) while every call it makes still needs it. The page in a real
//! browser is `tests/browser/dashboard.py`.

mod support;

use std::sync::Arc;

use http::{Method, StatusCode};
use support::*;

const TOKEN: &str = "dashboard-test-token-0123";

#[tokio::test]
async fn the_page_is_served_whole_with_a_strict_policy() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&model("iris", "/", &blue.url(), &green.url())).await;
    let r = proxy.admin_get("/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    // Only the page's own script runs: by its hash, never 'unsafe-inline'.
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(!csp.contains("script-src 'unsafe-inline'"), "{csp}");
    for directive in [
        "default-src 'none'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert_eq!(r.headers["x-frame-options"], "DENY");
    let page = r.text();
    assert!(page.starts_with("<!doctype html>"), "{}", &page[..40]);
    // Everything it loads is in the page: no script, style or image from
    // anywhere, and it calls only the admin API's own paths.
    // Its calls are relative, so it works under a path prefix too
    // (kubectl proxy, an ingress subpath).
    for external in [
        "src=",
        "href=",
        "http://",
        "https://",
        "//cdn",
        "@import",
        "\"/models",
    ] {
        assert!(!page.contains(external), "the page refers to {external:?}");
    }
    for call in [
        "\"models\"",
        "\"metrics\"",
        "\"events?since=\"",
        "\"flip?expect=\"",
    ] {
        assert!(page.contains(call), "the page does not call {call}");
    }
    // It draws the split and a rollout's steps from GET /models/{name},
    // and says what weight and rollout events mean.
    for drawn in [
        "data-split=",
        "data-rollout=",
        "data-step=",
        "case \"weight\"",
        "case \"rollout\"",
    ] {
        assert!(page.contains(drawn), "the page does not draw {drawn}");
    }

    let head = send(
        &client(),
        Method::HEAD,
        &proxy.admin_url("/"),
        full_body(""),
    )
    .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    let post = proxy.admin_post("/").await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers["allow"], "GET, HEAD");
    assert_eq!(
        proxy.admin_get("/?x=1").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn the_page_is_open_but_its_calls_need_the_token() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let admin = format!("token_file = {:?}\n", token_file.display().to_string());
    let proxy = Proxy::try_start_with_admin(
        dir,
        "",
        &admin,
        &model("iris", "/", &blue.url(), &green.url()),
    )
    .await
    .expect("proxy starts");
    assert_eq!(proxy.admin_get("/").await.status, StatusCode::OK);
    assert_eq!(
        proxy.admin_get("/models").await.status,
        StatusCode::UNAUTHORIZED
    );
    let req = http::Request::builder()
        .uri(proxy.admin_url("/models"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(full_body(""))
        .unwrap();
    let r = within("GET /models", client().request(req)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
