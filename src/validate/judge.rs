//! The verdict on one answer to one check: sans-io, so every rule is a unit
//! test. Each failure says what was expected and what came back, with long
//! bodies and values cut short.

use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;

use crate::compare::Tolerance;
use crate::config::CheckConfig;
use crate::pool::PoolName;

/// Bodies quoted in a failure are cut to this many bytes.
const SNIPPET_BYTES: usize = 200;
/// JSON values quoted in a failure are cut to this many bytes.
const VALUE_BYTES: usize = 100;

/// An answer read whole (up to the cap).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Why no whole answer came: no connection, no answer in time, a body too
/// large or broken off. `status` is set when the head had arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct NoAnswer {
    pub status: Option<StatusCode>,
    pub reason: String,
}

/// What one request of a check got.
pub type Fetched = Result<Answer, NoAnswer>;

/// The failures of `answer` from `pool` against `check`; none means it
/// passed. `reference` is the active pool and its answer to the same
/// request, when `same_as_active` applies.
pub fn judge(
    check: &CheckConfig,
    pool: PoolName,
    answer: &Answer,
    reference: Option<(PoolName, &Fetched)>,
) -> Vec<String> {
    let mut failures = Vec::new();
    if answer.status != check.status {
        failures.push(format!(
            "status {}, expected {}; body: {}",
            answer.status.as_u16(),
            check.status.as_u16(),
            snippet(&answer.body)
        ));
    }
    let json = (!check.expect.is_empty() || reference.is_some())
        .then(|| serde_json::from_slice::<Value>(&answer.body).ok())
        .flatten();
    if !check.expect.is_empty() {
        match &json {
            Some(v) => expect(check, v, &mut failures),
            None => failures.push(format!(
                "the answer is not JSON, so expect cannot be checked; body: {}",
                snippet(&answer.body)
            )),
        }
    }
    if let Some((active, reference)) = reference {
        if let Some(failure) = compare(check, pool, answer, json.as_ref(), active, reference) {
            failures.push(failure);
        }
    }
    failures
}

/// `expect`: the value at each pointer, numbers within the tolerance.
fn expect(check: &CheckConfig, answer: &Value, failures: &mut Vec<String>) {
    // `ignore` is for `same_as_active`; an expected value is always checked.
    let tolerance = Tolerance {
        relative: check.tolerance.relative,
        ignore: Vec::new(),
    };
    for (pointer, wanted) in &check.expect {
        let Some(got) = answer.pointer(pointer) else {
            failures.push(format!(
                "{}: expected {}, got nothing",
                at(pointer),
                show(Some(wanted))
            ));
            continue;
        };
        if let Err(d) = tolerance.compare(wanted, got) {
            failures.push(format!(
                "{}: expected {}, got {}",
                at(&format!("{pointer}{}", d.pointer)),
                show(wanted.pointer(&d.pointer)),
                show(got.pointer(&d.pointer))
            ));
        }
    }
}

/// `same_as_active`: the whole answer against the active pool's. JSON
/// answers are compared with the check's tolerance and ignored pointers;
/// anything else byte for byte.
fn compare(
    check: &CheckConfig,
    pool: PoolName,
    answer: &Answer,
    json: Option<&Value>,
    active: PoolName,
    reference: &Fetched,
) -> Option<String> {
    let reference = match reference {
        Ok(r) => r,
        Err(e) => {
            return Some(format!(
                "cannot compare with the active pool {active}: {}",
                e.reason
            ))
        }
    };
    if reference.status != answer.status {
        return Some(format!(
            "status {} differs from the active pool {active}'s {}",
            answer.status.as_u16(),
            reference.status.as_u16()
        ));
    }
    let reference_json = serde_json::from_slice::<Value>(&reference.body).ok();
    match (json, reference_json) {
        (Some(ours), Some(theirs)) => check.tolerance.compare(ours, &theirs).err().map(|d| {
            format!(
                "{}: {pool} answered {}, the active pool {active} {} (relative tolerance {})",
                at(&d.pointer),
                show(ours.pointer(&d.pointer)),
                show(theirs.pointer(&d.pointer)),
                check.tolerance.relative
            )
        }),
        _ if answer.body == reference.body => None,
        _ => Some(format!(
            "the answer differs from the active pool {active}'s (not JSON, so compared byte for byte): {pool} answered {}, {active} answered {}",
            snippet(&answer.body),
            snippet(&reference.body)
        )),
    }
}

fn at(pointer: &str) -> String {
    if pointer.is_empty() {
        "at the document".to_string()
    } else {
        format!("at {pointer}")
    }
}

/// A JSON value as quoted in a failure; `nothing` when absent.
fn show(v: Option<&Value>) -> String {
    match v {
        None => "nothing".to_string(),
        Some(v) => cut(&v.to_string(), VALUE_BYTES),
    }
}

/// A body as quoted in a failure: text, cut short, with its size when cut.
pub fn snippet(body: &[u8]) -> String {
    if body.is_empty() {
        return "(empty)".to_string();
    }
    let text = String::from_utf8_lossy(body);
    let cut_text = cut(&text, SNIPPET_BYTES);
    if cut_text.len() < text.len() {
        format!("{cut_text} ({} bytes)", body.len())
    } else {
        cut_text
    }
}

/// `s` cut to at most `max` bytes on a character boundary, `...` marking a cut.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let end = (0..=max)
        .rev()
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0);
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::uri::PathAndQuery;
    use http::{HeaderMap, Method};
    use serde_json::json;
    use std::time::Duration;

    fn check() -> CheckConfig {
        CheckConfig {
            name: "predict".to_string(),
            method: Method::POST,
            path: PathAndQuery::from_static("/v2/models/iris/infer"),
            body: Bytes::from_static(b"{}"),
            headers: HeaderMap::new(),
            status: StatusCode::OK,
            expect: Vec::new(),
            same_as_active: false,
            tolerance: Tolerance::default(),
            timeout: Duration::from_secs(1),
        }
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            body: Bytes::from(body.to_string()),
        }
    }

    const GREEN: PoolName = PoolName::Green;
    const BLUE: PoolName = PoolName::Blue;

    #[test]
    fn the_expected_status_passes_and_another_fails_with_the_body() {
        assert!(judge(&check(), GREEN, &answer(200, "ok"), None).is_empty());
        let f = judge(&check(), GREEN, &answer(500, "boom"), None);
        assert_eq!(f, ["status 500, expected 200; body: boom"]);
        let mut c = check();
        c.status = StatusCode::NOT_FOUND;
        assert!(judge(&c, GREEN, &answer(404, ""), None).is_empty());
    }

    #[test]
    fn expected_values_are_checked_at_their_pointers() {
        let mut c = check();
        c.expect = vec![
            ("/outputs/0/name".to_string(), json!("predict")),
            ("/outputs/0/data/0".to_string(), json!(1)),
            ("/missing".to_string(), json!(true)),
        ];
        let body = r#"{"outputs":[{"name":"predict","data":[2]}]}"#;
        let f = judge(&c, GREEN, &answer(200, body), None);
        assert_eq!(
            f,
            [
                "at /outputs/0/data/0: expected 1, got 2",
                "at /missing: expected true, got nothing",
            ]
        );
        // Within the tolerance, numbers agree.
        c.expect = vec![("/x".to_string(), json!(1.0))];
        c.tolerance.relative = 0.05;
        assert!(judge(&c, GREEN, &answer(200, r#"{"x":1.04}"#), None).is_empty());
        assert_eq!(
            judge(&c, GREEN, &answer(200, r#"{"x":1.2}"#), None).len(),
            1
        );
        // A nested expected value names the inner difference.
        c.expect = vec![("/o".to_string(), json!({"a": [1, 2]}))];
        let f = judge(&c, GREEN, &answer(200, r#"{"o":{"a":[1,3]}}"#), None);
        assert_eq!(f, ["at /o/a/1: expected 2, got 3"]);
    }

    #[test]
    fn a_body_that_is_not_json_fails_expect() {
        let mut c = check();
        c.expect = vec![("/x".to_string(), json!(1))];
        let f = judge(&c, GREEN, &answer(200, "<html>"), None);
        assert_eq!(f.len(), 1);
        assert!(
            f[0].contains("not JSON") && f[0].contains("<html>"),
            "{f:?}"
        );
    }

    #[test]
    fn same_as_active_compares_within_the_tolerance_skipping_ignored_fields() {
        let mut c = check();
        c.same_as_active = true;
        c.tolerance = Tolerance {
            relative: 0.01,
            ignore: vec!["/id".to_string()],
        };
        let active: Fetched = Ok(answer(200, r#"{"id":"a","p":[0.9,0.1]}"#));
        let close = answer(200, r#"{"id":"b","p":[0.905,0.1]}"#);
        assert!(judge(&c, GREEN, &close, Some((BLUE, &active))).is_empty());
        let far = answer(200, r#"{"id":"b","p":[0.3,0.1]}"#);
        let f = judge(&c, GREEN, &far, Some((BLUE, &active)));
        assert_eq!(
            f,
            ["at /p/0: green answered 0.3, the active pool blue 0.9 (relative tolerance 0.01)"]
        );
    }

    #[test]
    fn same_as_active_reports_a_status_difference_a_missing_reference_and_bytes() {
        let mut c = check();
        c.same_as_active = true;
        let active: Fetched = Ok(answer(503, "busy"));
        let f = judge(&c, GREEN, &answer(200, "{}"), Some((BLUE, &active)));
        assert_eq!(f, ["status 200 differs from the active pool blue's 503"]);

        let gone: Fetched = Err(NoAnswer {
            status: None,
            reason: "connect failed".to_string(),
        });
        let f = judge(&c, GREEN, &answer(200, "{}"), Some((BLUE, &gone)));
        assert_eq!(
            f,
            ["cannot compare with the active pool blue: connect failed"]
        );

        let text: Fetched = Ok(answer(200, "setosa"));
        assert!(judge(&c, GREEN, &answer(200, "setosa"), Some((BLUE, &text))).is_empty());
        let f = judge(&c, GREEN, &answer(200, "virginica"), Some((BLUE, &text)));
        assert!(f[0].contains("byte for byte"), "{f:?}");
        assert!(
            f[0].contains("virginica") && f[0].contains("setosa"),
            "{f:?}"
        );
    }

    #[test]
    fn long_bodies_and_values_are_cut_short() {
        let long = "é".repeat(500);
        let s = snippet(long.as_bytes());
        assert!(s.len() < 260, "{s}");
        assert!(s.ends_with("... (1000 bytes)"), "{s}");
        let mut c = check();
        c.expect = vec![("/x".to_string(), json!("short"))];
        let body = json!({ "x": "y".repeat(1000) }).to_string();
        let f = judge(&c, GREEN, &answer(200, &body), None);
        assert!(f[0].len() < 200, "{f:?}");
    }
}
