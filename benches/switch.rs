//! Micro-benchmarks of the per-request steps before any I/O: the
//! active-pool lookup (`ArcSwap` load against an `RwLock` read, on one
//! thread and on every core at once), routing among 100 models, endpoint
//! pick, and header rewriting.
//!
//! `cargo bench --bench switch`; results go in the README.

use std::hint::black_box;
use std::sync::{Arc, Barrier, RwLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use switchyard::config::{EndpointConfig, HealthConfig, ModelConfig, PoolConfig, UpstreamSettings};
use switchyard::metrics::Metrics;
use switchyard::pool::{PoolName, Protocol};
use switchyard::proxy::headers::{prepare_request, ClientInfo};
use switchyard::route::RouteTable;
use switchyard::switch::Model;

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
    }
}

fn model(metrics: &Metrics, name: &str, prefix: &str) -> Arc<Model> {
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
    route_among_100_models,
    pick_endpoint,
    header_rewrite
);
criterion_main!(benches);
