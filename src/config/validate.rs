//! `[[models.validate]]`: the requests a pool must answer correctly before a
//! switch makes it active. The raw shape, the defaults, and the checks that
//! refuse a check which could never run or never fail as written (a bad
//! method or pointer, `body` and `body_file` together, a key with no effect).
//! A `body_file` is read here, so `switchyard check` names a missing one.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::{resolve_relative, Checker};
use crate::compare::{check_pointer, Tolerance};

/// How long one check may take on one endpoint (request and answer) unless
/// it sets `timeout`: longer than any sane health probe, far shorter than an
/// inference's `request_timeout`, since a check is a small, known request.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// A `body_file` larger than this is refused: a check is a sample request,
/// not a load test.
pub const MAX_CHECK_BODY_BYTES: u64 = 16 << 20;
/// Methods a check may use: the ones model APIs serve. CONNECT and TRACE
/// make no sense against a model server.
const METHODS: [Method; 7] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
];
/// Headers a check may not set: switchyard frames the request itself.
const FRAMING_HEADERS: [&str; 6] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
];

/// One validation check of a model, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckConfig {
    /// `name`, or `"METHOD path"`; unique within the model.
    pub name: String,
    pub method: Method,
    pub path: PathAndQuery,
    /// `body`, or the contents of `body_file`; empty when neither is set.
    pub body: Bytes,
    /// Sent as given; `content-type: application/json` is added to a check
    /// with a body that does not set a content type.
    pub headers: HeaderMap,
    /// The status the answer must have.
    pub status: StatusCode,
    /// JSON pointer and the value the answer must have there, in pointer order.
    pub expect: Vec<(String, Value)>,
    /// Whether the whole answer must equal the active pool's (within
    /// `tolerance`, skipping `tolerance.ignore`).
    pub same_as_active: bool,
    /// Numbers in `expect` and `same_as_active` agree within
    /// `tolerance.relative`; `tolerance.ignore` applies to `same_as_active`.
    pub tolerance: Tolerance,
    /// For the request and the whole answer, per endpoint.
    pub timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    #[serde(default)]
    name: Option<Spanned<String>>,
    #[serde(default)]
    method: Option<Spanned<String>>,
    path: Spanned<String>,
    #[serde(default)]
    body: Option<Spanned<String>>,
    #[serde(default)]
    body_file: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    status: Option<Spanned<i64>>,
    #[serde(default)]
    expect: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    same_as_active: bool,
    #[serde(default)]
    tolerance: Option<Spanned<f64>>,
    #[serde(default)]
    ignore: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
}

/// Checks the `[[models.validate]]` tables of the model at `model_key`
/// (`models[0]`). `before_switch` is the model's `validate_before_switch`,
/// which needs at least one check.
pub(super) fn validate(
    c: &mut Checker<'_>,
    model_key: &str,
    raw: &[RawCheck],
    before_switch: Option<&Spanned<bool>>,
) -> Vec<CheckConfig> {
    if let Some(flag) = before_switch.filter(|f| *f.get_ref() && raw.is_empty()) {
        c.error(
            flag.span(),
            format!("{model_key}.validate_before_switch: the model has no [[models.validate]] checks to run; add one or remove it"),
        );
    }
    let mut names = HashSet::new();
    let mut checks = Vec::with_capacity(raw.len());
    for (j, r) in raw.iter().enumerate() {
        let key = format!("{model_key}.validate[{j}]");
        let Some(check) = validate_check(c, &key, r) else {
            continue;
        };
        if !names.insert(check.name.clone()) {
            let span = r.name.as_ref().map_or(r.path.span(), Spanned::span);
            c.error(
                span,
                format!(
                    "{key}.name: another check of this model is named {:?}; give each a distinct name",
                    check.name
                ),
            );
        }
        checks.push(check);
    }
    checks
}

fn validate_check(c: &mut Checker<'_>, key: &str, r: &RawCheck) -> Option<CheckConfig> {
    let before = c.errors.len();
    let method = match &r.method {
        None => Method::GET,
        Some(m) => {
            let upper = m.get_ref().to_ascii_uppercase();
            match METHODS.iter().find(|known| known.as_str() == upper) {
                Some(known) => known.clone(),
                None => {
                    c.error(
                        m.span(),
                        format!(
                            "{key}.method: unknown method {:?}; expected GET, POST, PUT, PATCH, DELETE, HEAD or OPTIONS",
                            m.get_ref()
                        ),
                    );
                    Method::GET
                }
            }
        }
    };

    let raw_path = r.path.get_ref();
    let path = match raw_path.parse::<PathAndQuery>() {
        Ok(p) if raw_path.starts_with('/') && !raw_path.contains('#') => Some(p),
        _ => {
            c.error(
                r.path.span(),
                format!("{key}.path: {raw_path:?} must be a path starting with \"/\", with an optional query, such as \"/v2/models/iris/infer\""),
            );
            None
        }
    };

    let body = match (&r.body, &r.body_file) {
        (Some(_), Some(file)) => {
            c.error(
                file.span(),
                format!("{key}.body_file: set body or body_file, not both"),
            );
            Bytes::new()
        }
        (Some(body), None) => Bytes::from(body.get_ref().clone()),
        (None, Some(file)) => read_body_file(c, key, file).unwrap_or_default(),
        (None, None) => Bytes::new(),
    };
    let set = (r.body.as_ref().map(|b| ("body", b)))
        .or_else(|| r.body_file.as_ref().map(|f| ("body_file", f)));
    if let Some((field, value)) = set {
        if method == Method::GET || method == Method::HEAD {
            c.error(
                value.span(),
                format!("{key}.{field}: a {method} check cannot send a body; set method = \"POST\" (or the method the model serves)"),
            );
        }
    }

    let mut headers = HeaderMap::new();
    for (name, value) in &r.headers {
        let parsed = HeaderName::from_bytes(name.get_ref().as_bytes());
        match parsed {
            Ok(n) if FRAMING_HEADERS.contains(&n.as_str()) => c.error(
                name.span(),
                format!(
                    "{key}.headers: {:?} is set by switchyard, not by a check",
                    name.get_ref()
                ),
            ),
            Ok(n) => match HeaderValue::from_str(value.get_ref()) {
                Ok(v) => {
                    headers.insert(n, v);
                }
                Err(_) => c.error(
                    value.span(),
                    format!(
                        "{key}.headers.{}: invalid header value {:?}",
                        name.get_ref(),
                        value.get_ref()
                    ),
                ),
            },
            Err(_) => c.error(
                name.span(),
                format!("{key}.headers: invalid header name {:?}", name.get_ref()),
            ),
        }
    }
    if !body.is_empty() && !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }

    let status = match &r.status {
        None => StatusCode::OK,
        Some(s) => match u16::try_from(*s.get_ref())
            .ok()
            .filter(|code| (100..=599).contains(code))
            .and_then(|code| StatusCode::from_u16(code).ok())
        {
            Some(status) => status,
            None => {
                c.error(
                    s.span(),
                    format!(
                        "{key}.status: {} is not an HTTP status; expected 100 to 599",
                        s.get_ref()
                    ),
                );
                StatusCode::OK
            }
        },
    };

    let mut expect = Vec::with_capacity(r.expect.len());
    for (pointer, value) in &r.expect {
        if let Err(why) = check_pointer(pointer.get_ref()) {
            c.error(pointer.span(), format!("{key}.expect: {why}"));
            continue;
        }
        match json_value(value.get_ref()) {
            Ok(v) => expect.push((pointer.get_ref().clone(), v)),
            Err(why) => c.error(
                value.span(),
                format!("{key}.expect.{:?}: {why}", pointer.get_ref()),
            ),
        }
    }

    let relative = match &r.tolerance {
        None => 0.0,
        Some(t) if t.get_ref().is_finite() && (0.0..=1.0).contains(t.get_ref()) => *t.get_ref(),
        Some(t) => {
            c.error(
                t.span(),
                format!(
                    "{key}.tolerance: {} is out of range; expected a relative tolerance from 0 to 1, such as 0.01 for 1%",
                    t.get_ref()
                ),
            );
            0.0
        }
    };
    if let Some(t) = &r.tolerance {
        if !r.same_as_active && r.expect.is_empty() {
            c.error(
                t.span(),
                format!("{key}.tolerance: has no effect without expect or same_as_active = true"),
            );
        }
    }
    let mut ignore = Vec::new();
    if let Some(list) = &r.ignore {
        if !r.same_as_active {
            c.error(
                list.span(),
                format!("{key}.ignore: has no effect without same_as_active = true"),
            );
        }
        for p in list.get_ref() {
            match check_pointer(p.get_ref()) {
                Ok(()) => ignore.push(p.get_ref().clone()),
                Err(why) => c.error(p.span(), format!("{key}.ignore: {why}")),
            }
        }
    }

    let timeout = c.duration(
        &format!("{key}.timeout"),
        r.timeout.as_ref(),
        DEFAULT_CHECK_TIMEOUT,
    );

    let name = match &r.name {
        Some(n) if n.get_ref().trim().is_empty() || n.get_ref().len() > 128 => {
            c.error(n.span(), format!("{key}.name: must be 1 to 128 characters"));
            String::new()
        }
        Some(n) => n.get_ref().clone(),
        None => format!("{method} {raw_path}"),
    };

    (c.errors.len() == before).then(|| CheckConfig {
        name,
        method,
        path: path.unwrap_or_else(|| PathAndQuery::from_static("/")),
        body,
        headers,
        status,
        expect,
        same_as_active: r.same_as_active,
        tolerance: Tolerance { relative, ignore },
        timeout,
    })
}

/// Reads a `body_file`, relative to the config file's directory.
fn read_body_file(c: &mut Checker<'_>, key: &str, file: &Spanned<String>) -> Option<Bytes> {
    let path = resolve_relative(c.blame.file, Path::new(file.get_ref()));
    let read = std::fs::metadata(&path).and_then(|m| {
        if m.len() > MAX_CHECK_BODY_BYTES {
            Ok(None)
        } else {
            std::fs::read(&path).map(Some)
        }
    });
    match read {
        Ok(Some(bytes)) => Some(Bytes::from(bytes)),
        Ok(None) => {
            c.error(
                file.span(),
                format!(
                    "{key}.body_file: {} is larger than {} MiB; a check sends a sample request",
                    path.display(),
                    MAX_CHECK_BODY_BYTES >> 20
                ),
            );
            None
        }
        Err(e) => {
            c.error(
                file.span(),
                format!("{key}.body_file: cannot read {}: {e}", path.display()),
            );
            None
        }
    }
}

/// A TOML value as the JSON value an answer is compared with.
fn json_value(v: &toml::Value) -> Result<Value, String> {
    match v {
        toml::Value::String(s) => Ok(Value::String(s.clone())),
        toml::Value::Integer(i) => Ok(Value::from(*i)),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| format!("{f} has no JSON form; use a finite number")),
        toml::Value::Boolean(b) => Ok(Value::Bool(*b)),
        toml::Value::Datetime(d) => Err(format!(
            "the date-time {d} has no JSON form; quote it to expect a string"
        )),
        toml::Value::Array(items) => items.iter().map(json_value).collect(),
        toml::Value::Table(t) => t
            .iter()
            .map(|(k, v)| Ok((k.clone(), json_value(v)?)))
            .collect::<Result<serde_json::Map<_, _>, String>>()
            .map(Value::Object),
    }
}
