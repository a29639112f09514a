//! `[models.rollout]` and a model's `sticky`: the steps of a progressive
//! rollout, the limits each step is judged against, and what keeps a user
//! on one pool while a split is on. The raw shape, the defaults and the
//! checks; `rollout.rs` runs rollouts and `switch/split.rs` picks pools.

use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;
use toml::Spanned;

use super::{parse_duration, Checker};

/// How often a step is judged (and its figures shown), by default.
pub const DEFAULT_ROLLOUT_INTERVAL: Duration = Duration::from_secs(1);
/// Requests the new pool must serve in a step before the step is judged,
/// by default: as the watch's `min_requests`.
pub const DEFAULT_ROLLOUT_MIN_REQUESTS: u64 = 20;
/// How much longer a step with too few requests at its end may run, by
/// default, before the rollout is aborted as inconclusive.
pub const DEFAULT_MAX_EXTENSION: Duration = Duration::from_secs(300);
/// Steps a rollout may have at most: every verdict is kept in the model's
/// state, which the state file and etcd hold whole.
pub const MAX_STEPS: usize = 20;

/// How many parts a whole split has: a weight is in tenths of a percent.
pub const PERMILLE: u16 = 1000;

/// One step of a rollout: the new pool's share, and how long it is held
/// and judged. Only the last step, 100 %, may have no duration: reaching
/// it is the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepConfig {
    /// Tenths of a percent of new requests, 1 to 1000.
    pub permille: u16,
    pub duration: Option<Duration>,
}

/// A model's `[models.rollout]`, checked: at least two steps, weights
/// rising to 100 %, and at least one limit.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    pub steps: Vec<StepConfig>,
    /// How often the running step is judged for a breach.
    pub interval: Duration,
    /// Requests the new pool must serve in a step before it is judged.
    pub min_requests: u64,
    /// How much longer a step may run when it ends with fewer than
    /// `min_requests`; then the rollout is aborted as inconclusive.
    pub max_extension: Duration,
    /// Highest share of 5xx responses of the new pool, 0 to 1.
    pub max_5xx_ratio: Option<f64>,
    /// Highest rise of the new pool's 5xx share over the old pool's in the
    /// same step, 0 to 1.
    pub max_5xx_ratio_increase: Option<f64>,
    /// Highest p99 of the whole response (request to end of body).
    pub max_p99: Option<Duration>,
    /// Highest p99 as a multiple of the old pool's in the same step.
    pub max_p99_ratio: Option<f64>,
    /// Highest p99 time to first byte (an LLM's first token).
    pub max_first_byte_p99: Option<Duration>,
    /// Highest p99 gap between server-sent events (token cadence).
    pub max_event_gap_p99: Option<Duration>,
}

/// What keeps a user on one pool while a split is on: a request header or
/// a cookie whose value is hashed into the split's buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    Header(HeaderName),
    Cookie(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSticky {
    #[serde(default)]
    header: Option<Spanned<String>>,
    #[serde(default)]
    cookie: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollout {
    steps: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    interval: Option<Spanned<String>>,
    #[serde(default)]
    min_requests: Option<Spanned<u64>>,
    #[serde(default)]
    max_extension: Option<Spanned<String>>,
    #[serde(default)]
    max_5xx_ratio: Option<Spanned<f64>>,
    #[serde(default)]
    max_5xx_ratio_increase: Option<Spanned<f64>>,
    #[serde(default)]
    max_p99: Option<Spanned<String>>,
    #[serde(default)]
    max_p99_ratio: Option<Spanned<f64>>,
    #[serde(default)]
    max_first_byte_p99: Option<Spanned<String>>,
    #[serde(default)]
    max_event_gap_p99: Option<Spanned<String>>,
}

/// Checks a model's `sticky`; `key` is the model's (`models[0]`).
pub(super) fn validate_sticky(
    c: &mut Checker<'_>,
    key: &str,
    raw: &Spanned<RawSticky>,
) -> Option<Sticky> {
    let r = raw.get_ref();
    match (&r.header, &r.cookie) {
        (Some(h), None) => match HeaderName::from_bytes(h.get_ref().trim().as_bytes()) {
            Ok(name) => Some(Sticky::Header(name)),
            Err(_) => {
                c.error(
                    h.span(),
                    format!(
                        "{key}.sticky.header: {:?} is not a header name; use one such as \"x-user-id\"",
                        h.get_ref()
                    ),
                );
                None
            }
        },
        (None, Some(name)) => {
            let n = name.get_ref();
            let token = !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
            if token {
                Some(Sticky::Cookie(n.clone()))
            } else {
                c.error(
                    name.span(),
                    format!(
                        "{key}.sticky.cookie: {n:?} is not a cookie name; use one such as \"session\""
                    ),
                );
                None
            }
        }
        (Some(_), Some(cookie)) => {
            c.error(
                cookie.span(),
                format!("{key}.sticky: set header or cookie, not both"),
            );
            None
        }
        (None, None) => {
            c.error(
                raw.span(),
                format!("{key}.sticky: names nothing to stick by; set header = \"x-user-id\" or cookie = \"session\""),
            );
            None
        }
    }
}

/// Checks a model's `[models.rollout]`; `key` is the model's (`models[0]`).
/// `None` when the table has an error (reported on `c`).
pub(super) fn validate(c: &mut Checker<'_>, key: &str, raw: &RawRollout) -> Option<RolloutConfig> {
    let before = c.errors.len();
    let k = |field: &str| format!("{key}.rollout.{field}");
    let steps = validate_steps(c, &k("steps"), &raw.steps);
    let interval = c.duration(
        &k("interval"),
        raw.interval.as_ref(),
        DEFAULT_ROLLOUT_INTERVAL,
    );
    let min_requests = c.count(
        &k("min_requests"),
        raw.min_requests.as_ref(),
        DEFAULT_ROLLOUT_MIN_REQUESTS,
        1..=1_000_000_000,
    );
    let max_extension = c.duration(
        &k("max_extension"),
        raw.max_extension.as_ref(),
        DEFAULT_MAX_EXTENSION,
    );
    let mut ratio = |field: &str, value: Option<&Spanned<f64>>, max: f64, what: &str| {
        c.ratio(&k(field), value, max, what)
    };
    let max_5xx_ratio = ratio(
        "max_5xx_ratio",
        raw.max_5xx_ratio.as_ref(),
        1.0,
        "a share from 0 to 1, such as 0.01 for 1%",
    );
    let max_5xx_ratio_increase = ratio(
        "max_5xx_ratio_increase",
        raw.max_5xx_ratio_increase.as_ref(),
        1.0,
        "a share from 0 to 1, such as 0.01 for one point above the old pool",
    );
    let max_p99_ratio = ratio(
        "max_p99_ratio",
        raw.max_p99_ratio.as_ref(),
        1000.0,
        "a multiple of the old pool's p99 from 1 to 1000, such as 1.5",
    );
    let mut latency = |field: &str, value: Option<&Spanned<String>>| {
        let v = value?;
        match parse_duration(v.get_ref()) {
            Ok(d) if !d.is_zero() => return Some(d),
            Ok(_) => c.error(v.span(), format!("{}: must be longer than zero", k(field))),
            Err(why) => c.error(v.span(), format!("{}: {why}", k(field))),
        }
        None
    };
    let max_p99 = latency("max_p99", raw.max_p99.as_ref());
    let max_first_byte_p99 = latency("max_first_byte_p99", raw.max_first_byte_p99.as_ref());
    let max_event_gap_p99 = latency("max_event_gap_p99", raw.max_event_gap_p99.as_ref());
    let limits = [
        raw.max_5xx_ratio.is_some(),
        raw.max_5xx_ratio_increase.is_some(),
        raw.max_p99.is_some(),
        raw.max_p99_ratio.is_some(),
        raw.max_first_byte_p99.is_some(),
        raw.max_event_gap_p99.is_some(),
    ];
    if !limits.contains(&true) {
        c.error(
            raw.steps.span(),
            format!("{key}.rollout: sets no limit, so no step could fail; add max_5xx_ratio, max_5xx_ratio_increase, max_p99, max_p99_ratio, max_first_byte_p99 or max_event_gap_p99"),
        );
    }
    (c.errors.len() == before).then_some(RolloutConfig {
        steps: steps?,
        interval,
        min_requests,
        max_extension,
        max_5xx_ratio,
        max_5xx_ratio_increase,
        max_p99,
        max_p99_ratio,
        max_first_byte_p99,
        max_event_gap_p99,
    })
}

/// The steps, each `"PERCENT%:DURATION"` (the last may be `"100%"`): at
/// least two, weights rising strictly to exactly 100 %.
fn validate_steps(
    c: &mut Checker<'_>,
    key: &str,
    raw: &Spanned<Vec<Spanned<String>>>,
) -> Option<Vec<StepConfig>> {
    let list = raw.get_ref();
    if list.len() < 2 || list.len() > MAX_STEPS {
        c.error(
            raw.span(),
            format!(
                "{key}: {} step(s); a rollout has 2 to {MAX_STEPS} steps, such as [\"5%:30s\", \"25%:60s\", \"100%\"] (for one step to 100%, flip)",
                list.len()
            ),
        );
        return None;
    }
    let before = c.errors.len();
    let mut steps = Vec::with_capacity(list.len());
    for (j, s) in list.iter().enumerate() {
        let at = format!("{key}[{j}]");
        let last = j + 1 == list.len();
        match parse_step(s.get_ref()) {
            Err(why) => c.error(s.span(), format!("{at}: {why}")),
            Ok(step) => {
                if let Some(prev) = steps.last().map(|p: &StepConfig| p.permille) {
                    if step.permille <= prev {
                        c.error(
                            s.span(),
                            format!(
                                "{at}: {} is not above the step before ({}); weights rise from step to step, so a user sent to the new pool stays there",
                                Percent(step.permille),
                                Percent(prev)
                            ),
                        );
                    }
                }
                if last && step.permille != PERMILLE {
                    c.error(
                        s.span(),
                        format!("{at}: the last step is {}; it must be \"100%\", where the rollout switches", Percent(step.permille)),
                    );
                }
                if !last && step.duration.is_none() {
                    c.error(
                        s.span(),
                        format!("{at}: {:?} has no duration; every step but the last needs one, such as \"{}:60s\"", s.get_ref(), Percent(step.permille)),
                    );
                }
                steps.push(step);
            }
        }
    }
    (c.errors.len() == before).then_some(steps)
}

/// Parses one step: `"25%:60s"`, `"0.5%:2m"`, `"100%"`.
pub fn parse_step(s: &str) -> Result<StepConfig, String> {
    let bad = || {
        format!("invalid step {s:?}; expected \"PERCENT%:DURATION\" such as \"25%:60s\" (the last may be \"100%\")")
    };
    let (weight, duration) = match s.split_once(':') {
        Some((w, d)) => (w.trim(), Some(d.trim())),
        None => (s.trim(), None),
    };
    let number = weight.strip_suffix('%').ok_or_else(bad)?;
    let permille = parse_permille(number).ok_or_else(bad)?;
    if permille == 0 {
        return Err(format!(
            "step {s:?} sends nothing to the new pool; steps are above 0%"
        ));
    }
    let duration = match duration {
        None => None,
        Some(d) => match parse_duration(d) {
            Ok(d) if d.is_zero() => return Err(format!("step {s:?}: a duration longer than zero")),
            Ok(d) if d > super::MAX_DURATION => {
                return Err(format!("step {s:?}: a duration of at most \"8760h\""))
            }
            Ok(d) => Some(d),
            Err(why) => return Err(format!("step {s:?}: {why}")),
        },
    };
    Ok(StepConfig { permille, duration })
}

/// A percentage from 0 to 100 with at most one decimal (`"10"`, `"2.5"`,
/// `"0.1"`) as tenths of a percent; `None` for anything else.
pub fn parse_permille(s: &str) -> Option<u16> {
    let (whole, tenth) = match s.split_once('.') {
        Some((w, t)) => (w, t),
        None => (s, "0"),
    };
    let digits = |d: &str| !d.is_empty() && d.len() <= 3 && d.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || tenth.len() != 1 || !digits(tenth) {
        return None;
    }
    let permille = whole.parse::<u16>().ok()? * 10 + tenth.parse::<u16>().ok()?;
    (permille <= PERMILLE).then_some(permille)
}

/// Tenths of a percent, as people write them: `25%`, `0.5%`.
pub struct Percent(pub u16);

impl std::fmt::Display for Percent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 % 10 {
            0 => write!(f, "{}%", self.0 / 10),
            tenth => write!(f, "{}.{tenth}%", self.0 / 10),
        }
    }
}
