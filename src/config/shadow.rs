//! `[models.shadow]`: mirror a sample of live requests to the standby pool
//! and compare its answers with the live ones. The raw shape, the defaults
//! and the checks.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Checker;
use crate::compare::{check_pointer, Tolerance};

/// Requests (and answers) larger than this are not mirrored by default.
pub const DEFAULT_SHADOW_MAX_BODY: u64 = 64 * 1024;
/// Mirrored requests in flight at most, by default; more are not mirrored.
pub const DEFAULT_SHADOW_MAX_CONCURRENT: usize = 64;
/// The most `max_body` may be: every mirror holds up to three such copies.
const MAX_SHADOW_BODY: u64 = 16 * 1024 * 1024;

/// Shadow traffic of one model, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowConfig {
    /// Share of live requests mirrored, in percent: more than 0, at most 100.
    pub percent: f64,
    /// Request and response bodies are copied up to this many bytes; a
    /// larger one is not mirrored (or not compared).
    pub max_body: usize,
    /// Mirrors in flight at most; a request sampled beyond it is not mirrored.
    pub max_concurrent: usize,
    /// How long the standby has for a mirrored request, body included.
    pub timeout: Duration,
    /// How answers are compared.
    pub tolerance: Tolerance,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShadow {
    percent: Spanned<f64>,
    #[serde(default)]
    max_body: Option<Spanned<u64>>,
    #[serde(default)]
    max_concurrent: Option<Spanned<usize>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    tolerance: Option<Spanned<f64>>,
    #[serde(default)]
    ignore: Vec<Spanned<String>>,
}

/// Checks `[models.shadow]`; `key` is the model's (`models[0]`), and
/// `request_timeout` the model's, the default `timeout`.
pub(super) fn validate(
    c: &mut Checker<'_>,
    key: &str,
    raw: &RawShadow,
    request_timeout: Duration,
) -> ShadowConfig {
    let percent = *raw.percent.get_ref();
    if !(percent > 0.0 && percent <= 100.0) {
        c.error(
            raw.percent.span(),
            format!("{key}.shadow.percent: {percent} is out of range; expected more than 0 and at most 100 (remove [models.shadow] to mirror nothing)"),
        );
    }
    let max_body = c.count(
        &format!("{key}.shadow.max_body"),
        raw.max_body.as_ref(),
        DEFAULT_SHADOW_MAX_BODY,
        1..=MAX_SHADOW_BODY,
    );
    let max_concurrent = c.count(
        &format!("{key}.shadow.max_concurrent"),
        raw.max_concurrent.as_ref(),
        DEFAULT_SHADOW_MAX_CONCURRENT,
        1..=100_000,
    );
    let timeout = c.duration(
        &format!("{key}.shadow.timeout"),
        raw.timeout.as_ref(),
        request_timeout,
    );
    let relative = raw.tolerance.as_ref().map_or(0.0, |t| {
        let value = *t.get_ref();
        if !(0.0..=1.0).contains(&value) {
            c.error(
                t.span(),
                format!("{key}.shadow.tolerance: {value} is out of range; expected a relative tolerance from 0 to 1, such as 0.01 for 1%"),
            );
        }
        value
    });
    let mut ignore = Vec::with_capacity(raw.ignore.len());
    for pointer in &raw.ignore {
        match check_pointer(pointer.get_ref()) {
            Ok(()) => ignore.push(pointer.get_ref().clone()),
            Err(why) => c.error(pointer.span(), format!("{key}.shadow.ignore: {why}")),
        }
    }
    ShadowConfig {
        percent,
        max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
        max_concurrent,
        timeout,
        tolerance: Tolerance { relative, ignore },
    }
}
