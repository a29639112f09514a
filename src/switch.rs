//! The switch: per model, the `ArcSwap` naming the active pool, and the
//! control side that moves it (flip, activate, rollback), keeps the history
//! and persists the state file. Never sees a request.
//!
//! Readers (every request) do one `ArcSwap` load, which gives the active
//! pool and the split ([`Routing`], see `split.rs`), pick a pool and keep
//! its `Arc<Pool>` for the life of the request. Writers go through
//! [`Switchboard::change`] (a switch, [`Switchboard::switch`], is one kind
//! of change; setting the split and moving a rollout are others), which
//! serialises them on one async mutex and, in this order: decides the
//! change on a plain value ([`ModelState::apply`] and the rollout's
//! transitions in `progress.rs`), persists the new state through the
//! [`StateStore`] (the state file, or an etcd transaction that only
//! succeeds if no other instance switched the model first), stores the new
//! routing in the `ArcSwap`, then replies. Persist before store: once a
//! caller has seen "switched", a restart cannot undo it.
//!
//! A store shared by a fleet (etcd) also reports the switches other
//! instances made; [`Switchboard::learn`] applies them under the same lock
//! and through the same `ArcSwap` store as a local switch, logged, counted
//! and recorded as events alike.
//!
//! Every switch (and every reload) bumps a counter on a `watch` channel
//! ([`Switchboard::subscribe`]); the watch (`watch.rs`) wakes on it and reads
//! the published states to learn which model switched.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::{CheckConfig, ModelConfig, RolloutConfig, Sticky, UpstreamSettings};
use crate::events::{now_unix_ms, EventKind, Events};
use crate::health::EndpointState;
use crate::metrics::{Metrics, ModelMetrics};
use crate::pool::{Pool, PoolName};
use crate::rollout::StepFigures;
use crate::shadow::Shadow;
use crate::validate::Report;
use crate::watch::WatchReport;

mod control;
mod learn;
mod progress;
mod split;

pub use crate::store::StateError;
use crate::store::{Commit, CommitError, StateStore, StoreStatus, Stored};
pub use control::Control;
pub use learn::{Followed, Learned};
pub use progress::{
    describe_step, PlannedStep, Rollout, RolloutPhase, StepRef, StepResult, StepVerdict,
};
pub use split::{fnv1a, sticky_bucket, sticky_key, Routing, Split};

/// How many past switches a model remembers (and so how far rollback goes).
pub const HISTORY_LEN: usize = 16;

/// One model: its route, its two pools and the pointer to the active one.
pub struct Model {
    name: Arc<str>,
    path_prefix: String,
    host: Option<String>,
    request_timeout: Duration,
    failover: bool,
    max_body_bytes: u64,
    max_in_flight: usize,
    /// Requests admitted and not finished, across both pools.
    in_flight: AtomicUsize,
    pools: [Arc<Pool>; 2],
    /// The active pool and the split: what a request loads.
    routing: ArcSwap<Routing>,
    /// While a split is on, what keeps a user on one pool.
    sticky: Option<Sticky>,
    metrics: ModelMetrics,
    /// The watch of the last watched switch, published by the watch task
    /// for status readers; `None` until a switch of this model is watched.
    watch: ArcSwapOption<WatchReport>,
    /// This instance's figures of the rollout step being judged, published
    /// by the rollout task for status.
    rollout_figures: ArcSwapOption<StepFigures>,
    /// Mirroring to the standby, with what it has seen so far.
    shadow: Option<Arc<Shadow>>,
    /// What it was built from; a reload compares against it.
    config: ModelConfig,
    upstream: UpstreamSettings,
}

// === impl Model ===

impl Model {
    /// Builds the model and its two pools from its config, with `active`
    /// serving first.
    pub fn new(
        config: &ModelConfig,
        active: PoolName,
        upstream: &UpstreamSettings,
        metrics: &Metrics,
    ) -> Model {
        Model::rebuild(config, active, upstream, metrics, None).0
    }

    /// Builds the model from its config, reusing the pools of `old` whose
    /// config (and the upstream settings) did not change, so they keep their
    /// connections, health and in-flight requests. Also returns the pools it
    /// built anew, which have not been probed yet.
    pub fn rebuild(
        config: &ModelConfig,
        active: PoolName,
        upstream: &UpstreamSettings,
        metrics: &Metrics,
        old: Option<&Model>,
    ) -> (Model, Vec<Arc<Pool>>) {
        let name: Arc<str> = config.name.as_str().into();
        let mut built = Vec::new();
        // Indexed by `PoolName::index`.
        let pools = PoolName::ALL.map(|p| {
            let reusable = old.filter(|old| old.keeps_pool(config, upstream, p));
            match reusable {
                Some(old) => Arc::clone(old.pool(p)),
                None => {
                    let pool = Arc::new(Pool::new(
                        Arc::clone(&name),
                        p,
                        config.pool(p),
                        upstream,
                        metrics,
                    ));
                    built.push(Arc::clone(&pool));
                    pool
                }
            }
        });
        // Unchanged shadow settings keep their counts across a reload.
        let shadow = config.shadow.as_ref().map(|settings| {
            let kept = old
                .and_then(|old| old.shadow.as_ref())
                .filter(|s| s.config() == settings);
            match kept {
                Some(shadow) => Arc::clone(shadow),
                None => Arc::new(Shadow::new(settings.clone(), metrics.shadow(&config.name))),
            }
        });
        let model = Model {
            routing: ArcSwap::from_pointee(Routing::new(
                Arc::clone(&pools[active.index()]),
                Arc::clone(&pools[active.other().index()]),
                None,
            )),
            sticky: config.sticky.clone(),
            config: config.clone(),
            upstream: *upstream,
            name,
            path_prefix: config.path_prefix.clone(),
            host: config.host.clone(),
            request_timeout: config.request_timeout,
            failover: config.failover,
            max_body_bytes: config.max_body_bytes,
            max_in_flight: config.max_in_flight,
            in_flight: AtomicUsize::new(0),
            pools,
            metrics: metrics.model(&config.name),
            watch: ArcSwapOption::empty(),
            rollout_figures: ArcSwapOption::empty(),
            shadow,
        };
        model.publish_active(active);
        (model, built)
    }

    /// Whether a model [`Model::rebuild`] builds from `config` (with
    /// `upstream`) and this one keeps this one's pool `p`.
    pub fn keeps_pool(
        &self,
        config: &ModelConfig,
        upstream: &UpstreamSettings,
        p: PoolName,
    ) -> bool {
        self.upstream == *upstream && self.config.pool(p).same_as(config.pool(p))
    }

    /// Whether `config` (with `upstream`) is exactly what this model runs.
    pub fn runs(&self, config: &ModelConfig, upstream: &UpstreamSettings) -> bool {
        self.upstream == *upstream && self.config.same_as(config)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path_prefix(&self) -> &str {
        &self.path_prefix
    }

    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// How long an upstream may take to send response headers.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Request bodies larger than this are refused.
    pub fn max_body_bytes(&self) -> u64 {
        self.max_body_bytes
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Counts a request against `max_in_flight` until the returned guard
    /// drops; `None` when the model is at its cap.
    pub fn admit(self: &Arc<Self>) -> Option<Admission> {
        // Relaxed: a counter, ordering nothing else.
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Admission(Arc::clone(self)))
    }

    /// Whether the standby serves when the active pool has no endpoint in rotation.
    pub fn failover(&self) -> bool {
        self.failover
    }

    /// Mirroring to the standby, if configured.
    #[inline]
    pub fn shadow(&self) -> Option<&Arc<Shadow>> {
        self.shadow.as_ref()
    }

    /// Whether `x-switchyard-pool` on the main listener picks the pool.
    pub fn preview_header(&self) -> bool {
        self.config.preview_header
    }

    /// `[models.watch]`: whether and how switches of this model are watched.
    pub fn watch_config(&self) -> Option<&crate::config::WatchConfig> {
        self.config.watch.as_ref()
    }

    /// The latest watch of this model, for status.
    pub fn watch_report(&self) -> Option<Arc<WatchReport>> {
        self.watch.load_full()
    }

    /// Publishes the state of this model's watch (the watch task only).
    pub(crate) fn publish_watch(&self, report: WatchReport) {
        self.watch.store(Some(Arc::new(report)));
    }

    /// `[models.rollout]`: the steps and limits of a progressive rollout.
    pub fn rollout_config(&self) -> Option<&RolloutConfig> {
        self.config.rollout.as_ref()
    }

    /// The header or cookie that keeps a user on one pool during a split.
    pub fn sticky(&self) -> Option<&Sticky> {
        self.sticky.as_ref()
    }

    /// The figures of the rollout step being judged, for status.
    pub fn rollout_figures(&self) -> Option<Arc<StepFigures>> {
        self.rollout_figures.load_full()
    }

    /// Publishes the figures of the step being judged (the rollout task only).
    pub(crate) fn publish_rollout_figures(&self, figures: StepFigures) {
        self.rollout_figures.store(Some(Arc::new(figures)));
    }

    /// The `[[models.validate]]` checks a pool must pass before a switch to it.
    pub fn checks(&self) -> &[CheckConfig] {
        &self.config.validate
    }

    /// Whether flip and activate validate their target unless told not to.
    pub fn validate_before_switch(&self) -> bool {
        self.config.validate_before_switch
    }

    /// The other pool of this model than `pool`.
    pub fn standby_of(&self, pool: &Pool) -> &Arc<Pool> {
        &self.pools[pool.name().other().index()]
    }

    pub fn pool(&self, name: PoolName) -> &Arc<Pool> {
        &self.pools[name.index()]
    }

    /// The pool for a request with `headers`, and the active pool's name:
    /// the one read of switch state a request makes (one `ArcSwap` load;
    /// without a split, the active pool). Keep the returned `Arc` for the
    /// whole request so it finishes on this pool.
    #[inline]
    pub fn route(&self, headers: &HeaderMap) -> (Arc<Pool>, PoolName) {
        // A guard, not `load_full`: held only to clone the pool picked.
        let routing = self.routing.load();
        let pool = routing.pick(self.sticky.as_ref(), headers);
        (Arc::clone(pool), routing.active().name())
    }

    /// The active pool (for status and the control side; a request asks
    /// [`Model::route`], which also applies the split).
    #[inline]
    pub fn active(&self) -> Arc<Pool> {
        Arc::clone(self.routing.load().active())
    }

    pub fn active_name(&self) -> PoolName {
        self.routing.load().active().name()
    }

    /// The split being served, if any.
    pub fn split(&self) -> Option<Split> {
        self.routing.load().split()
    }

    /// Serves `active`, with `split` of new requests to the standby. In
    /// switchyard only the switchboard (and the start, and a reload) calls
    /// it, after persisting; public for benches and tests that need a split
    /// without a switchboard.
    pub fn store_routing(&self, active: PoolName, split: Option<Split>) {
        self.routing.store(Arc::new(Routing::new(
            Arc::clone(&self.pools[active.index()]),
            Arc::clone(&self.pools[active.other().index()]),
            split,
        )));
        self.publish_active(active);
    }

    fn publish_active(&self, active: PoolName) {
        for p in &self.pools {
            p.metrics().active.set(i64::from(p.name() == active));
        }
    }
}

/// One request counted against its model's `max_in_flight`; rides in the
/// response body with the pool's in-flight guard.
pub struct Admission(Arc<Model>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What kind of switch happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchReason {
    Flip,
    Activate,
    Rollback,
    /// The watch undid a switch whose new pool breached a limit.
    AutoRollback,
    /// A progressive rollout passed its steps and reached 100 %.
    Rollout,
}

impl fmt::Display for SwitchReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SwitchReason::Flip => "flip",
            SwitchReason::Activate => "activate",
            SwitchReason::Rollback => "rollback",
            SwitchReason::AutoRollback => "auto_rollback",
            SwitchReason::Rollout => "rollout",
        })
    }
}

/// A switch asked for by an admin call or the watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchOp {
    /// Make the standby active; with `expect`, only if `expect` is active now.
    Flip { expect: Option<PoolName> },
    /// Make this pool active; a no-op when it already is.
    Activate(PoolName),
    /// Return to the pool active before the last switch.
    Rollback,
    /// The watch's rollback: undo `undo`, only if it is still the last
    /// switch (so a newer switch, or a reload, is never undone by a watch of
    /// an older one). `note` says why; it is kept on the record.
    AutoRollback { undo: SwitchRecord, note: String },
}

/// One switch, as kept in the history and the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchRecord {
    pub from: PoolName,
    pub to: PoolName,
    pub reason: SwitchReason,
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// Who asked: the admin client's address.
    pub actor: String,
    /// The target pool had no healthy endpoint and the caller overrode the
    /// guard with `force`.
    #[serde(default)]
    pub forced: bool,
    /// Why, in words, where the kind alone does not say: an automatic
    /// rollback's breached limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The split as it was before the switch, which ended it: a rollback
    /// of this switch returns to it (not of a rollout's, which undoes the
    /// rollout whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
}

/// The switch state of one model as a plain value: the sans-io core that
/// [`Switchboard`] applies ops to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelState {
    pub active: PoolName,
    /// Oldest first; rollback pops the newest.
    #[serde(default)]
    pub history: VecDeque<SwitchRecord>,
    /// The newest switch of any kind, rollbacks included.
    #[serde(default)]
    pub last_switch: Option<SwitchRecord>,
    /// The newest automatic rollback; kept when later switches push it out
    /// of `last_switch` (a rollback is not kept in the history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_auto_rollback: Option<SwitchRecord>,
    /// The share of new requests sent to the standby; `None`: all to the
    /// active pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    /// The rollout running, or the last one (for its verdicts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// Why a switch was refused.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("no model named {0:?}; see GET /models")]
    UnknownModel(String),
    #[error(
        "model {model:?}: expected {expected} to be active, but {active} is; nothing switched"
    )]
    Unexpected {
        model: String,
        expected: PoolName,
        active: PoolName,
    },
    #[error("model {model:?}: nothing to roll back to; no switch is recorded")]
    NoHistory { model: String },
    /// An automatic rollback found that the switch it was to undo is no
    /// longer the last one: someone switched since.
    #[error("model {model:?}: the switch to undo is no longer the last one; nothing switched")]
    Superseded { model: String },
    /// A reload replaced a pool between the decision and the switch.
    #[error("model {model:?}: a reload replaced pool {pool} since it was {what}; nothing switched; {what} it again")]
    Replaced {
        model: String,
        pool: PoolName,
        /// `validated` or `judged`.
        what: &'static str,
    },
    #[error("model {model:?}: pool {pool} has no healthy endpoint ({}); nothing switched; add ?force=true to switch anyway", describe_endpoints(.endpoints))]
    Unhealthy {
        model: String,
        pool: PoolName,
        /// Each endpoint's URL and state.
        endpoints: Vec<(String, EndpointState)>,
    },
    #[error("model {model:?}: pool {pool} failed validation ({} of {} check(s) failed); nothing switched; see \"validation\", or add ?validate=false to switch anyway", .report.failed(), .report.checks.len())]
    ValidationFailed {
        model: String,
        pool: PoolName,
        /// Every check's result; rides in the 409 answer.
        report: Box<Report>,
    },
    #[error("model {model:?}: cannot persist the switch; nothing switched")]
    Persist {
        model: String,
        #[source]
        source: StateError,
    },
    /// The shared store (etcd) cannot be reached or refused the write.
    #[error("model {model:?}: state store unavailable ({reason}); nothing switched; every instance keeps serving the pools it knows; see \"state_store\" in GET /models")]
    StoreUnavailable { model: String, reason: String },
    /// The write to the shared store went out but no answer came back.
    #[error("model {model:?}: state store unavailable ({reason}); the switch may or may not have been recorded: GET /models/{model} shows it once the store answers again")]
    StoreUncertain { model: String, reason: String },
    /// A rollout call that the model's rollout does not allow now.
    #[error("model {model:?}: {why}; see GET /models/{model}/rollout")]
    NoRollout { model: String, why: String },
    /// A change a live rollout would not survive as planned.
    #[error("model {model:?}: a rollout is {} (step {step} of {steps}); abort it first (POST /models/{model}/rollout/abort)", .phase.as_str())]
    RolloutLive {
        model: String,
        phase: RolloutPhase,
        step: usize,
        steps: usize,
    },
    #[error("model {model:?} has no [models.rollout] in its config; add its steps and limits, then reload")]
    NoRolloutConfig { model: String },
    /// Another instance switched the model since this one last saw it; this
    /// instance now serves what the store holds.
    #[error("model {model:?}: switched by another instance first; {active} is active now; nothing switched; check the state and try again")]
    Conflict {
        model: String,
        active: PoolName,
        /// The state in the store, which this instance now follows.
        state: Box<ModelState>,
        /// The store's revision of it.
        revision: u64,
    },
}

pub(crate) fn describe_endpoints(endpoints: &[(String, EndpointState)]) -> String {
    let parts: Vec<String> = endpoints
        .iter()
        .map(|(url, state)| format!("{url} {state}"))
        .collect();
    parts.join(", ")
}

/// What a switch call did.
#[derive(Debug, Clone)]
pub struct SwitchOutcome {
    pub model: String,
    pub from: PoolName,
    pub active: PoolName,
    /// False for an `activate` of the pool already active.
    pub switched: bool,
}

// === impl ModelState ===

impl ModelState {
    pub fn new(active: PoolName) -> ModelState {
        ModelState {
            active,
            history: VecDeque::new(),
            last_switch: None,
            last_auto_rollback: None,
            split: None,
            rollout: None,
        }
    }

    /// The state with `split` of new requests to the standby (`None`: no
    /// split); `Ok(None)` when that is already so. Refused while a rollout
    /// is live: it owns the split.
    pub fn with_split(
        &self,
        model: &str,
        split: Option<Split>,
    ) -> Result<Option<ModelState>, SwitchError> {
        let split = split.filter(|s| s.pool != self.active);
        if split == self.split {
            return Ok(None);
        }
        self.refuse_live(model)?;
        let mut next = self.clone();
        next.split = split;
        Ok(Some(next))
    }

    /// Applies `op` at time `now_ms` on behalf of `actor`. `Ok(None)` means
    /// nothing changes; `Ok(Some(next))` is the state after the switch.
    pub fn apply(
        &self,
        model: &str,
        op: SwitchOp,
        now_ms: u64,
        actor: &str,
    ) -> Result<Option<ModelState>, SwitchError> {
        self.apply_checked(model, op, now_ms, actor, |_| Ok(false))
    }

    /// [`ModelState::apply`] with a guard on the target pool: `guard(to)`
    /// refuses the switch with an error, or allows it and says whether the
    /// caller had to force it (recorded in the history).
    pub fn apply_checked(
        &self,
        model: &str,
        op: SwitchOp,
        now_ms: u64,
        actor: &str,
        guard: impl FnOnce(PoolName) -> Result<bool, SwitchError>,
    ) -> Result<Option<ModelState>, SwitchError> {
        let mut note = None;
        // A rollback returns to the split the undone switch ended.
        let mut restore = None;
        let (to, reason) = match op {
            SwitchOp::Flip { expect } => {
                if let Some(expected) = expect.filter(|e| *e != self.active) {
                    return Err(SwitchError::Unexpected {
                        model: model.to_string(),
                        expected,
                        active: self.active,
                    });
                }
                (self.active.other(), SwitchReason::Flip)
            }
            // Activating the active pool ends a split (and a rollout), and
            // switches nothing.
            SwitchOp::Activate(pool) if pool == self.active => {
                if self.split.is_none() && self.live_rollout().is_none() {
                    return Ok(None);
                }
                let mut next = self.clone();
                next.split = None;
                next.cancel_rollout(format!("ended by an activate of {pool}"), now_ms);
                return Ok(Some(next));
            }
            SwitchOp::Activate(pool) => (pool, SwitchReason::Activate),
            SwitchOp::Rollback => {
                let Some(last) = self.history.back() else {
                    return Err(SwitchError::NoHistory {
                        model: model.to_string(),
                    });
                };
                restore = last.split.filter(|_| last.reason != SwitchReason::Rollout);
                (last.from, SwitchReason::Rollback)
            }
            SwitchOp::AutoRollback { undo, note: why } => {
                if self.last_switch.as_ref() != Some(&undo) || self.active != undo.to {
                    return Err(SwitchError::Superseded {
                        model: model.to_string(),
                    });
                }
                note = Some(why);
                restore = undo.split.filter(|_| undo.reason != SwitchReason::Rollout);
                (undo.from, SwitchReason::AutoRollback)
            }
        };
        let forced = guard(to)?;
        let record = SwitchRecord {
            from: self.active,
            to,
            reason,
            at_unix_ms: now_ms,
            actor: actor.to_string(),
            forced,
            note,
            split: self.split,
        };
        let mut next = self.clone();
        next.active = to;
        next.split = restore.filter(|s| s.pool != to);
        next.cancel_rollout(format!("superseded by a {reason} to {to}"), now_ms);
        if reason == SwitchReason::AutoRollback {
            // The switch undone is the newest in the history (checked
            // above: it is the last switch, and rollbacks are not kept).
            next.history.pop_back();
            next.last_auto_rollback = Some(record.clone());
        } else if reason == SwitchReason::Rollback {
            next.history.pop_back();
        } else {
            // `while`: a hand-edited state file may hold more.
            while next.history.len() >= HISTORY_LEN {
                next.history.pop_front();
            }
            next.history.push_back(record.clone());
        }
        next.last_switch = Some(record);
        Ok(Some(next))
    }
}

/// The control side: every model's switch state, serialised writers, and
/// the store they persist to.
pub struct Switchboard {
    /// Replaced whole by a reload; read by the admin API.
    models: ArcSwap<BTreeMap<String, Arc<Model>>>,
    /// Held across decide, persist, store: a tokio mutex because the store
    /// write is awaited while holding it, so two writers can never persist
    /// out of order, and a change another instance made is applied between
    /// two switches, never in the middle of one. The request path never
    /// touches it.
    control: tokio::sync::Mutex<Control>,
    /// A copy of the states as of the last write, for readers (the admin
    /// API's status calls), who so never wait behind a writer.
    published: ArcSwap<BTreeMap<String, ModelState>>,
    /// Bumped after every switch and reload, once `published` shows it:
    /// wakes the watch task, which then reads `published`. A `watch`
    /// channel, so a slow reader sees the latest and nothing queues up.
    switched: tokio::sync::watch::Sender<u64>,
    store: Arc<dyn StateStore>,
    /// Every switch is recorded here once it has taken effect.
    events: Events,
}

// === impl Switchboard ===

impl Switchboard {
    /// Builds the switchboard from the models (already pointing at their
    /// starting pool) and their starting states, then saves the states, so
    /// a path that cannot be written fails the start, not the first flip.
    pub async fn start(
        models: Vec<Arc<Model>>,
        control: Control,
        store: Arc<dyn StateStore>,
        events: Events,
    ) -> Result<Switchboard, StateError> {
        store.save_all(&control.all()).await?;
        Ok(Switchboard {
            models: ArcSwap::from_pointee(by_name(models)),
            published: ArcSwap::from_pointee(control.states()),
            control: tokio::sync::Mutex::new(control),
            switched: tokio::sync::watch::Sender::new(0),
            store,
            events,
        })
    }

    /// The event log switches are recorded in.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// How the state store stands.
    pub fn store_status(&self) -> StoreStatus {
        self.store.status()
    }

    /// Every model, by name, as of now.
    pub fn models(&self) -> Arc<BTreeMap<String, Arc<Model>>> {
        self.models.load_full()
    }

    pub fn model(&self, name: &str) -> Option<Arc<Model>> {
        self.models.load().get(name).cloned()
    }

    /// Changes each time a switch or reload has been published.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.switched.subscribe()
    }

    /// Every model's switch state as of the last write; never waits.
    pub fn states(&self) -> Arc<BTreeMap<String, ModelState>> {
        self.published.load_full()
    }

    /// Takes the writers' lock, for a reload: no switch runs until the
    /// guard drops.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, Control> {
        self.control.lock().await
    }

    /// Replaces the models and their states (under the guard from
    /// [`Switchboard::lock`]): persists the states first, then swaps the
    /// models in. On a persist error nothing changes.
    pub async fn install(
        &self,
        control: &mut tokio::sync::MutexGuard<'_, Control>,
        models: Vec<Arc<Model>>,
        states: BTreeMap<String, ModelState>,
    ) -> Result<(), StateError> {
        let mut next = Control::default();
        for (name, state) in states {
            let revision = control.revision(&name);
            next.models.insert(name, Stored { state, revision });
        }
        if self.store.is_shared() {
            // A model this config no longer has stays in the store for the
            // instances that still serve it.
            for (name, stored) in control.all() {
                if !next.models.contains_key(&name) {
                    next.others.insert(name, stored);
                }
            }
        }
        self.store.save_all(&next.all()).await?;
        self.models.store(Arc::new(by_name(models)));
        self.published.store(Arc::new(next.states()));
        **control = next;
        self.switched.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The switch state of one model (history, last switch).
    /// Never waits for a writer: a switch or reload in progress shows once
    /// it is done.
    pub async fn state(&self, name: &str) -> Option<ModelState> {
        self.published.load().get(name).cloned()
    }

    /// Applies one switch: decide, persist, store, log. The target pool must
    /// have a healthy endpoint unless `force` is set.
    pub async fn switch(
        &self,
        name: &str,
        op: SwitchOp,
        force: bool,
        actor: &str,
    ) -> Result<SwitchOutcome, SwitchError> {
        self.switch_if(name, op, force, actor, |_| Ok(())).await
    }

    /// [`Switchboard::switch`], only if `still(model)` holds of the model as
    /// it is under the writers' lock: for a switch decided on what a model
    /// looked like earlier (a validated pool, a judged pool), which a reload
    /// since may have replaced.
    pub async fn switch_if(
        &self,
        name: &str,
        op: SwitchOp,
        force: bool,
        actor: &str,
        still: impl FnOnce(&Model) -> Result<(), SwitchError>,
    ) -> Result<SwitchOutcome, SwitchError> {
        let changed = self
            .change(name, actor, |model, current| {
                still(model)?;
                let guard = |to: PoolName| health_guard(model, to, force);
                let next = current.apply_checked(name, op, now_unix_ms(), actor, guard)?;
                // A split a rollback returns to goes to a pool that must
                // still have a healthy endpoint, as a switch's target must.
                Ok(next.map(|mut next| {
                    if let Some(split) = next.split {
                        if !force && model.pool(split.pool).healthy_count() == 0 {
                            warn!(model = name, pool = %split.pool, "not returning to the split: its pool has no healthy endpoint");
                            next.split = None;
                        }
                    }
                    next
                }))
            })
            .await?;
        Ok(SwitchOutcome {
            model: name.to_string(),
            from: changed.before.active,
            active: changed
                .after
                .as_ref()
                .map_or(changed.before.active, |a| a.active),
            switched: changed.switched(),
        })
    }

    /// Sets the share of new requests sent to the standby (`None`, or a
    /// split naming the active pool: none). A share for a pool with no
    /// healthy endpoint is refused unless `force`, as a switch to it is.
    pub async fn set_split(
        &self,
        name: &str,
        split: Option<Split>,
        force: bool,
        actor: &str,
    ) -> Result<Changed, SwitchError> {
        self.change(name, actor, |model, current| {
            if let Some(split) = split.filter(|s| s.pool != current.active) {
                health_guard(model, split.pool, force)?;
            }
            current.with_split(name, split)
        })
        .await
    }

    /// Applies one change of a model's state under the writers' lock:
    /// `decide` gets the model and its state as they are now and returns
    /// the next state (`None`: nothing to change), which is persisted, then
    /// served (the routing stored), then published. A change that switches
    /// the active pool is logged, counted and recorded as a switch event;
    /// other events are the caller's to record once this returns.
    pub async fn change(
        &self,
        name: &str,
        actor: &str,
        decide: impl FnOnce(&Model, &ModelState) -> Result<Option<ModelState>, SwitchError>,
    ) -> Result<Changed, SwitchError> {
        let mut control = self.control.lock().await;
        // Looked up under the lock: a reload cannot replace it meanwhile.
        let model = self
            .model(name)
            .ok_or_else(|| SwitchError::UnknownModel(name.to_string()))?;
        let current = control
            .models
            .get(name)
            .ok_or_else(|| SwitchError::UnknownModel(name.to_string()))?;
        // Before deciding: cut off from a shared store, this instance's
        // view of the model may be stale, so even a refusal could be wrong.
        self.store
            .check_available()
            .map_err(|reason| SwitchError::StoreUnavailable {
                model: name.to_string(),
                reason,
            })?;
        let seen = current.revision;
        let before = current.state.clone();
        let Some(next) = decide(&model, &before)? else {
            return Ok(Changed {
                before,
                after: None,
            });
        };

        let mut all = control.all();
        all.insert(
            name.to_string(),
            Stored {
                state: next.clone(),
                revision: seen,
            },
        );
        let commit = Commit {
            model: name,
            seen,
            next: &next,
            all: &all,
        };
        let revision = match self.store.commit(commit).await {
            Ok(revision) => revision,
            Err(CommitError::Write(source)) => {
                return Err(SwitchError::Persist {
                    model: name.to_string(),
                    source,
                })
            }
            Err(CommitError::Unavailable(reason)) => {
                return Err(SwitchError::StoreUnavailable {
                    model: name.to_string(),
                    reason,
                })
            }
            Err(CommitError::Uncertain(reason)) => {
                return Err(SwitchError::StoreUncertain {
                    model: name.to_string(),
                    reason,
                })
            }
            Err(CommitError::Conflict(now)) => {
                // Someone else switched first: serve what the store holds,
                // as if its change had arrived a moment earlier.
                self.learn_locked(
                    &mut control,
                    Learned::Changes(vec![(name.to_string(), now.map(|b| *b))]),
                );
                let Stored { state, revision } = control
                    .models
                    .get(name)
                    .cloned()
                    .ok_or_else(|| SwitchError::UnknownModel(name.to_string()))?;
                info!(model = name, active = %state.active, revision, actor, "switch refused: another instance switched first");
                return Err(SwitchError::Conflict {
                    model: name.to_string(),
                    active: state.active,
                    state: Box::new(state),
                    revision,
                });
            }
        };

        let (from, to) = (before.active, next.active);
        model.store_routing(to, next.split);
        if next.split != before.split {
            info!(
                model = name,
                active = %to,
                split = %next.split.map_or_else(|| "none".to_string(), |s| s.to_string()),
                actor = actor,
                "split changed"
            );
        }
        let switched = next.last_switch != before.last_switch;
        if let (true, Some(record)) = (switched, &next.last_switch) {
            model.metrics.count_switch(to);
            if record.reason == SwitchReason::AutoRollback {
                model.metrics.count_auto_rollback();
            }
            info!(
                model = name,
                from = %from,
                to = %to,
                reason = %record.reason,
                actor = actor,
                forced = record.forced,
                note = record.note.as_deref(),
                "switched active pool"
            );
            self.events.record(EventKind::Switch {
                model: name.to_string(),
                from,
                to,
                reason: record.reason.to_string(),
                actor: actor.to_string(),
                forced: record.forced,
                note: record.note.clone(),
                origin: None,
            });
        }
        // A switch by hand ends a live rollout: said once, here.
        let cancelled = next
            .rollout
            .as_ref()
            .filter(|r| r.phase == RolloutPhase::Cancelled && before.live_rollout().is_some());
        if let Some(r) = cancelled {
            info!(
                model = name,
                step = r.step,
                reason = r.reason.as_deref(),
                actor,
                "rollout cancelled"
            );
            self.events.record(EventKind::Rollout {
                model: name.to_string(),
                action: "cancelled",
                pool: r.pool,
                step: r.step,
                steps: r.steps.len(),
                percent: 0.0,
                actor: actor.to_string(),
                reason: r.reason.clone(),
            });
        }
        control.models.insert(
            name.to_string(),
            Stored {
                state: next.clone(),
                revision,
            },
        );
        self.published.store(Arc::new(control.states()));
        self.store.learned(&control.all());
        self.switched.send_modify(|n| *n += 1);
        Ok(Changed {
            before,
            after: Some(next),
        })
    }
}

/// What [`Switchboard::change`] did: the model's state before, and after
/// (`None`: nothing needed changing).
#[derive(Debug, Clone)]
pub struct Changed {
    pub before: ModelState,
    pub after: Option<ModelState>,
}

impl Changed {
    /// Whether the change switched the active pool.
    pub fn switched(&self) -> bool {
        self.after
            .as_ref()
            .is_some_and(|a| a.last_switch != self.before.last_switch)
    }

    /// The state now: after, or before when nothing changed.
    pub fn now(&self) -> &ModelState {
        self.after.as_ref().unwrap_or(&self.before)
    }
}

/// The switch guard: `to` must have a healthy endpoint, unless `force`
/// (then the switch is recorded as forced).
pub(crate) fn health_guard(model: &Model, to: PoolName, force: bool) -> Result<bool, SwitchError> {
    let pool = model.pool(to);
    if pool.healthy_count() > 0 {
        Ok(false)
    } else if force {
        Ok(true)
    } else {
        Err(SwitchError::Unhealthy {
            model: model.name().to_string(),
            pool: to,
            endpoints: pool
                .endpoints()
                .iter()
                .map(|e| (e.url().to_string(), e.state()))
                .collect(),
        })
    }
}

fn by_name(models: Vec<Arc<Model>>) -> BTreeMap<String, Arc<Model>> {
    models
        .into_iter()
        .map(|m| (m.name().to_string(), m))
        .collect()
}

#[cfg(test)]
mod tests;
