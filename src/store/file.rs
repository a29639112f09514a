//! The file backend, [`FileStore`]: the state file, each model's active pool
//! and switch history as JSON, this instance's own and written whole on
//! every switch.
//!
//! Written atomically: a temp file beside it, fsync, rename over the old one,
//! fsync of the directory. A crash at any point leaves either the old or the
//! new file whole, never a torn one. A file that exists but cannot be read or
//! parsed stops the start: silently falling back to the config's `active`
//! could send traffic to the pool an operator switched away from.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{BoxFuture, Commit, CommitError, StateError, StateStore, StoreStatus, Stored};
use crate::events::now_unix_ms;
use crate::metrics::{StoreMetrics, StoreOp};
use crate::switch::{ModelState, Switchboard};
use crate::ErrorChain;

/// The version of the state file's format.
pub const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    models: BTreeMap<String, ModelState>,
}

/// The file backend: the state file, written whole on every switch.
pub struct FileStore {
    path: PathBuf,
    metrics: StoreMetrics,
    /// Written after each save; read by status calls.
    status: ArcSwap<StoreStatus>,
}

// === impl FileStore ===

impl FileStore {
    pub fn new(path: PathBuf, metrics: StoreMetrics) -> FileStore {
        metrics.up.set(1);
        let status = StoreStatus {
            backend: "file",
            connected: true,
            since_unix_ms: now_unix_ms(),
            path: Some(path.clone()),
            endpoints: None,
            prefix: None,
            revision: None,
            cache_path: None,
            started_from_cache: false,
            last_error: None,
            last_error_unix_ms: None,
        };
        FileStore {
            path,
            metrics,
            status: ArcSwap::from_pointee(status),
        }
    }

    /// Writes `all` and records how it went in the status and metrics.
    async fn save(&self, all: &BTreeMap<String, Stored>) -> Result<(), StateError> {
        let states = all
            .iter()
            .map(|(name, stored)| (name.clone(), stored.state.clone()))
            .collect();
        let saved = save(self.path.clone(), states).await;
        let now = now_unix_ms();
        let old = self.status.load_full();
        let mut status = (*old).clone();
        status.connected = saved.is_ok();
        if old.connected != status.connected {
            status.since_unix_ms = now;
        }
        if let Err(e) = &saved {
            status.last_error = Some(ErrorChain(e).to_string());
            status.last_error_unix_ms = Some(now);
            self.metrics.count_error(StoreOp::Write);
        }
        self.metrics.up.set(i64::from(status.connected));
        self.status.store(Arc::new(status));
        saved
    }
}

impl StateStore for FileStore {
    fn is_shared(&self) -> bool {
        false
    }

    fn load(&self) -> BoxFuture<'_, Result<BTreeMap<String, Stored>, StateError>> {
        Box::pin(async move {
            let path = self.path.clone();
            // Read on the blocking pool: with one worker thread, the runtime
            // would stall meanwhile.
            let loaded = tokio::task::spawn_blocking(move || load(&path))
                .await
                .map_err(|join| StateError::Read {
                    path: self.path.clone(),
                    source: std::io::Error::other(join),
                })?;
            if loaded.is_err() {
                self.metrics.count_error(StoreOp::Read);
            }
            Ok(loaded?
                .unwrap_or_default()
                .into_iter()
                .map(|(name, state)| (name, Stored { state, revision: 0 }))
                .collect())
        })
    }

    fn save_all<'a>(
        &'a self,
        all: &'a BTreeMap<String, Stored>,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(self.save(all))
    }

    fn commit<'a>(&'a self, commit: Commit<'a>) -> BoxFuture<'a, Result<u64, CommitError>> {
        Box::pin(async move {
            match self.save(commit.all).await {
                Ok(()) => Ok(0),
                Err(e) => {
                    warn!(model = commit.model, error = %ErrorChain(&e), "switch not persisted; nothing switched");
                    Err(CommitError::Write(e))
                }
            }
        })
    }

    fn learned(&self, _all: &BTreeMap<String, Stored>) {
        // Every change this store knows of is a switch it wrote itself.
    }

    fn check_available(&self) -> Result<(), String> {
        // A failed write is retried by the next switch: it may succeed.
        Ok(())
    }

    fn status(&self) -> StoreStatus {
        (**self.status.load()).clone()
    }

    fn follow(
        self: Arc<Self>,
        _board: Arc<Switchboard>,
        token: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        // Nobody else writes the file: nothing to follow.
        Box::pin(async move { token.cancelled().await })
    }
}

/// Reads the state file; `Ok(None)` when there is none yet.
pub(super) fn load(path: &Path) -> Result<Option<BTreeMap<String, ModelState>>, StateError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let file: StateFile = serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    if file.version != VERSION {
        return Err(StateError::Version {
            path: path.to_path_buf(),
            found: file.version,
        });
    }
    Ok(Some(file.models))
}

/// Writes the state file atomically, off the async runtime's threads.
async fn save(path: PathBuf, models: BTreeMap<String, ModelState>) -> Result<(), StateError> {
    let task_path = path.clone();
    match tokio::task::spawn_blocking(move || write_atomically(&task_path, models)).await {
        Ok(result) => result.map_err(|source| StateError::Write { path, source }),
        Err(join) => Err(StateError::Write {
            path,
            source: std::io::Error::other(join),
        }),
    }
}

fn write_atomically(path: &Path, models: BTreeMap<String, ModelState>) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(&StateFile {
        version: VERSION,
        models,
    })?;
    replace_file(path, &json)
}

/// Replaces the file at `path` with `bytes` and a final newline, so that a
/// crash at any point leaves the old or the new file whole: a temp file
/// beside it, fsync, rename, fsync of the directory.
pub(super) fn replace_file(path: &Path, json: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);

    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(json)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        // Best effort: the write already failed and that error is the one
        // to report; a temp file left behind is overwritten by the next save.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    // The rename is durable only once the directory entry is.
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolName;
    use crate::switch::{ModelState, SwitchOp};

    #[tokio::test]
    async fn saved_state_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert!(load(&path).unwrap().is_none());
        let s = ModelState::new(PoolName::Blue)
            .apply("iris", SwitchOp::Flip { expect: None }, 7, "127.0.0.1:1")
            .unwrap()
            .unwrap();
        let models = BTreeMap::from([("iris".to_string(), s.clone())]);
        save(path.clone(), models.clone()).await.unwrap();
        assert_eq!(load(&path).unwrap(), Some(models));
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(
            &path,
            b"{\"version\":1,\"models\":{\"iris\":{\"active\":\"red\"}}}",
        )
        .unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }));
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[tokio::test]
    async fn an_unwritable_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("state.json");
        let err = save(path, BTreeMap::new()).await.unwrap_err();
        assert!(matches!(err, StateError::Write { .. }));
    }
}

/// Properties of the state file: what `save` writes, `load` reads back
/// exactly; a truncated or garbled file is an error, never a panic.
#[cfg(test)]
mod props {
    use std::collections::VecDeque;
    use std::sync::OnceLock;

    use proptest::prelude::*;

    use super::*;
    use crate::config::StepConfig;
    use crate::pool::PoolName;
    use crate::switch::{ModelState, Split, SwitchReason, SwitchRecord, HISTORY_LEN};

    fn runtime() -> &'static tokio::runtime::Runtime {
        static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        RUNTIME.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
        })
    }

    fn pool() -> impl Strategy<Value = PoolName> {
        prop_oneof![Just(PoolName::Blue), Just(PoolName::Green)]
    }

    fn split() -> impl Strategy<Value = Option<Split>> {
        (pool(), 0..=1000u16).prop_map(|(pool, permille)| Split::new(pool, permille))
    }

    fn record() -> impl Strategy<Value = SwitchRecord> {
        (
            split(),
            pool(),
            pool(),
            prop_oneof![
                Just(SwitchReason::Flip),
                Just(SwitchReason::Activate),
                Just(SwitchReason::Rollback),
                Just(SwitchReason::AutoRollback),
                Just(SwitchReason::Rollout),
            ],
            any::<u64>(),
            // The actor is a socket address in practice; any text must survive.
            any::<String>(),
            any::<bool>(),
            prop::option::of(any::<String>()),
        )
            .prop_map(
                |(split, from, to, reason, at_unix_ms, actor, forced, note)| SwitchRecord {
                    from,
                    to,
                    reason,
                    at_unix_ms,
                    actor,
                    forced,
                    note,
                    split,
                },
            )
    }

    fn model_state() -> impl Strategy<Value = ModelState> {
        (
            pool(),
            prop::collection::vec(record(), 0..=HISTORY_LEN),
            prop::option::of(record()),
            prop::option::of(record()),
            split(),
            // A rollout started at some step of a plan, or none.
            prop::option::of((any::<u64>(), 0..3usize, any::<bool>())),
        )
            .prop_map(
                |(active, history, last_switch, last_auto_rollback, split, rollout)| {
                    let state = ModelState {
                        active,
                        history: VecDeque::from(history),
                        last_switch,
                        last_auto_rollback,
                        split: split.filter(|s| s.pool != active),
                        rollout: None,
                    };
                    match rollout {
                        None => state,
                        Some((at, passed, paused)) => rolled_out(state, at, passed, paused),
                    }
                },
            )
    }

    /// `state` with a rollout started at `at`, `passed` steps passed, and
    /// paused or not.
    fn rolled_out(state: ModelState, at: u64, passed: usize, paused: bool) -> ModelState {
        let at = at % (1 << 50);
        let steps: Vec<StepConfig> = ["5%:30s", "25%:60s", "50%:1m", "100%"]
            .iter()
            .map(|s| crate::config::parse_step(s).unwrap())
            .collect();
        let mut s = ModelState {
            split: None,
            ..state
        }
        .start_rollout("m", &steps, at, "prop")
        .unwrap();
        for i in 0..passed {
            let r = s.live_rollout().unwrap().step_ref();
            s = s
                .pass_step("m", r, format!("step {} passed", i + 1), at + 1)
                .unwrap();
        }
        if paused {
            s = s.pause_rollout("m", at + 2).unwrap();
        }
        s
    }

    /// Every model of a config: names as the config allows them.
    fn models() -> impl Strategy<Value = BTreeMap<String, ModelState>> {
        prop::collection::btree_map("[A-Za-z0-9._-]{1,64}", model_state(), 0..6)
    }

    /// Saves `models` to a fresh directory; returns it, the path and the bytes.
    fn saved(models: &BTreeMap<String, ModelState>) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        runtime()
            .block_on(save(path.clone(), models.clone()))
            .unwrap();
        let bytes = fs::read(&path).unwrap();
        (dir, path, bytes)
    }

    /// Loads a file of unknown content: an error that says it is corrupt or
    /// of another version, or a state that itself saves and loads back.
    fn check_load(path: &Path) -> Result<(), TestCaseError> {
        match load(path) {
            Ok(None) => prop_assert!(false, "the file exists"),
            Ok(Some(models)) => {
                let (_dir, again, _) = saved(&models);
                prop_assert_eq!(load(&again).unwrap(), Some(models));
            }
            Err(StateError::Corrupt { .. } | StateError::Version { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error {:?}", other),
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn what_is_saved_loads_back_identically(models in models()) {
            let (dir, path, _) = saved(&models);
            prop_assert_eq!(load(&path).unwrap(), Some(models));
            prop_assert!(!dir.path().join("state.json.tmp").exists());
        }

        /// A file cut anywhere before its closing brace (a torn write, a
        /// full disk) is `Corrupt`, naming the file.
        #[test]
        fn a_truncated_file_is_corrupt(models in models(), cut in any::<prop::sample::Index>()) {
            let (_dir, path, bytes) = saved(&models);
            let end = bytes.iter().rposition(|b| *b == b'}').unwrap();
            let cut = cut.index(end + 1);
            fs::write(&path, &bytes[..cut]).unwrap();
            let err = load(&path).unwrap_err();
            prop_assert!(matches!(err, StateError::Corrupt { .. }), "{:?}", err);
            prop_assert!(err.to_string().contains(&path.display().to_string()));
        }

        /// Bytes overwritten anywhere: an error or a state, never a panic.
        /// (A changed digit can leave a valid, different state.)
        #[test]
        fn a_garbled_file_never_panics(
            models in models(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let (_dir, path, mut bytes) = saved(&models);
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            fs::write(&path, &bytes).unwrap();
            check_load(&path)?;
        }

        /// Any bytes at all: an error or a state, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.json");
            fs::write(&path, &bytes).unwrap();
            check_load(&path)?;
        }

        /// A file from another version is refused whatever it holds.
        #[test]
        fn another_version_is_refused(models in models(), version in any::<u32>()) {
            prop_assume!(version != VERSION);
            let (_dir, path, _) = saved(&models);
            let mut json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
            json["version"] = version.into();
            fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
            let err = load(&path).unwrap_err();
            prop_assert!(matches!(err, StateError::Version { found, .. } if found == version), "{:?}", err);
        }
    }
}
