//! `[models.rollout]` and `sticky`: the steps, the limits, and the header
//! or cookie a user sticks by, each checked with the line to blame.

use super::*;

fn rollout(lines: &str) -> String {
    format!(
        "{HEAD}\n[[models]]\nname = \"iris\"\nblue.endpoints = [\"http://127.0.0.1:8001\"]\ngreen.endpoints = [\"http://127.0.0.1:8002\"]\n\n[models.rollout]\n{lines}\n"
    )
}

#[test]
fn no_rollout_table_means_no_rollout_and_no_sticky() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!((&c.models[0].rollout, &c.models[0].sticky), (&None, &None));
}

#[test]
fn every_rollout_key_is_read() {
    let src = rollout(
        "steps = [\"0.5%:30s\", \"25%:1m\", \"100%:2m\"]\ninterval = \"500ms\"\nmin_requests = 50\n\
         max_extension = \"10m\"\nmax_5xx_ratio = 0.01\nmax_5xx_ratio_increase = 0.005\nmax_p99 = \"800ms\"\n\
         max_p99_ratio = 1.5\nmax_first_byte_p99 = \"300ms\"\nmax_event_gap_p99 = \"80ms\"",
    );
    let c = parse(&src).unwrap_or_else(|e| panic!("{e:#?}"));
    let step = |permille, secs| StepConfig {
        permille,
        duration: Some(Duration::from_secs(secs)),
    };
    assert_eq!(
        c.models[0].rollout,
        Some(RolloutConfig {
            steps: vec![step(5, 30), step(250, 60), step(1000, 120)],
            interval: Duration::from_millis(500),
            min_requests: 50,
            max_extension: Duration::from_secs(600),
            max_5xx_ratio: Some(0.01),
            max_5xx_ratio_increase: Some(0.005),
            max_p99: Some(Duration::from_millis(800)),
            max_p99_ratio: Some(1.5),
            max_first_byte_p99: Some(Duration::from_millis(300)),
            max_event_gap_p99: Some(Duration::from_millis(80)),
        })
    );
}

#[test]
fn omitted_rollout_keys_take_their_defaults() {
    let c = parse(&rollout(
        "steps = [\"10%:30s\", \"100%\"]\nmax_5xx_ratio = 0.01",
    ))
    .unwrap();
    let r = c.models[0].rollout.clone().unwrap();
    assert_eq!(r.interval, DEFAULT_ROLLOUT_INTERVAL);
    assert_eq!(r.min_requests, DEFAULT_ROLLOUT_MIN_REQUESTS);
    assert_eq!(r.max_extension, DEFAULT_MAX_EXTENSION);
    assert_eq!(
        r.steps[1],
        StepConfig {
            permille: 1000,
            duration: None
        }
    );
}

#[test]
fn bad_steps_are_blamed_on_their_line_with_their_index() {
    for (steps, says) in [
        (
            "[\"10:30s\", \"100%\"]",
            &[
                "models[0].rollout.steps[0]",
                "invalid step \"10:30s\"",
                "\"25%:60s\"",
            ][..],
        ),
        (
            "[\"10%:soon\", \"100%\"]",
            &["models[0].rollout.steps[0]", "invalid duration"],
        ),
        (
            "[\"10%\", \"100%\"]",
            &["models[0].rollout.steps[0]", "no duration"],
        ),
        (
            "[\"50%:1m\", \"25%:1m\", \"100%\"]",
            &["steps[1]", "25% is not above the step before (50%)"],
        ),
        (
            "[\"10%:1m\", \"90%:1m\"]",
            &["steps[1]", "the last step is 90%", "\"100%\""],
        ),
        ("[\"2.55%:1m\", \"100%\"]", &["steps[0]", "invalid step"]),
        ("[\"101%:1m\", \"100%\"]", &["steps[0]", "invalid step"]),
        ("[\"0%:1m\", \"100%\"]", &["steps[0]", "sends nothing"]),
        (
            "[\"100%\"]",
            &["models[0].rollout.steps", "1 step(s)", "flip"],
        ),
    ] {
        let src = rollout(&format!("steps = {steps}\nmax_5xx_ratio = 0.01"));
        assert_blames(&src, "steps =", says);
    }
}

#[test]
fn a_rollout_needs_a_limit_and_limits_in_range() {
    assert_blames(
        &rollout("steps = [\"10%:30s\", \"100%\"]"),
        "steps =",
        &["models[0].rollout", "sets no limit", "max_first_byte_p99"],
    );
    assert_blames(
        &rollout("steps = [\"10%:30s\", \"100%\"]\nmax_5xx_ratio = 2"),
        "max_5xx_ratio",
        &["models[0].rollout.max_5xx_ratio", "out of range"],
    );
    assert_blames(
        &rollout("steps = [\"10%:30s\", \"100%\"]\nmax_first_byte_p99 = \"0s\""),
        "max_first_byte_p99",
        &["models[0].rollout.max_first_byte_p99", "longer than zero"],
    );
    assert_blames(
        &rollout("steps = [\"10%:30s\", \"100%\"]\nmax_p99 = \"1s\"\nmin_requests = 0"),
        "min_requests",
        &["models[0].rollout.min_requests", "out of range"],
    );
    let e = one_error(&rollout(
        "steps = [\"10%:30s\", \"100%\"]\nmax_p99 = \"1s\"\nwindow = \"1m\"",
    ));
    assert!(e.message.contains("unknown field `window`"), "{e}");
}

#[test]
fn sticky_takes_a_header_or_a_cookie() {
    let c = parse(&model_with("sticky = { header = \"X-User-Id\" }")).unwrap();
    assert_eq!(
        c.models[0].sticky,
        Some(Sticky::Header(http::HeaderName::from_static("x-user-id")))
    );
    let c = parse(&model_with("sticky = { cookie = \"session\" }")).unwrap();
    assert_eq!(c.models[0].sticky, Some(Sticky::Cookie("session".into())));
    assert_blames(
        &model_with("sticky = { header = \"x user\" }"),
        "sticky",
        &["models[0].sticky.header", "not a header name"],
    );
    assert_blames(
        &model_with("sticky = { cookie = \"a;b\" }"),
        "sticky",
        &["models[0].sticky.cookie", "not a cookie name"],
    );
    assert_blames(
        &model_with("sticky = { header = \"x-user-id\", cookie = \"s\" }"),
        "sticky",
        &["models[0].sticky", "not both"],
    );
    assert_blames(
        &model_with("sticky = {}"),
        "sticky",
        &["models[0].sticky", "names nothing"],
    );
}
