//! The event log: the last [`CAPACITY`] switches, rollbacks, validations,
//! ejections, health changes and reloads, for `GET /events` and its
//! server-sent-event stream.
//!
//! Only the control side records (the switchboard, the health checker, the
//! reloader); the request path never touches the log. Each event gets an id
//! one above the last, so a follower resumes exactly where it was
//! (`Last-Event-ID`, `?since=`). The ring sits behind a `std` mutex held for
//! a push or a copy, never across an await; followers learn of new events
//! through a `watch` of the newest id and read the ring themselves, so a
//! slow follower never holds back a writer and cannot lag: it is at most
//! told that the ring moved past what it had seen.
//!
//! Ids start at the process's start time in microseconds, so the ids of a
//! later run are above every id of an earlier one (fewer than a million
//! events a second). An id the log cannot have issued (from an earlier run,
//! or above its newest) reads as "before this run": everything held.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::pool::PoolName;

/// How many events the log keeps.
pub const CAPACITY: usize = 1000;

/// One thing that happened, as served by `GET /events`.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// One above the previous event's; the first is the process's start
    /// time in microseconds since the Unix epoch.
    pub id: u64,
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened. Serialized with a `"type"` field naming the variant.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The active pool changed: a flip, an activate, or a manual or
    /// automatic rollback (`reason`).
    Switch {
        model: String,
        from: PoolName,
        to: PoolName,
        reason: String,
        actor: String,
        forced: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        /// `"store"` for a switch another instance made, which this one
        /// followed through the shared state store; absent for a switch
        /// made here.
        #[serde(skip_serializing_if = "Option::is_none")]
        origin: Option<&'static str>,
    },
    /// Validation checks ran against a pool.
    Validation {
        model: String,
        pool: PoolName,
        passed: bool,
        /// The report, as the validate call returns it.
        report: Value,
    },
    /// An endpoint was taken out of rotation after failed requests in a row.
    Ejection {
        model: String,
        pool: PoolName,
        endpoint: String,
        failures: u32,
        backoff_ms: u64,
    },
    /// DNS discovery changed a pool's endpoints: `added` start out of
    /// rotation until probed, `removed` drain.
    Discovery {
        model: String,
        pool: PoolName,
        added: Vec<String>,
        removed: Vec<String>,
    },
    /// An endpoint's probed health changed.
    Health {
        model: String,
        pool: PoolName,
        endpoint: String,
        state: String,
        cause: String,
    },
    /// The share of a model's new requests sent to its standby changed by
    /// hand (`POST /models/{name}/weight`), or, `origin: "store"`, on
    /// another instance. (A switch that ends a split is a `switch`, a
    /// rollout's step a `rollout`.)
    Weight {
        model: String,
        /// The pool that takes the share: the standby.
        pool: PoolName,
        percent: f64,
        previous: f64,
        actor: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        origin: Option<&'static str>,
    },
    /// A rollout started, moved to its next step (`step`), was extended
    /// for want of requests, paused, resumed, started its step over after
    /// a restart, completed, or was aborted (`reason` says why).
    Rollout {
        model: String,
        action: &'static str,
        /// The pool rolled out to.
        pool: PoolName,
        step: usize,
        steps: usize,
        /// The new pool's share now.
        percent: f64,
        actor: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The config was re-read: applied, or refused with `error`.
    Reload {
        actor: String,
        applied: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        outcome: Option<Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// The shared log. Cloning is cheap; every clone records into the same log.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

struct Inner {
    /// The id of this run's first event.
    first: u64,
    /// Oldest first; ids are consecutive.
    ring: Mutex<VecDeque<Arc<Event>>>,
    /// The newest event's id (`first - 1`: none yet).
    newest: watch::Sender<u64>,
}

/// Events since a given id, as read from the ring.
#[derive(Debug)]
pub struct Since {
    pub events: Vec<Arc<Event>>,
    /// Events after the asked-for id that the ring no longer holds.
    pub missed: u64,
}

// === impl Events ===

impl Events {
    pub fn new() -> Events {
        Events::starting_at(now_unix_ms().saturating_mul(1000).max(1))
    }

    /// A log whose first event gets id `first` (at least 1).
    fn starting_at(first: u64) -> Events {
        let first = first.max(1);
        Events {
            inner: Arc::new(Inner {
                first,
                ring: Mutex::new(VecDeque::with_capacity(CAPACITY)),
                newest: watch::Sender::new(first - 1),
            }),
        }
    }

    /// Records `kind` as happening now, and wakes the followers.
    pub fn record(&self, kind: EventKind) {
        self.record_at(kind, now_unix_ms());
    }

    fn record_at(&self, kind: EventKind, at_unix_ms: u64) {
        let id = {
            let mut ring = self.lock();
            let id = ring.back().map_or(self.inner.first, |e| e.id + 1);
            if ring.len() == CAPACITY {
                ring.pop_front();
            }
            ring.push_back(Arc::new(Event {
                id,
                at_unix_ms,
                kind,
            }));
            id
        };
        // `send_replace`: followers or not, the newest id is kept.
        self.inner.newest.send_replace(id);
    }

    /// The events with an id above `after`, oldest first, at most `limit`
    /// of them (the newest ones). An `after` this log cannot have issued
    /// (0, an earlier run's, or above the newest) means all it holds.
    pub fn since(&self, after: u64, limit: usize) -> Since {
        let ring = self.lock();
        let first = self.inner.first;
        let newest = ring.back().map_or(first - 1, |e| e.id);
        let after = if (first - 1..=newest).contains(&after) {
            after
        } else {
            first - 1
        };
        let oldest = ring.front().map_or(newest + 1, |e| e.id);
        let missed = oldest.saturating_sub(after + 1);
        let start = ring.partition_point(|e| e.id <= after);
        let skip = (ring.len() - start).saturating_sub(limit);
        Since {
            events: ring.iter().skip(start + skip).cloned().collect(),
            missed,
        }
    }

    /// The newest event's id (one below the first while there is none).
    pub fn newest(&self) -> u64 {
        *self.inner.newest.borrow()
    }

    /// The newest id, and a receiver that changes whenever a new event is
    /// recorded.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.newest.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Event>>> {
        // A push or a copy cannot leave the ring half-changed; a panic
        // elsewhere while holding it poisons nothing that matters.
        self.inner
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Events {
    fn default() -> Events {
        Events::new()
    }
}

pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reload(n: u64) -> EventKind {
        EventKind::Reload {
            actor: format!("t{n}"),
            applied: true,
            outcome: None,
            error: None,
        }
    }

    fn ids(since: &Since) -> Vec<u64> {
        since.events.iter().map(|e| e.id).collect()
    }

    #[test]
    fn ids_are_consecutive_and_since_resumes_after_one() {
        let events = Events::starting_at(1);
        assert!(events.since(0, CAPACITY).events.is_empty());
        for n in 0..5 {
            events.record_at(reload(n), n);
        }
        assert_eq!(ids(&events.since(0, CAPACITY)), [1, 2, 3, 4, 5]);
        assert_eq!(ids(&events.since(3, CAPACITY)), [4, 5]);
        assert_eq!(ids(&events.since(5, CAPACITY)), [] as [u64; 0]);
        // A limit keeps the newest.
        assert_eq!(ids(&events.since(0, 2)), [4, 5]);
        assert_eq!(events.since(0, CAPACITY).missed, 0);
    }

    #[test]
    fn the_ring_keeps_the_newest_and_says_what_was_missed() {
        let events = Events::starting_at(1);
        for n in 0..(CAPACITY as u64 + 10) {
            events.record_at(reload(n), n);
        }
        let all = events.since(0, usize::MAX);
        assert_eq!(all.events.len(), CAPACITY);
        assert_eq!(all.events[0].id, 11);
        assert_eq!(all.missed, 10);
        assert_eq!(events.since(10, usize::MAX).missed, 0);
        assert_eq!(events.since(11, usize::MAX).events[0].id, 12);
    }

    #[test]
    fn an_id_from_another_run_reads_as_before_this_run() {
        let earlier = Events::new();
        earlier.record(reload(0));
        let last_seen = earlier.since(0, 1).events[0].id;
        // A restart: the new log's ids are above the old one's.
        let events = Events::starting_at(last_seen + 1_000_000);
        for n in 0..3 {
            events.record_at(reload(n), n);
        }
        let first = events.since(0, CAPACITY).events[0].id;
        assert!(first > last_seen);
        for after in [last_seen, 0, first + 99, u64::MAX] {
            let since = events.since(after, CAPACITY);
            assert_eq!(ids(&since), [first, first + 1, first + 2], "after {after}");
            assert_eq!(since.missed, 0);
        }
        assert_eq!(ids(&events.since(first + 2, CAPACITY)), [] as [u64; 0]);
        // An empty log asked about anything: nothing, nothing missed.
        let empty = Events::starting_at(u64::MAX);
        assert!(empty.since(u64::MAX, CAPACITY).events.is_empty());
        assert_eq!(empty.since(3, CAPACITY).missed, 0);
    }

    #[tokio::test]
    async fn followers_are_woken_by_a_new_event() {
        let events = Events::starting_at(1);
        let mut newest = events.subscribe();
        assert_eq!(*newest.borrow_and_update(), 0);
        let recorder = events.clone();
        tokio::spawn(async move { recorder.record(reload(1)) });
        newest.changed().await.unwrap();
        assert_eq!(*newest.borrow_and_update(), 1);
    }

    #[test]
    fn events_serialize_with_their_type() {
        let events = Events::starting_at(1);
        events.record_at(
            EventKind::Switch {
                model: "iris".into(),
                from: PoolName::Blue,
                to: PoolName::Green,
                reason: "flip".into(),
                actor: "127.0.0.1:1".into(),
                forced: false,
                note: None,
                origin: None,
            },
            7,
        );
        let json = serde_json::to_value(&*events.since(0, 1).events[0]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": 1, "at_unix_ms": 7, "type": "switch", "model": "iris",
                "from": "blue", "to": "green", "reason": "flip", "actor": "127.0.0.1:1", "forced": false})
        );
    }
}
