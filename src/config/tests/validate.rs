//! `[[models.validate]]` and `validate_before_switch`: the checks a pool
//! must pass before a switch, as read and as refused.

use super::*;

use http::{Method, StatusCode};
use serde_json::json;

/// A model with `model_lines` (keys of the model itself) and then `checks`
/// (`[[models.validate]]` tables, which must come last).
fn with_checks(model_lines: &str, checks: &str) -> String {
    format!(
        "{HEAD}\n[[models]]\nname = \"iris\"\nblue.endpoints = [\"http://127.0.0.1:8001\"]\ngreen.endpoints = [\"http://127.0.0.1:8002\"]\n{model_lines}\n{checks}"
    )
}

fn checks(src: &str) -> Vec<CheckConfig> {
    parse(src)
        .unwrap_or_else(|e| panic!("{e:#?}\n{src}"))
        .models
        .remove(0)
        .validate
}

#[test]
fn a_check_is_read_with_every_key() {
    let src = with_checks(
        "validate_before_switch = true",
        r#"
[[models.validate]]
name = "predict"
method = "post"
path = "/v2/models/iris/infer?x=1"
body = '{"inputs": []}'
headers = { "x-tenant" = "ci" }
status = 201
expect = { "/outputs/0/name" = "predict", "/outputs/0/data" = [1, 2.5], "/ok" = true }
same_as_active = true
tolerance = 0.01
ignore = ["/id", "/model_version"]
timeout = "2s"
"#,
    );
    let c = parse(&src).unwrap_or_else(|e| panic!("{e:#?}"));
    let m = &c.models[0];
    assert!(m.validate_before_switch);
    let check = &m.validate[0];
    assert_eq!(check.name, "predict");
    assert_eq!(check.method, Method::POST);
    assert_eq!(check.path.as_str(), "/v2/models/iris/infer?x=1");
    assert_eq!(&check.body[..], br#"{"inputs": []}"#);
    assert_eq!(check.headers["x-tenant"], "ci");
    // A body without a content type is sent as JSON.
    assert_eq!(check.headers["content-type"], "application/json");
    assert_eq!(check.status, StatusCode::CREATED);
    assert_eq!(
        check.expect,
        vec![
            ("/ok".to_string(), json!(true)),
            ("/outputs/0/data".to_string(), json!([1, 2.5])),
            ("/outputs/0/name".to_string(), json!("predict")),
        ]
    );
    assert!(check.same_as_active);
    assert_eq!(check.tolerance.relative, 0.01);
    assert_eq!(check.tolerance.ignore, ["/id", "/model_version"]);
    assert_eq!(check.timeout, Duration::from_secs(2));
}

#[test]
fn a_check_has_documented_defaults() {
    let c = checks(&with_checks(
        "",
        "[[models.validate]]\npath = \"/v2/models/iris/ready\"\n",
    ));
    let check = &c[0];
    assert_eq!(check.name, "GET /v2/models/iris/ready");
    assert_eq!(check.method, Method::GET);
    assert!(check.body.is_empty());
    assert!(check.headers.is_empty());
    assert_eq!(check.status, StatusCode::OK);
    assert!(check.expect.is_empty());
    assert!(!check.same_as_active);
    assert_eq!(check.tolerance, crate::compare::Tolerance::default());
    assert_eq!(check.timeout, DEFAULT_CHECK_TIMEOUT);
    // No checks, no validation before a switch.
    let m = &parse(MINIMAL).unwrap().models[0];
    assert!(m.validate.is_empty());
    assert!(!m.validate_before_switch);
}

#[test]
fn a_body_file_is_read_relative_to_the_config_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("checks")).unwrap();
    std::fs::write(dir.path().join("checks/iris.json"), b"{\"inputs\":[1]}").unwrap();
    let src = with_checks(
        "",
        "[[models.validate]]\nmethod = \"POST\"\npath = \"/infer\"\nbody_file = \"checks/iris.json\"\n",
    );
    let file = dir.path().join("switchyard.toml");
    let c = Config::from_toml(&src, &file).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(&c.models[0].validate[0].body[..], b"{\"inputs\":[1]}");

    // A missing one is named, with the line of the key, by `check`.
    let missing = src.replace("checks/iris.json", "checks/gone.json");
    let errors = Config::from_toml(&missing, &file).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].line, line_of(&missing, "body_file"));
    assert!(
        errors[0]
            .message
            .contains("models[0].validate[0].body_file")
            && errors[0].message.contains("gone.json"),
        "{}",
        errors[0]
    );
}

#[test]
fn mistakes_in_a_check_are_refused_by_key_and_line() {
    let case = |check: &str, blame: &str, says: &[&str]| {
        let src = with_checks("", &format!("[[models.validate]]\n{check}\n"));
        assert_blames(&src, blame, says);
    };
    case(
        "method = \"PSOT\"\npath = \"/infer\"",
        "PSOT",
        &[
            "models[0].validate[0].method",
            "unknown method \"PSOT\"",
            "POST",
        ],
    );
    case(
        "path = \"infer\"",
        "infer",
        &[
            "models[0].validate[0].path",
            "must be a path starting with \"/\"",
        ],
    );
    case(
        "method = \"POST\"\npath = \"/infer\"\nbody = \"{}\"\nbody_file = \"x.json\"",
        "body_file",
        &["models[0].validate[0].body_file", "not both"],
    );
    case(
        "path = \"/infer\"\nbody = \"{}\"",
        "body =",
        &["models[0].validate[0].body", "GET check cannot send a body"],
    );
    case(
        "path = \"/infer\"\nexpect = { \"outputs/0\" = 1 }",
        "expect",
        &["models[0].validate[0].expect", "not a JSON pointer"],
    );
    case(
        "path = \"/infer\"\nsame_as_active = true\nignore = [\"/a~2\"]",
        "ignore",
        &["models[0].validate[0].ignore", "not a JSON pointer"],
    );
    case(
        "path = \"/infer\"\nignore = [\"/id\"]",
        "ignore",
        &[
            "models[0].validate[0].ignore",
            "no effect without same_as_active",
        ],
    );
    case(
        "path = \"/infer\"\ntolerance = 0.1",
        "tolerance",
        &["models[0].validate[0].tolerance", "no effect"],
    );
    case(
        "path = \"/infer\"\nsame_as_active = true\ntolerance = 2",
        "tolerance",
        &["models[0].validate[0].tolerance", "out of range"],
    );
    case(
        "path = \"/infer\"\nstatus = 999",
        "status",
        &["models[0].validate[0].status", "expected 100 to 599"],
    );
    case(
        "path = \"/infer\"\ntimeout = \"soon\"",
        "timeout",
        &["models[0].validate[0].timeout", "invalid duration"],
    );
    case(
        "path = \"/infer\"\nheaders = { \"content-length\" = \"3\" }",
        "headers",
        &["models[0].validate[0].headers", "set by switchyard"],
    );
    case(
        "path = \"/infer\"\nexpect = { \"/at\" = 1979-05-27T07:32:00Z }",
        "expect",
        &["models[0].validate[0].expect", "no JSON form"],
    );
}

#[test]
fn check_names_are_unique_within_a_model() {
    let src = with_checks(
        "",
        "[[models.validate]]\npath = \"/ready\"\n\n[[models.validate]]\nname = \"GET /ready\"\npath = \"/v2/ready\"\n",
    );
    assert_blames(
        &src,
        "name = \"GET /ready\"",
        &["models[0].validate[1].name", "distinct name"],
    );
}

#[test]
fn validate_before_switch_needs_a_check() {
    let src = with_checks("validate_before_switch = true", "");
    assert_blames(
        &src,
        "validate_before_switch",
        &[
            "models[0].validate_before_switch",
            "no [[models.validate]] checks",
        ],
    );
}

#[test]
fn an_unknown_key_in_a_check_is_refused() {
    let src = with_checks("", "[[models.validate]]\npath = \"/ready\"\nexpected = 1\n");
    let e = one_error(&src);
    assert_eq!(e.line, line_of(&src, "expected = 1"));
    assert!(e.message.contains("expected"), "{e}");
}

#[test]
fn a_change_in_checks_alone_changes_the_model_but_not_its_pools() {
    let a = &parse(&with_checks("", "[[models.validate]]\npath = \"/ready\"\n"))
        .unwrap()
        .models[0];
    let b = &parse(&with_checks(
        "",
        "[[models.validate]]\npath = \"/ready\"\nstatus = 204\n",
    ))
    .unwrap()
    .models[0];
    assert!(a.same_as(a));
    assert!(!a.same_as(b), "a changed check must be applied by a reload");
    // The pools are the same, so a reload keeps them (`Model::rebuild`).
    assert!(a.blue.same_as(&b.blue) && a.green.same_as(&b.green));
    let c = &parse(&with_checks(
        "validate_before_switch = true",
        "[[models.validate]]\npath = \"/ready\"\n",
    ))
    .unwrap()
    .models[0];
    assert!(!a.same_as(c));
}
