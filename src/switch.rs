//! The switch: per model, the `ArcSwap` naming the active pool, and the
//! control side that moves it (flip, activate, rollback), keeps the history
//! and persists the state file. Never sees a request.
//!
//! Readers (every request) do one `ArcSwap` load and keep the `Arc<Pool>` for
//! the life of the request. Writers go through [`Switchboard::switch`], which
//! serialises them on one async mutex and, in this order: decides the change
//! on a plain value ([`ModelState::apply`]), persists the new state, stores
//! the new pool in the `ArcSwap`, then replies. Persist before store: once a
//! caller has seen "switched", a restart cannot undo it.
//!
//! Every switch (and every reload) bumps a counter on a `watch` channel
//! ([`Switchboard::subscribe`]); the watch (`watch.rs`) wakes on it and reads
//! the published states to learn which model switched.

mod state;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::{CheckConfig, ModelConfig, UpstreamSettings};
use crate::events::{now_unix_ms, EventKind, Events};
use crate::health::EndpointState;
use crate::metrics::{Metrics, ModelMetrics};
use crate::pool::{Pool, PoolName};
use crate::shadow::Shadow;
use crate::validate::Report;
use crate::watch::WatchReport;

pub use state::StateError;

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
    active: ArcSwap<Pool>,
    metrics: ModelMetrics,
    /// The watch of the last watched switch, published by the watch task
    /// for status readers; `None` until a switch of this model is watched.
    watch: ArcSwapOption<WatchReport>,
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
            let reusable = old.filter(|old| {
                old.upstream == *upstream && old.config.pool(p).same_as(config.pool(p))
            });
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
            active: ArcSwap::new(Arc::clone(&pools[active.index()])),
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
            shadow,
        };
        model.publish_active(active);
        (model, built)
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

    /// The active pool. The one read of switch state a request makes: keep
    /// the returned `Arc` for the whole request so it finishes on this pool.
    #[inline]
    pub fn active(&self) -> Arc<Pool> {
        self.active.load_full()
    }

    pub fn active_name(&self) -> PoolName {
        self.active.load().name()
    }

    fn store_active(&self, to: PoolName) {
        self.active.store(Arc::clone(&self.pools[to.index()]));
        self.publish_active(to);
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
}

impl fmt::Display for SwitchReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SwitchReason::Flip => "flip",
            SwitchReason::Activate => "activate",
            SwitchReason::Rollback => "rollback",
            SwitchReason::AutoRollback => "auto_rollback",
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
        }
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
            SwitchOp::Activate(pool) if pool == self.active => return Ok(None),
            SwitchOp::Activate(pool) => (pool, SwitchReason::Activate),
            SwitchOp::Rollback => {
                let Some(last) = self.history.back() else {
                    return Err(SwitchError::NoHistory {
                        model: model.to_string(),
                    });
                };
                (last.from, SwitchReason::Rollback)
            }
            SwitchOp::AutoRollback { undo, note: why } => {
                if self.last_switch.as_ref() != Some(&undo) || self.active != undo.to {
                    return Err(SwitchError::Superseded {
                        model: model.to_string(),
                    });
                }
                note = Some(why);
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
        };
        let mut next = self.clone();
        next.active = to;
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
/// the state file.
pub struct Switchboard {
    /// Replaced whole by a reload; read by the admin API.
    models: ArcSwap<BTreeMap<String, Arc<Model>>>,
    /// Held across decide, persist, store: a tokio mutex because the state
    /// file write is awaited while holding it, so two writers can never
    /// persist out of order. The request path never touches it.
    control: tokio::sync::Mutex<BTreeMap<String, ModelState>>,
    /// A copy of the states as of the last write, for readers (the admin
    /// API's status calls), who so never wait behind a writer.
    published: ArcSwap<BTreeMap<String, ModelState>>,
    /// Bumped after every switch and reload, once `published` shows it:
    /// wakes the watch task, which then reads `published`. A `watch`
    /// channel, so a slow reader sees the latest and nothing queues up.
    switched: tokio::sync::watch::Sender<u64>,
    state_path: PathBuf,
    /// Every switch is recorded here once it has taken effect.
    events: Events,
}

// === impl Switchboard ===

impl Switchboard {
    /// Builds the switchboard from the models (already pointing at their
    /// starting pool) and their starting states, then writes the state file,
    /// so a path that cannot be written fails the start, not the first flip.
    pub async fn start(
        models: Vec<Arc<Model>>,
        states: BTreeMap<String, ModelState>,
        state_path: PathBuf,
        events: Events,
    ) -> Result<Switchboard, StateError> {
        state::save(state_path.clone(), states.clone()).await?;
        Ok(Switchboard {
            models: ArcSwap::from_pointee(by_name(models)),
            published: ArcSwap::from_pointee(states.clone()),
            control: tokio::sync::Mutex::new(states),
            switched: tokio::sync::watch::Sender::new(0),
            state_path,
            events,
        })
    }

    /// The event log switches are recorded in.
    pub fn events(&self) -> &Events {
        &self.events
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
    /// guard drops. The map is every model's switch state.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, BTreeMap<String, ModelState>> {
        self.control.lock().await
    }

    /// Replaces the models and their states (under the guard from
    /// [`Switchboard::lock`]): persists the states first, then swaps the
    /// models in. On a persist error nothing changes.
    pub async fn install(
        &self,
        control: &mut tokio::sync::MutexGuard<'_, BTreeMap<String, ModelState>>,
        models: Vec<Arc<Model>>,
        states: BTreeMap<String, ModelState>,
    ) -> Result<(), StateError> {
        state::save(self.state_path.clone(), states.clone()).await?;
        self.models.store(Arc::new(by_name(models)));
        self.published.store(Arc::new(states.clone()));
        **control = states;
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
        let mut control = self.control.lock().await;
        // Looked up under the lock: a reload cannot replace it meanwhile.
        let model = self
            .model(name)
            .ok_or_else(|| SwitchError::UnknownModel(name.to_string()))?;
        still(&model)?;
        let current = control
            .get(name)
            .ok_or_else(|| SwitchError::UnknownModel(name.to_string()))?;
        let from = current.active;
        let guard = |to: PoolName| {
            let pool = model.pool(to);
            if pool.healthy_count() > 0 {
                Ok(false)
            } else if force {
                Ok(true)
            } else {
                Err(SwitchError::Unhealthy {
                    model: name.to_string(),
                    pool: to,
                    endpoints: pool
                        .endpoints()
                        .iter()
                        .map(|e| (e.url().to_string(), e.state()))
                        .collect(),
                })
            }
        };
        let Some(next) = current.apply_checked(name, op, now_unix_ms(), actor, guard)? else {
            return Ok(SwitchOutcome {
                model: name.to_string(),
                from,
                active: from,
                switched: false,
            });
        };

        let mut all = control.clone();
        all.insert(name.to_string(), next.clone());
        if let Err(source) = state::save(self.state_path.clone(), all).await {
            warn!(model = name, error = %source, "switch not persisted; nothing switched");
            return Err(SwitchError::Persist {
                model: name.to_string(),
                source,
            });
        }

        let to = next.active;
        model.store_active(to);
        model.metrics.count_switch(to);
        if let Some(record) = &next.last_switch {
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
            });
        }
        control.insert(name.to_string(), next);
        self.published.store(Arc::new(control.clone()));
        self.switched.send_modify(|n| *n += 1);
        Ok(SwitchOutcome {
            model: name.to_string(),
            from,
            active: to,
            switched: true,
        })
    }
}

fn by_name(models: Vec<Arc<Model>>) -> BTreeMap<String, Arc<Model>> {
    models
        .into_iter()
        .map(|m| (m.name().to_string(), m))
        .collect()
}

/// Reads the saved state and decides each model's starting state: the saved
/// pool wins over the config's `active`. Saved models the config no longer
/// has are dropped with a warning.
pub fn starting_states(
    path: &std::path::Path,
    configured: &[(String, PoolName)],
) -> Result<BTreeMap<String, ModelState>, StateError> {
    let mut saved = state::load(path)?.unwrap_or_default();
    let mut states = BTreeMap::new();
    for (name, active) in configured {
        let state = saved
            .remove(name)
            .unwrap_or_else(|| ModelState::new(*active));
        states.insert(name.clone(), state);
    }
    for name in saved.keys() {
        warn!(
            model = %name,
            path = %path.display(),
            "state file names a model the config does not have; ignoring it"
        );
    }
    Ok(states)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flip(expect: Option<PoolName>) -> SwitchOp {
        SwitchOp::Flip { expect }
    }

    fn run(state: &ModelState, op: SwitchOp, t: u64) -> ModelState {
        state.apply("iris", op, t, "test").unwrap().unwrap()
    }

    #[test]
    fn flip_moves_to_the_standby_and_records_it() {
        let s = ModelState::new(PoolName::Blue);
        let s = run(&s, flip(None), 1);
        assert_eq!(s.active, PoolName::Green);
        assert_eq!(s.history.len(), 1);
        let r = s.last_switch.as_ref().unwrap();
        assert_eq!(
            (r.from, r.to, r.reason, r.at_unix_ms),
            (PoolName::Blue, PoolName::Green, SwitchReason::Flip, 1)
        );
    }

    #[test]
    fn flip_with_a_wrong_expectation_is_refused() {
        let s = ModelState::new(PoolName::Green);
        assert!(matches!(
            s.apply("iris", flip(Some(PoolName::Blue)), 1, "t"),
            Err(SwitchError::Unexpected {
                expected: PoolName::Blue,
                active: PoolName::Green,
                ..
            })
        ));
        assert_eq!(
            run(&s, flip(Some(PoolName::Green)), 1).active,
            PoolName::Blue
        );
    }

    #[test]
    fn activate_the_active_pool_changes_nothing() {
        let s = ModelState::new(PoolName::Blue);
        assert_eq!(
            s.apply("iris", SwitchOp::Activate(PoolName::Blue), 1, "t")
                .unwrap(),
            None
        );
        assert_eq!(
            run(&s, SwitchOp::Activate(PoolName::Green), 1).active,
            PoolName::Green
        );
    }

    #[test]
    fn rollback_pops_history_until_empty() {
        let s = ModelState::new(PoolName::Blue);
        let s = run(&s, flip(None), 1); // green
        let s = run(&s, flip(None), 2); // blue
        let s = run(&s, SwitchOp::Rollback, 3);
        assert_eq!(s.active, PoolName::Green);
        assert_eq!(
            s.last_switch.as_ref().unwrap().reason,
            SwitchReason::Rollback
        );
        let s = run(&s, SwitchOp::Rollback, 4);
        assert_eq!(s.active, PoolName::Blue);
        assert!(s.history.is_empty());
        assert!(matches!(
            s.apply("iris", SwitchOp::Rollback, 5, "t"),
            Err(SwitchError::NoHistory { .. })
        ));
    }

    #[test]
    fn an_auto_rollback_undoes_the_last_switch_and_is_remembered() {
        let s = ModelState::new(PoolName::Blue);
        let s = run(&s, flip(None), 1); // green
        let s = run(&s, SwitchOp::Activate(PoolName::Blue), 2);
        let s = run(&s, flip(None), 3); // green again
        let undo = s.last_switch.clone().unwrap();
        let op = SwitchOp::AutoRollback {
            undo,
            note: "5xx ratio 0.5".to_string(),
        };
        let s = run(&s, op, 4);
        assert_eq!(s.active, PoolName::Blue);
        let r = s.last_switch.clone().unwrap();
        assert_eq!(
            (r.from, r.to, r.reason, r.note.as_deref()),
            (
                PoolName::Green,
                PoolName::Blue,
                SwitchReason::AutoRollback,
                Some("5xx ratio 0.5")
            )
        );
        assert_eq!(s.last_auto_rollback, Some(r));
        // The switch undone left the history, as a manual rollback's does.
        assert_eq!(s.history.len(), 2);
        assert_eq!(s.history.back().unwrap().at_unix_ms, 2);
        // Later switches keep the last auto rollback for status.
        let s = run(&s, flip(None), 5);
        assert_eq!(s.last_auto_rollback.as_ref().unwrap().at_unix_ms, 4);
    }

    #[test]
    fn an_auto_rollback_of_a_switch_no_longer_last_is_refused() {
        let s = ModelState::new(PoolName::Blue);
        let s = run(&s, flip(None), 1);
        let watched = s.last_switch.clone().unwrap();
        let op = SwitchOp::AutoRollback {
            undo: watched,
            note: String::new(),
        };
        // Someone flipped back, then forth: green is active again, but by a
        // newer switch than the one watched.
        let later = run(&run(&s, flip(None), 2), flip(None), 3);
        assert_eq!(later.active, PoolName::Green);
        assert!(matches!(
            later.apply("iris", op.clone(), 4, "watch"),
            Err(SwitchError::Superseded { .. })
        ));
        let rolled_back = run(&s, SwitchOp::Rollback, 2);
        assert!(matches!(
            rolled_back.apply("iris", op, 4, "watch"),
            Err(SwitchError::Superseded { .. })
        ));
    }

    #[test]
    fn a_state_without_the_watch_fields_reads_and_writes_as_before() {
        let old = r#"{"active":"green","history":[{"from":"blue","to":"green","reason":"flip","at_unix_ms":1,"actor":"a"}],"last_switch":null}"#;
        let s: ModelState = serde_json::from_str(old).unwrap();
        assert_eq!(s.history[0].note, None);
        assert_eq!(s.last_auto_rollback, None);
        let written = serde_json::to_string(&s).unwrap();
        assert!(!written.contains("note"), "{written}");
        assert!(!written.contains("last_auto_rollback"), "{written}");
        assert_eq!(SwitchReason::AutoRollback.to_string(), "auto_rollback");
        assert_eq!(
            serde_json::to_string(&SwitchReason::AutoRollback).unwrap(),
            "\"auto_rollback\""
        );
    }

    #[test]
    fn history_keeps_the_last_sixteen() {
        let mut s = ModelState::new(PoolName::Blue);
        for t in 0..40 {
            s = run(&s, flip(None), t);
        }
        assert_eq!(s.history.len(), HISTORY_LEN);
        assert_eq!(
            s.history.front().unwrap().at_unix_ms,
            40 - HISTORY_LEN as u64
        );

        // A state file edited to hold more is brought back to the cap.
        let mut long = s.clone();
        long.history.extend(s.history.iter().cloned());
        assert_eq!(long.history.len(), 2 * HISTORY_LEN);
        let next = run(&long, flip(None), 99);
        assert_eq!(next.history.len(), HISTORY_LEN);
        assert_eq!(next.history.back().unwrap().at_unix_ms, 99);
    }
}
