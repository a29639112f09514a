//! `[models.shadow]`: the sample, the limits and the comparison settings,
//! each checked with the line to blame.

use super::*;
use crate::compare::Tolerance;

fn shadow(lines: &str) -> String {
    format!(
        "{HEAD}\n[[models]]\nname = \"iris\"\nrequest_timeout = \"7s\"\nblue.endpoints = [\"http://127.0.0.1:8001\"]\ngreen.endpoints = [\"http://127.0.0.1:8002\"]\n\n[models.shadow]\n{lines}\n"
    )
}

#[test]
fn no_shadow_table_means_no_mirroring() {
    assert_eq!(parse(MINIMAL).unwrap().models[0].shadow, None);
}

#[test]
fn every_shadow_key_is_read() {
    let src = shadow(
        "percent = 12.5\nmax_body = 4096\nmax_concurrent = 8\ntimeout = \"2s\"\ntolerance = 0.01\nignore = [\"/id\", \"/model_version\"]",
    );
    let c = parse(&src).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(
        c.models[0].shadow,
        Some(ShadowConfig {
            percent: 12.5,
            max_body: 4096,
            max_concurrent: 8,
            timeout: Duration::from_secs(2),
            tolerance: Tolerance {
                relative: 0.01,
                ignore: vec!["/id".into(), "/model_version".into()],
            },
        })
    );
}

#[test]
fn omitted_shadow_keys_take_their_defaults() {
    let s = parse(&shadow("percent = 10")).unwrap().models[0]
        .shadow
        .clone()
        .unwrap();
    assert_eq!(s.percent, 10.0, "an integer is a percentage too");
    assert_eq!(s.max_body, 64 * 1024);
    assert_eq!(s.max_concurrent, 64);
    assert_eq!(
        s.timeout,
        Duration::from_secs(7),
        "the model's request_timeout"
    );
    assert_eq!(s.tolerance, Tolerance::default());
}

#[test]
fn bad_shadow_settings_are_blamed_on_their_line() {
    assert_blames(
        &shadow("percent = 0"),
        "percent",
        &["shadow.percent", "more than 0"],
    );
    assert_blames(&shadow("percent = 101"), "percent", &["shadow.percent"]);
    assert_blames(
        &shadow("percent = 5\nmax_body = 0"),
        "max_body",
        &["shadow.max_body", "out of range"],
    );
    assert_blames(
        &shadow("percent = 5\nmax_concurrent = 0"),
        "max_concurrent",
        &["shadow.max_concurrent"],
    );
    assert_blames(
        &shadow("percent = 5\ntolerance = 2"),
        "tolerance",
        &["shadow.tolerance", "0 to 1"],
    );
    assert_blames(
        &shadow("percent = 5\ntimeout = \"soon\""),
        "\"soon\"",
        &["shadow.timeout"],
    );
    assert_blames(
        &shadow("percent = 5\nignore = [\"id\"]"),
        "ignore",
        &["shadow.ignore", "JSON pointer"],
    );
    assert_blames(
        &shadow("percent = 5\nsample = 3"),
        "sample",
        &["unknown field"],
    );
    let e = one_error(&shadow("max_body = 10"));
    assert!(e.message.contains("percent"), "{e}");
}
