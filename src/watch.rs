//! The watch: for `[models.watch] window` after a switch, judge the new
//! pool's 5xx ratio and p99 latency against the model's limits, and on a
//! breach roll the switch back on its own. Never sees a request, and adds
//! nothing to the request path.
//!
//! **What it reads.** Every `interval`, one control-side task samples both
//! pools of each watched model from the metric handles the request path
//! already writes (`switchyard_requests_total` by class, and the buckets of
//! `switchyard_request_duration_seconds`), and works on differences between
//! samples. Reading a histogram takes its collect lock, as a scrape does;
//! requests observing meanwhile never wait. The p99 is interpolated within
//! its bucket as Prometheus's `histogram_quantile` does, so it is as fine as
//! the buckets (see `metrics::DURATION_BUCKETS`).
//!
//! **Since the switch.** The new pool's counters are sampled when the watch
//! learns of the switch (microseconds after it, woken by the switchboard);
//! each evaluation judges everything since then.
//!
//! **The baseline** for the relative limits is the old pool's traffic over
//! the window before the switch: each pool's samples of the last window are
//! kept ([`judge::Recent`]), and at the switch the oldest is subtracted from
//! the old pool's counters then. A pool that served fewer than `min_requests`
//! in that time (or a watch that began without samples: after a restart or
//! a reload) has no baseline, and only absolute limits are judged.
//!
//! **Which switches.** A flip or an activate that moved traffic is watched.
//! A manual rollback is not (it returns to a pool known before), nor is an
//! automatic one, so a rollback never starts another; each ends the watch
//! running. A newer switch ends the running watch before its own begins.
//! A switch still within its window when the watch first sees its model
//! (at start, after a restart, or after a reload rebuilt the model) is
//! watched for the rest of the window, on that model's pools.
//!
//! **The rollback** goes through [`Switchboard::switch`] like any switch
//! (serialised, persisted before it takes effect, logged, counted) as
//! [`SwitchOp::AutoRollback`]: it restores the pool active before the
//! switch, only if that switch is still the model's last, and only to a
//! pool with a healthy endpoint. A rollback refused is logged and shown in
//! status; the watch ends either way.

mod judge;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::WatchConfig;
use crate::metrics::DURATION_BUCKETS;
use crate::pool::{Pool, PoolName};
use crate::switch::{Model, SwitchError, SwitchOp, SwitchReason, SwitchRecord, Switchboard};
use crate::ErrorChain;

pub use judge::{
    judge, Count, Counts, Histogram, Millis, Reading, Recent, Share, Step, Verdict, Watch,
};

/// Who asks for an automatic rollback, in the history and the log.
pub const ACTOR: &str = "watch";

/// How a model's latest watch stands, as `GET /models/{name}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WatchReport {
    pub state: WatchState,
    /// The pool watched: the one switched to.
    pub pool: PoolName,
    /// The pool switched from, restored by a rollback.
    pub from: PoolName,
    pub started_unix_ms: u64,
    pub until_unix_ms: u64,
    /// The watched pool's traffic since the switch.
    pub requests: u64,
    pub ratio_5xx: f64,
    pub p99_ms: Option<f64>,
    /// The old pool's last window before the switch, when it served at
    /// least `min_requests` then; else `None`, and relative limits are not
    /// judged.
    pub baseline: Option<Reading>,
    /// Why it ended, when it did other than by passing.
    pub reason: Option<String>,
}

/// Where a watch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchState {
    /// Within the window; judged every interval.
    Watching,
    /// The window ended with the pool within its limits.
    Passed,
    /// The window ended before the pool served `min_requests`.
    Inconclusive,
    /// A limit was breached and the switch was undone.
    RolledBack,
    /// A limit was breached but the rollback was refused (see `reason`).
    RollbackFailed,
    /// Another switch came first (or the model was removed).
    Cancelled,
}

/// The watch task's state; see the module docs.
pub struct Watcher {
    switchboard: Arc<Switchboard>,
    tracked: BTreeMap<String, Tracked>,
}

/// One model with `[models.watch]`, as the watcher follows it.
struct Tracked {
    model: Arc<Model>,
    config: WatchConfig,
    /// Each pool's samples over the last window, by `PoolName::index`.
    recent: [Recent; 2],
    /// When to sample (and judge) next.
    next: Instant,
    /// The model's last switch as last seen: a different one is new.
    seen: Option<SwitchRecord>,
    run: Option<Run>,
}

/// One watched switch.
struct Run {
    watch: Watch,
    record: SwitchRecord,
    report: WatchReport,
}

/// A breach to act on.
struct Breach {
    model: Arc<Model>,
    undo: SwitchRecord,
    reason: String,
    report: WatchReport,
}

// === impl Watcher ===

impl Watcher {
    pub fn new(switchboard: Arc<Switchboard>) -> Watcher {
        Watcher {
            switchboard,
            tracked: BTreeMap::new(),
        }
    }

    /// Watches until `token` is cancelled.
    pub async fn run(mut self, token: CancellationToken) {
        let mut switched = self.switchboard.subscribe();
        loop {
            self.sync(Instant::now());
            let breaches = self.evaluate(Instant::now());
            let acted = !breaches.is_empty();
            for breach in breaches {
                self.roll_back(breach).await;
            }
            if acted {
                // Learn of the rollback (and anything else) at once.
                continue;
            }
            let next = self.tracked.values().map(|t| t.next).min();
            tokio::select! {
                () = token.cancelled() => return,
                changed = switched.changed() => if changed.is_err() {
                    // The switchboard is gone: nothing can switch any more.
                    return token.cancelled().await;
                },
                () = sleep_until(next) => {}
            }
        }
    }

    /// Follows the models the switchboard has now, and their last switches.
    fn sync(&mut self, now: Instant) {
        let models = self.switchboard.models();
        let states = self.switchboard.states();
        self.tracked.retain(|name, t| {
            let kept = models.get(name).is_some_and(|m| Arc::ptr_eq(m, &t.model));
            if !kept {
                if let Some(run) = t.run.take() {
                    debug!(model = %name, "watch ended: the model was reloaded or removed");
                    run.end(
                        &t.model,
                        WatchState::Cancelled,
                        "the model was reloaded or removed",
                    );
                }
            }
            kept
        });
        for (name, model) in models.iter() {
            let Some(config) = model.watch_config() else {
                continue;
            };
            let last = states.get(name).and_then(|s| s.last_switch.clone());
            match self.tracked.get_mut(name) {
                Some(t) => {
                    if t.seen != last {
                        t.seen.clone_from(&last);
                        if let Some(record) = last {
                            t.switched(now, record);
                        }
                    }
                }
                None => {
                    let mut t = Tracked::new(Arc::clone(model), config.clone(), now);
                    if let Some(record) = &last {
                        t.resume(now, record);
                    }
                    t.seen = last;
                    self.tracked.insert(name.clone(), t);
                }
            }
        }
    }

    /// Samples and judges every model that is due; returns the breaches.
    fn evaluate(&mut self, now: Instant) -> Vec<Breach> {
        let mut breaches = Vec::new();
        for t in self.tracked.values_mut() {
            if t.next <= now {
                if let Some(b) = t.tick(now) {
                    breaches.push(b);
                }
            }
        }
        breaches
    }

    /// Undoes the breached switch through the switchboard, in its own task
    /// so that, once begun, it runs to its end even if shutdown comes.
    async fn roll_back(&self, breach: Breach) {
        let Breach {
            model,
            undo,
            reason,
            mut report,
        } = breach;
        let name = model.name().to_string();
        let current = self.switchboard.model(&name);
        if !current.is_some_and(|m| Arc::ptr_eq(&m, &model)) {
            // A reload rebuilt the model since: its pools are not the ones
            // judged; the next sync watches the rest of the window anew.
            return;
        }
        warn!(
            model = %name,
            pool = %undo.to,
            to = %undo.from,
            reason = %reason,
            "watch limit breached; rolling back"
        );
        let switchboard = Arc::clone(&self.switchboard);
        let (undo_to, undo_from) = (undo.to, undo.from);
        let op = SwitchOp::AutoRollback {
            undo,
            note: reason.clone(),
        };
        // The pools judged must still be the model's when the lock is
        // taken: a reload waiting on its probes may install new ones first.
        let judged = [
            Arc::clone(model.pool(undo_to)),
            Arc::clone(model.pool(undo_from)),
        ];
        let still = move |m: &Model| {
            for pool in &judged {
                if !Arc::ptr_eq(m.pool(pool.name()), pool) {
                    return Err(SwitchError::Replaced {
                        model: m.name().to_string(),
                        pool: pool.name(),
                        what: "judged",
                    });
                }
            }
            Ok(())
        };
        let result =
            tokio::spawn(
                async move { switchboard.switch_if(&name, op, false, ACTOR, still).await },
            )
            .await;
        let (state, why) = match result {
            Ok(Ok(_)) => (WatchState::RolledBack, reason),
            // Another switch was last, here or (a fleet sharing a state
            // store) on another instance: maybe the same rollback.
            Ok(Err(SwitchError::Superseded { .. } | SwitchError::Conflict { .. })) => (
                WatchState::Cancelled,
                format!("{reason}; not rolled back: another switch came first"),
            ),
            // The next sync watches what the reload installed.
            Ok(Err(SwitchError::Replaced { .. })) => return,
            Ok(Err(e)) => {
                error!(model = model.name(), error = %ErrorChain(&e), "automatic rollback failed");
                (
                    WatchState::RollbackFailed,
                    format!("{reason}; the rollback failed: {}", ErrorChain(&e)),
                )
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down.
            Err(_) => return,
        };
        report.state = state;
        report.reason = Some(why);
        model.publish_watch(report);
    }
}

// === impl Tracked ===

impl Tracked {
    fn new(model: Arc<Model>, config: WatchConfig, now: Instant) -> Tracked {
        let mut t = Tracked {
            model,
            config,
            recent: [Recent::default(), Recent::default()],
            next: now,
            seen: None,
            run: None,
        };
        t.sample(now);
        t.next = now + t.config.interval;
        t
    }

    /// Samples both pools into their recent windows; returns the counts.
    fn sample(&mut self, now: Instant) -> [Counts; 2] {
        let counts = PoolName::ALL.map(|p| counts(self.model.pool(p)));
        for p in PoolName::ALL {
            self.recent[p.index()].push(now, counts[p.index()].clone(), self.config.window);
        }
        counts
    }

    /// A new last switch: ends the running watch, and starts one if the
    /// switch is of a watched kind.
    fn switched(&mut self, now: Instant, record: SwitchRecord) {
        if let Some(run) = self.run.take() {
            let why = format!("superseded by a {} to {}", record.reason, record.to);
            info!(model = self.model.name(), pool = %run.record.to, reason = %why, "watch ended");
            run.end(&self.model, WatchState::Cancelled, &why);
        }
        if !is_watched(record.reason) {
            return;
        }
        let from = counts(self.model.pool(record.from));
        let baseline = self.recent[record.from.index()]
            .window_to(&from)
            .filter(|b| b.requests >= self.config.min_requests);
        self.start(now, record, baseline, self.config.window);
    }

    /// First sight of the model: its last switch, if watched and still
    /// within its window, is watched for the rest of it, without baseline.
    fn resume(&mut self, now: Instant, record: &SwitchRecord) {
        if !is_watched(record.reason) {
            return;
        }
        let until_ms = record.at_unix_ms.saturating_add(millis(self.config.window));
        let left = until_ms.saturating_sub(crate::events::now_unix_ms());
        if left > 0 {
            self.start(now, record.clone(), None, Duration::from_millis(left));
        }
    }

    fn start(
        &mut self,
        now: Instant,
        record: SwitchRecord,
        baseline: Option<Counts>,
        left: Duration,
    ) {
        let watch = Watch {
            limits: self.config.clone(),
            start: counts(self.model.pool(record.to)),
            baseline,
            until: now + left,
        };
        let report = WatchReport {
            state: WatchState::Watching,
            pool: record.to,
            from: record.from,
            started_unix_ms: record.at_unix_ms,
            until_unix_ms: record.at_unix_ms.saturating_add(millis(self.config.window)),
            requests: 0,
            ratio_5xx: 0.0,
            p99_ms: None,
            baseline: watch.baseline.as_ref().map(|b| b.reading(DURATION_BUCKETS)),
            reason: None,
        };
        debug!(model = self.model.name(), pool = %record.to, window = ?left, "watching the new pool");
        self.model.publish_watch(report.clone());
        self.next = self.next.min(now + self.config.interval);
        self.run = Some(Run {
            watch,
            record,
            report,
        });
    }

    /// Samples, and judges the running watch; a breach ends it and is
    /// returned to act on.
    fn tick(&mut self, now: Instant) -> Option<Breach> {
        let counts = self.sample(now);
        self.next = now + self.config.interval;
        let run = self.run.as_mut()?;
        self.next = self.next.min(run.watch.until.max(now));
        let step = run
            .watch
            .step(now, &counts[run.record.to.index()], DURATION_BUCKETS);
        let (state, reading) = match step {
            Step::Watching(reading) => {
                run.report.set(reading);
                self.model.publish_watch(run.report.clone());
                return None;
            }
            Step::Breach { reason, reading } => {
                let mut run = self.run.take()?;
                run.report.set(reading);
                return Some(Breach {
                    model: Arc::clone(&self.model),
                    undo: run.record,
                    reason,
                    report: run.report,
                });
            }
            Step::Passed(reading) => (WatchState::Passed, reading),
            Step::Inconclusive(reading) => (WatchState::Inconclusive, reading),
        };
        let mut run = self.run.take()?;
        run.report.set(reading);
        info!(
            model = self.model.name(),
            pool = %run.record.to,
            requests = reading.requests,
            ratio_5xx = reading.ratio_5xx,
            p99_ms = reading.p99_ms,
            result = ?state,
            "watch ended"
        );
        run.report.state = state;
        if state == WatchState::Inconclusive {
            run.report.reason = Some(format!(
                "{} requests in the window; fewer than min_requests {}, so not judged",
                reading.requests, self.config.min_requests
            ));
        }
        self.model.publish_watch(run.report);
        None
    }
}

// === impl Run ===

impl Run {
    fn end(mut self, model: &Model, state: WatchState, why: &str) {
        self.report.state = state;
        self.report.reason = Some(why.to_string());
        model.publish_watch(self.report);
    }
}

impl WatchReport {
    fn set(&mut self, reading: Reading) {
        self.requests = reading.requests;
        self.ratio_5xx = reading.ratio_5xx;
        self.p99_ms = reading.p99_ms;
    }
}

/// Switches the watch judges: those that put a pool in service for the
/// first time since the last switch. Rollbacks return to a known pool.
fn is_watched(reason: SwitchReason) -> bool {
    matches!(reason, SwitchReason::Flip | SwitchReason::Activate)
}

/// A pool's counters now, from its metric handles.
pub(crate) fn counts(pool: &Pool) -> Counts {
    let metrics = pool.metrics();
    let (requests, errors) = metrics.responses();
    let (buckets, observed) = metrics.latency();
    Counts {
        requests,
        errors,
        buckets,
        observed,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
