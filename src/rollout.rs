//! Progressive delivery: a rollout moves a share of a model's new requests
//! to its standby pool step by step (`[models.rollout] steps`), judges each
//! step in-process from the metrics the request path already keeps, and
//! moves on, or aborts back to 0 %. Never sees a request; the request path
//! only reads the split the switchboard stores (`switch/split.rs`).
//!
//! **Where things live.** The rollout is part of the model's state
//! ([`crate::switch::Rollout`]): the plan, the step, when it ends, every
//! verdict. Every move (start, the next step, the final switch, an abort)
//! is a change made through [`Switchboard::change`], so it is serialised,
//! persisted before it takes effect (in the state file, or in etcd for the
//! whole fleet), and published. This task holds only what cannot be
//! persisted: each pool's counters when this instance began judging the
//! step, and the figures since, which it publishes for status.
//!
//! **Judging a step.** Every `interval` the task reads both pools'
//! counters (`switchyard_requests_total` by class, and the buckets of
//! `switchyard_request_duration_seconds`,
//! `switchyard_response_first_byte_seconds` and
//! `switchyard_stream_event_gap_seconds`, as the watch reads them) and
//! diffs them with the step's start: the new pool's figures and the old
//! pool's over the same time, judged by `judge.rs`. Once the new pool has
//! served `min_requests` in the step, a breach aborts at once (also while
//! paused: the split still serves). At the step's end a judged step
//! passes; one with too few requests is extended once by `max_extension`,
//! and if it still has too few then, the rollout is aborted as
//! inconclusive: never a silent pass. A new pool whose endpoints are all
//! down or ejected (none in rotation) aborts the rollout at the next interval.
//!
//! **After a restart** (or a reload that rebuilt the model) a running
//! rollout starts its step over: the figures it was judged on were in
//! memory, so the step gets its whole duration again, judged from then on.
//! The split is served meanwhile as it was persisted. A paused rollout
//! stays paused. With etcd, the instance that restarts starts the step
//! over for the fleet.
//!
//! **A fleet** (etcd): every instance judges its own traffic, and the
//! first verdict committed wins; the others' find the step moved on
//! (`Superseded`) and follow.

mod judge;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::RolloutConfig;
use crate::events::{now_unix_ms, EventKind};
use crate::metrics::DURATION_BUCKETS;
use crate::pool::{Pool, PoolName};
use crate::switch::{
    describe_step, Model, ModelState, Rollout, RolloutPhase, Split, StepRef, SwitchError,
    Switchboard,
};
use crate::watch::{Histogram, Verdict};
use crate::ErrorChain;

pub use judge::{inconclusive, judge, passed, Figures, Human, Pair, PoolReading};

/// Who moves a rollout on, in the log and the events.
pub const ACTOR: &str = "rollout";

/// This instance's figures of the step being judged, published on the
/// model for status.
#[derive(Debug, Clone, Serialize)]
pub struct StepFigures {
    pub step: usize,
    /// When this instance began counting the step.
    pub since_unix_ms: u64,
    pub blue: PoolReading,
    pub green: PoolReading,
}

/// The rollout task's state; see the module docs.
pub struct Roller {
    switchboard: Arc<Switchboard>,
    tracked: BTreeMap<String, Tracked>,
}

/// One model with `[models.rollout]`, as the task follows it.
struct Tracked {
    model: Arc<Model>,
    config: RolloutConfig,
    /// When to judge next.
    next: Instant,
    run: Option<Run>,
}

/// The step this instance is judging.
struct Run {
    step: StepRef,
    /// Each pool's counters when it began, by `PoolName::index`.
    start: [Figures; 2],
    since_unix_ms: u64,
}

/// A move the task decided on, to make through the switchboard.
struct Act {
    model: Arc<Model>,
    step: StepRef,
    extension: Duration,
    action: Action,
}

enum Action {
    /// Start the step over (first sight after a restart or a reload).
    Restart,
    Pass(String),
    Extend(String),
    Abort(String),
}

// === impl Roller ===

impl Roller {
    pub fn new(switchboard: Arc<Switchboard>) -> Roller {
        Roller {
            switchboard,
            tracked: BTreeMap::new(),
        }
    }

    /// Runs rollouts until `token` is cancelled.
    pub async fn run(mut self, token: CancellationToken) {
        let mut switched = self.switchboard.subscribe();
        loop {
            let now = Instant::now();
            let mut acts = self.sync(now, now_unix_ms());
            acts.extend(self.evaluate(now, now_unix_ms()));
            let acted = !acts.is_empty();
            for act in acts {
                self.act(act).await;
            }
            if acted {
                // Learn of what was just changed at once.
                continue;
            }
            let next = self
                .tracked
                .values()
                .filter(|t| t.run.is_some())
                .map(|t| t.next)
                .min();
            tokio::select! {
                () = token.cancelled() => return,
                changed = switched.changed() => if changed.is_err() {
                    // The switchboard is gone: nothing can change any more.
                    return token.cancelled().await;
                },
                () = sleep_until(next) => {}
            }
        }
    }

    /// Follows the models the switchboard has now and their rollouts; a
    /// running rollout seen for the first time (after a restart, or a
    /// reload that rebuilt its model) starts its step over.
    fn sync(&mut self, now: Instant, now_ms: u64) -> Vec<Act> {
        let models = self.switchboard.models();
        let states = self.switchboard.states();
        self.tracked
            .retain(|name, t| models.get(name).is_some_and(|m| Arc::ptr_eq(m, &t.model)));
        let mut acts = Vec::new();
        for (name, model) in models.iter() {
            let Some(config) = model.rollout_config() else {
                continue;
            };
            let fresh = !self.tracked.contains_key(name);
            let t = self.tracked.entry(name.clone()).or_insert_with(|| Tracked {
                model: Arc::clone(model),
                config: config.clone(),
                next: now,
                run: None,
            });
            let Some(rollout) = states.get(name).and_then(ModelState::live_rollout) else {
                t.run = None;
                continue;
            };
            let step = rollout.step_ref();
            if t.run.as_ref().map(|r| r.step) == Some(step) {
                continue;
            }
            t.run = Some(Run {
                step,
                start: PoolName::ALL.map(|p| figures(model.pool(p))),
                since_unix_ms: now_ms,
            });
            t.next = now;
            if fresh && rollout.phase == RolloutPhase::Running {
                info!(model = %name, step = rollout.step, "rollout found running; its step starts over");
                acts.push(Act {
                    model: Arc::clone(model),
                    step,
                    extension: t.config.max_extension,
                    action: Action::Restart,
                });
            }
        }
        acts
    }

    /// Judges every model whose time has come; returns what to do.
    fn evaluate(&mut self, now: Instant, now_ms: u64) -> Vec<Act> {
        let states = self.switchboard.states();
        let mut acts = Vec::new();
        for (name, t) in self.tracked.iter_mut() {
            if t.next > now {
                continue;
            }
            let Some(rollout) = states.get(name).and_then(ModelState::live_rollout) else {
                continue;
            };
            if let Some(action) = t.judge(rollout, now, now_ms) {
                acts.push(Act {
                    model: Arc::clone(&t.model),
                    step: rollout.step_ref(),
                    extension: t.config.max_extension,
                    action,
                });
            }
        }
        acts
    }

    /// Makes one move through the switchboard, in its own task so that,
    /// once begun, it runs to its end even if shutdown comes; then logs it
    /// and records its event.
    async fn act(&self, act: Act) {
        let Act {
            model,
            step,
            extension,
            action,
        } = act;
        let name = model.name().to_string();
        let what = match &action {
            Action::Restart => "restarted",
            Action::Pass(_) => "step",
            Action::Extend(_) => "extended",
            Action::Abort(_) => "aborted",
        };
        let reason = match &action {
            Action::Restart => None,
            Action::Pass(r) | Action::Extend(r) | Action::Abort(r) => Some(r.clone()),
        };
        if let Action::Abort(reason) = &action {
            warn!(model = %name, step = step.step, reason = %reason, "rollout step failed; aborting to 0%");
        }
        let switchboard = Arc::clone(&self.switchboard);
        let judged = Arc::clone(&model);
        let task_name = name.clone();
        let result = tokio::spawn(async move {
            let name = task_name;
            switchboard
                .change(&name, ACTOR, |now_model, state| {
                    // A reload rebuilt the model since: its pools are not
                    // the ones judged, and the next sync starts over.
                    if !std::ptr::eq(now_model, &*judged) {
                        return Err(SwitchError::Superseded {
                            model: name.clone(),
                        });
                    }
                    let now = now_unix_ms();
                    match action {
                        Action::Restart => state.restart_step(&name, step, now),
                        Action::Pass(reason) => state.pass_step(&name, step, reason, now),
                        Action::Extend(reason) => {
                            state.extend_step(&name, step, reason, extension, now)
                        }
                        Action::Abort(reason) => {
                            state.abort_rollout(&name, Some(step), reason, true, now)
                        }
                    }
                    .map(Some)
                })
                .await
        })
        .await;
        let changed = match result {
            Ok(Ok(changed)) => changed,
            // The step moved on meanwhile (a call, another instance's
            // verdict, a reload): the next sync follows it.
            Ok(Err(SwitchError::Superseded { .. } | SwitchError::Conflict { .. })) => {
                debug!(model = %name, step = step.step, "rollout move not made: the step moved on");
                return;
            }
            Ok(Err(e)) => {
                error!(model = %name, step = step.step, error = %ErrorChain(&e), "rollout move failed");
                return;
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down.
            Err(_) => return,
        };
        let state = changed.now();
        let Some(rollout) = state.rollout.as_ref() else {
            return;
        };
        let action = match (what, rollout.phase) {
            ("step", RolloutPhase::Completed) => "completed",
            (what, _) => what,
        };
        if action != "aborted" {
            info!(
                model = %name,
                action,
                step = rollout.step,
                steps = rollout.steps.len(),
                split = %state.split.map_or_else(|| "none".to_string(), |s| s.to_string()),
                reason = reason.as_deref(),
                "rollout moved"
            );
        }
        record(&self.switchboard, &name, state, action, ACTOR, reason);
    }
}

// === impl Tracked ===

impl Tracked {
    /// Samples both pools, publishes the step's figures, and judges them.
    fn judge(&mut self, rollout: &Rollout, now: Instant, now_ms: u64) -> Option<Action> {
        let run = self.run.as_ref().filter(|r| r.step == rollout.step_ref())?;
        let interval = self.config.interval;
        self.next = now + interval;
        let current = PoolName::ALL.map(|p| figures(self.model.pool(p)));
        let step = PoolName::ALL.map(|p| current[p.index()].since(&run.start[p.index()]));
        let (new_pool, old_pool) = (rollout.pool, rollout.from);
        let pair = Pair {
            new: &step[new_pool.index()],
            old: &step[old_pool.index()],
            new_pool,
            old_pool,
        };
        self.model.publish_rollout_figures(StepFigures {
            step: rollout.step,
            since_unix_ms: run.since_unix_ms,
            blue: step[PoolName::Blue.index()].reading(DURATION_BUCKETS),
            green: step[PoolName::Green.index()].reading(DURATION_BUCKETS),
        });
        let n = rollout.step;
        let verdict = judge(&self.config, DURATION_BUCKETS, pair);
        if let Verdict::Breach(reason) = verdict {
            return Some(Action::Abort(format!("step {n} aborted: {reason}")));
        }
        // Every endpoint down or ejected: the split's share falls back to
        // the active pool and nothing more can be judged.
        let pool = self.model.pool(new_pool);
        if !pool.endpoints().iter().any(|e| e.is_serving()) {
            let endpoints: Vec<_> = pool
                .endpoints()
                .iter()
                .map(|e| (e.url().to_string(), e.state()))
                .collect();
            return Some(Action::Abort(format!(
                "step {n} aborted: {new_pool} has no endpoint in rotation ({}) after {}",
                crate::switch::describe_endpoints(&endpoints),
                passed(DURATION_BUCKETS, pair)
            )));
        }
        if rollout.phase != RolloutPhase::Running {
            return None;
        }
        if let Some(ends) = rollout.step_ends_unix_ms.filter(|e| *e > now_ms) {
            // Judge again at the step's end if that comes first.
            let left = Duration::from_millis(ends - now_ms);
            self.next = self.next.min(now + left);
            return None;
        }
        let ran = Duration::from_millis(now_ms.saturating_sub(rollout.step_started_unix_ms));
        let min = self.config.min_requests;
        let served = pair.new.counts.requests;
        match verdict {
            Verdict::Healthy => Some(Action::Pass(format!(
                "step {n} passed: {}",
                passed(DURATION_BUCKETS, pair)
            ))),
            _ if !rollout.extended => Some(Action::Extend(format!(
                "step {n} inconclusive: {}; extended by up to {}",
                inconclusive(new_pool, served, min, ran),
                Human(self.config.max_extension)
            ))),
            _ => Some(Action::Abort(format!(
                "step {n} aborted: inconclusive: {}, extension included; send more traffic, lower min_requests or lengthen the step",
                inconclusive(new_pool, served, min, ran)
            ))),
        }
    }
}

/// Records a rollout event for `state`'s rollout: `action` by `actor`.
pub fn record(
    switchboard: &Switchboard,
    model: &str,
    state: &ModelState,
    action: &'static str,
    actor: &str,
    reason: Option<String>,
) {
    let Some(r) = state.rollout.as_ref() else {
        return;
    };
    let percent = match r.phase {
        RolloutPhase::Completed => 100.0,
        _ => state.split.map_or(0.0, Split::percent),
    };
    switchboard.events().record(EventKind::Rollout {
        model: model.to_string(),
        action,
        pool: r.pool,
        step: r.step,
        steps: r.steps.len(),
        percent,
        actor: actor.to_string(),
        reason,
    });
}

/// A model's rollout as `GET /models/{name}` and `GET
/// /models/{name}/rollout` show it: the persisted rollout (`null` before
/// the first), the time left in its step, and this instance's figures of
/// the step.
pub fn status(model: &Model, state: Option<&ModelState>, now_ms: u64) -> Value {
    let Some(r) = state.and_then(|s| s.rollout.as_ref()) else {
        return Value::Null;
    };
    let weight = match r.phase {
        RolloutPhase::Completed => 100.0,
        _ => state.and_then(|s| s.split).map_or(0.0, Split::percent),
    };
    let figures = model
        .rollout_figures()
        .filter(|f| f.step == r.step && r.phase.is_live());
    let plan: Vec<Value> = r
        .steps
        .iter()
        .map(|s| json!({ "percent": f64::from(s.permille) / 10.0, "duration_ms": s.duration_ms }))
        .collect();
    let verdicts: Vec<Value> = r
        .verdicts
        .iter()
        .map(|v| {
            json!({
                "step": v.step,
                "percent": f64::from(v.permille) / 10.0,
                "result": v.result,
                "reason": v.reason,
                "at_unix_ms": v.at_unix_ms,
            })
        })
        .collect();
    json!({
        "state": r.phase,
        "pool": r.pool,
        "from": r.from,
        "actor": r.actor,
        "started_unix_ms": r.started_unix_ms,
        "step": r.step,
        "steps": r.steps.len(),
        "describe": describe_step(r),
        "weight": weight,
        "plan": plan,
        "step_started_unix_ms": r.step_started_unix_ms,
        "step_ends_unix_ms": r.step_ends_unix_ms,
        "left_ms": r.left_ms(now_ms),
        "extended": r.extended,
        "figures": figures.as_deref(),
        "verdicts": verdicts,
        "reason": r.reason,
        "ended_unix_ms": r.ended_unix_ms,
    })
}

/// A pool's counters now, from its metric handles.
fn figures(pool: &Pool) -> Figures {
    let metrics = pool.metrics();
    let histogram = |(buckets, observed): (Vec<u64>, u64)| Histogram { buckets, observed };
    Figures {
        counts: crate::watch::counts(pool),
        first_byte: histogram(metrics.first_byte_buckets()),
        event_gap: histogram(metrics.event_gap_buckets()),
        events: metrics.stream_events.get(),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
