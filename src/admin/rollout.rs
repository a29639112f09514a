//! The admin side of progressive delivery: `POST /models/{name}/weight`
//! (the split set by hand), and `POST /models/{name}/rollout` with its
//! `pause`, `resume` and `abort`, and `GET /models/{name}/rollout`.
//!
//! Each call is one change through the switchboard (serialised, persisted
//! before it takes effect, run to its end once begun), then an event.

use std::sync::Arc;

use http::StatusCode;
use serde_json::Value;

use super::{json, to_completion, Admin, AdminError, AdminResponse, Query};
use crate::config::{parse_permille, PERMILLE};
use crate::events::{now_unix_ms, EventKind};
use crate::pool::PoolName;
use crate::rollout;
use crate::switch::{health_guard, Changed, ModelState, Split, SwitchError};

/// A rollout call other than start and status.
#[derive(Debug, Clone, Copy)]
pub(super) enum RolloutCall {
    Pause,
    Resume,
    Abort,
}

/// The split as the API shows it: `{"pool": "green", "percent": 10.0}`.
pub(super) fn split_json(split: Option<Split>) -> Value {
    split.map_or(
        Value::Null,
        |s| json!({ "pool": s.pool, "percent": s.percent() }),
    )
}

// === impl Admin ===

impl Admin {
    /// `POST /models/{name}/weight?green=10`: the share of new requests
    /// the named pool gets (0 to 100 in steps of 0.1; naming the active
    /// pool gives the standby the rest).
    pub(super) async fn weight(
        &self,
        name: &str,
        query: &Query<'_>,
        actor: &str,
    ) -> Result<AdminResponse, AdminError> {
        query.only(&["blue", "green", "force"])?;
        self.model(name)?;
        let force = query.flag("force")?;
        let asked: Vec<(PoolName, &str)> = PoolName::ALL
            .iter()
            .filter_map(|p| query.get(p.as_str()).map(|v| (*p, v)))
            .collect();
        let [(pool, value)] = asked[..] else {
            return Err(AdminError::BadQuery(
                "give the share of one pool, such as ?green=10 (percent of new requests, 0 to 100 in steps of 0.1)".to_string(),
            ));
        };
        let permille = parse_permille(value).ok_or_else(|| {
            AdminError::BadQuery(format!(
                "query parameter {:?} is {value:?}; expected a percentage from 0 to 100 in steps of 0.1, such as 10 or 2.5",
                pool.as_str()
            ))
        })?;
        let switchboard = Arc::clone(&self.switchboard);
        let (model, who) = (name.to_string(), actor.to_string());
        let changed = to_completion(async move {
            switchboard
                .change(&model, &who, |m, current| {
                    // Naming the active pool gives the standby the rest.
                    let standby = current.active.other();
                    let share = if pool == current.active {
                        PERMILLE - permille
                    } else {
                        permille
                    };
                    let split = Split::new(standby, share);
                    let next = current.with_split(&model, split)?;
                    if next.is_some() && split.is_some() {
                        // No share to a pool with no healthy endpoint.
                        health_guard(m, standby, force)?;
                    }
                    Ok(next)
                })
                .await
        })
        .await??;
        let (before, now) = (changed.before.split, changed.now().split);
        let active = changed.now().active;
        if changed.after.is_some() {
            self.events().record(EventKind::Weight {
                model: name.to_string(),
                pool: active.other(),
                percent: now.map_or(0.0, Split::percent),
                previous: before.map_or(0.0, Split::percent),
                actor: actor.to_string(),
                origin: None,
            });
        }
        Ok(json(
            StatusCode::OK,
            &json!({
                "model": name,
                "active": active,
                "standby": active.other(),
                "split": split_json(now),
                "previous": split_json(before),
                "changed": changed.after.is_some(),
            }),
        ))
    }

    /// `POST /models/{name}/rollout`: starts a rollout of the standby
    /// along the model's `[models.rollout]` steps.
    pub(super) async fn start_rollout(
        &self,
        name: &str,
        actor: &str,
    ) -> Result<AdminResponse, AdminError> {
        let model = self.model(name)?;
        let Some(config) = model.rollout_config() else {
            return Err(SwitchError::NoRolloutConfig {
                model: name.to_string(),
            }
            .into());
        };
        let steps = config.steps.clone();
        let changed = self
            .rollout_change(name, actor, move |m, current, model, actor| {
                let next = current.start_rollout(model, &steps, now_unix_ms(), actor)?;
                // The standby is about to take a share: the guard applies.
                health_guard(m, current.active.other(), false)?;
                Ok(next)
            })
            .await?;
        rollout::record(
            &self.switchboard,
            name,
            changed.now(),
            "started",
            actor,
            None,
        );
        Ok(self.rollout_answer(name, changed.now()))
    }

    /// `POST /models/{name}/rollout/pause|resume|abort`.
    pub(super) async fn rollout_call(
        &self,
        name: &str,
        call: RolloutCall,
        actor: &str,
    ) -> Result<AdminResponse, AdminError> {
        self.model(name)?;
        let by = actor.to_string();
        let changed = self
            .rollout_change(name, actor, move |_, current, model, _| {
                let now = now_unix_ms();
                match call {
                    RolloutCall::Pause => current.pause_rollout(model, now),
                    RolloutCall::Resume => current.resume_rollout(model, now),
                    RolloutCall::Abort => {
                        let reason = match current.live_rollout() {
                            Some(r) => {
                                format!("step {} aborted by {by}", crate::switch::describe_step(r))
                            }
                            None => format!("aborted by {by}"),
                        };
                        current.abort_rollout(model, None, reason, false, now)
                    }
                }
            })
            .await?;
        let state = changed.now();
        let (action, reason) = match call {
            RolloutCall::Pause => ("paused", None),
            RolloutCall::Resume => ("resumed", None),
            RolloutCall::Abort => (
                "aborted",
                state.rollout.as_ref().and_then(|r| r.reason.clone()),
            ),
        };
        rollout::record(&self.switchboard, name, state, action, actor, reason);
        Ok(self.rollout_answer(name, state))
    }

    /// `GET /models/{name}/rollout`.
    pub(super) async fn rollout_status(&self, name: &str) -> Result<AdminResponse, AdminError> {
        self.model(name)?;
        let state = self.switchboard.state(name).await;
        match state {
            Some(state) => Ok(self.rollout_answer(name, &state)),
            None => Err(SwitchError::UnknownModel(name.to_string()).into()),
        }
    }

    /// One change of the model's rollout, run to completion.
    async fn rollout_change<F>(
        &self,
        name: &str,
        actor: &str,
        decide: F,
    ) -> Result<Changed, AdminError>
    where
        F: FnOnce(
                &crate::switch::Model,
                &ModelState,
                &str,
                &str,
            ) -> Result<ModelState, SwitchError>
            + Send
            + 'static,
    {
        let switchboard = Arc::clone(&self.switchboard);
        let (model, who) = (name.to_string(), actor.to_string());
        let changed = to_completion(async move {
            switchboard
                .change(&model, &who, |m, current| {
                    decide(m, current, &model, &who).map(Some)
                })
                .await
        })
        .await??;
        Ok(changed)
    }

    /// The answer of every rollout call: the split and the rollout.
    fn rollout_answer(&self, name: &str, state: &ModelState) -> AdminResponse {
        let rollout = self.switchboard.model(name).map_or(Value::Null, |m| {
            rollout::status(&m, Some(state), now_unix_ms())
        });
        json(
            StatusCode::OK,
            &json!({
                "model": name,
                "active": state.active,
                "standby": state.active.other(),
                "split": split_json(state.split),
                "rollout": rollout,
            }),
        )
    }
}
