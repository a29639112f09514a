//! The state file: each model's active pool and switch history, as JSON.
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

use serde::{Deserialize, Serialize};

use super::ModelState;

const VERSION: u32 = 1;

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
    #[error("state file {} has version {found}; this switchyard reads version {VERSION}", path.display())]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write state file {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    models: BTreeMap<String, ModelState>,
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
pub(super) async fn save(
    path: PathBuf,
    models: BTreeMap<String, ModelState>,
) -> Result<(), StateError> {
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
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);

    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(&json)?;
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
