//! Where the switch state is kept: the [`StateStore`] the switchboard
//! persists through, and the two stores behind it. Never sees a request,
//! and never moves a pool itself: what it reads, the switchboard applies.
//!
//! - `file`: one JSON file, this instance's own (the default).
//! - `etcd`: one key per model under a prefix, shared by a fleet; a switch is
//!   a transaction on the model's key that only succeeds if the key is still
//!   at the revision this instance last saw, and every instance follows the
//!   prefix with a watch (see `etcd.rs` for the life of the connection).
//! - `cache`: the etcd backend's local copy, to start from when etcd is down.
//!
//! The trait's futures are boxed so the switchboard can hold either store
//! as `Arc<dyn StateStore>`; they run on the control side only (a switch, a
//! reload, the start), never per request.

pub mod cache;
pub mod etcd;
pub mod file;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::StateConfig;
use crate::metrics::Metrics;
use crate::switch::{ModelState, Switchboard};

pub use etcd::EtcdStore;
pub use file::FileStore;

/// A boxed future, as the trait's methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One model's switch state with the store's revision of it: etcd's
/// `mod_revision` of the model's key, 0 when the key does not exist (and
/// always 0 for the file backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub state: ModelState,
    pub revision: u64,
}

/// One switch to persist.
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    pub model: &'a str,
    /// The revision of the model's key this instance decided on: the
    /// switch is refused if the store holds another one.
    pub seen: u64,
    /// The model's state after the switch.
    pub next: &'a ModelState,
    /// Every model's state with `next` in, for a store that writes them all.
    pub all: &'a BTreeMap<String, Stored>,
}

/// Why a switch was not persisted.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another instance wrote the model's key since this one last saw it.
    /// Holds what the store has now (`None`: the key was deleted).
    #[error("the model's state changed in the store since this instance last saw it")]
    Conflict(Option<Box<Stored>>),
    /// The store could not be reached, or refused; nothing was written.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// The request went out but no answer came back: the switch may or may
    /// not be in the store. The store's own changes will say.
    #[error("state store unavailable: {0}")]
    Uncertain(String),
    /// The state file could not be written.
    #[error(transparent)]
    Write(StateError),
}

/// Why the state could not be read or written at start, or by a reload.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {} is corrupt; fix or delete it (the config's `active` applies when it is absent)", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("state file {} has version {found}; this switchyard reads version {}", path.display(), file::VERSION)]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write state file {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// etcd could not be read at start and there is no cache to start from.
    #[error("cannot read the switch state from etcd ({endpoints}): {reason}; {hint}")]
    Unreachable {
        endpoints: String,
        reason: String,
        /// What to do about it.
        hint: String,
    },
    /// A key under the prefix holds something that is not a switch state.
    #[error("etcd key {key:?} does not hold a model's switch state ({detail}); fix or delete the key (the config's `active` applies when it is absent)")]
    CorruptKey { key: String, detail: String },
    /// The cache names another prefix than the config's.
    #[error("state cache {} holds the state of prefix {found:?}, not {expected:?}; delete it or point state.cache_path elsewhere", path.display())]
    CacheOfAnotherPrefix {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("state.password_file: {0}")]
    Password(String),
    #[error("cannot set up TLS to etcd")]
    Tls(#[source] Box<crate::tls::TlsError>),
}

/// How the store stands, as `GET /models` shows it under `state_store`.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStatus {
    /// `file` or `etcd`.
    pub backend: &'static str,
    /// The file backend: whether the last write succeeded. etcd: whether
    /// this instance reaches etcd and follows the prefix; while false,
    /// switches are refused with 503 and traffic stays as it is.
    pub connected: bool,
    /// When `connected` last changed (or the store started).
    pub since_unix_ms: u64,
    /// The state file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// etcd's client URLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The newest etcd revision this instance has seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// The etcd backend's local copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_path: Option<PathBuf>,
    /// Whether the states this instance started with came from the cache
    /// (etcd could not be read at start).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub started_from_cache: bool,
    /// The last failure, kept after the store recovers.
    pub last_error: Option<String>,
    pub last_error_unix_ms: Option<u64>,
}

/// Where the switchboard keeps the switch state. See the module docs.
pub trait StateStore: Send + Sync {
    /// `true` when other instances share the store: states of models this
    /// config does not have are kept (another instance's, or a later
    /// reload's), not dropped.
    fn is_shared(&self) -> bool;

    /// Reads every model's state at start.
    fn load(&self) -> BoxFuture<'_, Result<BTreeMap<String, Stored>, StateError>>;

    /// Writes every model's state as the start or a reload left it (the
    /// file backend's state file; the etcd backend's cache). A path that
    /// cannot be written fails the start, not the first switch.
    fn save_all<'a>(
        &'a self,
        all: &'a BTreeMap<String, Stored>,
    ) -> BoxFuture<'a, Result<(), StateError>>;

    /// Persists one switch; the new revision of the model's key.
    fn commit<'a>(&'a self, commit: Commit<'a>) -> BoxFuture<'a, Result<u64, CommitError>>;

    /// Every model's state, after the switchboard applied something (a
    /// switch, a change the store reported): the etcd backend writes its
    /// cache from it, in the background.
    fn learned(&self, all: &BTreeMap<String, Stored>);

    /// `Err(why)` while a switch cannot be persisted (etcd not reachable):
    /// switches are refused at once instead of waiting for a timeout.
    fn check_available(&self) -> Result<(), String>;

    /// How the store stands now.
    fn status(&self) -> StoreStatus;

    /// Runs until `token` is cancelled: follows the changes other instances
    /// make and has `board` apply them (nothing to do for the file backend).
    fn follow(
        self: Arc<Self>,
        board: Arc<Switchboard>,
        token: CancellationToken,
    ) -> BoxFuture<'static, ()>;
}

/// Opens the store `config` names. Reads nothing yet; [`StateStore::load`] does.
pub fn open(config: &StateConfig, metrics: &Metrics) -> Result<Arc<dyn StateStore>, StateError> {
    Ok(match config {
        StateConfig::File { path } => Arc::new(FileStore::new(path.clone(), metrics.store())),
        StateConfig::Etcd(etcd) => Arc::new(EtcdStore::new(etcd, metrics.store())?),
    })
}
