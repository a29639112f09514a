//! The rollout's deciding core, sans-io: each pool's figures over a step
//! come in, a verdict goes out, in one sentence a person can act on.
//! Nothing here reads a clock, a metric or a socket.
//!
//! - [`Figures`]: one pool's cumulative counters at one instant (responses,
//!   5xx, and three histograms: the whole response, the time to first
//!   byte, the gap between server-sent events); the difference of two is
//!   the traffic of a step.
//! - [`judge`]: the new pool's figures of a step against the limits and
//!   against the old pool's figures over the same time. The same
//!   [`Verdict`] as the watch's judge, and its number formats, so a
//!   dashboard's p99 and a verdict's agree.
//! - [`passed`], [`inconclusive`]: the sentences of the other verdicts.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::config::RolloutConfig;
use crate::pool::PoolName;
use crate::watch::{Count, Counts, Histogram, Millis, Share, Verdict};

/// One pool's counters at one instant, or (after [`Figures::since`]) over
/// a step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    /// Responses, 5xx, and the whole-response latency, as the watch reads them.
    pub counts: Counts,
    /// `switchyard_response_first_byte_seconds`.
    pub first_byte: Histogram,
    /// `switchyard_stream_event_gap_seconds`.
    pub event_gap: Histogram,
    /// `switchyard_stream_events_total`.
    pub events: u64,
}

/// What a status shows of one pool's figures over a step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PoolReading {
    pub requests: u64,
    pub ratio_5xx: f64,
    pub p99_ms: Option<f64>,
    pub first_byte_p99_ms: Option<f64>,
    pub events: u64,
    pub event_gap_p99_ms: Option<f64>,
}

// === impl Figures ===

impl Figures {
    /// The traffic from `earlier` to `self` (saturating, as the watch's).
    pub fn since(&self, earlier: &Figures) -> Figures {
        Figures {
            counts: self.counts.since(&earlier.counts),
            first_byte: self.first_byte.since(&earlier.first_byte),
            event_gap: self.event_gap.since(&earlier.event_gap),
            events: self.events.saturating_sub(earlier.events),
        }
    }

    pub fn reading(&self, bounds: &[f64]) -> PoolReading {
        let ms = |s: f64| s * 1000.0;
        PoolReading {
            requests: self.counts.requests,
            ratio_5xx: self.counts.ratio_5xx(),
            p99_ms: self.counts.p99(bounds).map(ms),
            first_byte_p99_ms: self.first_byte.p99(bounds).map(ms),
            events: self.events,
            event_gap_p99_ms: self.event_gap.p99(bounds).map(ms),
        }
    }
}

/// The two pools of a step: the new one (rolled out to) and the old one,
/// with their names for the verdict.
#[derive(Debug, Clone, Copy)]
pub struct Pair<'a> {
    pub new: &'a Figures,
    pub old: &'a Figures,
    pub new_pool: PoolName,
    pub old_pool: PoolName,
}

/// One latency limit to judge: the figure, its limit, and each pool's p99
/// with the count it rests on.
struct Latency {
    what: &'static str,
    max: Option<Duration>,
    new: (Option<f64>, u64),
    old: (Option<f64>, u64),
    unit: &'static str,
}

/// Judges the new pool's figures of a step against `limits`. Until it has
/// served `min_requests` in the step nothing is judged. Relative limits
/// (`_increase`, `_ratio`) are judged only when the old pool served at
/// least `min_requests` over the same time (at 100 % it serves none), and
/// the event gap only over `min_requests` gaps. The reason of a breach
/// names the figure, its value on each pool, the limit and the number of
/// requests it rests on.
pub fn judge(limits: &RolloutConfig, bounds: &[f64], pair: Pair<'_>) -> Verdict {
    let Pair {
        new,
        old,
        new_pool,
        old_pool,
    } = pair;
    let n = new.counts.requests;
    if n < limits.min_requests {
        return Verdict::TooFew;
    }
    let m = old.counts.requests;
    let old_counts = m >= limits.min_requests;
    let (ratio, old_ratio) = (new.counts.ratio_5xx(), old.counts.ratio_5xx());
    // "; blue 0.000 over 3,705": the old pool's side of a sentence.
    let old_side = |value: String| -> String {
        if m == 0 {
            format!("; {old_pool} served none in the step")
        } else {
            format!("; {old_pool} {value} over {}", Count(m))
        }
    };
    if let Some(max) = limits.max_5xx_ratio {
        if ratio > max {
            return Verdict::Breach(format!(
                "{new_pool} 5xx ratio {} over {} requests > limit {max}{}",
                Share(ratio),
                Count(n),
                old_side(Share(old_ratio).to_string())
            ));
        }
    }
    if let (Some(max), true) = (limits.max_5xx_ratio_increase, old_counts) {
        if ratio - old_ratio > max {
            return Verdict::Breach(format!(
                "{new_pool} 5xx ratio {} over {} requests is {} above {old_pool}'s {} over {} > limit max_5xx_ratio_increase {max}",
                Share(ratio),
                Count(n),
                Share(ratio - old_ratio),
                Share(old_ratio),
                Count(m)
            ));
        }
    }
    let millis = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |s| Millis(s).to_string());
    let checks = [
        Latency {
            what: "p99",
            max: limits.max_p99,
            new: (new.counts.p99(bounds), new.counts.observed),
            old: (old.counts.p99(bounds), old.counts.observed),
            unit: "requests",
        },
        Latency {
            what: "time to first byte p99",
            max: limits.max_first_byte_p99,
            new: (new.first_byte.p99(bounds), new.first_byte.observed),
            old: (old.first_byte.p99(bounds), old.first_byte.observed),
            unit: "requests",
        },
        Latency {
            what: "event gap p99",
            max: limits.max_event_gap_p99,
            new: (new.event_gap.p99(bounds), new.event_gap.observed),
            old: (old.event_gap.p99(bounds), old.event_gap.observed),
            unit: "gaps",
        },
    ];
    for check in checks {
        let (Some(max), (Some(value), count)) = (check.max, check.new) else {
            continue;
        };
        // A p99 of a few gaps says little: as requests, at least min_requests.
        if check.unit == "gaps" && count < limits.min_requests {
            continue;
        }
        if value > max.as_secs_f64() {
            let (old_value, old_count) = check.old;
            let old = if old_count == 0 {
                format!("; {old_pool} had none in the step")
            } else {
                format!(
                    "; {old_pool} {} over {}",
                    millis(old_value),
                    Count(old_count)
                )
            };
            return Verdict::Breach(format!(
                "{new_pool} {} {} over {} {} > limit {}{old}",
                check.what,
                Millis(value),
                Count(count),
                check.unit,
                Millis(max.as_secs_f64())
            ));
        }
    }
    let p99 = new.counts.p99(bounds);
    let old_p99 = old.counts.p99(bounds).filter(|p| *p > 0.0 && old_counts);
    if let (Some(max), Some(p99), Some(old_p99)) = (limits.max_p99_ratio, p99, old_p99) {
        if p99 > old_p99 * max {
            return Verdict::Breach(format!(
                "{new_pool} p99 {} over {} requests is {:.1} times {old_pool}'s {} over {} > limit max_p99_ratio {max}",
                Millis(p99),
                Count(new.counts.observed),
                p99 / old_p99,
                Millis(old_p99),
                Count(old.counts.observed)
            ));
        }
    }
    Verdict::Healthy
}

/// The figures of a passed step: `green 412 requests, 5xx ratio 0.000,
/// p99 84ms, ...; blue 3,705 requests, ...`.
pub fn passed(bounds: &[f64], pair: Pair<'_>) -> String {
    let side = |pool: PoolName, f: &Figures| {
        let r = f.reading(bounds);
        let mut s = format!(
            "{pool} {} requests, 5xx ratio {}",
            Count(r.requests),
            Share(r.ratio_5xx)
        );
        for (what, v) in [("p99", r.p99_ms), ("first byte p99", r.first_byte_p99_ms)] {
            if let Some(ms) = v {
                let _ = write!(s, ", {what} {}", Millis(ms / 1000.0));
            }
        }
        if r.events > 0 {
            let _ = write!(s, ", {} events", Count(r.events));
            if let Some(ms) = r.event_gap_p99_ms {
                let _ = write!(s, ", event gap p99 {}", Millis(ms / 1000.0));
            }
        }
        s
    };
    format!(
        "{}; {}",
        side(pair.new_pool, pair.new),
        side(pair.old_pool, pair.old)
    )
}

/// Why a step with too few requests could not be judged.
pub fn inconclusive(pool: PoolName, requests: u64, min_requests: u64, ran: Duration) -> String {
    format!(
        "{pool} served {} request(s) in {}, fewer than min_requests {min_requests}",
        Count(requests),
        Human(ran)
    )
}

/// A duration as people say it: `30s`, `5m30s`, `1h2m`.
pub struct Human(pub Duration);

impl std::fmt::Display for Human {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0.as_secs();
        match s {
            0 => write!(f, "{}ms", self.0.as_millis()),
            1..60 => write!(f, "{s}s"),
            60..3600 if s % 60 == 0 => write!(f, "{}m", s / 60),
            60..3600 => write!(f, "{}m{}s", s / 60, s % 60),
            _ if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            _ => write!(f, "{}h{}m", s / 3600, s % 3600 / 60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bounds of a small histogram: 10ms, 100ms, 1s.
    const BOUNDS: &[f64] = &[0.01, 0.1, 1.0];

    fn limits() -> RolloutConfig {
        RolloutConfig {
            steps: Vec::new(),
            interval: Duration::from_secs(1),
            min_requests: 20,
            max_extension: Duration::from_secs(60),
            max_5xx_ratio: None,
            max_5xx_ratio_increase: None,
            max_p99: None,
            max_p99_ratio: None,
            max_first_byte_p99: None,
            max_event_gap_p99: None,
        }
    }

    /// `n` observations all in bucket `bucket` (0: to 10ms, 1: to 100ms,
    /// 2: to 1s, 3: above).
    fn histogram(n: u64, bucket: usize) -> Histogram {
        Histogram {
            buckets: (0..BOUNDS.len())
                .map(|i| if i >= bucket { n } else { 0 })
                .collect(),
            observed: n,
        }
    }

    fn figures(requests: u64, errors: u64, bucket: usize) -> Figures {
        let h = histogram(requests, bucket);
        Figures {
            counts: Counts {
                requests,
                errors,
                buckets: h.buckets.clone(),
                observed: requests,
            },
            first_byte: h,
            event_gap: Histogram::default(),
            events: 0,
        }
    }

    fn pair<'a>(new: &'a Figures, old: &'a Figures) -> Pair<'a> {
        Pair {
            new,
            old,
            new_pool: PoolName::Green,
            old_pool: PoolName::Blue,
        }
    }

    fn breach(v: Verdict) -> String {
        match v {
            Verdict::Breach(reason) => reason,
            other => panic!("expected a breach, got {other:?}"),
        }
    }

    #[test]
    fn a_5xx_breach_says_which_figure_on_which_pool_and_over_how_many() {
        let l = RolloutConfig {
            max_5xx_ratio: Some(0.01),
            ..limits()
        };
        let green = figures(412, 34, 0);
        let blue = figures(3705, 0, 0);
        assert_eq!(
            breach(judge(&l, BOUNDS, pair(&green, &blue))),
            "green 5xx ratio 0.083 over 412 requests > limit 0.01; blue 0.000 over 3,705"
        );
        let fine = figures(412, 4, 0);
        assert_eq!(
            judge(&l, BOUNDS, pair(&fine, &blue)),
            Verdict::Healthy,
            "within the limit"
        );
        let none = Figures::default();
        assert!(breach(judge(&l, BOUNDS, pair(&green, &none)))
            .ends_with("; blue served none in the step"));
    }

    #[test]
    fn too_few_requests_are_not_judged() {
        let l = RolloutConfig {
            max_5xx_ratio: Some(0.0),
            ..limits()
        };
        let green = figures(19, 19, 3);
        assert_eq!(
            judge(&l, BOUNDS, pair(&green, &figures(100, 0, 0))),
            Verdict::TooFew
        );
        assert_eq!(
            inconclusive(PoolName::Green, 7, 20, Duration::from_secs(330)),
            "green served 7 request(s) in 5m30s, fewer than min_requests 20"
        );
    }

    #[test]
    fn relative_limits_need_the_old_pool_to_have_served() {
        let l = RolloutConfig {
            max_5xx_ratio_increase: Some(0.02),
            max_p99_ratio: Some(2.0),
            ..limits()
        };
        let green = figures(100, 10, 2);
        // Blue served nothing (100 %): nothing to be relative to.
        assert_eq!(
            judge(&l, BOUNDS, pair(&green, &Figures::default())),
            Verdict::Healthy
        );
        let blue = figures(1000, 10, 0);
        let reason = breach(judge(&l, BOUNDS, pair(&green, &blue)));
        assert_eq!(
            reason,
            "green 5xx ratio 0.100 over 100 requests is 0.090 above blue's 0.010 over 1,000 > limit max_5xx_ratio_increase 0.02"
        );
        let slow = figures(100, 0, 2);
        let reason = breach(judge(&l, BOUNDS, pair(&slow, &blue)));
        assert!(
            reason.starts_with(
                "green p99 991ms over 100 requests is 100.1 times blue's 10ms over 1,000"
            ),
            "{reason}"
        );
    }

    #[test]
    fn latency_limits_name_their_figure() {
        let l = RolloutConfig {
            max_first_byte_p99: Some(Duration::from_millis(200)),
            ..limits()
        };
        let mut green = figures(50, 0, 0);
        green.first_byte = histogram(50, 2);
        let blue = figures(500, 0, 0);
        let reason = breach(judge(&l, BOUNDS, pair(&green, &blue)));
        assert_eq!(
            reason,
            "green time to first byte p99 991ms over 50 requests > limit 200ms; blue 10ms over 500"
        );
        let l = RolloutConfig {
            max_event_gap_p99: Some(Duration::from_millis(50)),
            ..limits()
        };
        let mut green = figures(50, 0, 0);
        green.event_gap = histogram(10, 2);
        assert_eq!(
            judge(&l, BOUNDS, pair(&green, &blue)),
            Verdict::Healthy,
            "10 gaps are too few"
        );
        green.event_gap = histogram(30, 2);
        let reason = breach(judge(&l, BOUNDS, pair(&green, &blue)));
        assert_eq!(
            reason,
            "green event gap p99 991ms over 30 gaps > limit 50ms; blue had none in the step"
        );
    }

    #[test]
    fn a_pass_and_durations_read_as_people_write_them() {
        let green = figures(412, 0, 1);
        let blue = figures(3705, 1, 0);
        assert_eq!(
            passed(BOUNDS, pair(&green, &blue)),
            "green 412 requests, 5xx ratio 0.000, p99 99ms, first byte p99 99ms; blue 3,705 requests, 5xx ratio 0.000, p99 10ms, first byte p99 10ms"
        );
        assert_eq!(Count(3705).to_string(), "3,705");
        assert_eq!(Count(1_234_567).to_string(), "1,234,567");
        assert_eq!(Count(999).to_string(), "999");
        assert_eq!(Human(Duration::from_secs(90)).to_string(), "1m30s");
        assert_eq!(Human(Duration::from_secs(3600)).to_string(), "1h");
        assert_eq!(Human(Duration::from_millis(300)).to_string(), "300ms");
    }
}
