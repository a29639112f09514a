//! The admin side of validation: `POST /models/{name}/validate`, and the
//! validation a flip or activate runs first (`?validate=true`, or the
//! model's `validate_before_switch`).
//!
//! A validating switch checks the target pool before it takes the switch
//! lock (checks may take seconds; other writers must not wait), so the
//! switch must then go to the pool that was validated: a flip is made
//! conditional on the pool that was active when the target was chosen
//! (`expect`), and a switch that happened meanwhile turns it into a 409.
//! Rollback is never validated: it stays one instant call.

use http::StatusCode;

use super::{json, Admin, AdminError, AdminResponse};
use crate::events::EventKind;
use std::sync::Arc;

use crate::pool::{Pool, PoolName};
use crate::switch::{Model, SwitchError, SwitchOp};
use crate::validate::{self, Report};

/// A pool that passed validation, and the report.
pub(super) struct Validated {
    pub report: Report,
    /// The pool the checks ran against: the switch goes ahead only if the
    /// model still has this very pool (a reload may have replaced it).
    pub pool: Arc<Pool>,
}

impl Validated {
    /// The switch's condition: the validated pool is still the model's.
    pub fn still(&self) -> impl FnOnce(&Model) -> Result<(), SwitchError> + Send + 'static {
        let pool = Arc::clone(&self.pool);
        move |m: &Model| {
            if Arc::ptr_eq(m.pool(pool.name()), &pool) {
                Ok(())
            } else {
                Err(SwitchError::Replaced {
                    model: m.name().to_string(),
                    pool: pool.name(),
                    what: "validated",
                })
            }
        }
    }
}

// === impl Admin ===

impl Admin {
    /// `POST /models/{name}/validate?pool=`: runs the checks against `pool`
    /// (default: the standby) and answers 200 with the report, passed or
    /// not; the call succeeded, `passed` is the verdict.
    pub(super) async fn validate(
        &self,
        name: &str,
        pool: Option<&str>,
    ) -> Result<AdminResponse, AdminError> {
        let model = self.model(name)?;
        let pool = match pool {
            Some(p) => p.parse::<PoolName>()?,
            None => model.active_name().other(),
        };
        let report = self.run_checks(&model, pool).await?;
        Ok(json(StatusCode::OK, &json!(report)))
    }

    /// Validates the target of `op` when asked (`asked`, else the model's
    /// `validate_before_switch`) and returns the op to apply: for a flip,
    /// one that only switches from the pool active at validation. A failed
    /// validation is [`SwitchError::ValidationFailed`]; nothing switches.
    pub(super) async fn validated(
        &self,
        name: &str,
        op: SwitchOp,
        asked: Option<bool>,
    ) -> Result<(SwitchOp, Option<Validated>), AdminError> {
        let model = self.model(name)?;
        if !asked.unwrap_or_else(|| model.validate_before_switch()) {
            return Ok((op, None));
        }
        let active = model.active_name();
        let (target, op) = match op {
            // Refused as it is: answered now, not passed on unvalidated
            // (a switch meanwhile could make it go through).
            SwitchOp::Flip { expect: Some(e) } if e != active => {
                return Err(SwitchError::Unexpected {
                    model: name.to_string(),
                    expected: e,
                    active,
                }
                .into())
            }
            SwitchOp::Flip { .. } => (
                active.other(),
                SwitchOp::Flip {
                    expect: Some(active),
                },
            ),
            // Validated even when it is active now: a switch before the
            // lock is taken would make this activate move traffic.
            SwitchOp::Activate(pool) => (pool, op),
            SwitchOp::Rollback | SwitchOp::AutoRollback { .. } => return Ok((op, None)),
        };
        let report = self.run_checks(&model, target).await?;
        if !report.passed {
            return Err(SwitchError::ValidationFailed {
                model: name.to_string(),
                pool: target,
                report: Box::new(report),
            }
            .into());
        }
        let pool = Arc::clone(model.pool(target));
        Ok((op, Some(Validated { report, pool })))
    }

    /// Runs the model's checks against `pool` and records the verdict in
    /// the event log.
    async fn run_checks(&self, model: &Model, pool: PoolName) -> Result<Report, AdminError> {
        let report = validate::run(model, pool).await?;
        self.events().record(EventKind::Validation {
            model: model.name().to_string(),
            pool,
            passed: report.passed,
            report: json!(report),
        });
        Ok(report)
    }
}
