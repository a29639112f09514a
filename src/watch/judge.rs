//! The watch's deciding core, sans-io: counter samples and the time come in
//! as arguments, a verdict goes out. Nothing here reads a clock, a metric or
//! a socket, so tests replay any sequence exactly.
//!
//! - [`Counts`]: a pool's cumulative counters at one instant (responses, 5xx,
//!   latency buckets); the difference of two is the traffic between them.
//! - [`Recent`]: the samples of one pool over the last window, from which
//!   the baseline (the old pool's traffic before a switch) is cut.
//! - [`judge`]: traffic against the limits: healthy, too few requests, or a
//!   breach with its reason.
//! - [`Watch`]: one watched switch over time: watching, breach, passed.
//! - [`Histogram`], and the number formats of verdicts ([`Share`],
//!   [`Millis`], [`Count`]): shared with the rollout's judge
//!   (`rollout/judge.rs`), so both speak alike.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::config::WatchConfig;

/// The quantile the latency limits are about.
const QUANTILE: f64 = 0.99;

/// One pool's cumulative counters at one instant, or (after [`Counts::since`])
/// the traffic between two instants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Responses of every class.
    pub requests: u64,
    /// Responses with a 5xx status (switchyard's own 502, 503, 504 included).
    pub errors: u64,
    /// Requests whose duration was at most each bucket's upper bound
    /// (cumulative, as Prometheus keeps them), one per bound.
    pub buckets: Vec<u64>,
    /// Requests whose duration was observed (the `+Inf` bucket).
    pub observed: u64,
}

/// What the watch reads from traffic: request count, 5xx share, p99.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reading {
    pub requests: u64,
    /// 0 with no requests.
    pub ratio_5xx: f64,
    /// `None` with no observed duration.
    pub p99_ms: Option<f64>,
}

// === impl Counts ===

impl Counts {
    /// The traffic from `earlier` to `self`. Saturating: a series removed
    /// and started afresh (a reload forgot it) reads as no traffic, never
    /// as a wrapped-around count.
    pub fn since(&self, earlier: &Counts) -> Counts {
        let buckets = since_buckets(&self.buckets, &earlier.buckets);
        Counts {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets,
            observed: self.observed.saturating_sub(earlier.observed),
        }
    }

    /// The 5xx share, 0 with no requests.
    pub fn ratio_5xx(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            // A ratio for a limit: a u64 beyond f64's 2^53 costs nothing that matters.
            self.errors.min(self.requests) as f64 / self.requests as f64
        }
    }

    /// The p99 latency, in seconds, estimated from the buckets whose upper
    /// bounds are `bounds` by linear interpolation within the bucket it
    /// falls in, as Prometheus's `histogram_quantile` does (so the watch
    /// and a dashboard agree). Beyond the last finite bound, that bound.
    /// `None` with no observed duration.
    pub fn p99(&self, bounds: &[f64]) -> Option<f64> {
        quantile(QUANTILE, bounds, &self.buckets, self.observed)
    }

    pub fn reading(&self, bounds: &[f64]) -> Reading {
        Reading {
            requests: self.requests,
            ratio_5xx: self.ratio_5xx(),
            p99_ms: self.p99(bounds).map(|s| s * 1000.0),
        }
    }
}

/// One histogram's cumulative bucket counts (one per bound) and its count,
/// at one instant, or (after [`Histogram::since`]) between two.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    pub buckets: Vec<u64>,
    pub observed: u64,
}

impl Histogram {
    /// What was observed from `earlier` to `self`; saturating, as
    /// [`Counts::since`].
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            buckets: since_buckets(&self.buckets, &earlier.buckets),
            observed: self.observed.saturating_sub(earlier.observed),
        }
    }

    /// The p99, in seconds, as [`Counts::p99`] estimates it.
    pub fn p99(&self, bounds: &[f64]) -> Option<f64> {
        quantile(QUANTILE, bounds, &self.buckets, self.observed)
    }
}

fn since_buckets(now: &[u64], earlier: &[u64]) -> Vec<u64> {
    now.iter()
        .enumerate()
        .map(|(i, b)| b.saturating_sub(earlier.get(i).copied().unwrap_or(0)))
        .collect()
}

/// `q`-quantile of a cumulative histogram; see [`Counts::p99`].
fn quantile(q: f64, bounds: &[f64], cumulative: &[u64], count: u64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (upper, &cum) in bounds.iter().zip(cumulative) {
        if cum as f64 >= rank {
            // `below < rank <= cum`, so the bucket is not empty.
            let in_bucket = (cum - below.min(cum)) as f64;
            if in_bucket == 0.0 {
                return Some(*upper);
            }
            return Some(lower + (upper - lower) * (rank - below as f64) / in_bucket);
        }
        below = cum;
        lower = *upper;
    }
    // In the +Inf bucket: nothing finer is known than "above the last bound".
    Some(bounds.last().copied().unwrap_or(0.0))
}

/// The samples of one pool over (a little more than) the last window,
/// oldest first: the newest one taken at or before `now - window` is kept,
/// so the span back from now covers the whole window once it has run that
/// long.
#[derive(Debug, Default)]
pub struct Recent {
    samples: VecDeque<(Instant, Counts)>,
}

// === impl Recent ===

impl Recent {
    pub fn push(&mut self, now: Instant, counts: Counts, window: Duration) {
        self.samples.push_back((now, counts));
        let start = now.checked_sub(window).unwrap_or(now);
        while self.samples.len() > 1 && self.samples[1].0 <= start {
            self.samples.pop_front();
        }
    }

    /// The traffic from the oldest sample kept to `now_counts`: the pool's
    /// last window (shorter if the samples do not reach that far back).
    /// `None` without a sample.
    pub fn window_to(&self, now_counts: &Counts) -> Option<Counts> {
        self.samples.front().map(|(_, old)| now_counts.since(old))
    }

    pub fn clear(&mut self) {
        self.samples.clear();
    }
}

/// What [`judge`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Within every limit that could be judged.
    Healthy,
    /// Fewer requests than `min_requests`: not judged.
    TooFew,
    /// A limit was breached; the reason names it and the values.
    Breach(String),
}

/// Judges the new pool's traffic since the switch against `limits`.
/// Relative limits are judged only with a `baseline` (the old pool's last
/// window before the switch) of at least `min_requests` requests, and the
/// p99 one only when that baseline has a p99: without traffic on the old
/// pool there is nothing to be relative to, and absolute limits still hold.
pub fn judge(
    limits: &WatchConfig,
    bounds: &[f64],
    new: &Counts,
    baseline: Option<&Counts>,
) -> Verdict {
    if new.requests < limits.min_requests {
        return Verdict::TooFew;
    }
    let baseline = baseline.filter(|b| b.requests >= limits.min_requests);
    let ratio = new.ratio_5xx();
    let n = new.requests;
    if let Some(max) = limits.max_5xx_ratio {
        if ratio > max {
            return Verdict::Breach(format!(
                "5xx ratio {} over {n} requests is above max_5xx_ratio {max}",
                Share(ratio)
            ));
        }
    }
    if let (Some(max), Some(old)) = (limits.max_5xx_ratio_increase, baseline) {
        let old = old.ratio_5xx();
        if ratio - old > max {
            return Verdict::Breach(format!(
                "5xx ratio {} over {n} requests is {} above the old pool's {}, more than max_5xx_ratio_increase {max}",
                Share(ratio),
                Share(ratio - old),
                Share(old)
            ));
        }
    }
    let Some(p99) = new.p99(bounds) else {
        return Verdict::Healthy;
    };
    if let Some(max) = limits.max_p99 {
        if p99 > max.as_secs_f64() {
            return Verdict::Breach(format!(
                "p99 latency {} over {} requests is above max_p99 {}",
                Millis(p99),
                new.observed,
                Millis(max.as_secs_f64())
            ));
        }
    }
    let old_p99 = baseline.and_then(|b| b.p99(bounds)).filter(|p| *p > 0.0);
    if let (Some(max), Some(old)) = (limits.max_p99_ratio, old_p99) {
        if p99 > old * max {
            return Verdict::Breach(format!(
                "p99 latency {} over {} requests is {:.1} times the old pool's {}, more than max_p99_ratio {max}",
                Millis(p99),
                new.observed,
                p99 / old,
                Millis(old)
            ));
        }
    }
    Verdict::Healthy
}

/// A share for a message: `0.250`.
pub struct Share(pub f64);

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}", self.0)
    }
}

/// Seconds for a message, in milliseconds: `812ms`.
pub struct Millis(pub f64);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.0}ms", self.0 * 1000.0)
    }
}

/// A count for a message, with thousands separated: `3,705`.
pub struct Count(pub u64);

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.0.to_string();
        let mut out = String::with_capacity(digits.len() + digits.len() / 3);
        for (i, d) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(d);
        }
        f.write_str(&out)
    }
}

/// One watched switch: the new pool's counters at the switch, the old
/// pool's baseline, and when the window ends.
#[derive(Debug, Clone)]
pub struct Watch {
    pub limits: WatchConfig,
    /// The new pool's counters when the watch began.
    pub start: Counts,
    /// The old pool's traffic over the window before the switch.
    pub baseline: Option<Counts>,
    pub until: Instant,
}

/// Where a watch stands after one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Still within the window, and no breach.
    Watching(Reading),
    /// A limit was breached: roll back.
    Breach { reason: String, reading: Reading },
    /// The window ended with the pool judged and within its limits.
    Passed(Reading),
    /// The window ended before the pool served `min_requests`.
    Inconclusive(Reading),
}

// === impl Watch ===

impl Watch {
    /// Judges the new pool at `now`, its counters then being `counts`. The
    /// last evaluation (at or after `until`) can still find a breach.
    pub fn step(&self, now: Instant, counts: &Counts, bounds: &[f64]) -> Step {
        let traffic = counts.since(&self.start);
        let reading = traffic.reading(bounds);
        let verdict = judge(&self.limits, bounds, &traffic, self.baseline.as_ref());
        match verdict {
            Verdict::Breach(reason) => Step::Breach { reason, reading },
            _ if now < self.until => Step::Watching(reading),
            Verdict::Healthy => Step::Passed(reading),
            Verdict::TooFew => Step::Inconclusive(reading),
        }
    }
}

#[cfg(test)]
mod tests;
