use super::*;
use crate::config::{EndpointConfig, UpstreamSettings};
use crate::health::ProbeReport;
use crate::metrics::Metrics;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

fn pool_with(n: usize, eject_after: u32) -> Arc<Pool> {
    let config = PoolConfig {
        protocol: Protocol::Http1,
        endpoints: (0..n)
            .map(|i| EndpointConfig {
                url: format!("http://127.0.0.1:{}", 9000 + i),
                authority: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
            })
            .collect(),
        health: HealthConfig {
            eject_after,
            ..HealthConfig::default()
        },
        tls: None,
        discovery: None,
    };
    Arc::new(Pool::new(
        "m".into(),
        PoolName::Blue,
        &config,
        &UpstreamSettings::default(),
        &Metrics::new(),
    ))
}

fn pool(n: usize) -> Arc<Pool> {
    pool_with(n, 5)
}

fn report(ok: bool) -> ProbeReport {
    ProbeReport {
        ok,
        result: String::new(),
        latency_ms: 0.0,
        at_unix_ms: 0,
        consecutive_failures: 0,
        ejected_until_unix_ms: None,
    }
}

#[test]
fn pool_names_parse_and_print() {
    for p in PoolName::ALL {
        assert_eq!(p.as_str().parse::<PoolName>(), Ok(p));
        assert_eq!(p.other().other(), p);
    }
    assert!("red".parse::<PoolName>().is_err());
    assert!("Blue".parse::<PoolName>().is_err());
    assert_eq!(format!("[{:<6}]", PoolName::Blue), "[blue  ]");
}

#[tokio::test]
async fn in_flight_counts_until_the_guard_drops() {
    let pool = pool(1);
    let a = pool.pick().unwrap();
    let b = pool.pick().unwrap();
    assert_eq!(pool.in_flight(), 2);
    assert_eq!(pool.metrics().in_flight.get(), 2);
    drop(a);
    assert_eq!(pool.in_flight(), 1);
    drop(b);
    assert_eq!(pool.in_flight(), 0);
    assert_eq!(pool.served(), 2);
}

#[tokio::test]
async fn two_choices_avoid_the_busier_endpoint() {
    let pool = pool(2);
    // Load endpoint 0 with three requests: every pick must take endpoint 1
    // until the loads are level.
    let held: Vec<_> = (0..3)
        .map(|_| InFlight::start(pool.clone(), Arc::clone(&pool.endpoints()[0])))
        .collect();
    let picks: Vec<_> = (0..3).map(|_| pool.pick().unwrap()).collect();
    assert!(picks.iter().all(|g| g.endpoint().url().ends_with(":9001")));
    drop((held, picks));
}

#[tokio::test]
async fn picks_spread_over_many_endpoints() {
    let pool = pool(5);
    let held: Vec<_> = (0..500).map(|_| pool.pick().unwrap()).collect();
    for e in pool.endpoints().iter() {
        // Power of two choices keeps every endpoint near 100 of 500.
        assert!(
            (80..=120).contains(&e.in_flight()),
            "{}: {}",
            e.url(),
            e.in_flight()
        );
    }
    drop(held);
}

#[tokio::test]
async fn picks_skip_endpoints_out_of_rotation() {
    let pool = pool(4);
    for e in &pool.endpoints()[..3] {
        e.publish(EndpointState::Unhealthy, report(false), false);
    }
    pool.endpoints()[3].publish(EndpointState::Healthy, report(true), false);
    assert_eq!(pool.healthy_count(), 1);
    for _ in 0..100 {
        let g = pool.pick().unwrap();
        assert!(g.endpoint().url().ends_with(":9003"));
    }
    pool.endpoints()[3].publish(EndpointState::Unhealthy, report(false), false);
    assert!(pool.pick().is_none(), "no endpoint in rotation");
}

#[tokio::test]
async fn failed_requests_in_a_row_eject_an_endpoint() {
    let pool = pool_with(2, 3);
    let e = &pool.endpoints()[0];
    e.publish(EndpointState::Healthy, report(true), false);
    e.record_outcome(true);
    e.record_outcome(true);
    e.record_outcome(false); // a success resets the count
    e.record_outcome(true);
    e.record_outcome(true);
    assert!(e.is_serving());
    e.record_outcome(true);
    assert_eq!(e.state(), EndpointState::Ejected);
    assert!(e.is_eject_requested());
    // The prober sees the request (and serves the back-off); once it
    // brings the endpoint back, the count starts afresh.
    e.publish(EndpointState::Ejected, report(true), true);
    assert_eq!(e.state(), EndpointState::Ejected);
    e.publish(EndpointState::Healthy, report(true), true);
    assert!(e.is_serving());
    assert!(!e.is_eject_requested());
    assert_eq!(e.consecutive_request_failures(), 0);
}

#[tokio::test]
async fn an_ejection_racing_a_probe_round_is_kept() {
    let pool = pool_with(1, 2);
    let e = &pool.endpoints()[0];
    e.publish(EndpointState::Healthy, report(true), false);
    // The prober looks for an ejection request and finds none...
    assert!(!e.is_eject_requested());
    // ...then requests fail and eject the endpoint before the prober
    // publishes the round's result, which knows nothing of the ejection.
    e.record_outcome(true);
    e.record_outcome(true);
    e.publish(EndpointState::Healthy, report(true), false);
    assert_eq!(e.state(), EndpointState::Ejected);
    assert!(
        e.is_eject_requested(),
        "the next round must start the back-off"
    );
    assert!(pool.pick().is_none());
}

#[tokio::test]
async fn a_request_moves_to_another_endpoint_never_the_one_it_left() {
    for n in [2, 3, 5] {
        let pool = pool(n);
        for _ in 0..50 {
            let mut g = pool.pick().unwrap();
            let from = g.endpoint().url().to_string();
            let (left, to) = g.move_to_other().expect("another endpoint serves");
            assert_eq!(left.url(), from);
            assert_ne!(to.url(), from);
            let to = to.url().to_string();
            assert_eq!(g.endpoint().url(), to);
            // Counted once, on the endpoint it is on now.
            assert_eq!(pool.in_flight(), 1);
            assert_eq!(pool.metrics().in_flight.get(), 1);
            let on =
                |url: &str| Arc::clone(pool.endpoints().iter().find(|e| e.url() == url).unwrap());
            assert_eq!((on(&from).in_flight(), on(&to).in_flight()), (0, 1));
            drop(g);
            assert_eq!(pool.in_flight(), 0);
        }
        // One observed duration per request, not per attempt.
        assert_eq!(pool.metrics().duration.get_sample_count(), 50);
    }
}

#[tokio::test]
async fn a_request_stays_when_no_other_endpoint_is_in_rotation() {
    let pool = pool(1);
    let mut g = pool.pick().unwrap();
    assert!(
        g.move_to_other().is_none(),
        "a single endpoint has no other"
    );
    assert_eq!(pool.endpoints()[0].in_flight(), 1);
    drop(g);

    let pool = pool_with(3, 5);
    pool.endpoints()[0].publish(EndpointState::Healthy, report(true), false);
    pool.endpoints()[1].publish(EndpointState::Unhealthy, report(false), false);
    pool.endpoints()[2].publish(EndpointState::Unhealthy, report(false), false);
    let mut g = pool.pick().unwrap();
    assert!(g.endpoint().url().ends_with(":9000"));
    assert!(
        g.move_to_other().is_none(),
        "the others are out of rotation"
    );
    assert!(g.endpoint().url().ends_with(":9000"));
    assert_eq!(pool.in_flight(), 1);

    // With one other back in rotation, the move finds it.
    pool.endpoints()[2].publish(EndpointState::Healthy, report(true), false);
    let (_, to) = g.move_to_other().expect("endpoint 2 serves");
    assert!(to.url().ends_with(":9002"));
}

#[test]
fn endpoint_uri_keeps_path_and_query() {
    let pool = pool(1);
    let e = &pool.endpoints()[0];
    let pq: http::uri::PathAndQuery = "/v2/models/iris/infer?x=1".parse().unwrap();
    assert_eq!(
        e.uri(Some(&pq)).to_string(),
        "http://127.0.0.1:9000/v2/models/iris/infer?x=1"
    );
    assert_eq!(e.uri(None).to_string(), "http://127.0.0.1:9000/");
}

/// A pool of `n` endpoints and a new set of it without endpoint `gone`.
fn without(pool: &Pool, gone: usize) -> Box<[Arc<Endpoint>]> {
    let members = pool.endpoints();
    members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != gone)
        .map(|(_, e)| Arc::clone(e))
        .collect()
}

fn set(pool: &Pool, members: Box<[Arc<Endpoint>]>) {
    let writer = pool.writer().expect("discovery not paused");
    pool.set_members(&writer, members);
}

#[tokio::test]
async fn a_request_on_a_removed_endpoint_is_in_flight_until_it_ends() {
    let pool = pool(2);
    let g = InFlight::start(pool.clone(), Arc::clone(&pool.endpoints()[1]));
    set(&pool, without(&pool, 1));
    assert_eq!(pool.endpoints().len(), 1);
    assert_eq!(pool.in_flight(), 1, "the removed endpoint drains");
    let mut drained = std::pin::pin!(pool.wait_drained());
    assert!(
        tokio::time::timeout(Duration::from_millis(20), &mut drained)
            .await
            .is_err(),
        "drained while a request on the removed endpoint is in flight"
    );
    drop(g);
    within_a_second(drained).await;
    assert_eq!(pool.in_flight(), 0);
}

async fn within_a_second(f: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(1), f)
        .await
        .expect("drained once the request ended");
}

/// The swap and the draining list are written in the order that never lets
/// `in_flight` miss a request on the endpoint being removed: a reader
/// spinning beside the writer never sees 0 while one is held.
#[tokio::test]
async fn in_flight_never_misses_a_request_across_a_swap() {
    let pool = pool(1);
    let metrics = Metrics::new();
    let source: Arc<str> = "http://models.test:8000".into();
    let host: Authority = "models.test:8000".parse().unwrap();
    // Odd while a request is held on the endpoint about to be removed.
    let generation = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (pool, generation, stop) = (pool.clone(), generation.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut misses = 0;
            while !stop.load(Ordering::SeqCst) {
                let before = generation.load(Ordering::SeqCst);
                let n = pool.in_flight();
                let after = generation.load(Ordering::SeqCst);
                if before == after && before % 2 == 1 && n == 0 {
                    misses += 1;
                }
            }
            misses
        })
    };
    let first = Arc::clone(&pool.endpoints()[0]);
    for i in 0..5_000u16 {
        let authority: Authority = format!("127.0.0.2:{}", 1000 + i).parse().unwrap();
        let added = Arc::new(pool.discovered_endpoint(authority, &host, &source, false, &metrics));
        set(&pool, Box::new([Arc::clone(&first), Arc::clone(&added)]));
        let g = InFlight::start(pool.clone(), added);
        generation.fetch_add(1, Ordering::SeqCst);
        set(&pool, Box::new([Arc::clone(&first)]));
        generation.fetch_add(1, Ordering::SeqCst);
        drop(g);
    }
    stop.store(true, Ordering::SeqCst);
    assert_eq!(
        reader.join().expect("reader"),
        0,
        "in_flight read 0 with a request held"
    );
}

#[tokio::test]
async fn a_held_request_keeps_only_its_own_endpoint_alive() {
    let pool = pool(2);
    pool.endpoints()[1].publish(EndpointState::Unhealthy, report(false), false);
    // On endpoint 0, the only one in rotation.
    let g = pool.pick().unwrap();
    assert!(g.endpoint().url().ends_with(":9000"));
    let removed = Arc::downgrade(&pool.endpoints()[1]);
    set(&pool, without(&pool, 1));
    assert!(
        removed.upgrade().is_none(),
        "a request on another endpoint kept the removed one (and its connections)"
    );
    drop(g);
}

#[tokio::test]
async fn a_retry_never_goes_to_a_removed_endpoint() {
    let pool = pool(3);
    let (a, b) = (
        Arc::clone(&pool.endpoints()[0]),
        Arc::clone(&pool.endpoints()[1]),
    );
    // Picked from the set that had b; b is removed before the retry.
    let mut g = InFlight::start(pool.clone(), Arc::clone(&a));
    let mut on_b = InFlight::start(pool.clone(), Arc::clone(&b));
    set(&pool, without(&pool, 1));
    // The prober cannot bring it back.
    b.publish(EndpointState::Healthy, report(true), false);
    assert!(!b.is_serving());
    for _ in 0..50 {
        let (_, to) = g.move_to_other().expect("another endpoint serves");
        assert!(to.url().ends_with(":9002"), "{}", to.url());
        let (_, to) = g.move_to_other().expect("another endpoint serves");
        assert!(to.url().ends_with(":9000"), "{}", to.url());
    }
    // A request on the removed endpoint moves into the current set.
    let (left, to) = on_b.move_to_other().expect("another endpoint serves");
    assert!(Arc::ptr_eq(&left, &b));
    assert!(!to.url().ends_with(":9001"));
    assert_eq!(b.in_flight(), 0);
    assert_eq!(pool.in_flight(), 2);
    assert!(g.has_others());
    drop((g, on_b));
    assert_eq!(pool.in_flight(), 0);
}
