//! [`Control`]: what the switchboard's writers hold under its lock, every
//! model's switch state with the store's revision of it, and how the
//! starting states are decided.

use std::collections::BTreeMap;

use tracing::warn;

use super::ModelState;
use crate::pool::PoolName;
use crate::store::Stored;

/// The writers' side of the switchboard, behind its lock: every model's
/// switch state with the store's revision of it.
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// The models this config has.
    pub(super) models: BTreeMap<String, Stored>,
    /// States a shared store holds for models this config does not have:
    /// other instances', or a later reload's. Always empty for a store of
    /// this instance's own.
    pub(super) others: BTreeMap<String, Stored>,
}

// === impl Control ===

impl Control {
    /// Decides each configured model's starting state from what the store
    /// holds: a saved state wins over the config's `active`. Saved models
    /// the config does not have are kept when the store is shared, else
    /// dropped with a warning.
    pub fn starting(
        mut saved: BTreeMap<String, Stored>,
        configured: &[(String, PoolName)],
        shared: bool,
    ) -> Control {
        let mut models = BTreeMap::new();
        for (name, active) in configured {
            let stored = saved.remove(name).unwrap_or_else(|| Stored {
                state: ModelState::new(*active),
                revision: 0,
            });
            models.insert(name.clone(), stored);
        }
        if !shared {
            for name in saved.keys() {
                warn!(
                    model = %name,
                    "the state file names a model the config does not have; ignoring it"
                );
            }
            saved.clear();
        }
        Control {
            models,
            others: saved,
        }
    }

    /// The state of `name`, whether this config has the model or only the
    /// store does: a reload adding the model starts it there.
    pub fn state(&self, name: &str) -> Option<&ModelState> {
        self.models
            .get(name)
            .or_else(|| self.others.get(name))
            .map(|s| &s.state)
    }

    /// Every state, configured or not.
    pub fn all(&self) -> BTreeMap<String, Stored> {
        let mut all = self.others.clone();
        all.extend(self.models.iter().map(|(k, v)| (k.clone(), v.clone())));
        all
    }

    pub(super) fn revision(&self, name: &str) -> u64 {
        self.models
            .get(name)
            .or_else(|| self.others.get(name))
            .map_or(0, |s| s.revision)
    }

    pub(super) fn states(&self) -> BTreeMap<String, ModelState> {
        self.models
            .iter()
            .map(|(k, v)| (k.clone(), v.state.clone()))
            .collect()
    }
}
