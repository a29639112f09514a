//! Proves the request path's lookups allocate nothing: routing, the active
//! pool load (with a split and a sticky header too), and the endpoint pick
//! (with the release of its guard) are counted by a thread-local counting
//! allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use switchyard::config::{EndpointConfig, HealthConfig, ModelConfig, PoolConfig, UpstreamSettings};
use switchyard::metrics::Metrics;
use switchyard::pool::{PoolName, Protocol};
use switchyard::route::RouteTable;
use switchyard::switch::{Model, Split};

struct Counting;

thread_local! {
    // `const` init: no lazy initialisation, so no allocation inside `alloc`.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

fn model(metrics: &Metrics, name: &str, prefix: &str) -> Arc<Model> {
    let pool = PoolConfig {
        protocol: Protocol::Http1,
        endpoints: (0..3)
            .map(|i| EndpointConfig {
                url: format!("http://127.0.0.1:{}", 8000 + i),
                authority: format!("127.0.0.1:{}", 8000 + i).parse().unwrap(),
            })
            .collect(),
        health: HealthConfig::default(),
        tls: None,
        discovery: None,
    };
    let config = ModelConfig {
        name: name.to_string(),
        path_prefix: prefix.to_string(),
        host: None,
        active: PoolName::Blue,
        request_timeout: Duration::from_secs(60),
        failover: false,
        preview_header: false,
        watch: None,
        max_body_bytes: switchyard::config::DEFAULT_MAX_BODY_BYTES,
        max_in_flight: switchyard::config::DEFAULT_MAX_IN_FLIGHT,
        validate: Vec::new(),
        validate_before_switch: false,
        shadow: None,
        sticky: None,
        rollout: None,
        blue: pool.clone(),
        green: pool,
    };
    Arc::new(Model::new(
        &config,
        PoolName::Blue,
        &UpstreamSettings::default(),
        metrics,
    ))
}

#[test]
fn the_counter_sees_allocations() {
    let n = allocations_in(|| drop(std::hint::black_box(Vec::<u8>::with_capacity(64))));
    assert_eq!(n, 1);
}

#[test]
fn resolve_load_and_pick_allocate_nothing() {
    let metrics = Metrics::new();
    let models: Vec<_> = (0..50)
        .map(|i| model(&metrics, &format!("m{i}"), &format!("/v2/models/m{i}")))
        .collect();
    let routes = RouteTable::new(
        models
            .iter()
            .map(|m| (m.path_prefix().to_string(), None, Arc::clone(m))),
    );
    // Warm up thread-locals (the random generator, arc-swap's debt slots).
    let warm = routes.resolve(Some("h"), "/v2/models/m7/infer").unwrap();
    drop(warm.active().pick().expect("an endpoint in rotation"));

    let mut served_by = None;
    let n = allocations_in(|| {
        for _ in 0..1000 {
            let model = routes
                .resolve(Some("api.example:8080"), "/v2/models/m7/infer")
                .expect("route");
            let pool = model.active();
            let in_flight = pool.pick().expect("an endpoint in rotation");
            served_by = Some(in_flight.pool().name());
        }
    });
    assert_eq!(
        n, 0,
        "resolve + load + pick allocated {n} times in 1000 requests"
    );
    assert_eq!(served_by, Some(PoolName::Blue));
}

#[test]
fn a_split_pick_allocates_nothing_drawn_or_sticky() {
    let metrics = Metrics::new();
    let model = model(&metrics, "iris", "/");
    model.store_routing(PoolName::Blue, Split::new(PoolName::Green, 300));
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "cookie",
        http::HeaderValue::from_static("a=1; session=u-42"),
    );
    let sticky = switchyard::config::Sticky::Cookie("session".to_string());
    // Warm up the thread-locals (the split's counter, arc-swap's debt slots).
    drop(model.route(&headers).0.pick());
    let mut green = 0;
    let n = allocations_in(|| {
        for _ in 0..1000 {
            let (pool, active) = model.route(&headers);
            assert_eq!(active, PoolName::Blue);
            let in_flight = pool.pick().expect("an endpoint in rotation");
            green += usize::from(in_flight.pool().name() == PoolName::Green);
            let key = switchyard::switch::sticky_key(&sticky, &headers);
            std::hint::black_box(key.map(switchyard::switch::sticky_bucket));
        }
    });
    assert_eq!(
        n, 0,
        "route with a split + pick allocated {n} times in 1000 requests"
    );
    assert!(
        (290..=310).contains(&green),
        "{green} of 1000 to green at 30%"
    );
}
