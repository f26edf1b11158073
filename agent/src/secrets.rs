//! Secrets as environment variables (kfp-kubernetes `use_secret_as_env`), resolved on the
//! agent, and the masking of their values in everything the agent sends.
//!
//! The step spec names only the secret, the key and the variable ([`SecretEnv`]); the value is
//! read here, from the agent's secret store, when the step is prepared. The store is a
//! directory (`--secrets-dir`) laid out like Kubernetes secret volumes, one directory per
//! secret and one file per key:
//!
//! ```text
//! DIR/<secret-name>/<key>      the file's bytes, verbatim, are the value (UTF-8, no NUL)
//! ```
//!
//! Symbolic links are followed, so a directory that Kubernetes itself projects (`..data/`) or
//! a tmpfs managed by a vault agent both work. Directory names starting with `.` are skipped.
//! The agent advertises `secret.gantry.dev/<name>=true` for each secret present when it
//! starts; values are read afresh for every step, so a rotated value needs no restart, a new
//! secret does.
//!
//! Every value of 4 characters or more is replaced by `***` in the log lines the step writes
//! and in the stderr tail quoted in a failure message; a value with several lines is masked
//! line by line, as log lines arrive one at a time. Shorter values (and shorter lines of a
//! value) are not masked: masking them would garble ordinary output without hiding much.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gantry_model::{
    secret_label, validate_resource_name, validate_secret_key, NameError, SecretEnv, SecretVolume,
    RESOURCE_LABEL_VALUE,
};

/// What replaces a secret value in logs.
pub const MASK: &str = "***";
/// Shortest text masked.
pub const MIN_MASKED_LEN: usize = 4;
/// Largest secret value read (a Kubernetes secret holds at most 1 MiB).
const MAX_VALUE_BYTES: u64 = 1024 * 1024;

/// What went wrong reading the secret store or a step's secrets. Messages name the secret,
/// the key and the variable, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secrets dir {}: {error}", dir.display())]
    Dir { dir: PathBuf, error: std::io::Error },
    #[error("secrets dir {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("secret name {secret:?} {error}")]
    SecretName { secret: String, error: NameError },
    #[error("key {key:?} of secret {secret:?} {error}")]
    KeyName {
        key: String,
        secret: String,
        error: NameError,
    },
    #[error("secret {secret:?}, key {key:?}: {error}")]
    Read {
        secret: String,
        key: String,
        error: std::io::Error,
    },
    #[error("secret {secret:?}, key {key:?}: {} is not a file", path.display())]
    NotAFile {
        secret: String,
        key: String,
        path: PathBuf,
    },
    #[error(
        "secret {secret:?}, key {key:?}: the value has {bytes} bytes; at most {MAX_VALUE_BYTES} \
         are accepted"
    )]
    TooLarge {
        secret: String,
        key: String,
        bytes: u64,
    },
    #[error("secret {secret:?}, key {key:?}: the value is not UTF-8 text")]
    NotUtf8 { secret: String, key: String },
    #[error(
        "secret {secret:?}, key {key:?}: the value holds a NUL byte, which no environment \
         variable can"
    )]
    NulByte { secret: String, key: String },
    #[error(
        "the step mounts secret {secret:?} at {mount_path}, and this agent has no secret store \
         (--secrets-dir)"
    )]
    NoStoreForVolume { secret: String, mount_path: String },
    #[error(
        "the step mounts secret {secret:?} at {mount_path}, and the secret store {} has no \
         such secret",
        dir.display()
    )]
    MissingVolume {
        secret: String,
        mount_path: String,
        dir: PathBuf,
    },
    /// A step needs a key the store does not hold (and the reference is not optional).
    #[error(
        "secret {secret:?} has no key {key:?} in this agent's secret store ({} holds no file \
         {secret}/{key}) for variable {env}",
        dir.display()
    )]
    MissingKey {
        secret: String,
        key: String,
        env: String,
        dir: PathBuf,
    },
    #[error(
        "the step needs key {key:?} of secret {secret:?} (variable {env}), and this agent has \
         no secret store (--secrets-dir)"
    )]
    NoStore {
        secret: String,
        key: String,
        env: String,
    },
}

/// The agent's secret store: `DIR/<secret>/<key>` files.
#[derive(Debug, Clone)]
pub struct SecretStore {
    dir: PathBuf,
}

impl SecretStore {
    /// The store at `dir`, which must be a readable directory. Secrets whose files anyone on
    /// the host may read are reported with a warning.
    pub fn open(dir: &Path) -> Result<Self, SecretError> {
        let meta = std::fs::metadata(dir).map_err(|error| SecretError::Dir {
            dir: dir.to_path_buf(),
            error,
        })?;
        if !meta.is_dir() {
            return Err(SecretError::NotADirectory(dir.to_path_buf()));
        }
        let store = SecretStore {
            dir: dir.to_path_buf(),
        };
        for name in store.names()? {
            store.warn_if_world_readable(&name);
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The secrets present: the store's subdirectories with valid names (others are skipped
    /// with a warning, as no step could name them).
    pub fn names(&self) -> Result<Vec<String>, SecretError> {
        let dir_error = |error| SecretError::Dir {
            dir: self.dir.clone(),
            error,
        };
        let entries = std::fs::read_dir(&self.dir).map_err(dir_error)?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(dir_error)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.path().is_dir() {
                continue;
            }
            match validate_resource_name(&name) {
                Ok(()) => names.push(name),
                Err(e) => tracing::warn!(dir = %self.dir.display(), secret = %name,
                    "skipping a secret whose name no step could use: it {e}"),
            }
        }
        names.sort();
        Ok(names)
    }

    fn warn_if_world_readable(&self, secret: &str) {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.dir.join(secret);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // metadata() follows links: what counts is who can read the value.
            if let Ok(m) = std::fs::metadata(&path) {
                if m.is_file() && m.permissions().mode() & 0o004 != 0 {
                    tracing::warn!(file = %path.display(),
                        "secret file is readable by every user of this host; chmod o-r it");
                }
            }
        }
    }

    /// The value of `key` of `secret`; `Ok(None)` when the secret or the key does not exist.
    /// Errors name the secret and key, never the value.
    pub fn read(&self, secret: &str, key: &str) -> Result<Option<String>, SecretError> {
        // Checked again here: the names come over the wire and become a path.
        validate_resource_name(secret).map_err(|error| SecretError::SecretName {
            secret: secret.to_string(),
            error,
        })?;
        validate_secret_key(key).map_err(|error| SecretError::KeyName {
            key: key.to_string(),
            secret: secret.to_string(),
            error,
        })?;
        let (s, k) = (secret.to_string(), key.to_string());
        let read_error = |error| SecretError::Read {
            secret: s.clone(),
            key: k.clone(),
            error,
        };
        let path = self.dir.join(secret).join(key);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(e)),
        };
        if !meta.is_file() {
            return Err(SecretError::NotAFile {
                secret: s,
                key: k,
                path,
            });
        }
        if meta.len() > MAX_VALUE_BYTES {
            return Err(SecretError::TooLarge {
                secret: s,
                key: k,
                bytes: meta.len(),
            });
        }
        let bytes = std::fs::read(&path).map_err(read_error)?;
        let Ok(value) = String::from_utf8(bytes) else {
            return Err(SecretError::NotUtf8 { secret: s, key: k });
        };
        if value.contains('\0') {
            return Err(SecretError::NulByte { secret: s, key: k });
        }
        Ok(Some(value))
    }
}

/// Secrets mounted as volumes, as found in the store.
#[derive(Debug, Default)]
pub struct SecretMounts {
    /// (host directory, mount path in the container)
    pub dirs: Vec<(PathBuf, String)>,
    /// Every text value in them, to mask.
    pub values: Vec<String>,
}

/// The host directories of secrets mounted as volumes, and their values. A missing secret
/// fails, naming it and the store, unless the volume is optional.
pub fn volumes(
    store: Option<&SecretStore>,
    wanted: &[SecretVolume],
) -> Result<SecretMounts, SecretError> {
    let mut mounts = Vec::new();
    let mut values = Vec::new();
    for w in wanted {
        validate_resource_name(&w.secret).map_err(|error| SecretError::SecretName {
            secret: w.secret.clone(),
            error,
        })?;
        let Some(store) = store else {
            if w.optional {
                continue;
            }
            return Err(SecretError::NoStoreForVolume {
                secret: w.secret.clone(),
                mount_path: w.mount_path.clone(),
            });
        };
        let dir = store.dir().join(&w.secret);
        if !dir.is_dir() {
            if w.optional {
                continue;
            }
            return Err(SecretError::MissingVolume {
                secret: w.secret.clone(),
                mount_path: w.mount_path.clone(),
                dir: store.dir().to_path_buf(),
            });
        }
        let entries = std::fs::read_dir(&dir).map_err(|error| SecretError::Dir {
            dir: dir.clone(),
            error,
        })?;
        for entry in entries.flatten() {
            let key = entry.file_name().to_string_lossy().into_owned();
            if key.starts_with('.') || validate_secret_key(&key).is_err() {
                continue;
            }
            match store.read(&w.secret, &key) {
                Ok(Some(v)) => values.push(v),
                // A binary key (a keystore) is mounted as it is; there is no text to mask.
                Ok(None) | Err(SecretError::NotUtf8 { .. } | SecretError::NulByte { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        mounts.push((dir, w.mount_path.clone()));
    }
    Ok(SecretMounts {
        dirs: mounts,
        values,
    })
}

/// The variables of `refs`, read from `store`, and the masker of their values. A missing
/// secret or key fails (naming both and the store) unless the reference is optional.
pub fn resolve(
    store: Option<&SecretStore>,
    refs: &[SecretEnv],
) -> Result<(Vec<(String, String)>, Masker), SecretError> {
    let mut env = Vec::new();
    let mut values = Vec::new();
    for r in refs {
        let value = match store {
            Some(s) => s.read(&r.secret, &r.key)?,
            None => None,
        };
        match value {
            Some(v) => {
                if v.lines()
                    .all(|l| l.trim_end_matches('\r').len() < MIN_MASKED_LEN)
                {
                    tracing::warn!(secret = %r.secret, key = %r.key,
                        "secret value shorter than {MIN_MASKED_LEN} characters is not masked in logs");
                }
                values.push(v.clone());
                env.push((r.env.clone(), v));
            }
            None if r.optional => {}
            None => {
                return Err(match store {
                    Some(s) => SecretError::MissingKey {
                        secret: r.secret.clone(),
                        key: r.key.clone(),
                        env: r.env.clone(),
                        dir: s.dir().to_path_buf(),
                    },
                    None => SecretError::NoStore {
                        secret: r.secret.clone(),
                        key: r.key.clone(),
                        env: r.env.clone(),
                    },
                })
            }
        }
    }
    Ok((env, Masker::new(values)))
}

/// Labels advertising the secrets of `store`: `secret.gantry.dev/<name>=true`.
pub fn labels(store: &SecretStore) -> Result<BTreeMap<String, String>, SecretError> {
    Ok(store
        .names()?
        .iter()
        .map(|n| (secret_label(n), RESOURCE_LABEL_VALUE.to_string()))
        .collect())
}

/// Replaces secret values in text with [`MASK`]. Cheap to clone; its `Debug` shows no value.
#[derive(Clone, Default)]
pub struct Masker {
    /// Longest first, so that a value containing another is masked whole.
    needles: Arc<Vec<String>>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} values)", self.needles.len())
    }
}

impl Masker {
    /// Masks every line of every value that has at least [`MIN_MASKED_LEN`] characters.
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut needles: Vec<String> = values
            .into_iter()
            .flat_map(|v| {
                v.split('\n')
                    .map(|l| l.trim_end_matches('\r').to_string())
                    .collect::<Vec<_>>()
            })
            .filter(|l| l.chars().count() >= MIN_MASKED_LEN)
            .collect();
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        Masker {
            needles: Arc::new(needles),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every occurrence of a value replaced by [`MASK`].
    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for n in self.needles.iter() {
            if out.contains(n.as_str()) {
                out = Cow::Owned(out.replace(n.as_str(), MASK));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn store_with(files: &[(&str, &str, &str)]) -> (tempfile::TempDir, SecretStore) {
        let dir = tempfile::tempdir().unwrap();
        for (secret, key, value) in files {
            let d = dir.path().join(secret);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(key), value).unwrap();
            std::fs::set_permissions(d.join(key), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let store = SecretStore::open(dir.path()).unwrap();
        (dir, store)
    }

    fn r(secret: &str, key: &str, env: &str, optional: bool) -> SecretEnv {
        SecretEnv {
            secret: secret.into(),
            key: key.into(),
            env: env.into(),
            optional,
        }
    }

    fn v(secret: &str, mount_path: &str, optional: bool) -> SecretVolume {
        SecretVolume {
            secret: secret.into(),
            mount_path: mount_path.into(),
            optional,
        }
    }

    #[test]
    fn secrets_as_volumes_are_their_directories_and_their_values_are_masked() {
        let (dir, store) = store_with(&[
            ("tls", "cert", "-----BEGIN-----"),
            ("tls", "key", "k3y-value"),
        ]);
        std::fs::write(dir.path().join("tls").join("blob"), [0u8, 159, 146, 150]).unwrap();
        let found = volumes(
            Some(&store),
            &[v("tls", "/etc/tls", false), v("gone", "/x", true)],
        )
        .unwrap();
        assert_eq!(
            found.dirs,
            vec![(dir.path().join("tls"), "/etc/tls".to_string())]
        );
        let mut values = found.values;
        values.sort();
        assert_eq!(
            values,
            vec!["-----BEGIN-----".to_string(), "k3y-value".to_string()]
        );
        let e = volumes(Some(&store), &[v("gone", "/x", false)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mounts secret \"gone\" at /x") && e.contains("has no such secret"),
            "{e}"
        );
        let e = volumes(None, &[v("tls", "/etc/tls", false)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no secret store (--secrets-dir)"), "{e}");
        let e = volumes(Some(&store), &[v("../etc", "/x", false)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("secret name \"../etc\""), "{e}");
    }

    #[test]
    fn reads_values_verbatim_and_lists_secrets_as_labels() {
        let (dir, store) = store_with(&[
            ("db", "password", "hunter22\n"),
            ("db", "user", "admin"),
            ("api-token", "token", "t0k3n-value"),
        ]);
        std::fs::create_dir(dir.path().join(".hidden")).unwrap();
        std::fs::create_dir(dir.path().join("Bad Name")).unwrap();
        std::fs::write(dir.path().join("stray-file"), "x").unwrap();
        assert_eq!(store.names().unwrap(), vec!["api-token", "db"]);
        assert_eq!(
            labels(&store).unwrap().keys().collect::<Vec<_>>(),
            vec!["secret.gantry.dev/api-token", "secret.gantry.dev/db"]
        );
        assert_eq!(
            store.read("db", "password").unwrap().as_deref(),
            Some("hunter22\n")
        );
        assert_eq!(store.read("db", "nope").unwrap(), None);
        assert_eq!(store.read("nope", "password").unwrap(), None);
        let e = store.read("..", "password").unwrap_err().to_string();
        assert!(e.contains("secret name \"..\""), "{e}");
        let e = store.read("db", "../db/user").unwrap_err().to_string();
        assert!(e.contains("key \"../db/user\""), "{e}");
    }

    #[test]
    fn resolves_references_and_fails_on_a_missing_one_naming_it() {
        let (_dir, store) = store_with(&[("db", "password", "hunter22"), ("db", "user", "admin")]);
        let (env, masker) = resolve(
            Some(&store),
            &[
                r("db", "password", "PW", false),
                r("db", "user", "USER", false),
                r("other", "k", "OPT", true),
            ],
        )
        .unwrap();
        assert_eq!(
            env,
            vec![
                ("PW".to_string(), "hunter22".to_string()),
                ("USER".to_string(), "admin".to_string())
            ]
        );
        assert_eq!(masker.mask("pw=hunter22 user=admin"), "pw=*** user=***");

        let e = resolve(Some(&store), &[r("db", "token", "TOKEN", false)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("secret \"db\" has no key \"token\"") && e.contains("TOKEN"),
            "{e}"
        );
        let e = resolve(None, &[r("db", "password", "PW", false)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no secret store (--secrets-dir)"), "{e}");
        assert!(resolve(None, &[r("db", "password", "PW", true)])
            .unwrap()
            .0
            .is_empty());
    }

    #[test]
    fn refuses_values_that_cannot_be_variables_without_quoting_them() {
        let (dir, store) = store_with(&[("s", "nul", "abc\0def")]);
        std::fs::write(dir.path().join("s/bin"), [0xff, 0xfe, 0x41]).unwrap();
        std::fs::create_dir(dir.path().join("s/sub")).unwrap();
        let e = store.read("s", "nul").unwrap_err().to_string();
        assert!(e.contains("NUL") && !e.contains("abc"), "{e}");
        assert!(store
            .read("s", "bin")
            .unwrap_err()
            .to_string()
            .contains("not UTF-8"));
        assert!(store
            .read("s", "sub")
            .unwrap_err()
            .to_string()
            .contains("is not a file"));
    }

    #[test]
    fn masks_every_occurrence_and_each_line_of_multi_line_values() {
        let m = Masker::new([
            "s3cr3t".to_string(),
            "-----BEGIN KEY-----\r\nAAAABBBB\nab\n-----END KEY-----\n".to_string(),
            "abc".to_string(),
            "s3cr3t-longer".to_string(),
        ]);
        assert_eq!(m.mask("x s3cr3t y s3cr3t"), "x *** y ***");
        // The longer value is masked whole, not as the shorter one plus a visible rest.
        assert_eq!(m.mask("s3cr3t-longer"), "***");
        assert_eq!(m.mask("AAAABBBB"), "***");
        assert_eq!(m.mask("-----END KEY-----"), "***");
        // Short values and short lines are left alone.
        assert_eq!(m.mask("abc ab"), "abc ab");
        assert!(matches!(m.mask("nothing here"), Cow::Borrowed(_)));
        assert!(Masker::new(Vec::new()).is_empty());
        assert_eq!(format!("{m:?}"), "Masker(5 values)");
    }
}
