mod support;
use support::*;

#[tokio::test]
async fn proxies_to_the_active_pool_and_flips() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&model("iris", "/", &blue.url(), &green.url())).await;
    let r = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!(
        (r.status.as_u16(), r.pool(), r.text().as_str()),
        (200, "blue", "blue")
    );
    assert_eq!(proxy.admin_post("/models/iris/flip").await.status, 200);
    let r = get(&proxy.url("/x")).await;
    assert_eq!((r.pool(), r.text().as_str()), ("green", "green"));
    proxy.stop().await.unwrap();
}
