//! The health state machine of one endpoint, sans-io: probe results,
//! passive ejections and the clock come in as arguments, so tests replay
//! them exactly.
//!
//! States:
//! - `Unknown` until the first probe answers; the first result decides.
//! - `Healthy` after `healthy_after` consecutive successes.
//! - `Unhealthy` after `unhealthy_after` consecutive failures.
//! - `Ejected` when the request path saw too many consecutive failures: out
//!   of rotation for a back-off (doubling per ejection in a row, capped), and
//!   back only once the back-off is over *and* `healthy_after` probes passed;
//!   a probe that fails after the back-off makes it `Unhealthy`.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// What balancing and the switch guard see of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum EndpointState {
    Unknown = 0,
    Healthy = 1,
    Unhealthy = 2,
    Ejected = 3,
    /// Found by DNS discovery in a running pool and not probed yet: out of
    /// rotation until its first probe passes (the prober's tracker starts
    /// it as `Unknown`, so that probe decides).
    Pending = 4,
}

impl EndpointState {
    /// The inverse of `state as u8`, for states kept in an atomic.
    pub fn from_u8(v: u8) -> EndpointState {
        match v {
            1 => EndpointState::Healthy,
            2 => EndpointState::Unhealthy,
            3 => EndpointState::Ejected,
            4 => EndpointState::Pending,
            _ => EndpointState::Unknown,
        }
    }

    /// Whether requests may go to an endpoint in this state. `Unknown`
    /// serves: before the first probe answers there is no evidence against
    /// an endpoint, and refusing would fail every request at start.
    pub fn is_serving(self) -> bool {
        matches!(self, EndpointState::Unknown | EndpointState::Healthy)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Unknown => "unknown",
            EndpointState::Healthy => "healthy",
            EndpointState::Unhealthy => "unhealthy",
            EndpointState::Ejected => "ejected",
            EndpointState::Pending => "pending",
        }
    }
}

impl fmt::Display for EndpointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Thresholds of the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub healthy_after: u32,
    pub unhealthy_after: u32,
    pub eject_base: Duration,
    pub eject_max: Duration,
}

/// One endpoint's health over time.
#[derive(Debug, Clone)]
pub struct Tracker {
    thresholds: Thresholds,
    state: EndpointState,
    successes: u32,
    failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections in a row: each one doubles the next back-off. Reset once
    /// the endpoint has stayed healthy for the back-off it last served.
    ejections_in_a_row: u32,
    healthy_since: Option<Instant>,
}

// === impl Tracker ===

impl Tracker {
    pub fn new(thresholds: Thresholds) -> Tracker {
        Tracker {
            thresholds,
            state: EndpointState::Unknown,
            successes: 0,
            failures: 0,
            ejected_until: None,
            ejections_in_a_row: 0,
            healthy_since: None,
        }
    }

    pub fn state(&self) -> EndpointState {
        self.state
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }

    /// Applies one probe result at `now`; returns the new state if it changed.
    pub fn on_probe(&mut self, ok: bool, now: Instant) -> Option<EndpointState> {
        let before = self.state;
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
        self.state = match self.state {
            EndpointState::Unknown if ok => EndpointState::Healthy,
            EndpointState::Unknown => EndpointState::Unhealthy,
            EndpointState::Healthy if self.failures >= self.thresholds.unhealthy_after => {
                EndpointState::Unhealthy
            }
            EndpointState::Unhealthy if self.successes >= self.thresholds.healthy_after => {
                EndpointState::Healthy
            }
            EndpointState::Ejected => match self.ejected_until {
                Some(until) if now < until => {
                    // Probes during the back-off do not count towards return.
                    self.successes = 0;
                    EndpointState::Ejected
                }
                _ if self.successes >= self.thresholds.healthy_after => {
                    self.ejected_until = None;
                    EndpointState::Healthy
                }
                // Back-off over and the probe fails: the endpoint is down by
                // its probes now, and returns as any unhealthy one does.
                _ if !ok => {
                    self.ejected_until = None;
                    EndpointState::Unhealthy
                }
                _ => EndpointState::Ejected,
            },
            same => same,
        };
        self.settle(before, now)
    }

    /// Ejects the endpoint at `now` (the request path saw too many failures
    /// in a row). Returns the back-off, or `None` if it was already ejected.
    pub fn eject(&mut self, now: Instant) -> Option<Duration> {
        if self.state == EndpointState::Ejected {
            return None;
        }
        let backoff = self
            .thresholds
            .eject_base
            .saturating_mul(1u32 << self.ejections_in_a_row.min(16))
            .min(self.thresholds.eject_max);
        let before = self.state;
        self.ejections_in_a_row = self.ejections_in_a_row.saturating_add(1);
        self.ejected_until = Some(now + backoff);
        self.state = EndpointState::Ejected;
        self.successes = 0;
        self.settle(before, now);
        Some(backoff)
    }

    fn settle(&mut self, before: EndpointState, now: Instant) -> Option<EndpointState> {
        if self.state == EndpointState::Healthy {
            let since = *self.healthy_since.get_or_insert(now);
            let last_backoff = self
                .thresholds
                .eject_base
                .saturating_mul(1u32 << self.ejections_in_a_row.saturating_sub(1).min(16))
                .min(self.thresholds.eject_max);
            if self.ejections_in_a_row > 0 && now.duration_since(since) >= last_backoff {
                self.ejections_in_a_row = 0;
            }
        } else {
            self.healthy_since = None;
        }
        (self.state != before).then_some(self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        healthy_after: 2,
        unhealthy_after: 3,
        eject_base: Duration::from_secs(10),
        eject_max: Duration::from_secs(300),
    };

    fn secs(start: Instant, s: u64) -> Instant {
        start + Duration::from_secs(s)
    }

    #[test]
    fn the_first_probe_decides() {
        let now = Instant::now();
        let mut up = Tracker::new(T);
        assert_eq!(up.on_probe(true, now), Some(EndpointState::Healthy));
        let mut down = Tracker::new(T);
        assert_eq!(down.on_probe(false, now), Some(EndpointState::Unhealthy));
    }

    #[test]
    fn thresholds_gate_each_transition() {
        let t0 = Instant::now();
        let mut t = Tracker::new(T);
        t.on_probe(true, t0);
        assert_eq!(t.on_probe(false, t0), None);
        assert_eq!(t.on_probe(false, t0), None);
        assert_eq!(t.on_probe(false, t0), Some(EndpointState::Unhealthy));
        assert_eq!(t.consecutive_failures(), 3);
        assert_eq!(t.on_probe(true, t0), None);
        assert_eq!(t.on_probe(true, t0), Some(EndpointState::Healthy));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let t0 = Instant::now();
        let mut t = Tracker::new(T);
        t.on_probe(true, t0);
        t.on_probe(false, t0);
        t.on_probe(false, t0);
        t.on_probe(true, t0);
        assert_eq!(t.on_probe(false, t0), None);
        assert_eq!(t.state(), EndpointState::Healthy);
    }

    #[test]
    fn an_ejected_endpoint_returns_after_backoff_and_passing_probes() {
        let t0 = Instant::now();
        let mut t = Tracker::new(T);
        t.on_probe(true, t0);
        assert_eq!(t.eject(t0), Some(Duration::from_secs(10)));
        assert_eq!(t.eject(t0), None, "already ejected");
        assert!(!t.state().is_serving());
        // Passing probes during the back-off do not bring it back.
        t.on_probe(true, secs(t0, 2));
        t.on_probe(true, secs(t0, 4));
        assert_eq!(t.state(), EndpointState::Ejected);
        // After the back-off, `healthy_after` passing probes do.
        assert_eq!(t.on_probe(true, secs(t0, 10)), None);
        assert_eq!(t.on_probe(true, secs(t0, 12)), Some(EndpointState::Healthy));
        assert_eq!(t.ejected_until(), None);
    }

    #[test]
    fn backoff_doubles_in_a_row_and_resets_after_a_healthy_spell() {
        let t0 = Instant::now();
        let mut t = Tracker::new(T);
        t.on_probe(true, t0);
        assert_eq!(t.eject(t0), Some(Duration::from_secs(10)));
        t.on_probe(true, secs(t0, 10));
        t.on_probe(true, secs(t0, 11));
        assert_eq!(t.eject(secs(t0, 12)), Some(Duration::from_secs(20)));
        t.on_probe(true, secs(t0, 32));
        t.on_probe(true, secs(t0, 33));
        assert_eq!(t.eject(secs(t0, 34)), Some(Duration::from_secs(40)));
        // Healthy for as long as the last back-off: the next one starts over.
        t.on_probe(true, secs(t0, 74));
        t.on_probe(true, secs(t0, 75));
        t.on_probe(true, secs(t0, 75 + 40));
        assert_eq!(t.eject(secs(t0, 200)), Some(Duration::from_secs(10)));
    }

    #[test]
    fn a_failing_probe_after_the_backoff_means_unhealthy() {
        let t0 = Instant::now();
        let mut t = Tracker::new(T);
        t.on_probe(true, t0);
        t.eject(t0);
        // During the back-off, failures keep it ejected.
        assert_eq!(t.on_probe(false, secs(t0, 5)), None);
        assert_eq!(t.state(), EndpointState::Ejected);
        assert_eq!(
            t.on_probe(false, secs(t0, 11)),
            Some(EndpointState::Unhealthy)
        );
        assert_eq!(t.ejected_until(), None);
        t.on_probe(true, secs(t0, 13));
        assert_eq!(t.on_probe(true, secs(t0, 15)), Some(EndpointState::Healthy));
    }

    #[test]
    fn backoff_is_capped() {
        let mut t = Tracker::new(T);
        let mut at = Instant::now();
        t.on_probe(true, at);
        let mut last = Duration::ZERO;
        for _ in 0..12 {
            last = t.eject(at).unwrap();
            at += last;
            t.on_probe(true, at);
            t.on_probe(true, at + Duration::from_secs(1));
            at += Duration::from_secs(2);
        }
        assert_eq!(last, T.eject_max);
    }
}
