//! Agent volumes: host directories an operator names with `--volume NAME=HOST_PATH[:ro]`, which
//! steps mount by name (kfp-kubernetes `mount_pvc(task, pvc_name=NAME, mount_path=...)`, the
//! claim name standing for the volume name). The agent advertises
//! `volume.gantry.dev/<NAME>=true`, so such steps are placed only on agents that have it.
//!
//! Only the Docker runtime can show a host directory at another path; the process runtime
//! refuses volumes (at agent start, and again per step).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use gantry_model::{
    validate_resource_name, volume_label, NameError, VolumeMount, RESOURCE_LABEL_VALUE,
};

use crate::runtime::{Mount, Runtime, STEP_ROOT};
use crate::secrets::{self, SecretError, SecretStore};

/// What is wrong with a `--volume` flag, or with a step's mount of a volume.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("--volume {0:?} is not NAME=HOST_PATH[:ro]")]
    FlagSyntax(String),
    #[error("--volume {flag:?}: the name {error}")]
    FlagName { flag: String, error: NameError },
    #[error("--volume {0:?}: the host path must be absolute")]
    RelativeHostPath(String),
    #[error("--volume {flag:?}: {error}")]
    HostPath { flag: String, error: std::io::Error },
    #[error("--volume {flag:?}: {} is not a directory", path.display())]
    NotADirectory { flag: String, path: PathBuf },
    #[error("--volume: the name {0:?} is given twice")]
    GivenTwice(String),
    /// The runtime cannot show a host directory at another path (the process runtime).
    #[error(
        "--volume needs the docker runtime: the process runtime cannot show a host directory \
         at another path"
    )]
    NeedsDocker,
    /// `have` lists this agent's volumes.
    #[error(
        "the step mounts volume {volume:?} at {mount_path}, which this agent does not have (its \
         volumes: {}; add one with --volume {volume}=HOST_PATH)",
        if have.is_empty() { "none".to_string() } else { have.join(", ") }
    )]
    Unknown {
        volume: String,
        mount_path: String,
        have: Vec<String>,
    },
    #[error("volume {volume:?}: mount path {mount_path:?} must be an absolute path below / without '..'")]
    MountPath { volume: String, mount_path: String },
    #[error(
        "volume {volume:?}: mount path {mount_path} would hide the step's own directory \
         {STEP_ROOT}"
    )]
    HidesStepRoot { volume: String, mount_path: String },
    #[error("volume {volume:?}: sub path {sub_path:?} must be relative, without '..'")]
    SubPathNotRelative { volume: String, sub_path: String },
    #[error("volume {volume:?}: cannot create sub path {sub_path:?}: {error}")]
    CreateSubPath {
        volume: String,
        sub_path: String,
        error: std::io::Error,
    },
    #[error("volume {volume:?}: sub path {sub_path:?}: {error}")]
    SubPath {
        volume: String,
        sub_path: String,
        error: std::io::Error,
    },
    #[error("volume {volume:?}: {}: {error}", path.display())]
    Root {
        volume: String,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("volume {volume:?}: sub path {sub_path:?} leads outside the volume")]
    SubPathOutside { volume: String, sub_path: String },
}

/// Why the agent's secret store or volumes cannot be set up at start.
#[derive(Debug, thiserror::Error)]
pub enum HostResourceError {
    #[error(transparent)]
    Secrets(#[from] SecretError),
    #[error(transparent)]
    Volumes(#[from] VolumeError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVolume {
    pub host_path: PathBuf,
    pub read_only: bool,
}

/// The volumes of an agent, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Volumes {
    by_name: BTreeMap<String, HostVolume>,
}

/// `NAME=HOST_PATH`, `NAME=HOST_PATH:ro` or `NAME=HOST_PATH:rw`; the host path must be an
/// existing directory (Docker refuses to bind a missing one, and a typo should stop the agent
/// rather than fail every step later).
pub fn parse_flag(flag: &str) -> Result<(String, HostVolume), VolumeError> {
    let (name, rest) = flag
        .split_once('=')
        .ok_or_else(|| VolumeError::FlagSyntax(flag.to_string()))?;
    validate_resource_name(name).map_err(|error| VolumeError::FlagName {
        flag: flag.to_string(),
        error,
    })?;
    let (path, read_only) = match rest.rsplit_once(':') {
        Some((p, "ro")) => (p, true),
        Some((p, "rw")) => (p, false),
        _ => (rest, false),
    };
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(VolumeError::RelativeHostPath(flag.to_string()));
    }
    let meta = std::fs::metadata(path).map_err(|error| VolumeError::HostPath {
        flag: flag.to_string(),
        error,
    })?;
    if !meta.is_dir() {
        return Err(VolumeError::NotADirectory {
            flag: flag.to_string(),
            path: path.to_path_buf(),
        });
    }
    Ok((
        name.to_string(),
        HostVolume {
            host_path: path.to_path_buf(),
            read_only,
        },
    ))
}

impl Volumes {
    /// From `--volume` flags; a name given twice is refused.
    pub fn from_flags(flags: &[String]) -> Result<Self, VolumeError> {
        let mut by_name = BTreeMap::new();
        for f in flags {
            let (name, v) = parse_flag(f)?;
            if by_name.insert(name.clone(), v).is_some() {
                return Err(VolumeError::GivenTwice(name));
            }
        }
        Ok(Volumes { by_name })
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// `volume.gantry.dev/<name>=true` for each volume.
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.by_name
            .keys()
            .map(|n| (volume_label(n), RESOURCE_LABEL_VALUE.to_string()))
            .collect()
    }

    /// The bind mounts of a step's volume mounts. Fails naming the volume when this agent
    /// lacks it, when the mount path would hide the attempt directory, or when the sub path
    /// leads outside the volume; a missing sub path of a writable volume is created, as
    /// Kubernetes does.
    pub fn mounts_for(&self, wanted: &[VolumeMount]) -> Result<Vec<Mount>, VolumeError> {
        wanted.iter().map(|w| self.mount_for(w)).collect()
    }

    fn mount_for(&self, w: &VolumeMount) -> Result<Mount, VolumeError> {
        let v = self
            .by_name
            .get(&w.volume)
            .ok_or_else(|| VolumeError::Unknown {
                volume: w.volume.clone(),
                mount_path: w.mount_path.clone(),
                have: self.by_name.keys().cloned().collect(),
            })?;
        self.mount_of(w, v)
    }

    /// The bind mount of a volume the step's run made (kfp-kubernetes `CreatePVC`, the
    /// workspace): its directory under `claims_dir` ([`run_claims_dir`]), made on first use.
    pub fn run_claim_mount(
        &self,
        claims_dir: &Path,
        w: &VolumeMount,
    ) -> Result<Mount, VolumeError> {
        validate_resource_name(&w.volume).map_err(|error| VolumeError::FlagName {
            flag: w.volume.clone(),
            error,
        })?;
        let v = HostVolume {
            host_path: claims_dir.join(&w.volume),
            read_only: false,
        };
        if let Err(error) = std::fs::create_dir_all(&v.host_path) {
            return Err(VolumeError::CreateSubPath {
                volume: w.volume.clone(),
                sub_path: String::new(),
                error,
            });
        }
        // Any user the image runs as writes there, as on a freshly provisioned claim.
        let _ = std::fs::set_permissions(
            &v.host_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        );
        self.mount_of(w, &v)
    }

    fn mount_of(&self, w: &VolumeMount, v: &HostVolume) -> Result<Mount, VolumeError> {
        let target = Path::new(&w.mount_path);
        let clean = target.is_absolute()
            && target
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !clean || target == Path::new("/") {
            return Err(VolumeError::MountPath {
                volume: w.volume.clone(),
                mount_path: w.mount_path.clone(),
            });
        }
        if target.starts_with(STEP_ROOT) {
            return Err(VolumeError::HidesStepRoot {
                volume: w.volume.clone(),
                mount_path: w.mount_path.clone(),
            });
        }
        let host_path = if w.sub_path.is_empty() {
            v.host_path.clone()
        } else {
            self.sub_path(&w.volume, v, &w.sub_path)?
        };
        Ok(Mount {
            host_path,
            container_path: w.mount_path.clone(),
            read_only: v.read_only,
        })
    }

    fn sub_path(&self, name: &str, v: &HostVolume, sub: &str) -> Result<PathBuf, VolumeError> {
        let (volume, sub_path) = (name.to_string(), sub.to_string());
        let rel = Path::new(sub);
        if !rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(VolumeError::SubPathNotRelative { volume, sub_path });
        }
        let path = v.host_path.join(rel);
        if !path.exists() && !v.read_only {
            if let Err(error) = std::fs::create_dir_all(&path) {
                return Err(VolumeError::CreateSubPath {
                    volume,
                    sub_path,
                    error,
                });
            }
        }
        let real = match std::fs::canonicalize(&path) {
            Ok(real) => real,
            Err(error) => {
                return Err(VolumeError::SubPath {
                    volume,
                    sub_path,
                    error,
                })
            }
        };
        let root = match std::fs::canonicalize(&v.host_path) {
            Ok(root) => root,
            Err(error) => {
                return Err(VolumeError::Root {
                    volume,
                    path: v.host_path.clone(),
                    error,
                })
            }
        };
        if !real.starts_with(&root) {
            return Err(VolumeError::SubPathOutside { volume, sub_path });
        }
        Ok(real)
    }
}

/// Where an agent keeps the volumes run `run_id` made: `WORK_ROOT/.claims/<run>` (no run id
/// starts with a dot, so it is no run's attempt directory).
pub fn run_claims_dir(work_root: &Path, run_id: &str) -> PathBuf {
    work_root.join(".claims").join(run_id)
}

/// Removes the named volumes of run `run_id`, then its directory of them once empty.
pub async fn release_run_claims(work_root: &Path, run_id: &str, claims: &[String]) {
    if let Err(e) = gantry_model::validate_artifact_name(run_id) {
        tracing::warn!(run = run_id, error = %e, "not a run id; no volume removed");
        return;
    }
    let dir = run_claims_dir(work_root, run_id);
    for name in claims {
        if validate_resource_name(name).is_err() {
            tracing::warn!(run = run_id, claim = %name, "not a claim name; nothing removed");
            continue;
        }
        match tokio::fs::remove_dir_all(dir.join(name)).await {
            Ok(()) => tracing::info!(run = run_id, claim = %name, "removed the run's volume"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(run = run_id, claim = %name, error = %e,
                "could not remove the run's volume"),
        }
    }
    let _ = tokio::fs::remove_dir(&dir).await;
}

/// The secret store (`--secrets-dir`) and volumes (`--volume`) of an agent, their labels added
/// to `labels`. Volumes need a runtime that can show a host directory at another path
/// ([`Runtime::mounts_host_dirs`]).
pub fn host_resources(
    secrets_dir: Option<&Path>,
    volume_flags: &[String],
    runtime: &dyn Runtime,
    labels: &mut BTreeMap<String, String>,
) -> Result<(Option<SecretStore>, Volumes), HostResourceError> {
    let store = secrets_dir.map(SecretStore::open).transpose()?;
    if let Some(s) = &store {
        let found = secrets::labels(s)?;
        tracing::info!(dir = %s.dir().display(), secrets = found.len(), "secret store");
        labels.extend(found);
    }
    let volumes = Volumes::from_flags(volume_flags)?;
    if !volumes.is_empty() && !runtime.mounts_host_dirs() {
        return Err(VolumeError::NeedsDocker.into());
    }
    labels.extend(volumes.labels());
    Ok((store, volumes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(volume: &str, at: &str, sub: &str) -> VolumeMount {
        VolumeMount {
            volume: volume.into(),
            mount_path: at.into(),
            sub_path: sub.into(),
            run_claim: false,
        }
    }

    #[test]
    fn parses_flags_and_advertises_labels() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let v = Volumes::from_flags(&[format!("data={d}"), format!("models={d}:ro")]).unwrap();
        assert_eq!(
            v.labels().keys().collect::<Vec<_>>(),
            vec!["volume.gantry.dev/data", "volume.gantry.dev/models"]
        );
        assert!(!v.by_name["data"].read_only && v.by_name["models"].read_only);
        for (flag, needle) in [
            ("data".to_string(), "is not NAME=HOST_PATH"),
            ("da ta=/tmp".to_string(), "the name may hold only"),
            ("data=relative/dir".to_string(), "must be absolute"),
            (format!("data={d}/missing"), "No such file"),
            (format!("a={d}"), ""),
        ] {
            match Volumes::from_flags(std::slice::from_ref(&flag)) {
                Ok(_) => assert!(needle.is_empty(), "{flag} accepted"),
                Err(e) => assert!(
                    !needle.is_empty() && e.to_string().contains(needle),
                    "{flag}: {e}"
                ),
            }
        }
        let twice = Volumes::from_flags(&[format!("a={d}"), format!("a={d}")]).unwrap_err();
        assert!(matches!(twice, VolumeError::GivenTwice(_)), "{twice}");
    }

    #[test]
    fn volumes_need_a_runtime_that_mounts_host_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let flags = [format!("data={}", dir.path().display())];
        let mut labels = BTreeMap::new();
        let process = crate::runtime::ProcessRuntime::new();
        let e = host_resources(None, &flags, &process, &mut labels).unwrap_err();
        assert!(
            matches!(e, HostResourceError::Volumes(VolumeError::NeedsDocker)),
            "{e}"
        );
        let (store, volumes) = host_resources(None, &[], &process, &mut labels).unwrap();
        assert!(store.is_none() && volumes.is_empty() && labels.is_empty());
    }

    #[test]
    fn maps_mounts_to_host_paths_and_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
        let d = dir.path().display();
        let v = Volumes::from_flags(&[format!("data={d}"), format!("ro={d}:ro")]).unwrap();
        let m = v.mounts_for(&[mount("data", "/data", "")]).unwrap();
        assert_eq!(m[0].host_path, dir.path());
        assert_eq!(
            (m[0].container_path.as_str(), m[0].read_only),
            ("/data", false)
        );

        let m = v.mounts_for(&[mount("data", "/data", "a/b")]).unwrap();
        assert!(
            dir.path().join("a/b").is_dir(),
            "a writable sub path is created"
        );
        assert!(m[0].host_path.ends_with("a/b"));
        let e = v.mounts_for(&[mount("ro", "/x", "missing")]).unwrap_err();
        assert!(e.to_string().contains("sub path \"missing\""), "{e}");

        for (m, needle) in [
            (
                mount("nope", "/data", ""),
                "volume \"nope\" at /data, which this agent does not have (its volumes: data, ro",
            ),
            (
                mount("data", "/gantry/x", ""),
                "would hide the step's own directory",
            ),
            (mount("data", "/a/../b", ""), "without '..'"),
            (mount("data", "/", ""), "without '..'"),
            (mount("data", "/d", "../x"), "must be relative"),
            (mount("data", "/d", "escape"), "leads outside the volume"),
        ] {
            let e = v.mounts_for(&[m]).unwrap_err();
            assert!(e.to_string().contains(needle), "{needle:?} not in {e}");
        }
        let none = Volumes::default()
            .mounts_for(&[mount("x", "/x", "")])
            .unwrap_err();
        assert!(none.to_string().contains("its volumes: none"), "{none}");
    }
}
