//! `[models.watch]`: the window, the interval, and the limits that roll a
//! switch back, each checked with the line to blame.

use super::*;

fn watch(lines: &str) -> String {
    format!(
        "{HEAD}\n[[models]]\nname = \"iris\"\nblue.endpoints = [\"http://127.0.0.1:8001\"]\ngreen.endpoints = [\"http://127.0.0.1:8002\"]\n\n[models.watch]\n{lines}\n"
    )
}

#[test]
fn no_watch_table_means_no_watch() {
    assert_eq!(parse(MINIMAL).unwrap().models[0].watch, None);
}

#[test]
fn every_watch_key_is_read() {
    let src = watch(
        "window = \"60s\"\ninterval = \"500ms\"\nmin_requests = 50\nmax_5xx_ratio = 0.05\n\
         max_5xx_ratio_increase = 0.02\nmax_p99 = \"750ms\"\nmax_p99_ratio = 1.5",
    );
    let c = parse(&src).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(
        c.models[0].watch,
        Some(WatchConfig {
            window: Duration::from_secs(60),
            interval: Duration::from_millis(500),
            min_requests: 50,
            max_5xx_ratio: Some(0.05),
            max_5xx_ratio_increase: Some(0.02),
            max_p99: Some(Duration::from_millis(750)),
            max_p99_ratio: Some(1.5),
        })
    );
}

#[test]
fn omitted_watch_keys_take_their_defaults() {
    let c = parse(&watch("window = \"30s\"\nmax_5xx_ratio = 1")).unwrap();
    let w = c.models[0].watch.clone().unwrap();
    assert_eq!(w.interval, DEFAULT_WATCH_INTERVAL);
    assert_eq!(w.interval, Duration::from_secs(1));
    assert_eq!(w.min_requests, DEFAULT_MIN_REQUESTS);
    assert_eq!(w.min_requests, 20);
    assert_eq!(w.max_5xx_ratio, Some(1.0), "an integer is a ratio too");
    assert_eq!(
        (w.max_5xx_ratio_increase, w.max_p99, w.max_p99_ratio),
        (None, None, None)
    );
}

#[test]
fn a_watch_without_a_window_or_a_limit_is_refused() {
    let src = watch("max_5xx_ratio = 0.1");
    let e = one_error(&src);
    assert!(e.message.contains("window"), "{e}");
    assert_blames(
        &watch("window = \"10s\""),
        "window",
        &["models[0].watch", "sets no limit", "max_5xx_ratio"],
    );
}

#[test]
fn bad_watch_durations_are_blamed_on_their_line() {
    let src = watch("window = \"soon\"\nmax_5xx_ratio = 0.1");
    assert_blames(
        &src,
        "window",
        &["models[0].watch.window", "invalid duration"],
    );
    let src = watch("window = \"0s\"\nmax_5xx_ratio = 0.1");
    assert_blames(
        &src,
        "window",
        &["models[0].watch.window", "longer than zero"],
    );
    let src = watch("window = \"10s\"\nmax_p99 = \"0ms\"");
    assert_blames(
        &src,
        "max_p99",
        &["models[0].watch.max_p99", "longer than zero"],
    );
    let src = watch("window = \"10s\"\nmax_p99 = \"fast\"");
    assert_blames(
        &src,
        "max_p99",
        &["models[0].watch.max_p99", "invalid duration"],
    );
}

#[test]
fn an_interval_longer_than_the_window_or_too_fine_is_refused() {
    let src = watch("window = \"10s\"\ninterval = \"20s\"\nmax_5xx_ratio = 0.1");
    assert_blames(
        &src,
        "interval",
        &["models[0].watch.interval", "longer than the window"],
    );
    let src = watch("window = \"24h\"\ninterval = \"1s\"\nmax_5xx_ratio = 0.1");
    assert_blames(
        &src,
        "interval",
        &[
            "models[0].watch.interval",
            "10000 evaluations",
            "raise the interval",
        ],
    );
}

#[test]
fn watch_limits_out_of_range_are_blamed_on_their_line() {
    for (line, says) in [
        ("max_5xx_ratio = 1.5", "0 to 1"),
        ("max_5xx_ratio = -0.1", "0 to 1"),
        ("max_5xx_ratio_increase = 2", "0 to 1"),
        ("max_p99_ratio = 0.5", "from 1 to 1000"),
        ("max_p99_ratio = nan", "from 1 to 1000"),
        ("min_requests = 0", "1 to"),
    ] {
        let key = line.split(' ').next().unwrap();
        let src = watch(&format!("window = \"10s\"\nmax_p99 = \"1s\"\n{line}"));
        assert_blames(&src, line, &[&format!("models[0].watch.{key}"), says]);
    }
}

#[test]
fn an_unknown_watch_key_is_blamed_on_its_line() {
    let src = watch("window = \"10s\"\nmax_5xx = 0.1");
    assert_blames(&src, "max_5xx", &["max_5xx"]);
}

#[test]
fn a_changed_watch_is_a_changed_model() {
    let a = parse(&watch("window = \"10s\"\nmax_5xx_ratio = 0.1")).unwrap();
    let b = parse(&watch("window = \"10s\"\nmax_5xx_ratio = 0.2")).unwrap();
    assert!(a.models[0].same_as(&a.models[0]));
    assert!(!a.models[0].same_as(&b.models[0]));
    assert!(!a.models[0].same_as(&parse(MINIMAL).unwrap().models[0]));
}
