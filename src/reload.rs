//! Hot reload: SIGHUP and `POST /reload` read the config file again and
//! apply it in one step, or not at all.
//!
//! 1. **read and check**: the file must pass everything `check` checks; else
//!    the errors come back, word for word as `check` prints them, and nothing
//!    changes. Keys only a restart applies (listeners, their TLS and limits,
//!    the admin's access, the state file) must be unchanged.
//! 2. **build**: a model whose config is unchanged is kept as it is. A
//!    changed model is built anew around the pools it can keep (a pool whose
//!    endpoints and settings are unchanged keeps its connections, health and
//!    in-flight requests); new pools are probed before anything serves from
//!    them. Every model keeps its active pool and history; a new model starts
//!    on its configured `active` pool.
//! 3. **guard**: a reload that would leave a model's active pool without a
//!    healthy endpoint, where it had one, is refused.
//! 4. **install**: the states are persisted, then the models and the routing
//!    table are swapped in. Requests already routed finish where they are;
//!    pools no longer used stop being probed, and the metric series only
//!    they had are removed (as are those of what a refused reload built).
//!
//! Reloads are serialised with each other and with switches (the
//! switchboard's writer lock is held from build to install).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError, LoadError, UpstreamSettings};
use crate::discovery;
use crate::events::EventKind;
use crate::health::Watch;
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolName};
use crate::proxy::Proxy;
use crate::switch::{Model, ModelState, StateError, Switchboard};
use crate::tls::ServerTls;
use crate::ErrorChain;

/// How much longer than a new pool's probe timeout a reload waits for its
/// first probe round.
const PROBE_GRACE: Duration = Duration::from_secs(2);

/// Applies config reloads; see the module docs.
pub struct Reloader {
    /// The config running now. Its lock serialises reloads.
    current: tokio::sync::Mutex<Config>,
    metrics: Metrics,
    switchboard: Arc<Switchboard>,
    proxy: Arc<Proxy>,
    watch: Watch,
    discovery: discovery::Watch,
    certificates: Vec<Arc<ServerTls>>,
}

/// What a reload changed, by model name.
#[derive(Debug, Default, Serialize)]
pub struct ReloadOutcome {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
}

/// Why a reload was refused; the running config stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot read config file {}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the config file has {} error(s); nothing was reloaded", .0.len())]
    Invalid(Vec<ConfigError>),
    #[error("these settings only change with a restart: {}; nothing was reloaded", .0.join(", "))]
    RestartNeeded(Vec<&'static str>),
    #[error("pool {pool} of model {model:?} did not finish its first probe round within {waited:?}; nothing was reloaded")]
    NotProbed {
        model: String,
        pool: PoolName,
        waited: Duration,
    },
    #[error("model {model:?} would be left with no healthy endpoint in its active pool {pool}; nothing was reloaded")]
    Unhealthy { model: String, pool: PoolName },
    #[error("model {model:?} has a rollout {phase} and the new config has no [models.rollout] for it, so nothing would judge its steps; abort the rollout first (POST /models/{model}/rollout/abort); nothing was reloaded")]
    RolloutLive { model: String, phase: &'static str },
    #[error("the new state could not be saved; nothing was reloaded")]
    State(#[source] StateError),
}

impl From<LoadError> for ReloadError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Read { path, source } => ReloadError::Read { path, source },
            LoadError::Invalid(errors) => ReloadError::Invalid(errors),
        }
    }
}

// === impl Reloader ===

impl Reloader {
    pub fn new(
        config: Config,
        metrics: Metrics,
        switchboard: Arc<Switchboard>,
        proxy: Arc<Proxy>,
        watch: Watch,
        discovery: discovery::Watch,
        certificates: Vec<Arc<ServerTls>>,
    ) -> Reloader {
        Reloader {
            current: tokio::sync::Mutex::new(config),
            metrics,
            switchboard,
            proxy,
            watch,
            discovery,
            certificates,
        }
    }

    /// Re-reads the listeners' certificates: new handshakes get the new
    /// ones, open connections keep theirs. One that fails to load is logged
    /// and the old one stays. The files are read on the blocking pool: with
    /// one worker thread, a read there would stall every request.
    pub async fn reload_certificates(&self) {
        let certificates = self.certificates.clone();
        let reloaded = tokio::task::spawn_blocking(move || {
            for tls in &certificates {
                match tls.reload() {
                    Ok(()) => info!(cert = %tls.files().cert.display(), "certificate reloaded"),
                    Err(e) => {
                        error!(error = %ErrorChain(&e), "certificate not reloaded; serving the previous one")
                    }
                }
            }
        })
        .await;
        if let Err(e) = reloaded {
            error!(error = %e, "certificate reload did not run; serving the previous ones");
        }
    }

    /// Reads the config file again and applies it; see the module docs.
    /// `actor` names who asked, for the log.
    pub async fn reload(&self, actor: &str) -> Result<ReloadOutcome, ReloadError> {
        let mut current = self.current.lock().await;
        let result = self.apply(&current).await;
        match &result {
            Ok((_, outcome)) => info!(
                actor,
                added = ?outcome.added,
                removed = ?outcome.removed,
                changed = ?outcome.changed,
                unchanged = outcome.unchanged.len(),
                "config reloaded"
            ),
            Err(ReloadError::Invalid(errors)) => {
                for e in errors {
                    warn!(actor, error = %e, "config reload refused");
                }
            }
            Err(e) => warn!(actor, error = %ErrorChain(e), "config reload refused"),
        }
        self.switchboard.events().record(EventKind::Reload {
            actor: actor.to_string(),
            applied: result.is_ok(),
            outcome: result
                .as_ref()
                .ok()
                .and_then(|(_, outcome)| serde_json::to_value(outcome).ok()),
            error: result.as_ref().err().map(|e| match e {
                ReloadError::Invalid(errors) => {
                    let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    format!("{e}: {}", all.join("; "))
                }
                e => ErrorChain(e).to_string(),
            }),
        });
        let (config, outcome) = result?;
        *current = config;
        Ok(outcome)
    }

    /// The first answers of every dns pool reloading `new` will build
    /// (whose model or pool config changed): by (model, pool), names side
    /// by side under one deadline, the longest round any pool may take.
    async fn lookup_fresh(
        &self,
        new: &Config,
        upstream: &UpstreamSettings,
    ) -> HashMap<(String, PoolName), Vec<discovery::Answer>> {
        let old = self.switchboard.models();
        let mut wanted = Vec::new();
        for config in &new.models {
            let before = old.get(&config.name);
            if before.is_some_and(|m| m.runs(config, upstream)) {
                continue;
            }
            for p in PoolName::ALL {
                let Some(d) = &config.pool(p).discovery else {
                    continue;
                };
                if !before.is_some_and(|m| m.keeps_pool(config, upstream, p)) {
                    wanted.push(((config.name.clone(), p), d.clone()));
                }
            }
        }
        let limit = wanted.iter().map(|(_, d)| discovery::round_limit(d)).max();
        let deadline = tokio::time::Instant::now() + limit.unwrap_or_default();
        let mut lookups = tokio::task::JoinSet::new();
        for (key, d) in wanted {
            lookups.spawn(async move { (key, discovery::lookup(&d, deadline).await) });
        }
        let mut answers = HashMap::new();
        while let Some(done) = lookups.join_next().await {
            match done {
                Ok((key, found)) => {
                    answers.insert(key, found);
                }
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Not cancelled: the set lives to here. A missing answer
                // is a failure (`not_resolved`).
                Err(_) => {}
            }
        }
        answers
    }

    async fn apply(&self, current: &Config) -> Result<(Config, ReloadOutcome), ReloadError> {
        // Read and checked on the blocking pool (check files up to 16 MiB
        // each): with one worker thread, the runtime would stall meanwhile.
        let file = current.file.clone();
        let new = tokio::task::spawn_blocking(move || Config::load(&file))
            .await
            .map_err(|e| ReloadError::Read {
                path: current.file.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
        let restart = current.restart_needed(&new);
        if !restart.is_empty() {
            return Err(ReloadError::RestartNeeded(restart));
        }
        let upstream = new.proxy.upstream();

        // DNS before the switch lock: a slow or silent server must not hold
        // up flips, rollbacks and activations.
        let mut answers = self.lookup_fresh(&new, &upstream).await;

        let mut control = self.switchboard.lock().await;
        // Before anything is built: a live rollout needs its config.
        for config in new.models.iter().filter(|m| m.rollout.is_none()) {
            if let Some(r) = control.state(&config.name).and_then(|s| s.live_rollout()) {
                return Err(ReloadError::RolloutLive {
                    model: config.name.clone(),
                    phase: r.phase.as_str(),
                });
            }
        }
        let old = self.switchboard.models();
        let mut outcome = ReloadOutcome::default();
        let mut models = Vec::with_capacity(new.models.len());
        let mut states = BTreeMap::new();
        let mut fresh: Vec<Arc<Pool>> = Vec::new();
        // Dns pools being replaced: their discovery is paused from before
        // their replacement exists (which shares their metric series) until
        // they retire, or until the reload is refused.
        let mut paused: Vec<Arc<Pool>> = Vec::new();
        let events = self.switchboard.events();
        for config in &new.models {
            let before = old.get(&config.name);
            let state = control
                .state(&config.name)
                .cloned()
                .unwrap_or_else(|| ModelState::new(config.active));
            match before {
                Some(model) if model.runs(config, &upstream) => {
                    outcome.unchanged.push(config.name.clone());
                    models.push(Arc::clone(model));
                }
                _ => {
                    if let Some(model) = before {
                        for p in PoolName::ALL {
                            let pool = model.pool(p);
                            if pool.discovery().is_some() && !model.keeps_pool(config, &upstream, p)
                            {
                                pool.pause_discovery();
                                paused.push(Arc::clone(pool));
                            }
                        }
                    }
                    let (model, built) = Model::rebuild(
                        config,
                        state.active,
                        &upstream,
                        &self.metrics,
                        before.map(|m| &**m),
                    );
                    model.store_routing(state.active, state.split);
                    if before.is_some() {
                        outcome.changed.push(config.name.clone());
                    } else {
                        outcome.added.push(config.name.clone());
                    }
                    // New dns pools get their first set, from the answers
                    // above (a name that failed keeps the predecessor's).
                    for pool in built.iter().filter(|p| p.discovery().is_some()) {
                        let answers = answers
                            .remove(&(config.name.clone(), pool.name()))
                            .unwrap_or_else(|| not_resolved(pool));
                        let predecessor = before.map(|m| &**m.pool(pool.name()));
                        discovery::seed(pool, &answers, predecessor, &self.metrics, events);
                    }
                    fresh.extend(built);
                    models.push(Arc::new(model));
                }
            }
            states.insert(config.name.clone(), state);
        }
        outcome.removed = old
            .keys()
            .filter(|name| !states.contains_key(*name))
            .cloned()
            .collect();

        // New pools are probed before anything serves from them.
        for pool in &fresh {
            self.watch.pool(Arc::clone(pool));
            self.discovery.pool(Arc::clone(pool));
        }
        let refuse = |e: ReloadError| {
            for pool in &fresh {
                pool.retire();
            }
            for pool in &paused {
                pool.resume_discovery();
            }
            forget_metrics(&self.metrics, &fresh, &old);
            Err(e)
        };
        // One deadline for all: they are probed side by side.
        let waited = fresh
            .iter()
            .map(|p| p.health_config().timeout)
            .max()
            .unwrap_or_default()
            + PROBE_GRACE;
        let deadline = tokio::time::Instant::now() + waited;
        for pool in &fresh {
            if tokio::time::timeout_at(deadline, pool.wait_probed())
                .await
                .is_err()
            {
                return refuse(ReloadError::NotProbed {
                    model: pool.model().to_string(),
                    pool: pool.name(),
                    waited,
                });
            }
        }
        for model in &models {
            let active = model.active();
            let had = old
                .get(model.name())
                .is_some_and(|m| m.active().healthy_count() > 0);
            if had && active.healthy_count() == 0 {
                return refuse(ReloadError::Unhealthy {
                    model: model.name().to_string(),
                    pool: active.name(),
                });
            }
        }

        if let Err(e) = self
            .switchboard
            .install(&mut control, models.clone(), states)
            .await
        {
            return refuse(ReloadError::State(e));
        }
        self.proxy.set_routes(Proxy::routes(&models));
        drop(control);

        // Pools no model uses any more: stop probing them. Their in-flight
        // requests finish; the last one drops the pool and its connections.
        let mut retired = Vec::new();
        for model in old.values() {
            for name in PoolName::ALL {
                let pool = model.pool(name);
                if !models.iter().any(|m| Arc::ptr_eq(m.pool(name), pool)) {
                    pool.retire();
                    retired.push(Arc::clone(pool));
                }
            }
        }
        forget_metrics(&self.metrics, &retired, &self.switchboard.models());
        Ok((new, outcome))
    }
}

/// Every name failed: the answers for a pool whose names were not looked up.
fn not_resolved(pool: &Pool) -> Vec<discovery::Answer> {
    let names = pool.discovery().map_or(0, |d| d.names.len());
    let why = "not resolved before the reload".to_string();
    vec![discovery::Answer::Failed(why); names]
}

/// Removes the metric series only `dropped` pools had: every series of a
/// model `live` does not have, and those of endpoints its live pool no
/// longer lists. Series a live pool shares (a rebuilt pool has its
/// predecessor's labels) stay. Without this, /metrics would go on showing
/// a removed model as active and a removed endpoint as healthy, and a
/// refused reload would leave behind the series of what it built.
fn forget_metrics(metrics: &Metrics, dropped: &[Arc<Pool>], live: &BTreeMap<String, Arc<Model>>) {
    for pool in dropped {
        let Some(model) = live.get(pool.model()) else {
            metrics.forget_model(pool.model());
            for endpoint in pool.endpoints().iter() {
                metrics.forget_endpoint(pool.model(), pool.name(), endpoint.url());
            }
            continue;
        };
        let kept = model.pool(pool.name()).endpoints();
        for endpoint in pool.endpoints().iter() {
            if !kept.iter().any(|k| k.url() == endpoint.url()) {
                metrics.forget_endpoint(pool.model(), pool.name(), endpoint.url());
            }
        }
    }
}
