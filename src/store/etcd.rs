//! The etcd backend: one key per model, `{prefix}{model}`, whose value is
//! the model's switch state as JSON (the state file's entry for it), shared
//! by every instance configured with the same endpoints and prefix.
//!
//! **A switch** is one transaction: put the new state if the key's
//! `mod_revision` is still the one this instance last saw. Two instances
//! that decided on the same state cannot both win; the loser gets what the
//! key holds now, applies it, and answers 409.
//!
//! **Following.** [`EtcdStore::follow`] keeps one session at a time: read
//! everything under the prefix (a snapshot, applied where it differs),
//! watch the prefix from the snapshot's revision on (changes applied as
//! they come), and read the prefix's key count every [`PROBE_INTERVAL`], so
//! a member that stops answering without closing the connection is noticed
//! too. While a session runs, the store is *connected*: switches go
//! through. When it breaks (etcd down, a watch cancelled, a probe or a
//! switch's transaction that failed), the store is *disconnected*: traffic
//! stays on the pools this instance knows, switches are refused at once
//! with 503, and a new session is tried after a back-off (100 ms, doubling
//! to 5 s, with jitter). The new session's snapshot applies whatever other
//! instances switched meanwhile.
//!
//! **At start** the prefix is read once. If etcd cannot be reached, the
//! instance starts from its cache (`cache_path`) when it has one, else the
//! start fails: the active pools must be known before the first request.

mod gateway;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::gateway::{Gateway, GatewayError, KeyValue, PutIf, WatchStream};
use super::cache::Cache;
use super::{BoxFuture, Commit, CommitError, StateError, StateStore, StoreStatus, Stored};
use crate::config::EtcdConfig;
use crate::events::now_unix_ms;
use crate::metrics::{StoreMetrics, StoreOp};
use crate::switch::{Followed, Learned, ModelState, Switchboard};
use crate::ErrorChain;

pub use gateway::prefix_end;

/// How often a session reads the prefix's key count to prove etcd answers.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// The first wait before a new session, doubled after each failure.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two sessions.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The etcd backend; see the module docs.
pub struct EtcdStore {
    gateway: Gateway,
    prefix: String,
    endpoints: Vec<String>,
    cache: Option<Cache>,
    metrics: StoreMetrics,
    /// Whether a session runs and nothing failed since it began: switches
    /// go through only then.
    connected: AtomicBool,
    /// What status calls show; written on every change of the above.
    status: ArcSwap<StoreStatus>,
    /// Bumped by a switch whose transaction failed: the session ends, and
    /// the next one's snapshot says whether the switch took effect.
    resync: watch::Sender<u64>,
    /// `state.timeout`: also how long a new watch may take to be set up.
    timeout: Duration,
}

/// Why a session ended.
enum Broken {
    /// Something failed: counted, logged and shown in the status.
    Failed { op: StoreOp, reason: String },
    /// A switch's transaction failed, and said so itself: read again.
    Resync,
}

impl From<(StoreOp, GatewayError)> for Broken {
    fn from((op, e): (StoreOp, GatewayError)) -> Broken {
        let op = if matches!(e, GatewayError::AuthFailed { .. }) {
            StoreOp::Auth
        } else {
            op
        };
        Broken::Failed {
            op,
            reason: e.to_string(),
        }
    }
}

// === impl EtcdStore ===

impl EtcdStore {
    /// Reads the password file, if any; connects to nothing yet.
    pub fn new(config: &EtcdConfig, metrics: StoreMetrics) -> Result<EtcdStore, StateError> {
        let password = match &config.credentials {
            Some(c) => {
                Some(crate::config::read_password(&c.password_file).map_err(StateError::Password)?)
            }
            None => None,
        };
        let endpoints: Vec<String> = config
            .endpoints
            .iter()
            .map(|u| u.to_string().trim_end_matches('/').to_string())
            .collect();
        let status = StoreStatus {
            backend: "etcd",
            connected: false,
            since_unix_ms: now_unix_ms(),
            path: None,
            endpoints: Some(endpoints.clone()),
            prefix: Some(config.prefix.clone()),
            revision: Some(0),
            cache_path: config.cache_path.clone(),
            started_from_cache: false,
            last_error: None,
            last_error_unix_ms: None,
        };
        metrics.up.set(0);
        Ok(EtcdStore {
            gateway: Gateway::new(config, password).map_err(|e| StateError::Tls(Box::new(e)))?,
            prefix: config.prefix.clone(),
            cache: config
                .cache_path
                .clone()
                .map(|path| Cache::new(path, config.prefix.clone(), metrics.clone())),
            endpoints,
            metrics,
            connected: AtomicBool::new(false),
            status: ArcSwap::from_pointee(status),
            resync: watch::Sender::new(0),
            timeout: config.timeout,
        })
    }

    /// The key of `model`.
    fn key(&self, model: &str) -> Vec<u8> {
        format!("{}{model}", self.prefix).into_bytes()
    }

    /// The model a key under the prefix is of, if it names one.
    fn model_of(&self, key: &[u8]) -> Option<String> {
        let name = std::str::from_utf8(key).ok()?.strip_prefix(&self.prefix)?;
        crate::config::is_valid_name(name).then(|| name.to_string())
    }

    /// A key's value as a model's state.
    fn decode(&self, kv: &KeyValue) -> Result<Option<(String, Stored)>, StateError> {
        let Some(model) = self.model_of(&kv.key) else {
            debug!(key = %String::from_utf8_lossy(&kv.key), "ignoring a key under the prefix that names no model");
            return Ok(None);
        };
        match serde_json::from_slice::<ModelState>(&kv.value) {
            Ok(state) => Ok(Some((
                model,
                Stored {
                    state,
                    revision: kv.mod_revision,
                },
            ))),
            Err(e) => {
                self.metrics.count_error(StoreOp::Decode);
                Err(StateError::CorruptKey {
                    key: String::from_utf8_lossy(&kv.key).into_owned(),
                    detail: e.to_string(),
                })
            }
        }
    }

    /// Decodes what a follower read; a value that is no state is logged and
    /// skipped, keeping what this instance has for the model.
    fn decode_lenient(&self, kv: &KeyValue) -> Option<(String, Stored)> {
        match self.decode(kv) {
            Ok(decoded) => decoded,
            Err(e) => {
                warn!(error = %e, "ignoring a value in the state store; the model keeps its state");
                None
            }
        }
    }

    fn set_connected(&self, revision: u64) {
        let now = now_unix_ms();
        let was = self.connected.swap(true, Ordering::SeqCst);
        let mut status = (**self.status.load()).clone();
        if !was {
            status.since_unix_ms = now;
            info!(endpoints = ?self.endpoints, prefix = %self.prefix, revision, "state store connected");
        }
        status.connected = true;
        self.set_revision_in(&mut status, revision);
        self.status.store(Arc::new(status));
        self.metrics.up.set(1);
    }

    fn set_disconnected(&self, op: StoreOp, reason: &str) {
        let now = now_unix_ms();
        self.metrics.count_error(op);
        let was = self.connected.swap(false, Ordering::SeqCst);
        let mut status = (**self.status.load()).clone();
        if was {
            status.since_unix_ms = now;
            warn!(error = reason, "state store disconnected; serving the last known pools, switches refused until it is back");
        } else {
            debug!(error = reason, "state store still unreachable");
        }
        status.connected = false;
        status.last_error = Some(reason.to_string());
        status.last_error_unix_ms = Some(now);
        self.status.store(Arc::new(status));
        self.metrics.up.set(0);
    }

    fn set_revision(&self, revision: u64) {
        let mut status = (**self.status.load()).clone();
        self.set_revision_in(&mut status, revision);
        self.status.store(Arc::new(status));
    }

    fn set_revision_in(&self, status: &mut StoreStatus, revision: u64) {
        let newest = status.revision.unwrap_or(0).max(revision);
        status.revision = Some(newest);
        self.metrics
            .revision
            .set(i64::try_from(newest).unwrap_or(i64::MAX));
    }

    /// Observes how long after their switch the followed models moved here.
    fn observe_lag(&self, followed: &[Followed]) {
        let now = now_unix_ms();
        for f in followed.iter().filter(|f| f.at_unix_ms > 0) {
            let ms = now.saturating_sub(f.at_unix_ms);
            self.metrics.lag.observe(ms as f64 / 1000.0);
        }
    }

    /// One session: snapshot, watch, probes; returns `Ok` when cancelled,
    /// else why it broke.
    async fn session(&self, board: &Switchboard, token: &CancellationToken) -> Result<(), Broken> {
        let mut resync = self.resync.subscribe();
        resync.borrow_and_update();
        let prefix = self.prefix.as_bytes();
        let mut watch = tokio::select! {
            () = token.cancelled() => return Ok(()),
            watch = self.start_session(board) => watch?,
        };
        let mut probe = tokio::time::interval(PROBE_INTERVAL);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        probe.tick().await;
        loop {
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                _ = resync.changed() => return Err(Broken::Resync),
                message = watch.next() => self.follow_batch(board, message).await?,
                _ = probe.tick() => {
                    let revision = self
                        .gateway
                        .probe(prefix)
                        .await
                        .map_err(|e| Broken::from((StoreOp::Read, e)))?;
                    self.set_revision(revision);
                }
            }
        }
    }

    /// A session's start: reads the prefix and applies it, sets the watch
    /// up from the revision read, and says the store is connected.
    async fn start_session(&self, board: &Switchboard) -> Result<WatchStream, Broken> {
        let prefix = self.prefix.as_bytes();
        let range = self
            .gateway
            .range_prefix(prefix)
            .await
            .map_err(|e| Broken::from((StoreOp::Read, e)))?;
        let states: BTreeMap<String, Stored> = range
            .kvs
            .iter()
            .filter_map(|kv| self.decode_lenient(kv))
            .collect();
        let followed = board
            .learn(Learned::Snapshot {
                revision: range.revision,
                states,
            })
            .await;
        self.observe_lag(&followed);

        let mut watch = self
            .gateway
            .watch(prefix, range.revision + 1)
            .await
            .map_err(|e| Broken::from((StoreOp::Watch, e)))?;
        // The first message says whether the watch is set up; it comes at
        // once, or the member is not answering.
        let first = tokio::time::timeout(self.timeout, watch.next()).await;
        match first {
            Ok(Ok(Some(batch))) if batch.created && batch.canceled.is_none() => {}
            Ok(Ok(Some(batch))) => return Err(self.cancelled(batch.canceled)),
            Ok(Ok(None)) => return Err(ended()),
            Ok(Err(e)) => return Err((StoreOp::Watch, e).into()),
            Err(_) => {
                return Err(Broken::Failed {
                    op: StoreOp::Watch,
                    reason: format!("etcd did not set the watch up within {:?}", self.timeout),
                })
            }
        }
        self.set_connected(range.revision);
        Ok(watch)
    }

    /// Applies one watch message.
    async fn follow_batch(
        &self,
        board: &Switchboard,
        message: Result<Option<gateway::WatchBatch>, GatewayError>,
    ) -> Result<(), Broken> {
        let batch = match message {
            Ok(Some(batch)) => batch,
            Ok(None) => return Err(ended()),
            Err(e) => return Err((StoreOp::Watch, e).into()),
        };
        if batch.canceled.is_some() {
            return Err(self.cancelled(batch.canceled));
        }
        let mut changes = Vec::with_capacity(batch.events.len());
        for (key, kv) in &batch.events {
            match kv {
                Some(kv) => {
                    if let Some((model, stored)) = self.decode_lenient(kv) {
                        changes.push((model, Some(stored)));
                    }
                }
                None => {
                    if let Some(model) = self.model_of(key) {
                        changes.push((model, None));
                    }
                }
            }
        }
        if !changes.is_empty() {
            let followed = board.learn(Learned::Changes(changes)).await;
            self.observe_lag(&followed);
        }
        self.set_revision(batch.revision);
        Ok(())
    }

    /// A watch etcd cancelled: why, and a new token next time if the old
    /// one was refused.
    fn cancelled(&self, reason: Option<String>) -> Broken {
        let reason = reason.unwrap_or_else(|| "cancelled by etcd".to_string());
        if reason.contains("Unauthenticated") || reason.contains("invalid auth token") {
            self.gateway.forget_token();
        }
        Broken::Failed {
            op: StoreOp::Watch,
            reason: format!("the watch was cancelled: {reason}"),
        }
    }

    /// Sessions, one after the other, until `token` is cancelled.
    async fn follow_loop(&self, board: Arc<Switchboard>, token: CancellationToken) {
        let mut wait = BACKOFF_FIRST;
        loop {
            let started = tokio::time::Instant::now();
            match self.session(&board, &token).await {
                Ok(()) => return,
                Err(Broken::Failed { op, reason }) => self.set_disconnected(op, &reason),
                Err(Broken::Resync) => {
                    debug!("reading the state store again after a failed switch")
                }
            }
            // A session that lasted resets the back-off: this is a new outage.
            if started.elapsed() > BACKOFF_MAX {
                wait = BACKOFF_FIRST;
            }
            let jittered = wait.mul_f64(0.8 + 0.4 * fastrand::f64());
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(jittered) => {}
            }
            wait = (wait * 2).min(BACKOFF_MAX);
        }
    }
}

fn ended() -> Broken {
    Broken::Failed {
        op: StoreOp::Watch,
        reason: "etcd ended the watch".to_string(),
    }
}

impl StateStore for EtcdStore {
    fn is_shared(&self) -> bool {
        true
    }

    fn load(&self) -> BoxFuture<'_, Result<BTreeMap<String, Stored>, StateError>> {
        Box::pin(async move {
            match self.gateway.range_prefix(self.prefix.as_bytes()).await {
                Ok(range) => {
                    let mut states = BTreeMap::new();
                    for kv in &range.kvs {
                        if let Some((model, stored)) = self.decode(kv)? {
                            states.insert(model, stored);
                        }
                    }
                    self.set_connected(range.revision);
                    Ok(states)
                }
                Err(e) => {
                    let op = if matches!(e, GatewayError::AuthFailed { .. }) {
                        StoreOp::Auth
                    } else {
                        StoreOp::Read
                    };
                    let fix = match e {
                        GatewayError::Refused { .. } | GatewayError::AuthFailed { .. } => {
                            "fix what etcd refused (state.username, state.password_file, the user's role)"
                        }
                        _ => "start etcd or check state.endpoints",
                    };
                    let reason = e.to_string();
                    self.set_disconnected(op, &reason);
                    let endpoints = self.endpoints.join(", ");
                    let Some(cache) = &self.cache else {
                        return Err(StateError::Unreachable {
                            endpoints,
                            reason,
                            hint: format!("switchyard does not start without knowing the active pools: {fix}, or set state.cache_path so an instance can start from the last state it saw"),
                        });
                    };
                    match cache.load()? {
                        Some(states) => {
                            warn!(error = %reason, cache = %cache.path().display(), "state store unreachable at start; starting from the cache, switches refused until it is back");
                            let mut status = (**self.status.load()).clone();
                            status.started_from_cache = true;
                            self.status.store(Arc::new(status));
                            Ok(states)
                        }
                        None => Err(StateError::Unreachable {
                            endpoints,
                            reason,
                            hint: format!(
                                "and there is no cache at {} yet (it is written once this instance has read etcd); switchyard does not start without knowing the active pools",
                                cache.path().display()
                            ),
                        }),
                    }
                }
            }
        })
    }

    fn save_all<'a>(
        &'a self,
        all: &'a BTreeMap<String, Stored>,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            match &self.cache {
                Some(cache) => cache.write(all).await,
                None => Ok(()),
            }
        })
    }

    fn commit<'a>(&'a self, commit: Commit<'a>) -> BoxFuture<'a, Result<u64, CommitError>> {
        Box::pin(async move {
            self.check_available().map_err(CommitError::Unavailable)?;
            let value = serde_json::to_vec(commit.next)
                .map_err(|e| CommitError::Unavailable(format!("cannot encode the state: {e}")))?;
            let key = self.key(commit.model);
            match self.gateway.put_if(&key, commit.seen, &value).await {
                Ok(PutIf::Written(revision)) => {
                    self.set_revision(revision);
                    Ok(revision)
                }
                Ok(PutIf::Stale(current)) => {
                    let current = match current.as_ref().map(|kv| self.decode(kv)).transpose() {
                        Ok(decoded) => decoded.flatten().map(|(_, stored)| stored),
                        Err(e) => return Err(CommitError::Unavailable(e.to_string())),
                    };
                    Err(CommitError::Conflict(current.map(Box::new)))
                }
                Err(e) => {
                    let reason = ErrorChain(&e).to_string();
                    let op = if matches!(e, GatewayError::AuthFailed { .. }) {
                        StoreOp::Auth
                    } else {
                        StoreOp::Write
                    };
                    self.set_disconnected(op, &reason);
                    // The session ends and the next one's snapshot says what
                    // etcd holds, this switch or not.
                    self.resync.send_modify(|n| *n += 1);
                    if e.is_uncertain() {
                        Err(CommitError::Uncertain(reason))
                    } else {
                        Err(CommitError::Unavailable(reason))
                    }
                }
            }
        })
    }

    fn learned(&self, all: &BTreeMap<String, Stored>) {
        if let Some(cache) = &self.cache {
            cache.update(all);
        }
    }

    fn check_available(&self) -> Result<(), String> {
        if self.connected.load(Ordering::SeqCst) {
            return Ok(());
        }
        let status = self.status.load();
        let since = status.since_unix_ms;
        let ago = now_unix_ms().saturating_sub(since) / 1000;
        Err(match &status.last_error {
            Some(e) => format!("etcd not reachable for {ago}s: {e}"),
            None => "etcd not reachable yet".to_string(),
        })
    }

    fn status(&self) -> StoreStatus {
        (**self.status.load()).clone()
    }

    fn follow(
        self: Arc<Self>,
        board: Arc<Switchboard>,
        token: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let cache = async {
                if let Some(cache) = &self.cache {
                    cache.run(token.clone()).await;
                }
            };
            tokio::join!(self.follow_loop(board, token.clone()), cache);
        })
    }
}
