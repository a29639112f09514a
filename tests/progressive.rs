//! Progressive delivery over real sockets: a weighted split, sticky users,
//! rollouts judged in-process step by step (aborted on 5xx and on a slow
//! time to first byte, completed when healthy), and a restart in the
//! middle of a rollout.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::Value;
use support::*;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

async fn pools() -> (Upstream, Upstream) {
    (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    )
}

async fn status(proxy: &Proxy) -> Value {
    let r = proxy.admin_get("/models/iris").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

async fn post_ok(proxy: &Proxy, path: &str) -> Value {
    let r = proxy.admin_post(path).await;
    assert_eq!(r.status, StatusCode::OK, "POST {path}: {}", r.text());
    r.json()
}

/// Sends `n` requests one after another; counts them by the pool that
/// answered (`x-switchyard-pool`).
async fn served_by(proxy: &Proxy, n: usize) -> HashMap<String, usize> {
    let client = client();
    let mut by = HashMap::new();
    for _ in 0..n {
        let r = send(&client, Method::GET, &proxy.url("/x"), full_body("")).await;
        assert_eq!(r.status, StatusCode::OK);
        *by.entry(r.pool().to_string()).or_insert(0) += 1;
    }
    by
}

#[tokio::test]
async fn a_ten_percent_split_sends_ten_percent_of_requests_to_green() {
    let (blue, green) = pools().await;
    let proxy = Proxy::start(&model("iris", "/", &blue.url(), &green.url())).await;

    let r = post_ok(&proxy, "/models/iris/weight?green=10").await;
    assert_eq!(
        r["split"],
        serde_json::json!({"pool": "green", "percent": 10.0}),
        "{r}"
    );
    assert_eq!(
        (&r["active"], &r["previous"], &r["changed"]),
        (&"blue".into(), &Value::Null, &true.into())
    );
    let by = served_by(&proxy, 2000).await;
    let on_green = by.get("green").copied().unwrap_or(0);
    assert!(
        (160..=240).contains(&on_green),
        "10% +/- 2% of 2000 is 160 to 240; green served {on_green} ({by:?})"
    );
    assert_eq!(on_green + by.get("blue").copied().unwrap_or(0), 2000);

    // The status shows the split and what each pool served.
    let s = status(&proxy).await;
    assert_eq!(s["split"]["percent"], 10.0, "{s}");
    assert_eq!(s["pools"]["green"]["served"], on_green as u64);
    assert_eq!(s["active"], "blue");
    let all = proxy.admin_get("/models").await.json();
    assert_eq!(all["models"][0]["split"]["pool"], "green", "{all}");

    // Naming the active pool gives the standby the rest.
    let r = post_ok(&proxy, "/models/iris/weight?blue=75").await;
    assert_eq!(r["split"]["percent"], 25.0, "{r}");
    assert_eq!(r["previous"]["percent"], 10.0);
    let r = post_ok(&proxy, "/models/iris/weight?blue=75").await;
    assert_eq!(r["changed"], false);
    // The same state persisted, and an event per change.
    let saved = std::fs::read_to_string(&proxy.state_path).unwrap();
    assert!(saved.contains("\"permille\": 250"), "{saved}");
    let events = proxy.admin_get("/events").await.json();
    let weights: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "weight")
        .collect();
    assert_eq!(weights.len(), 2, "{events}");
    assert_eq!(
        (&weights[1]["percent"], &weights[1]["previous"]),
        (&25.0.into(), &10.0.into())
    );

    // A flip ends the split; the rollback returns to it.
    let r = post_ok(&proxy, "/models/iris/flip").await;
    assert_eq!(r["active"], "green");
    assert_eq!(status(&proxy).await["split"], Value::Null);
    assert_eq!(served_by(&proxy, 50).await.get("green"), Some(&50));
    let s = status(&proxy).await;
    assert_eq!(
        s["last_switch"]["split"]["permille"], 250,
        "the history keeps the split: {s}"
    );
    post_ok(&proxy, "/models/iris/rollback").await;
    let s = status(&proxy).await;
    assert_eq!(
        (&s["active"], &s["split"]["percent"]),
        (&"blue".into(), &25.0.into()),
        "{s}"
    );
    // 0 ends it.
    let r = post_ok(&proxy, "/models/iris/weight?green=0").await;
    assert_eq!(r["split"], Value::Null);
    assert_eq!(served_by(&proxy, 50).await.get("blue"), Some(&50));
}

#[tokio::test]
async fn a_weight_call_is_checked_and_guarded() {
    let (blue, green) = pools().await;
    let proxy = Proxy::start(&model("iris", "/", &blue.url(), &green.url())).await;
    for bad in [
        "/models/iris/weight?green=101",
        "/models/iris/weight?green=-1",
        "/models/iris/weight?green=2.55",
        "/models/iris/weight?green=ten",
        "/models/iris/weight?red=10",
        "/models/iris/weight",
        "/models/iris/weight?green=10&blue=90",
    ] {
        let r = proxy.admin_post(bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text());
        assert!(r.json()["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let r = proxy.admin_post("/models/nope/weight?green=10").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    let r = proxy.admin_get("/models/iris/weight?green=10").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    // No share to a pool with no healthy endpoint, as no switch to it.
    green.set_healthy(false);
    wait_for_state(&proxy, "iris", "green", &green.url(), "unhealthy").await;
    let r = proxy.admin_post("/models/iris/weight?green=10").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("no healthy endpoint"),
        "{}",
        r.text()
    );
    assert_eq!(r.json()["pool"], "green");
    let r = post_ok(&proxy, "/models/iris/weight?green=10&force=true").await;
    assert_eq!(r["split"]["percent"], 10.0);
    // A request picked for green, which has none in rotation, goes to blue.
    assert_eq!(served_by(&proxy, 40).await.get("blue"), Some(&40));
}

#[tokio::test]
async fn sticky_users_keep_their_pool_as_the_weight_rises() {
    let (blue, green) = pools().await;
    let models = format!(
        "{}sticky = {{ header = \"x-user-id\" }}\n",
        model("iris", "/", &blue.url(), &green.url())
    );
    let proxy = Proxy::start(&models).await;
    let client = client();
    let users: Vec<String> = (0..200).map(|i| format!("user-{i:03}")).collect();
    let pools_of = |weight: u16| {
        let (client, proxy, users) = (&client, &proxy, &users);
        async move {
            let path = format!("/models/iris/weight?green={weight}");
            post_ok(proxy, &path).await;
            let mut on_green = Vec::new();
            for user in users {
                // Twice each: the same user, the same pool.
                let mut seen = Vec::new();
                for _ in 0..2 {
                    let req = Request::get(proxy.url("/x"))
                        .header("x-user-id", user.as_str())
                        .body(full_body(""))
                        .unwrap();
                    let r = within("a sticky request", client.request(req))
                        .await
                        .unwrap();
                    assert_eq!(r.status(), StatusCode::OK);
                    seen.push(
                        r.headers()["x-switchyard-pool"]
                            .to_str()
                            .unwrap()
                            .to_string(),
                    );
                }
                assert_eq!(
                    seen[0], seen[1],
                    "{user} moved between two requests at {weight}%"
                );
                on_green.push(seen[0] == "green");
            }
            on_green
        }
    };
    let ten = pools_of(10).await;
    let quarter = pools_of(25).await;
    let half = pools_of(50).await;
    for (i, user) in users.iter().enumerate() {
        assert!(
            !ten[i] || quarter[i],
            "{user} was on green at 10% but not at 25%"
        );
        assert!(
            !quarter[i] || half[i],
            "{user} was on green at 25% but not at 50%"
        );
        // The documented hash decides: FNV-1a 64 of the value, mod 1000.
        let bucket = switchyard::switch::sticky_bucket(user.as_bytes());
        assert_eq!(half[i], bucket < 500, "{user}: bucket {bucket}");
    }
    let count = |v: &[bool]| v.iter().filter(|g| **g).count();
    let (a, b, c) = (count(&ten), count(&quarter), count(&half));
    // The share of users on green follows the weight (200 users: a hash,
    // so within a few users of it).
    assert!(a.abs_diff(20) <= 10, "10%: {a} of 200 users on green");
    assert!(b.abs_diff(50) <= 15, "25%: {b} of 200 users on green");
    assert!(c.abs_diff(100) <= 20, "50%: {c} of 200 users on green");
    assert!(a < b && b < c, "{a} {b} {c}");
    // A request without the header uses the plain split.
    let by = served_by(&proxy, 200).await;
    assert_eq!(by.get("green"), Some(&100), "{by:?}");
    let s = status(&proxy).await;
    assert_eq!(s["sticky"], serde_json::json!({"header": "x-user-id"}));
}

/// Clients sending `GET path` one after another each until stopped,
/// recording every response that is not a 200, with the pool that sent it.
struct Load {
    stop: CancellationToken,
    clients: JoinSet<()>,
    failures: Arc<Mutex<Vec<(StatusCode, String)>>>,
    sent: Arc<std::sync::atomic::AtomicUsize>,
}

impl Load {
    fn start(proxy: &Proxy, path: &str, clients: usize) -> Load {
        let stop = CancellationToken::new();
        let failures = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut set = JoinSet::new();
        for _ in 0..clients {
            let (url, stop) = (proxy.url(path), stop.clone());
            let (failures, sent) = (Arc::clone(&failures), Arc::clone(&sent));
            set.spawn(async move {
                let client = client();
                while !stop.is_cancelled() {
                    let reply = try_send(&client, Method::GET, &url, full_body("")).await;
                    sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    match reply {
                        Ok(r) if r.status == StatusCode::OK => {}
                        Ok(r) => failures
                            .lock()
                            .unwrap()
                            .push((r.status, r.pool().to_string())),
                        Err(e) => failures
                            .lock()
                            .unwrap()
                            .push((StatusCode::IM_A_TEAPOT, format!("transport: {e}"))),
                    }
                    // Paces the loop so it does not take a core of a shared machine.
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            });
        }
        Load {
            stop,
            clients: set,
            failures,
            sent,
        }
    }

    async fn stop(mut self) -> Vec<(StatusCode, String)> {
        self.stop.cancel();
        within("the load clients to stop", async {
            while self.clients.join_next().await.is_some() {}
        })
        .await;
        let failures = self.failures.lock().unwrap().clone();
        failures
    }
}

/// iris with `[models.rollout]` of `steps` and `limits`.
fn rollout_model(blue: &str, green: &str, steps: &str, limits: &str) -> String {
    format!(
        "{}\n[models.rollout]\nsteps = {steps}\ninterval = \"100ms\"\n{limits}\n",
        model("iris", "/", blue, green)
    )
}

async fn rollout_state(proxy: &Proxy, state: &str) -> Value {
    eventually_some(&format!("the rollout to be {state}"), || async {
        let s = status(proxy).await;
        (s["rollout"]["state"] == state).then_some(s)
    })
    .await
}

#[tokio::test]
async fn a_healthy_green_is_rolled_out_to_100_percent_with_no_failed_request() {
    let (blue, green) = pools().await;
    let models = rollout_model(
        &blue.url(),
        &green.url(),
        r#"["10%:600ms", "50%:600ms", "100%"]"#,
        "min_requests = 5\nmax_5xx_ratio = 0.01\nmax_p99 = \"1s\"",
    );
    let proxy = Proxy::start(&models).await;
    let load = Load::start(&proxy, "/x", 3);
    let r = post_ok(&proxy, "/models/iris/rollout").await;
    assert_eq!(r["rollout"]["state"], "running", "{r}");
    assert_eq!(
        (&r["rollout"]["step"], &r["rollout"]["steps"]),
        (&1.into(), &3.into())
    );
    assert_eq!(r["split"]["percent"], 10.0);
    // Mid-way the status shows the step, the weight, the time left and
    // the figures per pool.
    let s = eventually_some("figures for step 1", || async {
        let s = status(&proxy).await;
        let f = &s["rollout"]["figures"];
        (f["green"]["requests"].as_u64().unwrap_or(0) > 0).then_some(s)
    })
    .await;
    let rollout = &s["rollout"];
    assert!(rollout["left_ms"].as_u64().is_some(), "{s}");
    assert_eq!(rollout["figures"]["blue"]["ratio_5xx"], 0.0, "{s}");

    let s = rollout_state(&proxy, "completed").await;
    let failures = load.stop().await;
    assert_eq!(failures, [], "no request failed during the rollout");
    assert_eq!(
        (&s["active"], &s["split"]),
        (&"green".into(), &Value::Null),
        "{s}"
    );
    let last = &s["last_switch"];
    assert_eq!(
        (&last["reason"], &last["from"], &last["to"]),
        (&"rollout".into(), &"blue".into(), &"green".into()),
        "{s}"
    );
    let verdicts = s["rollout"]["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 2, "{s}");
    for (i, v) in verdicts.iter().enumerate() {
        assert_eq!(v["result"], "passed", "{v}");
        let reason = v["reason"].as_str().unwrap();
        assert!(
            reason.starts_with(&format!("step {} passed: green ", i + 1)),
            "{reason}"
        );
        assert!(reason.contains("; blue "), "{reason}");
    }
    // The switch is in the history, so a rollback returns to blue, whole.
    assert_eq!(s["history"].as_array().unwrap().len(), 1);
    let r = post_ok(&proxy, "/models/iris/rollback").await;
    assert_eq!(r["active"], "blue");
    assert_eq!(status(&proxy).await["split"], Value::Null);
    // Events: started, each step, completed, and the switch.
    let events = proxy.admin_get("/events").await.json();
    let actions: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "rollout")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["started", "step", "completed"], "{events}");
    assert!(events["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "switch" && e["reason"] == "rollout"));
}

#[tokio::test]
async fn a_green_that_fails_at_step_2_is_aborted_to_blue_with_no_admin_call() {
    let (blue, green) = pools().await;
    let models = rollout_model(
        &blue.url(),
        &green.url(),
        r#"["10%:500ms", "50%:20s", "100%"]"#,
        "min_requests = 5\nmax_5xx_ratio = 0.01",
    );
    let proxy = Proxy::start(&models).await;
    let load = Load::start(&proxy, "/x", 3);
    post_ok(&proxy, "/models/iris/rollout").await;
    eventually("the rollout at step 2", || async {
        status(&proxy).await["rollout"]["step"] == 2
    })
    .await;
    // The new version goes bad under live traffic; nobody calls abort.
    green.set_failing(true);
    let s = rollout_state(&proxy, "aborted").await;
    // After the abort, every request goes to blue and succeeds.
    let sent_at_abort = load.sent.load(std::sync::atomic::Ordering::SeqCst);
    eventually("100 requests after the abort", || async {
        load.sent.load(std::sync::atomic::Ordering::SeqCst) > sent_at_abort + 100
    })
    .await;
    let failures = load.stop().await;

    assert_eq!(
        (&s["active"], &s["split"]),
        (&"blue".into(), &Value::Null),
        "{s}"
    );
    let rollout = &s["rollout"];
    let reason = rollout["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("step 2 aborted: green 5xx ratio ")
            && reason.contains(" > limit 0.01; blue 0.000 over "),
        "{reason}"
    );
    let verdicts = rollout["verdicts"].as_array().unwrap();
    assert_eq!(verdicts[0]["result"], "passed");
    assert_eq!(
        (&verdicts[1]["result"], &verdicts[1]["step"]),
        (&"aborted".into(), &2.into())
    );
    // Every failed request was green's, and no more than the step counted
    // (plus those in flight when the abort took effect).
    assert!(
        failures.iter().all(|(_, pool)| pool == "green"),
        "{failures:?}"
    );
    let rests_on: u64 = reason
        .split(" over ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.replace(',', "").parse().ok())
        .unwrap();
    assert!(
        failures.len() as u64 <= rests_on + 3,
        "{} failed; the verdict rests on {rests_on} green requests: {reason}",
        failures.len()
    );
    assert!(!failures.is_empty());
    let events = proxy.admin_get("/events").await.json();
    let aborted = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "rollout" && e["action"] == "aborted")
        .cloned()
        .unwrap_or_else(|| panic!("no aborted event: {events}"));
    assert_eq!(aborted["reason"], reason);
    assert_eq!(aborted["actor"], "rollout");
    // Persisted: the state file says so.
    let saved = std::fs::read_to_string(&proxy.state_path).unwrap();
    assert!(saved.contains("\"aborted\""), "{saved}");
}

/// An OpenAI-style streaming upstream: `/v1/completions` answers its
/// headers at once, then `first` later its first event, then three more
/// 5 ms apart.
async fn llm(first: Duration, token: CancellationToken) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let make = move |_: &switchyard::server::Accepted| {
            hyper::service::service_fn(
                move |req: Request<switchyard::server::RequestBody>| async move {
                    if req.uri().path() != "/v1/completions" {
                        return Ok::<_, Infallible>(Response::new(full_body("{}")));
                    }
                    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
                    tokio::spawn(async move {
                        tokio::time::sleep(first).await;
                        for chunk in [
                            "data: a\n\n",
                            "data: b\n\n",
                            "data: c\n\n",
                            "data: [DONE]\n\n",
                        ] {
                            if tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    });
                    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
                    Ok(Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(BodyExt::boxed(body))
                        .unwrap())
                },
            )
        };
        switchyard::server::serve("llm", listener, make, token, Duration::from_secs(1)).await;
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_green_slow_to_its_first_token_is_aborted() {
    let token = CancellationToken::new();
    let blue = llm(Duration::ZERO, token.clone()).await;
    let green = llm(Duration::from_millis(300), token.clone()).await;
    let models = rollout_model(
        &blue,
        &green,
        r#"["50%:20s", "100%"]"#,
        "min_requests = 5\nmax_first_byte_p99 = \"150ms\"",
    );
    let proxy = Proxy::start(&models).await;
    let load = Load::start(&proxy, "/v1/completions", 4);
    post_ok(&proxy, "/models/iris/rollout").await;
    let s = rollout_state(&proxy, "aborted").await;
    let failures = load.stop().await;
    assert_eq!(failures, [], "slow is not failed");
    let reason = s["rollout"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("step 1 aborted: green time to first byte p99 ")
            && reason.contains(" > limit 150ms; blue "),
        "{reason}"
    );
    assert_eq!(s["split"], Value::Null);
    let r = post(&proxy.url("/v1/completions"), "").await;
    assert_eq!(r.pool(), "blue");
    token.cancel();
}

#[tokio::test]
async fn rollout_calls_are_refused_when_they_do_not_fit() {
    let (blue, green) = pools().await;
    let models = format!(
        "{}{}",
        rollout_model(
            &blue.url(),
            &green.url(),
            r#"["5%:60s", "100%"]"#,
            "max_5xx_ratio = 0.01"
        ),
        model("plain", "/plain", &blue.url(), &green.url())
    );
    let proxy = Proxy::start(&models).await;
    let conflict = |path: &'static str, says: &'static str| {
        let proxy = &proxy;
        async move {
            let r = proxy.admin_post(path).await;
            assert_eq!(r.status, StatusCode::CONFLICT, "{path}: {}", r.text());
            let e = r.json()["error"].as_str().unwrap().to_string();
            assert!(e.contains(says), "{path}: {e}");
        }
    };
    conflict("/models/plain/rollout", "no [models.rollout]").await;
    conflict("/models/iris/rollout/pause", "no rollout has been started").await;
    conflict("/models/iris/rollout/abort", "no rollout has been started").await;
    assert_eq!(
        proxy.admin_post("/models/nope/rollout").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        proxy.admin_post("/models/iris/rollout/skip").await.status,
        StatusCode::NOT_FOUND
    );
    let r = proxy.admin_get("/models/iris/rollout").await;
    assert_eq!(
        (r.status, &r.json()["rollout"]),
        (StatusCode::OK, &Value::Null)
    );

    post_ok(&proxy, "/models/iris/rollout").await;
    conflict("/models/iris/rollout", "a rollout is running (step 1 of 2)").await;
    conflict("/models/iris/rollout/resume", "the rollout is running").await;
    conflict("/models/iris/weight?green=50", "abort it first").await;
    let r = post_ok(&proxy, "/models/iris/rollout/pause").await;
    assert_eq!(r["rollout"]["state"], "paused");
    let left = r["rollout"]["left_ms"].as_u64().unwrap();
    assert!(left > 50_000 && left <= 60_000, "{r}");
    conflict("/models/iris/rollout/pause", "the rollout is paused").await;
    let r = post_ok(&proxy, "/models/iris/rollout/resume").await;
    assert_eq!(r["rollout"]["state"], "running");
    // A flip by hand ends the rollout and its split.
    post_ok(&proxy, "/models/iris/flip").await;
    let s = status(&proxy).await;
    assert_eq!(
        (&s["rollout"]["state"], &s["split"]),
        (&"cancelled".into(), &Value::Null),
        "{s}"
    );
    assert_eq!(s["rollout"]["reason"], "superseded by a flip to green");
    post_ok(&proxy, "/models/iris/flip").await;
    // Aborted by hand: back to 0%.
    post_ok(&proxy, "/models/iris/rollout").await;
    let r = post_ok(&proxy, "/models/iris/rollout/abort").await;
    assert_eq!(
        (&r["rollout"]["state"], &r["split"]),
        (&"aborted".into(), &Value::Null)
    );
    let reason = r["rollout"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("step 1 of 2 (5%) aborted by 127.0.0.1:"),
        "{reason}"
    );
    let events = proxy.admin_get("/events").await.json();
    let actions: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "rollout")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "started",
            "paused",
            "resumed",
            "cancelled",
            "started",
            "aborted"
        ]
    );
    // Methods: GET and POST only.
    let r = send(
        &client(),
        Method::DELETE,
        &proxy.admin_url("/models/iris/rollout"),
        full_body(""),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["allow"], "GET, HEAD, POST");
}

#[tokio::test]
async fn a_restart_in_the_middle_of_a_rollout_starts_its_step_over() {
    let (blue, green) = pools().await;
    let models = rollout_model(
        &blue.url(),
        &green.url(),
        r#"["10%:60s", "50%:60s", "100%"]"#,
        "max_5xx_ratio = 0.01",
    );
    let proxy = Proxy::start(&models).await;
    let dir = Arc::clone(&proxy.dir);
    post_ok(&proxy, "/models/iris/rollout").await;
    let before = status(&proxy).await["rollout"].clone();
    proxy.stop().await.unwrap();

    let proxy = Proxy::try_start_in(Arc::clone(&dir), "", &models)
        .await
        .expect("the proxy starts again");
    // The split is served at once, as persisted...
    let s = status(&proxy).await;
    assert_eq!(s["split"]["percent"], 10.0, "{s}");
    // ...and the step starts over, its whole duration ahead.
    let s = eventually_some("the step to start over", || async {
        let s = status(&proxy).await;
        (s["rollout"]["step_started_unix_ms"] != before["step_started_unix_ms"]).then_some(s)
    })
    .await;
    let r = &s["rollout"];
    assert_eq!(
        (&r["state"], &r["step"]),
        (&"running".into(), &1.into()),
        "{s}"
    );
    assert_eq!(r["started_unix_ms"], before["started_unix_ms"]);
    let left = r["left_ms"].as_u64().unwrap();
    assert!(left > 55_000, "{left} ms left after the restart: {s}");
    let events = proxy.admin_get("/events").await.json();
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "rollout" && e["action"] == "restarted"),
        "{events}"
    );

    // A paused rollout stays paused across a restart.
    post_ok(&proxy, "/models/iris/rollout/pause").await;
    let paused = status(&proxy).await["rollout"].clone();
    proxy.stop().await.unwrap();
    let proxy = Proxy::try_start_in(dir, "", &models).await.expect("starts");
    let s = status(&proxy).await;
    assert_eq!(s["rollout"]["state"], "paused", "{s}");
    assert_eq!(s["rollout"]["left_ms"], paused["left_ms"]);
    assert_eq!(s["split"]["percent"], 10.0);
}
