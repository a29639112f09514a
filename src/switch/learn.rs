//! Switches other instances made, as a shared store (etcd) reports them:
//! [`Switchboard::learn`] applies them under the writers' lock and through
//! the same `ArcSwap` store as a local switch, with the same log line,
//! metric and event (marked `origin: "store"`).
//!
//! An instance follows the fleet's switch even when its own probes see no
//! healthy endpoint in the new pool (the writer's guard judged its own
//! view); it says so in a warning. The automatic-rollback counter is not
//! bumped for a rollback another instance's watch decided.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{debug, info, warn};

use super::{Control, Split, Switchboard};
use crate::events::EventKind;
use crate::pool::PoolName;
use crate::store::Stored;

/// What a shared store reports, for [`Switchboard::learn`].
#[derive(Debug, Clone)]
pub enum Learned {
    /// Everything under the store's prefix, read at once (on connect and
    /// reconnect) at store revision `revision`: the store's truth, applied
    /// where it differs from what this instance has, unless this instance
    /// has since learned something newer (a switch of its own committed
    /// after the read). A model the store lacks keeps its state, with
    /// revision 0 (the next switch creates the key).
    Snapshot {
        revision: u64,
        states: BTreeMap<String, Stored>,
    },
    /// Changes as they happen, oldest first: each applied if newer than
    /// what this instance has. `None`: the key was deleted.
    Changes(Vec<(String, Option<Stored>)>),
}

/// A model whose active pool [`Switchboard::learn`] moved.
#[derive(Debug, Clone)]
pub struct Followed {
    pub model: String,
    pub from: PoolName,
    pub to: PoolName,
    /// When the switch was decided, on the writer's clock.
    pub at_unix_ms: u64,
}

// === impl Switchboard ===

impl Switchboard {
    /// Applies what a shared store reports (switches other instances made)
    /// under the writers' lock, like a local switch: the `ArcSwap` store,
    /// the log line, the metric, the event, the published states. Returns
    /// the models whose active pool moved.
    pub async fn learn(&self, learned: Learned) -> Vec<Followed> {
        let mut control = self.control.lock().await;
        self.learn_locked(&mut control, learned)
    }

    pub(super) fn learn_locked(&self, control: &mut Control, learned: Learned) -> Vec<Followed> {
        let mut followed = Vec::new();
        let mut changed = false;
        match learned {
            Learned::Snapshot {
                revision,
                mut states,
            } => {
                // A key gone from the store: keep serving the state, and let
                // the next switch create the key again.
                for (name, stored) in control.models.iter_mut() {
                    if !states.contains_key(name)
                        && stored.revision != 0
                        && stored.revision <= revision
                    {
                        warn!(model = %name, "the state store no longer holds this model's state; keeping the active pool");
                        stored.revision = 0;
                    }
                }
                control
                    .others
                    .retain(|name, stored| states.contains_key(name) || stored.revision > revision);
                let names: Vec<String> = states.keys().cloned().collect();
                for name in names {
                    let Some(stored) = states.remove(&name) else {
                        continue;
                    };
                    let known = control
                        .models
                        .get(&name)
                        .or_else(|| control.others.get(&name));
                    if known == Some(&stored) || known.is_some_and(|k| k.revision > revision) {
                        continue;
                    }
                    changed = true;
                    followed.extend(self.follow_one(control, name, stored));
                }
            }
            Learned::Changes(changes) => {
                for (name, stored) in changes {
                    let Some(stored) = stored else {
                        if let Some(known) = control.models.get_mut(&name) {
                            warn!(model = %name, "the model's key was deleted from the state store; keeping the active pool");
                            known.revision = 0;
                        } else {
                            control.others.remove(&name);
                        }
                        continue;
                    };
                    if stored.revision <= control.revision(&name) {
                        // This instance's own write coming back, or older.
                        continue;
                    }
                    changed = true;
                    followed.extend(self.follow_one(control, name, stored));
                }
            }
        }
        if changed {
            self.published.store(Arc::new(control.states()));
            self.store.learned(&control.all());
            self.switched.send_modify(|n| *n += 1);
        }
        followed
    }

    /// Takes `stored` as the state of `name`, moving its active pool if
    /// this config has the model.
    fn follow_one(&self, control: &mut Control, name: String, stored: Stored) -> Option<Followed> {
        let Some(model) = self
            .model(&name)
            .filter(|_| control.models.contains_key(&name))
        else {
            control.others.insert(name, stored);
            return None;
        };
        let from = control
            .models
            .get(&name)
            .map_or(model.active_name(), |s| s.state.active);
        let to = stored.state.active;
        let split = stored.state.split;
        let was = model.split();
        let record = stored.state.last_switch.clone();
        control.models.insert(name.clone(), stored);
        if from == to {
            if split == was {
                debug!(model = %name, active = %to, "the state store's state changed; the active pool did not");
            } else {
                model.store_routing(to, split);
                info!(model = %name, active = %to, split = %split.map_or_else(|| "none".to_string(), |s| s.to_string()), origin = "store", "split changed");
                self.events.record(EventKind::Weight {
                    model: name.clone(),
                    pool: to.other(),
                    percent: split.map_or(0.0, Split::percent),
                    previous: was.map_or(0.0, Split::percent),
                    actor: "store".to_string(),
                    origin: Some("store"),
                });
            }
            return None;
        }
        model.store_routing(to, split);
        model.metrics.count_switch(to);
        if model.pool(to).healthy_count() == 0 {
            warn!(model = %name, pool = %to, "following a switch to a pool this instance sees no healthy endpoint in");
        }
        let (reason, actor, forced, note, at_unix_ms) = match &record {
            Some(r) => (
                r.reason.to_string(),
                r.actor.clone(),
                r.forced,
                r.note.clone(),
                r.at_unix_ms,
            ),
            None => ("store".to_string(), "store".to_string(), false, None, 0),
        };
        info!(
            model = %name,
            from = %from,
            to = %to,
            reason = %reason,
            actor = %actor,
            forced,
            note = note.as_deref(),
            origin = "store",
            "switched active pool"
        );
        self.events.record(EventKind::Switch {
            model: name.clone(),
            from,
            to,
            reason,
            actor,
            forced,
            note,
            origin: Some("store"),
        });
        Some(Followed {
            model: name,
            from,
            to,
            at_unix_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::events::Events;
    use crate::metrics::Metrics;
    use crate::store::{BoxFuture, Commit, CommitError, StateError, StateStore, StoreStatus};
    use crate::switch::{Model, ModelState, SwitchOp};

    /// A shared store that keeps nothing: what `learn` does is all there is.
    struct Shared;

    impl StateStore for Shared {
        fn is_shared(&self) -> bool {
            true
        }
        fn load(&self) -> BoxFuture<'_, Result<BTreeMap<String, Stored>, StateError>> {
            Box::pin(async { Ok(BTreeMap::new()) })
        }
        fn save_all<'a>(
            &'a self,
            _all: &'a BTreeMap<String, Stored>,
        ) -> BoxFuture<'a, Result<(), StateError>> {
            Box::pin(async { Ok(()) })
        }
        fn commit<'a>(&'a self, _c: Commit<'a>) -> BoxFuture<'a, Result<u64, CommitError>> {
            Box::pin(async { Err(CommitError::Unavailable("test".into())) })
        }
        fn learned(&self, _all: &BTreeMap<String, Stored>) {}
        fn check_available(&self) -> Result<(), String> {
            Ok(())
        }
        fn status(&self) -> StoreStatus {
            unimplemented!("not asked in these tests")
        }
        fn follow(
            self: Arc<Self>,
            _board: Arc<Switchboard>,
            _token: CancellationToken,
        ) -> BoxFuture<'static, ()> {
            Box::pin(async {})
        }
    }

    async fn board() -> Switchboard {
        let text = "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[state]\npath = \"s.json\"\n[[models]]\nname = \"iris\"\nblue.endpoints = [\"http://127.0.0.1:1\"]\ngreen.endpoints = [\"http://127.0.0.1:2\"]\n";
        let config = crate::Config::from_toml(text, Path::new("t.toml")).unwrap();
        let model = Arc::new(Model::new(
            &config.models[0],
            PoolName::Blue,
            &config.proxy.upstream(),
            &Metrics::new(),
        ));
        let control = Control::starting(
            BTreeMap::new(),
            &[("iris".to_string(), PoolName::Blue)],
            true,
        );
        Switchboard::start(vec![model], control, Arc::new(Shared), Events::new())
            .await
            .unwrap()
    }

    fn green(at: u64) -> ModelState {
        ModelState::new(PoolName::Blue)
            .apply("iris", SwitchOp::Flip { expect: None }, at, "10.0.0.1:1")
            .unwrap()
            .unwrap()
    }

    fn change(name: &str, state: ModelState, revision: u64) -> Learned {
        Learned::Changes(vec![(name.to_string(), Some(Stored { state, revision }))])
    }

    fn active(board: &Switchboard) -> PoolName {
        board.model("iris").unwrap().active_name()
    }

    #[tokio::test]
    async fn a_newer_change_moves_the_pool_and_an_older_one_does_not() {
        let board = board().await;
        let followed = board.learn(change("iris", green(7), 5)).await;
        assert_eq!(active(&board), PoolName::Green);
        assert_eq!(
            (followed.len(), followed[0].from, followed[0].at_unix_ms),
            (1, PoolName::Blue, 7)
        );
        assert_eq!(board.states()["iris"].active, PoolName::Green);
        let events = board.events().since(0, 10).events;
        assert!(matches!(
            &events[0].kind,
            EventKind::Switch { origin: Some("store"), actor, .. } if actor == "10.0.0.1:1"
        ));

        // The same revision (this instance's own write coming back) or an
        // older one: nothing.
        let blue = ModelState::new(PoolName::Blue);
        assert!(board
            .learn(change("iris", blue.clone(), 5))
            .await
            .is_empty());
        assert!(board.learn(change("iris", blue, 4)).await.is_empty());
        assert_eq!(active(&board), PoolName::Green);
    }

    #[tokio::test]
    async fn a_snapshot_applies_what_differs_unless_something_newer_is_known() {
        let board = board().await;
        board.learn(change("iris", green(1), 9)).await;
        // Read at revision 8, before the change above: not applied.
        let older = Learned::Snapshot {
            revision: 8,
            states: BTreeMap::from([(
                "iris".to_string(),
                Stored {
                    state: ModelState::new(PoolName::Blue),
                    revision: 3,
                },
            )]),
        };
        assert!(board.learn(older).await.is_empty());
        assert_eq!(active(&board), PoolName::Green);
        // Read later, with another state: applied, even at a lower key
        // revision (etcd restored from a backup).
        let later = Learned::Snapshot {
            revision: 20,
            states: BTreeMap::from([(
                "iris".to_string(),
                Stored {
                    state: ModelState::new(PoolName::Blue),
                    revision: 3,
                },
            )]),
        };
        assert_eq!(board.learn(later).await.len(), 1);
        assert_eq!(active(&board), PoolName::Blue);
    }

    #[tokio::test]
    async fn a_deleted_key_keeps_the_pool_and_other_models_are_kept_aside() {
        let board = board().await;
        board.learn(change("iris", green(1), 4)).await;
        board
            .learn(Learned::Changes(vec![("iris".to_string(), None)]))
            .await;
        assert_eq!(active(&board), PoolName::Green);
        assert_eq!(board.lock().await.revision("iris"), 0);

        // A model this config lacks: kept for a reload that adds it.
        board.learn(change("chat", green(2), 6)).await;
        let control = board.lock().await;
        assert_eq!(
            control.state("chat").map(|s| s.active),
            Some(PoolName::Green)
        );
        assert!(!board.states().contains_key("chat"));
        assert_eq!(control.all().len(), 2);
    }
}
