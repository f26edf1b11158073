//! Config maps (kfp-kubernetes `use_config_map_as_env`, `use_config_map_as_volume`) from the
//! agent's config map store: a directory (`--config-maps-dir`) laid out as Kubernetes mounts a
//! config map, one directory per config map and one file per key (`DIR/<name>/<key>`). The
//! agent advertises `configmap.gantry.dev/<name>=true` for each one present when it starts;
//! values are read afresh for every step. Config maps hold configuration, not secrets: their
//! values are not masked in logs (use a secret for anything that must not be seen).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gantry_model::{
    config_map_label, validate_resource_name, validate_secret_key, ConfigMapEnv, ConfigMapVolume,
    NameError, RESOURCE_LABEL_VALUE,
};

/// The largest value read into a variable (a Kubernetes config map holds at most 1 MiB).
const MAX_VALUE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigMapError {
    #[error("config maps dir {}: {error}", dir.display())]
    Dir { dir: PathBuf, error: std::io::Error },
    #[error("config maps dir {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("config map name {name:?} {error}")]
    Name { name: String, error: NameError },
    #[error("key {key:?} of config map {name:?} {error}")]
    Key {
        key: String,
        name: String,
        error: NameError,
    },
    #[error("config map {name:?}, key {key:?}: {error}")]
    Read {
        name: String,
        key: String,
        error: std::io::Error,
    },
    #[error(
        "config map {name:?}, key {key:?}: the value is not a file of UTF-8 text without NUL \
         bytes of at most {MAX_VALUE_BYTES} bytes"
    )]
    Value { name: String, key: String },
    #[error(
        "the step needs key {key:?} of config map {name:?} (as {env}), and {}",
        match dir { Some(d) => format!("the config map store {} has no such key", d.display()), None => "this agent has no config map store (--config-maps-dir)".into() }
    )]
    Missing {
        name: String,
        key: String,
        env: String,
        dir: Option<PathBuf>,
    },
    #[error(
        "the step mounts config map {name:?} at {mount_path}, and {}",
        match dir { Some(d) => format!("the config map store {} has no such config map", d.display()), None => "this agent has no config map store (--config-maps-dir)".into() }
    )]
    MissingVolume {
        name: String,
        mount_path: String,
        dir: Option<PathBuf>,
    },
}

#[derive(Debug)]
pub struct ConfigMapStore {
    dir: PathBuf,
}

impl ConfigMapStore {
    pub fn open(dir: &Path) -> Result<Self, ConfigMapError> {
        let meta = std::fs::metadata(dir).map_err(|error| ConfigMapError::Dir {
            dir: dir.to_path_buf(),
            error,
        })?;
        if !meta.is_dir() {
            return Err(ConfigMapError::NotADirectory(dir.to_path_buf()));
        }
        Ok(ConfigMapStore {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `configmap.gantry.dev/<name>=true` for each config map present (directories with
    /// valid names; others are skipped with a warning).
    pub fn labels(&self) -> Result<BTreeMap<String, String>, ConfigMapError> {
        let dir_error = |error| ConfigMapError::Dir {
            dir: self.dir.clone(),
            error,
        };
        let mut labels = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir).map_err(dir_error)? {
            let entry = entry.map_err(dir_error)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.path().is_dir() {
                continue;
            }
            match validate_resource_name(&name) {
                Ok(()) => {
                    labels.insert(config_map_label(&name), RESOURCE_LABEL_VALUE.to_string());
                }
                Err(e) => tracing::warn!(dir = %self.dir.display(), config_map = %name,
                    "skipping a config map whose name no step could use: it {e}"),
            }
        }
        Ok(labels)
    }

    /// The value of `key` of config map `name`; `Ok(None)` when either does not exist.
    pub fn read(&self, name: &str, key: &str) -> Result<Option<String>, ConfigMapError> {
        // Checked again here: the names come over the wire and become a path.
        validate_resource_name(name).map_err(|error| ConfigMapError::Name {
            name: name.to_string(),
            error,
        })?;
        validate_secret_key(key).map_err(|error| ConfigMapError::Key {
            key: key.to_string(),
            name: name.to_string(),
            error,
        })?;
        let path = self.dir.join(name).join(key);
        let read_error = |error| ConfigMapError::Read {
            name: name.to_string(),
            key: key.to_string(),
            error,
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(e)),
        };
        let bad = || ConfigMapError::Value {
            name: name.to_string(),
            key: key.to_string(),
        };
        if !meta.is_file() || meta.len() > MAX_VALUE_BYTES {
            return Err(bad());
        }
        let bytes = std::fs::read(&path).map_err(read_error)?;
        match String::from_utf8(bytes) {
            Ok(v) if !v.contains('\0') => Ok(Some(v)),
            _ => Err(bad()),
        }
    }
}

/// The store at `dir`, if given, its labels added to `labels` (at agent start).
pub fn open_store(
    dir: Option<&Path>,
    labels: &mut BTreeMap<String, String>,
) -> Result<Option<ConfigMapStore>, ConfigMapError> {
    let Some(dir) = dir else { return Ok(None) };
    let store = ConfigMapStore::open(dir)?;
    let found = store.labels()?;
    tracing::info!(dir = %dir.display(), config_maps = found.len(), "config map store");
    labels.extend(found);
    Ok(Some(store))
}

/// The variables of `refs`. A missing config map or key fails, naming both, unless optional.
pub fn env(
    store: Option<&ConfigMapStore>,
    refs: &[ConfigMapEnv],
) -> Result<Vec<(String, String)>, ConfigMapError> {
    let mut out = Vec::new();
    for r in refs {
        let value = match store {
            Some(s) => s.read(&r.config_map, &r.key)?,
            None => None,
        };
        match value {
            Some(v) => out.push((r.env.clone(), v)),
            None if r.optional => {}
            None => {
                return Err(ConfigMapError::Missing {
                    name: r.config_map.clone(),
                    key: r.key.clone(),
                    env: r.env.clone(),
                    dir: store.map(|s| s.dir().to_path_buf()),
                })
            }
        }
    }
    Ok(out)
}

/// `(host directory, mount path)` of each config map volume; a missing one fails unless
/// optional.
pub fn mounts(
    store: Option<&ConfigMapStore>,
    wanted: &[ConfigMapVolume],
) -> Result<Vec<(PathBuf, String)>, ConfigMapError> {
    let mut out = Vec::new();
    for w in wanted {
        validate_resource_name(&w.config_map).map_err(|error| ConfigMapError::Name {
            name: w.config_map.clone(),
            error,
        })?;
        let dir = store.map(|s| s.dir().join(&w.config_map));
        match dir {
            Some(d) if d.is_dir() => out.push((d, w.mount_path.clone())),
            _ if w.optional => {}
            _ => {
                return Err(ConfigMapError::MissingVolume {
                    name: w.config_map.clone(),
                    mount_path: w.mount_path.clone(),
                    dir: store.map(|s| s.dir().to_path_buf()),
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(files: &[(&str, &str, &str)]) -> (tempfile::TempDir, ConfigMapStore) {
        let dir = tempfile::tempdir().unwrap();
        for (name, key, value) in files {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join(key), value).unwrap();
        }
        let store = ConfigMapStore::open(dir.path()).unwrap();
        (dir, store)
    }

    fn e(name: &str, key: &str, env: &str, optional: bool) -> ConfigMapEnv {
        ConfigMapEnv {
            config_map: name.into(),
            key: key.into(),
            env: env.into(),
            optional,
        }
    }

    #[test]
    fn values_become_variables_and_directories_mounts_and_missing_ones_are_named() {
        let (dir, store) = store_with(&[("app", "mode", "fast"), ("app", "level", "3")]);
        assert_eq!(
            store.labels().unwrap().keys().collect::<Vec<_>>(),
            vec!["configmap.gantry.dev/app"]
        );
        let got = env(
            Some(&store),
            &[e("app", "mode", "MODE", false), e("gone", "k", "K", true)],
        )
        .unwrap();
        assert_eq!(got, vec![("MODE".to_string(), "fast".to_string())]);
        let err = env(Some(&store), &[e("app", "nope", "N", false)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key \"nope\" of config map \"app\" (as N)")
                && err.contains("no such key"),
            "{err}"
        );
        let err = env(None, &[e("app", "mode", "M", false)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no config map store (--config-maps-dir)"),
            "{err}"
        );
        let err = env(Some(&store), &[e("../x", "k", "K", false)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("config map name \"../x\""), "{err}");

        let v = |name: &str, optional| ConfigMapVolume {
            config_map: name.into(),
            mount_path: "/etc/app".into(),
            optional,
        };
        assert_eq!(
            mounts(Some(&store), &[v("app", false), v("gone", true)]).unwrap(),
            vec![(dir.path().join("app"), "/etc/app".to_string())]
        );
        let err = mounts(Some(&store), &[v("gone", false)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mounts config map \"gone\" at /etc/app"),
            "{err}"
        );
    }
}
