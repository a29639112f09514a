//! Micro-benchmarks of the per-request steps before any I/O: the
//! active-pool lookup (`ArcSwap` load against an `RwLock` read, on one
//! thread and on every core at once), the pool pick with a split against
//! the plain load, routing among 100 models, endpoint pick, and header
//! rewriting.
//!
//! `cargo bench --bench switch`; results go in the README.

use std::hint::black_box;
use std::sync::{Arc, Barrier, RwLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use switchyard::config::{
    EndpointConfig, HealthConfig, ModelConfig, PoolConfig, Sticky, UpstreamSettings,
};
use switchyard::metrics::Metrics;
use switchyard::pool::{PoolName, Protocol};
use switchyard::proxy::headers::{prepare_request, ClientInfo};
use switchyard::route::RouteTable;
use switchyard::switch::{Model, Split};

fn pool_config(endpoints: usize) -> PoolConfig {
    PoolConfig {
        protocol: Protocol::Http1,
        endpoints: (0..endpoints)
            .map(|i| EndpointConfig {
                url: format!("http://127.0.0.1:{}", 8000 + i),
                authority: format!("127.0.0.1:{}", 8000 + i)
                    .parse()
                    .expect("authority"),
            })
            .collect(),
        health: HealthConfig::default(),
        tls: None,
        discovery: None,
    }
}

fn model(metrics: &Metrics, name: &str, prefix: &str) -> Arc<Model> {
    model_with(metrics, name, prefix, None)
}

fn model_with(metrics: &Metrics, name: &str, prefix: &str, sticky: Option<Sticky>) -> Arc<Model> {
    let pool = pool_config(4);
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
        sticky,
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

/// Runs `op` `iters` times on each of `threads` threads at once; returns the
/// wall time of the slowest thread, i.e. the time per `iters` operations
/// under contention.
fn contended(threads: usize, iters: u64, op: impl Fn() + Sync) -> Duration {
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        op();
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .max()
            .unwrap_or_default()
    })
}

fn active_pool_lookup(c: &mut Criterion) {
    let metrics = Metrics::new();
    let m = model(&metrics, "iris", "/");
    let lock = RwLock::new(Arc::clone(m.pool(PoolName::Blue)));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());

    let mut g = c.benchmark_group("active_pool_lookup");
    g.bench_function("arcswap_load_full/1_thread", |b| {
        b.iter(|| black_box(m.active()))
    });
    g.bench_function("rwlock_read_clone/1_thread", |b| {
        b.iter(|| black_box(lock.read().map(|p| Arc::clone(&p)).ok()))
    });
    let name = format!("arcswap_load_full/{cores}_threads");
    g.bench_function(&name, |b| {
        b.iter_custom(|iters| {
            contended(cores, iters, || {
                black_box(m.active());
            })
        })
    });
    let name = format!("rwlock_read_clone/{cores}_threads");
    g.bench_function(&name, |b| {
        b.iter_custom(|iters| {
            contended(cores, iters, || {
                black_box(lock.read().map(|p| Arc::clone(&p)).ok());
            })
        })
    });
    g.finish();
}

/// The request path's one read of switch state: the plain active-pool
/// load against `Model::route` without a split (what every request does
/// now), with a 50 % split drawn by the per-thread counter, and with a
/// 50 % split picked by a sticky header's hash.
fn split_pick(c: &mut Criterion) {
    let metrics = Metrics::new();
    let plain = model(&metrics, "plain", "/");
    let split = model(&metrics, "split", "/");
    split.store_routing(PoolName::Blue, Split::new(PoolName::Green, 500));
    let header = http::HeaderName::from_static("x-user-id");
    let sticky = model_with(&metrics, "sticky", "/", Some(Sticky::Header(header)));
    sticky.store_routing(PoolName::Blue, Split::new(PoolName::Green, 500));
    let none = HeaderMap::new();
    let mut user = HeaderMap::new();
    user.insert("x-user-id", HeaderValue::from_static("user-4711-abcdef"));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());

    let mut g = c.benchmark_group("split_pick");
    g.bench_function("active_load/1_thread", |b| {
        b.iter(|| black_box(plain.active()))
    });
    g.bench_function("route_no_split/1_thread", |b| {
        b.iter(|| black_box(plain.route(black_box(&none))))
    });
    g.bench_function("route_split_50/1_thread", |b| {
        b.iter(|| black_box(split.route(black_box(&none))))
    });
    g.bench_function("route_split_50_sticky/1_thread", |b| {
        b.iter(|| black_box(sticky.route(black_box(&user))))
    });
    let name = format!("active_load/{cores}_threads");
    g.bench_function(&name, |b| {
        b.iter_custom(|iters| {
            contended(cores, iters, || {
                black_box(plain.active());
            })
        })
    });
    let name = format!("route_split_50/{cores}_threads");
    g.bench_function(&name, |b| {
        b.iter_custom(|iters| {
            contended(cores, iters, || {
                black_box(split.route(&none));
            })
        })
    });
    g.finish();
}

fn route_among_100_models(c: &mut Criterion) {
    let metrics = Metrics::new();
    let models: Vec<_> = (0..100)
        .map(|i| model(&metrics, &format!("m{i}"), &format!("/v2/models/m{i}")))
        .collect();
    let table = RouteTable::new(
        models
            .iter()
            .map(|m| (m.path_prefix().to_string(), None, Arc::clone(m))),
    );
    c.bench_function("route_resolve/100_models", |b| {
        b.iter(|| black_box(table.resolve(Some("api.example"), black_box("/v2/models/m73/infer"))))
    });
}

fn pick_endpoint(c: &mut Criterion) {
    let metrics = Metrics::new();
    let m = model(&metrics, "iris", "/");
    let pool = m.active();
    c.bench_function("pool_pick_and_release/4_endpoints", |b| {
        b.iter(|| drop(black_box(pool.pick())))
    });
}

fn header_rewrite(c: &mut Criterion) {
    let client = ClientInfo {
        ip: HeaderValue::from_static("10.0.0.7"),
        proto: HeaderValue::from_static("http"),
        preview: false,
    };
    let mut template = HeaderMap::new();
    template.insert("host", HeaderValue::from_static("models.example"));
    template.insert("content-type", HeaderValue::from_static("application/json"));
    template.insert("content-length", HeaderValue::from_static("212"));
    template.insert("accept", HeaderValue::from_static("*/*"));
    template.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    template.insert("x-request-id", HeaderValue::from_static("0123456789abcdef"));
    let host = HeaderValue::from_static("models.example");
    c.bench_function("header_rewrite/request", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |h| prepare_request(h, &client, Some(host.clone())),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(
    benches,
    active_pool_lookup,
    split_pick,
    route_among_100_models,
    pick_endpoint,
    header_rewrite
);
criterion_main!(benches);
