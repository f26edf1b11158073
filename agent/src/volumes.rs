//! Agent volumes: host directories an operator names with `--volume NAME=HOST_PATH[:ro]`, which
//! steps mount by name (kfp-kubernetes `mount_pvc(task, pvc_name=NAME, mount_path=...)`, the
//! claim name standing for the volume name). The agent advertises
//! `volume.gantry.dev/<NAME>=true`, so such steps are placed only on agents that have it.
//!
//! Only the Docker runtime can show a host directory at another path; the process runtime
//! refuses volumes (at agent start, and again per step).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use gantry_model::{validate_resource_name, volume_label, VolumeMount, RESOURCE_LABEL_VALUE};

use crate::runtime::{Mount, STEP_ROOT};
use crate::secrets::{self, SecretStore};

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
pub fn parse_flag(flag: &str) -> Result<(String, HostVolume), String> {
    let (name, rest) = flag
        .split_once('=')
        .ok_or_else(|| format!("--volume {flag:?} is not NAME=HOST_PATH[:ro]"))?;
    validate_resource_name(name).map_err(|e| format!("--volume {flag:?}: the name {e}"))?;
    let (path, read_only) = match rest.rsplit_once(':') {
        Some((p, "ro")) => (p, true),
        Some((p, "rw")) => (p, false),
        _ => (rest, false),
    };
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(format!("--volume {flag:?}: the host path must be absolute"));
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("--volume {flag:?}: {e}"))?;
    if !meta.is_dir() {
        return Err(format!(
            "--volume {flag:?}: {} is not a directory",
            path.display()
        ));
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
    pub fn from_flags(flags: &[String]) -> Result<Self, String> {
        let mut by_name = BTreeMap::new();
        for f in flags {
            let (name, v) = parse_flag(f)?;
            if by_name.insert(name.clone(), v).is_some() {
                return Err(format!("--volume: the name {name:?} is given twice"));
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
    pub fn mounts_for(&self, wanted: &[VolumeMount]) -> Result<Vec<Mount>, String> {
        wanted.iter().map(|w| self.mount_for(w)).collect()
    }

    fn mount_for(&self, w: &VolumeMount) -> Result<Mount, String> {
        let v = self.by_name.get(&w.volume).ok_or_else(|| {
            let have: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
            format!(
                "the step mounts volume {:?} at {}, which this agent does not have (its \
                 volumes: {}; add one with --volume {}=HOST_PATH)",
                w.volume,
                w.mount_path,
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                },
                w.volume
            )
        })?;
        let target = Path::new(&w.mount_path);
        let clean = target.is_absolute()
            && target
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !clean || target == Path::new("/") {
            return Err(format!(
                "volume {:?}: mount path {:?} must be an absolute path below / without '..'",
                w.volume, w.mount_path
            ));
        }
        if target.starts_with(STEP_ROOT) {
            return Err(format!(
                "volume {:?}: mount path {} would hide the step's own directory {STEP_ROOT}",
                w.volume, w.mount_path
            ));
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

    fn sub_path(&self, name: &str, v: &HostVolume, sub: &str) -> Result<PathBuf, String> {
        let rel = Path::new(sub);
        if !rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(format!(
                "volume {name:?}: sub path {sub:?} must be relative, without '..'"
            ));
        }
        let path = v.host_path.join(rel);
        if !path.exists() && !v.read_only {
            std::fs::create_dir_all(&path)
                .map_err(|e| format!("volume {name:?}: cannot create sub path {sub:?}: {e}"))?;
        }
        let real = std::fs::canonicalize(&path)
            .map_err(|e| format!("volume {name:?}: sub path {sub:?}: {e}"))?;
        let root = std::fs::canonicalize(&v.host_path)
            .map_err(|e| format!("volume {name:?}: {}: {e}", v.host_path.display()))?;
        if !real.starts_with(&root) {
            return Err(format!(
                "volume {name:?}: sub path {sub:?} leads outside the volume"
            ));
        }
        Ok(real)
    }
}

/// The secret store (`--secrets-dir`) and volumes (`--volume`) of an agent, their labels added
/// to `labels`. Volumes need a runtime that can show a host directory at another path.
pub fn host_resources(
    secrets_dir: Option<&Path>,
    volume_flags: &[String],
    runtime_name: &str,
    labels: &mut BTreeMap<String, String>,
) -> Result<(Option<SecretStore>, Volumes), String> {
    let store = secrets_dir.map(SecretStore::open).transpose()?;
    if let Some(s) = &store {
        let found = secrets::labels(s)?;
        tracing::info!(dir = %s.dir().display(), secrets = found.len(), "secret store");
        labels.extend(found);
    }
    let volumes = Volumes::from_flags(volume_flags)?;
    if !volumes.is_empty() && runtime_name == "process" {
        return Err(
            "--volume needs the docker runtime: the process runtime cannot show a host \
             directory at another path"
                .into(),
        );
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
                Err(e) => assert!(!needle.is_empty() && e.contains(needle), "{flag}: {e}"),
            }
        }
        let twice = Volumes::from_flags(&[format!("a={d}"), format!("a={d}")]).unwrap_err();
        assert!(twice.contains("given twice"), "{twice}");
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
        assert!(e.contains("sub path \"missing\""), "{e}");

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
            assert!(e.contains(needle), "{needle:?} not in {e}");
        }
        let none = Volumes::default()
            .mounts_for(&[mount("x", "/x", "")])
            .unwrap_err();
        assert!(none.contains("its volumes: none"), "{none}");
    }
}
