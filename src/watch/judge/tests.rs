use super::*;

/// Bounds of a small histogram: 10ms, 100ms, 1s.
const BOUNDS: &[f64] = &[0.01, 0.1, 1.0];

fn limits() -> WatchConfig {
    WatchConfig {
        window: Duration::from_secs(60),
        interval: Duration::from_secs(1),
        min_requests: 20,
        max_5xx_ratio: None,
        max_5xx_ratio_increase: None,
        max_p99: None,
        max_p99_ratio: None,
    }
}

/// `requests` responses, `errors` of them 5xx, every duration in the bucket
/// `bucket` (0: up to 10ms, 1: to 100ms, 2: to 1s, 3: above 1s).
fn traffic(requests: u64, errors: u64, bucket: usize) -> Counts {
    let buckets = (0..BOUNDS.len())
        .map(|i| if i >= bucket { requests } else { 0 })
        .collect();
    Counts {
        requests,
        errors,
        buckets,
        observed: requests,
    }
}

fn breach(v: Verdict) -> String {
    match v {
        Verdict::Breach(reason) => reason,
        other => panic!("expected a breach, got {other:?}"),
    }
}

#[test]
fn the_5xx_ratio_is_judged_against_its_absolute_limit() {
    let l = WatchConfig {
        max_5xx_ratio: Some(0.1),
        ..limits()
    };
    assert_eq!(
        judge(&l, BOUNDS, &traffic(100, 10, 0), None),
        Verdict::Healthy,
        "at the limit is within it"
    );
    let reason = breach(judge(&l, BOUNDS, &traffic(100, 11, 0), None));
    assert!(
        reason.contains("5xx ratio 0.110 over 100 requests"),
        "{reason}"
    );
    assert!(reason.contains("max_5xx_ratio 0.1"), "{reason}");
    let zero = WatchConfig {
        max_5xx_ratio: Some(0.0),
        ..limits()
    };
    assert!(matches!(
        judge(&zero, BOUNDS, &traffic(100, 1, 0), None),
        Verdict::Breach(_)
    ));
}

#[test]
fn too_few_requests_are_not_judged() {
    let l = WatchConfig {
        max_5xx_ratio: Some(0.0),
        max_p99: Some(Duration::from_millis(1)),
        ..limits()
    };
    assert_eq!(
        judge(&l, BOUNDS, &traffic(19, 19, 3), None),
        Verdict::TooFew
    );
    assert!(matches!(
        judge(&l, BOUNDS, &traffic(20, 19, 3), None),
        Verdict::Breach(_)
    ));
}

#[test]
fn the_5xx_increase_is_judged_against_the_old_pools_ratio() {
    let l = WatchConfig {
        max_5xx_ratio_increase: Some(0.05),
        ..limits()
    };
    let old = traffic(1000, 100, 0); // 10%
    assert_eq!(
        judge(&l, BOUNDS, &traffic(100, 15, 0), Some(&old)),
        Verdict::Healthy,
        "15% is five points above 10%"
    );
    let reason = breach(judge(&l, BOUNDS, &traffic(100, 16, 0), Some(&old)));
    assert!(reason.contains("above the old pool's 0.100"), "{reason}");
    assert!(reason.contains("max_5xx_ratio_increase 0.05"), "{reason}");
}

#[test]
fn relative_limits_need_baseline_traffic() {
    let l = WatchConfig {
        max_5xx_ratio_increase: Some(0.0),
        max_p99_ratio: Some(1.0),
        ..limits()
    };
    let bad = traffic(100, 100, 3);
    assert_eq!(
        judge(&l, BOUNDS, &bad, None),
        Verdict::Healthy,
        "no baseline"
    );
    assert_eq!(
        judge(&l, BOUNDS, &bad, Some(&traffic(19, 0, 0))),
        Verdict::Healthy,
        "a baseline below min_requests is none"
    );
    assert!(matches!(
        judge(&l, BOUNDS, &bad, Some(&traffic(20, 0, 0))),
        Verdict::Breach(_)
    ));
    // Requests without durations (all still streaming): no p99 to compare.
    let no_durations = Counts {
        observed: 0,
        buckets: vec![0; 3],
        ..traffic(20, 0, 0)
    };
    let l = WatchConfig {
        max_p99_ratio: Some(1.0),
        ..limits()
    };
    assert_eq!(
        judge(&l, BOUNDS, &bad, Some(&no_durations)),
        Verdict::Healthy
    );
}

#[test]
fn the_p99_is_judged_against_its_absolute_limit() {
    let l = WatchConfig {
        max_p99: Some(Duration::from_millis(500)),
        ..limits()
    };
    assert_eq!(
        judge(&l, BOUNDS, &traffic(100, 0, 1), None),
        Verdict::Healthy,
        "everything within 100ms"
    );
    let reason = breach(judge(&l, BOUNDS, &traffic(100, 0, 3), None));
    assert!(reason.contains("p99 latency 1000ms"), "{reason}");
    assert!(reason.contains("above max_p99 500ms"), "{reason}");
}

#[test]
fn the_p99_ratio_is_judged_against_the_old_pools_p99() {
    let l = WatchConfig {
        max_p99_ratio: Some(2.0),
        ..limits()
    };
    // Old: everything in (10ms, 100ms]: p99 at 99.1ms. New: in (100ms, 1s]: 991ms.
    let old = traffic(100, 0, 1);
    let reason = breach(judge(&l, BOUNDS, &traffic(100, 0, 2), Some(&old)));
    assert!(
        reason.contains("10.0 times the old pool's 99ms"),
        "{reason}"
    );
    assert_eq!(
        judge(&l, BOUNDS, &traffic(100, 0, 1), Some(&old)),
        Verdict::Healthy
    );
}

#[test]
fn p99_interpolates_within_its_bucket_as_histogram_quantile_does() {
    // 90 fast (<= 10ms), 10 in (100ms, 1s]: rank 99 is the 9th of the 10.
    let c = Counts {
        requests: 100,
        errors: 0,
        buckets: vec![90, 90, 100],
        observed: 100,
    };
    let p99 = c.p99(BOUNDS).unwrap();
    assert!((p99 - (0.1 + 0.9 * 9.0 / 10.0)).abs() < 1e-9, "{p99}");
    // In the first bucket the lower bound is 0.
    assert!((traffic(100, 0, 0).p99(BOUNDS).unwrap() - 0.0099).abs() < 1e-9);
    // Above every bound: the last bound.
    assert_eq!(traffic(100, 0, 3).p99(BOUNDS), Some(1.0));
    assert_eq!(Counts::default().p99(BOUNDS), None);
}

#[test]
fn counts_since_subtract_and_never_wrap() {
    let early = traffic(10, 1, 1);
    let late = traffic(30, 4, 1);
    assert_eq!(late.since(&early), traffic(20, 3, 1));
    // A series started afresh reads as no traffic.
    assert_eq!(early.since(&late), traffic(0, 0, 1));
    assert_eq!(early.since(&Counts::default()), early);
}

#[test]
fn recent_keeps_one_sample_at_or_before_the_window() {
    let t0 = Instant::now();
    let window = Duration::from_secs(10);
    let mut r = Recent::default();
    assert_eq!(r.window_to(&traffic(5, 0, 0)), None);
    for s in 0..=30u64 {
        r.push(t0 + Duration::from_secs(s), traffic(s * 10, s, 0), window);
    }
    // At 30s the window starts at 20s: the sample of 20s is the oldest kept.
    assert_eq!(r.window_to(&traffic(300, 30, 0)), Some(traffic(100, 10, 0)));
    assert_eq!(r.samples.len(), 11);
    r.clear();
    assert_eq!(r.window_to(&traffic(1, 0, 0)), None);
}

#[test]
fn a_watch_steps_from_watching_to_passed_or_breach() {
    let t0 = Instant::now();
    let w = Watch {
        limits: WatchConfig {
            max_5xx_ratio: Some(0.1),
            ..limits()
        },
        start: traffic(1000, 500, 0),
        baseline: None,
        until: t0 + Duration::from_secs(60),
    };
    // Counters before the switch do not count against the new pool.
    let healthy = traffic(1100, 500, 0);
    assert!(matches!(
        w.step(t0 + Duration::from_secs(1), &healthy, BOUNDS),
        Step::Watching(Reading { requests: 100, .. })
    ));
    assert!(matches!(
        w.step(t0 + Duration::from_secs(60), &healthy, BOUNDS),
        Step::Passed(Reading { requests: 100, .. })
    ));
    let few = traffic(1010, 500, 0);
    assert!(matches!(
        w.step(t0 + Duration::from_secs(1), &few, BOUNDS),
        Step::Watching(_)
    ));
    assert!(matches!(
        w.step(t0 + Duration::from_secs(61), &few, BOUNDS),
        Step::Inconclusive(Reading { requests: 10, .. })
    ));
    let failing = traffic(1100, 550, 0);
    match w.step(t0 + Duration::from_secs(60), &failing, BOUNDS) {
        Step::Breach { reason, reading } => {
            assert!(reason.contains("0.500"), "{reason}");
            assert_eq!(reading.requests, 100);
            assert_eq!(reading.ratio_5xx, 0.5);
        }
        other => panic!("expected a breach, got {other:?}"),
    }
}
