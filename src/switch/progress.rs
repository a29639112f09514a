//! A progressive rollout as a model's state keeps it ([`Rollout`]), and its
//! transitions as pure functions of [`ModelState`]: start, pause, resume,
//! abort, a step passed (the next step, or at the end the switch), a step
//! extended for want of requests, a step started over. Time and the actor
//! come in as arguments; `rollout.rs` decides when, the switchboard
//! persists the result before it takes effect.
//!
//! The rollout lives in the state, not in memory, so it is persisted like
//! the active pool (and, in etcd, shared by the fleet): the plan (the steps
//! as they were when it started), the step it is at, when that step ends,
//! and every verdict so far. Step numbers start at 1, as people count.
//!
//! Each transition the rollout task asks for names the step it judged
//! ([`StepRef`]): a step that moved on meanwhile (a pause, another
//! instance's verdict) makes it `Superseded`, never a double move.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ModelState, Split, SwitchError, SwitchReason, SwitchRecord, HISTORY_LEN};
use crate::config::{Percent, StepConfig, PERMILLE};
use crate::pool::PoolName;

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutPhase {
    /// A step is served and judged.
    Running,
    /// Held at its step: the split stays, the step's clock stops; a breach
    /// still aborts.
    Paused,
    /// Every step passed; the new pool is active.
    Completed,
    /// A step failed (or was inconclusive for too long), or someone
    /// aborted it: the split is gone.
    Aborted,
    /// A switch by hand (flip, activate, rollback) ended it.
    Cancelled,
}

impl RolloutPhase {
    /// Running or paused: it holds a split and takes calls.
    pub fn is_live(self) -> bool {
        matches!(self, RolloutPhase::Running | RolloutPhase::Paused)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Running => "running",
            RolloutPhase::Paused => "paused",
            RolloutPhase::Completed => "completed",
            RolloutPhase::Aborted => "aborted",
            RolloutPhase::Cancelled => "cancelled",
        }
    }
}

/// One step of the plan as the state keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    /// The new pool's share, in tenths of a percent.
    pub permille: u16,
    /// `None` only for the last step, 100 %: reaching it is the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// How a step was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepResult {
    Passed,
    /// Too few requests at the step's end: it was extended.
    Inconclusive,
    Aborted,
}

/// A verdict on one step, in one sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepVerdict {
    pub step: usize,
    pub permille: u16,
    pub result: StepResult,
    pub reason: String,
    pub at_unix_ms: u64,
}

/// A model's rollout, running or the last one that ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    #[serde(rename = "state")]
    pub phase: RolloutPhase,
    /// The pool rolled out to (the standby when it started).
    pub pool: PoolName,
    /// The pool active when it started.
    pub from: PoolName,
    pub actor: String,
    pub started_unix_ms: u64,
    pub steps: Vec<PlannedStep>,
    /// The current step (or the last one, once ended), from 1.
    pub step: usize,
    pub step_started_unix_ms: u64,
    /// Running: when the current step ends (extension included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_ends_unix_ms: Option<u64>,
    /// Paused: the time that was left in the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_ms: Option<u64>,
    /// The step ran out with too few requests and was extended.
    #[serde(default)]
    pub extended: bool,
    #[serde(default)]
    pub verdicts: Vec<StepVerdict>,
    /// Why it ended, when it did other than by completing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_unix_ms: Option<u64>,
}

/// The step a decision was made on: its number and when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepRef {
    pub step: usize,
    pub started_unix_ms: u64,
}

// === impl Rollout ===

impl Rollout {
    /// The step being served (or last served).
    pub fn current(&self) -> Option<PlannedStep> {
        self.steps.get(self.step.checked_sub(1)?).copied()
    }

    pub fn step_ref(&self) -> StepRef {
        StepRef {
            step: self.step,
            started_unix_ms: self.step_started_unix_ms,
        }
    }

    /// Time left in the step at `now_ms`: frozen while paused.
    pub fn left_ms(&self, now_ms: u64) -> Option<u64> {
        match self.phase {
            RolloutPhase::Running => self.step_ends_unix_ms.map(|e| e.saturating_sub(now_ms)),
            RolloutPhase::Paused => self.left_ms,
            _ => None,
        }
    }

    fn end(&mut self, phase: RolloutPhase, reason: Option<String>, now_ms: u64) {
        self.phase = phase;
        self.reason = reason;
        self.ended_unix_ms = Some(now_ms);
        self.step_ends_unix_ms = None;
        self.left_ms = None;
    }

    /// Starts step `step` (from 1) at `now_ms`.
    fn enter(&mut self, step: usize, now_ms: u64) {
        self.step = step;
        self.step_started_unix_ms = now_ms;
        self.extended = false;
        self.left_ms = None;
        self.step_ends_unix_ms = self
            .current()
            .and_then(|s| s.duration_ms)
            .map(|d| now_ms.saturating_add(d));
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// === impl ModelState ===

impl ModelState {
    /// The rollout running or paused, if any.
    pub fn live_rollout(&self) -> Option<&Rollout> {
        self.rollout.as_ref().filter(|r| r.phase.is_live())
    }

    /// Starts a rollout of the standby along `steps` at `now_ms`: the
    /// split becomes the first step's share. Refused while one is live.
    pub fn start_rollout(
        &self,
        model: &str,
        steps: &[StepConfig],
        now_ms: u64,
        actor: &str,
    ) -> Result<ModelState, SwitchError> {
        self.refuse_live(model)?;
        let steps: Vec<PlannedStep> = steps
            .iter()
            .map(|s| PlannedStep {
                permille: s.permille,
                duration_ms: s.duration.map(millis),
            })
            .collect();
        let pool = self.active.other();
        let mut rollout = Rollout {
            phase: RolloutPhase::Running,
            pool,
            from: self.active,
            actor: actor.to_string(),
            started_unix_ms: now_ms,
            steps,
            step: 1,
            step_started_unix_ms: now_ms,
            step_ends_unix_ms: None,
            left_ms: None,
            extended: false,
            verdicts: Vec::new(),
            reason: None,
            ended_unix_ms: None,
        };
        rollout.enter(1, now_ms);
        let Some(first) = rollout.current().filter(|s| s.duration_ms.is_some()) else {
            return Err(SwitchError::NoRollout {
                model: model.to_string(),
                why: "the rollout's first step has no duration".to_string(),
            });
        };
        let mut next = self.clone();
        next.split = Split::new(pool, first.permille);
        next.rollout = Some(rollout);
        Ok(next)
    }

    /// Holds the running rollout at its step.
    pub fn pause_rollout(&self, model: &str, now_ms: u64) -> Result<ModelState, SwitchError> {
        let mut next = self.clone();
        let r = next.live_mut(model, "pause", RolloutPhase::Running)?;
        r.left_ms = Some(r.left_ms(now_ms).unwrap_or(0));
        r.step_ends_unix_ms = None;
        r.phase = RolloutPhase::Paused;
        Ok(next)
    }

    /// Runs the paused rollout on, with the time its step had left.
    pub fn resume_rollout(&self, model: &str, now_ms: u64) -> Result<ModelState, SwitchError> {
        let mut next = self.clone();
        let r = next.live_mut(model, "resume", RolloutPhase::Paused)?;
        r.step_ends_unix_ms = Some(now_ms.saturating_add(r.left_ms.take().unwrap_or(0)));
        r.phase = RolloutPhase::Running;
        Ok(next)
    }

    /// Ends the live rollout and its split: back to 0 % on the new pool.
    /// With `expect`, only if the rollout is still at that step (a verdict
    /// of the rollout task); `verdict` records it as the step's.
    pub fn abort_rollout(
        &self,
        model: &str,
        expect: Option<StepRef>,
        reason: String,
        verdict: bool,
        now_ms: u64,
    ) -> Result<ModelState, SwitchError> {
        let mut next = self.clone();
        let r = next.live_mut(model, "abort", RolloutPhase::Running)?;
        if expect.is_some_and(|e| e != r.step_ref()) {
            return Err(superseded(model));
        }
        if verdict {
            let permille = r.current().map_or(0, |s| s.permille);
            r.verdicts.push(StepVerdict {
                step: r.step,
                permille,
                result: StepResult::Aborted,
                reason: reason.clone(),
                at_unix_ms: now_ms,
            });
        }
        r.end(RolloutPhase::Aborted, Some(reason), now_ms);
        next.split = None;
        Ok(next)
    }

    /// The step judged passed: on to the next step, or, after the last one
    /// (or before a last 100 % step without duration), the switch to the
    /// new pool, recorded in the history with reason `rollout`.
    pub fn pass_step(
        &self,
        model: &str,
        expect: StepRef,
        reason: String,
        now_ms: u64,
    ) -> Result<ModelState, SwitchError> {
        let mut next = self.clone();
        let r = next.live_mut(model, "advance", RolloutPhase::Running)?;
        if expect != r.step_ref() {
            return Err(superseded(model));
        }
        let permille = r.current().map_or(0, |s| s.permille);
        r.verdicts.push(StepVerdict {
            step: r.step,
            permille,
            result: StepResult::Passed,
            reason,
            at_unix_ms: now_ms,
        });
        let following = r.steps.get(r.step).copied();
        match following {
            Some(step) if step.duration_ms.is_some() => {
                let number = r.step + 1;
                r.enter(number, now_ms);
                next.split = Split::new(r.pool, step.permille);
                Ok(next)
            }
            // The last step, 100 % without duration, or past the last.
            Some(_) => {
                r.step += 1;
                next.complete_rollout(now_ms)
            }
            None => next.complete_rollout(now_ms),
        }
    }

    /// The switch that completes a rollout.
    fn complete_rollout(mut self, now_ms: u64) -> Result<ModelState, SwitchError> {
        let Some(r) = self.rollout.as_mut() else {
            return Ok(self);
        };
        let passed = r
            .verdicts
            .iter()
            .filter(|v| v.result == StepResult::Passed)
            .count();
        let record = SwitchRecord {
            from: self.active,
            to: r.pool,
            reason: SwitchReason::Rollout,
            at_unix_ms: now_ms,
            actor: r.actor.clone(),
            forced: false,
            note: Some(format!(
                "rollout completed: {passed} step(s) passed on the way to 100%"
            )),
            split: self.split,
        };
        self.active = r.pool;
        r.step = r.step.min(r.steps.len());
        r.end(RolloutPhase::Completed, None, now_ms);
        self.split = None;
        while self.history.len() >= HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(record.clone());
        self.last_switch = Some(record);
        Ok(self)
    }

    /// The step ended with too few requests: judged on for up to
    /// `extension` more, the verdict recorded as inconclusive.
    pub fn extend_step(
        &self,
        model: &str,
        expect: StepRef,
        reason: String,
        extension: Duration,
        now_ms: u64,
    ) -> Result<ModelState, SwitchError> {
        let mut next = self.clone();
        let r = next.live_mut(model, "extend", RolloutPhase::Running)?;
        if expect != r.step_ref() || r.extended {
            return Err(superseded(model));
        }
        let permille = r.current().map_or(0, |s| s.permille);
        r.verdicts.push(StepVerdict {
            step: r.step,
            permille,
            result: StepResult::Inconclusive,
            reason,
            at_unix_ms: now_ms,
        });
        r.extended = true;
        let ends = r.step_ends_unix_ms.unwrap_or(now_ms).max(now_ms);
        r.step_ends_unix_ms = Some(ends.saturating_add(millis(extension)));
        Ok(next)
    }

    /// The step starts over at `now_ms`, its full duration ahead: the
    /// figures it was judged on are gone (a restart, a reload).
    pub fn restart_step(
        &self,
        model: &str,
        expect: StepRef,
        now_ms: u64,
    ) -> Result<ModelState, SwitchError> {
        let mut next = self.clone();
        let r = next.live_mut(model, "restart", RolloutPhase::Running)?;
        if expect != r.step_ref() {
            return Err(superseded(model));
        }
        let step = r.step;
        r.enter(step, now_ms);
        Ok(next)
    }

    /// A switch by hand ends a live rollout: `why` says which.
    pub(super) fn cancel_rollout(&mut self, why: String, now_ms: u64) {
        if let Some(r) = self.rollout.as_mut().filter(|r| r.phase.is_live()) {
            r.end(RolloutPhase::Cancelled, Some(why), now_ms);
        }
    }

    pub(super) fn refuse_live(&self, model: &str) -> Result<(), SwitchError> {
        match self.live_rollout() {
            Some(r) => Err(SwitchError::RolloutLive {
                model: model.to_string(),
                phase: r.phase,
                step: r.step,
                steps: r.steps.len(),
            }),
            None => Ok(()),
        }
    }

    /// The live rollout, which must be in `phase` for `what`.
    fn live_mut(
        &mut self,
        model: &str,
        what: &str,
        phase: RolloutPhase,
    ) -> Result<&mut Rollout, SwitchError> {
        let why = match &self.rollout {
            None => "no rollout has been started".to_string(),
            Some(r) if !r.phase.is_live() => format!("the last rollout is {}", r.phase.as_str()),
            // Abort takes a paused rollout too.
            Some(r) if r.phase != phase && !(what == "abort" && r.phase.is_live()) => {
                format!("the rollout is {}", r.phase.as_str())
            }
            Some(_) => String::new(),
        };
        match self.rollout.as_mut() {
            Some(r) if why.is_empty() => Ok(r),
            _ => Err(SwitchError::NoRollout {
                model: model.to_string(),
                why: format!("cannot {what}: {why}"),
            }),
        }
    }
}

fn superseded(model: &str) -> SwitchError {
    SwitchError::Superseded {
        model: model.to_string(),
    }
}

/// `2 of 4 (25%)`: a step for a message.
pub fn describe_step(r: &Rollout) -> String {
    let permille = r.current().map_or(PERMILLE, |s| s.permille);
    format!("{} of {} ({})", r.step, r.steps.len(), Percent(permille))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::SwitchOp;

    const MODEL: &str = "iris";

    fn plan() -> Vec<StepConfig> {
        ["5%:30s", "25%:60s", "100%"]
            .iter()
            .map(|s| crate::config::parse_step(s).unwrap())
            .collect()
    }

    fn started() -> ModelState {
        ModelState::new(PoolName::Blue)
            .start_rollout(MODEL, &plan(), 1_000, "ci")
            .unwrap()
    }

    #[test]
    fn a_rollout_starts_at_its_first_step_and_refuses_a_second() {
        let s = started();
        assert_eq!(s.split, Split::new(PoolName::Green, 50));
        let r = s.live_rollout().unwrap();
        assert_eq!(
            (r.step, r.pool, r.from),
            (1, PoolName::Green, PoolName::Blue)
        );
        assert_eq!(r.step_ends_unix_ms, Some(31_000));
        assert!(matches!(
            s.start_rollout(MODEL, &plan(), 2_000, "ci"),
            Err(SwitchError::RolloutLive {
                step: 1,
                steps: 3,
                ..
            })
        ));
    }

    #[test]
    fn passing_steps_raises_the_weight_then_switches() {
        let s = started();
        let r1 = s.live_rollout().unwrap().step_ref();
        let s = s
            .pass_step(MODEL, r1, "step 1 passed".into(), 31_000)
            .unwrap();
        assert_eq!(s.split, Split::new(PoolName::Green, 250));
        let r = s.live_rollout().unwrap();
        assert_eq!((r.step, r.step_ends_unix_ms), (2, Some(91_000)));
        // The same verdict again: the step moved on, nothing happens twice.
        assert!(matches!(
            s.pass_step(MODEL, r1, "again".into(), 31_001),
            Err(SwitchError::Superseded { .. })
        ));
        let s = s
            .pass_step(MODEL, r.step_ref(), "step 2 passed".into(), 91_000)
            .unwrap();
        // "100%" has no duration: reaching it is the switch.
        assert_eq!((s.active, s.split), (PoolName::Green, None));
        let r = s.rollout.as_ref().unwrap();
        assert_eq!((r.phase, r.step), (RolloutPhase::Completed, 3));
        assert_eq!(r.verdicts.len(), 2);
        let last = s.last_switch.as_ref().unwrap();
        assert_eq!(
            (last.from, last.to, last.reason, last.split),
            (
                PoolName::Blue,
                PoolName::Green,
                SwitchReason::Rollout,
                Split::new(PoolName::Green, 250)
            )
        );
        assert_eq!(s.history.len(), 1);
        // A rollback of a completed rollout returns to the old pool whole.
        let back = s
            .apply(MODEL, SwitchOp::Rollback, 100_000, "ops")
            .unwrap()
            .unwrap();
        assert_eq!((back.active, back.split), (PoolName::Blue, None));
    }

    #[test]
    fn a_last_step_with_a_duration_is_served_then_switches() {
        let steps: Vec<StepConfig> = ["10%:10s", "100%:20s"]
            .iter()
            .map(|s| crate::config::parse_step(s).unwrap())
            .collect();
        let s = ModelState::new(PoolName::Green)
            .start_rollout(MODEL, &steps, 0, "ci")
            .unwrap();
        let r = s.live_rollout().unwrap().step_ref();
        let s = s.pass_step(MODEL, r, "ok".into(), 10_000).unwrap();
        assert_eq!(s.split, Split::new(PoolName::Blue, 1000));
        assert_eq!(s.active, PoolName::Green);
        let r = s.live_rollout().unwrap().step_ref();
        let s = s.pass_step(MODEL, r, "ok".into(), 30_000).unwrap();
        assert_eq!((s.active, s.split), (PoolName::Blue, None));
    }

    #[test]
    fn pause_freezes_the_time_left_and_resume_gives_it_back() {
        let s = started().pause_rollout(MODEL, 11_000).unwrap();
        let r = s.rollout.as_ref().unwrap();
        assert_eq!(
            (r.phase, r.left_ms, r.left_ms(99_999)),
            (RolloutPhase::Paused, Some(20_000), Some(20_000))
        );
        assert!(matches!(
            s.pause_rollout(MODEL, 12_000),
            Err(SwitchError::NoRollout { .. })
        ));
        let s = s.resume_rollout(MODEL, 50_000).unwrap();
        let r = s.rollout.as_ref().unwrap();
        assert_eq!(
            (r.phase, r.step_ends_unix_ms),
            (RolloutPhase::Running, Some(70_000))
        );
        assert_eq!(s.split, Split::new(PoolName::Green, 50), "the split stays");
    }

    #[test]
    fn an_abort_ends_the_split_and_keeps_the_verdict() {
        let s = started();
        let r = s.live_rollout().unwrap().step_ref();
        let s = s
            .abort_rollout(
                MODEL,
                Some(r),
                "step 1 aborted: green 5xx".into(),
                true,
                5_000,
            )
            .unwrap();
        assert_eq!((s.active, s.split), (PoolName::Blue, None));
        let r = s.rollout.as_ref().unwrap();
        assert_eq!(r.phase, RolloutPhase::Aborted);
        assert_eq!(r.verdicts[0].result, StepResult::Aborted);
        assert_eq!(r.reason.as_deref(), Some("step 1 aborted: green 5xx"));
        assert!(matches!(
            s.abort_rollout(MODEL, None, "again".into(), false, 6_000),
            Err(SwitchError::NoRollout { .. })
        ));
        // A new one may start.
        assert!(s.start_rollout(MODEL, &plan(), 7_000, "ci").is_ok());
        // A paused rollout can be aborted by hand.
        let paused = started().pause_rollout(MODEL, 2_000).unwrap();
        assert!(paused
            .abort_rollout(MODEL, None, "by ops".into(), false, 3_000)
            .is_ok());
    }

    #[test]
    fn an_inconclusive_step_is_extended_once() {
        let s = started();
        let r = s.live_rollout().unwrap().step_ref();
        let s = s
            .extend_step(
                MODEL,
                r,
                "inconclusive".into(),
                Duration::from_secs(60),
                31_000,
            )
            .unwrap();
        let rollout = s.live_rollout().unwrap();
        assert_eq!(rollout.step_ends_unix_ms, Some(91_000));
        assert!(rollout.extended);
        assert_eq!(rollout.verdicts[0].result, StepResult::Inconclusive);
        assert!(s
            .extend_step(MODEL, r, "again".into(), Duration::from_secs(60), 91_000)
            .is_err());
    }

    #[test]
    fn a_flip_during_a_rollout_cancels_it_and_a_rollback_returns_to_the_split() {
        let s = started();
        let s = s
            .apply(MODEL, SwitchOp::Flip { expect: None }, 2_000, "ops")
            .unwrap()
            .unwrap();
        assert_eq!((s.active, s.split), (PoolName::Green, None));
        let r = s.rollout.as_ref().unwrap();
        assert_eq!(r.phase, RolloutPhase::Cancelled);
        assert_eq!(r.reason.as_deref(), Some("superseded by a flip to green"));
        assert_eq!(
            s.last_switch.as_ref().unwrap().split,
            Split::new(PoolName::Green, 50)
        );
        let back = s
            .apply(MODEL, SwitchOp::Rollback, 3_000, "ops")
            .unwrap()
            .unwrap();
        assert_eq!(
            (back.active, back.split),
            (PoolName::Blue, Split::new(PoolName::Green, 50))
        );
        // The rollout stays cancelled: a rollback returns to the split, not the rollout.
        assert_eq!(back.live_rollout(), None);
    }

    #[test]
    fn restarting_a_step_gives_it_its_whole_duration() {
        let s = started();
        let r = s.live_rollout().unwrap().step_ref();
        let s = s.restart_step(MODEL, r, 500_000).unwrap();
        let r = s.live_rollout().unwrap();
        assert_eq!(
            (r.step, r.step_started_unix_ms, r.step_ends_unix_ms),
            (1, 500_000, Some(530_000))
        );
    }

    #[test]
    fn a_state_without_a_rollout_reads_as_before() {
        let old = r#"{"active":"blue","history":[],"last_switch":null}"#;
        let s: ModelState = serde_json::from_str(old).unwrap();
        assert_eq!((s.split, s.rollout.as_ref()), (None, None));
        let written = serde_json::to_string(&s).unwrap();
        assert!(
            !written.contains("split") && !written.contains("rollout"),
            "{written}"
        );
        let s = started();
        let round: ModelState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(round, s);
    }
}
