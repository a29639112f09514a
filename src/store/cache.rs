//! The etcd backend's local cache (`state.cache_path`): every model's state
//! and its revision as this instance last knew them, so that an instance
//! that starts while etcd is down starts on the pools the fleet last used,
//! not on the config's `active`.
//!
//! Written like the state file (temp file, fsync, rename, fsync of the
//! directory) whenever the instance learns a new state. Writes run in the
//! background, off the switchboard's lock: [`Cache::update`] hands over the
//! newest states and [`Cache::run`] writes them, skipping any a newer one
//! replaced meanwhile. [`Cache::write`] writes at once, for the start and
//! reloads, whose callers must know it worked. All writes take one lock and
//! write the newest states at that moment, so the file never goes back to
//! an older state than one already written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{file, StateError, Stored};
use crate::metrics::{StoreMetrics, StoreOp};
use crate::switch::ModelState;
use crate::ErrorChain;

/// The version of the cache's format.
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    version: u32,
    /// The etcd prefix the states are of.
    prefix: String,
    models: BTreeMap<String, CachedModel>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CachedModel {
    /// etcd's `mod_revision` of the model's key (0: not in etcd).
    revision: u64,
    state: ModelState,
}

/// States to write, numbered so a write can tell it is not the newest.
type Pending = (u64, Arc<BTreeMap<String, Stored>>);

/// The cache file and its background writer.
pub struct Cache {
    path: PathBuf,
    prefix: String,
    /// The newest states handed over, and their number.
    newest: watch::Sender<Pending>,
    /// Held across a write; the number of the states last written.
    written: tokio::sync::Mutex<u64>,
    metrics: StoreMetrics,
}

// === impl Cache ===

impl Cache {
    pub fn new(path: PathBuf, prefix: String, metrics: StoreMetrics) -> Cache {
        Cache {
            path,
            prefix,
            newest: watch::Sender::new((0, Arc::new(BTreeMap::new()))),
            written: tokio::sync::Mutex::new(0),
            metrics,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the cache; `Ok(None)` when there is none yet. A cache of
    /// another prefix, or one that cannot be parsed, is an error: starting
    /// from it could put traffic on a pool nobody chose.
    pub fn load(&self) -> Result<Option<BTreeMap<String, Stored>>, StateError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let file: CacheFile =
            serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        if file.version != VERSION {
            return Err(StateError::Version {
                path: self.path.clone(),
                found: file.version,
            });
        }
        if file.prefix != self.prefix {
            return Err(StateError::CacheOfAnotherPrefix {
                path: self.path.clone(),
                found: file.prefix,
                expected: self.prefix.clone(),
            });
        }
        Ok(Some(
            file.models
                .into_iter()
                .map(|(name, m)| {
                    let stored = Stored {
                        state: m.state,
                        revision: m.revision,
                    };
                    (name, stored)
                })
                .collect(),
        ))
    }

    /// Hands `all` over to the background writer.
    pub fn update(&self, all: &BTreeMap<String, Stored>) {
        let all = Arc::new(all.clone());
        self.newest.send_modify(|(n, states)| {
            *n += 1;
            *states = all;
        });
    }

    /// Writes `all` now (and hands it over, so the background writer does
    /// not write an older one after it).
    pub async fn write(&self, all: &BTreeMap<String, Stored>) -> Result<(), StateError> {
        self.update(all);
        self.write_newest().await
    }

    /// Writes whatever was handed over last, until `token` is cancelled;
    /// then writes what is still pending and returns.
    pub async fn run(&self, token: CancellationToken) {
        let mut newest = self.newest.subscribe();
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                changed = newest.changed() => if changed.is_err() {
                    break;
                },
            }
            if let Err(e) = self.write_newest().await {
                warn!(error = %ErrorChain(&e), "state cache not written; it is written again with the next change");
            }
        }
        if let Err(e) = self.write_newest().await {
            warn!(error = %ErrorChain(&e), "state cache not written at shutdown");
        }
    }

    async fn write_newest(&self) -> Result<(), StateError> {
        let mut written = self.written.lock().await;
        let (n, states) = self.newest.borrow().clone();
        if n <= *written {
            return Ok(());
        }
        let file = CacheFile {
            version: VERSION,
            prefix: self.prefix.clone(),
            models: states
                .iter()
                .map(|(name, s)| {
                    let cached = CachedModel {
                        revision: s.revision,
                        state: s.state.clone(),
                    };
                    (name.clone(), cached)
                })
                .collect(),
        };
        let path = self.path.clone();
        let wrote = tokio::task::spawn_blocking(move || {
            let json = serde_json::to_vec_pretty(&file)?;
            file::replace_file(&path, &json)
        })
        .await
        .unwrap_or_else(|join| Err(std::io::Error::other(join)));
        match wrote {
            Ok(()) => {
                *written = n;
                Ok(())
            }
            Err(source) => {
                self.metrics.count_error(StoreOp::Cache);
                Err(StateError::Write {
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::pool::PoolName;
    use crate::switch::SwitchOp;

    fn states() -> BTreeMap<String, Stored> {
        let flipped = ModelState::new(PoolName::Blue)
            .apply("iris", SwitchOp::Flip { expect: None }, 7, "127.0.0.1:1")
            .unwrap()
            .unwrap();
        BTreeMap::from([
            (
                "iris".to_string(),
                Stored {
                    state: flipped,
                    revision: 12,
                },
            ),
            (
                "chat".to_string(),
                Stored {
                    state: ModelState::new(PoolName::Green),
                    revision: 0,
                },
            ),
        ])
    }

    #[tokio::test]
    async fn what_is_written_loads_back_with_its_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        let cache = Cache::new(path.clone(), "/sy/".into(), Metrics::new().store());
        assert_eq!(cache.load().unwrap(), None);
        cache.write(&states()).await.unwrap();
        assert_eq!(cache.load().unwrap(), Some(states()));
        assert!(!dir.path().join("cache.json.tmp").exists());

        let other = Cache::new(path, "/other/".into(), Metrics::new().store());
        let err = other.load().unwrap_err();
        assert!(
            matches!(err, StateError::CacheOfAnotherPrefix { .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_background_writer_writes_the_newest_and_flushes_on_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        let cache = Arc::new(Cache::new(path, "/sy/".into(), Metrics::new().store()));
        let token = CancellationToken::new();
        let writer = tokio::spawn({
            let cache = Arc::clone(&cache);
            let token = token.clone();
            async move { cache.run(token).await }
        });
        let mut all = states();
        cache.update(&all);
        all.remove("chat");
        cache.update(&all);
        token.cancel();
        writer.await.unwrap();
        assert_eq!(cache.load().unwrap(), Some(all));
    }

    #[tokio::test]
    async fn a_corrupt_cache_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        std::fs::write(
            &path,
            b"{\"version\":1,\"prefix\":\"/sy/\",\"models\":{\"iris\":{}}}",
        )
        .unwrap();
        let cache = Cache::new(path.clone(), "/sy/".into(), Metrics::new().store());
        let err = cache.load().unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }));
        assert!(err.to_string().contains(&path.display().to_string()));
    }
}
