//! `[models.watch]`: how long switchyard watches a model's new pool after a
//! switch, and the limits whose breach rolls the switch back on its own.
//! The raw shape, the defaults and the checks; `watch.rs` does the watching.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{parse_duration, Checker};

/// How often a watched pool is judged, by default.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Fewer requests than this since the switch are not judged: two errors in
/// the first three requests say little about a pool.
pub const DEFAULT_MIN_REQUESTS: u64 = 20;
/// Evaluations per window at most (`window / interval`): bounds the samples
/// kept per model for the baseline.
pub const MAX_EVALUATIONS: u128 = 10_000;

/// A model's watch, checked. Present exactly when the model has a
/// `[models.watch]` table, and then with at least one limit.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchConfig {
    /// How long after a switch the new pool is watched.
    pub window: Duration,
    /// How often it is judged (and the old pool sampled for the baseline).
    pub interval: Duration,
    /// Requests the new pool must have served since the switch before it is
    /// judged; also what a baseline needs to count.
    pub min_requests: u64,
    /// Highest share of 5xx responses, 0 to 1.
    pub max_5xx_ratio: Option<f64>,
    /// Highest rise of the 5xx share over the old pool's before the switch,
    /// 0 to 1 (0.05: five points more).
    pub max_5xx_ratio_increase: Option<f64>,
    /// Highest p99 latency.
    pub max_p99: Option<Duration>,
    /// Highest p99 latency as a multiple of the old pool's before the switch.
    pub max_p99_ratio: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWatch {
    window: Spanned<String>,
    #[serde(default)]
    interval: Option<Spanned<String>>,
    #[serde(default)]
    min_requests: Option<Spanned<u64>>,
    #[serde(default)]
    max_5xx_ratio: Option<Spanned<f64>>,
    #[serde(default)]
    max_5xx_ratio_increase: Option<Spanned<f64>>,
    #[serde(default)]
    max_p99: Option<Spanned<String>>,
    #[serde(default)]
    max_p99_ratio: Option<Spanned<f64>>,
}

/// Checks a model's `[models.watch]`; `key` is the model's (`models[0]`).
/// `None` when the table has an error (reported on `c`).
pub(super) fn validate(c: &mut Checker<'_>, key: &str, raw: &RawWatch) -> Option<WatchConfig> {
    let before = c.errors.len();
    let k = |field: &str| format!("{key}.watch.{field}");
    let window = c.duration(&k("window"), Some(&raw.window), Duration::ZERO);
    let interval = c.duration(
        &k("interval"),
        raw.interval.as_ref(),
        DEFAULT_WATCH_INTERVAL,
    );
    if c.errors.len() == before {
        let blame = raw.interval.as_ref().unwrap_or(&raw.window).span();
        if interval > window {
            c.error(
                blame,
                format!(
                    "{}: interval {interval:?} is longer than the window {window:?}; the pool would never be judged",
                    k("interval")
                ),
            );
        } else if window.as_nanos() / interval.as_nanos() > MAX_EVALUATIONS {
            c.error(
                blame,
                format!(
                    "{}: a window of {window:?} judged every {interval:?} is more than {MAX_EVALUATIONS} evaluations; raise the interval",
                    k("interval")
                ),
            );
        }
    }
    let min_requests = c.count(
        &k("min_requests"),
        raw.min_requests.as_ref(),
        DEFAULT_MIN_REQUESTS,
        1..=1_000_000_000,
    );
    let mut ratio = |field: &str, value: Option<&Spanned<f64>>, max: f64, what: &str| {
        c.ratio(&k(field), value, max, what)
    };
    let max_5xx_ratio = ratio(
        "max_5xx_ratio",
        raw.max_5xx_ratio.as_ref(),
        1.0,
        "a share from 0 to 1, such as 0.05 for 5%",
    );
    let max_5xx_ratio_increase = ratio(
        "max_5xx_ratio_increase",
        raw.max_5xx_ratio_increase.as_ref(),
        1.0,
        "a share from 0 to 1, such as 0.02 for two points above the old pool",
    );
    let max_p99_ratio = ratio(
        "max_p99_ratio",
        raw.max_p99_ratio.as_ref(),
        1000.0,
        "a multiple of the old pool's p99 from 1 to 1000, such as 1.5",
    );
    let max_p99 = raw.max_p99.as_ref().and_then(|v| {
        match parse_duration(v.get_ref()) {
            Ok(d) if !d.is_zero() => return Some(d),
            Ok(_) => c.error(
                v.span(),
                format!("{}: must be longer than zero", k("max_p99")),
            ),
            Err(why) => c.error(v.span(), format!("{}: {why}", k("max_p99"))),
        }
        None
    });
    let limits = [
        raw.max_5xx_ratio.is_some(),
        raw.max_5xx_ratio_increase.is_some(),
        raw.max_p99.is_some(),
        raw.max_p99_ratio.is_some(),
    ];
    if !limits.contains(&true) {
        c.error(
            raw.window.span(),
            format!("{key}.watch: sets no limit, so nothing could roll back; add max_5xx_ratio, max_5xx_ratio_increase, max_p99 or max_p99_ratio"),
        );
    }
    (c.errors.len() == before).then_some(WatchConfig {
        window,
        interval,
        min_requests,
        max_5xx_ratio,
        max_5xx_ratio_increase,
        max_p99,
        max_p99_ratio,
    })
}
