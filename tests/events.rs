//! The event log: `GET /events` lists switches, rollbacks, health changes
//! and reloads; `?follow=true` streams them as server-sent events as they
//! happen, resumes after `Last-Event-ID`, and ends when the proxy stops.

mod support;

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;
use support::*;

async fn iris() -> (Upstream, Upstream, Proxy) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&model("iris", "/", &blue.url(), &green.url())).await;
    (blue, green, proxy)
}

fn switches(list: &Value) -> Vec<(String, String, String)> {
    list["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "switch")
        .map(|e| {
            (
                e["reason"].as_str().unwrap().to_string(),
                e["from"].as_str().unwrap().to_string(),
                e["to"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// An open `GET /events?follow=true` response, read message by message.
struct Follower {
    body: Incoming,
    buffer: String,
}

impl Follower {
    async fn open(proxy: &Proxy, query: &str, last_event_id: Option<u64>) -> Follower {
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(proxy.admin_url(&format!("/events?follow=true{query}")));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = within(
            "the event stream to open",
            client().request(req.body(full_body("")).unwrap()),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Follower {
            body: resp.into_body(),
            buffer: String::new(),
        }
    }

    /// The next message that carries an event: its `id`, `event` and the
    /// JSON of its `data`. `None` once the stream has ended.
    async fn next(&mut self) -> Option<(u64, String, Value)> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let message: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    message
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(str::to_string)
                };
                if let (Some(id), Some(event), Some(data)) =
                    (field("id: "), field("event: "), field("data: "))
                {
                    return Some((
                        id.parse().unwrap(),
                        event,
                        serde_json::from_str(&data).unwrap(),
                    ));
                }
            }
            let frame = within("the next event", self.body.frame()).await?;
            let data = frame.unwrap().into_data().unwrap_or_default();
            self.buffer.push_str(std::str::from_utf8(&data).unwrap());
        }
    }

    /// The next event of type `kind`, skipping others (health changes).
    async fn next_of(&mut self, kind: &str) -> (u64, Value) {
        loop {
            let (id, event, data) = self.next().await.expect("stream ended");
            if event == kind {
                assert_eq!(data["type"], kind);
                assert_eq!(data["id"], id);
                return (id, data);
            }
        }
    }
}

#[tokio::test]
async fn switches_and_rollbacks_are_listed_in_order() {
    let (_blue, _green, proxy) = iris().await;
    let before = proxy.admin_get("/events").await;
    assert_eq!(before.status, StatusCode::OK);
    let first_id = before.json()["newest_id"].as_u64().unwrap();

    assert_eq!(
        proxy.admin_post("/models/iris/flip").await.status,
        StatusCode::OK
    );
    assert_eq!(
        proxy.admin_post("/models/iris/rollback").await.status,
        StatusCode::OK
    );
    // Refused calls are not events.
    assert_eq!(
        proxy.admin_post("/models/iris/rollback").await.status,
        StatusCode::CONFLICT
    );

    let list = proxy
        .admin_get(&format!("/events?since={first_id}"))
        .await
        .json();
    assert_eq!(
        switches(&list),
        [
            ("flip".into(), "blue".into(), "green".into()),
            ("rollback".into(), "green".into(), "blue".into())
        ]
    );
    let events = list["events"].as_array().unwrap();
    let ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    assert!(ids[0] > first_id);
    let flip = events.iter().find(|e| e["type"] == "switch").unwrap();
    assert_eq!(flip["model"], "iris");
    assert!(flip["actor"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(flip["at_unix_ms"].as_u64().unwrap() > 0);
    assert_eq!(list["newest_id"], *ids.last().unwrap());

    // `limit` keeps the newest.
    let last = proxy.admin_get("/events?limit=1").await.json();
    assert_eq!(last["events"].as_array().unwrap().len(), 1);
    assert_eq!(last["events"][0]["reason"], "rollback");

    for bad in [
        "/events?since=-1",
        "/events?limit=x",
        "/events?follow=maybe",
        "/events?sinse=1",
    ] {
        let r = proxy.admin_get(bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text());
        assert!(r.json()["error"].is_string());
    }
    let r = proxy.admin_post("/events").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn health_changes_are_events() {
    let (_blue, green, proxy) = iris().await;
    let start = proxy.admin_get("/events").await.json()["newest_id"]
        .as_u64()
        .unwrap();
    green.set_healthy(false);
    let url = green.url();
    let event = eventually_some("green's health change to be listed", || {
        let proxy = &proxy;
        let url = url.clone();
        async move {
            let list = proxy
                .admin_get(&format!("/events?since={start}"))
                .await
                .json();
            list["events"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["type"] == "health" && e["endpoint"] == url.as_str())
                .cloned()
        }
    })
    .await;
    assert_eq!(event["model"], "iris");
    assert_eq!(event["pool"], "green");
    assert_eq!(event["state"], "unhealthy");
    assert!(
        event["cause"].as_str().is_some_and(|c| !c.is_empty()),
        "{event}"
    );
}

#[tokio::test]
async fn a_follower_gets_a_switch_as_it_happens_and_resumes_after_its_last_id() {
    let (_blue, _green, proxy) = iris().await;
    let mut follower = Follower::open(&proxy, "", None).await;

    assert_eq!(
        proxy.admin_post("/models/iris/flip").await.status,
        StatusCode::OK
    );
    let (flip_id, flip) = follower.next_of("switch").await;
    assert_eq!(flip["reason"], "flip");
    assert_eq!(flip["to"], "green");

    // While nobody follows, a rollback happens; a client reconnecting with
    // Last-Event-ID gets it first, then what happens next.
    drop(follower);
    assert_eq!(
        proxy.admin_post("/models/iris/rollback").await.status,
        StatusCode::OK
    );
    let mut again = Follower::open(&proxy, "", Some(flip_id)).await;
    let (rollback_id, rollback) = again.next_of("switch").await;
    assert!(rollback_id > flip_id);
    assert_eq!(rollback["reason"], "rollback");
    assert_eq!(rollback["to"], "blue");
    assert_eq!(
        proxy.admin_post("/models/iris/activate/green").await.status,
        StatusCode::OK
    );
    let (_, activate) = again.next_of("switch").await;
    assert_eq!(activate["reason"], "activate");

    // `?since=` does the same for clients that cannot set headers.
    let mut from_query = Follower::open(&proxy, &format!("&since={flip_id}"), None).await;
    assert_eq!(from_query.next_of("switch").await.0, rollback_id);
}

#[tokio::test]
async fn an_open_event_stream_ends_when_the_proxy_stops() {
    let (_blue, _green, proxy) = iris().await;
    let mut follower = Follower::open(&proxy, "", None).await;
    // The stream is live: it delivers a switch.
    proxy.admin_post("/models/iris/flip").await;
    follower.next_of("switch").await;

    // Stopping does not wait out the drain timeout for the stream ...
    assert!(proxy.stop().await.is_ok());
    // ... and the follower sees the end of the stream.
    while let Some((_, event, _)) = follower.next().await {
        assert_ne!(event, "switch", "no switch happened after the flip");
    }
}

#[tokio::test]
async fn head_of_a_followed_stream_is_its_headers_only() {
    let (_blue, _green, proxy) = iris().await;
    let r = send(
        &client(),
        Method::HEAD,
        &proxy.admin_url("/events?follow=true"),
        full_body(""),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    assert!(r.body.is_empty());
}
