//! A fleet: several switchyard instances sharing one switch through a real
//! etcd (`tests/support/etcd.rs` starts Debian's binary on free loopback
//! ports). A flip on one instance moves traffic on all; two flips at once
//! cannot both win; an instance cut off from etcd serves on, refuses
//! switches with 503 and catches up when etcd is back; an instance starts
//! from its cache while etcd is down; TLS and credentials.

mod support;

use std::sync::Arc;

use http::StatusCode;
use serde_json::Value;
use support::etcd::{write_file, Etcd, EtcdTls, Link};
use support::*;
use switchyard::config::StateConfig;
use switchyard::metrics::Metrics;
use switchyard::pool::PoolName;
use switchyard::store::{Commit, CommitError, EtcdStore, StateStore, Stored};
use switchyard::switch::{ModelState, SwitchOp};

const PREFIX: &str = "/switchyard/test/";

/// A config whose state is in etcd at `endpoints`, plus `state_extra`
/// lines in `[state]`.
fn fleet_config(endpoints: &[String], state_extra: &str, models: &str) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[state]\nbackend = \"etcd\"\nendpoints = {endpoints:?}\nprefix = {PREFIX:?}\ntimeout = \"1s\"\n{state_extra}\n\n{models}\n"
    )
}

/// Blue and green model servers and the model that routes to them.
struct Pools {
    blue: Upstream,
    green: Upstream,
}

impl Pools {
    async fn start() -> Pools {
        Pools {
            blue: Upstream::start("blue").await,
            green: Upstream::start("green").await,
        }
    }

    fn model(&self) -> String {
        model("iris", "/", &self.blue.url(), &self.green.url())
    }
}

/// Starts an instance in a fresh directory.
async fn instance(text: &str) -> Proxy {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    Proxy::try_start_text(dir, text)
        .await
        .unwrap_or_else(|e| panic!("instance does not start: {}", switchyard::ErrorChain(&e)))
}

/// Waits until `proxy` sends requests to `pool`.
async fn wait_serving(proxy: &Proxy, pool: &str) {
    eventually(
        &format!("instance on {} to serve {pool}", proxy.addr),
        || async { get(&proxy.url("/")).await.pool() == pool },
    )
    .await;
}

/// `state_store` of GET /models.
async fn store_status(proxy: &Proxy) -> Value {
    let r = proxy.admin_get("/models").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["state_store"].clone()
}

async fn wait_connected(proxy: &Proxy, connected: bool) -> Value {
    eventually_some(
        &format!(
            "instance on {} to see the store connected = {connected}",
            proxy.addr
        ),
        || async {
            let status = store_status(proxy).await;
            (status["connected"] == connected).then_some(status)
        },
    )
    .await
}

/// The state etcd holds for iris.
async fn stored_state(etcd: &Etcd) -> (Value, u64) {
    etcd.get(&format!("{PREFIX}iris"))
        .await
        .expect("iris has a key in etcd")
}

#[tokio::test]
async fn a_flip_on_one_of_three_instances_moves_traffic_on_all_three() {
    let etcd = Etcd::start().await;
    let pools = Pools::start().await;
    let text = fleet_config(&[etcd.url()], "", &pools.model());
    let fleet = [
        instance(&text).await,
        instance(&text).await,
        instance(&text).await,
    ];
    for i in &fleet {
        assert_eq!(get(&i.url("/")).await.pool(), "blue");
        let status = store_status(i).await;
        assert_eq!(status["backend"], "etcd");
        assert_eq!(status["connected"], true, "{status}");
        assert_eq!(status["prefix"], PREFIX);
    }

    let r = fleet[1].admin_post("/models/iris/flip?expect=blue").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["active"], "green");
    for i in &fleet {
        wait_serving(i, "green").await;
    }
    let (state, _) = stored_state(&etcd).await;
    assert_eq!(state["active"], "green");
    assert_eq!(state["history"].as_array().map(Vec::len), Some(1));

    // The others followed it as a switch: the same history, an event that
    // says where it came from, the counters, the lag.
    for i in [&fleet[0], &fleet[2]] {
        let detail = i.admin_get("/models/iris").await.json();
        assert_eq!(detail["active"], "green");
        assert_eq!(detail["history"][0]["reason"], "flip");
        let events = i.admin_get("/events").await.json();
        let switch = events["events"]
            .as_array()
            .and_then(|all| all.iter().find(|e| e["type"] == "switch").cloned())
            .expect("a switch event");
        assert_eq!(switch["origin"], "store", "{switch}");
        assert_eq!(
            (&switch["from"], &switch["to"]),
            (&"blue".into(), &"green".into())
        );
        assert_eq!(
            metric_value(i, r#"switchyard_switches_total{model="iris",to="green"}"#).await,
            Some(1.0)
        );
        assert_eq!(
            metric_value(i, "switchyard_state_store_up").await,
            Some(1.0)
        );
        assert_eq!(
            metric_value(i, "switchyard_state_store_watch_lag_seconds_count").await,
            Some(1.0)
        );
    }
    // The writer did not follow its own write back.
    let events = fleet[1].admin_get("/events").await.json();
    assert!(
        events["events"]
            .as_array()
            .is_some_and(|all| all.iter().all(|e| e["origin"].is_null())),
        "{events}"
    );

    // `expect=` and rollback are fleet-wide.
    let r = fleet[2].admin_post("/models/iris/flip?expect=blue").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(r.text().contains("but green is"), "{}", r.text());
    let r = fleet[0].admin_post("/models/iris/rollback").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for i in &fleet {
        wait_serving(i, "blue").await;
    }
    let (state, _) = stored_state(&etcd).await;
    assert_eq!(state["last_switch"]["reason"], "rollback");
    assert_eq!(state["history"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn two_concurrent_flips_exactly_one_wins() {
    let etcd = Etcd::start().await;
    let pools = Pools::start().await;
    let text = fleet_config(&[etcd.url()], "", &pools.model());
    let fleet = [
        instance(&text).await,
        instance(&text).await,
        instance(&text).await,
    ];

    // Both expect blue: one flips, the other finds green (through the
    // store's revision, or because the first flip already reached it).
    let (a, b) = tokio::join!(
        fleet[0].admin_post("/models/iris/flip?expect=blue"),
        fleet[1].admin_post("/models/iris/flip?expect=blue"),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CONFLICT],
        "{} / {}",
        a.text(),
        b.text()
    );
    // Refused by etcd's compare (the state that won rides along), or by
    // `expect` when the first flip reached this instance before it decided.
    let loser = if a.status == StatusCode::CONFLICT {
        &a
    } else {
        &b
    };
    assert!(
        loser.json()["active"] == "green" || loser.text().contains("but green is"),
        "{}",
        loser.text()
    );
    for i in &fleet {
        wait_serving(i, "green").await;
    }
    let (state, _) = stored_state(&etcd).await;
    assert_eq!(state["history"].as_array().map(Vec::len), Some(1));

    // Rounds of flips without `expect` on all three at once: every flip
    // answered 200 is in the store, none is lost, and the fleet agrees.
    let mut won = 0;
    let mut conflicts = 0;
    for _ in 0..8 {
        let answers = futures_join3(&fleet).await;
        for r in answers {
            match r.status {
                StatusCode::OK => won += 1,
                StatusCode::CONFLICT => {
                    conflicts += 1;
                    assert!(
                        r.text().contains("switched by another instance first"),
                        "{}",
                        r.text()
                    );
                }
                other => panic!("a flip answered {other}: {}", r.text()),
            }
        }
    }
    let expected = if won % 2 == 0 { "green" } else { "blue" };
    for i in &fleet {
        wait_serving(i, expected).await;
    }
    let (state, _) = stored_state(&etcd).await;
    assert_eq!(
        state["active"], expected,
        "{won} flips won, {conflicts} lost"
    );
    eprintln!("{won} flips won, {conflicts} refused as conflicts");
}

async fn futures_join3(fleet: &[Proxy; 3]) -> [Reply; 3] {
    let (a, b, c) = tokio::join!(
        fleet[0].admin_post("/models/iris/flip"),
        fleet[1].admin_post("/models/iris/flip"),
        fleet[2].admin_post("/models/iris/flip"),
    );
    [a, b, c]
}

/// The store itself: a switch decided on a revision the key has left is
/// refused with what the key holds now, whatever the timing.
#[tokio::test]
async fn a_switch_decided_on_a_stale_revision_is_refused_with_the_current_state() {
    let etcd = Etcd::start().await;
    let text = fleet_config(
        &[etcd.url()],
        "",
        &model("iris", "/", "http://127.0.0.1:1", "http://127.0.0.1:2"),
    );
    let config = switchyard::Config::from_toml(&text, std::path::Path::new("fleet.toml"))
        .expect("a valid config");
    let StateConfig::Etcd(etcd_config) = &config.state else {
        panic!("the etcd backend")
    };
    let store = EtcdStore::new(etcd_config, Metrics::new().store()).expect("store");
    assert!(store.load().await.expect("etcd answers").is_empty());

    let blue = ModelState::new(PoolName::Blue);
    let flipped = |s: &ModelState, at| {
        s.apply("iris", SwitchOp::Flip { expect: None }, at, "test")
            .unwrap()
            .unwrap()
    };
    let green = flipped(&blue, 1);
    let all = Default::default();
    let commit = |seen, next| Commit {
        model: "iris",
        seen,
        next,
        all: &all,
    };
    let first = store
        .commit(commit(0, &green))
        .await
        .expect("the first write creates the key");
    assert_eq!(stored_state(&etcd).await.1, first);

    // Decided on "no key yet", as the first was: refused.
    let other = flipped(&blue, 2);
    match store.commit(commit(0, &other)).await {
        Err(CommitError::Conflict(Some(stored))) => {
            let Stored { state, revision } = *stored;
            assert_eq!((state, revision), (green.clone(), first));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Decided on the current revision: written.
    let back = flipped(&green, 3);
    let second = store.commit(commit(first, &back)).await.expect("written");
    assert!(second > first);
    assert_eq!(stored_state(&etcd).await.0["active"], "blue");
}

#[tokio::test]
async fn etcd_down_traffic_still_served_switches_503_then_resynchronised() {
    let mut etcd = Etcd::start().await;
    let pools = Pools::start().await;
    let text = fleet_config(&[etcd.url()], "", &pools.model());
    let a = instance(&text).await;
    let b = instance(&text).await;
    assert_eq!(
        a.admin_post("/models/iris/flip").await.status,
        StatusCode::OK
    );
    wait_serving(&b, "green").await;

    etcd.stop();
    for i in [&a, &b] {
        let status = wait_connected(i, false).await;
        assert!(status["last_error"].is_string(), "{status}");
        assert_eq!(
            metric_value(i, "switchyard_state_store_up").await,
            Some(0.0)
        );
        // Traffic goes on, on the pool the fleet last chose.
        for _ in 0..5 {
            let r = get(&i.url("/")).await;
            assert_eq!((r.status, r.pool()), (StatusCode::OK, "green"));
        }
        let r = i.admin_post("/models/iris/flip").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
        assert!(r.text().contains("state store unavailable"), "{}", r.text());
        assert_eq!(get(&i.url("/")).await.pool(), "green");
    }
    // The command-line client says so under its table.
    let status = cli_status(&a).await;
    assert!(
        status.contains("state store: etcd disconnected"),
        "{status}"
    );
    assert!(status.contains("last error: "), "{status}");
    let errors = metric_value(&a, r#"switchyard_state_store_errors_total{op="watch"}"#)
        .await
        .unwrap_or(0.0)
        + metric_value(&a, r#"switchyard_state_store_errors_total{op="read"}"#)
            .await
            .unwrap_or(0.0);
    assert!(errors >= 1.0, "store errors counted: {errors}");

    etcd.resume().await;
    for i in [&a, &b] {
        wait_connected(i, true).await;
    }
    let status = cli_status(&a).await;
    assert!(status.contains("state store: etcd connected"), "{status}");
    let r = b.admin_post("/models/iris/flip?expect=green").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for i in [&a, &b] {
        wait_serving(i, "blue").await;
    }
}

/// What `switchyard status` prints for `proxy`.
async fn cli_status(proxy: &Proxy) -> String {
    let admin = format!("http://{}", proxy.admin);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["status", "--admin", &admin])
            .env_remove("SWITCHYARD_ADMIN_TOKEN_FILE")
            .output()
            .expect("run switchyard status")
    })
    .await
    .expect("switchyard status ran");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn an_instance_cut_off_catches_up_on_a_switch_made_meanwhile() {
    let etcd = Etcd::start().await;
    let link = Link::start(etcd.addr()).await;
    let pools = Pools::start().await;
    let cut_off = instance(&fleet_config(&[link.url()], "", &pools.model())).await;
    let other = instance(&fleet_config(&[etcd.url()], "", &pools.model())).await;

    link.cut();
    wait_connected(&cut_off, false).await;
    let r = cut_off.admin_post("/models/iris/flip").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());

    // The rest of the fleet switches without it; it serves on what it knew.
    let r = other.admin_post("/models/iris/flip?expect=blue").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(get(&other.url("/")).await.pool(), "green");
    for _ in 0..5 {
        assert_eq!(get(&cut_off.url("/")).await.pool(), "blue");
    }

    // Back in touch: the switch made meanwhile is applied.
    link.restore();
    wait_serving(&cut_off, "green").await;
    let status = wait_connected(&cut_off, true).await;
    assert!(
        status["last_error"].is_string(),
        "the outage is remembered: {status}"
    );
    let detail = cut_off.admin_get("/models/iris").await.json();
    assert_eq!(detail["last_switch"]["reason"], "flip");
    let r = cut_off.admin_post("/models/iris/rollback").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    wait_serving(&other, "blue").await;
}

#[tokio::test]
async fn an_instance_restarts_from_its_cache_while_etcd_is_down() {
    let mut etcd = Etcd::start().await;
    let pools = Pools::start().await;
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let cache = dir.path().join("cache.json");
    let text = fleet_config(
        &[etcd.url()],
        &format!("cache_path = {:?}", cache.display().to_string()),
        &pools.model(),
    );
    let a = Proxy::try_start_text(Arc::clone(&dir), &text)
        .await
        .expect("instance starts");
    assert_eq!(
        a.admin_post("/models/iris/flip").await.status,
        StatusCode::OK
    );
    eventually("the cache to hold the flip", || async {
        std::fs::read_to_string(&cache)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| v["models"]["iris"]["state"]["active"] == "green")
    })
    .await;
    a.stop().await.expect("a clean stop");

    etcd.stop();
    let a = Proxy::try_start_text(Arc::clone(&dir), &text)
        .await
        .expect("an instance with a cache starts while etcd is down");
    assert_eq!(get(&a.url("/")).await.pool(), "green");
    let status = store_status(&a).await;
    assert_eq!(status["connected"], false, "{status}");
    assert_eq!(status["started_from_cache"], true, "{status}");
    let r = a.admin_post("/models/iris/flip").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());

    // Without a cache, or before its first write, it refuses to start.
    let fresh = Arc::new(tempfile::tempdir().expect("temp dir"));
    let e = Proxy::try_start_text(
        Arc::clone(&fresh),
        &fleet_config(&[etcd.url()], "", &pools.model()),
    )
    .await
    .err()
    .expect("no start without etcd or a cache");
    let message = switchyard::ErrorChain(&e).to_string();
    assert!(
        message.contains("cannot read the switch state from etcd"),
        "{message}"
    );
    assert!(message.contains("set state.cache_path"), "{message}");
    let e = Proxy::try_start_text(
        fresh,
        &fleet_config(
            &[etcd.url()],
            "cache_path = \"never-written.json\"",
            &pools.model(),
        ),
    )
    .await
    .err()
    .expect("no start from a cache never written");
    let message = switchyard::ErrorChain(&e).to_string();
    assert!(message.contains("there is no cache at"), "{message}");

    // etcd back: the instance reconnects and switches again.
    etcd.resume().await;
    wait_connected(&a, true).await;
    assert_eq!(
        a.admin_post("/models/iris/flip").await.status,
        StatusCode::OK
    );
    wait_serving(&a, "blue").await;
}

#[tokio::test]
async fn tls_with_a_client_certificate_reaches_etcd() {
    let pki = support::tls::Pki::new();
    let (cert, key) = pki.server_files("etcd", &["127.0.0.1"]);
    let identity = switchyard::tls::TlsFiles {
        cert: pki.client_cert(),
        key: pki.client_key(),
    };
    let mut client =
        switchyard::tls::client_config(Some(&pki.ca()), Some(&identity)).expect("client TLS");
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let etcd = Etcd::start_tls(EtcdTls {
        cert,
        key,
        ca: pki.ca(),
        client: Arc::new(client),
    })
    .await;
    assert!(etcd.url().starts_with("https://"));

    let pools = Pools::start().await;
    let ca = format!("tls.ca = {:?}\n", pki.ca().display().to_string());
    let identity = format!(
        "tls.cert = {:?}\ntls.key = {:?}\n",
        pki.client_cert().display().to_string(),
        pki.client_key().display().to_string(),
    );
    let a = instance(&fleet_config(
        &[etcd.url()],
        &format!("{ca}{identity}"),
        &pools.model(),
    ))
    .await;
    assert_eq!(store_status(&a).await["connected"], true);
    let r = a.admin_post("/models/iris/flip").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(stored_state(&etcd).await.0["active"], "green");

    // etcd asks for a client certificate: without one, no start.
    let e = Proxy::try_start_text(
        Arc::new(tempfile::tempdir().expect("temp dir")),
        &fleet_config(&[etcd.url()], &ca, &pools.model()),
    )
    .await
    .err()
    .expect("no client certificate, no start");
    let message = switchyard::ErrorChain(&e).to_string();
    // TLS 1.3: the refusal comes as an alert after the handshake.
    assert!(message.contains("etcd at https://127.0.0.1:"), "{message}");
    assert!(message.contains("BadCertificate"), "{message}");
}

#[tokio::test]
async fn credentials_authenticate_and_a_wrong_password_is_named() {
    let etcd = Etcd::start().await;
    etcd.enable_auth("root", "s3cret").await;
    let pools = Pools::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let good = write_file(dir.path(), "good.password", "s3cret\n");
    let text = fleet_config(
        &[etcd.url()],
        &format!(
            "username = \"root\"\npassword_file = {:?}",
            good.display().to_string()
        ),
        &pools.model(),
    );
    let a = instance(&text).await;
    let b = instance(&text).await;
    let r = a.admin_post("/models/iris/flip").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(stored_state(&etcd).await.0["active"], "green");
    wait_serving(&b, "green").await;

    let bad = write_file(dir.path(), "bad.password", "guess\n");
    let e = Proxy::try_start_text(
        Arc::new(tempfile::tempdir().expect("temp dir")),
        &fleet_config(
            &[etcd.url()],
            &format!(
                "username = \"root\"\npassword_file = {:?}",
                bad.display().to_string()
            ),
            &pools.model(),
        ),
    )
    .await
    .err()
    .expect("a wrong password does not start");
    let message = switchyard::ErrorChain(&e).to_string();
    assert!(
        message.contains("refused the credentials of user \"root\""),
        "{message}"
    );

    // Without credentials, etcd says what it misses.
    let e = Proxy::try_start_text(
        Arc::new(tempfile::tempdir().expect("temp dir")),
        &fleet_config(&[etcd.url()], "", &pools.model()),
    )
    .await
    .err()
    .expect("no credentials, no start");
    let message = switchyard::ErrorChain(&e).to_string();
    assert!(message.contains("refused the request"), "{message}");
}

#[tokio::test]
async fn what_another_writer_puts_in_etcd_is_followed_and_garbage_is_ignored() {
    let etcd = Etcd::start().await;
    let pools = Pools::start().await;
    let a = instance(&fleet_config(&[etcd.url()], "", &pools.model())).await;
    let key = format!("{PREFIX}iris");

    // Not a state: logged, counted, and the instance keeps its pool.
    etcd.put(&key, b"{\"active\": \"red\"}").await;
    eventually("the bad value to be counted", || async {
        metric_value(&a, r#"switchyard_state_store_errors_total{op="decode"}"#)
            .await
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    assert_eq!(get(&a.url("/")).await.pool(), "blue");
    assert_eq!(store_status(&a).await["connected"], true);

    // A state written by hand (etcdctl put): followed like a switch.
    etcd.put(&key, br#"{"active":"green","history":[]}"#).await;
    wait_serving(&a, "green").await;

    // The key deleted: the instance keeps green, and its next switch
    // writes the key anew.
    let deleted = etcd.delete(&key).await;
    eventually("the deletion to be seen", || async {
        store_status(&a).await["revision"]
            .as_u64()
            .is_some_and(|r| r >= deleted)
    })
    .await;
    assert_eq!(get(&a.url("/")).await.pool(), "green");
    let r = a.admin_post("/models/iris/flip?expect=green").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(stored_state(&etcd).await.0["active"], "blue");
    wait_serving(&a, "blue").await;
}

#[tokio::test]
async fn a_split_and_a_rollout_are_shared_by_the_fleet() {
    let etcd = Etcd::start().await;
    let pools = Pools::start().await;
    let models = format!(
        "{}\n[models.rollout]\nsteps = [\"20%:60s\", \"100%\"]\nmax_5xx_ratio = 0.01\n",
        pools.model()
    );
    let text = fleet_config(&[etcd.url()], "", &models);
    let fleet = [instance(&text).await, instance(&text).await];

    // A weight set on one instance is served by the other.
    let r = fleet[0].admin_post("/models/iris/weight?green=50").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let (state, _) = stored_state(&etcd).await;
    assert_eq!(
        state["split"],
        serde_json::json!({"pool": "green", "permille": 500})
    );
    eventually("the other instance to serve the split", || async {
        fleet[1].admin_get("/models/iris").await.json()["split"]["percent"] == 50.0
    })
    .await;
    let mut green = 0;
    for _ in 0..100 {
        green += usize::from(get(&fleet[1].url("/")).await.pool() == "green");
    }
    assert!(
        (45..=55).contains(&green),
        "{green} of 100 to green: the split's share on the other instance"
    );
    let events = fleet[1].admin_get("/events").await.json();
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "weight" && e["origin"] == "store" && e["percent"] == 50.0),
        "{events}"
    );

    // A rollout started on one instance: its step and split are in etcd,
    // and the other instance serves and shows them, and can abort it.
    let r = fleet[0].admin_post("/models/iris/weight?green=0").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = fleet[0].admin_post("/models/iris/rollout").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let (state, _) = stored_state(&etcd).await;
    assert_eq!(
        (&state["rollout"]["state"], &state["rollout"]["step"]),
        (&"running".into(), &1.into()),
        "{state}"
    );
    assert_eq!(state["split"]["permille"], 200);
    eventually("the other instance to follow the rollout", || async {
        let s = fleet[1].admin_get("/models/iris/rollout").await.json();
        s["rollout"]["state"] == "running" && s["split"]["percent"] == 20.0
    })
    .await;
    let r = fleet[1].admin_post("/models/iris/rollout/abort").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    eventually("the first instance to see the abort", || async {
        let s = fleet[0].admin_get("/models/iris").await.json();
        s["rollout"]["state"] == "aborted" && s["split"].is_null()
    })
    .await;
    let (state, _) = stored_state(&etcd).await;
    assert_eq!(state["rollout"]["state"], "aborted");
}
